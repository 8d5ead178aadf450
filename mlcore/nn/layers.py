"""Layers as pairs of plain functions, following cs231n assignment 2.

Every layer is ``*_forward(...) -> (out, cache)`` and ``*_backward(dout, cache) -> grads``.
Inputs are validated at the top of each forward function (one ``ValueError`` naming the
offending parameter and shapes); the backward functions trust their cache. Outputs keep the
dtype of the inputs: float32 in gives float32 out.
"""

from __future__ import annotations

import numpy as np

from mlcore.nn.linalg import matmul

# --------------------------------------------------------------------------------------------
# validation helpers


def _check_ndim(fn: str, name: str, a: np.ndarray, ndim: int) -> None:
    if a.ndim != ndim:
        raise ValueError(f"{fn}: {name} must be {ndim}-D, got shape {a.shape}")


def _check_shape(fn: str, name: str, a: np.ndarray, shape: tuple) -> None:
    if np.shape(a) != tuple(shape):
        raise ValueError(f"{fn}: {name} must have shape {tuple(shape)}, got {np.shape(a)}")


def _int_param(fn: str, params: dict, key: str, minimum: int) -> int:
    if key not in params:
        raise ValueError(f"{fn}: missing parameter {key!r} in {params!r}")
    value = params[key]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{fn}: {key} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _mode(fn: str, params: dict) -> str:
    mode = params.get("mode")
    if mode not in ("train", "test"):
        raise ValueError(f"{fn}: mode must be 'train' or 'test', got {mode!r}")
    return mode


def _check_labels(fn: str, y, N: int, C: int) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (N,):
        raise ValueError(f"{fn}: y must have shape ({N},) to match x, got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.issubdtype(y.dtype, np.number) or np.any(y != np.round(y)):
            raise ValueError(f"{fn}: y must hold integer class labels, got dtype {y.dtype}")
        y = y.astype(np.intp)
    if N and (y.min() < 0 or y.max() >= C):
        raise ValueError(
            f"{fn}: y labels must be in [0, {C}) for x of shape ({N}, {C}), "
            f"got range [{y.min()}, {y.max()}]"
        )
    return y


def _window_slices(start: int, count: int, stride: int) -> slice:
    """Positions start, start + stride, ..., start + stride * (count - 1)."""
    return slice(start, start + stride * (count - 1) + 1, stride)


def _normalize_backward(dxhat, xhat, inv_std, axis):
    """Gradient through xhat = (x - mean(x)) * inv_std with the statistics taken over ``axis``.

    The compact form of the chain rule (see Ioffe & Szegedy 2015, simplified):
    dx = inv_std * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)).
    """
    mean_dxhat = dxhat.mean(axis=axis, keepdims=True)
    mean_dxhat_xhat = (dxhat * xhat).mean(axis=axis, keepdims=True)
    return inv_std * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat)


# --------------------------------------------------------------------------------------------
# affine, relu, dropout


def affine_forward(x, w, b):
    """Fully connected layer.

    x: (N, d_1, ..., d_k), flattened to (N, D) with D = d_1 * ... * d_k; w: (D, M); b: (M,).
    Returns out (N, M) and cache (x, w, b).
    """
    fn = "affine_forward"
    x, w, b = np.asarray(x), np.asarray(w), np.asarray(b)
    if x.ndim < 1:
        raise ValueError(f"{fn}: x must have a leading batch dimension, got shape {x.shape}")
    _check_ndim(fn, "w", w, 2)
    D = int(np.prod(x.shape[1:]))
    if w.shape[0] != D:
        raise ValueError(
            f"{fn}: w has {w.shape[0]} rows but x of shape {x.shape} flattens to {D} features"
        )
    _check_shape(fn, "b", b, (w.shape[1],))
    out = matmul(x.reshape(x.shape[0], D), w) + b
    return out, (x, w, b)


def affine_backward(dout, cache):
    """dout: (N, M). Returns dx (N, d_1, ..., d_k), dw (D, M), db (M,)."""
    x, w, b = cache
    dx = matmul(dout, w.T).reshape(x.shape)
    dw = matmul(x.reshape(x.shape[0], -1).T, dout)
    db = dout.sum(axis=0)
    return dx, dw, db


def relu_forward(x):
    """Rectified linear unit. x: any shape. Returns out (same shape) and cache x."""
    x = np.asarray(x)
    return np.maximum(x, 0), x


def relu_backward(dout, cache):
    """dout: same shape as x. Returns dx."""
    x = cache
    return dout * (x > 0)


