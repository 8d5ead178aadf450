"""Deployments for real: a Prefect server and an MLflow server on free loopback ports (on a
throw-away PostgreSQL cluster), the deployments of prefect.yaml, a process worker, a run
triggered by the CLI and found again through MLflow's REST API, and a schedule due every
minute run by the worker. The same route on SQLite (the default of ``mlcore server``) runs in
tests/flows/test_alerts.py (a Prefect server with its services, deployments, failed and
regressed runs) and tests/flows/test_sweep_team.py (``mlcore server``); ``mlcore serve`` alone
is the last test here."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from flows.deployments import declared_deployments
from flows.stack import Server, free_port, local_stack
from tests.conftest import prefect_home

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
EXPECTED = {
    "housing_regression/nightly": "0 2 * * *",
    "gradient_check/daily": "30 2 * * *",
    "convnet_training/weekly": "0 3 * * 0",
    "pipeline/on-demand": None,
}


def post_json(url: str, body: dict) -> dict:
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as response:
        return json.loads(response.read())


def pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


@pytest.fixture
def postgres():
    """A throw-away PostgreSQL cluster on a free loopback port with databases prefect and
    mlflow; stopped and removed afterwards."""
    bindir = pg_bin()
    if bindir is None:
        if os.environ.get("CI") or os.environ.get("MLCORE_REQUIRE_DATA"):
            pytest.fail("PostgreSQL is not installed: .ci/run installs Debian's postgresql")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    # initdb refuses to run as root: as root, the cluster belongs to the postgres user, in a
    # folder of its own that it can reach (pytest's tmp_path is private to root)
    root = Path(tempfile.mkdtemp(prefix="mlcore-pg-"))
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_postgres:
        shutil.chown(root, "postgres")
    data, port = root / "data", free_port()
    initdb = [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"]
    subprocess.run([*as_postgres, *initdb], check=True, capture_output=True)
    proc = subprocess.Popen(
        [*as_postgres, str(bindir / "postgres"), "-D", str(data), "-p", str(port),
         "-h", "127.0.0.1", "-k", str(root)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    server = Server("PostgreSQL", "", "", proc, root / "log")
    try:
        for _ in range(120):
            ready = subprocess.run([str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                                   capture_output=True)  # fmt: skip
            if ready.returncode == 0:
                break
            time.sleep(0.5)
        for db in ("prefect", "mlflow"):
            createdb = [
                str(bindir / "createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "postgres",
            ]
            subprocess.run([*createdb, db], check=True, capture_output=True)
        yield f"postgres@127.0.0.1:{port}"
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_prefect_yaml_declares_every_flow():
    found = {d["full_name"]: d for d in declared_deployments()}
    assert set(found) == set(EXPECTED)
    for name, cron in EXPECTED.items():
        assert [s["cron"] for s in found[name]["schedules"]] == ([cron] if cron else [])
        assert found[name]["work_pool"]["name"] == "mlcore-local"


def every_minute(tmp_path: Path) -> Path:
    """prefect.yaml with the gradient check's schedule due every minute (two small layers)."""
    import yaml

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    gradcheck = next(d for d in spec["deployments"] if d["name"] == "daily")
    gradcheck["schedules"] = [{"cron": "* * * * *", "timezone": "UTC"}]
    gradcheck["parameters"]["layers"] = ["affine", "relu"]
    (tmp_path / "prefect.yaml").write_text(yaml.safe_dump(spec))
    return tmp_path / "prefect.yaml"


