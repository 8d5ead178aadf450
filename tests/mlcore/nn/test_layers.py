"""Affine, relu, dropout, (batch|layer) norm and the losses: course values, numeric gradient
checks in float64, float32 preservation and input validation."""

import numpy as np
import pytest

from mlcore.nn.gradient_check import eval_numerical_gradient, eval_numerical_gradient_array
from mlcore.nn.gradient_check import rel_error as rel
from mlcore.nn.layers import (
    affine_backward,
    affine_forward,
    batchnorm_backward,
    batchnorm_backward_alt,
    batchnorm_forward,
    dropout_backward,
    dropout_forward,
    layernorm_backward,
    layernorm_forward,
    relu_backward,
    relu_forward,
    softmax_loss,
    svm_loss,
)


@pytest.fixture
def rng():
    return np.random.default_rng(231)


# ---------------------------------------------------------------------------------- affine


def test_affine_forward_course_values():
    num_inputs, input_shape, output_dim = 2, (4, 5, 6), 3
    input_size = num_inputs * np.prod(input_shape)
    weight_size = output_dim * np.prod(input_shape)
    x = np.linspace(-0.1, 0.5, num=input_size).reshape(num_inputs, *input_shape)
    w = np.linspace(-0.2, 0.3, num=weight_size).reshape(np.prod(input_shape), output_dim)
    b = np.linspace(-0.3, 0.1, num=output_dim)
    out, _ = affine_forward(x, w, b)
    correct_out = np.array(
        [[1.49834967, 1.70660132, 1.91485297], [3.25553199, 3.5141327, 3.77273342]]
    )
    assert rel(out, correct_out) < 1e-8


def test_affine_backward_numeric(rng):
    x = rng.standard_normal((10, 2, 3))
    w = rng.standard_normal((6, 5))
    b = rng.standard_normal(5)
    dout = rng.standard_normal((10, 5))
    dx_num = eval_numerical_gradient_array(lambda x: affine_forward(x, w, b)[0], x, dout)
    dw_num = eval_numerical_gradient_array(lambda w: affine_forward(x, w, b)[0], w, dout)
    db_num = eval_numerical_gradient_array(lambda b: affine_forward(x, w, b)[0], b, dout)
    dx, dw, db = affine_backward(dout, affine_forward(x, w, b)[1])
    assert dx.shape == x.shape
    assert rel(dx, dx_num) < 1e-8
    assert rel(dw, dw_num) < 1e-8
    assert rel(db, db_num) < 1e-8


# ---------------------------------------------------------------------------------- relu


def test_relu_forward_course_values():
    x = np.linspace(-0.5, 0.5, num=12).reshape(3, 4)
    out, _ = relu_forward(x)
    correct_out = np.array(
        [
            [0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.04545455, 0.13636364],
            [0.22727273, 0.31818182, 0.40909091, 0.5],
        ]
    )
    assert rel(out, correct_out) < 5e-8


def test_relu_backward_numeric(rng):
    x = rng.standard_normal((10, 10))
    dout = rng.standard_normal(x.shape)
    dx_num = eval_numerical_gradient_array(lambda x: relu_forward(x)[0], x, dout)
    dx = relu_backward(dout, relu_forward(x)[1])
    assert rel(dx, dx_num) < 1e-8


# ---------------------------------------------------------------------------------- dropout


@pytest.mark.parametrize("p", [0.25, 0.4, 0.7])
def test_dropout_forward_statistics(p):
    x = np.random.default_rng(0).standard_normal((500, 500)) + 10
    out_train, _ = dropout_forward(x, {"mode": "train", "p": p, "seed": 123})
    out_test, _ = dropout_forward(x, {"mode": "test", "p": p, "seed": 123})
    # inverted dropout: kept units are scaled by 1/p, so the expectation is unchanged
    assert abs(out_train.mean() - x.mean()) < 0.05 * x.mean()
    assert abs(np.mean(out_train == 0) - (1 - p)) < 0.01
    np.testing.assert_array_equal(out_test, x)
    kept = out_train != 0
    np.testing.assert_allclose(out_train[kept], x[kept] / p, rtol=1e-12)