def dropout_forward(x, dropout_param):
    """Inverted dropout. x: any shape.

    dropout_param: 'p' (keep probability, in (0, 1]), 'mode' ('train' or 'test'), optional
    'seed' (a fixed mask for gradient checks). In train mode each unit is kept with
    probability p and scaled by 1/p, so test mode is the identity.
    Returns out (same shape as x) and cache (dropout_param, mask).
    """
    fn = "dropout_forward"
    x = np.asarray(x)
    p = dropout_param.get("p")
    if p is None or not 0 < p <= 1:
        raise ValueError(f"{fn}: p (keep probability) must be in (0, 1], got {p!r}")
    mode = _mode(fn, dropout_param)
    mask = None
    if mode == "train":
        rng = np.random.default_rng(dropout_param.get("seed"))
        mask = ((rng.random(x.shape) < p) / p).astype(x.dtype, copy=False)
        out = x * mask
    else:
        out = x.copy()
    return out, (dropout_param, mask)


def dropout_backward(dout, cache):
    """dout: same shape as x. Returns dx."""
    dropout_param, mask = cache
    if dropout_param["mode"] == "train":
        return dout * mask
    return dout


# --------------------------------------------------------------------------------------------
# normalisation


def batchnorm_forward(x, gamma, beta, bn_param):
    """Batch normalisation over the batch axis.

    x: (N, D); gamma, beta: (D,). bn_param: 'mode' ('train' or 'test'), optional 'eps'
    (default 1e-5), 'momentum' (default 0.9), 'running_mean' and 'running_var' (D,), which
    train mode updates in bn_param as momentum * running + (1 - momentum) * batch statistic.
    Test mode normalises with the running statistics. Returns out (N, D) and cache.
    """
    fn = "batchnorm_forward"
    x = np.asarray(x)
    _check_ndim(fn, "x", x, 2)
    mode = _mode(fn, bn_param)
    D = x.shape[1]
    _check_shape(fn, "gamma", gamma, (D,))
    _check_shape(fn, "beta", beta, (D,))
    eps = bn_param.get("eps", 1e-5)
    momentum = bn_param.get("momentum", 0.9)
    running_mean = bn_param.get("running_mean", np.zeros(D, dtype=x.dtype))
    running_var = bn_param.get("running_var", np.zeros(D, dtype=x.dtype))
    _check_shape(fn, "running_mean", running_mean, (D,))
    _check_shape(fn, "running_var", running_var, (D,))

    if mode == "train":
        mu = x.mean(axis=0)
        var = x.var(axis=0)
        xmu = x - mu
        inv_std = 1 / np.sqrt(var + eps)
        running_mean = momentum * running_mean + (1 - momentum) * mu
        running_var = momentum * running_var + (1 - momentum) * var
    else:
        xmu = x - running_mean
        inv_std = 1 / np.sqrt(running_var + eps)
    xhat = xmu * inv_std
    out = gamma * xhat + beta

    bn_param["running_mean"] = running_mean
    bn_param["running_var"] = running_var
    cache = {"mode": mode, "xhat": xhat, "xmu": xmu, "inv_std": inv_std, "gamma": gamma}
    return out, cache


def batchnorm_backward(dout, cache):
    """Backward pass through the batch-norm computation graph, node by node.

    dout: (N, D). Returns dx (N, D), dgamma (D,), dbeta (D,).
    """
    xhat, xmu, inv_std, gamma = cache["xhat"], cache["xmu"], cache["inv_std"], cache["gamma"]
    dgamma = (dout * xhat).sum(axis=0)
    dbeta = dout.sum(axis=0)
    dxhat = dout * gamma
    if cache["mode"] == "test":  # running statistics are constants
        return dxhat * inv_std, dgamma, dbeta
    N = dout.shape[0]
    # xhat = xmu * inv_std, inv_std = (var + eps)^-1/2, var = mean(xmu^2), xmu = x - mean(x)
    dinv_std = (dxhat * xmu).sum(axis=0)
    dvar = dinv_std * -0.5 * inv_std**3
    dxmu = dxhat * inv_std + dvar * 2 * xmu / N
    dx = dxmu - dxmu.mean(axis=0)
    return dx, dgamma, dbeta


def batchnorm_backward_alt(dout, cache):
    """Batch-norm backward with the gradient simplified on paper into one expression.

    dout: (N, D). Returns dx (N, D), dgamma (D,), dbeta (D,).
    """
    xhat, inv_std, gamma = cache["xhat"], cache["inv_std"], cache["gamma"]
    dgamma = (dout * xhat).sum(axis=0)
    dbeta = dout.sum(axis=0)
    dxhat = dout * gamma
    if cache["mode"] == "test":
        return dxhat * inv_std, dgamma, dbeta
    return _normalize_backward(dxhat, xhat, inv_std, axis=0), dgamma, dbeta


