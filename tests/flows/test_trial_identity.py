"""A sweep's trial is the experiment's own flow: re-created with ``mlcore run`` and the seed the
trial logged, it gives the same bits."""

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from typer.testing import CliRunner

from flows.cli import app
from flows.sweep import run_sweep
from tasks.sweep import trial_seed

pytestmark = pytest.mark.slow

runner = CliRunner()


def run_id_of(out) -> str:
    assert out.exit_code == 0, out.output
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("MLflow run id: "), out.stdout
    return last.split()[-1]


def children(client, run_id):
    exp = client.get_run(run_id).info.experiment_id
    return client.search_runs([exp], f"tags.mlflow.parentRunId = '{run_id}'")


def logged_models(run_id: str) -> list:
    """The models logged by the run, which belong to the run's experiment."""
    experiment = mlflow.get_run(run_id).info.experiment_id
    return mlflow.search_logged_models(
        experiment_ids=[experiment], filter_string=f"source_run_id = '{run_id}'",
        output_format="list",
    )  # fmt: skip


def params_of(model_uri: str) -> dict:
    return mlflow.pyfunc.load_model(model_uri).unwrap_python_model().model.params


def test_a_convnet_trial_is_mlcore_run_with_the_seed_it_logged(prefect_harness, mlflow_store):
    fixed = ["num_train=100", "epochs=2", "num_filters=4", "hidden_dim=8", "batch_size=50"]
    result = run_sweep("convnet", ["lr=1e-2,3e-2"], seed=4, set_=fixed)
    client = MlflowClient()
    parent = client.get_run(result["run_id"])
    trial = client.get_run(parent.data.tags["best_run_id"])
    (other,) = [client.get_run(t["run_id"]) for t in result["trials"]
                if t["run_id"] != trial.info.run_id]  # fmt: skip
    seed = int(trial.data.params["seed"])
    assert seed == trial_seed(4, int(trial.data.tags["mlcore.trial"]))
    assert trial.data.tags["mlflow.parentRunId"] == result["run_id"]
    assert "registered" not in trial.data.tags  # a trial leaves the registry to its sweep
    # lean trials: the sweep gated once, on its own run; only the best trial has a model
    assert {"gate.rel_error.W1", "trial_overhead_s"} <= set(parent.data.metrics)
    assert parent.data.metrics["trial_overhead_s"] > 0
    for run in (trial, other):
        assert not any(k.startswith("gate.") for k in run.data.metrics)
        assert client.list_artifacts(run.info.run_id, "checkpoints")
    assert (
        other.data.tags["mlcore.model"] == "skipped" and "mlcore.model_uri" not in other.data.tags
    )
    assert client.list_artifacts(other.info.run_id, "plots") == []
    assert logged_models(other.info.run_id) == []
    assert trial.data.tags["mlcore.model"] == "logged"
    plots = {a.path for a in client.list_artifacts(trial.info.run_id, "plots")}
    assert plots == {"plots/training_curves.png", "plots/filters.png"}
    assert "mlcore.resumed_from_epoch" not in trial.data.tags  # the model was added, not trained
    assert parent.data.tags["best_model_uri"] == trial.data.tags["mlcore.model_uri"]
    # a trial runs inside the sweep's flow run (no subflow of its own), which names the
    # sweep's MLflow run only
    sweep_flow_run = parent.data.tags["prefect.flow_run_id"]
    assert {r.data.tags["prefect.flow_run_id"] for r in (trial, other)} == {sweep_flow_run}
    with get_client(sync_client=True) as prefect_client:
        tags = prefect_client.read_flow_run(sweep_flow_run).tags
    assert [t for t in tags if t.startswith("mlflow.run_id=")] == [
        f"mlflow.run_id={result['run_id']}"]  # fmt: skip

    options = {"lr": trial.data.params["lr"], "num-train": "100", "epochs": "2",
               "num-filters": "4", "hidden-dim": "8", "batch-size": "50",
               "seed": str(seed)}  # fmt: skip
    args = ["run", "convnet", *(x for k, v in options.items() for x in (f"--{k}", v))]
    single = client.get_run(run_id_of(runner.invoke(app, args)))
    for name in ("best_val_acc", "final_train_acc", "test_acc", "baseline_val_acc"):
        assert single.data.metrics[name] == trial.data.metrics[name], name
    losses = [
        [m.value for m in client.get_metric_history(r.info.run_id, "loss")] for r in (trial, single)
    ]
    assert len(losses[0]) == 4 and losses[0] == losses[1]
    same = {k: v for k, v in single.data.params.items() if k in trial.data.params}
    assert same == trial.data.params  # every parameter the trial logged, resolved values too
    # the model the sweep added to the best trial is the one mlcore run trains, bit for bit
    (model,) = logged_models(trial.info.run_id)
    assert trial.data.tags["mlcore.model_uri"] == model.model_uri
    added = params_of(model.model_uri)
    trained = params_of(logged_models(single.info.run_id)[0].model_uri)
    assert added.keys() == trained.keys()
    for name in added:
        assert np.array_equal(added[name], trained[name]), name


def test_a_trial_that_skipped_its_model_gets_it_by_mlcore_run_resume(prefect_harness, mlflow_store):
    fixed = ["num_train=100", "epochs=1", "num_filters=4", "hidden_dim=8", "batch_size=50"]
    result = run_sweep("convnet", ["lr=1e-2,3e-2"], seed=5, set_=fixed)
    client = MlflowClient()
    best = client.get_run(result["run_id"]).data.tags["best_run_id"]
    (other,) = [t["run_id"] for t in result["trials"] if t["run_id"] != best]
    out = runner.invoke(app, ["run", "convnet", "--resume", other])
    assert run_id_of(out) == other
    run = client.get_run(other)
    assert run.info.status == "FINISHED" and run.data.tags["mlcore.model"] == "logged"
    assert {a.path for a in client.list_artifacts(other, "plots")} == {
        "plots/training_curves.png", "plots/filters.png"}  # fmt: skip
    # a run that has its model has nothing left to resume
    again = runner.invoke(app, ["run", "convnet", "--resume", other])
    assert again.exit_code != 0 and "FINISHED; nothing to resume" in again.output


def test_a_housing_trial_is_the_same_model_of_mlcore_run(prefect_harness, data_env, mlflow_store):
    result = run_sweep("housing", ["lr=0.01,0.05"], seed=2, set_=["epochs=20"])
    client = MlflowClient()
    for trial in result["trials"]:
        run = client.get_run(trial["run_id"])
        seed = int(run.data.params["seed"])
        assert seed == trial_seed(2, trial["number"])
        (model,) = children(client, trial["run_id"])  # the trial fitted its one SGD model
        assert model.data.params["lr"] == str(trial["params"]["lr"])
        lr = trial["params"]["lr"]
        args = ["run", "housing", "--sgd-lr", str(lr), "--sgd-epochs", "20", "--seed", str(seed)]
        single = run_id_of(runner.invoke(app, args))
        (same,) = [r for r in children(client, single) if r.data.params.get("model") == "sgd"]
        assert same.data.params == model.data.params
        for name in ("train_mae", "val_mae", "test_mae", "test_r2"):
            assert same.data.metrics[name] == model.data.metrics[name], name
        history = [
            [m.value for m in client.get_metric_history(r.info.run_id, "train_loss")]
            for r in (model, same)
        ]
        assert len(history[0]) == 20 and history[0] == history[1]
