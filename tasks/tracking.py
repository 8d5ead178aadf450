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
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunStatus, RunTag  # noqa: E402

from tasks import environment  # noqa: E402
from tasks.killed import OWNED, kill_reason  # noqa: E402

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
        **environment.environment_tags(),
        **_prefect_run_tags(),
        **(tags or {}),
    }
    run = client().create_run(experiment_id(experiment), tags=all_tags, run_name=f"{flow}")
    run_id = run.info.run_id
    try:
        mark_process(run_id)
        log_params(run_id, {**flow_params, **(resolved or {})})
        log_text(run_id, environment.freeze_text(), environment.FREEZE_ARTIFACT)
        yield run_id
    except BaseException as exc:
        end_run(run_id, exc)
        raise
    end_run(run_id)


@contextlib.contextmanager
def child_run(parent_run_id: str, run_name: str, params: Mapping) -> Iterator[str]:
    """Start a child run in the calling thread (so pyfunc.log_model can use it) under
    an explicit parent; ended FAILED if the body raises."""
    root = _ROOT.get(parent_run_id, parent_run_id)

    def start():
        parent = client().get_run(parent_run_id)
        tags = {"mlcore.flow": parent.data.tags.get("mlcore.flow", ""), "git_commit": git_commit()}
        return mlflow.start_run(
            experiment_id=parent.info.experiment_id, parent_run_id=parent_run_id,
            run_name=run_name, tags={**tags, **process_tags()},
        ).info.run_id  # fmt: skip

    run_id = _send(parent_run_id, start, lambda folder: None)
    if run_id is None:  # the store is gone: a local child, kept under its parent's folder
        run_id = f"unsent-{uuid.uuid4().hex[:12]}"
        _ROOT[run_id] = root
        _keep_json(_spool_dir(run_id), "run.json", {"run_name": run_name, "parent": root})
        log_params(run_id, params)
        yield run_id
        return
    _ROOT[run_id] = root
    OWNED.append(run_id)
    try:
        log_params(run_id, params)
        yield run_id
    except BaseException as exc:
        _end_child(run_id, RunStatus.KILLED if kill_reason(exc) else RunStatus.FAILED)
        raise
    _end_child(run_id, RunStatus.FINISHED)


def _end_child(run_id: str, status: int) -> None:
    """End the calling thread's active (child) run; a store that is gone cannot be told, and
    must not hide the error that ends the flow."""
    try:
        mlflow.end_run(RunStatus.to_string(status))
    except Exception:  # noqa: BLE001
        if tracking_store_error() is None:
            raise


def log_params(run_id: str, params: Mapping) -> None:
    values = _stringify(params)

    def send():
        items = [Param(k, v) for k, v in values.items()]
        for start in range(0, len(items), 100):  # MLflow's most params per batch
            client().log_batch(run_id, params=items[start : start + 100])

    _send(run_id, send, lambda folder: _keep_json(folder, "params.json", values))


def set_tags(run_id: str, tags: Mapping) -> None:
    values = {k: str(v) for k, v in tags.items()}

    def send():
        items = [RunTag(k, v) for k, v in values.items()]
        for start in range(0, len(items), 100):
            client().log_batch(run_id, tags=items[start : start + 100])

    _send(run_id, send, lambda folder: _keep_json(folder, "tags.json", values))


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
    buffer.flush(final=True)


