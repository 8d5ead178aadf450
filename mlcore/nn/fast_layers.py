"""Fast convolution and max-pooling layers (same contract as the naive layers in
:mod:`mlcore.nn.layers`).

* ``conv_forward_fast(x, w, b, conv_param) -> (out, cache)`` and
  ``conv_backward_fast(dout, cache) -> (dx, dw, db)``: convolution as an implicit GEMM in
  the Cython extension :mod:`mlcore.nn._fast`: mlcore's own matrix-product kernel packs its
  blocks of the column matrix straight from the image (zero padding included, a row of ones
  carrying the bias), so the column matrix is never built and the working set stays in the
  caches. Image by image: the forward writes NCHW directly; the backward's [dw | db] sums the
  images in fixed groups, then the groups in order; dx runs the column gradient of one image
  at a time through ``col2im``. The cache holds the input.
* ``max_pool_forward_fast(x, pool_param) -> (out, cache)`` and
  ``max_pool_backward_fast(dout, cache) -> dx``: one pass over the input recording the
  (int32) position of each window's first maximum, and a scatter-add back through it. Any
  window and stride work (tiling, overlapping, and windows that do not tile the input).

The cache is opaque: pass to the backward function exactly what the forward returned.
Outputs keep the input dtype (float32 in, float32 out; everything else is computed in
float64). The kernels release the GIL and run on mlcore's own thread pool (``OMP_NUM_THREADS``
threads when set, else the usable CPUs; its workers sleep when idle); every
sum runs in an order fixed by the shapes, so the results are the same bits on any number of
threads (see :mod:`mlcore.nn.linalg`).

Without the compiled extension (a source checkout never built), or with the environment
variable ``MLCORE_NO_EXTENSION=1`` set at import, or after ``use_extension(False)``, the same
functions run a vectorised numpy implementation and warn once per process.
``HAVE_EXTENSION`` says whether the extension could be imported.

Importing this module changes no process-wide state, and the layers need no setting: no
numpy BLAS call runs between the kernels' parallel loops (see docs/fast-layers.md).
"""

from __future__ import annotations

import os
import warnings
from typing import NamedTuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

# Importing this module changes nothing in the process (no environment variable, thread pool
# or warning filter).
try:  # the compiled kernels
    from mlcore.nn import _fast
except ImportError:  # pragma: no cover - depends on the build
    _fast = None

HAVE_EXTENSION: bool = bool(_fast is not None and getattr(_fast, "KERNELS_AVAILABLE", False))
_use_ext: bool = HAVE_EXTENSION and os.environ.get("MLCORE_NO_EXTENSION", "") in ("", "0")
_warned: bool = False

__all__ = [
    "HAVE_EXTENSION",
    "conv_backward_fast",
    "conv_forward_fast",
    "extension_active",
    "max_pool_backward_fast",
    "max_pool_forward_fast",
    "use_extension",
]


def use_extension(flag: bool = True) -> bool:
    """Route the fast layers through the Cython kernels (``True``) or the numpy fallback
    (``False``). Returns the previous setting. Asking for the extension when it is not built
    raises RuntimeError."""
    global _use_ext
    if flag and not HAVE_EXTENSION:
        raise RuntimeError("mlcore.nn._fast is not built: run `pip install -e .`")
    previous, _use_ext = _use_ext, bool(flag)
    return previous


def extension_active() -> bool:
    """True when the fast layers currently run through the Cython kernels."""
    return _use_ext


def _ext(stacklevel: int = 3):
    """The extension module when it is in use; else None, warning once per process (the
    warning points at the caller of the public function: ``stacklevel`` counts from here)."""
    global _warned
    if _use_ext:
        return _fast
    if not _warned:
        _warned = True
        why = "is not built" if not HAVE_EXTENSION else "is switched off"
        warnings.warn(
            f"mlcore.nn._fast {why}; the fast layers use a slower numpy fallback "
            "(build it with `pip install -e .`)",
            RuntimeWarning,
            stacklevel=stacklevel,
        )
    return None


# validation: the naive layers' helpers, so the messages match
from mlcore.nn.layers import conv_geometry, pool_geometry  # noqa: E402


def _float_dtype(*dtypes) -> np.dtype:
    """float32 if everything is float32 (or narrower), else float64."""
    dt = np.result_type(*dtypes)
    return np.dtype(np.float32) if dt in (np.float32, np.float16) else np.dtype(np.float64)


# --------------------------------------------------------------------------------------------
# convolution


class _ConvCache(NamedTuple):
    x_shape: tuple
    w: np.ndarray  # (F, C, HH, WW) in the compute dtype, C-contiguous
    stride: int
    pad: int
    x: np.ndarray  # the input in the compute dtype, C-contiguous
    need_dx: bool = True

    def without_dx(self) -> _ConvCache:
        """The same cache, but its backward skips the input gradient and returns dx = None
        (for a first layer, whose input, the data, needs no gradient)."""
        return self._replace(need_dx=False)


