"""The model registry: register a flow's best model, move ``champion`` only on a fair win; and
score input files with any MLflow model URI (``mlcore predict``).

A version carries three tags: the metric it was chosen by (``best_val_mae=2.87...``, the
value as ``repr`` so it reads back exactly), ``data_key`` (what validation data that value
was measured on) and ``flow_run_id`` (the MLflow run of the flow that made it). Two values
are comparable only on the same ``data_key``: the alias never moves to a version that merely
looks better on easier data.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from prefect import task

from tasks import tracking
from tasks.errors import error_line
from tasks.promotion_lock import promotion_lock
from tasks.tracking import PYFUNC_DIR

CHAMPION = "champion"


def housing_data_key(dataset: str, test_size: float, split_random_state: int, val_split: float):
    """The identity of the housing validation rows: the file's sha256 and the split."""
    from mlcore.data import get_dataset

    sha = get_dataset(dataset).sha256
    return (
        f"{dataset}:sha256={sha}:test_size={test_size!r}:"
        f"split_random_state={split_random_state!r}:val_split={val_split!r}"
    )


def convnet_data_key(dataset: str, num_train: int | None) -> str:
    """What a ConvNet's validation accuracy is comparable on: the dataset, its default split
    (the flow always takes it) and ``num_train``, the number of training rows it learnt from."""
    return f"{dataset}:split=default:num_train={num_train}"


def majority_baseline(y_train: np.ndarray, y_val: np.ndarray) -> float:
    """Validation accuracy of always predicting the most frequent class of ``y_train``."""
    classes, counts = np.unique(np.ravel(y_train), return_counts=True)
    return float(np.mean(np.ravel(y_val) == classes[np.argmax(counts)]))


def mean_baseline(y_train: np.ndarray, y_val: np.ndarray) -> float:
    """Validation MAE of always predicting the mean of ``y_train``."""
    return float(np.mean(np.abs(np.ravel(y_val) - np.mean(y_train))))


def registration_gate(
    metric: str, value: float, higher_is_better: bool, baseline: float, label: str, margin: float
) -> tuple[bool, str]:
    """Whether ``value`` beats the trivial ``baseline`` (by ``margin`` for a higher-is-better
    metric), and the comparison with both numbers, e.g.
    ``best_val_acc 0.098 <= majority 0.102 + 0.05``."""
    if higher_is_better:
        passed = value > baseline + margin
        rhs = f"{label} {baseline:.4g}" + (f" + {margin:g}" if margin else "")
    else:
        passed = value < baseline - margin
        rhs = f"{label} {baseline:.4g}" + (f" - {margin:g}" if margin else "")
    op = (">" if passed else "<=") if higher_is_better else ("<" if passed else ">=")
    return passed, f"{metric} {value:.4g} {op} {rhs}"


@task
def register_model(
    model_uri: str,
    name: str,
    metric: str,
    value: float,
    higher_is_better: bool,
    data_key: str,
    run_id: str,
    baseline: float,
    baseline_label: str = "baseline",
    margin: float = 0.0,
    regression_margin: float | None = None,
) -> dict[str, Any]:
    """Register ``model_uri`` as a new version of ``name`` if ``value`` beats the trivial
    ``baseline`` on the validation data (by ``margin`` when higher is better), tagged with
    ``metric=value``, ``data_key`` and the flow's ``run_id``; point alias ``champion`` at it if
    there is no champion yet, or if the champion was measured on the same ``data_key`` and
    this value is strictly better.

    The flow's run is tagged ``registered`` (true/false) and ``registration_gate`` (the
    comparison with the baseline); if registered also ``registered_model``,
    ``registered_version`` and ``champion``. Reading the champion, comparing and moving the
    alias happen under a lock of the store (see `promotion_lock`), so two flows finishing at
    once cannot both take the alias from the same holder.
    Returns ``{name, version, champion_version, promoted, reason, registered, gate}``
    (``version`` is None when the gate refused the model), and ``regressed`` (see
    `regression`: the run was signalled as worse than the champion, registered or not)."""
    value = float(value)
    regressed = None
    if regression_margin is not None:
        regressed = regression(name, metric, value, higher_is_better, data_key, regression_margin)
        if regressed is not None:
            signal_regression(run_id, name, regressed)
    passed, gate = registration_gate(
        metric, value, higher_is_better, float(baseline), baseline_label, margin
    )
    if not passed:
        tracking.set_tags(run_id, {"registered": "false", "registration_gate": gate})
        reason = f"not registered: does not beat the trivial baseline ({gate})"
        print(f"{name}: {reason}")
        return {
            "name": name,
            "version": None,
            "champion_version": None,
            "promoted": False,
            "reason": reason,
            "registered": False,
            "gate": gate,
            "regressed": regressed,
        }
    tags = {metric: repr(value), "data_key": data_key, "flow_run_id": run_id}
    version = str(mlflow.register_model(model_uri, name, tags=tags).version)
    client = tracking.client()
    with promotion_lock(mlflow.get_tracking_uri(), name):
        holder = client.get_registered_model(name).aliases.get(CHAMPION)
        promoted, reason = _should_promote(
            client, name, holder, metric, value, higher_is_better, data_key
        )
        if promoted:
            client.set_registered_model_alias(name, CHAMPION, version)
    champion_version = version if promoted else str(holder)
    tracking.set_tags(
        run_id,
        {
            "registered": "true",
            "registration_gate": gate,
            "registered_model": name,
            "registered_version": version,
            "champion": str(promoted).lower(),
        },
    )
    print(f"registered {name} version {version}: {reason}")
    return {
        "name": name,
        "version": version,
        "champion_version": champion_version,
        "promoted": promoted,
        "reason": reason,
        "registered": True,
        "gate": gate,
        "regressed": regressed,
    }


