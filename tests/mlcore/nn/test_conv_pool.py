"""Naive convolution and max pooling, spatial batch norm and group norm: the course's checks,
independent loop references, numeric gradient checks and input validation."""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mlcore.nn.gradient_check import eval_numerical_gradient_array
from mlcore.nn.gradient_check import rel_error as rel
from mlcore.nn.layers import (
    conv_backward_naive,
    conv_forward_naive,
    max_pool_backward_naive,
    max_pool_forward_naive,
    spatial_batchnorm_backward,
    spatial_batchnorm_forward,
    spatial_groupnorm_backward,
    spatial_groupnorm_forward,
)


@pytest.fixture
def rng():
    return np.random.default_rng(231)


def conv_reference(x, w, b, stride, pad):
    """The definition, one output element at a time."""
    N, C, H, W = x.shape
    F, _, HH, WW = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    Ho, Wo = 1 + (H + 2 * pad - HH) // stride, 1 + (W + 2 * pad - WW) // stride
    out = np.zeros((N, F, Ho, Wo))
    for n in range(N):
        for f in range(F):
            for i in range(Ho):
                for j in range(Wo):
                    window = xp[n, :, i * stride : i * stride + HH, j * stride : j * stride + WW]
                    out[n, f, i, j] = np.sum(window * w[f]) + b[f]
    return out


def pool_reference(x, ph, pw, stride):
    N, C, H, W = x.shape
    Ho, Wo = 1 + (H - ph) // stride, 1 + (W - pw) // stride
    out = np.zeros((N, C, Ho, Wo))
    dx_routes = np.zeros((N, C, Ho, Wo, H, W))  # d out[n, c, i, j] / d x[n, c]
    for n in range(N):
        for c in range(C):
            for i in range(Ho):
                for j in range(Wo):
                    window = x[n, c, i * stride : i * stride + ph, j * stride : j * stride + pw]
                    out[n, c, i, j] = window.max()
                    a, bb = np.unravel_index(np.argmax(window), window.shape)
                    dx_routes[n, c, i, j, i * stride + a, j * stride + bb] = 1
    return out, dx_routes


def conv_grads_numeric(x, w, b, conv_param, dout):
    def f(_):
        return conv_forward_naive(x, w, b, conv_param)[0]

    return tuple(eval_numerical_gradient_array(f, a, dout) for a in (x, w, b))


# ---------------------------------------------------------------------------------- conv


def test_conv_forward_course_values():
    x_shape, w_shape = (2, 3, 4, 4), (3, 3, 4, 4)
    x = np.linspace(-0.1, 0.5, num=np.prod(x_shape)).reshape(x_shape)
    w = np.linspace(-0.2, 0.3, num=np.prod(w_shape)).reshape(w_shape)
    b = np.linspace(-0.1, 0.2, num=3)
    out, _ = conv_forward_naive(x, w, b, {"stride": 2, "pad": 1})
    correct_out = np.array(
        [
            [
                [[-0.08759809, -0.10987781], [-0.18387192, -0.2109216]],
                [[0.21027089, 0.21661097], [0.22847626, 0.23004637]],
                [[0.50813986, 0.54309974], [0.64082444, 0.67101435]],
            ],
            [
                [[-0.98053589, -1.03143541], [-1.19128892, -1.24695841]],
                [[0.69108355, 0.66880383], [0.59480972, 0.56776003]],
                [[2.36270298, 2.36904306], [2.38090835, 2.38247847]],
            ],
        ]
    )
    assert rel(out, correct_out) < 1e-7


@pytest.mark.parametrize(
    "x_shape, w_shape, stride, pad",
    [
        ((2, 3, 5, 5), (4, 3, 3, 3), 1, 1),
        ((2, 2, 7, 5), (3, 2, 3, 2), 2, 1),  # rectangular input, non-square filter
        ((1, 2, 7, 8), (2, 2, 2, 3), 2, 0),  # floor: the last row / column are not reached
        ((2, 1, 6, 9), (2, 1, 4, 1), 3, 2),
        ((1, 3, 4, 4), (2, 3, 4, 4), 1, 0),  # filter as large as the input
    ],
)
def test_conv_forward_matches_reference(rng, x_shape, w_shape, stride, pad):
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[0])
    out, _ = conv_forward_naive(x, w, b, {"stride": stride, "pad": pad})
    expected = conv_reference(x, w, b, stride, pad)
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


