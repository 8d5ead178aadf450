"""tasks.tracking as a library: importing it changes nothing process-wide (the matplotlib
backend above all), figures are logged with no display and no backend chosen, and what it
logs through MLflow's public APIs reads back as MLflow's own calls would have written it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from tasks import tracking
from tests.conftest import REPO


def _python(code: str, tmp_path, **env) -> str:
    """Run ``code`` in a fresh interpreter with no display and an empty matplotlib config;
    return its stdout."""
    clean = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    clean.pop("MPLBACKEND", None)
    clean.update(MPLCONFIGDIR=str(tmp_path / "mplconfig"), **env)
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=clean,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.slow  # a fresh interpreter that imports MLflow
def test_importing_tracking_keeps_the_sessions_matplotlib_backend(tmp_path):
    """A backend the user chose stays chosen, and none is chosen for a user who did not."""
    chosen = _python(
        "import matplotlib\n"
        "matplotlib.use('svg')\n"
        "import tasks.tracking, tasks.registry\n"
        "print(matplotlib.get_backend())\n",
        tmp_path,
    )
    assert chosen.split() == ["svg"]
    unchosen = _python(
        "import matplotlib\n"
        "import tasks.tracking\n"
        "print(matplotlib.get_backend(auto_select=False))\n",
        tmp_path,
    )
    assert unchosen.split() == ["None"]


@pytest.mark.slow  # a fresh interpreter that imports MLflow
def test_a_figure_is_logged_headless_without_choosing_a_backend(tmp_path):
    """No DISPLAY, no MPLBACKEND: mlcore.vis's figure goes to MLflow as a PNG (and to the
    spool folder the same way), and still no backend has been selected."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = _python(
        "import matplotlib, mlflow\n"
        "from mlcore.vis import plot_training_curves\n"
        "from tasks import tracking\n"
        "run_id = mlflow.MlflowClient().create_run('0').info.run_id\n"
        "fig = plot_training_curves([3.0, 2.0, 1.5], [0.2, 0.5], [0.1, 0.4])\n"
        "tracking.log_figure(run_id, fig, 'plots/curves.png')\n"
        "print(run_id, matplotlib.get_backend(auto_select=False))\n",
        tmp_path,
        MLFLOW_TRACKING_URI=store,
    )
    run_id, backend = out.split()[-2:]
    assert backend == "None"
    local = MlflowClient(store).download_artifacts(run_id, "plots/curves.png", str(tmp_path))
    with open(local, "rb") as f:
        png = f.read(24)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    size = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert size == (1000, 400)  # figsize (10, 4) at savefig's default 100 dpi


def test_a_dataset_input_is_recorded_as_mlflow_log_input_records_it(mlflow_store, housing):
    """log_dataset (explicit run id, a worker thread's way) and mlflow.log_input (the active
    run) record the same dataset entity and context."""
    X, y = housing["X_train"], housing["y_train"]
    digest = "ab" * 32
    exp = tracking.experiment_id("datasets")
    ours = MlflowClient().create_run(exp).info.run_id
    tracking.log_dataset(ours, X, y, "housing_scale", "https://example.org/housing", digest)
    with mlflow.start_run(experiment_id=exp) as active:
        ds = mlflow.data.from_numpy(
            X, targets=y, source="https://example.org/housing", name="housing_scale",
            digest=digest[:36],
        )  # fmt: skip
        mlflow.log_input(ds, context="training")
    got, want = (
        MlflowClient().get_run(r).inputs.dataset_inputs for r in (ours, active.info.run_id)
    )
    assert len(got) == len(want) == 1
    assert got[0].dataset.to_dictionary() == want[0].dataset.to_dictionary()
    assert got[0].dataset.name == "housing_scale" and got[0].dataset.digest == digest[:36]
    assert json.loads(got[0].dataset.profile)["features_shape"] == list(X.shape)
    tags = {t.key: t.value for t in got[0].tags}
    assert tags == {t.key: t.value for t in want[0].tags} == {"mlflow.data.context": "training"}


def test_json_and_tables_read_back_exactly(mlflow_store):
    run_id = MlflowClient().create_run(tracking.experiment_id("artifacts")).info.run_id
    value = [{"number": 0, "params": {"lr": 0.001, "hidden": [32, 64]}}, {"number": 1}]
    tracking.log_json(run_id, value, "sweep/trials.json")
    assert tracking.load_json(run_id, "sweep/trials.json") == value
    df = pd.DataFrame({"run": ["a", "b"], "val_mae": [2.875, 3.0625]})
    tracking.log_dataframe(run_id, df, "tables/results.csv")
    back = pd.read_csv(MlflowClient().download_artifacts(run_id, "tables/results.csv"))
    pd.testing.assert_frame_equal(back, df)
    tracking.log_table(run_id, df, "tables/board.json")
    table = mlflow.artifacts.load_dict(f"runs:/{run_id}/tables/board.json")
    assert table == {"columns": ["run", "val_mae"], "data": [["a", 2.875], ["b", 3.0625]]}


