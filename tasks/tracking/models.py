"""Trained models as MLflow pyfunc models from code: mlcore's sources and a ``.npz`` of plain
arrays travel with the model, its requirements are pinned, and nothing is pickled."""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pooch

from tasks.tracking import spool

PYFUNC_DIR = Path(__file__).resolve().parent.parent / "pyfunc"
# Loading a models-from-code model swaps a mock into sys.modules["dbutils"] and restores the
# previous entry afterwards (mlflow.models.utils._mock_dbutils): two threads doing it at once
# leave the mock there for good. Prefect runs evaluate tasks in parallel threads, so model
# logging is serialised.
_MODEL_LOG_LOCK = threading.Lock()


def log_pyfunc_model(
    run_id: str,
    kind: str,
    arrays: Mapping[str, np.ndarray],
    input_example: np.ndarray,
    name: str = "model",
    extra_pip: tuple[str, ...] = (),
) -> str:
    """Log a pyfunc model to ``run_id`` from the code in ``tasks/pyfunc/<kind>.py``.

    The parameters go in an ``.npz`` of plain arrays (read back with ``allow_pickle=False``);
    the model's code is a file, not a pickled object. The model is portable: mlcore's pure
    Python modules travel with it (MLflow ``code_paths``; without the compiled Cython
    extension, whose numpy fallback computes the same), and its requirements pin the
    versions it was trained with (`model_requirements`), so it loads in an environment built
    from nothing but its own ``requirements.txt``. The MLmodel metadata records
    ``mlcore_kind`` and ``mlcore_code_sha256`` (the sha256 of the code file), which
    ``mlcore predict`` checks before loading. Returns the model URI.

    With the tracking store gone, the model is kept on local disk instead (the ``.npz`` and
    its code file in ``./mlcore-unsent/<run id>/<name>/``) and that folder is returned.
    """
    from mlflow.models import Model, infer_signature

    code = PYFUNC_DIR / f"{kind}.py"
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "weights.npz"
        np.savez(weights, **arrays)
        shipped = _copy_mlcore_sources(Path(tmp) / "code")

        def send():
            with _MODEL_LOG_LOCK:
                prediction = _load_code_model(code, weights).predict(None, input_example)
                # the model belongs to its run's experiment: without an active run, MLflow
                # would put it in the session's experiment (Default) instead
                run = mlflow.MlflowClient().get_run(run_id)
                model = mlflow.initialize_logged_model(
                    name=name, source_run_id=run_id, experiment_id=run.info.experiment_id,
                    params={k: str(v) for k, v in run.data.params.items()},
                )  # fmt: skip
                return Model.log(
                    artifact_path=None,
                    name=name,
                    model_id=model.model_id,
                    flavor=mlflow.pyfunc,
                    run_id=run_id,
                    python_model=str(code),
                    artifacts={"weights": str(weights)},
                    code_paths=[str(shipped)],
                    signature=infer_signature(input_example, prediction),
                    input_example=input_example,
                    pip_requirements=model_requirements(extra_pip),
                    metadata={
                        "mlcore_kind": kind,
                        "mlcore_code_sha256": file_sha256(code),
                        "mlcore_version": _mlcore_version(),
                    },
                ).model_uri

        def keep(folder: Path) -> str:
            # what `mlcore sync` needs to log the same model later (tasks.tracking.sync)
            target = folder / name
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy(weights, target / "weights.npz")
            shutil.copy(code, target / code.name)
            np.save(target / "input_example.npy", np.asarray(input_example), allow_pickle=False)
            spool.keep_json(target, "model.json", {"kind": kind, "extra_pip": list(extra_pip),
                                                   "code_sha256": file_sha256(code)})  # fmt: skip
            return str(target)

        return spool.send(run_id, send, keep)


def model_requirements(extra_pip: tuple[str, ...] = ()) -> list[str]:
    """What a logged model needs to load, pinned to this environment's versions: MLflow's
    pyfunc runtime (``mlflow-skinny``: loading and ``mlflow models serve``, without the
    tracking server's dependencies), numpy and pandas (pyfunc's input handling). mlcore
    itself ships inside the model; its model code imports only numpy (no scipy, scikit-learn
    or pandas), so an ``"mlcore"`` in ``extra_pip`` is dropped (there is no such package to
    install: the name on PyPI is someone else's)."""
    from importlib.metadata import version

    pinned = [
        f"mlflow-skinny=={version('mlflow-skinny')}",
        f"numpy=={np.__version__}",
        f"pandas=={pd.__version__}",
    ]
    return pinned + [req for req in extra_pip if req.strip().lower() != "mlcore"]


def file_sha256(path: Path) -> str:
    return pooch.file_hash(str(path))


def _mlcore_version() -> str:
    import mlcore

    return mlcore.__version__


def _copy_mlcore_sources(dest: Path) -> Path:
    """Copy the ``.py`` files of the installed ``mlcore`` package to ``dest/mlcore`` and
    return that folder: compiled extensions, C sources and caches stay behind."""
    import mlcore

    source = Path(mlcore.__file__).parent
    target = dest / "mlcore"
    for path in sorted(source.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        out = target / path.relative_to(source)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, out)
    return target


def _load_code_model(code: Path, weights: Path):
    """Instantiate the pyfunc class of ``code`` locally, to compute the signature's output."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"mlcore_pyfunc_{code.stem}", code)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.MODEL_CLASS()
    model.load_context(
        mlflow.pyfunc.PythonModelContext(artifacts={"weights": str(weights)}, model_config={})
    )
    return model