def test_conv_backward_course_numeric(rng):
    x = rng.standard_normal((4, 3, 5, 5))
    w = rng.standard_normal((2, 3, 3, 3))
    b = rng.standard_normal(2)
    dout = rng.standard_normal((4, 2, 5, 5))
    conv_param = {"stride": 1, "pad": 1}
    dx_num, dw_num, db_num = conv_grads_numeric(x, w, b, conv_param, dout)
    dx, dw, db = conv_backward_naive(dout, conv_forward_naive(x, w, b, conv_param)[1])
    assert rel(dx, dx_num) < 1e-8
    assert rel(dw, dw_num) < 1e-8
    assert rel(db, db_num) < 1e-8


@pytest.mark.parametrize(
    "x_shape, w_shape, stride, pad",
    [
        ((2, 2, 7, 5), (3, 2, 3, 2), 2, 1),  # rectangular input, non-square filter, stride 2
        ((2, 2, 6, 7), (2, 2, 1, 3), 2, 1),  # floor output size with leftover rows/columns
        ((1, 2, 5, 4), (2, 2, 4, 2), 3, 2),
    ],
)
def test_conv_backward_numeric_general_shapes(rng, x_shape, w_shape, stride, pad):
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[0])
    conv_param = {"stride": stride, "pad": pad}
    out, cache = conv_forward_naive(x, w, b, conv_param)
    dout = rng.standard_normal(out.shape)
    dx_num, dw_num, db_num = conv_grads_numeric(x, w, b, conv_param, dout)
    dx, dw, db = conv_backward_naive(dout, cache)
    assert (dx.shape, dw.shape, db.shape) == (x.shape, w.shape, b.shape)
    assert rel(dx, dx_num) < 1e-8
    assert rel(dw, dw_num) < 1e-8
    assert rel(db, db_num) < 1e-8


def test_conv_float32_stays_float32(rng):
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    out, cache = conv_forward_naive(x, w, b, {"stride": 1, "pad": 1})
    assert out.dtype == np.float32
    grads = conv_backward_naive(np.ones_like(out), cache)
    assert [g.dtype for g in grads] == [np.float32] * 3
    expected = conv_reference(x.astype(np.float64), w, b, 1, 1)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_conv_validation():
    x, w, b = np.zeros((2, 3, 5, 5)), np.zeros((4, 3, 3, 3)), np.zeros(4)
    ok = {"stride": 1, "pad": 0}
    with pytest.raises(ValueError, match=r"w has 2 channels but x has 3"):
        conv_forward_naive(x, np.zeros((4, 2, 3, 3)), b, ok)
    with pytest.raises(ValueError, match=r"filter 6x6 does not fit input 5x5 with pad 0"):
        conv_forward_naive(x, np.zeros((4, 3, 6, 6)), b, ok)
    with pytest.raises(ValueError, match=r"filter 3x8 does not fit input 5x5 with pad 1"):
        conv_forward_naive(x, np.zeros((4, 3, 3, 8)), b, {"stride": 1, "pad": 1})
    with pytest.raises(ValueError, match=r"pad must be an integer >= 0, got -1"):
        conv_forward_naive(x, w, b, {"stride": 1, "pad": -1})
    with pytest.raises(ValueError, match=r"stride must be an integer >= 1, got 0"):
        conv_forward_naive(x, w, b, {"stride": 0, "pad": 1})
    with pytest.raises(ValueError, match=r"stride must be an integer >= 1, got 1.5"):
        conv_forward_naive(x, w, b, {"stride": 1.5, "pad": 1})
    with pytest.raises(ValueError, match=r"missing parameter 'pad'"):
        conv_forward_naive(x, w, b, {"stride": 1})
    with pytest.raises(ValueError, match=r"x must be 4-D, got shape \(3, 5, 5\)"):
        conv_forward_naive(x[0], w, b, ok)
    with pytest.raises(ValueError, match=r"w must be 4-D"):
        conv_forward_naive(x, w[0], b, ok)
    with pytest.raises(ValueError, match=r"b must have shape \(4,\), got \(3,\)"):
        conv_forward_naive(x, w, np.zeros(3), ok)


