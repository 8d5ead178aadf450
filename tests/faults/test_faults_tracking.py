"""A dead tracking server: refused before any work starts, in seconds; and a real loopback
MLflow server stopped mid-run: training goes on, nothing trained is lost, the run is not
FINISHED and the flow fails with one clear error."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from flows.stack import free_port, start_mlflow_server
from tasks import tracking

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("command", [["run", "housing"], ["runs", "housing"]])
def test_a_closed_port_is_one_line_within_seconds(tmp_path, command):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PREFECT_HOME": str(tmp_path)}
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", *command], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    elapsed = time.monotonic() - start
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert done.returncode == 1 and len(lines) == 1, done.stdout + done.stderr
    assert lines[0].startswith(f"error: cannot reach the MLflow tracking store {uri}: ")
    assert "refused" in lines[0].lower()
    # a bound, not a benchmark: MLflow's own retries took 262 s here, while the check itself
    # is one 3 s request; the rest is the interpreter's start-up and imports, which took up
    # to 24 s on this two-core machine under a load of 17
    assert elapsed < 60, elapsed
    assert not (tmp_path / "mlcore-unsent").exists()


def test_tracking_store_error_for_local_stores(tmp_path):
    assert tracking.tracking_store_error(f"sqlite:///{tmp_path / 'mlflow.db'}") is None
    missing = tmp_path / "nope" / "mlflow.db"
    assert tracking.tracking_store_error(f"sqlite:///{missing}") == (
        f"folder {missing.parent} does not exist"
    )
    assert tracking.tracking_store_error(f"file://{tmp_path}") is None
    port = free_port()
    assert "refused" in tracking.tracking_store_error(
        f"postgresql://u@127.0.0.1:{port}/db", timeout=2
    )


def _server(tmp_path: Path, log: str):
    """A real ``mlflow server`` on a free loopback port over the test's database and artifacts
    (a second one is the store come back after an outage), once it answers."""
    server = start_mlflow_server(
        port=free_port(), backend_uri=f"sqlite:///{tmp_path / 'server.db'}",
        artifacts=tmp_path / "artifacts", log=tmp_path / log,
    )  # fmt: skip
    try:
        server.wait_healthy(180)
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture
def mlflow_server(tmp_path, monkeypatch):
    """A real ``mlflow server`` on a free loopback port, this test's tracking URI."""
    server = _server(tmp_path, "mlflow-server.log")
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
        # short client retries, as the CLI sets them
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        monkeypatch.chdir(tmp_path)
        mlflow.set_tracking_uri(server.url)
        yield server
    finally:
        mlflow.set_tracking_uri(None)
        server.stop()


