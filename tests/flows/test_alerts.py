"""Alerts for real: a Prefect server (all its services) on a free loopback port, the alerts
installed by ``mlcore alerts``, the gradient-check deployment served by ``mlcore serve``, and
each kind of message caught by an HTTP receiver on loopback: a flow run of it made to fail, a
model that regressed, a run nothing picked up (Late), one still running after the window, that
one's process then stopped by SIGTERM (Crashed), and a run past its flow's timeout (TimedOut)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from flows.alerts import AUTOMATION_NAME, BLOCK_NAME, install_alerts
from flows.stack import Server, free_port, start_mlflow_server, start_prefect_server
from tests.conftest import prefect_home

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def wait_for(condition, timeout: float, what: str, *alive: Server):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        for server in alive:
            assert server.process.poll() is None, f"{server.name} stopped: {server.tail(20)}"
        assert time.monotonic() < deadline, f"no {what} within {timeout:.0f} s"
        time.sleep(0.25)
    return value


REGRESSED_FLOW = """\
import json, sys
from prefect import flow, tags
from prefect.context import get_run_context
from tasks.registry import signal_regression

run_id, summary = sys.argv[1], sys.argv[2]
info = {"model": "housing-regressor", "summary": summary, "champion_run_id": "c0ffee"}


@flow(name="nightly_regression")
def nightly():
    signal_regression(run_id, "housing-regressor", info)
    run = get_run_context().flow_run
    return {"id": str(run.id), "name": run.name}


with tags("mlcore"):
    print(json.dumps(nightly()))
