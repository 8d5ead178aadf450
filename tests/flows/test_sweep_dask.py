"""mlcore sweep on Dask: a LocalCluster of worker processes, an existing cluster started here
(``dask scheduler`` / ``dask worker`` on free loopback ports), and a worker killed mid-trial."""

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import dask
import psutil
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from flows.cli import app
from flows.experiments import CONVNET
from flows.runners import connect, task_runner
from flows.sweep import run_sweep
from tests.conftest import one_line_error
from tests.flows.test_sweep import trial_runs

pytestmark = pytest.mark.slow

DASK = str(Path(sys.executable).parent / "dask")
MLCORE = str(Path(sys.executable).parent / "mlcore")
GRID = ["hidden_dim=8,16", "lr=1e-3,1e-2"]  # 4 trials: some finish while one is killed
PAIR = ["hidden_dim=8,16", "lr=1e-2"]  # 2 trials, one per worker, for comparing runners
FIXED = ["num_train=200", "epochs=1", "num_filters=4", "batch_size=50"]
# the killed-worker grid: a trial long enough (about 0.1 s an epoch) to be killed between two
# of its checkpoints
LONGER = ["epochs=20", "num_filters=4", "batch_size=50"]


def per_trial(run_id):
    """(hidden_dim, lr) -> the trial's metrics but its wall times, for comparing runners."""
    return {
        (r.data.params["hidden_dim"], r.data.params["lr"]): {
            k: v for k, v in r.data.metrics.items() if k not in CONVNET.timings
        }
        for r in trial_runs(run_id).values()
    }


def assert_complete(run_id, n, log_models="best"):
    client = MlflowClient()
    assert client.get_run(run_id).info.status == "FINISHED"
    runs = trial_runs(run_id)
    assert sorted(runs) == list(range(n))
    best = client.get_run(run_id).data.tags["best_run_id"]
    for r in runs.values():
        assert r.info.status == "FINISHED"
        assert {"best_val_acc", "test_acc", "final_train_acc"} <= set(r.data.metrics)
        plots = {a.path for a in client.list_artifacts(r.info.run_id, "plots")}
        if log_models == "best" and r.info.run_id != best:  # only the best one's model
            assert plots == set() and r.data.tags["mlcore.model"] == "skipped"
            continue
        assert plots == {"plots/training_curves.png", "plots/filters.png"}
        model = client.get_logged_model(r.data.tags["mlcore.model_uri"].split("/")[-1])
        assert model.source_run_id == r.info.run_id
    return runs


@pytest.fixture
def prefect_api(prefect_harness):
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