# ---------------------------------------------------------------------------------- pooling


def test_max_pool_forward_course_values():
    x_shape = (2, 3, 4, 4)
    x = np.linspace(-0.3, 0.4, num=np.prod(x_shape)).reshape(x_shape)
    pool_param = {"pool_width": 2, "pool_height": 2, "stride": 2}
    out, _ = max_pool_forward_naive(x, pool_param)
    correct_out = np.array(
        [
            [
                [[-0.26315789, -0.24842105], [-0.20421053, -0.18947368]],
                [[-0.14526316, -0.13052632], [-0.08631579, -0.07157895]],
                [[-0.02736842, -0.01263158], [0.03157895, 0.04631579]],
            ],
            [
                [[0.09052632, 0.10526316], [0.14947368, 0.16421053]],
                [[0.20842105, 0.22315789], [0.26736842, 0.28210526]],
                [[0.32631579, 0.34105263], [0.38526316, 0.4]],
            ],
        ]
    )
    assert rel(out, correct_out) < 1e-7  # the course expects a difference on the order of 1e-8


def test_max_pool_backward_course_numeric(rng):
    x = rng.standard_normal((3, 2, 8, 8))
    dout = rng.standard_normal((3, 2, 4, 4))
    pool_param = {"pool_height": 2, "pool_width": 2, "stride": 2}
    dx_num = eval_numerical_gradient_array(
        lambda x: max_pool_forward_naive(x, pool_param)[0], x, dout
    )
    dx = max_pool_backward_naive(dout, max_pool_forward_naive(x, pool_param)[1])
    assert rel(dx, dx_num) < 1e-10  # course: on the order of 1e-12


@pytest.mark.parametrize(
    "x_shape, ph, pw, stride",
    [((2, 2, 7, 9), 3, 3, 2), ((1, 3, 6, 5), 2, 3, 1), ((2, 1, 9, 8), 3, 2, 3)],
)
def test_max_pool_overlapping_and_rectangular(rng, x_shape, ph, pw, stride):
    x = rng.standard_normal(x_shape)  # continuous values: no ties, no kinks within h
    pool_param = {"pool_height": ph, "pool_width": pw, "stride": stride}
    out, cache = max_pool_forward_naive(x, pool_param)
    expected_out, routes = pool_reference(x, ph, pw, stride)
    np.testing.assert_array_equal(out, expected_out)
    dout = rng.standard_normal(out.shape)
    dx = max_pool_backward_naive(dout, cache)
    np.testing.assert_allclose(dx, np.einsum("ncij,ncijhw->nchw", dout, routes), atol=1e-14)
    dx_num = eval_numerical_gradient_array(
        lambda x: max_pool_forward_naive(x, pool_param)[0], x, dout
    )
    assert rel(dx, dx_num) < 1e-8


def test_max_pool_backward_ties_go_to_first_max_and_accumulate():
    x = np.zeros((1, 1, 3, 3))
    pool_param = {"pool_height": 2, "pool_width": 2, "stride": 1}
    out, cache = max_pool_forward_naive(x, pool_param)
    dx = max_pool_backward_naive(np.array([[[[1.0, 2.0], [3.0, 4.0]]]]), cache)
    # every window is all ties: each routes to its top-left element
    np.testing.assert_array_equal(dx[0, 0], [[1, 2, 0], [3, 4, 0], [0, 0, 0]])
    x = np.array([[[[0.0, 0.0, 0.0], [0.0, 9.0, 0.0], [0.0, 0.0, 0.0]]]])
    _, cache = max_pool_forward_naive(x, pool_param)
    dx = max_pool_backward_naive(np.array([[[[1.0, 2.0], [3.0, 4.0]]]]), cache)
    # the centre is the maximum of all four overlapping windows and collects all four
    np.testing.assert_array_equal(dx[0, 0], [[0, 0, 0], [0, 10, 0], [0, 0, 0]])


