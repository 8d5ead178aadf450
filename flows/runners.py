"""Where a sweep's trials run: the task runner of each ``--runner`` (threads, or Dask worker
processes), the Dask cluster it starts or connects to, and what to do with a trial whose worker
was lost."""

from __future__ import annotations

import contextlib
import os

from prefect.task_runners import ThreadPoolTaskRunner

from tasks import tracking

RUNNERS = ("sequential", "threads", "dask")


def lost(exc: BaseException) -> bool:
    """A trial that did not fail by itself: its worker process or connection was lost."""
    from concurrent.futures import CancelledError

    try:
        from distributed import KilledWorker
        from distributed.comm import CommClosedError
    except ImportError:  # pragma: no cover - distributed is a dependency
        return isinstance(exc, CancelledError)
    return isinstance(exc, KilledWorker | CommClosedError | CancelledError)


def task_runner(runner: str, workers: int | None, dask_address: str | None):
    """The task runner of the trials, and how many trials may run at once (None: ask the Dask
    cluster)."""
    if runner not in RUNNERS:
        raise ValueError(f"--runner: {runner!r} is not one of {', '.join(RUNNERS)}")
    if dask_address and runner != "dask":
        raise ValueError(
            f"--dask-address runs the trials on that Dask cluster: drop --runner {runner}"
        )
    if runner == "sequential":
        if workers not in (None, 1):
            raise ValueError(
                f"--workers {workers}: --runner sequential runs one trial at a time "
                "(--runner threads or dask for more)"
            )
        return ThreadPoolTaskRunner(max_workers=1), 1
    cores = workers or os.cpu_count() or 1
    if runner == "threads":
        return ThreadPoolTaskRunner(max_workers=cores), cores
    from prefect_dask import DaskTaskRunner

    if dask_address:
        if workers:
            raise ValueError("--workers: the cluster at --dask-address has its own workers")
        if "://" not in dask_address:
            raise ValueError(f"--dask-address: expected tcp://HOST:PORT, got {dask_address!r}")
        return DaskTaskRunner(address=dask_address), None
    # one BLAS/OpenMP thread per worker process (set in the workers' environment, not ours):
    # two workers with two threads each would fight over the cores
    one_thread = {v: "1" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    # no dashboard; the scheduler's small HTTP server (health checks) on a free loopback port,
    # not on 8787, which a second sweep or any other cluster may hold
    cluster = {
        "n_workers": cores, "threads_per_worker": 1, "processes": True, "host": "127.0.0.1",
        "dashboard_address": "127.0.0.1:0", "scheduler_kwargs": {"dashboard": False},
        "env": one_thread,
    }  # fmt: skip
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=cluster), None


SLOW_MALLOC = "MALLOC_TRIM_THRESHOLD_"


def connect(dask_runner) -> int:
    """Start (or connect to) the Dask task runner's cluster; return its worker threads.

    distributed's nanny writes its ``pre-spawn-environ`` (OMP_NUM_THREADS=1, ...) into this
    process's environment before spawning each worker and leaves it there: it is put back, so
    only the workers run with one thread.

    The nanny also spawns each worker with ``MALLOC_TRIM_THRESHOLD_=65536``, which turns off
    glibc's adaptive thresholds: every array above 128 KiB is then mapped and unmapped afresh
    (tens of thousands of page faults per digits training) and a trial trains about 1.5x
    slower. mlcore's own LocalCluster spawns its workers without it."""
    import dask

    spawn_env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    spawn_env.pop(SLOW_MALLOC, None)
    saved = dict(os.environ)
    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ": spawn_env}):
            client = dask_runner.client
    finally:
        os.environ.clear()
        os.environ.update(saved)
    # part of starting a worker, not of the trial phase: import the trials' code (Prefect,
    # MLflow, matplotlib, mlcore, scikit-learn's data readers: tens of seconds on a busy
    # machine) and open the tracking
    # store (MLflow imports its SQL store, seconds, on a client's first call) before the clock
    # starts
    uri = tracking.tracking_uri()
    db = tracking.sqlite_path(uri)
    db = db if db is not None and os.path.exists(db) else None  # (else made by the first run)
    warmed = client.run(_warm_up, uri, db)
    blind = [w for w, (_, sees) in warmed.items() if not sees]
    if blind:
        raise ValueError(
            f"Dask worker {blind[0]} cannot see the tracking store's file {db} (on another "
            "machine?): its trials would log to a SQLite file of its own; set "
            "MLFLOW_TRACKING_URI to a tracking server all workers reach (mlcore server)"
        )
    slow = {w: malloc for w, (malloc, _) in warmed.items() if malloc}
    if slow:
        print(
            f"{len(slow)} Dask worker(s) run with {SLOW_MALLOC}={next(iter(slow.values()))} "
            "(the Dask nanny's default), which makes training about 1.5x slower there: "
            "see docs/sweeps.md, 'Workers of your own'"
        )
    return max(sum(client.nthreads().values()), 1)


def _warm_up(tracking_uri: str, db: str | None = None) -> tuple[str | None, bool]:
    """Run on each worker before the trials; returns its ``MALLOC_TRIM_THRESHOLD_`` unless it
    also has a ``MALLOC_MMAP_THRESHOLD_`` (then both thresholds were chosen, not defaulted), and
    whether it sees the SQLite file ``db`` of the tracking store (when there is one): a worker
    on another machine would create a file of its own there and log its trials into it."""
    if db is not None and not os.path.exists(db):
        return None, False
    import flows.convnet  # noqa: F401
    import flows.housing  # noqa: F401
    import tasks.sweep  # noqa: F401

    import_data_readers()
    tracking.use_tracking_uri(tracking_uri)
    # (a store this worker cannot open: each trial's run reports why)
    with contextlib.suppress(Exception):
        tracking.client().search_experiments(max_results=1)
    if os.environ.get("MALLOC_MMAP_THRESHOLD_"):  # fixed thresholds chosen with care
        return None, True
    return os.environ.get(SLOW_MALLOC), True


def import_data_readers() -> None:
    """Import what mlcore.data imports on a dataset's first read (scikit-learn's readers):
    about a second of a process's first trial otherwise, counted in the trial phase."""
    import sklearn.datasets  # noqa: F401
    import sklearn.model_selection  # noqa: F401


def dask_width() -> int:
    """Worker threads of the Dask cluster this flow's task runner is connected to."""
    from prefect.context import FlowRunContext

    return connect(FlowRunContext.get().task_runner)


def crash_task_run(future, reason: str) -> None:
    """A trial whose Dask worker died cannot end its own Prefect task run, which would stay
    RUNNING in the Prefect API (and UI) for ever: end it CRASHED with the reason. Best
    effort: the sweep's outcome does not depend on it."""
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    task_run_id = getattr(future, "task_run_id", None)
    if task_run_id is None:
        return
    try:
        with get_client(sync_client=True) as client:
            state = client.read_task_run(task_run_id).state
            if state is None or not state.is_final():
                client.set_task_run_state(
                    task_run_id, Crashed(message=f"its Dask worker was lost: {reason}"), force=True
                )
    except Exception:  # noqa: BLE001 - the API's view is secondary to the sweep's result
        return
