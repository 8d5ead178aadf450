"""No run left RUNNING: the CLI killed for real (SIGTERM, SIGINT, SIGKILL) mid-training, and
the reaper that ends a RUNNING run whose process is gone."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import psutil
import pytest
import typer
from mlflow import MlflowClient
from typer.testing import CliRunner

from flows.cli import app
from tasks import tracking
from tests.conftest import prefect_home
from tests.flows.test_sweep import study_of

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _cli_env(tmp_path: Path, store: str) -> dict[str, str]:
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": store,
        "PREFECT_HOME": str(prefect_home(tmp_path / "prefect")),
        "MLCORE_CHECKPOINT_SECONDS": "0",  # a checkpoint every (short) epoch, to be killed between
    }
    for key in ("PREFECT_API_URL", "PREFECT_LOGGING_LEVEL"):
        env.pop(key, None)
    return env


def _start_training(tmp_path: Path, store: str):
    """``mlcore run convnet`` as a subprocess with far more epochs than the test waits for;
    returns it once its first epoch's metrics are in the store, with its run id and the pids
    of every process it started."""
    out = open(tmp_path / "cli.out", "wb")  # noqa: SIM115 (closed by the caller's kill)
    err = open(tmp_path / "cli.err", "wb")  # noqa: SIM115
    cli = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "run", "convnet", "--epochs", "100000",
         "--num-train", "100", "--batch-size", "50"],
        cwd=tmp_path, env=_cli_env(tmp_path, store), stdout=out, stderr=err,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    client = MlflowClient(store)
    deadline = time.monotonic() + 300
    run_id = None
    while time.monotonic() < deadline:
        assert cli.poll() is None, (tmp_path / "cli.err").read_text()
        exp = client.get_experiment_by_name("convnet")
        runs = client.search_runs([exp.experiment_id]) if exp else []
        if runs and client.get_metric_history(runs[0].info.run_id, "train_acc"):
            run_id = runs[0].info.run_id
            break
        time.sleep(0.5)
    assert run_id is not None, "the CLI never finished an epoch"
    started = psutil.Process(cli.pid).children(recursive=True)
    return cli, run_id, started


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.NoSuchProcess:
            pass
    return alive


def _wait_gone(procs: list[psutil.Process], bound: float = 60.0) -> list[psutil.Process]:
    deadline = time.monotonic() + bound
    while _alive(procs) and time.monotonic() < deadline:
        time.sleep(0.2)
    return _alive(procs)


def _cmdlines(procs: list[psutil.Process]) -> list[str]:
    lines = []
    for p in procs:
        try:
            lines.append(" ".join(p.cmdline()))
        except psutil.NoSuchProcess:
            pass
    return lines


def test_sigterm_ends_the_run_killed_and_stops_what_the_cli_started(tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cli, run_id, started = _start_training(tmp_path, store)
    # the temporary Prefect API server is a process of the CLI's tree
    assert any("-m prefect server start" in c for c in _cmdlines(started))
    cli.send_signal(signal.SIGTERM)
    assert cli.wait(120) == 128 + signal.SIGTERM
    err = (tmp_path / "cli.err").read_text()
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == ["error: killed by SIGTERM"], err
    run = MlflowClient(store).get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["mlcore.error"] == "killed by SIGTERM"
    assert run.data.tags["mlcore.pid"] == str(cli.pid)
    assert run.data.tags["mlcore.host"] == socket.gethostname()
    assert _wait_gone(started) == []


@pytest.fixture
def terminal_sigint():
    """SIGINT as in a terminal's foreground (Python's default handler) for the test: a test
    process started in the background of a non-interactive shell inherits SIGINT ignored, and
    the CLI rightly leaves an ignored signal ignored (as under nohup)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _sigint_after_first_epoch(monkeypatch) -> dict:
    """A real SIGINT to this process (where the CLI runs) as the ConvNet's first epoch ends;
    the returned dict gets the run's id."""
    from tasks import convnet as convnet_tasks

    display_call = convnet_tasks._TrainingDisplay.__call__
    seen = {}

    def interrupt(self, kind, info):
        if kind == "epoch" and info["epoch"] == 1:
            seen["run_id"] = self.metrics.run_id
            os.kill(os.getpid(), signal.SIGINT)
        return display_call(self, kind, info)

    monkeypatch.setattr(convnet_tasks._TrainingDisplay, "__call__", interrupt)
    return seen


