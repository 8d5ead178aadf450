"""Sandwich layers: common chains of layers as one forward/backward pair.

The conv and pool implementations used here (and by mlcore.nn.cnn) are the four module-level
names below, looked up at call time: the Cython fast layers by default (they fall back to a
vectorised numpy path, with a warning, where the extension was never built). Point them at
the naive layers, which have the same signatures and cache contract, to compare.
"""

from __future__ import annotations

from mlcore.nn.fast_layers import (
    conv_backward_fast,
    conv_forward_fast,
    max_pool_backward_fast,
    max_pool_forward_fast,
)
from mlcore.nn.layers import (
    affine_backward,
    affine_forward,
    batchnorm_backward_alt,
    batchnorm_forward,
    relu_backward,
    relu_forward,
    spatial_batchnorm_backward,
    spatial_batchnorm_forward,
)

conv_forward = conv_forward_fast
conv_backward = conv_backward_fast
max_pool_forward = max_pool_forward_fast
max_pool_backward = max_pool_backward_fast


def affine_relu_forward(x, w, b):
    """affine -> relu. x: (N, d_1, ..., d_k); w: (D, M); b: (M,). Returns out (N, M), cache."""
    a, fc_cache = affine_forward(x, w, b)
    out, relu_cache = relu_forward(a)
    return out, (fc_cache, relu_cache)


def affine_relu_backward(dout, cache):
    """dout: (N, M). Returns dx, dw, db."""
    fc_cache, relu_cache = cache
    return affine_backward(relu_backward(dout, relu_cache), fc_cache)


def affine_bn_relu_forward(x, w, b, gamma, beta, bn_param):
    """affine -> batchnorm -> relu. gamma, beta: (M,). Returns out (N, M), cache."""
    a, fc_cache = affine_forward(x, w, b)
    an, bn_cache = batchnorm_forward(a, gamma, beta, bn_param)
    out, relu_cache = relu_forward(an)
    return out, (fc_cache, bn_cache, relu_cache)


def affine_bn_relu_backward(dout, cache):
    """dout: (N, M). Returns dx, dw, db, dgamma, dbeta."""
    fc_cache, bn_cache, relu_cache = cache
    dan = relu_backward(dout, relu_cache)
    da, dgamma, dbeta = batchnorm_backward_alt(dan, bn_cache)
    dx, dw, db = affine_backward(da, fc_cache)
    return dx, dw, db, dgamma, dbeta


def conv_relu_forward(x, w, b, conv_param):
    """conv -> relu. x: (N, C, H, W); w: (F, C, HH, WW); b: (F,). Returns out, cache."""
    a, conv_cache = conv_forward(x, w, b, conv_param)
    out, relu_cache = relu_forward(a)
    return out, (conv_cache, relu_cache)


def conv_relu_backward(dout, cache):
    """dout: (N, F, H', W'). Returns dx, dw, db."""
    conv_cache, relu_cache = cache
    return conv_backward(relu_backward(dout, relu_cache), conv_cache)


def conv_bn_relu_forward(x, w, b, gamma, beta, conv_param, bn_param):
    """conv -> spatial batchnorm -> relu. gamma, beta: (F,). Returns out, cache."""
    a, conv_cache = conv_forward(x, w, b, conv_param)
    an, bn_cache = spatial_batchnorm_forward(a, gamma, beta, bn_param)
    out, relu_cache = relu_forward(an)
    return out, (conv_cache, bn_cache, relu_cache)


def conv_bn_relu_backward(dout, cache):
    """dout: (N, F, H', W'). Returns dx, dw, db, dgamma, dbeta."""
    conv_cache, bn_cache, relu_cache = cache
    dan = relu_backward(dout, relu_cache)
    da, dgamma, dbeta = spatial_batchnorm_backward(dan, bn_cache)
    dx, dw, db = conv_backward(da, conv_cache)
    return dx, dw, db, dgamma, dbeta


def conv_relu_pool_forward(x, w, b, conv_param, pool_param):
    """conv -> relu -> max pool. Returns out (N, F, H'', W''), cache.

    Computed as conv -> max pool -> relu, the same values and gradients (relu is monotone:
    max(relu(a)) = relu(max(a)); where a window's maximum is not positive both orders pass it
    no gradient), with the relu on the pooled array, a quarter of the size for 2x2 pooling."""
    a, conv_cache = conv_forward(x, w, b, conv_param)
    p, pool_cache = max_pool_forward(a, pool_param)
    out, relu_cache = relu_forward(p)
    return out, (conv_cache, relu_cache, pool_cache)


def conv_relu_pool_backward(dout, cache, need_dx=True):
    """dout: (N, F, H'', W''). Returns dx, dw, db. With need_dx=False (the input is data that
    needs no gradient) the fast conv skips the input gradient and dx is None; a conv cache
    without ``without_dx`` (the naive layers') computes it anyway."""
    conv_cache, relu_cache, pool_cache = cache
    dp = relu_backward(dout, relu_cache)
    da = max_pool_backward(dp, pool_cache)
    if not need_dx and hasattr(conv_cache, "without_dx"):
        conv_cache = conv_cache.without_dx()
    return conv_backward(da, conv_cache)