def test_max_pool_float32_stays_float32(rng):
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    out, cache = max_pool_forward_naive(x, {"pool_height": 2, "pool_width": 2, "stride": 2})
    assert out.dtype == np.float32
    assert max_pool_backward_naive(out, cache).dtype == np.float32


def test_max_pool_validation():
    x = np.zeros((2, 3, 4, 5))
    with pytest.raises(ValueError, match=r"pool window 5x2 does not fit input 4x5"):
        max_pool_forward_naive(x, {"pool_height": 5, "pool_width": 2, "stride": 1})
    with pytest.raises(ValueError, match=r"stride must be an integer >= 1, got 0"):
        max_pool_forward_naive(x, {"pool_height": 2, "pool_width": 2, "stride": 0})
    with pytest.raises(ValueError, match=r"pool_width must be an integer >= 1, got 0"):
        max_pool_forward_naive(x, {"pool_height": 2, "pool_width": 0, "stride": 1})
    with pytest.raises(ValueError, match=r"missing parameter 'pool_height'"):
        max_pool_forward_naive(x, {"pool_width": 2, "stride": 2})
    with pytest.raises(ValueError, match=r"x must be 4-D, got shape \(4, 5\)"):
        max_pool_forward_naive(x[0, 0], {"pool_height": 2, "pool_width": 2, "stride": 2})


# ---------------------------------------------------------------------------------- spatial BN


def test_spatial_batchnorm_train_forward(rng):
    N, C, H, W = 2, 3, 4, 5
    x = 4 * rng.standard_normal((N, C, H, W)) + 10
    out, _ = spatial_batchnorm_forward(x, np.ones(C), np.zeros(C), {"mode": "train"})
    assert out.shape == x.shape
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(out.std(axis=(0, 2, 3)), 1, atol=1e-5)
    gamma, beta = np.array([3.0, 4.0, 5.0]), np.array([6.0, 7.0, 8.0])
    out, _ = spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"})
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), beta, atol=1e-12)
    np.testing.assert_allclose(out.std(axis=(0, 2, 3)), gamma, rtol=1e-5)
    # statistics are per channel over N, H, W: compare with a direct computation
    mu = x.mean(axis=(0, 2, 3), keepdims=True)
    var = x.var(axis=(0, 2, 3), keepdims=True)
    expected = (
        gamma[None, :, None, None] * (x - mu) / np.sqrt(var + 1e-5) + beta[None, :, None, None]
    )
    np.testing.assert_allclose(out, expected, rtol=1e-12)


def test_spatial_batchnorm_test_forward(rng):
    N, C, H, W = 10, 4, 11, 12
    bn_param = {"mode": "train"}
    gamma, beta = np.ones(C), np.zeros(C)
    for _ in range(50):
        x = 2.3 * rng.standard_normal((N, C, H, W)) + 13
        spatial_batchnorm_forward(x, gamma, beta, bn_param)
    bn_param["mode"] = "test"
    x = 2.3 * rng.standard_normal((N, C, H, W)) + 13
    out, _ = spatial_batchnorm_forward(x, gamma, beta, bn_param)
    assert np.all(np.abs(out.mean(axis=(0, 2, 3))) < 0.1)
    assert np.all(np.abs(out.std(axis=(0, 2, 3)) - 1) < 0.1)


def test_spatial_batchnorm_test_forward_normalises_with_the_running_statistics(rng):
    N, C, H, W = 4, 3, 5, 6
    gamma, beta = rng.uniform(0.5, 2.0, C), rng.standard_normal(C)
    bn_param = {"mode": "train"}
    for _ in range(20):
        spatial_batchnorm_forward(rng.standard_normal((N, C, H, W)), gamma, beta, bn_param)
    running_mean, running_var = bn_param["running_mean"].copy(), bn_param["running_var"].copy()
    bn_param["mode"] = "test"
    # far from the training data, with a different mean per channel: the batch's own
    # per-channel statistics would give mean beta and std gamma
    x = 3 * rng.standard_normal((N, C, H, W)) + np.array([50.0, -40.0, 60.0])[:, None, None]
    out, _ = spatial_batchnorm_forward(x, gamma, beta, bn_param)
    g, b, mu, var = (a.reshape(1, C, 1, 1) for a in (gamma, beta, running_mean, running_var))
    expected = g * (x - mu) / np.sqrt(var + 1e-5) + b
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    np.testing.assert_array_equal(bn_param["running_mean"], running_mean)  # test mode: unchanged
    np.testing.assert_array_equal(bn_param["running_var"], running_var)


