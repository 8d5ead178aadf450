"""Faults in ConvNet training: a diverging loss fails the run (nothing registered); every epoch
is checkpointed; a killed run resumes to exactly the result of an uninterrupted one; a retried
training task resumes from its checkpoint."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from flows.cli import app
from flows.convnet import architecture
from flows.experiments import CONVNET
from tasks import tracking
from tasks.convnet import (
    checkpoint_dir,
    latest_checkpoint,
    load_images,
    local_checkpoints,
    train_convnet,
)
from tests.conftest import one_line_error

pytestmark = pytest.mark.slow

runner = CliRunner()
# small and quick: 4 iterations of a tiny net per epoch
SMALL = ["--num-train", "200", "--batch-size", "50", "--hidden-dim", "16", "--num-filters", "4",
         "--seed", "7"]  # fmt: skip
METRICS = ("loss", "train_acc", "val_acc", "lr")


@pytest.fixture
def checkpoints(tmp_path, monkeypatch) -> Path:
    directory = tmp_path / "ck"
    monkeypatch.setenv("MLCORE_CHECKPOINT_DIR", str(directory))
    monkeypatch.setenv("MLCORE_CHECKPOINT_SECONDS", "0")  # every epoch: these epochs are short
    return directory


def only_run(status: str | None = None):
    runs = MlflowClient().search_runs(
        [tracking.experiment_id("convnet")], order_by=["attributes.start_time DESC"]
    )
    return runs if status is None else [r for r in runs if r.info.status == status]


def histories(run_id: str) -> dict[str, list[tuple[int, float | None]]]:
    """Every metric's (step, value) points; of a timing (``epoch_seconds``: a wall time,
    different in every run) only the steps, each once, as (step, None)."""
    client = MlflowClient()
    return {
        key: sorted(
            (m.step, None if key in CONVNET.timings else m.value)
            for m in client.get_metric_history(run_id, key)
        )
        for key in client.get_run(run_id).data.metrics
    }


def results(run) -> dict[str, float]:
    """A run's latest metric values but its timings."""
    return {k: v for k, v in run.data.metrics.items() if k not in CONVNET.timings}


def model_params(run_id: str) -> dict[str, np.ndarray]:
    """The weights of the model logged to ``run_id``, read back from MLflow."""
    [logged] = mlflow.search_logged_models(
        experiment_ids=[mlflow.get_run(run_id).info.experiment_id],
        filter_string=f"source_run_id = '{run_id}'", output_format="list",
    )  # fmt: skip
    return mlflow.pyfunc.load_model(logged.model_uri).unwrap_python_model().model.params


@pytest.mark.parametrize(
    ("lr", "why"), [("1e30", "is not finite"), ("1e4", "more than divergence_factor=1000 times")]
)
def test_a_diverging_run_fails_with_its_reason_and_registers_nothing(
    prefect_harness, mlflow_store, checkpoints, lr, why
):
    result = runner.invoke(app, ["run", "convnet", "--lr", lr, "--epochs", "3", *SMALL])
    one_line_error(result, rf"error: training diverged at iteration \d+ \(epoch \d of 3\).*{why}")
    [run] = only_run()
    assert run.info.status == "FAILED"
    assert run.data.tags["mlcore.error"] == result.output.strip().removeprefix("error: ")
    everywhere = [e.experiment_id for e in MlflowClient().search_experiments()]
    assert mlflow.search_logged_models(experiment_ids=everywhere, output_format="list") == []
    assert MlflowClient().search_registered_models() == []
    assert "test_acc" not in run.data.metrics
    assert not checkpoint_dir(run.info.run_id).exists()  # it failed before any checkpoint
    # every loss before the diverging one is logged: the curve shows what happened
    iteration = int(re.search(r"at iteration (\d+)", result.output).group(1))
    loss = MlflowClient().get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in loss] == list(range(1, iteration))
    assert all(np.isfinite(m.value) for m in loss)