def layernorm_forward(x, gamma, beta, ln_param):
    """Layer normalisation: each sample normalised over its features (same in train and test).

    x: (N, D); gamma, beta: (D,); ln_param: optional 'eps' (default 1e-5).
    Returns out (N, D) and cache.
    """
    fn = "layernorm_forward"
    x = np.asarray(x)
    _check_ndim(fn, "x", x, 2)
    _check_shape(fn, "gamma", gamma, (x.shape[1],))
    _check_shape(fn, "beta", beta, (x.shape[1],))
    eps = ln_param.get("eps", 1e-5)
    xmu = x - x.mean(axis=1, keepdims=True)
    inv_std = 1 / np.sqrt(x.var(axis=1, keepdims=True) + eps)
    xhat = xmu * inv_std
    out = gamma * xhat + beta
    return out, {"xhat": xhat, "inv_std": inv_std, "gamma": gamma}


def layernorm_backward(dout, cache):
    """dout: (N, D). Returns dx (N, D), dgamma (D,), dbeta (D,)."""
    xhat, inv_std, gamma = cache["xhat"], cache["inv_std"], cache["gamma"]
    dgamma = (dout * xhat).sum(axis=0)
    dbeta = dout.sum(axis=0)
    dx = _normalize_backward(dout * gamma, xhat, inv_std, axis=1)
    return dx, dgamma, dbeta


def spatial_batchnorm_forward(x, gamma, beta, bn_param):
    """Batch normalisation for conv activations: statistics per channel over N, H and W.

    x: (N, C, H, W); gamma, beta: (C,); bn_param as in batchnorm_forward.
    Returns out (N, C, H, W) and cache.
    """
    fn = "spatial_batchnorm_forward"
    x = np.asarray(x)
    _check_ndim(fn, "x", x, 4)
    N, C, H, W = x.shape
    _check_shape(fn, "gamma", gamma, (C,))
    _check_shape(fn, "beta", beta, (C,))
    flat = x.transpose(0, 2, 3, 1).reshape(-1, C)
    out, cache = batchnorm_forward(flat, gamma, beta, bn_param)
    return out.reshape(N, H, W, C).transpose(0, 3, 1, 2), cache


def spatial_batchnorm_backward(dout, cache):
    """dout: (N, C, H, W). Returns dx (N, C, H, W), dgamma (C,), dbeta (C,)."""
    N, C, H, W = dout.shape
    flat = dout.transpose(0, 2, 3, 1).reshape(-1, C)
    dx, dgamma, dbeta = batchnorm_backward_alt(flat, cache)
    return dx.reshape(N, H, W, C).transpose(0, 3, 1, 2), dgamma, dbeta


def spatial_groupnorm_forward(x, gamma, beta, G, gn_param):
    """Group normalisation: each sample's C channels split into G groups of C // G channels,
    each group normalised over its channels and H, W.

    x: (N, C, H, W); gamma, beta: (1, C, 1, 1); G divides C; gn_param: optional 'eps'
    (default 1e-5). Returns out (N, C, H, W) and cache.
    """
    fn = "spatial_groupnorm_forward"
    x = np.asarray(x)
    _check_ndim(fn, "x", x, 4)
    N, C, H, W = x.shape
    if isinstance(G, bool) or not isinstance(G, (int, np.integer)) or G < 1 or C % G:
        raise ValueError(
            f"{fn}: G must be a positive divisor of C={C} (x shape {x.shape}), got {G!r}"
        )
    _check_shape(fn, "gamma", gamma, (1, C, 1, 1))
    _check_shape(fn, "beta", beta, (1, C, 1, 1))
    eps = gn_param.get("eps", 1e-5)
    grouped = x.reshape(N, G, -1)
    xmu = grouped - grouped.mean(axis=2, keepdims=True)
    inv_std = 1 / np.sqrt(grouped.var(axis=2, keepdims=True) + eps)
    xhat = (xmu * inv_std).reshape(N, C, H, W)
    out = gamma * xhat + beta
    return out, {"G": G, "xhat": xhat, "inv_std": inv_std, "gamma": gamma}