REGRESSED_TAG = "mlcore.regressed"
REGRESSED_EVENT = "mlcore.model.regressed"


def regression(
    name: str, metric: str, value: float, higher_is_better: bool, data_key: str, margin: float
) -> dict[str, Any] | None:
    """``value`` compared with the champion of ``name`` measured on the same ``data_key``: if
    it is worse by more than ``margin``, ``{model, metric, candidate, champion,
    champion_version, champion_run_id, worse_by, margin, summary}``; else (better, within the
    margin, no champion, a champion of other data) None."""
    client = tracking.client()
    try:
        holder = client.get_registered_model(name).aliases.get(CHAMPION)
    except mlflow.exceptions.MlflowException:  # no such model yet
        return None
    if holder is None:
        return None
    tags = client.get_model_version(name, holder).tags
    if tags.get("data_key") != data_key or metric not in tags:
        return None
    best = float(tags[metric])
    worse_by = best - value if higher_is_better else value - best
    if not worse_by > margin:
        return None
    summary = (
        f"{metric} {value:.6g} vs {best:.6g} of {name} version {holder} ({CHAMPION}): worse "
        f"by {worse_by:.4g}, more than the margin {margin:g}"
    )
    return {
        "model": name, "metric": metric, "candidate": value, "champion": best,
        "champion_version": str(holder), "champion_run_id": tags.get("flow_run_id", ""),
        "worse_by": worse_by, "margin": margin, "summary": summary,
    }  # fmt: skip


def signal_regression(run_id: str, name: str, regressed: dict[str, Any]) -> None:
    """Say that the run ``run_id`` made a model worse than the champion: the MLflow tag
    ``mlcore.regressed`` (the summary), a line on the output and the Prefect event
    ``mlcore.model.regressed`` (resource: the registered model; related: the MLflow run, and
    from the run context the flow run, its deployment and tags), which the alert automation
    turns into a message. An event the API cannot take is said on one line, not raised."""
    from prefect.events import emit_event

    from tasks.tracking.provenance import mlflow_run_url

    tracking.set_tags(run_id, {REGRESSED_TAG: regressed["summary"]})
    print(f"regression: {regressed['summary']} (MLflow run {run_id})")
    try:
        emit_event(
            event=REGRESSED_EVENT,
            resource={"prefect.resource.id": f"mlcore.model.{name}",
                      "prefect.resource.name": name},  # fmt: skip
            related=[{"prefect.resource.id": f"mlflow.run.{run_id}",
                      "prefect.resource.role": "mlflow-run", "prefect.resource.name": run_id}],
            payload={**regressed, "run_id": run_id, "run_url": mlflow_run_url(
                run_id, tracking.client().get_run(run_id).info.experiment_id)},
        )  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - the tag above holds the signal already
        print(f"regression event not sent: {error_line(exc)}")