def test_ctrl_c_ends_the_run_killed(
    prefect_harness, data_env, mlflow_store, monkeypatch, terminal_sigint
):
    """A real SIGINT to this process (the CLI runs in it) as the first epoch ends."""
    seen = _sigint_after_first_epoch(monkeypatch)
    before = signal.getsignal(signal.SIGINT)
    result = runner.invoke(app, ["run", "convnet", "--epochs", "50", "--num-train", "100"])
    assert result.exit_code == 128 + signal.SIGINT, result.output
    assert [line for line in result.output.splitlines() if line.strip()] == [
        "error: killed by SIGINT"
    ]
    assert signal.getsignal(signal.SIGINT) is before  # the CLI put the handler back
    run = MlflowClient().get_run(seen["run_id"])
    assert run.info.status == "KILLED" and run.data.tags["mlcore.error"] == "killed by SIGINT"
    assert len(MlflowClient().get_metric_history(seen["run_id"], "val_acc")) == 1  # epoch 0


def test_a_run_its_flow_could_not_end_is_ended_by_the_command(
    prefect_harness, data_env, mlflow_store, monkeypatch, terminal_sigint
):
    """A signal can land while the flow writes to the store, and the flow's own end of its
    run can fail; the command still ends every run it owned that is left RUNNING, KILLED
    with the reason (here the flow's end_run does nothing, and a real SIGINT stops it)."""
    seen = _sigint_after_first_epoch(monkeypatch)
    # parent_run ends its run with the end_run of the module it lives in
    monkeypatch.setattr(tracking.runs, "end_run", lambda run_id, exc=None: None)
    result = runner.invoke(app, ["run", "convnet", "--epochs", "50", "--num-train", "100"])
    assert result.exit_code == 128 + signal.SIGINT, result.output
    run = MlflowClient().get_run(seen["run_id"])
    assert run.info.status == "KILLED" and run.data.tags["mlcore.error"] == "killed by SIGINT"


@contextlib.contextmanager
def sigterm_inside_a_tag_insert(armed):
    """Within: the first ``INSERT INTO tags`` SQLAlchemy executes once ``armed()`` raises a
    real SIGTERM, so that its Python handler runs inside SQLAlchemy's frames; yields the list
    of statements it fired in."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    fired: list[str] = []

    def sigterm_in_the_insert(conn, cursor, statement, *args):
        if armed() and not fired and statement.lstrip().upper().startswith("INSERT INTO TAGS"):
            fired.append(statement)
            signal.raise_signal(signal.SIGTERM)

    event.listen(Engine, "before_cursor_execute", sigterm_in_the_insert)
    try:
        yield fired
    finally:
        event.remove(Engine, "before_cursor_execute", sigterm_in_the_insert)


def test_a_signal_inside_a_database_write_lands_once_the_write_is_done(mlflow_store):
    """A signal raised inside SQLAlchemy could leave a connection holding SQLite's lock, and
    the run's KILLED status then waits for it in vain (MLflow's 20 s busy timeout, twice,
    and the run stays RUNNING): the CLI's handler lets the write finish, then stops the
    command. Here a real SIGTERM arrives while the tag's INSERT is being executed."""
    from flows.cli.errors import friendly_errors

    run_id = MlflowClient().create_run(tracking.experiment_id("faults")).info.run_id

    @friendly_errors
    def command():
        tracking.mark_process(run_id)
        tracking.set_tags(run_id, {"written": "yes"})
        time.sleep(30)  # the signal lands here, not in the write
        raise AssertionError("the SIGTERM never stopped the command")

    with sigterm_inside_a_tag_insert(lambda: True) as fired, pytest.raises(typer.Exit) as stopped:
        command()
    assert fired and stopped.value.exit_code == 128 + signal.SIGTERM
    run = MlflowClient().get_run(run_id)
    assert run.data.tags["written"] == "yes"
    assert run.info.status == "KILLED" and run.data.tags["mlcore.error"] == "killed by SIGTERM"


@pytest.fixture
def sigterm_recorded():
    """SIGTERM handled by recording it, for the test: Prefect's flow engine hands a SIGTERM it
    turned into TerminationSignal back to the previous handler (os.kill), which would
    otherwise be the default one, ending pytest."""
    got: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    yield got
    signal.signal(signal.SIGTERM, previous)