def spatial_groupnorm_backward(dout, cache):
    """dout: (N, C, H, W). Returns dx (N, C, H, W), dgamma (1, C, 1, 1), dbeta (1, C, 1, 1)."""
    G, xhat, inv_std, gamma = cache["G"], cache["xhat"], cache["inv_std"], cache["gamma"]
    N = dout.shape[0]
    dgamma = (dout * xhat).sum(axis=(0, 2, 3), keepdims=True)
    dbeta = dout.sum(axis=(0, 2, 3), keepdims=True)
    dxhat = (dout * gamma).reshape(N, G, -1)
    dx = _normalize_backward(dxhat, xhat.reshape(N, G, -1), inv_std, axis=2)
    return dx.reshape(dout.shape), dgamma, dbeta


# --------------------------------------------------------------------------------------------
# convolution and pooling


def conv_geometry(fn: str, x, w, b, conv_param):
    """Validate a convolution's inputs for function ``fn`` and return
    ``(x, w, b, stride, pad, H', W')`` with x, w, b as arrays."""
    x, w, b = np.asarray(x), np.asarray(w), np.asarray(b)
    _check_ndim(fn, "x", x, 4)
    _check_ndim(fn, "w", w, 4)
    stride = _int_param(fn, conv_param, "stride", 1)
    pad = _int_param(fn, conv_param, "pad", 0)
    _, C, H, W = x.shape
    F, Cw, HH, WW = w.shape
    if Cw != C:
        raise ValueError(f"{fn}: w has {Cw} channels but x has {C} (x {x.shape}, w {w.shape})")
    _check_shape(fn, "b", b, (F,))
    if HH > H + 2 * pad or WW > W + 2 * pad:
        raise ValueError(
            f"{fn}: filter {HH}x{WW} does not fit input {H}x{W} with pad {pad} "
            f"(x {x.shape}, w {w.shape})"
        )
    return x, w, b, stride, pad, 1 + (H + 2 * pad - HH) // stride, 1 + (W + 2 * pad - WW) // stride