def test_every_epoch_is_checkpointed_and_the_last_two_kept(
    prefect_harness, mlflow_store, checkpoints
):
    from flows.convnet import convnet_training

    result = convnet_training(
        epochs=4, batch_size=50, num_train=200, hidden_dim=16, num_filters=4, seed=7
    )
    run_id = result["run_id"]
    kept = tracking.logged_checkpoints(run_id)
    assert [c["epoch"] for c in kept] == [3, 4]
    listed = {a.path for a in MlflowClient().list_artifacts(run_id, "checkpoints")}
    assert listed == {"checkpoints/convnet_epoch_3.npz", "checkpoints/convnet_epoch_4.npz"}
    for entry in kept:
        local = tracking.download_checkpoint(run_id, entry, checkpoints / "read")
        with np.load(local, allow_pickle=False) as f:
            assert int(f["epoch"]) == entry["epoch"] and int(f["iteration"]) == 4 * entry["epoch"]
            assert {"param/W1", "optim/W1/m", "optim/W1/v", "rng_state"} <= set(f.files)
            assert len(f["loss_history"]) == 4 * entry["epoch"]
    # the last checkpoint holds the run's final state; MLflow has it, so no local copy is left
    with np.load(checkpoints / "read" / "convnet_epoch_4.npz", allow_pickle=False) as f:
        assert f["val_acc_history"].tolist() == [
            m.value for m in MlflowClient().get_metric_history(run_id, "val_acc")
        ]
    assert not checkpoint_dir(run_id).exists()


def test_by_default_short_epochs_checkpoint_only_the_last_and_every_metric_point_is_logged(
    prefect_harness, mlflow_store, checkpoints, monkeypatch
):
    """The default interval (10 s) outlasts this whole training: one checkpoint, the last
    epoch's, and one metric batch at the end, holding every point an every-epoch run logs."""
    from flows.convnet import convnet_training

    monkeypatch.delenv("MLCORE_CHECKPOINT_SECONDS")
    spaced = convnet_training(
        epochs=4, batch_size=50, num_train=200, hidden_dim=16, num_filters=4, seed=7
    )["run_id"]
    assert [c["epoch"] for c in tracking.logged_checkpoints(spaced)] == [4]
    listed = {a.path for a in MlflowClient().list_artifacts(spaced, "checkpoints")}
    assert listed == {"checkpoints/convnet_epoch_4.npz"}
    monkeypatch.setenv("MLCORE_CHECKPOINT_SECONDS", "0")
    every = convnet_training(
        epochs=4, batch_size=50, num_train=200, hidden_dim=16, num_filters=4, seed=7
    )["run_id"]
    assert [c["epoch"] for c in tracking.logged_checkpoints(every)] == [3, 4]
    assert histories(spaced) == histories(every)
    assert [s for s, _ in histories(spaced)["epoch_seconds"]] == [1, 2, 3, 4]


@pytest.mark.parametrize("raw", ["-1", "soon", "nan", "inf"])
def test_a_bad_checkpoint_interval_is_refused_naming_the_variable(monkeypatch, raw):
    from tasks.convnet import checkpoint_seconds

    monkeypatch.setenv("MLCORE_CHECKPOINT_SECONDS", raw)
    with pytest.raises(ValueError, match=rf"^MLCORE_CHECKPOINT_SECONDS='{raw}' is not a number "
                       rf"of seconds >= 0$"):  # fmt: skip
        checkpoint_seconds()


def test_the_checkpoint_interval_reads_seconds_and_defaults_to_ten(monkeypatch):
    from tasks.convnet import DEFAULT_CHECKPOINT_SECONDS, checkpoint_seconds

    monkeypatch.delenv("MLCORE_CHECKPOINT_SECONDS", raising=False)
    assert checkpoint_seconds() == DEFAULT_CHECKPOINT_SECONDS == 10.0
    monkeypatch.setenv("MLCORE_CHECKPOINT_SECONDS", " 2.5 ")
    assert checkpoint_seconds() == 2.5