def prefect_task_runs(mlflow_run) -> dict:
    """The states of a flow run's task runs in the Prefect API, by task run name."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    flow_run_id = mlflow_run.data.tags["prefect.flow_run_id"]
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {r.name: r.state for r in runs}


def blas_threads():
    from threadpoolctl import threadpool_info

    return {pool["internal_api"]: pool["num_threads"] for pool in threadpool_info()}


def _scheduler_http(dask_scheduler):
    return dask_scheduler.http_server.address, dask_scheduler.http_server.port


def test_local_cluster_workers_have_one_blas_thread_and_ours_is_untouched(mlflow_store):
    before = dict(os.environ)
    runner_obj, width = task_runner("dask", 2, None)
    assert width is None
    taken = socket.socket()  # Dask's default HTTP port held, as a second cluster would hold it
    with contextlib.suppress(OSError):
        taken.bind(("127.0.0.1", 8787))
        taken.listen()
    with taken, runner_obj, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert connect(runner_obj) == 2
        client = runner_obj.client
        host, port = client.run_on_scheduler(_scheduler_http)
        assert host == "127.0.0.1" and port not in (0, 8787)
        assert not [w for w in caught if "already in use" in str(w.message)]
        assert os.environ == before
        envs = client.run(lambda: os.environ.get("OMP_NUM_THREADS"))
        threads = client.run(blas_threads)
        pids = client.run(os.getpid)
        faults = client.run(page_faults_of_1mib_arrays)
        # warmed up: a first trial does not import scikit-learn's data readers in the trial phase
        readers = client.run(lambda: {"sklearn.datasets", "flows.convnet"} <= set(sys.modules))
    assert os.environ == before
    assert set(readers.values()) == {True}
    # the workers were spawned without the nanny's MALLOC_TRIM_THRESHOLD_=65536 (glibc then
    # maps and unmaps every array above 128 KiB: 256 faults each), and our Dask config is as it was
    assert all(f < 2000 for f in faults.values()), faults
    assert dask.config.get("distributed.nanny.pre-spawn-environ")["MALLOC_TRIM_THRESHOLD_"]
    assert len(pids) == 2 and os.getpid() not in pids.values()
    assert set(envs.values()) == {"1"}
    # what the libraries really use: numpy's BLAS (and any OpenMP runtime) with one thread
    assert all(t and set(t.values()) == {1} for t in threads.values()), threads


def test_workers_a_nanny_gave_the_slow_allocator_setting_are_named(mlflow_store, capsys):
    """A cluster of the user's own, its workers spawned by Dask's nanny with its defaults
    (MALLOC_TRIM_THRESHOLD_=65536): the sweep says so, in one line, and carries on."""
    from distributed import LocalCluster
    from prefect_dask import DaskTaskRunner

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:  # fmt: skip
        faults = cluster.get_client().run(page_faults_of_1mib_arrays)
        assert all(f > 200 * 200 for f in faults.values()), faults  # what the setting costs
        with DaskTaskRunner(address=cluster.scheduler_address) as runner_obj:
            assert connect(runner_obj) == 1
    out = capsys.readouterr().out
    assert "1 Dask worker(s) run with MALLOC_TRIM_THRESHOLD_=65536 (the Dask nanny's " in out
    assert "docs/sweeps.md, 'Workers of your own'" in out


def page_faults_of_1mib_arrays(n: int = 200) -> int:
    """Minor page faults of this process while it makes, fills and frees ``n`` 1 MiB arrays."""
    import resource

    import numpy as np

    np.ones(1 << 17).sum()  # (the heap grows once)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        np.ones(1 << 17).sum()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


class Cluster:
    """A real ``dask scheduler`` and ``dask worker`` processes on loopback, stopped at the end."""

    def __init__(self, tmp_path: Path, n_workers: int, env: dict, scheduler_env: dict = ()):
        self.tmp, self.env, self.procs, self.workers = tmp_path, env, [], []
        self.file = tmp_path / "scheduler.json"
        self.scheduler = self._start(
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
             "--scheduler-file", str(self.file)], {**env, **dict(scheduler_env)}, "scheduler",
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not self.file.exists():
            assert self.scheduler.poll() is None, (tmp_path / "scheduler.log").read_text()
            assert time.monotonic() < deadline, "the scheduler did not start"
            time.sleep(0.2)
        self.address = json.loads(self.file.read_text())["address"]
        for _ in range(n_workers):
            self.add_worker()
        self.wait_for(n_workers)

    def _start(self, cmd, env, name):
        log = open(self.tmp / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(cmd, env=env, cwd=self.tmp, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def add_worker(self):
        proc = self._start(
            [DASK, "worker", self.address, "--nthreads", "1", "--no-nanny", "--host",
             "127.0.0.1", "--no-dashboard"], self.env, f"worker-{len(self.workers)}",
        )  # fmt: skip
        self.workers.append(proc)
        return proc

    def wait_for(self, n):
        from distributed import Client

        with Client(self.address, timeout=30) as client:
            client.wait_for_workers(n, timeout=60)

    def stop(self):
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def worker_env(data_env, mlflow_store, tmp_path):
    """What a user's workers would have: the data mirror, their own PREFECT_HOME, and no
    Prefect API URL (each would start a temporary server if the sweep did not send its own)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["PREFECT_HOME"] = str(tmp_path / "worker-prefect-home")
    env["MLCORE_CHECKPOINT_SECONDS"] = "0"  # a checkpoint every (short) epoch, to be killed between
    return env


@pytest.mark.timeout(1500)
def test_convnet_grid_is_identical_sequentially_on_a_local_cluster_and_an_existing_one(
    prefect_api, worker_env, mlflow_store, tmp_path
):
    seq = run_sweep("convnet", PAIR, seed=3, set_=FIXED, runner="sequential")
    runs = assert_complete(seq["run_id"], 2)
    me = f"{socket.gethostname()}:{os.getpid()}"
    assert {r.data.tags["mlcore.worker"] for r in runs.values()} == {me}
    expected = per_trial(seq["run_id"])
    assert len(expected) == 2

    local = run_sweep(
        "convnet", PAIR, seed=3, set_=FIXED, runner="dask", workers=2, log_models="all"
    )
    runs = assert_complete(local["run_id"], 2, log_models="all")
    assert per_trial(local["run_id"]) == expected
    workers = {r.data.tags["mlcore.worker"] for r in runs.values()}
    assert me not in workers and 1 <= len(workers) <= 2
    # the workers reported to this session's Prefect API, not to servers of their own
    assert {r.data.tags["mlcore.prefect_api_url"] for r in runs.values()} == {prefect_api}
    assert MlflowClient().get_run(local["run_id"]).data.tags["mlcore.runner"] == "dask"

    cluster = Cluster(tmp_path, 2, worker_env)
    try:
        remote = run_sweep(
            "convnet", PAIR, seed=3, set_=FIXED, runner="dask", dask_address=cluster.address
        )
        runs = assert_complete(remote["run_id"], 2)
        worker_ids = {f"{socket.gethostname()}:{p.pid}" for p in cluster.workers}
        assert {r.data.tags["mlcore.worker"] for r in runs.values()} <= worker_ids
        assert {r.data.tags["mlcore.prefect_api_url"] for r in runs.values()} == {prefect_api}
        # no worker started a Prefect server (or anything else) of its own
        assert all(psutil.Process(p.pid).children(recursive=True) == [] for p in cluster.workers)
    finally:
        cluster.stop()
    assert per_trial(remote["run_id"]) == expected