def test_deploy_trigger_and_find_the_run(postgres, tmp_path, shared_data, receiver):
    """The team route: servers, a work pool, ``prefect deploy --all``, a process worker; a run
    triggered by ``mlcore trigger`` and one its schedule (every minute here) made, each
    COMPLETED with a FINISHED MLflow run; a run the worker ran that failed sends its alert."""
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.alerts import install_alerts

    hook, received = receiver
    prefect_db, mlflow_backend = (
        f"postgresql+asyncpg://{postgres}/prefect",
        f"postgresql://{postgres}/mlflow",
    )
    expected = {**EXPECTED, "gradient_check/daily": "* * * * *"}
    with local_stack(
        prefect_db=prefect_db, mlflow_backend=mlflow_backend, artifacts=tmp_path / "artifacts",
        logs=tmp_path / "logs", home=prefect_home(tmp_path / "prefect-home"),
    ) as (prefect_srv, mlflow_srv):  # fmt: skip
        env = {
            **os.environ,
            "PREFECT_API_URL": prefect_srv.url,
            "PREFECT_HOME": str(tmp_path / "prefect-home"),
            "MLFLOW_TRACKING_URI": mlflow_srv.url,
            "MLCORE_DATA_MIRROR": str(shared_data),
            "MLCORE_DATA_DIR": str(tmp_path / "raw"),
            "MLCORE_PROJECT_DIR": str(REPO),
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "PREFECT_WORKER_QUERY_SECONDS": "2",
        }

        def cli(*args, check=True, timeout=600):
            done = subprocess.run(
                args, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout
            )
            assert not check or done.returncode == 0, f"{args}: {done.stdout} {done.stderr}"
            return done

        cli(str(BIN / "prefect"), "work-pool", "create", "mlcore-local", "--type", "process")
        cli(str(BIN / "prefect"), "--no-prompt", "deploy", "--all",
            "--prefect-file", str(every_minute(tmp_path)))  # fmt: skip

        deployments = post_json(f"{prefect_srv.url}/deployments/filter", {})
        flows = {f["id"]: f["name"] for f in post_json(f"{prefect_srv.url}/flows/filter", {})}
        by_name = {f"{flows[d['flow_id']]}/{d['name']}": d for d in deployments}
        assert set(by_name) == set(expected)
        for name, cron in expected.items():
            crons = [s["schedule"]["cron"] for s in by_name[name]["schedules"]]
            assert crons == ([cron] if cron else []), name
            assert by_name[name]["work_pool_name"] == "mlcore-local"
        assert by_name["housing_regression/nightly"]["parameters"]["alphas"][0] == 0.0001

        install_alerts(hook, api_url=prefect_srv.url)
        worker_log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 (closed below)
        worker = subprocess.Popen(
            [str(BIN / "prefect"), "worker", "start", "-p", "mlcore-local", "--type", "process"],
            env=env, cwd=REPO, stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:  # the refusals first, while the worker starts
            bad = cli(sys.executable, "-m", "flows.cli", "trigger", "nope/nope", check=False)
            assert bad.returncode == 1 and bad.stderr.strip().startswith(
                "error: no deployment 'nope/nope'"
            )
            bad = cli(sys.executable, "-m", "flows.cli", "trigger", "housing_regression/nightly",
                      "--set", "nope=1", check=False)  # fmt: skip
            assert bad.returncode == 1 and "has no parameter 'nope'" in bad.stderr
            run = cli(
                sys.executable, "-m", "flows.cli", "trigger", "housing_regression/nightly",
                "--set", "alphas=1e-4,1.0", "--set", "sgd_lrs=0.01", "--set", "sgd_epochs=[30]",
                "--timeout", "600",
            )  # fmt: skip
            # a layer that does not exist: the worker's run of the gradient check fails
            with temporary_settings(updates={PREFECT_API_URL: prefect_srv.url}):
                failed = run_deployment(
                    "gradient_check/daily", parameters={"layers": ["nosuch"]}, timeout=300,
                    poll_interval=1,
                )  # fmt: skip
            assert failed.state.is_failed(), failed.state
            # the every-minute schedule: the server's scheduler made its runs, the worker runs
            # one when due
            scheduled = {"deployments": {"id": {"any_": [by_name["gradient_check/daily"]["id"]]}}}
            deadline, done = time.monotonic() + 240, []
            while not done:
                assert worker.poll() is None and time.monotonic() < deadline, (
                    tmp_path / "worker.log"
                ).read_text()
                time.sleep(2)
                runs = [
                    r
                    for r in post_json(f"{prefect_srv.url}/flow_runs/filter", scheduled)
                    if r["auto_scheduled"]
                ]
                assert not [r for r in runs if r["state"]["type"] in ("FAILED", "CRASHED")], runs
                done = [r for r in runs if r["state"]["type"] == "COMPLETED"]
        finally:
            Server("worker", "", "", worker, tmp_path / "worker.log").stop()
            worker_log.close()
        assert "Completed" in run.stdout, run.stdout + run.stderr
        flow_run_id = run.stdout.split("flow run ")[1].split()[0]

        found = post_json(
            f"{mlflow_srv.url}/api/2.0/mlflow/runs/search",
            {"experiment_ids": [_experiment_id(mlflow_srv.url, "housing")],
             "filter": f"tags.`prefect.flow_run_id` = '{flow_run_id}'"},
        )["runs"]  # fmt: skip
        assert len(found) == 1
        mlflow_run = found[0]
        assert mlflow_run["info"]["status"] == "FINISHED"
        params = {p["key"]: p["value"] for p in mlflow_run["data"]["params"]}
        assert params["alphas"] == "0.0001,1.0" and params["sgd_epochs"] == "30"
        metrics = {m["key"] for m in mlflow_run["data"]["metrics"]}
        assert {"best_val_mae", "best_test_mae"} <= metrics
        deadline = time.monotonic() + 60  # the alert of the failed run, and no other
        while not received and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(2)
        assert len(received) == 1, received
        text = received[0]["text"]
        assert text.startswith("mlcore: daily Failed\n"), text
        assert f"Flow run: {failed.name} ({failed.id})\n" in text and "State: Failed" in text
        found = post_json(
            f"{mlflow_srv.url}/api/2.0/mlflow/runs/search",
            {"experiment_ids": [_experiment_id(mlflow_srv.url, "gradcheck")],
             "filter": f"tags.`prefect.flow_run_id` = '{done[0]['id']}'"},
        )["runs"]  # fmt: skip
        assert [r["info"]["status"] for r in found] == ["FINISHED"]
        params = {p["key"]: p["value"] for p in found[0]["data"]["params"]}
        assert params["layers"] == "affine,relu"


def _experiment_id(url: str, name: str) -> str:
    with urllib.request.urlopen(
        f"{url}/api/2.0/mlflow/experiments/get-by-name?experiment_name={name}"
    ) as r:
        return json.loads(r.read())["experiment"]["experiment_id"]


def test_mlcore_serve_alone_runs_an_every_minute_schedule(tmp_path):
    """`mlcore serve` with no Prefect server of the user's: it starts one with its scheduler,
    serves every deployment of the file it is given (no work pool), and a schedule due every
    minute produces a COMPLETED flow run whose MLflow run is FINISHED. SIGTERM stops both."""
    from mlflow import MlflowClient

    every_minute(tmp_path)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env |= {"PREFECT_HOME": str(prefect_home(tmp_path / "ph")), "MLFLOW_TRACKING_URI": store}
    out = tmp_path / "serve.log"
    with open(out, "wb") as log:
        serve = subprocess.Popen(
            [str(BIN / "mlcore"), "serve", "--file", str(tmp_path / "prefect.yaml")], env=env,
            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 180
            while "Prefect API: http" not in out.read_text():
                assert serve.poll() is None and time.monotonic() < deadline, out.read_text()
                time.sleep(0.5)
            api = out.read_text().split("Prefect API: ")[1].split()[0].rstrip("/")
            port = int(api.split(":")[2].split("/")[0])
            deadline, by_name, done = time.monotonic() + 240, {}, []
            while not done:
                assert serve.poll() is None and time.monotonic() < deadline, out.read_text()
                time.sleep(2)
                flows = {f["id"]: f["name"] for f in post_json(f"{api}/flows/filter", {})}
                by_name = {
                    f"{flows[d['flow_id']]}/{d['name']}": d
                    for d in post_json(f"{api}/deployments/filter", {})
                }
                if "gradient_check/daily" in by_name:
                    runs = post_json(f"{api}/flow_runs/filter", {
                        "deployments": {"id": {"any_": [by_name["gradient_check/daily"]["id"]]}},
                    })  # fmt: skip
                    done = [r for r in runs if r["state"]["type"] == "COMPLETED"]
                    assert not [r for r in runs if r["state"]["type"] in ("FAILED", "CRASHED")]
            os.kill(serve.pid, signal.SIGTERM)
            serve.wait(60)
        finally:
            Server("serve", "", "", serve, out).stop()
    # every deployment of the file is served by the process, with the file's schedules
    crons = {n: [s["schedule"]["cron"] for s in d["schedules"]] for n, d in by_name.items()}
    assert crons == {**{n: [c] if c else [] for n, c in EXPECTED.items()},
                     "gradient_check/daily": ["* * * * *"]}  # fmt: skip
    assert all(d["work_pool_name"] is None for d in by_name.values())
    assert done[0]["auto_scheduled"] is True
    client = MlflowClient(store)
    (run,) = client.search_runs(
        [client.get_experiment_by_name("gradcheck").experiment_id],
        f"tags.`prefect.flow_run_id` = '{done[0]['id']}'",
    )
    assert run.info.status == "FINISHED" and run.data.params["layers"] == "affine,relu"
    with socket.socket() as s:  # its Prefect server stopped with it
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_mlcore_server_starts_both_servers_on_loopback_and_stops_them(tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.alerts import AUTOMATION_NAME, REGRESSION_AUTOMATION_NAME

    pp, mp = free_port(), free_port()
    hook = f"http://127.0.0.1:{free_port()}/hook"  # installing posts nothing
    backend = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "flows.cli", "server", "--prefect-port", str(pp),
           "--mlflow-port", str(mp), "--mlflow-backend", backend,
           "--artifacts", str(tmp_path / "artifacts"),
           "--logs", str(tmp_path / "logs"), "--alert-url", hook]  # fmt: skip
    env = {**os.environ, "PREFECT_HOME": str(prefect_home(tmp_path / "ph"))}
    out = open(tmp_path / "server.out", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    try:
        deadline, printed = time.monotonic() + 180, tmp_path / "server.out"
        while time.monotonic() < deadline and "alerts: " not in printed.read_text():
            assert proc.poll() is None, (tmp_path / "server.out").read_text()
            time.sleep(0.5)
        assert f"-> {hook} (Prefect API http://127.0.0.1:{pp}/api)" in printed.read_text()
        # --alert-url installed both automations on the server it started
        with temporary_settings(updates={PREFECT_API_URL: f"http://127.0.0.1:{pp}/api"}):
            with get_client(sync_client=True) as client:
                for name in (AUTOMATION_NAME, REGRESSION_AUTOMATION_NAME):
                    (automation,) = client.read_automations_by_name(name)
                    assert automation.enabled and automation.actions, name
        assert f"Prefect API  http://127.0.0.1:{pp}/api" in printed.read_text()
        assert f"MLflow       http://127.0.0.1:{mp}" in printed.read_text()
        for url in (f"http://127.0.0.1:{pp}/api/health", f"http://127.0.0.1:{mp}/health"):
            with urllib.request.urlopen(url, timeout=10) as response:
                assert response.status == 200
        os.kill(proc.pid, signal.SIGTERM)  # only `mlcore server` itself: it stops the servers
        assert proc.wait(60) == 0
    finally:
        Server("mlcore server", "", "", proc, tmp_path / "server.out").stop()
        out.close()
    for port in (pp, mp):  # both servers are gone with it
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0