def test_latest_checkpoint_prefers_an_identical_local_copy_and_checks_downloads(
    mlflow_store, checkpoints, tmp_path
):
    with tracking.parent_run("convnet", "test", {}) as run_id:
        directory = checkpoint_dir(run_id)
        directory.mkdir(parents=True)
        for epoch in (1, 2, 3):
            path = directory / f"convnet_epoch_{epoch}.npz"
            np.savez(path, epoch=np.array(epoch))
            tracking.log_checkpoint(run_id, path, epoch)
        assert [p.name for p, _ in local_checkpoints(directory)] == [
            "convnet_epoch_1.npz", "convnet_epoch_2.npz", "convnet_epoch_3.npz",
        ]  # fmt: skip
        assert latest_checkpoint(run_id) == (directory / "convnet_epoch_3.npz", 3)
        # a local copy that differs from MLflow's is replaced by MLflow's
        (directory / "convnet_epoch_3.npz").write_bytes(b"not the checkpoint")
        path, epoch = latest_checkpoint(run_id)
        assert epoch == 3 and np.load(path)["epoch"] == 3
        # a newer local checkpoint (its upload failed) is used as it is
        np.savez(directory / "convnet_epoch_4.npz", epoch=np.array(4))
        assert latest_checkpoint(run_id) == (directory / "convnet_epoch_4.npz", 4)
        # with no local copies, MLflow's newest intact one is downloaded: a damaged artifact
        # fails its sha256 and the one before it is used
        for f in directory.iterdir():
            f.unlink()
        artifacts = Path(MlflowClient().get_run(run_id).info.artifact_uri)
        (artifacts / "checkpoints" / "convnet_epoch_3.npz").write_bytes(b"damaged")
        path, epoch = latest_checkpoint(run_id)
        assert epoch == 2 and np.load(path)["epoch"] == 2
        assert not (directory / "convnet_epoch_3.npz").exists()


def test_a_checkpoint_mlflow_cannot_store_stays_on_local_disk(mlflow_store, checkpoints, capsys):
    solver = {"update_rule": "adam", "optim_config": {"learning_rate": 1e-3}, "lr_decay": 1.0,
              "batch_size": 50, "num_epochs": 3, "num_train_samples": 1000}  # fmt: skip
    config = architecture(dataset="digits", hidden_dim=16, num_filters=4)
    with tracking.parent_run("convnet", "test", {}) as run_id:
        # a file where the run's checkpoints/ folder goes: every upload fails, for real
        artifacts = Path(MlflowClient().get_run(run_id).info.artifact_uri)
        artifacts.mkdir(parents=True, exist_ok=True)
        (artifacts / "checkpoints").write_text("not a folder")
        data = load_images.fn("digits", 200, run_id)
        trained = train_convnet.fn(data, 10, config, solver, 7, run_id)
    err = capsys.readouterr().err
    directory = checkpoint_dir(run_id)
    for epoch in (1, 2, 3):
        assert f"checkpoint of epoch {epoch} kept at {directory}/convnet_epoch_{epoch}.npz" in err
    assert tracking.logged_checkpoints(run_id) == []
    # the last two stay on disk, and the last one holds the trained parameters
    assert [e for _, e in local_checkpoints(directory)] == [2, 3]
    with np.load(directory / "convnet_epoch_3.npz", allow_pickle=False) as f:
        np.testing.assert_array_equal(f["best/W1"], trained["model"].params["W1"])
        assert f["loss_history"].tolist() == trained["loss_history"]


class FailOnceAfterEpoch1:
    """A training observer that fails, once, right after the first checkpoint is logged: a
    fault in the middle of the training task, which Prefect retries."""

    def __init__(self):
        self.failures = 0

    def __call__(self, kind, info):
        if kind == "checkpoint" and info["epoch"] == 1 and self.failures == 0:
            self.failures += 1
            raise RuntimeError("injected fault after epoch 1")


@pytest.mark.parametrize("fresh", [False, True])
def test_a_retried_training_task_resumes_from_its_checkpoint(
    prefect_harness, mlflow_store, checkpoints, fresh
):
    """Also when the flow says its run is ``fresh`` (nothing to read back): that holds for
    the task's first attempt only."""
    from prefect import flow

    solver = {"update_rule": "adam", "optim_config": {"learning_rate": 1e-3}, "lr_decay": 0.95,
              "batch_size": 50, "num_epochs": 3, "num_train_samples": 1000}  # fmt: skip
    config = architecture(dataset="digits", hidden_dim=16, num_filters=4)

    @flow
    def training(callback=None):
        with tracking.parent_run("convnet", "test", {}) as run_id:
            data = load_images(dataset="digits", num_train=200, run_id=run_id)
            return run_id, train_convnet(data, 10, config, solver, 7, run_id, callback, fresh=fresh)

    straight_id, straight = training()
    fault = FailOnceAfterEpoch1()
    retried_id, retried = training(fault)
    assert fault.failures == 1 and retried["resumed_from_epoch"] == 1
    assert straight["resumed_from_epoch"] is None
    assert retried["loss_history"] == straight["loss_history"]
    assert retried["val_acc_history"] == straight["val_acc_history"]
    for name, w in straight["model"].params.items():
        np.testing.assert_array_equal(retried["model"].params[name], w)
    # MLflow holds each point once, as in the uninterrupted run
    assert histories(retried_id) == histories(straight_id)
    assert len(histories(retried_id)["loss"]) == 3 * 4
    assert histories(retried_id)["epoch_seconds"] == [(1, None), (2, None), (3, None)]