def _should_promote(
    client,
    name: str,
    holder: str | None,
    metric: str,
    value: float,
    higher_is_better: bool,
    data_key: str,
) -> tuple[bool, str]:
    if holder is None:
        return True, f"first {CHAMPION} ({metric}={value:.6g})"
    tags = client.get_model_version(name, holder).tags
    if tags.get("data_key") != data_key:
        return False, (
            f"{CHAMPION} stays version {holder}: it was measured on other validation data "
            f"({tags.get('data_key', 'unknown')!r}, not {data_key!r})"
        )
    if metric not in tags:
        return False, f"{CHAMPION} stays version {holder}: it has no {metric} tag to compare"
    best = float(tags[metric])
    better = value > best if higher_is_better else value < best
    if not better:
        return False, (
            f"{CHAMPION} stays version {holder}: its {metric}={best:.6g} is not beaten "
            f"by {value:.6g}"
        )
    return True, f"beats {CHAMPION} version {holder} on {metric}: {value:.6g} vs {best:.6g}"


class UntrustedModelError(ValueError):
    """A model that mlcore did not write: loading it could run someone else's code."""


def load_model(model_uri: str, trust: bool = False):
    """Load ``model_uri`` as a pyfunc model, with a one-line error naming the URI.

    Unless ``trust``, the model is first downloaded and checked without running any of its
    code (`check_mlcore_model`): only mlcore's own model kinds are loaded, anything else is
    an `UntrustedModelError`. MLflow unpickles a cloudpickle or scikit-learn model and
    executes a models-from-code file while loading, so a model someone else put in the store
    would otherwise run code on this machine."""
    try:
        if trust:
            return mlflow.pyfunc.load_model(model_uri)
        local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri)
        check_mlcore_model(local, model_uri)
        import mlcore  # noqa: F401 - the installed mlcore, not the copy shipped in the model

        return mlflow.pyfunc.load_model(local)
    except (mlflow.exceptions.MlflowException, OSError) as exc:
        raise ValueError(f"cannot load model {model_uri!r}: {error_line(exc)}") from None


def check_mlcore_model(local: str | Path, model_uri: str) -> str:
    """Check, without executing anything from it, that the model downloaded to ``local`` is
    one mlcore logged (`tracking.log_pyfunc_model`): its only flavor is ``python_function``
    from code (no pickled object), that code file is byte for byte one of this
    installation's ``tasks/pyfunc/<kind>.py``, its only artifact is a ``.npz`` of weights
    and the code shipped with it is ``mlcore/**.py`` only. Returns the kind; raises
    `UntrustedModelError` naming what is foreign."""
    from mlflow.models import Model

    local = Path(local)

    def refuse(why: str) -> UntrustedModelError:
        return UntrustedModelError(
            f"refusing to load {model_uri!r}: {why}; it is not a model mlcore logged "
            "(pass --trust-model to load it anyway, if you trust its source)"
        )

    if not (local / "MLmodel").is_file():
        raise refuse("it has no MLmodel file")
    model = Model.load(str(local / "MLmodel"))
    flavors = sorted(model.flavors)
    if flavors != ["python_function"]:
        raise refuse(f"its flavors are {', '.join(flavors)}, not python_function only")
    conf = model.flavors["python_function"]
    code_file = conf.get("model_code_path")
    if conf.get("loader_module") != code_model_loader() or not code_file:
        raise refuse("it is not a python_function model from a code file")
    if conf.get("python_model"):
        raise refuse("it holds a pickled Python object")
    # MLflow records the path the file was logged from; the copy is beside MLmodel
    code_file = Path(code_file).name
    kind = (model.metadata or {}).get("mlcore_kind", "")
    ours = PYFUNC_DIR / f"{kind}.py"
    if not kind or "/" in kind or not ours.is_file():
        raise refuse(f"its mlcore_kind {kind!r} is not one of mlcore's model kinds")
    code = local / code_file
    if not code.is_file() or tracking.file_sha256(code) != tracking.file_sha256(ours):
        raise refuse(f"its code file {code_file!r} is not this mlcore's tasks/pyfunc/{kind}.py")
    artifacts = conf.get("artifacts") or {}
    if set(artifacts) != {"weights"} or not str(artifacts["weights"].get("path", "")).endswith(
        ".npz"
    ):
        raise refuse("its artifacts are not mlcore's weights.npz")
    shipped = conf.get("code")
    if shipped:
        root = local / shipped
        foreign = [
            p.relative_to(root).as_posix()
            for p in root.rglob("*")
            if p.is_file() and not (p.relative_to(root).parts[0] == "mlcore" and p.suffix == ".py")
        ]
        if foreign:
            raise refuse(f"it ships code other than mlcore's: {foreign[0]}")
    return kind


