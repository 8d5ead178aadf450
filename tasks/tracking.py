"""The one place that talks to MLflow: runs, tags, params, metrics, artifacts and models.

Every function takes an explicit ``run_id``: Prefect runs tasks in worker threads and MLflow's
active run is per thread, so nothing here relies on a run being "active" except the child
runs, which are started in the thread that logs them with an explicit ``parent_run_id``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import DatasetInput, InputTag, Metric, RunStatus  # noqa: E402

PYFUNC_DIR = Path(__file__).parent / "pyfunc"
# Loading a models-from-code model swaps a mock into sys.modules["dbutils"] and restores the
# previous entry afterwards (mlflow.models.utils._mock_dbutils): two threads doing it at once
# leave the mock there for good. Prefect runs evaluate tasks in parallel threads, so model
# logging is serialised.
_MODEL_LOG_LOCK = threading.Lock()
PROJECT_DIR = Path(__file__).resolve().parent.parent


def client() -> MlflowClient:
    return MlflowClient()


@functools.cache
def git_commit() -> str:
    """The commit the code runs from, with ``-dirty`` when the work tree has changes."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=PROJECT_DIR,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_DIR,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def experiment_id(name: str) -> str:
    exp = client().get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client().create_experiment(name)
    except mlflow.exceptions.MlflowException:  # created meanwhile by a concurrent run
        return client().get_experiment_by_name(name).experiment_id


def _prefect_flow_run_id() -> str:
    try:
        from prefect.runtime import flow_run

        return str(flow_run.id or "")
    except Exception:  # noqa: BLE001 - outside a flow there is simply no id
        return ""


def _stringify(params: Mapping) -> dict[str, str]:
    return {
        k: ",".join(map(str, v)) if isinstance(v, list | tuple) else str(v)
        for k, v in params.items()
    }


def _prefect_run_tags() -> dict[str, str]:
    """``key=value`` tags of the current Prefect flow run whose key starts with ``mlcore.``
    (e.g. ``mlcore.rerun_of=<run id>``, set with ``prefect.tags`` by ``mlcore rerun``): they are
    copied onto the MLflow run when it is created, so a run that fails carries them too."""
    try:
        from prefect.runtime import flow_run

        tags = list(flow_run.tags or [])
    except Exception:  # noqa: BLE001 - outside a flow there are none
        return {}
    return dict(t.split("=", 1) for t in tags if t.startswith("mlcore.") and "=" in t)


@contextlib.contextmanager
def parent_run(
    experiment: str,
    flow: str,
    flow_params: Mapping,
    resolved: Mapping | None = None,
    tags: Mapping | None = None,
) -> Iterator[str]:
    """Create the flow run's MLflow run and yield its id; end it FINISHED, or FAILED (and
    re-raise) if the body raises -- a failed flow never leaves its run RUNNING.

    ``flow_params`` are the flow's arguments as called; ``resolved`` the values the flow
    derived from them (a default taken per dataset, say). Both are logged as params (strings,
    for the UI), the resolved value winning; the arguments are also kept as JSON in the tag
    ``mlcore.flow_params``, so a rerun gets them back exactly, with their types."""
    all_tags = {
        "prefect.flow_run_id": _prefect_flow_run_id(),
        "mlcore.flow": flow,
        "mlcore.flow_params": json.dumps(dict(flow_params)),
        "git_commit": git_commit(),
        **_prefect_run_tags(),
        **(tags or {}),
    }
    run = client().create_run(experiment_id(experiment), tags=all_tags, run_name=f"{flow}")
    run_id = run.info.run_id
    try:
        log_params(run_id, {**flow_params, **(resolved or {})})
        yield run_id
    except BaseException:
        client().set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    client().set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))


@contextlib.contextmanager
def child_run(parent_run_id: str, run_name: str, params: Mapping) -> Iterator[str]:
    """Start a child run in the calling thread (so pyfunc.log_model can use it) under
    an explicit parent; ended FAILED if the body raises."""
    parent = client().get_run(parent_run_id)
    with mlflow.start_run(
        experiment_id=parent.info.experiment_id,
        parent_run_id=parent_run_id,
        run_name=run_name,
        tags={"mlcore.flow": parent.data.tags.get("mlcore.flow", ""), "git_commit": git_commit()},
    ) as run:
        mlflow.log_params(_stringify(params))
        yield run.info.run_id


def log_params(run_id: str, params: Mapping) -> None:
    for key, value in _stringify(params).items():
        client().log_param(run_id, key, value)


def set_tags(run_id: str, tags: Mapping) -> None:
    for key, value in tags.items():
        client().set_tag(run_id, key, str(value))