class MetricBuffer:
    """Collect metric points and send them in batches of MLflow's maximum size (a request
    per point is slow).

    A tracking store that has gone away does not stop training: ``flush`` keeps the points
    and tries again at a later flush, waiting longer after each failure (4x ``RETRY_DELAYS``
    seconds), and at the latest when the flow's run ends. ``flush(final=True)`` retries with
    ``RETRY_DELAYS`` back-offs and then, the store still gone, writes the points to
    ``./mlcore-unsent/<run id>/metrics.csv``; the flow then ends with ``TrackingUnavailable``
    naming that folder."""

    RETRY_DELAYS = (1.0, 2.0, 4.0)

    def __init__(self, run_id: str):
        self.run_id = run_id
        self._points: list[Metric] = []
        self._failures = 0
        self._next_try = 0.0

    def add(self, name: str, value: float, step: int) -> None:
        self._points.append(Metric(name, float(value), int(time.time() * 1000), int(step)))

    def flush(self, final: bool = False, retry: bool = True) -> None:
        if not self._points:
            return
        if _ROOT.get(self.run_id, self.run_id) in _SPOOLED:  # the flow already works offline
            self._keep()
            return
        if not final and time.monotonic() < self._next_try:
            return  # backing off: the points stay buffered
        delays = self.RETRY_DELAYS if final and retry else ()
        for attempt in range(len(delays) + 1):
            try:
                self._send()
                self._failures = 0
                return
            except Exception as exc:  # noqa: BLE001
                if tracking_store_error() is None:
                    raise  # the store answers: a real error, not an outage
                error = exc
            if attempt < len(delays):
                time.sleep(delays[attempt])
        self._failures += 1
        if not final:
            delay = self.RETRY_DELAYS[min(self._failures, len(self.RETRY_DELAYS)) - 1]
            self._next_try = time.monotonic() + 4 * delay
            with _SPOOL_LOCK:  # the flow's end tries once more (``end_run``)
                pending = _PENDING.setdefault(_ROOT.get(self.run_id, self.run_id), [])
                if self not in pending:
                    pending.append(self)
            return
        _mark_unsent(self.run_id, error)
        self._keep()

    def _send(self) -> None:
        while self._points:  # a batch sent is a batch dropped from the buffer
            client().log_batch(self.run_id, metrics=self._points[:1000])
            del self._points[:1000]

    def _keep(self) -> None:
        folder = _spool_dir(self.run_id)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "metrics.csv"
        new = not path.exists()
        with open(path, "a") as out:
            if new:
                out.write("key,value,step,timestamp\n")
            for m in self._points:
                out.write(f"{m.key},{m.value!r},{m.step},{m.timestamp}\n")
        self._points = []


def log_figure(run_id: str, figure, artifact_file: str) -> None:
    _send(
        run_id,
        lambda: client().log_figure(run_id, figure, artifact_file),
        lambda folder: figure.savefig(_artifact_path(folder, artifact_file)),
    )


def log_dataframe(run_id: str, df: pd.DataFrame, artifact_file: str) -> None:
    """Log a table as CSV (readable in the MLflow UI's artifact view and by pandas)."""

    def send():
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(artifact_file).name
            df.to_csv(path, index=False)
            parent = str(Path(artifact_file).parent)
            client().log_artifact(run_id, str(path), None if parent == "." else parent)

    _send(
        run_id, send, lambda folder: df.to_csv(_artifact_path(folder, artifact_file), index=False)
    )


