"""Fast convolution and max-pooling layers (same contract as the naive layers in
:mod:`mlcore.nn.layers`).

* ``conv_forward_fast(x, w, b, conv_param) -> (out, cache)`` and
  ``conv_backward_fast(dout, cache) -> (dx, dw, db)``: im2col + GEMM through numpy's BLAS.
  The Cython extension :mod:`mlcore.nn._fast` builds the column matrix directly in the
  layout the GEMMs want, (C*HH*WW + 1, N, H'*W'), with the zero padding handled inside the
  kernel (no padded copy of the input) and a last row of ones that carries the bias. The
  forward is one GEMM over all images (no separate bias pass) and one copy into NCHW. The
  columns stay in the cache; the backward copies dout to (F, N*H'*W') once and runs two
  single large GEMMs, [dw | db] = dout @ cols^T (the ones row gives db) and the column
  gradient w^T @ dout (into a reused per-thread scratch buffer), which ``col2im`` sums
  into dx.
* ``max_pool_forward_fast(x, pool_param) -> (out, cache)`` and
  ``max_pool_backward_fast(dout, cache) -> dx``: one pass over the input recording the
  (int32) position of each window's first maximum, and a scatter-add back through it. Any
  window and stride work (tiling, overlapping, and windows that do not tile the input).

The cache is opaque: pass to the backward function exactly what the forward returned.
Outputs keep the input dtype (float32 in, float32 out; everything else is computed in
float64). The kernels release the GIL and use OpenMP threads (``OMP_NUM_THREADS``).

Without the compiled extension (a source checkout never built), or with the environment
variable ``MLCORE_NO_EXTENSION=1`` set at import, or after ``use_extension(False)``, the same
functions run a vectorised numpy implementation and warn once per process.
``HAVE_EXTENSION`` says whether the extension could be imported.

Importing this module changes no process-wide state: the entry points set
``OMP_WAIT_POLICY=passive`` (see the comment at the import).
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from typing import NamedTuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

# Importing this module changes nothing in the process (no environment variable, thread pool
# or warning filter). The kernels' OpenMP threads alternate with numpy's OpenBLAS threads, and
# OpenMP threads that spin after a parallel region take the cores the next GEMM needs: the
# entry points (the CLI, bench.layers' mlcore worker) set OMP_WAIT_POLICY=passive before
# anything loads libgomp; see docs/fast-layers.md.
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


def _ext(stacklevel: int = 4):
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
    cols: np.ndarray  # (C*HH*WW + 1, N, Ho*Wo): receptive fields, then a row of ones
    need_dx: bool = True

    def without_dx(self) -> _ConvCache:
        """The same cache, but its backward skips the input gradient and returns dx = None
        (for a first layer, whose input, the data, needs no gradient)."""
        return self._replace(need_dx=False)


_scratch = threading.local()


def _scratch_array(name, shape, dtype) -> np.ndarray:
    """A per-thread reusable buffer for temporaries of the backward pass: reusing it saves
    the page faults (and kernel zeroing) of a fresh multi-megabyte allocation per call."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape))
    key = f"{name}_{dtype.char}"
    buf = getattr(_scratch, key, None)
    if buf is None or buf.size < n or buf.size > 4 * max(n, 1 << 16):
        buf = np.empty(max(n, 1), dtype=dtype)
        setattr(_scratch, key, buf)
    return buf[:n].reshape(shape)


_POOL_SIZE = 4  # column buffers kept per thread for reuse


def _refs_of_a_free_buffer() -> int:
    """What ``sys.getrefcount`` says of a pooled buffer nothing else refers to, measured the
    way `_column_buffer` looks (the interpreter may borrow references: Python 3.14 counts
    fewer than 3.11, so the threshold is calibrated, not hard-coded)."""
    pool = [np.empty(1)]
    for i in range(len(pool)):
        buf = pool[i]
        return sys.getrefcount(buf)
    raise AssertionError("unreachable")


_FREE_REFS = _refs_of_a_free_buffer()


