"""A sweep on more than one machine, as a team runs it: ``mlcore server`` (Prefect and MLflow
servers), a real ``dask scheduler`` and two ``dask worker`` processes, and the sweep's own
process, each in its own folder.

The workers stand in for other machines: each runs in a mount namespace of its own
(``unshare --mount``) in which the server's and the driver's folders are hidden under empty
tmpfs mounts, so a worker cannot write any file the others can read: whatever it logs must go
through the tracking server."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from mlflow import MlflowClient

from flows.stack import Server, free_port
from tests.conftest import prefect_home
from tests.flows.test_sweep import study_of
from tests.flows.test_sweep_dask import FIXED, PAIR, Cluster

pytestmark = pytest.mark.slow

MLCORE = str(Path(sys.executable).parent / "mlcore")


def _can_unshare() -> bool:
    try:
        probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


class HiddenCluster(Cluster):
    """Workers that cannot see ``hidden`` folders (empty tmpfs mounts over them)."""

    def __init__(self, tmp_path, n_workers, env, hidden):
        self.hidden = hidden
        super().__init__(tmp_path, n_workers, env)

    def _start(self, cmd, env, name):
        if name.startswith("worker"):
            mounts = " && ".join(f"mount -t tmpfs none {h}" for h in self.hidden)
            cmd = ["unshare", "--mount", "sh", "-c", f'{mounts} && exec "$@"', "sh", *cmd]
        return super()._start(cmd, env, name)


def _start_mlcore_server(folder: Path, env: dict) -> tuple[subprocess.Popen, str, str]:
    """``mlcore server`` on free loopback ports; returns it, its Prefect API and MLflow URLs
    once both answer."""
    pp, mp = free_port(), free_port()
    cmd = [MLCORE, "server", "--prefect-port", str(pp), "--mlflow-port", str(mp),
           "--mlflow-backend", f"sqlite:///{folder / 'mlflow.db'}",
           "--artifacts", str(folder / "artifacts"), "--logs", str(folder / "logs")]  # fmt: skip
    out = open(folder / "server.out", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(cmd, env=env, cwd=folder, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    prefect, mlflow_url = f"http://127.0.0.1:{pp}/api", f"http://127.0.0.1:{mp}"
    deadline = time.monotonic() + 180
    for health in (f"{prefect}/health", f"{mlflow_url}/health"):
        while True:
            assert proc.poll() is None, (folder / "server.out").read_text()
            assert time.monotonic() < deadline, (folder / "server.out").read_text()
            try:
                with urllib.request.urlopen(health, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.5)
    return proc, prefect, mlflow_url


def _files(folder: Path, pattern: str) -> list[Path]:
    return sorted(folder.rglob(pattern))


@pytest.mark.timeout(900)
@pytest.mark.skipif(not _can_unshare(), reason="needs `unshare --mount` (root) to hide folders")
def test_a_sweep_on_workers_of_other_machines_logs_through_the_tracking_server(
    shared_data, tmp_path, _empty_mlflow_db
):
    server_dir, driver, workers_dir, elsewhere = (
        tmp_path / n for n in ("server", "driver", "workers", "elsewhere")
    )
    for folder in (server_dir, driver, workers_dir, elsewhere):
        folder.mkdir()
    shutil.copy(_empty_mlflow_db, server_dir / "mlflow.db")
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("PREFECT_API", "MLFLOW_", "MLCORE_"))}  # fmt: skip
    base["MLCORE_DATA_MIRROR"] = str(shared_data)
    server_env = {**base, "PREFECT_HOME": str(prefect_home(server_dir / "prefect-home"))}
    server, prefect_api, mlflow_url = _start_mlcore_server(server_dir, server_env)
    # each worker: the locked environment, the data mirror and a cache of its own, no tracking
    # URI or Prefect API of its own (the sweep sends both), nothing of the others' folders
    worker_env = {**base, "PREFECT_HOME": str(workers_dir / "prefect-home"),
                  "MLCORE_DATA_DIR": str(workers_dir / "raw")}  # fmt: skip
    cluster = HiddenCluster(workers_dir, 2, worker_env, hidden=[server_dir, driver])
    driver_env = {**base, "PREFECT_HOME": str(prefect_home(driver / "prefect-home")),
                  "MLCORE_DATA_DIR": str(driver / "raw"), "PREFECT_API_URL": prefect_api,
                  "COLUMNS": "200"}  # fmt: skip
    sweep = [MLCORE, "sweep", "convnet", *[a for p in PAIR for a in ("--param", p)],
             *[a for f in FIXED for a in ("--set", f)], "--seed", "3",
             "--dask-address", cluster.address]  # fmt: skip
    try:
        # a SQLite store on the driver's machine: the workers cannot reach it, and say so
        local = f"sqlite:///{driver / 'mlflow.db'}"
        refused = subprocess.run(
            sweep, env={**driver_env, "MLFLOW_TRACKING_URI": local}, cwd=driver,
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert refused.returncode == 1, refused.stdout + refused.stderr
        last = refused.stderr.strip().splitlines()[-1]
        blind = f"cannot see the tracking store's file {driver / 'mlflow.db'} (on another"
        assert last.startswith("error: Dask worker tcp://127.0.0.1:") and blind in last, last
        (failed,) = MlflowClient(local).search_runs(
            [MlflowClient(local).get_experiment_by_name("convnet").experiment_id]
        )
        assert failed.info.status == "FAILED"  # not left RUNNING

        # the tracking server: every trial logs through it
        done = subprocess.run(sweep, env={**driver_env, "MLFLOW_TRACKING_URI": mlflow_url},
                              cwd=driver, capture_output=True, text=True, timeout=600)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        parent_id = done.stdout.strip().splitlines()[-1].split()[-1]
        # no worker holds a SQLite file open
        for proc in cluster.workers:
            opened = [f.path for f in psutil.Process(proc.pid).open_files()]
            assert not [p for p in opened if p.endswith(".db")], opened
        worker_ids = {f"{os.uname().nodename}:{p.pid}" for p in cluster.workers}
        elsewhere_env = {**driver_env, "MLFLOW_TRACKING_URI": mlflow_url,
                         "PREFECT_HOME": str(elsewhere / "prefect-home")}  # fmt: skip
        resumed = subprocess.run(
            [MLCORE, "sweep", "--resume", parent_id], env=elsewhere_env, cwd=elsewhere,
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        client = MlflowClient(mlflow_url)
        parent = client.get_run(parent_id)
        assert parent.info.status == "FINISHED" and parent.data.tags["mlcore.runner"] == "dask"
        children = client.search_runs(
            [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'"
        )
        assert sorted(int(r.data.tags["mlcore.trial"]) for r in children) == [0, 1]
        for run in children:
            assert run.info.status == "FINISHED" and run.data.tags["mlcore.worker"] in worker_ids
            assert run.data.tags["mlcore.prefect_api_url"] == prefect_api
            assert {"best_val_acc", "test_acc"} <= set(run.data.metrics)
            # its artifacts went through the server into the server's folder
            assert client.list_artifacts(run.info.run_id, "checkpoints")
            assert run.info.artifact_uri.startswith("mlflow-artifacts:")
        assert _files(server_dir / "artifacts", "checkpoints/*")
        # the study is in Optuna's journal, logged through the server with the sweep's run...
        study = study_of(parent_id, client)
        assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
        # ... which --resume read from another folder (another machine) while the server ran
        assert resumed.returncode == 1 and resumed.stderr.strip().endswith("nothing to resume")
    finally:
        cluster.stop()
        Server("mlcore server", "", "", server, server_dir / "server.out").stop()
    # nothing was written where a worker runs but its data cache and Prefect's home
    assert not _files(workers_dir, "mlruns")
    databases = [p for p in _files(workers_dir, "*.db") if "prefect-home" not in p.parts]
    assert not databases, databases