"""


def regressed_flow_run(env: dict, tmp_path: Path) -> dict:
    """A flow run tagged ``mlcore`` (as a deployment's are), in a process of its own,
    signalling a regression through tasks.registry.signal_regression as register_model does;
    its MLflow run, summary and flow run."""
    store = env["MLFLOW_TRACKING_URI"]
    run_id = MlflowClient(store).create_run("0").info.run_id
    summary = "best_val_mae 3.4 vs 3 of housing-regressor version 1 (champion): worse by 0.4"
    (tmp_path / "regressed.py").write_text(REGRESSED_FLOW)
    done = subprocess.run(
        [sys.executable, str(tmp_path / "regressed.py"), run_id, summary], cwd=REPO,
        env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert MlflowClient(store).get_run(run_id).data.tags["mlcore.regressed"] == summary
    flow_run = json.loads(done.stdout.strip().splitlines()[-1])
    return {"run_id": run_id, "summary": summary, "flow_run": flow_run}


HUNG_FLOW = """\
import json, time
from prefect import flow, tags
from prefect.context import get_run_context


@flow(name="hung")
def hung():
    run = get_run_context().flow_run
    print(json.dumps({"id": str(run.id), "name": run.name}), flush=True)
    time.sleep(600)


with tags("mlcore"):
    hung()
"""


def hung_flow_run(env: dict, tmp_path: Path) -> dict:
    """A flow run tagged ``mlcore`` that never ends, in a process of its own (the caller kills
    it); its process, id and name once it runs."""
    (tmp_path / "hung.py").write_text(HUNG_FLOW)
    cmd = [sys.executable, str(tmp_path / "hung.py")]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    line = proc.stdout.readline()
    assert line, "the hung flow did not start"
    return {"process": proc, **json.loads(line)}


TIMED_OUT_FLOW = """\
import json, time
from prefect import flow, tags
from prefect.context import get_run_context

seen = {}


@flow(name="too_slow", timeout_seconds=1)
def too_slow():
    run = get_run_context().flow_run
    seen.update(id=str(run.id), name=run.name)
    time.sleep(30)


with tags("mlcore"):
    state = too_slow(return_state=True)
print(json.dumps({**seen, "state": state.name}))
"""


def flow_run_of(script: str, env: dict, tmp_path: Path) -> dict:
    """Run ``script`` (a flow tagged ``mlcore``, printing its run's id and name as JSON on its
    last line) in a process of its own, to its end."""
    (tmp_path / "flow_script.py").write_text(script)
    done = subprocess.run(
        [sys.executable, str(tmp_path / "flow_script.py")], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def unserved_late_run(served_deployment):
    """A flow run, due a minute ago, of a deployment tagged ``mlcore`` that nothing serves."""
    from datetime import datetime, timedelta, timezone

    from prefect.client.orchestration import get_client
    from prefect.states import Scheduled

    with get_client(sync_client=True) as client:
        unserved = client.create_deployment(
            flow_id=served_deployment.flow_id, name="unserved", tags=["mlcore"]
        )
        due = datetime.now(timezone.utc) - timedelta(minutes=1)
        return client.create_flow_run_from_deployment(unserved, state=Scheduled(scheduled_time=due))


def test_a_failed_run_of_a_deployment_sends_one_message(tmp_path, receiver):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url, received = receiver
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    daily = next(d for d in spec["deployments"] if d["name"] == "daily")
    daily["schedules"] = []
    spec["deployments"] = [daily]
    (tmp_path / "prefect.yaml").write_text(yaml.safe_dump(spec))

    prefect = start_prefect_server(
        port=free_port(),
        home=prefect_home(tmp_path / "prefect-home"),
        log=tmp_path / "prefect-server.log",
    )
    # the team stack's MLflow server: the messages link to the runs' pages in its UI
    mlflow_server = start_mlflow_server(
        port=free_port(), backend_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        artifacts=tmp_path / "mlartifacts", log=tmp_path / "mlflow-server.log",
    )  # fmt: skip
    served = None
    try:
        prefect.wait_healthy()
        mlflow_server.wait_healthy()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
        env |= {
            "PREFECT_API_URL": prefect.url,
            "PREFECT_HOME": str(tmp_path / "client-home"),
            "PREFECT_RUNNER_POLL_FREQUENCY": "1",
            "MLFLOW_TRACKING_URI": mlflow_server.url,
        }
        serve_log = tmp_path / "serve.log"
        with open(serve_log, "wb") as out:
            proc = subprocess.Popen(
                [str(BIN / "mlcore"), "serve", "--file", str(tmp_path / "prefect.yaml")],
                env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        served = Server("mlcore serve", "", "", proc, serve_log)
        installed = subprocess.run(
            [str(BIN / "mlcore"), "alerts", "--alert-url", url], env=env, cwd=tmp_path,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120,
        )  # fmt: skip
        assert installed.returncode == 0, installed.stdout
        assert (
            "alerts: failed, late and still-running (after 240 min) flow runs of mlcore "
            f"deployments and worse models -> {url}"
        ) in installed.stdout

        with temporary_settings(updates={PREFECT_API_URL: prefect.url}):
            # a second install changes nothing but the block's and automation's contents
            install_alerts(url)
            with get_client(sync_client=True) as client:
                assert len(client.read_automations_by_name(AUTOMATION_NAME)) == 1
                blocks = client.read_block_documents()
                assert [b.name for b in blocks if b.name == BLOCK_NAME] == [BLOCK_NAME]

                def deployment():
                    try:
                        return client.read_deployment_by_name("gradient_check/daily")
                    except ObjectNotFound:  # not registered yet
                        return None

                dep = wait_for(deployment, 120, "deployment served", prefect, served)
            assert "mlcore" in dep.tags
            # a layer that does not exist: the flow's gradient check of it fails
            run = run_deployment(
                "gradient_check/daily",
                parameters={"layers": ["nosuch"]},
                timeout=120,
                poll_interval=1,
            )
        assert run.state.is_failed(), run.state
        wait_for(lambda: received, 60, "alert message", prefect)
        time.sleep(3)  # a second message (a duplicate automation or trigger) would come now
        assert len(received) == 1, received

        # a run of an mlcore deployment (tag mlcore) that made a model worse than its champion
        regressed = regressed_flow_run(env, tmp_path)
        wait_for(lambda: len(received) > 1, 60, "regression message", prefect)
        time.sleep(3)
        # the MLflow run the failed flow run made, named on it (tag mlflow.run_id=<id>)
        store = MlflowClient(mlflow_server.url)
        (mlflow_run,) = store.search_runs(
            [store.get_experiment_by_name("gradcheck").experiment_id],
            f"tags.`prefect.flow_run_id` = '{run.id}'",
        )
        regressed_experiment = store.get_run(regressed["run_id"]).info.experiment_id
        with urllib.request.urlopen(mlflow_server.url, timeout=30) as page:  # the UI itself
            ui_page = page.status, page.headers.get_content_type()

        # runs that never start or never end: a run of a deployment nothing serves, due a
        # minute ago (Prefect's late-runs service marks it Late), and a flow run tagged
        # mlcore still running after the window (0.2 min here: Prefect's least is 10 s)
        with temporary_settings(updates={PREFECT_API_URL: prefect.url}):
            install_alerts(url, max_running=0.2)
            late_run = unserved_late_run(dep)
        hung = hung_flow_run(env, tmp_path)
        try:
            wait_for(lambda: len(received) > 3, 120, "late and still-running messages", prefect)
            # its process killed (as a service manager stops it): Prefect ends the run Crashed
            hung["process"].send_signal(signal.SIGTERM)
            hung["process"].wait(60)
            wait_for(lambda: len(received) > 4, 60, "crashed message", prefect)
        finally:
            if hung["process"].poll() is None:
                hung["process"].kill()
                hung["process"].wait(30)
        # a run that outlived its flow's timeout: TimedOut
        timed_out = flow_run_of(TIMED_OUT_FLOW, env, tmp_path)
        wait_for(lambda: len(received) > 5, 60, "timed-out message", prefect)
        time.sleep(3)
    finally:
        with ThreadPoolExecutor() as pool:  # all at once: each takes seconds to stop
            servers = [s for s in (served, prefect, mlflow_server) if s is not None]
            list(pool.map(Server.stop, servers))

    assert len(received) == 6, received
    late, still = sorted((r["text"] for r in received[2:4]), key=lambda t: "still" in t)
    crashed, timed = received[4]["text"], received[5]["text"]
    assert crashed.startswith("mlcore: hung Crashed\n"), crashed
    assert f"Flow run: {hung['name']} ({hung['id']})\n" in crashed and "State: Crashed" in crashed
    assert timed.startswith("mlcore: too_slow TimedOut\n"), timed
    assert f"Flow run: {timed_out['name']} ({timed_out['id']})\n" in timed
    assert "State: TimedOut\nReason: Flow run exceeded timeout of 1.0 second" in timed, timed
    assert late.startswith("mlcore: unserved is late\nNot started: no worker picked it up"), late
    assert f"Flow run: {late_run.name} ({late_run.id})\nMLflow run: (none recorded)\n" in late
    assert "State: Late\n" in late
    assert still.startswith("mlcore: hung still running\nStill running after 0.2 min"), still
    assert f"Flow run: {hung['name']} ({hung['id']})\n" in still and "State: Running" in still
    text = received[1]["text"]
    assert text.startswith("mlcore: housing-regressor regressed\n"), text
    assert f"Regression: {regressed['summary']}\n" in text
    assert f"MLflow run: {regressed['run_id']} (the champion's: c0ffee)\n" in text
    assert f"Flow run: {regressed['flow_run']['name']} ({regressed['flow_run']['id']})" in text
    # the run's page in the MLflow UI (the route MLflow prints for a run on a server)
    page = f"{mlflow_server.url}/#/experiments/{regressed_experiment}/runs/{regressed['run_id']}"
    assert text.endswith(f"\nMLflow: {page}"), text
    assert ui_page == (200, "text/html")
    text = received[0]["text"]
    assert "gradient_check/daily" in text
    assert f"{run.name} ({run.id})" in text
    assert "State: Failed" in text
    assert mlflow_run.info.status == "FAILED"
    failed_page = (
        f"{mlflow_server.url}/#/experiments/{mlflow_run.info.experiment_id}/runs/"
        f"{mlflow_run.info.run_id}"
    )
    assert text.endswith(f"\nMLflow: {failed_page}"), text
    assert f"MLflow run: {mlflow_run.info.run_id}\n" in text
    reason = run.state.message.replace("\n", " ")
    assert reason and f"Reason: {reason}" in text
    assert f"{prefect.url.removesuffix('/api')}/runs/flow-run/{run.id}" in text