def log_metrics(run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
    log_metric_history(run_id, {k: [v] for k, v in metrics.items()}, first_step=step)


def log_metric_history(
    run_id: str, history: Mapping[str, list[float]], first_step: int = 0
) -> None:
    """Log whole series at once (``name -> values``, steps counted from ``first_step``)."""
    buffer = MetricBuffer(run_id)
    for name, values in history.items():
        for i, value in enumerate(values):
            buffer.add(name, value, first_step + i)
    buffer.flush()


class MetricBuffer:
    """Collect metric points and send them in batches of MLflow's maximum size (a request
    per point is slow)."""

    def __init__(self, run_id: str):
        self.run_id = run_id
        self._points: list[Metric] = []

    def add(self, name: str, value: float, step: int) -> None:
        self._points.append(Metric(name, float(value), int(time.time() * 1000), int(step)))

    def flush(self) -> None:
        points, self._points = self._points, []
        for start in range(0, len(points), 1000):
            client().log_batch(self.run_id, metrics=points[start : start + 1000])


def log_figure(run_id: str, figure, artifact_file: str) -> None:
    client().log_figure(run_id, figure, artifact_file)


def log_dataframe(run_id: str, df: pd.DataFrame, artifact_file: str) -> None:
    """Log a table as CSV (readable in the MLflow UI's artifact view and by pandas)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact_file).name
        df.to_csv(path, index=False)
        parent = str(Path(artifact_file).parent)
        client().log_artifact(run_id, str(path), None if parent == "." else parent)


def log_text(run_id: str, text: str, artifact_file: str) -> None:
    client().log_text(run_id, text, artifact_file)


def log_dataset(
    run_id: str,
    X: np.ndarray,
    y: np.ndarray,
    name: str,
    source: str,
    digest: str,
    context: str = "training",
) -> None:
    """``log_input`` of a dataset, by explicit run id."""
    ds = mlflow.data.from_numpy(X, targets=y, source=source, name=name, digest=digest[:36])
    tags = [InputTag(key="mlflow.data.context", value=context)]
    client().log_inputs(run_id, [DatasetInput(dataset=ds._to_mlflow_entity(), tags=tags)])


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
    the model's code is a file, not a pickled object. Returns the model URI.
    """
    from mlflow.models import Model, infer_signature

    code = PYFUNC_DIR / f"{kind}.py"
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "weights.npz"
        np.savez(weights, **arrays)
        with _MODEL_LOG_LOCK:
            prediction = _load_code_model(code, weights).predict(None, input_example)
            info = Model.log(
                artifact_path=None,
                name=name,
                flavor=mlflow.pyfunc,
                run_id=run_id,
                python_model=str(code),
                artifacts={"weights": str(weights)},
                signature=infer_signature(input_example, prediction),
                input_example=input_example,
                pip_requirements=[f"numpy>={np.__version__.split('.')[0]}", "mlflow", *extra_pip],
            )
    return info.model_uri


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


# --- hyper-parameter sweeps (tasks/sweep.py, flows/sweep.py) ---------------------------------


def tracking_uri() -> str:
    """The tracking URI with a relative ``sqlite:///`` path made absolute, so a process with
    another working directory (a Dask worker) writes to the same store."""
    uri = mlflow.get_tracking_uri()
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


def use_tracking_uri(uri: str) -> None:
    """Point this process at ``uri`` (a sweep's trial on a Dask worker)."""
    if mlflow.get_tracking_uri() != uri:
        mlflow.set_tracking_uri(uri)


def log_table(run_id: str, df: pd.DataFrame, artifact_file: str) -> None:
    """An MLflow table artifact (shown as a table in the UI's artifact view)."""
    client().log_table(run_id, df, artifact_file)


def log_json(run_id: str, value, artifact_file: str) -> None:
    client().log_text(run_id, json.dumps(value, indent=1), artifact_file)


def load_json(run_id: str, artifact_file: str):
    with tempfile.TemporaryDirectory() as tmp:
        path = client().download_artifacts(run_id, artifact_file, tmp)
        return json.loads(Path(path).read_text())


def child_runs(parent_run_id: str) -> list:
    """Every run whose parent is ``parent_run_id`` (any status)."""
    parent = client().get_run(parent_run_id)
    return client().search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
        max_results=50000,
    )


def end_orphaned_children(parent_run_id: str) -> list[str]:
    """End KILLED every child run still RUNNING (its process died, or was stopped, before it
    could end it); returns their ids."""
    orphans = [r.info.run_id for r in child_runs(parent_run_id) if r.info.status == "RUNNING"]
    for run_id in orphans:
        client().set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))
    return orphans


@contextlib.contextmanager
def reopened_run(run_id: str) -> Iterator[str]:
    """Set a finished (or failed) run RUNNING again for more work; end it FINISHED, or FAILED
    (and re-raise) if the body raises."""
    client().update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
    try:
        yield run_id
    except BaseException:
        client().set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    client().set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