def test_resume_refuses_what_it_cannot_continue(prefect_harness, mlflow_store, checkpoints):
    finished = runner.invoke(app, ["run", "convnet", "--epochs", "1", *SMALL])
    assert finished.exit_code == 0, finished.output
    run_id = re.search(r"MLflow run id: (\w{32})", finished.output).group(1)
    one_line_error(
        runner.invoke(app, ["run", "convnet", "--resume", run_id]),
        rf"error: cannot resume run {run_id}: it FINISHED; nothing to resume",
    )
    one_line_error(
        runner.invoke(app, ["run", "convnet", "--resume", run_id, "--epochs", "5"]),
        r"error: --resume continues the run with its own parameters: drop --epochs",
    )
    one_line_error(
        runner.invoke(app, ["run", "convnet", "--resume", "0" * 32]),
        r"error: no MLflow run '0{32}'",
    )
    client = MlflowClient()
    running = client.create_run(tracking.experiment_id("convnet"), tags={
        "mlcore.flow": "convnet_training", "mlcore.flow_params": json.dumps({"epochs": 1}),
        "git_commit": tracking.git_commit(),
    })  # fmt: skip
    one_line_error(
        runner.invoke(app, ["run", "convnet", "--resume", running.info.run_id]),
        "error: cannot resume run .*: run is still RUNNING",
    )
    client.set_terminated(running.info.run_id, "KILLED")
    client.set_tag(running.info.run_id, "git_commit", "0123abc")
    one_line_error(
        runner.invoke(app, ["run", "convnet", "--resume", running.info.run_id]),
        r"error: cannot resume run .*: it was made by other code \(git_commit 0123abc, this is",
    )
    housing = client.create_run(tracking.experiment_id("housing"), tags={
        "mlcore.flow": "housing_regression", "mlcore.flow_params": "{}",
    })  # fmt: skip
    one_line_error(
        runner.invoke(app, ["run", "convnet", "--resume", housing.info.run_id]),
        "error: cannot resume run .*: it was made by housing_regression, not convnet_training",
    )
    # a run made on other data: its recorded data.sha256 differs from what loads now
    client.set_terminated(run_id, "KILLED")
    client.set_tag(run_id, "data.sha256", "f" * 64)
    one_line_error(
        runner.invoke(app, ["run", "convnet", "--resume", run_id]),
        rf"error: run {run_id} was trained on other data \(sha256 ffffffffffff..., now",
    )
    assert client.get_run(run_id).data.tags["data.sha256"] == "f" * 64


