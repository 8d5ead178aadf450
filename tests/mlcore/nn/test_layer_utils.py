"""Sandwich layers: numeric gradient checks (course configurations) and the swappable
conv / pool names."""

import numpy as np
import pytest

from mlcore.nn import layer_utils
from mlcore.nn.gradient_check import eval_numerical_gradient_array
from mlcore.nn.gradient_check import rel_error as rel
from mlcore.nn.layer_utils import (
    affine_bn_relu_backward,
    affine_bn_relu_forward,
    affine_relu_backward,
    affine_relu_forward,
    conv_bn_relu_backward,
    conv_bn_relu_forward,
    conv_relu_backward,
    conv_relu_forward,
    conv_relu_pool_backward,
    conv_relu_pool_forward,
)

# The course: errors "around 1e-8 or less" for the conv sandwiches. On the course's own inputs
# (np.random.seed(231) as in the notebook) conv_relu gives 1.5e-9 and conv_relu_pool 1.04e-8
# for dx: the bound is that "around 1e-8".
CONV_TOL = 2e-8


def course_inputs(*shapes):
    """The notebook's inputs exactly: np.random.seed(231), then randn per shape in order."""
    rs = np.random.RandomState(231)
    return [rs.randn(*shape) for shape in shapes]


@pytest.fixture
def rng():
    return np.random.default_rng(231)


def check_sandwich(forward, backward, inputs, dout, tol, extra=(), zero=()):
    """Compare every gradient of backward with centred differences of forward. Gradients in
    ``zero`` are identically zero (a bias followed by batch norm), where a relative error is
    meaningless: both must be zero up to rounding instead."""
    _, cache = forward(*inputs, *extra)
    grads = backward(dout, cache)
    assert len(grads) == len(inputs)
    for i, (arr, grad) in enumerate(zip(inputs, grads, strict=True)):
        assert grad.shape == arr.shape

        def f(_):
            return forward(*inputs, *extra)[0]

        num = eval_numerical_gradient_array(f, arr, dout)
        if i in zero:
            assert np.abs(grad).max() < 1e-12 and np.abs(num).max() < 1e-9, f"gradient {i}"
        else:
            assert rel(grad, num) < tol, f"gradient {i}"


def test_affine_relu(rng):
    x = rng.standard_normal((2, 3, 4))
    w = rng.standard_normal((12, 10))
    b = rng.standard_normal(10)
    dout = rng.standard_normal((2, 10))
    check_sandwich(affine_relu_forward, affine_relu_backward, (x, w, b), dout, 1e-8)


def test_affine_bn_relu(rng):
    x = rng.standard_normal((6, 5)) * 3 + 1
    w = rng.standard_normal((5, 4))
    b = rng.standard_normal(4)
    gamma, beta = rng.standard_normal(4), rng.standard_normal(4)
    dout = rng.standard_normal((6, 4))
    check_sandwich(
        affine_bn_relu_forward,
        affine_bn_relu_backward,
        (x, w, b, gamma, beta),
        dout,
        1e-6,
        extra=({"mode": "train"},),
        zero=(2,),
    )


def test_conv_relu_course_config():
    x, w, b, dout = course_inputs((2, 3, 8, 8), (3, 3, 3, 3), (3,), (2, 3, 8, 8))
    conv_param = {"stride": 1, "pad": 1}
    check_sandwich(conv_relu_forward, conv_relu_backward, (x, w, b), dout, CONV_TOL, (conv_param,))


def test_conv_relu_pool_course_config():
    x, w, b, dout = course_inputs((2, 3, 16, 16), (3, 3, 3, 3), (3,), (2, 3, 8, 8))
    conv_param = {"stride": 1, "pad": 1}
    pool_param = {"pool_height": 2, "pool_width": 2, "stride": 2}
    check_sandwich(
        conv_relu_pool_forward,
        conv_relu_pool_backward,
        (x, w, b),
        dout,
        CONV_TOL,
        (conv_param, pool_param),
    )


def test_conv_bn_relu(rng):
    x = rng.standard_normal((2, 3, 5, 5))
    w = rng.standard_normal((4, 3, 3, 3))
    b = rng.standard_normal(4)
    gamma, beta = rng.standard_normal(4), rng.standard_normal(4)
    dout = rng.standard_normal((2, 4, 5, 5))
    check_sandwich(
        conv_bn_relu_forward,
        conv_bn_relu_backward,
        (x, w, b, gamma, beta),
        dout,
        1e-6,
        extra=({"stride": 1, "pad": 1}, {"mode": "train"}),
        zero=(2,),
    )


def test_conv_and_pool_go_through_module_level_names(monkeypatch, rng):
    from mlcore.nn import fast_layers

    # the fast layers are the default engine of the sandwiches and the ConvNet
    assert layer_utils.conv_forward is fast_layers.conv_forward_fast
    assert layer_utils.conv_backward is fast_layers.conv_backward_fast
    assert layer_utils.max_pool_forward is fast_layers.max_pool_forward_fast
    assert layer_utils.max_pool_backward is fast_layers.max_pool_backward_fast
    calls = []

    def spy(name, fn):
        def wrapped(*args):
            calls.append(name)
            return fn(*args)

        return wrapped

    for name in ("conv_forward", "conv_backward", "max_pool_forward", "max_pool_backward"):
        monkeypatch.setattr(layer_utils, name, spy(name, getattr(layer_utils, name)))
    x = rng.standard_normal((1, 1, 4, 4))
    w, b = rng.standard_normal((1, 1, 3, 3)), np.zeros(1)
    out, cache = conv_relu_pool_forward(
        x, w, b, {"stride": 1, "pad": 1}, {"pool_height": 2, "pool_width": 2, "stride": 2}
    )
    conv_relu_pool_backward(np.ones_like(out), cache)
    assert calls == ["conv_forward", "max_pool_forward", "max_pool_backward", "conv_backward"]


def test_conv_relu_pool_equals_relu_then_pool(rng):
    """The sandwich pools before its relu (a quarter of the relu work): the values and every
    gradient equal those of conv -> relu -> pool, bit for bit, overlapping windows and
    all-negative windows included."""
    from mlcore.nn.layers import relu_backward
    from mlcore.nn.layers import relu_forward as relu_f

    x = rng.standard_normal((3, 2, 9, 9))
    w, b = rng.standard_normal((4, 2, 3, 3)), rng.standard_normal(4) - 1.0
    cp = {"stride": 1, "pad": 1}
    for pp in (
        {"pool_height": 2, "pool_width": 2, "stride": 2},
        {"pool_height": 3, "pool_width": 3, "stride": 2},
    ):
        out, cache = conv_relu_pool_forward(x, w, b, cp, pp)
        a, conv_cache = layer_utils.conv_forward(x, w, b, cp)
        s, _ = relu_f(a)
        ref, pcache = layer_utils.max_pool_forward(s, pp)  # the same pooling, after the relu
        assert (ref == 0).any() and (ref > 0).any()
        np.testing.assert_array_equal(out, ref)
        dout = rng.standard_normal(out.shape)
        got = conv_relu_pool_backward(dout, cache)
        da = relu_backward(layer_utils.max_pool_backward(dout, pcache), a)
        expect = layer_utils.conv_backward(da, conv_cache)
        for g, e in zip(got, expect, strict=True):
            np.testing.assert_array_equal(g, e)