def test_dropout_backward_numeric(rng):
    x = rng.standard_normal((10, 10)) + 10
    dout = rng.standard_normal(x.shape)
    param = {"mode": "train", "p": 0.2, "seed": 123}
    dx_num = eval_numerical_gradient_array(lambda x: dropout_forward(x, param)[0], x, dout)
    dx = dropout_backward(dout, dropout_forward(x, param)[1])
    assert rel(dx, dx_num) < 1e-10
    test_param = {"mode": "test", "p": 0.2}
    np.testing.assert_array_equal(dropout_backward(dout, dropout_forward(x, test_param)[1]), dout)


def test_dropout_seed_gives_same_mask(rng):
    x = rng.standard_normal((20, 20))
    a, _ = dropout_forward(x, {"mode": "train", "p": 0.5, "seed": 7})
    b, _ = dropout_forward(x, {"mode": "train", "p": 0.5, "seed": 7})
    c, _ = dropout_forward(x, {"mode": "train", "p": 0.5, "seed": 8})
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


# ---------------------------------------------------------------------------------- batchnorm


def test_batchnorm_train_forward_statistics(rng):
    N, D1, D2, D3 = 200, 50, 60, 3
    X = rng.standard_normal((N, D1))
    W1 = rng.standard_normal((D1, D2))
    W2 = rng.standard_normal((D2, D3))
    a = np.maximum(0, X @ W1) @ W2
    out, _ = batchnorm_forward(a, np.ones(D3), np.zeros(D3), {"mode": "train"})
    np.testing.assert_allclose(out.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(out.std(axis=0), 1, atol=1e-6)
    gamma, beta = np.array([1.0, 2.0, 3.0]), np.array([11.0, 12.0, 13.0])
    out, _ = batchnorm_forward(a, gamma, beta, {"mode": "train"})
    np.testing.assert_allclose(out.mean(axis=0), beta, atol=1e-12)
    np.testing.assert_allclose(out.std(axis=0), gamma, rtol=1e-6)


def test_batchnorm_running_averages_approach_the_population_statistics(rng):
    N, D1, D2, D3 = 200, 50, 60, 3
    W1 = rng.standard_normal((D1, D2))
    W2 = rng.standard_normal((D2, D3))
    bn_param = {"mode": "train"}
    gamma, beta = np.ones(D3), np.zeros(D3)
    for _ in range(50):
        a = np.maximum(0, rng.standard_normal((N, D1)) @ W1) @ W2
        batchnorm_forward(a, gamma, beta, bn_param)
    bn_param["mode"] = "test"
    a = np.maximum(0, rng.standard_normal((N, D1)) @ W1) @ W2
    out, _ = batchnorm_forward(a, gamma, beta, bn_param)
    # the running averages approach the population statistics: means near 0, stds near 1
    assert np.all(np.abs(out.mean(axis=0)) < 0.2)
    assert np.all(np.abs(out.std(axis=0) - 1) < 0.2)


def test_batchnorm_test_forward_normalises_with_the_running_statistics_not_the_batch(rng):
    D = 5
    gamma, beta = rng.uniform(0.5, 2.0, D), rng.standard_normal(D)
    bn_param = {"mode": "train"}
    for _ in range(20):
        batchnorm_forward(rng.standard_normal((64, D)), gamma, beta, bn_param)
    running_mean, running_var = bn_param["running_mean"].copy(), bn_param["running_var"].copy()
    bn_param["mode"] = "test"
    # a test batch far from the training data: its own statistics would give mean beta, std gamma
    x = 3 * rng.standard_normal((64, D)) + 50
    out, _ = batchnorm_forward(x, gamma, beta, bn_param)
    expected = gamma * (x - running_mean) / np.sqrt(running_var + 1e-5) + beta
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    np.testing.assert_array_equal(bn_param["running_mean"], running_mean)  # test mode: unchanged
    np.testing.assert_array_equal(bn_param["running_var"], running_var)

    # running statistics given in bn_param, with their own eps
    mean, var = np.array([1.0, -2.0, 3.0]), np.array([0.25, 4.0, 9.0])
    param = {"mode": "test", "running_mean": mean, "running_var": var, "eps": 1e-3}
    x = rng.standard_normal((8, 3)) + 50
    out, _ = batchnorm_forward(x, np.array([1.0, 2.0, 3.0]), np.array([0.5, 0.0, -0.5]), param)
    expected = np.array([1.0, 2.0, 3.0]) * (x - mean) / np.sqrt(var + 1e-3) + [0.5, 0.0, -0.5]
    np.testing.assert_allclose(out, expected, rtol=1e-12)


def test_batchnorm_running_average_update(rng):
    x = rng.standard_normal((30, 4)) * 3 + 2
    param = {
        "mode": "train",
        "momentum": 0.8,
        "running_mean": np.ones(4),
        "running_var": np.ones(4),
    }
    batchnorm_forward(x, np.ones(4), np.zeros(4), param)
    np.testing.assert_allclose(param["running_mean"], 0.8 + 0.2 * x.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(param["running_var"], 0.8 + 0.2 * x.var(axis=0), rtol=1e-14)


@pytest.mark.parametrize("backward", [batchnorm_backward, batchnorm_backward_alt])
def test_batchnorm_backward_numeric(rng, backward):
    N, D = 4, 5
    x = 5 * rng.standard_normal((N, D)) + 12
    gamma = rng.standard_normal(D)
    beta = rng.standard_normal(D)
    dout = rng.standard_normal((N, D))

    def f(_):
        return batchnorm_forward(x, gamma, beta, {"mode": "train"})[0]

    dx_num = eval_numerical_gradient_array(f, x, dout)
    da_num = eval_numerical_gradient_array(f, gamma, dout)
    db_num = eval_numerical_gradient_array(f, beta, dout)
    dx, dgamma, dbeta = backward(dout, batchnorm_forward(x, gamma, beta, {"mode": "train"})[1])
    assert rel(dx, dx_num) < 1e-6
    assert rel(dgamma, da_num) < 1e-8
    assert rel(dbeta, db_num) < 1e-8


def test_batchnorm_backward_variants_agree(rng):
    x = rng.standard_normal((100, 500))
    gamma, beta = rng.standard_normal(500), rng.standard_normal(500)
    dout = rng.standard_normal((100, 500))
    _, cache = batchnorm_forward(x, gamma, beta, {"mode": "train"})
    staged, alt = batchnorm_backward(dout, cache), batchnorm_backward_alt(dout, cache)
    for a, b in zip(staged, alt, strict=True):
        assert rel(a, b) < 1e-8


def test_batchnorm_test_mode_backward_numeric(rng):
    x = rng.standard_normal((6, 3))
    gamma, beta = rng.standard_normal(3), rng.standard_normal(3)
    param = {"mode": "test", "running_mean": np.array([0.1, -0.2, 0.3]), "running_var": np.ones(3)}
    dout = rng.standard_normal((6, 3))
    dx_num = eval_numerical_gradient_array(
        lambda x: batchnorm_forward(x, gamma, beta, param)[0], x, dout
    )
    dx, _, _ = batchnorm_backward(dout, batchnorm_forward(x, gamma, beta, param)[1])
    assert rel(dx, dx_num) < 1e-8


# ---------------------------------------------------------------------------------- layernorm


def test_layernorm_forward_statistics(rng):
    a = rng.standard_normal((4, 60)) * 3 + 5
    out, _ = layernorm_forward(a, np.ones(60), np.zeros(60), {})
    np.testing.assert_allclose(out.mean(axis=1), 0, atol=1e-12)
    np.testing.assert_allclose(out.std(axis=1), 1, atol=1e-5)
    gamma, beta = np.full(60, 3.0), np.full(60, 5.0)
    out, _ = layernorm_forward(a, gamma, beta, {})
    np.testing.assert_allclose(out.mean(axis=1), 5, atol=1e-12)
    np.testing.assert_allclose(out.std(axis=1), 3, rtol=1e-5)


def test_layernorm_backward_numeric(rng):
    N, D = 4, 5
    x = 5 * rng.standard_normal((N, D)) + 12
    gamma, beta = rng.standard_normal(D), rng.standard_normal(D)
    dout = rng.standard_normal((N, D))

    def f(_):
        return layernorm_forward(x, gamma, beta, {})[0]

    dx_num = eval_numerical_gradient_array(f, x, dout)
    da_num = eval_numerical_gradient_array(f, gamma, dout)
    db_num = eval_numerical_gradient_array(f, beta, dout)
    dx, dgamma, dbeta = layernorm_backward(dout, layernorm_forward(x, gamma, beta, {})[1])
    assert rel(dx, dx_num) < 1e-6
    assert rel(dgamma, da_num) < 1e-8
    assert rel(dbeta, db_num) < 1e-8


# ---------------------------------------------------------------------------------- losses


def test_losses_course_sanity_and_gradients(rng):
    num_classes, num_inputs = 10, 50
    x = 0.001 * rng.standard_normal((num_inputs, num_classes))
    y = rng.integers(num_classes, size=num_inputs)

    loss, dx = svm_loss(x, y)
    dx_num = eval_numerical_gradient(lambda x: svm_loss(x, y)[0], x)
    assert loss == pytest.approx(9, abs=0.02)  # about C - 1 with near-zero scores
    assert rel(dx, dx_num) < 1e-8

    loss, dx = softmax_loss(x, y)
    dx_num = eval_numerical_gradient(lambda x: softmax_loss(x, y)[0], x)
    assert loss == pytest.approx(np.log(10), abs=0.01)
    assert rel(dx, dx_num) < 1e-8


def test_losses_exact_values():
    x = np.array([[1.0, 2.0, 3.0], [0.5, 0.5, -1.0]])
    y = np.array([2, 0])
    expected_softmax = -(
        np.log(np.exp(3) / np.exp([1, 2, 3]).sum())
        + np.log(np.exp(0.5) / np.exp([0.5, 0.5, -1]).sum())
    )
    assert softmax_loss(x, y)[0] == pytest.approx(expected_softmax / 2, rel=1e-12)
    # margins: row 0: max(0, 1-3+1)=0, max(0, 2-3+1)=0; row 1: max(0, .5-.5+1)=1, max(0,-1-.5+1)=0
    assert svm_loss(x, y)[0] == pytest.approx(0.5, rel=1e-12)


def test_softmax_loss_is_numerically_stable():
    x = np.array([[1000.0, 0.0, -1000.0], [-5000.0, 5000.0, 0.0]])
    loss, dx = softmax_loss(x, np.array([0, 1]))
    assert np.isfinite(loss) and loss == pytest.approx(0.0, abs=1e-12)
    assert np.all(np.isfinite(dx))
    loss, _ = softmax_loss(x, np.array([1, 2]))
    assert loss == pytest.approx((1000 + 5000) / 2, rel=1e-12)


def test_loss_rows_of_dx_sum_to_zero(rng):
    x = rng.standard_normal((7, 4))
    y = rng.integers(4, size=7)
    for loss_fn in (softmax_loss, svm_loss):
        _, dx = loss_fn(x, y)
        np.testing.assert_allclose(dx.sum(axis=1), 0, atol=1e-15)


# ---------------------------------------------------------------------------------- dtypes


def test_float32_in_float32_out(rng):
    f32 = np.float32
    x = rng.standard_normal((6, 2, 2)).astype(f32)
    w = rng.standard_normal((4, 3)).astype(f32)
    b = rng.standard_normal(3).astype(f32)
    out, cache = affine_forward(x, w, b)
    assert out.dtype == f32
    assert all(g.dtype == f32 for g in affine_backward(out, cache))

    out, cache = relu_forward(x)
    assert out.dtype == f32 and relu_backward(out, cache).dtype == f32

    out, cache = dropout_forward(x, {"mode": "train", "p": 0.5, "seed": 0})
    assert out.dtype == f32 and dropout_backward(out, cache).dtype == f32

    x2 = x.reshape(6, 4)
    gamma, beta = np.ones(4, f32), np.zeros(4, f32)
    bn_param = {"mode": "train"}
    out, cache = batchnorm_forward(x2, gamma, beta, bn_param)
    assert out.dtype == f32 and bn_param["running_mean"].dtype == f32
    assert bn_param["running_var"].dtype == f32
    for backward in (batchnorm_backward, batchnorm_backward_alt):
        assert all(g.dtype == f32 for g in backward(out, cache))
    out, cache = layernorm_forward(x2, gamma, beta, {})
    assert out.dtype == f32
    assert all(g.dtype == f32 for g in layernorm_backward(out, cache))

    y = np.array([0, 1, 2, 3, 0, 1])
    for loss_fn in (softmax_loss, svm_loss):
        loss, dx = loss_fn(x2, y)
        assert dx.dtype == f32 and isinstance(loss, float)


# ---------------------------------------------------------------------------------- validation


def test_affine_rejects_mismatched_shapes():
    x = np.zeros((2, 3, 4))
    with pytest.raises(ValueError, match=r"w has 10 rows .* flattens to 12"):
        affine_forward(x, np.zeros((10, 5)), np.zeros(5))
    with pytest.raises(ValueError, match=r"b must have shape \(5,\)"):
        affine_forward(x, np.zeros((12, 5)), np.zeros(4))
    with pytest.raises(ValueError, match="w must be 2-D"):
        affine_forward(x, np.zeros(12), np.zeros(5))


@pytest.mark.parametrize("p", [0, -0.1, 1.5, None])
def test_dropout_rejects_bad_p(p):
    with pytest.raises(ValueError, match=r"p \(keep probability\) must be in \(0, 1\]"):
        dropout_forward(np.ones((2, 2)), {"mode": "train", "p": p})


def test_bad_mode_raises():
    with pytest.raises(ValueError, match="mode must be 'train' or 'test', got 'eval'"):
        dropout_forward(np.ones((2, 2)), {"mode": "eval", "p": 0.5})
    with pytest.raises(ValueError, match="mode must be 'train' or 'test'"):
        batchnorm_forward(np.ones((2, 2)), np.ones(2), np.zeros(2), {"mode": "Train"})
    with pytest.raises(ValueError, match="mode must be 'train' or 'test', got None"):
        batchnorm_forward(np.ones((2, 2)), np.ones(2), np.zeros(2), {})


def test_norm_layers_reject_bad_shapes():
    x = np.ones((4, 3))
    with pytest.raises(ValueError, match=r"gamma must have shape \(3,\), got \(4,\)"):
        batchnorm_forward(x, np.ones(4), np.zeros(3), {"mode": "train"})
    with pytest.raises(ValueError, match=r"beta must have shape \(3,\), got \(1, 3\)"):
        layernorm_forward(x, np.ones(3), np.zeros((1, 3)), {})
    with pytest.raises(ValueError, match=r"x must be 2-D, got shape \(4, 3, 1\)"):
        batchnorm_forward(x[..., None], np.ones(3), np.zeros(3), {"mode": "train"})
    with pytest.raises(ValueError, match=r"x must be 2-D"):
        layernorm_forward(np.ones(3), np.ones(3), np.zeros(3), {})


@pytest.mark.parametrize("loss_fn", [softmax_loss, svm_loss])
def test_losses_reject_bad_labels(loss_fn):
    x = np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"y labels must be in \[0, 4\).*range \[0, 4\]"):
        loss_fn(x, np.array([0, 1, 4]))
    with pytest.raises(ValueError, match=r"y labels must be in \[0, 4\)"):
        loss_fn(x, np.array([-1, 1, 2]))
    with pytest.raises(ValueError, match=r"y must have shape \(3,\)"):
        loss_fn(x, np.array([0, 1]))
    with pytest.raises(ValueError, match="y must hold integer class labels"):
        loss_fn(x, np.array([0.5, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"x must be 2-D"):
        loss_fn(np.zeros(3), np.array([0, 1, 2]))