def _im2col(x, HH, WW, stride, pad, Ho, Wo):
    """numpy fallback: columns (C*HH*WW + 1, N, Ho*Wo): row (c, kh, kw) holds, image by
    image, the input values that filter tap meets at every output position; the last row is
    ones (the bias)."""
    N, C, H, W = x.shape
    K = C * HH * WW
    cols = np.empty((K + 1, N, Ho * Wo), dtype=x.dtype)
    cols[K] = 1
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))) if pad else x
    win = sliding_window_view(xp, (HH, WW), axis=(2, 3))
    win = win[:, :, : (Ho - 1) * stride + 1 : stride, : (Wo - 1) * stride + 1 : stride]
    # (N, C, Ho, Wo, HH, WW) -> (C, HH, WW, N, Ho, Wo)
    cols[:K].reshape(C, HH, WW, N, Ho, Wo)[...] = win.transpose(1, 4, 5, 0, 2, 3)
    return cols


def _col2im(dcols, x_shape, HH, WW, stride, pad, Ho, Wo, dtype):
    """numpy fallback: dx (N, C, H, W) from the column gradient dcols (C*HH*WW, N*Ho*Wo)."""
    N, C, H, W = x_shape
    d6 = dcols.reshape(C, HH, WW, N, Ho, Wo)
    dxp = np.zeros((N, C, H + 2 * pad, W + 2 * pad), dtype=dtype)
    for kh in range(HH):
        for kw in range(WW):
            rows = slice(kh, kh + stride * (Ho - 1) + 1, stride)
            cols = slice(kw, kw + stride * (Wo - 1) + 1, stride)
            dxp[:, :, rows, cols] += d6[:, kh, kw].transpose(1, 0, 2, 3)
    return np.ascontiguousarray(dxp[:, :, pad : pad + H, pad : pad + W])


def conv_forward_fast(x, w, b, conv_param):
    """Convolution (cross-correlation) of x (N, C, H, W) with w (F, C, HH, WW) plus b (F,).

    conv_param: 'stride' (>= 1), 'pad' (>= 0). Output (N, F, H', W') with
    H' = 1 + (H + 2 * pad - HH) // stride and W' likewise. Returns (out, cache).
    """
    x, w, b, stride, pad, Ho, Wo = conv_geometry("conv_forward_fast", x, w, b, conv_param)
    N, C, H, W = x.shape
    F, _, HH, WW = w.shape
    dt = _float_dtype(x.dtype, w.dtype, b.dtype)
    xc = np.ascontiguousarray(x, dtype=dt)
    wc = np.ascontiguousarray(w, dtype=dt)
    K, P = C * HH * WW, Ho * Wo
    wb = np.empty((F, K + 1), dtype=dt)  # [w | b]: the bias rides on a row of ones
    wb[:, :K] = wc.reshape(F, K)
    wb[:, K] = b
    out = np.empty((N, F, Ho, Wo), dtype=dt)
    ext = _ext()
    if ext is not None:
        # image by image, the product packs its blocks straight from the image (no column
        # matrix), in a fixed order of sums: the same bits on any thread count
        ext.conv_forward(xc, wb, out, HH, WW, stride, pad)
    else:
        cols = _im2col(xc, HH, WW, stride, pad, Ho, Wo)  # (K + 1, N, P)
        res = np.matmul(wb, cols.reshape(K + 1, N * P))
        np.copyto(out.reshape(N, F, P), res.reshape(F, N, P).transpose(1, 0, 2))
    return out, _ConvCache(x.shape, wc, stride, pad, xc)