def test_prefects_sigterm_inside_a_database_write_of_a_flow_waits_for_it(
    prefect_harness, mlflow_store, sigterm_recorded
):
    """During a flow run Prefect's own handler turns SIGTERM into TerminationSignal wherever
    it lands (as under a worker, which stops a cancelled or killed run so); inside a
    SQLAlchemy call it could leave the database locked and the run RUNNING (CI saw it: the
    KILLED status waited 3 x 20 s, failed, and the run stayed RUNNING). Within ``parent_run``
    the signal waits for the call: the tag is written, then the run ends KILLED."""
    from prefect import flow
    from prefect.exceptions import TerminationSignal

    ids = []

    @flow
    def writes():
        with tracking.parent_run("faults", "writes", {}) as run_id:
            ids.append(run_id)
            tracking.set_tags(run_id, {"written": "yes"})
            time.sleep(30)  # the signal lands here, not in the write
            raise AssertionError("the SIGTERM never stopped the flow")

    with sigterm_inside_a_tag_insert(lambda: bool(ids)) as fired:
        with pytest.raises(TerminationSignal):
            writes()
    assert fired and sigterm_recorded == [signal.SIGTERM]
    run = MlflowClient().get_run(ids[0])
    assert run.data.tags["written"] == "yes"
    assert run.info.status == "KILLED" and run.data.tags["mlcore.error"] == "killed by SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is not None  # Prefect's and ours put back


def test_sigkill_leaves_no_process_and_the_next_command_reaps_the_run(tmp_path, monkeypatch):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cli, run_id, started = _start_training(tmp_path, store)
    assert any("-m prefect server start" in c for c in _cmdlines(started))
    cli.kill()
    cli.wait(30)
    left = _wait_gone(started)
    assert left == [], _cmdlines(left)
    client = MlflowClient(store)
    assert client.get_run(run_id).info.status == "RUNNING"  # nobody could tell the store

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(store)
    try:
        listed = runner.invoke(app, ["runs", "convnet"], env={"COLUMNS": "2000"})
    finally:
        mlflow.set_tracking_uri(None)
    assert listed.exit_code == 0, listed.output
    assert run_id in listed.output and "KILLED" in listed.output
    run = client.get_run(run_id)
    assert run.info.status == "KILLED"
    assert f"process {cli.pid} on {socket.gethostname()} is gone" in run.data.tags["mlcore.error"]


# --- the reaper on runs made here, owned by real processes -----------------------------------


def _run_owned_by(pid: int, host: str | None = None, flow: bool = False) -> str:
    client = MlflowClient()
    tags = {"mlcore.host": host or socket.gethostname(), "mlcore.pid": str(pid)}
    if flow:
        tags |= {"mlcore.flow": "housing_regression", "mlcore.flow_params": json.dumps({})}
    return client.create_run(tracking.experiment_id("faults"), tags=tags).info.run_id


def _finished_process() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_reap_if_dead_ends_only_runs_whose_process_is_gone(mlflow_store):
    client = MlflowClient()
    dead = _run_owned_by(_finished_process())
    mine = _run_owned_by(os.getpid())  # this process started before the run: alive
    elsewhere = _run_owned_by(_finished_process(), host="another-machine")
    no_owner = client.create_run(tracking.experiment_id("faults")).info.run_id

    assert tracking.reap_if_dead(dead) is True
    run = client.get_run(dead)
    assert run.info.status == "KILLED" and "no longer running" in run.data.tags["mlcore.error"]
    assert tracking.reap_if_dead(dead) is False  # already ended
    for run_id in (mine, elsewhere, no_owner):
        assert tracking.reap_if_dead(run_id) is False
        assert client.get_run(run_id).info.status == "RUNNING"


def test_a_pid_taken_by_a_later_process_counts_as_gone(mlflow_store):
    run_id = _run_owned_by(0)  # placeholder: the pid is set once the later process exists
    time.sleep(1.5)  # the later process must start after the run (past the half second of slack)
    later = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        MlflowClient().set_tag(run_id, "mlcore.pid", str(later.pid))
        assert tracking.reap_if_dead(run_id) is True
        run = MlflowClient().get_run(run_id)
        assert run.info.status == "KILLED"
        assert "now belongs to another process" in run.data.tags["mlcore.error"]
    finally:
        later.kill()
        later.wait()


