"""The ``mlcore`` command line: real flows, real MLflow store, one-line errors."""

import contextlib
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from flows.cli import app
from tests.conftest import one_line_error

pytestmark = pytest.mark.slow

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]


def test_malformed_list_is_one_line(mlflow_store):
    one_line_error(
        runner.invoke(app, ["run", "housing", "--alphas", "1e-4,abc"]),
        r"error: --alphas: 'abc' is not a valid float",
    )


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["--sgd-lr", "0.01,0"], r"error: --sgd-lr: 0.0 must be > 0"),
        (["--alphas", "-1"], r"error: --alphas: -1.0 must be >= 0"),
        (["--sgd-epochs", "0"], r"error: --sgd-epochs: 0 must be >= 1"),
    ],
)
def test_out_of_range_values_are_one_line(mlflow_store, args, pattern):
    one_line_error(runner.invoke(app, ["run", "housing", *args]), pattern)


def test_unknown_experiment_is_one_line(mlflow_store):
    one_line_error(runner.invoke(app, ["runs", "nope"]), r"error: no MLflow experiment 'nope'")


def test_run_housing_then_compare_runs(prefect_harness, data_env, mlflow_store, tmp_path):
    args = ["run", "housing", "--alphas", "1e-4,10", "--sgd-lr", "0.01", "--sgd-epochs", "30"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    run_id = re.search(r"MLflow run id: (\w{32})", result.output).group(1)
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["alphas"] == "0.0001,10.0"
    assert "ridge" in result.output and "val_mae" in result.output
    # the parent row alone says which model won, with what, and how well
    best = MlflowClient().get_run(run.data.tags["best_run_id"])
    assert run.data.tags["best_model"] == best.data.params["model"]
    hparams = {k: v for k, v in best.data.params.items() if k != "model"}
    assert {k: str(v) for k, v in json.loads(run.data.tags["best_params"]).items()} == hparams
    assert run.data.metrics["best_val_mae"] == best.data.metrics["val_mae"]

    listed = runner.invoke(
        app, ["runs", "housing", "--sort", "best_val_mae"], env={"COLUMNS": "300"}
    )
    assert listed.exit_code == 0, listed.output
    assert run_id in listed.output and "FINISHED" in listed.output  # whole id, for rerun
    children = runner.invoke(app, ["runs", "housing", "--children"], env={"COLUMNS": "300"})
    assert children.output.count("child") == 4  # ols, two ridges, one sgd
    one_line_error(
        runner.invoke(app, ["runs", "housing", "--sort", "nope"]),
        r"error: --sort: no run has metric 'nope'",
    )
    # ... and in the MLflow UI, in a real browser, from the link `mlcore ui` prints
    ridges = [r for r in MlflowClient().search_runs([run.info.experiment_id])
              if r.data.params.get("model") == "ridge"]  # fmt: skip
    _in_the_browser(run, ridges, tmp_path)


def _chromium(folder: Path, name: str) -> list[str]:
    """Headless Debian Chromium with a fresh profile (no choice of the UI's stored)."""
    found = shutil.which("chromium")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("no chromium: .ci/run installs Debian's chromium with apt")
        pytest.skip("no chromium (Debian's chromium package)")
    profile = folder / f"profile-{name}"
    return [found, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1600,2400",
            "--virtual-time-budget=30000", f"--user-data-dir={profile}"]  # fmt: skip


def _look(url: str, folder: Path, name: str, expected: list[str]) -> str:
    """The DOM of ``url`` once its scripts ran. The UI fills a view from several requests, and a
    fresh UI answers its first ones slowly, so a page lacking some of ``expected`` is loaded
    again (a fresh profile each time), up to three times; then the check fails naming what it
    lacks, with a screenshot of the page kept beside its DOM."""
    run = functools.partial(subprocess.run, capture_output=True, text=True, timeout=180)
    for attempt in range(3):
        dom = run([*_chromium(folder, f"{name}-{attempt}"), "--dump-dom", url]).stdout
        (folder / f"{name}.html").write_text(dom)
        missing = [text for text in expected if text not in dom]
        if not missing:
            return dom
    shot = folder / f"{name}.png"
    run([*_chromium(folder, f"{name}-shot"), f"--screenshot={shot}", url])
    pytest.fail(f"the {name} view lacks {missing}: see {shot} and {name}.html")


def _chart_value(dom: str, metric: str) -> str:
    """The value on the bar of the chart card titled ``metric`` (MLflow's runs chart view)."""
    card = dom.split(f'title="{metric}">{metric}</h4>', 1)[1].split(' title="', 1)[0]
    return re.findall(r">(-?\d+(?:\.\d+)?)<", card)[0]


def _in_the_browser(parent, ridges, tmp_path):
    """`mlcore ui` on the store: the experiment's link it prints opens on the runs in the
    model-training mode with the parent's best_val_mae charted; the compare view of two
    children shows both."""
    from flows.stack import Server, free_port

    _chromium(tmp_path, "probe")  # (skips or fails before starting anything)
    port, log = free_port(), tmp_path / "ui.out"
    out = open(log, "wb")  # noqa: SIM115 (closed below)
    cmd = [sys.executable, "-m", "flows.cli", "ui", "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while "  housing: " not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        link = re.search(r"  housing: (\S+)", log.read_text()).group(1)
        experiment = parent.info.experiment_id
        assert link == (f"{base}/#/experiments/{experiment}/runs"
                        "?workflowType=machine_learning&compareRunsMode=CHART")  # fmt: skip
        Server("mlflow ui", base, f"{base}/health", proc, log).wait_healthy(120)
        title = 'title="best_val_mae">best_val_mae</h4>'  # its chart's card
        landing = _look(link, tmp_path, "landing", [parent.info.run_name, title])
        assert "Detect Issues" not in landing  # not MLflow's GenAI overview
        best = parent.data.metrics["best_val_mae"]
        assert _chart_value(landing, "best_val_mae") == f"{best:.2f}"
        two = ridges[:2]
        query = urllib.parse.urlencode(
            {"runs": json.dumps([r.info.run_id for r in two]), "experiments": f'["{experiment}"]'}
        )
        _look(f"{base}/#/compare-runs?{query}", tmp_path, "compare",
              ["Comparing 2 Runs", "val_mae", *(r.info.run_id for r in two),
               *(r.info.run_name for r in two)])  # fmt: skip
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        out.close()


def test_no_standardize_reproduces_the_course_printout(prefect_harness, data_env, mlflow_store):
    """The course notebook prints the errors of ridge (alpha 1e-4, bias penalised) and OLS
    fitted on housing_scale as downloaded; --no-standardize reproduces them to 1e-9."""
    import mlflow
    import pandas as pd

    args = ["run", "housing", "--alphas", "1e-4", "--sgd-lr", "0.01", "--sgd-epochs", "5",
            "--no-standardize"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    run_id = re.search(r"MLflow run id: (\w{32})", result.output).group(1)
    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.data.params["standardize"] == "False"
    children = {
        c.data.params["model"]: c.data.metrics
        for c in client.search_runs(
            [run.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'"
        )
    }
    course = {"ridge": (3.215534366263786, 3.0851716338615383),
              "ols": (3.2155356251530534, 3.0851717377669567)}  # fmt: skip
    for model, (train_mae, test_mae) in course.items():
        assert children[model]["train_mae"] == pytest.approx(train_mae, rel=1e-9)
        assert children[model]["test_mae"] == pytest.approx(test_mae, rel=1e-9)
    stats = pd.read_csv(
        mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="feature_stats.csv")
    )
    assert not stats["standardized"].any()
    pd.testing.assert_series_equal(
        stats["train_mean_std"], stats["train_mean_raw"], check_names=False
    )


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (Linux's /proc children lists)."""
    found, todo = set(), [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                if child not in found:
                    found.add(child)
                    todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# SIGHUP takes SIGTERM's path in `mlcore ui` (flows/cli/ui.py): tests/cli/test_process.py sends
# it to a command in-process
@pytest.mark.parametrize(("sig", "code"), [("SIGTERM", 143), ("SIGINT", 0)])
def test_mlcore_ui_serves_the_store_on_loopback_and_a_signal_stops_all_of_it(
    mlflow_store, tmp_path, sig, code
):
    """The UI answers on loopback; the signal, sent to the command alone (as a service
    manager, a closed terminal or kill(1) sends it), stops the mlflow ui process and its
    uvicorn child too: nothing is left, the port is free."""
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    from flows.stack import free_port

    port = free_port()
    out = open(tmp_path / "ui.out", "wb")  # noqa: SIM115 (closed below)

    def as_in_a_terminal() -> None:
        # SIGINT and SIGHUP as in a terminal's foreground: a test process (a job in the
        # background of a non-interactive shell, under nohup) may have them ignored, and a
        # child inherits that (the command then keeps ignoring them, on purpose)
        for ignored in (signal.SIGINT, signal.SIGHUP):
            signal.signal(ignored, signal.SIG_DFL)

    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "ui", "--port", str(port)], cwd=str(REPO),
        stdout=out, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=as_in_a_terminal,
    )  # fmt: skip
    below: set[int] = set()
    try:
        deadline, status = time.monotonic() + 120, None
        while time.monotonic() < deadline and status != 200:
            assert proc.poll() is None, (tmp_path / "ui.out").read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    status = r.status
            except OSError:
                time.sleep(0.5)
        assert status == 200
        assert (
            f"MLflow UI for {mlflow_store} at http://127.0.0.1:{port}"
            in (tmp_path / "ui.out").read_text()
        )
        below = _descendants(proc.pid)
        assert len(below) >= 3  # mlflow ui, its uvicorn server, the watchdog
        proc.send_signal(getattr(signal, sig))
        assert proc.wait(60) == code, (tmp_path / "ui.out").read_text()[-3000:]
        deadline = time.monotonic() + 30  # the watchdog exits last, after the group is gone
        while time.monotonic() < deadline and any(map(_alive, below)):
            time.sleep(0.2)
        assert not [pid for pid in below if _alive(pid)]
        with socket.socket() as s:  # nothing listens on the port any more
            assert s.connect_ex(("127.0.0.1", port)) != 0
        text = (tmp_path / "ui.out").read_text()
        if code:
            assert f"error: killed by {sig}" in text
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in below:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(30)
        out.close()


def test_trigger_without_a_reachable_server_is_one_line(tmp_path):
    import os
    import subprocess
    import sys

    from flows.stack import free_port

    env = {**os.environ, "PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api",
           "PREFECT_HOME": str(tmp_path)}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "trigger", "housing_regression/nightly"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert done.returncode == 1 and len(lines) == 1, done.stdout + done.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in done.stderr


def test_mlcore_ui_on_a_taken_port_fails_in_one_line(mlflow_store):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = runner.invoke(app, ["ui", "--port", str(port)])
    one_line_error(
        result, rf"error: cannot serve the UI on 127.0.0.1:{port}: Address already in use; "
        "pick another --port$",
    )  # fmt: skip