def log_text(run_id: str, text: str, artifact_file: str) -> None:
    _send(
        run_id,
        lambda: client().log_text(run_id, text, artifact_file),
        lambda folder: _artifact_path(folder, artifact_file).write_text(text),
    )


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
    info = {"name": name, "source": source, "digest": digest, "context": context}
    _send(
        run_id,
        lambda: client().log_inputs(
            run_id, [DatasetInput(dataset=ds._to_mlflow_entity(), tags=tags)]
        ),
        lambda folder: _keep_json(folder, "datasets.json", {name: info}),
    )


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
                return Model.log(
                    artifact_path=None,
                    name=name,
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
            target = folder / name
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy(weights, target / "weights.npz")
            shutil.copy(code, target / code.name)
            return str(target)

        return _send(run_id, send, keep)


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
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _mlcore_version() -> str:
    import mlcore

    return mlcore.__version__


def _copy_mlcore_sources(dest: Path) -> Path:
    """Copy the ``.py`` files of the installed ``mlcore`` package to ``dest/mlcore`` and
    return that folder: compiled extensions, C sources and caches stay behind."""
    import shutil

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


# --- the end of a run: FINISHED, FAILED or KILLED, and the process that owns it -------------

HOST_TAG, PID_TAG, ERROR_TAG = "mlcore.host", "mlcore.pid", "mlcore.error"
UNSENT_DIR = "mlcore-unsent"


class TrackingUnavailable(RuntimeError):
    """The tracking store went away during a flow; what it could not take is on local disk."""


def process_tags() -> dict[str, str]:
    """``mlcore.host`` and ``mlcore.pid`` of this process: who owns a RUNNING run."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


def mark_process(run_id: str) -> None:
    """Tag ``run_id`` with the host and pid of this process (see ``reap_if_dead``)."""
    set_tags(run_id, process_tags())
    OWNED.append(run_id)


def end_own_runs(since: int, reason: str, status: int = RunStatus.KILLED) -> list[str]:
    """The last word of a command that a signal or an error stopped: every run this process
    owned (``OWNED[since:]``) that is still RUNNING ends ``status`` with ``reason`` in
    ``mlcore.error``. The flows end their runs themselves (``end_run``); this covers what they
    could not, e.g. a signal landing while the store was being written to. Returns the ids
    of the runs it ended; a store that cannot be reached is left to the reaper."""
    ended: list[str] = []
    if tracking_store_error() is not None:
        return ended
    for run_id in dict.fromkeys(OWNED[since:]):
        try:
            if client().get_run(run_id).info.status != "RUNNING":
                continue
            set_tags(run_id, {ERROR_TAG: reason[:1000]})
            client().set_terminated(run_id, RunStatus.to_string(status))
            ended.append(run_id)
        except Exception:  # noqa: BLE001 - reap_if_dead ends it at the next command
            continue
    return ended


def end_run(run_id: str, exc: BaseException | None = None) -> None:
    """End a flow's run: FINISHED, KILLED (a signal, with its reason in ``mlcore.error``) or
    FAILED. If the tracking store went away during the flow, raise ``TrackingUnavailable``
    naming the folder that holds what it could not take (unless the process was killed);
    a store that cannot be told the status never hides the error that ended the flow."""
    reason = kill_reason(exc)
    status = RunStatus.KILLED if reason else RunStatus.FAILED if exc else RunStatus.FINISHED
    for buffer in _PENDING.pop(run_id, []):  # metrics still waiting for the store
        with contextlib.suppress(Exception):
            buffer.flush(final=True, retry=reason is None)
    unsent = _unsent_error(run_id)
    if unsent is not None and reason is None:
        status = RunStatus.FAILED
    tags = (
        {ERROR_TAG: reason}
        if reason
        else {ERROR_TAG: str(unsent)}
        if unsent
        else {ERROR_TAG: error_line(exc)[:1000]}
        if exc
        else {}
    )
    if run_id not in _SPOOLED:
        try:
            set_tags(run_id, tags)
            client().set_terminated(run_id, RunStatus.to_string(status))
        except Exception as err:  # noqa: BLE001
            if exc is None and unsent is None:
                if tracking_store_error() is None:
                    raise
                raise TrackingUnavailable(
                    f"the MLflow tracking store {mlflow.get_tracking_uri()} went away: run "
                    f"{run_id} could not be ended FINISHED ({_first_line(err)})"
                ) from err
    if unsent is not None and reason is None:
        if exc is None:
            raise unsent
        raise unsent from exc


def reap_if_dead(run_id: str) -> bool:
    """If ``run_id`` is RUNNING but the process that owned it is gone (same host, and its pid
    no longer alive or now a process started after the run), end it KILLED with the reason in
    ``mlcore.error``. Runs of another host, or without the tags, are left alone. Returns
    whether the run was reaped."""
    return _reap(client().get_run(run_id))


def reap_dead_runs(experiment_names) -> list[str]:
    """``reap_if_dead`` for every RUNNING run (children too) of these experiments; returns
    the ids of the runs it ended."""
    ids = [e.experiment_id for n in experiment_names if (e := client().get_experiment_by_name(n))]
    if not ids:
        return []
    running = client().search_runs(
        ids, filter_string="attributes.status = 'RUNNING'", max_results=1000
    )
    return [r.info.run_id for r in running if _reap(r)]


def _reap(run) -> bool:
    if run.info.status != "RUNNING":
        return False
    tags = run.data.tags
    host, pid = tags.get(HOST_TAG), tags.get(PID_TAG)
    if host != socket.gethostname() or not (pid or "").isdigit():
        return False  # another machine's process, or no owner recorded: cannot tell
    started = _process_start(int(pid))
    # a pid taken over by a process started after the run is not the run's process; the half
    # second of slack covers clock ticks and a small clock adjustment between the two readings
    if started is not None and started <= run.info.start_time / 1000 + 0.5:
        return False
    gone = "no longer running" if started is None else "now belongs to another process"
    reason = f"process {pid} on {host} is gone ({gone}); found by mlcore at {time.ctime()}"
    client().set_tag(run.info.run_id, ERROR_TAG, reason)
    client().set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
    return True


def _process_start(pid: int) -> float | None:
    """The start time (epoch seconds) of process ``pid``, None if there is none (a zombie
    counts as gone)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        coarse = proc.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return _precise_start(pid, coarse)


def _precise_start(pid: int, coarse: float) -> float:
    """``coarse`` (psutil's start time: the whole-second boot time Linux gives, btime, plus
    the process's start in clock ticks since boot) made precise where /proc tells the boot
    time to the hundredth of a second: btime's truncation made a process started up to a
    second after a run look started before it. Falls back to ``coarse`` wherever the two
    disagree by more than btime's truncation can explain (a /proc/uptime that a container
    virtualises counts from another boot)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        ticks = int(stat[stat.rfind(")") + 2 :].split()[19])  # field 22: starttime
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        precise = time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return coarse
    return precise if -0.1 <= precise - coarse <= 1.1 else coarse


# --- is the tracking store there? ---------------------------------------------------------


def tracking_store_error(uri: str | None = None, timeout: float = 3.0) -> str | None:
    """One short check of the tracking store (``uri`` or MLflow's current one): None if it
    is usable, else why not. http(s): a GET of the server's ``/health`` with a ``timeout``;
    sqlite and file stores: the folder exists and is writable; other databases: the TCP port
    accepts a connection."""
    uri = uri or mlflow.get_tracking_uri()
    parsed = urllib.parse.urlparse(uri)
    scheme = parsed.scheme.split("+")[0]
    if scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as r:
                return None if r.status == 200 else f"/health answered HTTP {r.status}"
        except urllib.error.HTTPError as exc:
            return f"/health answered HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            return str(getattr(exc, "reason", exc))
    if scheme in ("sqlite", "file", ""):
        if scheme == "sqlite":
            path = uri.split(":///", 1)[1] if ":///" in uri else ""
            if path in ("", ":memory:"):
                return None
        else:
            path = parsed.path if scheme == "file" else uri
        target = Path(path)
        folder = target if scheme != "sqlite" and target.is_dir() else target.parent
        if not folder.is_dir():
            return f"folder {folder} does not exist"
        if not os.access(folder, os.W_OK) or (target.exists() and not os.access(target, os.R_OK)):
            return f"{target if target.exists() else folder} is not writable"
        return None
    if parsed.hostname and parsed.port:  # postgresql://, mysql://, ...
        try:
            socket.create_connection((parsed.hostname, parsed.port), timeout=timeout).close()
        except OSError as exc:
            return str(exc)
    return None


# --- what a store that went away could not take: ./mlcore-unsent/<flow run id>/ ------------

_ROOT: dict[str, str] = {}  # a child run's id -> its flow's run id
_SPOOLED: set[str] = set()  # flow run ids with something kept locally
_SPOOL_ERRORS: dict[str, str] = {}
_SPOOL_LOCK = threading.Lock()
_PENDING: dict[str, list] = {}  # flow run id -> MetricBuffers holding points the store refused


def _spool_dir(run_id: str) -> Path:
    root = _ROOT.get(run_id, run_id)
    base = Path.cwd() / UNSENT_DIR / root
    return base if root == run_id else base / run_id


def _mark_unsent(run_id: str, exc: BaseException) -> None:
    root = _ROOT.get(run_id, run_id)
    with _SPOOL_LOCK:
        _SPOOLED.add(root)
        _SPOOL_ERRORS.setdefault(root, _first_line(exc))


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def _unsent_error(run_id: str) -> TrackingUnavailable | None:
    if run_id not in _SPOOLED:
        return None
    uri = mlflow.get_tracking_uri()
    return TrackingUnavailable(
        f"the MLflow tracking store {uri} went away during run {run_id}: what it could not "
        f"take (the trained model, metrics, plots) is kept in {_spool_dir(run_id)}"
    )


def _send(run_id: str, send, keep):
    """``send()`` to the tracking store; if the store is gone (or already was for this flow),
    ``keep(folder)`` on local disk instead and remember that the flow could not send it."""
    if _ROOT.get(run_id, run_id) not in _SPOOLED:
        try:
            return send()
        except Exception as exc:  # noqa: BLE001
            if tracking_store_error() is None:
                raise  # the store answers: a real error, not an outage
            _mark_unsent(run_id, exc)
    folder = _spool_dir(run_id)
    folder.mkdir(parents=True, exist_ok=True)
    return keep(folder)


def _keep_json(folder: Path, name: str, values: Mapping) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    with _SPOOL_LOCK:
        old = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps({**old, **values}, indent=1, default=str))


def _artifact_path(folder: Path, artifact_file: str) -> Path:
    path = folder / "artifacts" / artifact_file
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


# --------------------------------------------------------------------------------------------
# failures, resuming a run, and its checkpoints


def error_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name if it has none)."""
    msg = getattr(exc, "message", None)  # MlflowException's message (no error-code prefix)
    msg = msg if isinstance(msg, str) and msg else str(exc)
    return msg.strip().splitlines()[0] if msg.strip() else type(exc).__name__


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
    if status == "RUNNING" and reap_if_dead(run_id):  # its process is gone: now KILLED
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
    """Set an ended run back to RUNNING (its old ``mlcore.error`` removed, this process as its
    owner) and yield its id; end it as parent_run does (``end_run``)."""
    client().update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
    if ERROR_TAG in client().get_run(run_id).data.tags:
        client().delete_tag(run_id, ERROR_TAG)
    mark_process(run_id)  # this process owns it now (see reap_if_dead)
    try:
        yield run_id
    except BaseException as exc:
        end_run(run_id, exc)
        raise
    end_run(run_id)


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