def _column_buffer(shape, dtype) -> np.ndarray:
    """A C-contiguous array for the columns, reusing (per thread) the memory of a column
    matrix whose cache is gone. A fresh multi-megabyte array costs page faults plus the
    kernel zeroing every page, as much as the im2col itself. A pooled buffer is free again
    when nothing but the pool refers to it: every view of it (the cache's cols and its
    reshapes) holds a reference to it, so a live cache always keeps its buffer."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape))
    pool = getattr(_scratch, "cols_pool", None)
    if pool is None:
        pool = _scratch.cols_pool = []
    for i in range(len(pool)):
        buf = pool[i]
        # free: referenced only by the pool, `buf` and getrefcount's argument (no view alive)
        if buf.dtype == dtype and buf.size == n and sys.getrefcount(buf) <= _FREE_REFS:
            pool.append(pool.pop(i))  # most recently used last
            return buf.reshape(shape)
    buf = np.empty(n, dtype=dtype)
    pool.append(buf)
    if len(pool) > _POOL_SIZE:  # forget the least recently used buffer that is free
        for i in range(len(pool) - 1):
            old = pool[i]
            if sys.getrefcount(old) <= _FREE_REFS:
                del pool[i]
                break
            del old
    return buf.reshape(shape)


def _im2col(x, HH, WW, stride, pad, Ho, Wo):
    """Columns (C*HH*WW + 1, N, Ho*Wo): row (c, kh, kw) holds, image by image, the input
    values that filter tap meets at every output position; the last row is ones (the bias)."""
    N, C, H, W = x.shape
    K, P = C * HH * WW, Ho * Wo
    ext = _ext()
    cols = _column_buffer((K + 1, N, P), x.dtype)
    cols[K] = 1
    if ext is not None:
        ext.im2col(x, cols.reshape(-1), HH, WW, stride, pad, Ho, Wo, N * P, P)
        return cols
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))) if pad else x
    win = sliding_window_view(xp, (HH, WW), axis=(2, 3))
    win = win[:, :, : (Ho - 1) * stride + 1 : stride, : (Wo - 1) * stride + 1 : stride]
    # (N, C, Ho, Wo, HH, WW) -> (C, HH, WW, N, Ho, Wo)
    cols[:K].reshape(C, HH, WW, N, Ho, Wo)[...] = win.transpose(1, 4, 5, 0, 2, 3)
    return cols


def _col2im(dcols, x_shape, HH, WW, stride, pad, Ho, Wo, dtype):
    """dx (N, C, H, W) from the column gradient dcols (C*HH*WW, N*Ho*Wo)."""
    N, C, H, W = x_shape
    ext = _ext()
    if ext is not None:
        dx = np.empty(x_shape, dtype=dtype)
        P = Ho * Wo
        ext.col2im(dcols.reshape(-1), dx, HH, WW, stride, pad, Ho, Wo, N * P, P)
        return dx
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

    cols = _im2col(xc, HH, WW, stride, pad, Ho, Wo)  # (K + 1, N, P)
    wb = np.empty((F, K + 1), dtype=dt)  # [w | b]: the bias rides on the ones row
    wb[:, :K] = wc.reshape(F, K)
    wb[:, K] = b
    out = np.empty((N, F, Ho, Wo), dtype=dt)
    # one GEMM over all images, (F, K + 1) @ (K + 1, N * P), then one copy into NCHW. (A GEMM
    # per image writes NCHW directly, but N small threaded BLAS calls each wait for every
    # BLAS thread: on a loaded machine, where a thread waits for a core, that made the
    # forward 4x slower than this single call.)
    res = _scratch_array("fwd", (F, N * P), dt)
    np.matmul(wb, cols.reshape(K + 1, N * P), out=res)
    np.copyto(out.reshape(N, F, P), res.reshape(F, N, P).transpose(1, 0, 2))
    return out, _ConvCache(x.shape, wc, stride, pad, cols)


def conv_backward_fast(dout, cache):
    """dout (N, F, H', W') -> dx (N, C, H, W), dw (F, C, HH, WW), db (F,). dx is None
    when the cache came through ``cache.without_dx()``."""
    if not isinstance(cache, _ConvCache):
        raise ValueError("conv_backward_fast: cache must be what conv_forward_fast returned")
    x_shape, wc, stride, pad, cols, need_dx = cache
    N, C, H, W = x_shape
    F, _, HH, WW = wc.shape
    K1, _, P = cols.shape
    K = K1 - 1
    dout = np.asarray(dout)
    if dout.ndim != 4 or dout.shape[:2] != (N, F) or dout.shape[2] * dout.shape[3] != P:
        raise ValueError(
            f"conv_backward_fast: dout has shape {dout.shape}, the forward output was "
            f"({N}, {F}, H', W') with H' * W' = {P}"
        )
    Ho, Wo = dout.shape[2], dout.shape[3]
    dt = cols.dtype
    gdt = _float_dtype(dt, dout.dtype)
    if gdt != dt:  # float32 forward, float64 gradient: promote like the naive layers
        wc, cols = wc.astype(gdt), cols.astype(gdt)
    # dout as (F, N*P): one small copy, then two single large GEMMs
    dflat = _scratch_array("dout", (F, N, P), gdt)
    np.copyto(dflat, dout.reshape(N, F, P).transpose(1, 0, 2))
    dflat = dflat.reshape(F, N * P)
    # [dw | db] = dout @ cols^T (the ones row gives db)
    dwb = np.matmul(dflat, cols.reshape(K1, N * P).T)
    dw = dwb[:, :K].reshape(wc.shape)
    db = dwb[:, K].copy()
    if not need_dx:
        return None, dw, db
    dcols = _scratch_array("dcols", (K, N * P), gdt)
    np.matmul(wc.reshape(F, K).T, dflat, out=dcols)
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
    ext = _ext(stacklevel=3)
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
    ext = _ext(stacklevel=3)
    if ext is not None:
        dx = np.empty((N, C, H * W), dtype=gdt)
        ext.maxpool_backward(np.ascontiguousarray(dout, dtype=gdt), idx, dx)
        return dx.reshape(x_shape)
    flat = idx.reshape(N * C, idx.shape[2] * idx.shape[3])
    flat = flat + (np.arange(N * C, dtype=np.intp) * (H * W))[:, None]
    dx = np.bincount(flat.ravel(), weights=dout.reshape(-1), minlength=N * C * H * W)
    return dx.astype(gdt, copy=False).reshape(x_shape)