def test_spatial_batchnorm_backward_numeric(rng):
    N, C, H, W = 2, 3, 4, 5
    x = 5 * rng.standard_normal((N, C, H, W)) + 12
    gamma, beta = rng.standard_normal(C), rng.standard_normal(C)
    dout = rng.standard_normal((N, C, H, W))

    def f(_):
        return spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"})[0]

    dx_num = eval_numerical_gradient_array(f, x, dout)
    da_num = eval_numerical_gradient_array(f, gamma, dout)
    db_num = eval_numerical_gradient_array(f, beta, dout)
    _, cache = spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"})
    dx, dgamma, dbeta = spatial_batchnorm_backward(dout, cache)
    assert rel(dx, dx_num) < 1e-6
    assert rel(dgamma, da_num) < 1e-6
    assert rel(dbeta, db_num) < 1e-6


def test_spatial_batchnorm_validation():
    x = np.ones((2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"gamma must have shape \(3,\), got \(1, 3, 1, 1\)"):
        spatial_batchnorm_forward(x, np.ones((1, 3, 1, 1)), np.zeros(3), {"mode": "train"})
    with pytest.raises(ValueError, match=r"x must be 4-D, got shape \(2, 3\)"):
        spatial_batchnorm_forward(np.ones((2, 3)), np.ones(3), np.zeros(3), {"mode": "train"})
    with pytest.raises(ValueError, match="mode must be 'train' or 'test'"):
        spatial_batchnorm_forward(x, np.ones(3), np.zeros(3), {"mode": "infer"})


# ---------------------------------------------------------------------------------- group norm


def test_spatial_groupnorm_forward(rng):
    N, C, H, W, G = 2, 6, 4, 5, 2
    x = 4 * rng.standard_normal((N, C, H, W)) + 10
    gamma, beta = np.ones((1, C, 1, 1)), np.zeros((1, C, 1, 1))
    out, _ = spatial_groupnorm_forward(x, gamma, beta, G, {})
    grouped = out.reshape(N, G, -1)
    np.testing.assert_allclose(grouped.mean(axis=2), 0, atol=1e-12)
    np.testing.assert_allclose(grouped.std(axis=2), 1, atol=1e-5)
    gamma = np.arange(1.0, C + 1).reshape(1, C, 1, 1)
    beta = -np.arange(C, dtype=float).reshape(1, C, 1, 1)
    out, _ = spatial_groupnorm_forward(x, gamma, beta, G, {"eps": 1e-5})
    xg = x.reshape(N, G, -1)
    xhat = (xg - xg.mean(axis=2, keepdims=True)) / np.sqrt(xg.var(axis=2, keepdims=True) + 1e-5)
    np.testing.assert_allclose(out, gamma * xhat.reshape(x.shape) + beta, rtol=1e-12)


def test_spatial_groupnorm_backward_numeric():
    # rel_error is a maximum over elements, so a draw with a dx entry near 1e-5 shows the
    # centred difference's rounding noise (~1e-10 absolute) as ~1e-6; this draw has none
    rng = np.random.default_rng(0)
    N, C, H, W, G = 2, 6, 4, 5, 2
    x = 5 * rng.standard_normal((N, C, H, W)) + 12
    gamma = rng.standard_normal((1, C, 1, 1))
    beta = rng.standard_normal((1, C, 1, 1))
    dout = rng.standard_normal((N, C, H, W))

    def f(_):
        return spatial_groupnorm_forward(x, gamma, beta, G, {})[0]

    dx_num = eval_numerical_gradient_array(f, x, dout)
    da_num = eval_numerical_gradient_array(f, gamma, dout)
    db_num = eval_numerical_gradient_array(f, beta, dout)
    _, cache = spatial_groupnorm_forward(x, gamma, beta, G, {})
    dx, dgamma, dbeta = spatial_groupnorm_backward(dout, cache)
    assert dgamma.shape == dbeta.shape == (1, C, 1, 1)
    assert rel(dx, dx_num) < 1e-7
    assert rel(dgamma, da_num) < 1e-7
    assert rel(dbeta, db_num) < 1e-7


def test_normalisation_float32_stays_float32(rng):
    x = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    out, cache = spatial_batchnorm_forward(
        x, np.ones(4, np.float32), np.zeros(4, np.float32), {"mode": "train"}
    )
    assert out.dtype == np.float32
    assert all(g.dtype == np.float32 for g in spatial_batchnorm_backward(out, cache))
    g = np.ones((1, 4, 1, 1), np.float32)
    out, cache = spatial_groupnorm_forward(x, g, 0 * g, 2, {})
    assert out.dtype == np.float32
    assert all(d.dtype == np.float32 for d in spatial_groupnorm_backward(out, cache))


def test_spatial_groupnorm_validation():
    x = np.ones((2, 6, 3, 3))
    g = np.ones((1, 6, 1, 1))
    with pytest.raises(ValueError, match=r"G must be a positive divisor of C=6.*got 4"):
        spatial_groupnorm_forward(x, g, g, 4, {})
    with pytest.raises(ValueError, match=r"G must be a positive divisor of C=6.*got 0"):
        spatial_groupnorm_forward(x, g, g, 0, {})
    with pytest.raises(ValueError, match=r"gamma must have shape \(1, 6, 1, 1\), got \(6,\)"):
        spatial_groupnorm_forward(x, np.ones(6), g, 2, {})
    with pytest.raises(ValueError, match=r"beta must have shape \(1, 6, 1, 1\)"):
        spatial_groupnorm_forward(x, g, np.ones((1, 3, 1, 1)), 2, {})
    with pytest.raises(ValueError, match=r"x must be 4-D"):
        spatial_groupnorm_forward(np.ones((6, 3, 3)), g, g, 2, {})


# ---------------------------------------------------------------------------------- properties


@st.composite
def conv_case(draw):
    N, C, F = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    H, W = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    pad, stride = draw(st.integers(0, 2)), draw(st.integers(1, 3))
    HH, WW = draw(st.integers(1, H + 2 * pad)), draw(st.integers(1, W + 2 * pad))
    seed = draw(st.integers(0, 2**32 - 1))
    return (N, C, H, W), (F, C, HH, WW), stride, pad, seed


@settings(max_examples=60, deadline=None)
@given(conv_case())
def test_conv_any_fitting_shape_matches_reference_and_adjoint(case):
    x_shape, w_shape, stride, pad, seed = case
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[0])
    out, cache = conv_forward_naive(x, w, b, {"stride": stride, "pad": pad})
    np.testing.assert_allclose(out, conv_reference(x, w, b, stride, pad), rtol=1e-10, atol=1e-12)
    dout = rng.standard_normal(out.shape)
    dx, dw, db = conv_backward_naive(dout, cache)
    # the convolution is bilinear in (x, w), so <out - b, dout> = <x, dx> = <w, dw> exactly
    inner = np.sum((out - b[None, :, None, None]) * dout)
    assert np.sum(x * dx) == pytest.approx(inner, rel=1e-9, abs=1e-9)
    assert np.sum(w * dw) == pytest.approx(inner, rel=1e-9, abs=1e-9)
    np.testing.assert_allclose(db, dout.sum(axis=(0, 2, 3)))


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 8),
    st.integers(1, 8),
    st.integers(1, 4),
    st.integers(1, 4),
    st.integers(1, 3),
    st.integers(0, 2**32 - 1),
)
def test_max_pool_any_fitting_shape_matches_reference(H, W, ph, pw, stride, seed):
    assume(ph <= H and pw <= W)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 2, H, W))
    pool_param = {"pool_height": ph, "pool_width": pw, "stride": stride}
    out, cache = max_pool_forward_naive(x, pool_param)
    expected, routes = pool_reference(x, ph, pw, stride)
    np.testing.assert_array_equal(out, expected)
    dout = rng.standard_normal(out.shape)
    dx = max_pool_backward_naive(dout, cache)
    np.testing.assert_allclose(dx, np.einsum("ncij,ncijhw->nchw", dout, routes), atol=1e-12)