# three sweeps of real processes: minutes on a busy two-core machine, past the default 600 s
@pytest.mark.timeout(1500)
def test_a_killed_worker_loses_its_trial_and_resume_finishes_it(
    prefect_api, worker_env, mlflow_store, tmp_path
):
    # allowed-failures 0: the scheduler reports a task whose worker died instead of retrying it
    scheduler_env = {"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}
    cluster = Cluster(tmp_path, 2, worker_env, scheduler_env)
    env = {**worker_env, "PREFECT_API_URL": prefect_api, "COLUMNS": "200",
           "MLFLOW_TRACKING_URI": mlflow_store}  # fmt: skip
    args = [MLCORE, "sweep", "convnet", *[a for p in GRID for a in ("--param", p)],
            *[a for f in LONGER for a in ("--set", f)], "--seed", "3", "--runner", "dask",
            "--dask-address", cluster.address]  # fmt: skip
    try:
        sweep = subprocess.Popen(args, env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)  # fmt: skip
        client = MlflowClient()
        victim, deadline = None, time.monotonic() + 600
        while victim is None:
            assert sweep.poll() is None and time.monotonic() < deadline, sweep.stdout.read()
            running = client.search_runs(
                [e.experiment_id for e in client.search_experiments()],
                "attributes.status = 'RUNNING'",
            )
            pids = {p.pid: p for p in cluster.workers}
            # a trial under way: its run has its tags, its params (the seed among them) and a
            # checkpoint (it will continue from there)
            under_way = (r for r in running
                         if "mlcore.worker" in r.data.tags and "seed" in r.data.params
                         and client.list_artifacts(r.info.run_id, "checkpoints"))  # fmt: skip
            for r in under_way:
                pid = int(r.data.tags["mlcore.worker"].rsplit(":", 1)[1])
                if pid in pids:
                    victim, lost_trial = pids[pid], int(r.data.tags["mlcore.trial"])
                    parent_id = r.data.tags["mlflow.parentRunId"]
                    break
            time.sleep(0.05)
        victim.kill()
        out, _ = sweep.communicate(timeout=300)
        assert sweep.returncode == 1, out
        last = out.strip().splitlines()[-1]
        assert last.startswith("error:") and f"trial {lost_trial} was lost" in last, out
        assert f"mlcore sweep --resume {parent_id}" in last
        assert client.get_run(parent_id).info.status == "FAILED"
        runs = trial_runs(parent_id)
        assert runs[lost_trial].info.status == "KILLED"
        # ... and in the Prefect API, the lost trial's task run is CRASHED, not left RUNNING
        lost = prefect_task_runs(client.get_run(parent_id))[f"trial-{lost_trial}"]
        assert lost.type.value == "CRASHED" and "Dask worker was lost" in lost.message
        finished = {n for n, r in runs.items() if r.info.status == "FINISHED"}
        assert lost_trial not in finished and finished <= {0, 1, 2, 3}
        # resume on the surviving worker: only the unfinished trials run
        resumed = subprocess.run(
            [MLCORE, "sweep", "--resume", parent_id, "--runner", "dask", "--dask-address",
             cluster.address], env=env, cwd=tmp_path, capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert resumed.stdout.strip().splitlines()[-1] == f"MLflow run id: {parent_id}"
    finally:
        cluster.stop()
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["trials_run"] == 4 - len(finished)
    after = [r for r in client.search_runs([parent.info.experiment_id],
             f"tags.mlflow.parentRunId = '{parent_id}'")]  # fmt: skip
    done = [r for r in after if r.info.status == "FINISHED"]
    assert sorted(int(r.data.tags["mlcore.trial"]) for r in done) == [0, 1, 2, 3]
    # the lost trial continued in its own run from its last checkpoint...
    assert len(after) == 4
    rerun = next(r for r in done if int(r.data.tags["mlcore.trial"]) == lost_trial)
    assert rerun.info.run_id == runs[lost_trial].info.run_id
    assert 1 <= int(rerun.data.tags["mlcore.resumed_from_epoch"]) < 20
    # ... to the bits of an uninterrupted run of the same trial (mlcore run, the trial's seed)
    options = dict(f.split("=") for f in LONGER)
    options |= {k: rerun.data.params[k] for k in ("hidden_dim", "lr", "seed")}
    args = ["run", "convnet", *(x for k, v in options.items()
                                for x in (f"--{k.replace('_', '-')}", v))]  # fmt: skip
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    single = client.get_run(out.stdout.strip().splitlines()[-1].split()[-1])
    for name in ("best_val_acc", "final_train_acc", "test_acc"):
        assert single.data.metrics[name] == rerun.data.metrics[name], name
    losses = [[m.value for m in client.get_metric_history(r.info.run_id, "loss")]
              for r in (rerun, single)]  # fmt: skip
    per_epoch = int(single.data.params["n_train"]) // 50
    assert len(losses[0]) == 20 * per_epoch and losses[0] == losses[1]
    assert "registered_version" in parent.data.tags
    one_line_error(CliRunner().invoke(app, ["sweep", "--resume", parent_id]), r"nothing to resume")
