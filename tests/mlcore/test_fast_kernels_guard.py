"""The Cython kernels never read or write outside their arrays.

Every array handed to a kernel is a view carved out of a larger buffer whose margins hold
guard values (NaN for floats, a sentinel for int32): a stray read would pull a NaN into the
results, a stray write would change a guard. Outputs are pre-filled with guards too, so the
checks also prove the kernels overwrite every output element. The same checks then run
against a copy of the extension built with Cython's boundscheck/wraparound on
(MLCORE_BOUNDSCHECK=1), where any out-of-range index raises instead of corrupting memory.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mlcore.nn import fast_layers as fl
from mlcore.nn.layers import max_pool_backward_naive, max_pool_forward_naive

ROOT = Path(__file__).resolve().parents[2]
MARGIN = 67  # guard elements before and after every array
SENTINEL = np.int32(-(2**31) + 7)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not fl.HAVE_EXTENSION, reason="mlcore.nn._fast is not built"),
]

CONV_CASES = [  # x shape, (HH, WW), stride, pad
    ((2, 3, 7, 9), (3, 2), 2, 1),
    ((1, 2, 5, 5), (5, 5), 1, 2),
    ((2, 1, 4, 6), (6, 3), 3, 2),  # filter taller than the input, padding makes it fit
    ((3, 2, 8, 5), (1, 1), 2, 0),  # stride skips trailing rows and columns
    ((1, 1, 1, 1), (3, 3), 1, 1),
    ((2, 2, 5, 16), (3, 3), 1, 1),  # stride 1, output rows of 16: read in place, not packed
    ((1, 3, 4, 38), (7, 7), 1, 3),  # output rows of 38: packed
    ((2, 2, 5, 31), (3, 3), 2, 1),  # stride 2, output rows of 16: in place, by column phase
    ((1, 1, 4, 24), (2, 2), 3, 0),  # stride 3, rows of 8: in place for float64 only
]
POOL_CASES = [  # x shape, (ph, pw), stride
    ((2, 3, 8, 8), (2, 2), 2),
    ((2, 2, 9, 7), (3, 3), 2),  # overlapping, non-tiling
    ((1, 3, 7, 10), (2, 3), 3),  # gaps between windows
    ((2, 1, 5, 5), (5, 5), 1),
    ((1, 2, 6, 7), (1, 1), 1),
]


class Guarded:
    """A C-contiguous view into the middle of a buffer filled with guard values."""

    def __init__(self, shape, dtype, fill=None):
        dtype = np.dtype(dtype)
        self.guard = np.nan if dtype.kind == "f" else SENTINEL
        n = int(np.prod(shape))
        self.buf = np.full(n + 2 * MARGIN, self.guard, dtype=dtype)
        self.view = self.buf[MARGIN : MARGIN + n].reshape(shape)
        if fill is not None:
            self.view[...] = fill
        assert self.view.flags.c_contiguous and self.view.base is not None

    def assert_guards(self):
        for part in (self.buf[:MARGIN], self.buf[-MARGIN:]):
            if self.buf.dtype.kind == "f":
                assert np.isnan(part).all(), "a guard value was overwritten"
            else:
                assert (part == SENTINEL).all(), "a guard value was overwritten"


def _reference_cols(x, HH, WW, stride, pad):
    """(C*HH*WW, N, Ho*Wo) with plain loops."""
    N, C, H, W = x.shape
    Ho = 1 + (H + 2 * pad - HH) // stride
    Wo = 1 + (W + 2 * pad - WW) // stride
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    cols = np.zeros((C, HH, WW, N, Ho, Wo), dtype=x.dtype)
    for kh in range(HH):
        for kw in range(WW):
            for i in range(Ho):
                for j in range(Wo):
                    cols[:, kh, kw, :, i, j] = xp[:, :, i * stride + kh, j * stride + kw].T
    return cols.reshape(C * HH * WW, N, Ho * Wo), Ho, Wo


def _reference_col2im(dcols, x_shape, HH, WW, stride, pad, Ho, Wo):
    N, C, H, W = x_shape
    d = dcols.reshape(C, HH, WW, N, Ho, Wo)
    dxp = np.zeros((N, C, H + 2 * pad, W + 2 * pad), dtype=dcols.dtype)
    for kh in range(HH):
        for kw in range(WW):
            for i in range(Ho):
                for j in range(Wo):
                    dxp[:, :, i * stride + kh, j * stride + kw] += d[:, kh, kw, :, i, j].T
    return dxp[:, :, pad : pad + H, pad : pad + W]


def check_conv(kern, dtype):
    """The implicit-GEMM convolution kernels against the column matrix built with loops.
    Small integer values: every sum is exact, so the results must equal the reference."""
    rng = np.random.default_rng(0)
    for xs, (HH, WW), stride, pad in CONV_CASES:
        N, C = xs[:2]
        F = 3
        x = Guarded(xs, dtype, rng.integers(-9, 10, xs))
        ref, Ho, Wo = _reference_cols(x.view, HH, WW, stride, pad)  # (K, N, P)
        K, P = C * HH * WW, Ho * Wo
        cols = np.concatenate([ref, np.ones((1, N, P), dtype)])  # the bias row
        wb = Guarded((F, K + 1), dtype, rng.integers(-9, 10, (F, K + 1)))
        out = Guarded((N, F, Ho, Wo), dtype, fill=np.nan)
        kern.conv_forward(x.view, wb.view, out.view, HH, WW, stride, pad)
        expect = np.einsum("fk,knp->nfp", wb.view, cols).reshape(N, F, Ho, Wo)
        np.testing.assert_array_equal(out.view, expect)
        for g in (x, wb, out):
            g.assert_guards()

        dout = Guarded((N, F, Ho, Wo), dtype, rng.integers(-9, 10, (N, F, Ho, Wo)))
        dwbT = Guarded((K + 1, F), dtype, fill=np.nan)
        kern.conv_backward_w(x.view, dout.view, dwbT.view, HH, WW, stride, pad)
        d = dout.view.reshape(N, F, P)
        np.testing.assert_array_equal(dwbT.view, np.einsum("knp,nfp->kf", cols, d))
        w2 = Guarded((F, K), dtype, np.ascontiguousarray(wb.view[:, :K]))
        dx = Guarded(xs, dtype, fill=np.nan)
        kern.conv_backward_x(w2.view, dout.view, dx.view, HH, WW, stride, pad)
        dcols = np.einsum("fk,nfp->knp", w2.view, d)
        dx_ref = _reference_col2im(dcols, xs, HH, WW, stride, pad, Ho, Wo)
        np.testing.assert_array_equal(dx.view, dx_ref)
        for g in (x, dout, dwbT, w2, dx):
            g.assert_guards()


def check_gemm(kern, dtype):
    """The matrix product, plain and through transposed views, against exact references."""
    rng = np.random.default_rng(2)
    for m, k, n in [(1, 1, 1), (7, 3, 5), (13, 300, 17), (97, 40, 33), (6, 0, 4)]:
        a = Guarded((m, k), dtype, rng.integers(-5, 6, (m, k)))
        b = Guarded((k, n), dtype, rng.integers(-5, 6, (k, n)))
        at = Guarded((k, m), dtype, a.view.T)
        bt = Guarded((n, k), dtype, b.view.T)
        expect = a.view.astype(np.float64) @ b.view.astype(np.float64)
        for left, right in ((a.view, b.view), (at.view.T, bt.view.T), (a.view, bt.view.T)):
            out = Guarded((m, n), dtype, fill=np.nan)
            kern.gemm(left, right, out.view)
            np.testing.assert_array_equal(out.view, expect)
            out.assert_guards()
            kern.gemm(left, right, out.view, accumulate=True)
            np.testing.assert_array_equal(out.view, 2 * expect)
            out.assert_guards()
        for g in (a, b, at, bt):
            g.assert_guards()


def check_pool(kern, dtype):
    rng = np.random.default_rng(1)
    for xs, (ph, pw), stride in POOL_CASES:
        pp = {"pool_height": ph, "pool_width": pw, "stride": stride}
        x = Guarded(xs, dtype, rng.integers(-3, 4, xs))  # ties: first maximum wins
        nout, ncache = max_pool_forward_naive(x.view.copy(), pp)
        dout = Guarded(nout.shape, dtype, rng.integers(-9, 10, nout.shape))
        dx_ref = max_pool_backward_naive(dout.view.copy(), ncache)
        out = Guarded(nout.shape, dtype, fill=np.nan)
        idx = Guarded(nout.shape, np.int32, fill=SENTINEL)
        kern.maxpool_forward(x.view, out.view, idx.view, ph, pw, stride)
        np.testing.assert_array_equal(out.view, nout)
        assert ((idx.view >= 0) & (idx.view < xs[2] * xs[3])).all()
        out.assert_guards()
        idx.assert_guards()
        x.assert_guards()

        dx = Guarded((xs[0], xs[1], xs[2] * xs[3]), dtype, fill=np.nan)
        kern.maxpool_backward(dout.view, idx.view, dx.view)
        np.testing.assert_array_equal(dx.view.reshape(xs), dx_ref)
        dx.assert_guards()
        dout.assert_guards()
        idx.assert_guards()


def check_rejects_bad_calls(kern):
    x = np.zeros((2, 3, 5, 5))
    wb = np.zeros((4, 3 * 9 + 1))
    with pytest.raises(ValueError):  # wb without its bias column
        kern.conv_forward(x, np.zeros((4, 3 * 9)), np.zeros((2, 4, 3, 3)), 3, 3, 1, 0)
    with pytest.raises(ValueError):  # output size the input cannot produce
        kern.conv_forward(x, wb, np.zeros((2, 4, 4, 3)), 3, 3, 1, 0)
    with pytest.raises(ValueError):
        kern.conv_forward(x, wb, np.zeros((2, 4, 3, 3)), 3, 3, 0, 0)
    with pytest.raises(ValueError):
        kern.conv_backward_w(x, np.zeros((2, 4, 3, 3)), np.zeros((3 * 9, 4)), 3, 3, 1, 0)
    with pytest.raises(ValueError):
        kern.conv_backward_x(np.zeros((4, 3 * 9)), np.zeros((1, 4, 3, 3)), x, 3, 3, 1, 0)
    with pytest.raises(ValueError):
        kern.gemm(np.zeros((2, 3)), np.zeros((4, 2)), np.zeros((2, 2)))
    out, idx = np.zeros((2, 3, 2, 2)), np.zeros((2, 3, 2, 2), np.int32)
    with pytest.raises(ValueError):
        kern.maxpool_forward(x, out, idx, 2, 2, 0)
    with pytest.raises(ValueError):  # 3 windows of 2 every 2 do not fit in 5
        kern.maxpool_forward(x, np.zeros((2, 3, 3, 3)), np.zeros((2, 3, 3, 3), np.int32), 2, 2, 2)
    with pytest.raises(ValueError):
        kern.maxpool_forward(x, out, np.zeros((2, 3, 2, 1), np.int32), 2, 2, 2)
    dx = Guarded((2, 3, 25), np.float64, fill=np.nan)
    bad = np.full((2, 3, 2, 2), 25, np.int32)  # one past the plane
    with pytest.raises(ValueError):
        kern.maxpool_backward(out, bad, dx.view)
    dx.assert_guards()
    with pytest.raises((TypeError, ValueError)):  # mixed dtypes match no specialisation
        kern.conv_forward(x.astype(np.float32), wb, np.zeros((2, 4, 3, 3)), 3, 3, 1, 0)


def _run_all(kern):
    for dtype in (np.float32, np.float64):
        check_conv(kern, dtype)
        check_gemm(kern, dtype)
        check_pool(kern, dtype)


@pytest.fixture(scope="module")
def kern():
    from mlcore.nn import _fast

    return _fast


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_kernels_stay_inside(kern, dtype):
    check_conv(kern, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_stays_inside(kern, dtype):
    check_gemm(kern, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pool_kernels_stay_inside(kern, dtype):
    check_pool(kern, dtype)


def test_kernels_reject_bad_calls(kern):
    check_rejects_bad_calls(kern)


def test_thread_count_setting(kern):
    default = kern.get_num_threads()
    assert default >= 1
    try:
        kern.set_num_threads(1)
        assert kern.get_num_threads() == 1
        check_pool(kern, np.float64)
    finally:
        kern.set_num_threads(0)
    assert kern.get_num_threads() == default


def _build_checked(tmp: Path) -> Path:
    """Build a copy of the extension with boundscheck/wraparound on; return the .so path."""
    (tmp / "mlcore" / "nn").mkdir(parents=True)
    shutil.copy(ROOT / "setup.py", tmp / "setup.py")
    for src in [ROOT / "mlcore" / "nn" / "_fast.pyx", *(ROOT / "mlcore" / "nn").glob("*.h")]:
        shutil.copy(src, tmp / "mlcore" / "nn" / src.name)
    env = {**os.environ, "MLCORE_BOUNDSCHECK": "1"}
    proc = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (so,) = (tmp / "mlcore" / "nn").glob("_fast*.so")
    return so


def test_checked_build_stays_inside(tmp_path):
    """The same checks through a build with Cython's bounds checks on."""
    pytest.importorskip("Cython")
    if shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("no C compiler")
    so = _build_checked(tmp_path)
    spec = importlib.util.spec_from_file_location("_fast", so)
    checked = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(checked)
    assert checked.KERNELS_AVAILABLE
    _run_all(checked)
    check_rejects_bad_calls(checked)