# A trivial model from code, saved once to learn what MLflow writes for one (see below)
_REFERENCE_CODE = """\
import mlflow
import numpy as np


class Reference(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        return model_input


mlflow.models.set_model(Reference())
"""


@functools.cache
def code_model_loader() -> str:
    """The ``loader_module`` that MLflow writes into the MLmodel of a pyfunc model from code:
    the module that loading such a model imports and runs, and the one mlcore's models have.

    MLflow documents the ``loader_module`` field of the python_function flavor but not its
    value for a model from code (the module that holds it, ``mlflow.pyfunc.loaders``, is not
    part of the documented API). So rather than a string an MLflow upgrade could change, it is
    read from a reference model saved with the public ``mlflow.pyfunc.save_model`` and loaded
    with ``mlflow.models.Model.load``; tests/tasks/test_registry.py checks that it is what mlcore's
    logged models carry and that a pickled model's loader is another."""
    import tempfile

    from mlflow.models import Model

    with tempfile.TemporaryDirectory() as tmp:
        code = Path(tmp) / "reference_model.py"
        code.write_text(_REFERENCE_CODE)
        mlflow.pyfunc.save_model(
            str(Path(tmp) / "model"),
            python_model=str(code),
            pip_requirements=[],
            input_example=np.zeros((1, 1)),
            uv_project_path=tmp,  # no uv project there: nothing copied, nothing printed
        )
        return Model.load(str(Path(tmp) / "model")).flavors["python_function"]["loader_module"]


def read_features(path: str | Path) -> np.ndarray:
    """A ``.npy`` array (no pickles) or a numeric CSV with or without a header row, as
    (rows, columns) for a CSV."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no input file {str(path)!r}")
    if path.suffix.lower() == ".npy":
        return np.load(path, allow_pickle=False)
    with path.open() as f:
        first = f.readline()
    if not first.strip():
        raise ValueError(f"{path}: empty file")
    header = not all(_is_float(cell) for cell in first.split(","))
    try:
        return np.loadtxt(path, delimiter=",", skiprows=int(header), ndmin=2, dtype=np.float64)
    except ValueError as exc:
        where = f"{path} (rows counted after the header)" if header else str(path)
        raise ValueError(f"{where}: {error_line(exc)}") from None


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def fit_to_signature(X: np.ndarray, model, source: str = "input") -> Any:
    """Reshape ``X`` to the model's tensor input ``(-1, *shape)`` (a flat row per example is
    accepted) in its dtype, or name its columns for a column schema; a wrong number of
    features is a one-line error naming the expected and the actual shape."""
    schema = model.metadata.get_input_schema()
    if schema is None:
        return X
    if schema.is_tensor_spec():
        spec = schema.inputs[0]
        shape = tuple(spec.shape[1:])
        n = int(np.prod(shape))
        rows = X.shape[0] if X.ndim >= 1 else 0
        if X.ndim >= 2 and tuple(X.shape[1:]) == shape:
            return np.asarray(X, dtype=spec.type)
        if X.ndim == 2 and X.shape[1] == n:
            return np.asarray(X, dtype=spec.type).reshape(rows, *shape)
        raise ValueError(
            f"{source}: the model expects input of shape {(-1, *shape)} ({n} features per row), "
            f"got shape {X.shape}"
        )
    import pandas as pd

    names = schema.input_names()
    if X.ndim != 2 or X.shape[1] != len(names):
        raise ValueError(
            f"{source}: the model expects {len(names)} columns ({', '.join(map(str, names))}), "
            f"got shape {X.shape}"
        )
    return pd.DataFrame(X, columns=names)


def predict_file(model_uri: str, path: str | Path, trust: bool = False) -> np.ndarray:
    """Score the file at ``path`` with the model at ``model_uri``; one prediction per row.
    Only mlcore's own models unless ``trust`` (see `load_model`)."""
    model = load_model(model_uri, trust)
    X = fit_to_signature(read_features(path), model, Path(path).name)
    return np.asarray(model.predict(X))
