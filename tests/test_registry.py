"""The model registry: versions with their metric and data tags, ``champion`` moved only by a
strict win on the same validation data, and the flows registering their best model."""

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from flows.convnet import convnet_training
from flows.housing import housing_regression
from mlcore.linear import RidgeRegression
from mlcore.preprocessing import Standardizer
from tasks import tracking
from tasks.registry import convnet_data_key, housing_data_key, register_model

HOUSING_KEY = housing_data_key("housing_scale", 0.33, 42, 0.2)


@pytest.fixture
def logged(mlflow_store, housing):
    """A ridge model fitted on the real training rows, logged to a fresh parent run."""
    scaler = Standardizer().fit(housing["X_train"])
    model = RidgeRegression(alpha=1.0).fit(scaler.transform(housing["X_train"]), housing["y_train"])
    with tracking.parent_run("housing", "test", {"purpose": "registry"}) as run_id:
        weights = {"mean": scaler.mean_, "scale": scaler.scale_, "weights": model.weights_}
        uri = tracking.log_pyfunc_model(run_id, "linear", weights, housing["X_test"][:5])
    return {"run_id": run_id, "uri": uri, "model": model, "scaler": scaler}


def test_champion_moves_only_on_a_strict_win_on_the_same_data(logged):
    uri, run_id = logged["uri"], logged["run_id"]

    def register(value, key=HOUSING_KEY):
        return register_model.fn(uri, "m", "best_val_mae", value, False, key, run_id)

    first = register(3.0)
    assert first == {
        "name": "m",
        "version": "1",
        "champion_version": "1",
        "promoted": True,
        "reason": "first champion (best_val_mae=3)",
    }
    worse = register(3.5)
    assert (worse["version"], worse["champion_version"], worse["promoted"]) == ("2", "1", False)
    assert worse["reason"] == "champion stays version 1: its best_val_mae=3 is not beaten by 3.5"
    tie = register(3.0)
    assert (tie["champion_version"], tie["promoted"]) == ("1", False)
    other_data = register(2.5, key=convnet_data_key("digits", None))
    assert (other_data["champion_version"], other_data["promoted"]) == ("1", False)
    assert "measured on other validation data" in other_data["reason"]
    assert tracking.client().get_run(run_id).data.tags["champion"] == "false"
    better = register(2.5)
    assert better["promoted"] and better["champion_version"] == better["version"] == "5"
    assert better["reason"] == "beats champion version 1 on best_val_mae: 2.5 vs 3"

    client = MlflowClient()
    assert client.get_registered_model("m").aliases == {"champion": 5}
    assert client.get_model_version("m", "2").tags == {
        "best_val_mae": "3.5",
        "data_key": HOUSING_KEY,
        "flow_run_id": run_id,
    }
    assert (
        client.get_model_version("m", "4").tags["data_key"] == "digits:split=default:num_train=None"
    )
    tags = client.get_run(run_id).data.tags
    assert (tags["registered_model"], tags["registered_version"], tags["champion"]) == (
        "m",
        "5",
        "true",
    )


def test_higher_is_better_and_exact_values(logged):
    uri, run_id = logged["uri"], logged["run_id"]
    value = 0.1 + 0.2  # not representable in a few digits: the tag must keep it exactly
    first = register_model.fn(uri, "acc", "best_val_acc", value, True, "k", run_id)
    lower = register_model.fn(uri, "acc", "best_val_acc", 0.25, True, "k", run_id)
    higher = register_model.fn(uri, "acc", "best_val_acc", 0.9, True, "k", run_id)
    assert [r["promoted"] for r in (first, lower, higher)] == [True, False, True]
    assert float(MlflowClient().get_model_version("acc", "1").tags["best_val_acc"]) == value
    assert MlflowClient().get_registered_model("acc").aliases == {"champion": 3}


def test_a_registered_version_has_signature_example_and_predicts(logged, housing):
    register_model.fn(logged["uri"], "m", "best_val_mae", 3.0, False, HOUSING_KEY, logged["run_id"])
    info = mlflow.models.get_model_info("models:/m@champion")
    assert info.signature.inputs.to_dict() == [
        {"type": "tensor", "tensor-spec": {"dtype": "float64", "shape": (-1, 13)}}
    ]
    loaded = mlflow.pyfunc.load_model("models:/m/1")
    np.testing.assert_array_equal(loaded.input_example, housing["X_test"][:5])
    expected = np.ravel(logged["model"].predict(logged["scaler"].transform(housing["X_test"])))
    np.testing.assert_allclose(loaded.predict(housing["X_test"]), expected, rtol=1e-12)


def test_data_keys_name_the_validation_data():
    assert HOUSING_KEY == (
        "housing_scale:sha256=bbacd2f526a038499717d5dc4b8895e6baf1e2351895b9360a84bcb31e104476"
        ":test_size=0.33:split_random_state=42:val_split=0.2"
    )
    assert housing_data_key("housing_scale", 0.33, 42, 0.25) != HOUSING_KEY
    assert convnet_data_key("digits", 400) == "digits:split=default:num_train=400"


def test_housing_flow_registers_its_best_model(prefect_harness, data_env, mlflow_store):
    small = {"alphas": [1e-4, 1.0], "sgd_lrs": [0.01], "sgd_epochs": [50]}
    first = housing_regression(**small)
    reg = first["registered"]
    assert reg["name"] == "housing-regressor" and reg["promoted"] and reg["version"] == "1"
    client = MlflowClient()
    version = client.get_model_version("housing-regressor", "1")
    assert float(version.tags["best_val_mae"]) == first["best"]["val_mae"]
    assert version.tags["data_key"] == HOUSING_KEY
    assert version.tags["flow_run_id"] == first["run_id"]
    assert version.run_id == first["best"]["run_id"]
    tags = client.get_run(first["run_id"]).data.tags
    assert (tags["registered_model"], tags["registered_version"], tags["champion"]) == (
        "housing-regressor",
        "1",
        "true",
    )
    # the same flow again ties the champion: a tie is no win
    second = housing_regression(**small)
    assert second["best"]["val_mae"] == first["best"]["val_mae"]
    assert second["registered"]["version"] == "2" and not second["registered"]["promoted"]
    assert client.get_registered_model("housing-regressor").aliases == {"champion": 1}
    assert client.get_run(second["run_id"]).data.tags["champion"] == "false"


def test_convnet_flow_registers_under_the_dataset_name(prefect_harness, mlflow_store):
    result = convnet_training(epochs=1, num_train=200, hidden_dim=16, num_filters=4, seed=0)
    reg = result["registered"]
    assert (reg["name"], reg["version"], reg["promoted"]) == ("digits-convnet", "1", True)
    version = MlflowClient().get_model_version("digits-convnet", "1")
    assert float(version.tags["best_val_acc"]) == result["best_val_acc"]
    assert version.tags["data_key"] == "digits:split=default:num_train=200"
    info = mlflow.models.get_model_info("models:/digits-convnet@champion")
    assert info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 1, 8, 8)