def test_a_process_start_is_precise_and_falls_back_where_proc_disagrees():
    import psutil

    from tasks.tracking import _precise_start, _process_start

    before = time.time()
    later = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = _process_start(later.pid)
        # to clock ticks, not to psutil's whole-second boot time (up to 1 s early)
        assert before - 0.05 <= started <= time.time() + 0.05
        coarse = psutil.Process(later.pid).create_time()
        assert 0 <= started - coarse < 1.1
        # a /proc that counts from another boot (a virtualised uptime): psutil's value is kept
        assert _precise_start(later.pid, coarse - 100.0) == coarse - 100.0
    finally:
        later.kill()
        later.wait()
    assert _precise_start(later.pid, 123.0) == 123.0  # gone: nothing in /proc to refine with


def test_reap_dead_runs_and_rerun_read_runs_right(mlflow_store):
    client = MlflowClient()
    dead = [_run_owned_by(_finished_process()) for _ in range(2)]
    alive = _run_owned_by(os.getpid())
    assert sorted(tracking.reap_dead_runs(["faults", "no-such-experiment"])) == sorted(dead)
    assert client.get_run(alive).info.status == "RUNNING"

    from flows.rerun import original_call

    flow_run = _run_owned_by(_finished_process(), flow=True)
    run, name, params = original_call(flow_run)
    assert run.info.status == "KILLED" and name == "housing_regression" and params == {}


# --- a sweep killed mid-trial ------------------------------------------------------------------


def test_a_sweep_killed_mid_trial_continues_that_trial_from_its_last_checkpoint(tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = _cli_env(tmp_path, store)
    # about 0.1 s an epoch: trial 0 is killed between two of its checkpoints
    args = [sys.executable, "-m", "flows.cli", "sweep", "convnet", "--param", "lr=1e-2,3e-2",
            "--set", "epochs=20", "--set", "num_filters=4", "--set", "batch_size=50",
            "--seed", "1"]  # fmt: skip
    log = open(tmp_path / "sweep.out", "wb")  # noqa: SIM115 (closed below)
    sweep = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL)  # fmt: skip
    client = MlflowClient(store)
    victim, deadline = None, time.monotonic() + 300
    try:
        while victim is None:
            assert sweep.poll() is None, (tmp_path / "sweep.out").read_text()
            assert time.monotonic() < deadline, "trial 0 never checkpointed"
            exp = client.get_experiment_by_name("convnet")
            running = client.search_runs(
                [exp.experiment_id], "attributes.status = 'RUNNING' and tags.`mlcore.trial` = '0'"
            ) if exp else []  # fmt: skip
            victim = next(
                (r for r in running if client.list_artifacts(r.info.run_id, "checkpoints")), None
            )
            time.sleep(0.05)
        sweep.kill()
        sweep.wait(30)
    finally:
        log.close()
    parent_id = victim.data.tags["mlflow.parentRunId"]
    assert client.get_run(victim.info.run_id).info.status == "RUNNING"  # nobody told the store
    # Optuna's study, as logged with the sweep's run: trial 0 asked and never told
    assert study_of(parent_id, client).trials[0].state.name == "RUNNING"

    resumed = subprocess.run(
        [sys.executable, "-m", "flows.cli", "sweep", "--resume", parent_id], cwd=tmp_path,
        env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert resumed.stdout.strip().splitlines()[-1] == f"MLflow run id: {parent_id}"
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials_run"] == 2
    runs = {
        int(r.data.tags["mlcore.trial"]): r
        for r in client.search_runs(
            [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'"
        )
    }
    assert sorted(runs) == [0, 1]  # trial 0 continued in its own run: no second run of it
    first = runs[0]
    assert first.info.run_id == victim.info.run_id and first.info.status == "FINISHED"
    assert 1 <= int(first.data.tags["mlcore.resumed_from_epoch"]) < 20
    steps = [m.step for m in client.get_metric_history(first.info.run_id, "loss")]
    per_epoch = int(first.data.params["n_train"]) // 50
    assert len(steps) == len(set(steps)) == 20 * per_epoch  # every iteration once
    assert len(client.get_metric_history(first.info.run_id, "val_acc")) == 21  # + iteration 1
    # ... and the study, loaded from Optuna's storage by --resume, was told both trials
    study = study_of(parent_id, client)
    assert [(t.number, t.state.name) for t in study.trials] == [(0, "COMPLETE"), (1, "COMPLETE")]
    assert [t.value for t in study.trials] == [runs[n].data.metrics["best_val_acc"] for n in (0, 1)]