def conv_backward_fast(dout, cache):
    """dout (N, F, H', W') -> dx (N, C, H, W), dw (F, C, HH, WW), db (F,). dx is None
    when the cache came through ``cache.without_dx()``."""
    if not isinstance(cache, _ConvCache):
        raise ValueError("conv_backward_fast: cache must be what conv_forward_fast returned")
    x_shape, wc, stride, pad, xc, need_dx = cache
    N, C, H, W = x_shape
    F, _, HH, WW = wc.shape
    Ho = 1 + (H + 2 * pad - HH) // stride
    Wo = 1 + (W + 2 * pad - WW) // stride
    K, P = C * HH * WW, Ho * Wo
    dout = np.asarray(dout)
    if dout.shape != (N, F, Ho, Wo):
        raise ValueError(
            f"conv_backward_fast: dout has shape {dout.shape}, the forward output was "
            f"{(N, F, Ho, Wo)}"
        )
    gdt = _float_dtype(xc.dtype, dout.dtype)
    if gdt != xc.dtype:  # float32 forward, float64 gradient: promote like the naive layers
        wc, xc = wc.astype(gdt), xc.astype(gdt)
    dc = np.ascontiguousarray(dout, dtype=gdt)
    ext = _ext()
    if ext is not None:
        dwbT = np.empty((K + 1, F), dtype=gdt)  # [dw | db] transposed (the ones row: db)
        ext.conv_backward_w(xc, dc, dwbT, HH, WW, stride, pad)
        dw = np.ascontiguousarray(dwbT[:K].T).reshape(wc.shape)
        db = dwbT[K].copy()
        if not need_dx:
            return None, dw, db
        dx = np.empty(x_shape, dtype=gdt)
        ext.conv_backward_x(wc.reshape(F, K), dc, dx, HH, WW, stride, pad)
        return dx, dw, db
    cols = _im2col(xc, HH, WW, stride, pad, Ho, Wo)  # (K + 1, N, P)
    dflat = np.ascontiguousarray(dc.reshape(N, F, P).transpose(1, 0, 2)).reshape(F, N * P)
    dwb = dflat @ cols.reshape(K + 1, N * P).T  # [dw | db] = dout @ cols^T
    dw = dwb[:, :K].reshape(wc.shape)
    db = dwb[:, K].copy()
    if not need_dx:
        return None, dw, db
    dcols = wc.reshape(F, K).T @ dflat
    dx = _col2im(dcols, x_shape, HH, WW, stride, pad, Ho, Wo, gdt)
    return dx, dw, db


# --------------------------------------------------------------------------------------------
# max pooling


class _PoolCache(NamedTuple):
    x_shape: tuple
    idx: np.ndarray  # (N, C, H', W') int32: flat h * W + w of each window's first maximum
    dtype: np.dtype


def max_pool_forward_fast(x, pool_param):
    """Max pooling of x (N, C, H, W) with windows pool_height x pool_width every stride
    (windows may overlap and need not tile the input). Returns (out, cache) with out of shape
    (N, C, 1 + (H - pool_height) // stride, 1 + (W - pool_width) // stride)."""
    x, ph, pw, stride, Ho, Wo = pool_geometry("max_pool_forward_fast", x, pool_param)
    N, C, H, W = x.shape
    dt = _float_dtype(x.dtype)
    ext = _ext()
    if ext is not None:
        xc = np.ascontiguousarray(x, dtype=dt)
        out = np.empty((N, C, Ho, Wo), dtype=dt)
        idx = np.empty((N, C, Ho, Wo), dtype=np.int32)
        ext.maxpool_forward(xc, out, idx, ph, pw, stride)
        return out, _PoolCache(x.shape, idx, dt)
    xc = np.asarray(x, dtype=dt)
    win = sliding_window_view(xc, (ph, pw), axis=(2, 3))
    win = win[:, :, : (Ho - 1) * stride + 1 : stride, : (Wo - 1) * stride + 1 : stride]
    win = win.reshape(N, C, Ho, Wo, ph * pw)
    k = win.argmax(axis=-1)
    out = np.take_along_axis(win, k[..., None], axis=-1)[..., 0]
    rows = np.arange(Ho)[:, None] * stride + k // pw
    cols = np.arange(Wo)[None, :] * stride + k % pw
    idx = (rows * W + cols).astype(np.int32)
    return np.ascontiguousarray(out), _PoolCache(x.shape, idx, dt)


def max_pool_backward_fast(dout, cache):
    """dout (N, C, H', W') -> dx (N, C, H, W): each window's gradient goes to its first
    maximum; where windows overlap the contributions add up."""
    if not isinstance(cache, _PoolCache):
        raise ValueError(
            "max_pool_backward_fast: cache must be what max_pool_forward_fast returned"
        )
    x_shape, idx, dt = cache
    N, C, H, W = x_shape
    dout = np.asarray(dout)
    if dout.shape != idx.shape:
        raise ValueError(
            f"max_pool_backward_fast: dout has shape {dout.shape}, expected {idx.shape}"
        )
    gdt = _float_dtype(dt, dout.dtype)
    ext = _ext()
    if ext is not None:
        dx = np.empty((N, C, H * W), dtype=gdt)
        ext.maxpool_backward(np.ascontiguousarray(dout, dtype=gdt), idx, dx)
        return dx.reshape(x_shape)
    flat = idx.reshape(N * C, idx.shape[2] * idx.shape[3])
    flat = flat + (np.arange(N * C, dtype=np.intp) * (H * W))[:, None]
    dx = np.bincount(flat.ravel(), weights=dout.reshape(-1), minlength=N * C * H * W)
    return dx.astype(gdt, copy=False).reshape(x_shape)