def test_a_run_killed_mid_training_resumes_to_the_uninterrupted_result(
    prefect_harness, mlflow_store, checkpoints, tmp_path
):
    """SIGKILL the real CLI after its first checkpoint reached MLflow, resume, and compare with
    an uninterrupted run bit for bit: parameters, every metric's history, the model weights."""
    # the kill lands within milliseconds of the first checkpoint's tag; the 24 epochs left take
    # seconds (an epoch is a few MLflow writes and milliseconds of numpy), so a busy machine
    # still kills it mid-way (with 4 epochs left, a CI run once finished before the kill)
    args = ["run", "convnet", "--epochs", "25", *SMALL]
    tracking.experiment_id("convnet")  # artifacts under this test's ./mlruns
    from prefect.settings import PREFECT_API_URL

    log = open(tmp_path / "cli.out", "wb")  # noqa: SIM115 (closed below)
    # the session's Prefect server: no temporary one to start (slow on a busy machine)
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", *args], cwd=tmp_path, stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True, env=env,
    )  # fmt: skip
    try:
        deadline, run_id = time.monotonic() + 300, None
        while run_id is None or not MlflowClient().get_run(run_id).data.tags.get(
            tracking.CHECKPOINT_TAG
        ):
            assert proc.poll() is None, (tmp_path / "cli.out").read_text()
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            found = list(tmp_path.glob("mlruns/*/*/artifacts/checkpoints/convnet_epoch_*.npz"))
            run_id = found[0].parts[-4] if found else None
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI and anything it started
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        log.close()
    [killed] = only_run()
    assert killed.info.run_id == run_id and killed.info.status == "RUNNING"
    stopped_at = tracking.logged_checkpoints(run_id)[-1]["epoch"]
    assert 1 <= stopped_at < 25 and "test_acc" not in killed.data.metrics
    # `mlcore runs` sees that the run's process is gone and ends it KILLED (so would --resume)
    listed = runner.invoke(app, ["runs", "convnet"], env={"COLUMNS": "300"})
    assert listed.exit_code == 0, listed.output
    reaped = MlflowClient().get_run(run_id)
    assert reaped.info.status == "KILLED"
    assert reaped.data.tags["mlcore.error"].startswith(f"process {proc.pid} on ")
    # no local copies: the checkpoint comes back from MLflow (checked against its sha256)
    for path, _ in local_checkpoints(checkpoint_dir(run_id)):
        path.unlink()

    resumed = runner.invoke(app, ["run", "convnet", "--resume", run_id])
    assert resumed.exit_code == 0, resumed.output
    assert f"MLflow run id: {run_id}" in resumed.output
    assert f"resumed from the checkpoint of epoch {stopped_at}\n" in resumed.output
    straight = runner.invoke(app, args)
    assert straight.exit_code == 0, straight.output
    straight_id = re.search(r"MLflow run id: (\w{32})", straight.output).group(1)

    client = MlflowClient()
    a, b = client.get_run(run_id), client.get_run(straight_id)
    assert a.info.status == b.info.status == "FINISHED"
    assert "mlcore.error" not in a.data.tags
    assert int(a.data.tags["mlcore.resumed_from_epoch"]) == stopped_at
    assert a.data.params == b.data.params
    assert results(a) == results(b) and "epoch_seconds" in a.data.metrics
    assert histories(run_id) == histories(straight_id)
    assert len(histories(run_id)["loss"]) == 25 * 4
    weights_a, weights_b = model_params(run_id), model_params(straight_id)
    assert set(weights_a) == set(weights_b) == {"W1", "b1", "W2", "b2", "W3", "b3"}
    for name, w in weights_b.items():
        assert weights_a[name].dtype == w.dtype
        np.testing.assert_array_equal(weights_a[name], w)


def test_old_checkpoints_are_deleted_from_a_tracking_servers_artifact_store(tmp_path, monkeypatch):
    """``mlflow server`` serving artifacts (as ``mlcore server`` runs it) deletes them too."""
    from flows.stack import free_port, start_mlflow_server

    store = tmp_path / "artifacts"
    server = start_mlflow_server(
        port=free_port(), backend_uri=f"sqlite:///{tmp_path / 'server.db'}", artifacts=store,
        log=tmp_path / "mlflow-server.log",
    )  # fmt: skip
    try:
        server.wait_healthy()
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
        mlflow.set_tracking_uri(server.url)
        with tracking.parent_run("convnet", "test", {}) as run_id:
            for epoch in (1, 2, 3):
                path = tmp_path / f"convnet_epoch_{epoch}.npz"
                np.savez(path, epoch=np.array(epoch))
                tracking.log_checkpoint(run_id, path, epoch)
            listed = {a.path for a in MlflowClient().list_artifacts(run_id, "checkpoints")}
            on_disk = {p.name for p in store.rglob("convnet_epoch_*.npz")}
            entry = tracking.logged_checkpoints(run_id)[-1]
            local = tracking.download_checkpoint(run_id, entry, tmp_path / "back")
    finally:
        mlflow.set_tracking_uri(None)
        server.stop()
    assert listed == {"checkpoints/convnet_epoch_2.npz", "checkpoints/convnet_epoch_3.npz"}
    assert on_disk == {"convnet_epoch_2.npz", "convnet_epoch_3.npz"}
    assert int(np.load(local)["epoch"]) == 3