def test_old_checkpoints_are_deleted_from_a_local_artifact_store(mlflow_store, tmp_path):
    """The sqlite store's artifacts sit in a local folder: the checkpoints beyond ``keep``
    leave it, and the tag lists the ones kept, with their sha256."""
    run_id = MlflowClient().create_run(tracking.experiment_id("ckpt")).info.run_id
    for epoch in (1, 2, 3):
        path = tmp_path / f"ck_epoch_{epoch}.npz"
        np.savez(path, epoch=np.array(epoch))
        tracking.log_checkpoint(run_id, path, epoch)
    listed = {a.path for a in MlflowClient().list_artifacts(run_id, "checkpoints")}
    assert listed == {"checkpoints/ck_epoch_2.npz", "checkpoints/ck_epoch_3.npz"}
    kept = tracking.logged_checkpoints(run_id)
    assert [c["epoch"] for c in kept] == [2, 3]
    local = tracking.download_checkpoint(run_id, kept[-1], tmp_path / "back")
    assert int(np.load(local)["epoch"]) == 3


def test_a_new_runs_checkpoints_rotate_without_reading_the_run_back(mlflow_store, tmp_path):
    """A run this process created has no checkpoint yet: its checkpoints are rotated from what
    this process wrote (nothing read back), with the same result in MLflow; reopened (another
    process may have changed it), the run is read again."""
    with tracking.parent_run("ckpt", "test", {}) as run_id:
        for epoch in (1, 2, 3):
            path = tmp_path / f"ck_epoch_{epoch}.npz"
            np.savez(path, epoch=np.array(epoch))
            assert tracking.log_checkpoint(run_id, path, epoch) is True
    listed = {a.path for a in MlflowClient().list_artifacts(run_id, "checkpoints")}
    assert listed == {"checkpoints/ck_epoch_2.npz", "checkpoints/ck_epoch_3.npz"}
    assert [c["epoch"] for c in tracking.logged_checkpoints(run_id)] == [2, 3]
    # another writer drops epoch 3 from the tag; the reopened run reads that back
    MlflowClient().set_tag(run_id, tracking.CHECKPOINT_TAG, json.dumps(
        tracking.logged_checkpoints(run_id)[:1]))  # fmt: skip
    with tracking.reopened_run(run_id):
        path = tmp_path / "ck_epoch_4.npz"
        np.savez(path, epoch=np.array(4))
        tracking.log_checkpoint(run_id, path, 4)
    assert [c["epoch"] for c in tracking.logged_checkpoints(run_id)] == [2, 4]
    listed = {a.path for a in MlflowClient().list_artifacts(run_id, "checkpoints")}
    assert listed == {"checkpoints/ck_epoch_2.npz", "checkpoints/ck_epoch_4.npz"}


def test_runs_land_in_the_experiment_of_the_store_in_use(mlflow_store, tmp_path):
    """Experiment ids are looked up once per process and store: a process that switches
    stores creates its runs in the new store's experiment."""
    with tracking.parent_run("moved", "test", {}) as first:
        pass
    other = f"sqlite:///{tmp_path / 'other' / 'mlflow.db'}"
    (tmp_path / "other").mkdir()
    mlflow.set_tracking_uri(other)
    try:
        with tracking.parent_run("moved", "test", {}) as second:
            pass
        run = MlflowClient(other).get_run(second)
        assert MlflowClient(other).get_experiment(run.info.experiment_id).name == "moved"
    finally:
        mlflow.set_tracking_uri(mlflow_store)
    assert MlflowClient(mlflow_store).get_run(first).info.status == "FINISHED"


def test_experiments_are_model_training_for_the_mlflow_ui(mlflow_store):
    """A new experiment is created with MLflow's kind tag (the UI then opens on its runs, not
    on the GenAI overview); one made without a kind gets it; a kind set by a user stays."""
    client = MlflowClient()
    kind = "mlflow.experimentKind"
    new = client.get_experiment(tracking.experiment_id("housing"))
    assert new.tags[kind] == "custom_model_development"
    old = client.create_experiment("convnet")
    assert kind not in client.get_experiment(old).tags
    assert tracking.experiment_id("convnet") == old
    assert client.get_experiment(old).tags[kind] == "custom_model_development"
    mine = client.create_experiment("gradcheck", tags={kind: "genai_development"})
    assert tracking.experiment_id("gradcheck") == mine
    assert client.get_experiment(mine).tags[kind] == "genai_development"


def test_a_runs_mlflow_ui_link_is_given_for_a_server_store_only(mlflow_store):
    import mlflow

    from tasks.tracking.provenance import mlflow_run_url

    assert mlflow_run_url("abc", "7") is None  # a store on disk: no UI to link to
    mlflow.set_tracking_uri("http://127.0.0.1:5000/")  # (the fixture sets it back)
    assert mlflow_run_url("abc", "7") == "http://127.0.0.1:5000/#/experiments/7/runs/abc"


def test_the_cli_names_the_folder_the_spool_keeps_results_in():
    """`mlcore`'s one-line note and `mlcore sync` look where a flow keeps what the store could
    not take (the CLI names the folder without importing MLflow)."""
    from flows.cli.sync import UNSENT
    from tasks.tracking.spool import UNSENT_DIR

    assert UNSENT == UNSENT_DIR
