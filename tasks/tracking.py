"""The one place that talks to MLflow: runs, tags, params, metrics, artifacts and models.

Every function takes an explicit ``run_id``: Prefect runs tasks in worker threads and MLflow's
active run is per thread, so nothing here relies on a run being "active" except the child
runs, which are started in the thread that logs them with an explicit ``parent_run_id``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
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
    except BaseException as exc:
        tag_error(run_id, exc)
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


# --------------------------------------------------------------------------------------------
# failures, resuming a run, and its checkpoints

ERROR_TAG = "mlcore.error"


def error_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name if it has none)."""
    msg = getattr(exc, "message", None)  # MlflowException's message (no error-code prefix)
    msg = msg if isinstance(msg, str) and msg else str(exc)
    return msg.strip().splitlines()[0] if msg.strip() else type(exc).__name__


def tag_error(run_id: str, exc: BaseException) -> None:
    """Tag a failing run ``mlcore.error`` = the one-line reason. Never raises: the tracking
    server may be what failed, and the original error is the one to report."""
    with contextlib.suppress(Exception):
        client().set_tag(run_id, ERROR_TAG, error_line(exc)[:1000])


CHECKPOINT_TAG = "mlcore.checkpoints"
CHECKPOINT_DIR = "checkpoints"


def resumable_params(run_id: str, flow: str) -> dict:
    """The recorded arguments (tag ``mlcore.flow_params``) of ``run_id``, a run of ``flow``
    that may be resumed: it is not FINISHED nor still RUNNING, and was made by this code.
    Anything else is a ValueError naming the reason."""
    try:
        run = client().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise ValueError(f"no MLflow run {run_id!r} in {mlflow.get_tracking_uri()}") from None
    tags = run.data.tags
    if tags.get("mlcore.flow") != flow or "mlcore.flow_params" not in tags:
        made_by = tags.get("mlcore.flow") or "no mlcore flow"
        raise ValueError(f"cannot resume run {run_id}: it was made by {made_by}, not {flow}")
    status = run.info.status
    # hook: reap_if_dead (the run-liveness work) marks a RUNNING run whose process is gone KILLED
    reap = globals().get("reap_if_dead")
    if status == "RUNNING" and reap is not None:
        reap(run_id)
        status = client().get_run(run_id).info.status
    if status == "FINISHED":
        raise ValueError(f"cannot resume run {run_id}: it FINISHED; nothing to resume")
    if status == "RUNNING":
        raise ValueError(f"cannot resume run {run_id}: run is still RUNNING")
    if tags.get("git_commit") != git_commit():
        raise ValueError(
            f"cannot resume run {run_id}: it was made by other code (git_commit "
            f"{tags.get('git_commit')}, this is {git_commit()})"
        )
    return json.loads(tags["mlcore.flow_params"])


@contextlib.contextmanager
def reopened_run(run_id: str) -> Iterator[str]:
    """Set an ended run back to RUNNING (its old ``mlcore.error`` removed) and yield its id;
    end it FINISHED, or FAILED with ``mlcore.error`` if the body raises (as parent_run)."""
    client().update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
    if ERROR_TAG in client().get_run(run_id).data.tags:
        client().delete_tag(run_id, ERROR_TAG)
    try:
        yield run_id
    except BaseException as exc:
        tag_error(run_id, exc)
        client().set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    client().set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))


def last_metric_steps(run_id: str, names: list[str]) -> dict[str, int]:
    """The highest step logged so far of each metric in ``names`` that has one."""
    out = {}
    for name in names:
        steps = [m.step for m in client().get_metric_history(run_id, name)]
        if steps:
            out[name] = max(steps)
    return out


def logged_checkpoints(run_id: str) -> list[dict]:
    """The checkpoints logged to ``run_id`` by log_checkpoint, oldest first: dicts of
    ``epoch``, ``artifact`` (path in the run's artifacts) and ``sha256``."""
    return json.loads(client().get_run(run_id).data.tags.get(CHECKPOINT_TAG, "[]"))


def log_checkpoint(run_id: str, path: str | Path, epoch: int, keep: int = 2) -> None:
    """Log the checkpoint file at ``path`` as ``checkpoints/<file name>``; then record it (with
    its sha256) in the tag ``mlcore.checkpoints``, which lists the last ``keep`` ones, and
    delete the older checkpoint artifacts. The tag is written only once the upload is complete,
    so it never names a half-written artifact."""
    path = Path(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    client().log_artifact(run_id, str(path), CHECKPOINT_DIR)
    entry = {"epoch": int(epoch), "artifact": f"{CHECKPOINT_DIR}/{path.name}", "sha256": digest}
    kept = [c for c in logged_checkpoints(run_id) if c["artifact"] != entry["artifact"]]
    kept = [*kept, entry][-keep:]
    client().set_tag(run_id, CHECKPOINT_TAG, json.dumps(kept))
    names = {c["artifact"] for c in kept}
    stale = [
        a.path
        for a in client().list_artifacts(run_id, CHECKPOINT_DIR)
        if not a.is_dir and a.path not in names
    ]
    if stale:
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        repo = get_artifact_repository(
            client().get_run(run_id).info.artifact_uri, mlflow.get_tracking_uri()
        )
        for artifact in stale:
            repo.delete_artifacts(artifact)


def download_checkpoint(run_id: str, entry: Mapping, directory: str | Path) -> Path:
    """Download a checkpoint listed by logged_checkpoints into ``directory`` and check its
    sha256 (a mismatch is a ValueError and leaves no file)."""
    local = Path(client().download_artifacts(run_id, entry["artifact"], str(directory)))
    if hashlib.sha256(local.read_bytes()).hexdigest() != entry["sha256"]:
        local.unlink()
        raise ValueError(
            f"checkpoint {entry['artifact']} of run {run_id} does not match its sha256"
        )
    return local
