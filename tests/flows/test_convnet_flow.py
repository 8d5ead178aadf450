"""ConvNet training: tasks on digits with MLflow read back, the gradient gate, the whole flow."""

import time

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from flows.convnet import architecture, convnet_training
from mlcore.nn import layer_utils
from mlcore.nn.checks import GradientCheckError
from tasks.convnet import evaluate_convnet, gradient_gate, load_images, train_convnet
from tasks.tracking import parent_run

pytestmark = pytest.mark.slow

SOLVER = {"update_rule": "adam", "optim_config": {"learning_rate": 1e-3}, "lr_decay": 1.0,
          "batch_size": 50, "num_epochs": 3, "num_train_samples": 1000}  # fmt: skip


@pytest.fixture
def run_id(mlflow_store):
    with parent_run("convnet", "test", {"purpose": "test"}) as rid:
        yield rid


def test_train_and_evaluate_log_everything_and_the_model_predicts_identically(run_id, tmp_path):
    data = load_images.fn("digits", None, run_id)
    config = architecture(dataset="digits")
    started = time.perf_counter()
    trained = train_convnet.fn(data, 10, config, SOLVER, 0, run_id)
    wall = time.perf_counter() - started
    result = evaluate_convnet.fn(trained, data, run_id)
    client = MlflowClient()
    seconds = client.get_metric_history(run_id, "epoch_seconds")
    assert [m.step for m in seconds] == list(range(1, SOLVER["num_epochs"] + 1))
    assert all(m.value > 0 for m in seconds) and sum(m.value for m in seconds) <= wall
    iterations = 3 * (len(data["X_train"]) // 50)
    loss = client.get_metric_history(run_id, "loss")
    assert [m.step for m in loss] == list(range(1, iterations + 1))
    np.testing.assert_allclose([m.value for m in loss], trained["loss_history"], rtol=1e-6)
    val = client.get_metric_history(run_id, "val_acc")
    assert [m.value for m in val] == pytest.approx(trained["val_acc_history"])
    model = trained["model"]
    assert result["test_acc"] == pytest.approx(
        np.mean(model.predict(data["X_test"]) == data["y_test"])
    )
    assert result["test_acc"] > 0.8
    run = client.get_run(run_id)
    assert (
        run.data.params["n_train"] == "1197" and run.data.metrics["test_acc"] == result["test_acc"]
    )
    plots = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert plots == {"plots/training_curves.png", "plots/filters.png"}
    # the model is the run's, in the run's experiment (the UI's Models tab of convnet lists it)
    logged = client.get_logged_model(result["model_uri"].split("/")[-1])
    assert (logged.source_run_id, logged.experiment_id) == (run_id, run.info.experiment_id)
    loaded = mlflow.pyfunc.load_model(result["model_uri"])
    np.testing.assert_array_equal(loaded.predict(data["X_test"]), model.predict(data["X_test"]))
    with pytest.raises(mlflow.exceptions.MlflowException, match="does not match expected shape"):
        loaded.predict(data["X_test"].reshape(len(data["X_test"]), -1))


def test_the_gate_refuses_a_network_with_wrong_gradients(run_id, monkeypatch):
    assert max(gradient_gate.fn((1, 8, 8), 3, 10, 0, run_id).values()) <= 1e-5
    real = layer_utils.conv_backward

    def conv_backward_with_a_bug(dout, cache):
        dx, dw, db = real(dout, cache)
        return dx, dw * 1.01, db

    monkeypatch.setattr(layer_utils, "conv_backward", conv_backward_with_a_bug)
    with pytest.raises(
        GradientCheckError, match="gradient gate: W1 rel error .* refusing to train"
    ):
        gradient_gate.fn((1, 8, 8), 3, 10, 0, run_id)


def test_bad_parameters_are_clear_errors(run_id):
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        architecture(dataset="mnist")
    with pytest.raises(ValueError, match=r"num_train must be in \[1, "):
        load_images.fn("digits", 10**6, run_id)


def test_convnet_flow_end_to_end(prefect_harness, mlflow_store):
    result = convnet_training(epochs=2, num_train=400, hidden_dim=32, seed=3)
    run = MlflowClient().get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["dataset"] == "digits" and params["update_rule"] == "adam"
    assert (
        params["hidden_dim"] == "32" and params["num_filters"] == "16" and params["epochs"] == "2"
    )
    assert {"test_acc", "best_val_acc", "loss", "train_acc", "val_acc", "gate.rel_error.W1"} <= set(
        run.data.metrics
    )
    assert params["lr"] == "0.01" and params["batch_size"] == "25"  # the digits defaults
    assert len(MlflowClient().get_metric_history(result["run_id"], "loss")) == 2 * (400 // 25)
    plots = {a.path for a in MlflowClient().list_artifacts(result["run_id"], "plots")}
    assert plots == {"plots/training_curves.png", "plots/filters.png"}
    # the logged model scores the test split exactly as the flow measured it
    from mlcore.data.images import load_digits_data

    test = load_digits_data()
    predicted = mlflow.pyfunc.load_model(result["model_uri"]).predict(test["X_test"])
    assert np.mean(predicted == test["y_test"]) == run.data.metrics["test_acc"]


def test_digits_defaults_learn_in_three_epochs(prefect_harness, mlflow_store):
    """The per-dataset optimiser defaults: 3 epochs on digits reach 0.95 val and 0.93 test."""
    import re

    from typer.testing import CliRunner

    from flows.cli import app

    out = CliRunner().invoke(app, ["run", "convnet", "--dataset", "digits", "--epochs", "3"])
    assert out.exit_code == 0, out.output
    run = MlflowClient().get_run(re.search(r"MLflow run id: (\w{32})", out.output).group(1))
    assert run.data.params["lr"] == "0.01" and run.data.params["batch_size"] == "25"
    assert run.data.metrics["best_val_acc"] >= 0.95
    assert run.data.metrics["test_acc"] >= 0.93


def test_a_dataset_loaded_again_in_the_process_is_the_same_and_its_own(
    run_id, tmp_path, monkeypatch
):
    """The last small dataset is kept in memory (a sweep's trials parse digits once): what
    each call gets equals a fresh load, is a copy of its own, and a replaced file (digits from
    a file here, as a downloaded dataset is) is loaded again."""
    from mlcore.data.images import load_image_dataset
    from tasks.convnet import _image_dataset

    fresh = load_image_dataset("digits")
    first = load_images.fn("digits", None, run_id)
    first["X_train"][:] = 0  # a caller that changes its arrays changes only its own
    second = load_images.fn("digits", None, run_id)
    assert second.keys() == fresh.keys()
    for key, array in fresh.items():
        np.testing.assert_array_equal(second[key], array)

    source = tmp_path / "images.npy"
    np.save(source, np.zeros(3))
    loads = []

    def loader(name, path):
        loads.append(path)
        return {"X": np.load(path)}

    monkeypatch.setattr("tasks.convnet.load_image_dataset", loader)
    assert _image_dataset("file", str(source))["X"].tolist() == [0, 0, 0]
    assert _image_dataset("file", str(source))["X"].tolist() == [0, 0, 0]
    assert len(loads) == 1
    np.save(source, np.ones(4))
    assert _image_dataset("file", str(source))["X"].tolist() == [1, 1, 1, 1]
    assert len(loads) == 2