def test_server_stopped_mid_training_loses_nothing(prefect_harness, mlflow_server, tmp_path):
    from flows.convnet import convnet_training
    from tasks import convnet as convnet_tasks

    display_call = convnet_tasks._TrainingDisplay.__call__
    seen: dict = {}

    def stop_after_first_epoch(self, kind, info):
        # the deterministic point: the store goes away as epoch 1 ends, before its metrics
        if kind == "epoch" and info["epoch"] == 1 and "stopped" not in seen:
            mlflow_server.stop()
            seen["stopped"] = self.metrics.run_id
        if kind == "epoch":
            seen[info["epoch"]] = info
        return display_call(self, kind, info)

    convnet_tasks._TrainingDisplay.__call__ = stop_after_first_epoch
    try:
        with pytest.raises(tracking.TrackingUnavailable) as failed:
            convnet_training(dataset="digits", epochs=3, batch_size=50, num_train=100, seed=0)
    finally:
        convnet_tasks._TrainingDisplay.__call__ = display_call
    run_id = seen["stopped"]
    unsent = tmp_path / "mlcore-unsent" / run_id
    message = str(failed.value)
    assert f"went away during run {run_id}" in message and str(unsent) in message

    # every metric after the stop is on disk: the loss of iterations 2..6 (2 per epoch; the
    # first was sent with the accuracies measured after it), the accuracies of epochs 1..3
    # and the test accuracy
    rows = [line.split(",") for line in (unsent / "metrics.csv").read_text().splitlines()[1:]]
    by_key: dict[str, dict[int, float]] = {}
    for key, value, step, _ in rows:
        by_key.setdefault(key, {})[int(step)] = float(value)
    assert sorted(by_key["loss"]) == [2, 3, 4, 5, 6]
    assert by_key["val_acc"] == {e: seen[e]["val_acc"] for e in (1, 2, 3)}
    assert sorted(by_key["train_acc"]) == [1, 2, 3]

    # the trained model: its weights and code, and it scores the test split as logged
    model_dir = unsent / "model"
    with np.load(model_dir / "weights.npz", allow_pickle=False) as weights:
        assert {"W1", "b1", "W2", "b2", "W3", "b3"} <= set(weights.files)
    model = tracking._load_code_model(model_dir / "convnet.py", model_dir / "weights.npz")
    from mlcore.data.images import load_image_dataset

    data = load_image_dataset("digits")
    test_acc = float(np.mean(model.predict(None, data["X_test"]) == data["y_test"]))
    assert by_key["test_acc"][0] == pytest.approx(test_acc)
    assert (unsent / "artifacts" / "plots" / "training_curves.png").stat().st_size > 0

    # the store, back: what was sent before the stop is there, and the run is not FINISHED
    again = _server(tmp_path, "mlflow-server-2.log")
    try:
        client = MlflowClient(again.url)
        run = client.get_run(run_id)
        assert run.info.status == "RUNNING"  # ours is alive: the reaper leaves it
        assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1]
        assert [m.step for m in client.get_metric_history(run_id, "val_acc")] == [0]
        assert "gate.rel_error.W1" in run.data.metrics

        # what was kept goes in with `mlcore sync`; any other command says it waits
        env = {**os.environ, "MLFLOW_TRACKING_URI": again.url}
        cli = [str(Path(sys.executable).parent / "mlcore")]
        listed = subprocess.run([*cli, "runs", "convnet"], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=300)  # fmt: skip
        assert listed.returncode == 0, listed.stderr
        assert listed.stderr.splitlines()[0] == (
            "note: 1 run(s)' results wait in ./mlcore-unsent (kept while the tracking store "
            "was away): send them with `mlcore sync`"
        )
        points = len(rows)
        synced = subprocess.run([*cli, "sync"], cwd=tmp_path, env=env, capture_output=True,
                                text=True, timeout=300)  # fmt: skip
        assert synced.returncode == 0, synced.stdout + synced.stderr
        # (above it, MLflow's own link to the run it was told the end of)
        assert synced.stdout.strip().splitlines()[-1] == (
            f"{run_id}: sent 1 run(s), 1 model(s), {points} metric point(s)"
        )
        assert not unsent.exists()
        run = client.get_run(run_id)
        # ended as its flow ended it, which the store could not be told: FAILED, with why
        assert run.info.status == "FAILED"
        assert f"went away during run {run_id}" in run.data.tags["mlcore.error"]
        assert "mlcore.synced" in run.data.tags
        history = {k: {m.step: m.value for m in client.get_metric_history(run_id, k)}
                   for k in ("loss", "val_acc", "test_acc")}  # fmt: skip
        assert sorted(history["loss"]) == [1, 2, 3, 4, 5, 6]
        assert history["val_acc"] == {0: history["val_acc"][0],
                                      **{e: seen[e]["val_acc"] for e in (1, 2, 3)}}  # fmt: skip
        assert history["test_acc"] == {0: by_key["test_acc"][0]}
        assert client.list_artifacts(run_id, "plots")
        # the same model, logged into its run: it scores the test split as the run says
        (model,) = client.search_logged_models(
            [run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'"
        )
        uri = f"models:/{model.model_id}"
        mlflow.set_tracking_uri(again.url)
        scored = mlflow.pyfunc.load_model(uri).predict(data["X_test"])
        assert float(np.mean(np.asarray(scored) == data["y_test"])) == pytest.approx(test_acc)
        again_sync = subprocess.run([*cli, "sync"], cwd=tmp_path, env=env, capture_output=True,
                                    text=True, timeout=300)  # fmt: skip
        assert again_sync.stdout.startswith("nothing to send")
    finally:
        again.stop()


def test_tables_json_and_checkpoints_are_kept_when_the_server_is_gone(mlflow_server, tmp_path):
    """With the server stopped, log_table, log_json and log_checkpoint each spool, both as the
    first call to meet the outage (one run each) and after another call did: none raises, and
    the flow's end names the folder that holds them."""
    client = MlflowClient()
    exp = tracking.experiment_id("outage")
    table_run, json_run, checkpoint_run = (client.create_run(exp).info.run_id for _ in range(3))
    board = pd.DataFrame({"trial": [0, 1], "val_mae": [3.25, 2.5]})
    trials = [{"number": 0, "params": {"lr": 0.01}}, {"number": 1, "params": {"lr": 0.1}}]
    files = []
    for epoch in (1, 2, 3):
        files.append(tmp_path / f"convnet_epoch_{epoch}.npz")
        np.savez(files[-1], epoch=np.array(epoch))
    mlflow_server.stop()

    tracking.log_table(table_run, board, "leaderboard.json")  # each the first call after the stop
    tracking.log_json(json_run, trials, "trials.json")
    tracking.log_checkpoint(checkpoint_run, files[0], 1)
    for run_id in (table_run, json_run, checkpoint_run):  # and each after another call spooled
        tracking.log_table(run_id, board, "leaderboard.json")
        tracking.log_json(run_id, trials, "trials.json")
        for epoch, path in enumerate(files, start=1):
            tracking.log_checkpoint(run_id, path, epoch)
    # a child run started while the store is gone exists only on disk
    with tracking.child_run(table_run, "child(x=1)", {"x": 1}) as child:
        tracking.log_metrics(child, {"m": 1.5})
    assert child.startswith("unsent-")

    for run_id in (table_run, json_run, checkpoint_run):
        kept = tmp_path / "mlcore-unsent" / run_id
        table = pd.read_json(kept / "artifacts" / "leaderboard.json", orient="split")
        if run_id == table_run:  # logged twice: appended, as MLflow's log_table does
            board_twice = pd.concat([board, board], ignore_index=True)
            pd.testing.assert_frame_equal(table, board_twice)
        else:
            pd.testing.assert_frame_equal(table, board)
        assert json.loads((kept / "artifacts" / "trials.json").read_text()) == trials
        listed = json.loads(json.loads((kept / "tags.json").read_text())["mlcore.checkpoints"])
        assert [c["epoch"] for c in listed] == [2, 3]  # the last two, as in MLflow
        checkpoints = kept / "artifacts" / "checkpoints"
        assert sorted(p.name for p in checkpoints.iterdir()) == [f.name for f in files[1:]]
        for entry in listed:
            data = (kept / "artifacts" / entry["artifact"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == entry["sha256"]
            assert data == files[entry["epoch"] - 1].read_bytes()
        assert tracking.logged_checkpoints(run_id) == []  # none that MLflow holds
        with pytest.raises(tracking.TrackingUnavailable, match=f"went away during run {run_id}"):
            tracking.end_run(run_id)

    # the store back (a new server on the same database and artifacts): `mlcore sync` sends it
    # all into the runs, and the child run is created under its parent
    from tasks.tracking.sync import sync_folder, waiting

    again = _server(tmp_path, "mlflow-server-2.log")
    try:
        mlflow.set_tracking_uri(again.url)
        sent = {f.name: sync_folder(f) for f in waiting()}
        assert sent[table_run] == {"run_id": table_run, "runs": 2, "metrics": 1, "models": 0}
        assert not (tmp_path / "mlcore-unsent").exists() or not waiting()
        client = MlflowClient(again.url)
        for run_id in (table_run, json_run, checkpoint_run):
            run = client.get_run(run_id)
            assert run.info.status == "FAILED"  # as its end said, which the store missed
            assert f"went away during run {run_id}" in run.data.tags["mlcore.error"]
            assert json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/trials.json")) == trials
            listed = json.loads(run.data.tags["mlcore.checkpoints"])
            assert [c["epoch"] for c in listed] == [2, 3]
            stored = {a.path for a in client.list_artifacts(run_id, "checkpoints")}
            assert stored == {c["artifact"] for c in listed}
        (created,) = client.search_runs([exp], f"tags.mlflow.parentRunId = '{table_run}'")
        assert created.info.run_name == "child(x=1)" and created.info.status == "FINISHED"
        assert created.data.params == {"x": "1"} and created.data.metrics == {"m": 1.5}
    finally:
        again.stop()