def conv_forward_naive(x, w, b, conv_param):
    """Convolution (cross-correlation, as in the course) of N inputs with F filters.

    x: (N, C, H, W); w: (F, C, HH, WW); b: (F,); conv_param: 'stride' (>= 1), 'pad' (>= 0,
    zeros on every side). Filters may be non-square and inputs rectangular; the output size is
    H' = 1 + (H + 2 * pad - HH) // stride, W' = 1 + (W + 2 * pad - WW) // stride (rows and
    columns a stride does not reach are ignored). Returns out (N, F, H', W') and cache
    (x, w, b, conv_param).
    """
    x, w, b, stride, pad, Ho, Wo = conv_geometry("conv_forward_naive", x, w, b, conv_param)
    N, C, H, W = x.shape
    F, _, HH, WW = w.shape

    # channels first, (C, N, H, W), so that every tap below is a plain (F, C) @ (C, ...) product
    xp = np.pad(x.transpose(1, 0, 2, 3), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    # Loop over the HH * WW filter taps rather than the H' * W' output positions (fewer
    # iterations); tap (i, j) multiplies w[:, :, i, j] with the strided view of the input it
    # touches at every output position.
    out = np.zeros((F, N * Ho * Wo), dtype=np.result_type(x, w, b))
    for i in range(HH):
        for j in range(WW):
            patch = xp[:, :, _window_slices(i, Ho, stride), _window_slices(j, Wo, stride)]
            out += w[:, :, i, j] @ patch.reshape(C, -1)
    out = out.reshape(F, N, Ho, Wo).transpose(1, 0, 2, 3) + b.reshape(1, F, 1, 1)
    return out, (x, w, b, conv_param)


def conv_backward_naive(dout, cache):
    """dout: (N, F, H', W'). Returns dx (N, C, H, W), dw (F, C, HH, WW), db (F,)."""
    x, w, b, conv_param = cache
    stride, pad = conv_param["stride"], conv_param["pad"]
    N, C, H, W = x.shape
    F, _, HH, WW = w.shape
    Ho, Wo = dout.shape[2], dout.shape[3]

    dtype = np.result_type(x, w, dout)
    # channels first, as in the forward pass
    xp = np.pad(x.transpose(1, 0, 2, 3), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    dout_f = dout.transpose(1, 0, 2, 3).reshape(F, -1)
    dxp = np.zeros(xp.shape, dtype=dtype)
    dw = np.zeros(w.shape, dtype=dtype)
    for i in range(HH):
        for j in range(WW):
            rows, cols = _window_slices(i, Ho, stride), _window_slices(j, Wo, stride)
            # with overlapping windows an input pixel is reached through several taps: the
            # contributions accumulate across iterations
            dxp[:, :, rows, cols] += (w[:, :, i, j].T @ dout_f).reshape(C, N, Ho, Wo)
            dw[:, :, i, j] = dout_f @ xp[:, :, rows, cols].reshape(C, -1).T
    dx = dxp[:, :, pad : pad + H, pad : pad + W].transpose(1, 0, 2, 3)
    db = dout.sum(axis=(0, 2, 3))
    return dx, dw, db


def _pool_windows(x, ph, pw, stride, Ho, Wo):
    """All ph * pw taps of every pooling window, stacked in row-major window order:
    (ph * pw, N, C, H', W')."""
    return np.stack(
        [
            x[:, :, _window_slices(i, Ho, stride), _window_slices(j, Wo, stride)]
            for i in range(ph)
            for j in range(pw)
        ]
    )


def pool_geometry(fn: str, x, pool_param):
    """Validate a max pool's input for function ``fn`` and return
    ``(x, pool_height, pool_width, stride, H', W')`` with x as an array."""
    x = np.asarray(x)
    _check_ndim(fn, "x", x, 4)
    ph = _int_param(fn, pool_param, "pool_height", 1)
    pw = _int_param(fn, pool_param, "pool_width", 1)
    stride = _int_param(fn, pool_param, "stride", 1)
    H, W = x.shape[2:]
    if ph > H or pw > W:
        raise ValueError(f"{fn}: pool window {ph}x{pw} does not fit input {H}x{W} (x {x.shape})")
    return x, ph, pw, stride, 1 + (H - ph) // stride, 1 + (W - pw) // stride


def max_pool_forward_naive(x, pool_param):
    """Max pooling.

    x: (N, C, H, W); pool_param: 'pool_height', 'pool_width', 'stride' (windows may overlap).
    Output size H' = 1 + (H - pool_height) // stride, W' = 1 + (W - pool_width) // stride.
    Returns out (N, C, H', W') and cache (x, pool_param).
    """
    x, ph, pw, stride, Ho, Wo = pool_geometry("max_pool_forward_naive", x, pool_param)
    out = _pool_windows(x, ph, pw, stride, Ho, Wo).max(axis=0)
    return out, (x, pool_param)


def max_pool_backward_naive(dout, cache):
    """dout: (N, C, H', W'). Returns dx (N, C, H, W).

    Each window's gradient goes to its first maximum (row-major order, as np.argmax); where
    windows overlap the contributions add up.
    """
    x, pool_param = cache
    ph, pw, stride = pool_param["pool_height"], pool_param["pool_width"], pool_param["stride"]
    Ho, Wo = dout.shape[2], dout.shape[3]
    argmax = _pool_windows(x, ph, pw, stride, Ho, Wo).argmax(axis=0)
    dx = np.zeros_like(x, dtype=np.result_type(x, dout))
    for i in range(ph):
        for j in range(pw):
            rows, cols = _window_slices(i, Ho, stride), _window_slices(j, Wo, stride)
            dx[:, :, rows, cols] += dout * (argmax == i * pw + j)
    return dx


# --------------------------------------------------------------------------------------------
# losses


def svm_loss(x, y):
    """Multiclass SVM (hinge) loss with margin 1, averaged over the batch.

    x: (N, C) scores; y: (N,) integer labels in [0, C). Returns (loss, dx (N, C)).
    """
    fn = "svm_loss"
    x = np.asarray(x)
    _check_ndim(fn, "x", x, 2)
    N = x.shape[0]
    y = _check_labels(fn, y, N, x.shape[1])
    rows = np.arange(N)
    margins = np.maximum(0, x - x[rows, y][:, None] + 1)
    margins[rows, y] = 0
    loss = margins.sum() / N
    dx = (margins > 0).astype(x.dtype)
    dx[rows, y] -= dx.sum(axis=1)
    dx /= N
    return float(loss), dx


def softmax_loss(x, y):
    """Softmax cross-entropy loss, averaged over the batch.

    x: (N, C) scores; y: (N,) integer labels in [0, C). Returns (loss, dx (N, C)).
    """
    fn = "softmax_loss"
    x = np.asarray(x)
    _check_ndim(fn, "x", x, 2)
    N = x.shape[0]
    y = _check_labels(fn, y, N, x.shape[1])
    rows = np.arange(N)
    # subtracting the row maximum leaves the softmax unchanged and keeps exp() from overflowing
    shifted = x - x.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -log_probs[rows, y].sum() / N
    dx = np.exp(log_probs)
    dx[rows, y] -= 1
    dx /= N
    return float(loss), dx
