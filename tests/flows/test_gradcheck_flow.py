"""The gradient-check suite and its flow, read back from MLflow."""

import numpy as np
import pytest
from mlflow import MlflowClient

from flows.gradcheck import gradient_check_flow
from mlcore.nn import layers as L
from mlcore.nn.checks import (
    GRADIENT_CHECKS,
    GradientCheck,
    GradientCheckError,
    check_layer,
    run_check,
)

pytestmark = pytest.mark.slow


def test_every_layer_of_the_course_is_checked():
    expected = {
        "affine", "relu", "dropout", "conv_naive", "conv_fast", "max_pool_naive", "max_pool_fast",
        "softmax_loss", "svm_loss", "batchnorm", "layernorm", "spatial_batchnorm",
        "spatial_groupnorm", "affine_relu", "conv_relu", "conv_relu_pool", "affine_bn_relu",
        "conv_bn_relu", "three_layer_convnet",
    }  # fmt: skip
    assert set(GRADIENT_CHECKS) == expected
    assert GRADIENT_CHECKS["conv_naive"].threshold == 1e-7
    assert GRADIENT_CHECKS["spatial_groupnorm"].threshold == 1e-6
    assert GRADIENT_CHECKS["three_layer_convnet"].threshold == 1e-5


def test_a_wrong_gradient_is_caught():
    def wrong_backward(dout, cache):
        dx, dw, db = L.affine_backward(dout, cache)
        return dx, dw * 1.001, db  # off by 0.1%

    rng = np.random.default_rng(0)
    inputs = {
        "x": rng.standard_normal((4, 5)),
        "w": rng.standard_normal((5, 3)),
        "b": rng.standard_normal(3),
    }
    errors = check_layer(L.affine_forward, wrong_backward, inputs, ("x", "w", "b"))
    assert errors["x"] < 1e-7 and errors["b"] < 1e-7
    assert errors["w"] == pytest.approx(0.001 / 2.001, rel=1e-3)
    with pytest.raises(ValueError, match="unknown gradient check 'nope'"):
        run_check("nope")


def test_gradient_check_flow_logs_every_error_within_threshold(prefect_harness, mlflow_store):
    result = gradient_check_flow()
    run = MlflowClient().get_run(result["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["gradcheck.passed"] == "true"
    logged = {k: v for k, v in run.data.metrics.items() if k.startswith("rel_error.")}
    for row in result["results"]:
        key = f"rel_error.{row['layer']}.{row['input']}"
        assert logged[key] == pytest.approx(row["rel_error"], rel=1e-12)
        assert logged[key] <= GRADIENT_CHECKS[row["layer"]].threshold
    assert {k.split(".")[1] for k in logged} == set(GRADIENT_CHECKS)
    assert "rel_error.conv_fast.w" in logged and "rel_error.three_layer_convnet.W1" in logged
    assert "gradcheck.csv" in {a.path for a in MlflowClient().list_artifacts(result["run_id"])}


def test_gradient_check_flow_fails_on_a_wrong_layer(prefect_harness, mlflow_store, monkeypatch):
    def wrong_relu(rng):
        x = rng.standard_normal((5, 5))
        return check_layer(L.relu_forward, lambda d, c: 2 * L.relu_backward(d, c), {"x": x}, ("x",))

    monkeypatch.setitem(
        GRADIENT_CHECKS, "wrong_relu", GradientCheck("wrong_relu", 1e-7, wrong_relu)
    )
    with pytest.raises(GradientCheckError, match=r"gradient check failed: wrong_relu\.x=3\.33e-01"):
        gradient_check_flow(layers=["affine", "wrong_relu"])
    exp = MlflowClient().get_experiment_by_name("gradcheck")
    (run,) = MlflowClient().search_runs([exp.experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.tags["gradcheck.passed"] == "false"
    assert run.data.metrics["rel_error.wrong_relu.x"] == pytest.approx(1 / 3)
