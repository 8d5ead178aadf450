"""The fast conv / pool layers against the naive layers, on both engines (the Cython
extension and the numpy fallback)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlcore.nn import fast_layers as fl
from mlcore.nn.gradient_check import eval_numerical_gradient_array, rel_error
from mlcore.nn.layers import (
    conv_backward_naive,
    conv_forward_naive,
    max_pool_backward_naive,
    max_pool_forward_naive,
)

ROOT = Path(__file__).resolve().parents[2]
ENGINES = ["extension", "numpy"]
HYP = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(params=ENGINES)
def engine(request):
    """Run the test once through the Cython kernels and once through the numpy fallback."""
    if request.param == "extension" and not fl.HAVE_EXTENSION:
        pytest.skip("mlcore.nn._fast is not built")
    previous = fl.extension_active()
    fl.use_extension(request.param == "extension")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "mlcore.nn._fast", RuntimeWarning)
        yield request.param
    fl.use_extension(previous)


def test_extension_is_built():
    """The test environment is an installed (built) checkout: the kernels must be there."""
    assert fl.HAVE_EXTENSION
    from mlcore.nn import _fast

    assert _fast.KERNELS_AVAILABLE


# --------------------------------------------------------------------------------------------
# strategies


@st.composite
def conv_cases(draw):
    stride = draw(st.integers(1, 3))
    pad = draw(st.integers(0, 2))
    HH, WW = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    H = draw(st.integers(max(1, HH - 2 * pad), 9))
    W = draw(st.integers(max(1, WW - 2 * pad), 9))
    N, C, F = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**32 - 1))
    return (N, C, H, W), (F, C, HH, WW), {"stride": stride, "pad": pad}, seed


@st.composite
def pool_cases(draw):
    ph, pw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = draw(st.integers(1, 4))  # < window: overlapping; > window: gaps
    H, W = draw(st.integers(ph, 11)), draw(st.integers(pw, 11))
    N, C = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**32 - 1))
    return (N, C, H, W), {"pool_height": ph, "pool_width": pw, "stride": stride}, seed


def _conv_both(xs, ws, cp, rng, dtype, ints=False):
    """Naive (float64) and fast (dtype) results on the same data."""
    if ints:  # small integers: every sum is exact in float32 too, so results must be equal
        x = rng.integers(-4, 5, xs).astype(dtype)
        w = rng.integers(-4, 5, ws).astype(dtype)
        b = rng.integers(-4, 5, ws[0]).astype(dtype)
    else:
        x, w, b = (rng.standard_normal(s).astype(dtype) for s in (xs, ws, (ws[0],)))
    out, cache = conv_forward_naive(x.astype(np.float64), w.astype(np.float64), b, cp)
    dout = rng.integers(-3, 4, out.shape) if ints else rng.standard_normal(out.shape)
    dout = dout.astype(dtype)
    naive = (out, *conv_backward_naive(dout.astype(np.float64), cache))
    fout, fcache = fl.conv_forward_fast(x, w, b, cp)
    fast = (fout, *fl.conv_backward_fast(dout, fcache))
    return naive, fast


# --------------------------------------------------------------------------------------------
# convolution


@HYP
@given(case=conv_cases())
def test_conv_matches_naive_float64(engine, case):
    xs, ws, cp, seed = case
    naive, fast = _conv_both(xs, ws, cp, np.random.default_rng(seed), np.float64)
    for name, a, b in zip(("out", "dx", "dw", "db"), naive, fast, strict=True):
        assert b.shape == a.shape and b.dtype == np.float64, name
        assert rel_error(a, b) <= 1e-9, name


@HYP
@given(case=conv_cases())
def test_conv_float32_exact_on_integers(engine, case):
    """float32 in, float32 out, and on integer data (exact in float32) equal to the naive."""
    xs, ws, cp, seed = case
    naive, fast = _conv_both(xs, ws, cp, np.random.default_rng(seed), np.float32, ints=True)
    for name, a, b in zip(("out", "dx", "dw", "db"), naive, fast, strict=True):
        assert b.dtype == np.float32, name
        np.testing.assert_array_equal(b, a, err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_course_case(engine, dtype):
    """The assignment's check: x (100, 3, 31, 31), w (25, 3, 3, 3), stride 2, pad 1."""
    rng = np.random.default_rng(231)
    naive, fast = _conv_both((100, 3, 31, 31), (25, 3, 3, 3), {"stride": 2, "pad": 1}, rng, dtype)
    assert fast[0].shape == (100, 25, 16, 16)
    for a, b in zip(naive, fast, strict=True):
        assert b.dtype == dtype
        if dtype == np.float64:
            assert rel_error(a, b) <= 1e-9
        else:  # float32 arithmetic against the float64 naive
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * np.abs(a).max())


def test_conv_course_toy_example(engine):
    """The assignment's hand-computed forward example."""
    x = np.linspace(-0.1, 0.5, num=2 * 3 * 4 * 4).reshape(2, 3, 4, 4)
    w = np.linspace(-0.2, 0.3, num=3 * 3 * 4 * 4).reshape(3, 3, 4, 4)
    b = np.linspace(-0.1, 0.2, num=3)
    out, _ = fl.conv_forward_fast(x, w, b, {"stride": 2, "pad": 1})
    correct = np.array(
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
    assert rel_error(out, correct) < 1e-7


def test_conv_numeric_gradients(engine):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 7, 6))
    w = rng.standard_normal((3, 3, 3, 2))
    b = rng.standard_normal(3)
    cp = {"stride": 2, "pad": 1}
    out, cache = fl.conv_forward_fast(x, w, b, cp)
    dout = rng.standard_normal(out.shape)
    dx, dw, db = fl.conv_backward_fast(dout, cache)
    dx_num = eval_numerical_gradient_array(lambda v: fl.conv_forward_fast(v, w, b, cp)[0], x, dout)
    dw_num = eval_numerical_gradient_array(lambda v: fl.conv_forward_fast(x, v, b, cp)[0], w, dout)
    db_num = eval_numerical_gradient_array(lambda v: fl.conv_forward_fast(x, w, v, cp)[0], b, dout)
    assert rel_error(dx, dx_num) < 1e-8
    assert rel_error(dw, dw_num) < 1e-8
    assert rel_error(db, db_num) < 1e-8


def test_conv_backward_reusable_and_views(engine):
    """Backward can run twice on one cache; non-contiguous inputs are fine."""
    rng = np.random.default_rng(1)
    big = rng.standard_normal((4, 6, 10, 12))
    x = big[::2, 1::2, :, ::2]  # (2, 3, 10, 6), not contiguous
    w = rng.standard_normal((4, 3, 3, 3))[:, :, ::-1]
    b = rng.standard_normal(4)
    cp = {"stride": 1, "pad": 1}
    (out, cache), (nout, ncache) = (
        fl.conv_forward_fast(x, w, b, cp),
        conv_forward_naive(x, w, b, cp),
    )
    assert rel_error(out, nout) <= 1e-9
    dout = rng.standard_normal(out.shape)
    first = fl.conv_backward_fast(dout, cache)
    second = fl.conv_backward_fast(dout, cache)
    for a, b1, b2 in zip(conv_backward_naive(dout, ncache), first, second, strict=True):
        assert rel_error(a, b1) <= 1e-9
        np.testing.assert_array_equal(b1, b2)


@pytest.mark.parametrize(
    ("xs", "ws", "cp"),
    [
        ((2, 3, 5, 5), (4, 2, 3, 3), {"stride": 1, "pad": 0}),  # channel mismatch
        ((2, 3, 5, 5), (4, 3, 7, 3), {"stride": 1, "pad": 0}),  # filter taller than input
        ((2, 3, 5, 5), (4, 3, 3, 3), {"stride": 0, "pad": 0}),
        ((2, 3, 5, 5), (4, 3, 3, 3), {"stride": 1, "pad": -1}),
        ((2, 3, 5, 5), (4, 3, 3, 3), {"stride": 1.5, "pad": 0}),
        ((2, 3, 5, 5), (4, 3, 3, 3), {"pad": 0}),
        ((3, 5, 5), (4, 3, 3, 3), {"stride": 1, "pad": 0}),
        ((2, 3, 5, 5), (4, 3, 3), {"stride": 1, "pad": 0}),
    ],
)
def test_conv_bad_shapes(engine, xs, ws, cp):
    w = np.zeros(ws)
    b = np.zeros(ws[0])
    with pytest.raises(ValueError):
        conv_forward_naive(np.zeros(xs), w, b, cp)
    with pytest.raises(ValueError):
        fl.conv_forward_fast(np.zeros(xs), w, b, cp)


def test_live_caches_are_independent(engine):
    """Many live caches, backward in any order, each after other forwards: every one gives
    its own input's gradients (a cache holds its input, no buffer shared between calls)."""
    rng = np.random.default_rng(4)
    w, b, cp = rng.standard_normal((3, 2, 3, 3)), rng.standard_normal(3), {"stride": 1, "pad": 1}
    xs = [rng.standard_normal((2, 2, 6, 5)) for _ in range(7)]
    dout = rng.standard_normal((2, 3, 6, 5))
    expect = [conv_backward_naive(dout, conv_forward_naive(x, w, b, cp)[1]) for x in xs]
    caches = [fl.conv_forward_fast(x, w, b, cp)[1] for x in xs]
    for x in xs[::-1]:  # churn: forwards whose caches die at once
        fl.conv_forward_fast(x, w, b, cp)
    for k in (3, 1, 5, 0, 6, 4, 2):
        for a, g in zip(expect[k], fl.conv_backward_fast(dout, caches[k]), strict=True):
            assert rel_error(a, g) <= 1e-9


def test_empty_batch(engine):
    x = np.zeros((0, 3, 5, 5))
    out, cache = fl.conv_forward_fast(x, np.ones((2, 3, 3, 3)), np.ones(2), {"stride": 1, "pad": 1})
    assert out.shape == (0, 2, 5, 5)
    dx, dw, db = fl.conv_backward_fast(out, cache)
    assert dx.shape == x.shape and not dw.any() and not db.any()
    out, cache = fl.max_pool_forward_fast(x, {"pool_height": 2, "pool_width": 2, "stride": 2})
    assert out.shape == (0, 3, 2, 2)
    assert fl.max_pool_backward_fast(out, cache).shape == x.shape


def test_conv_bad_bias_and_dout(engine):
    x, w = np.zeros((2, 3, 5, 5)), np.zeros((4, 3, 3, 3))
    with pytest.raises(ValueError):
        fl.conv_forward_fast(x, w, np.zeros(3), {"stride": 1, "pad": 0})
    out, cache = fl.conv_forward_fast(x, w, np.zeros(4), {"stride": 1, "pad": 0})
    with pytest.raises(ValueError):
        fl.conv_backward_fast(np.zeros((2, 4, 3, 4)), cache)
    with pytest.raises(ValueError):
        fl.conv_backward_fast(out, (x, w, np.zeros(4), {"stride": 1, "pad": 0}))


# --------------------------------------------------------------------------------------------
# max pooling


def _pool_both(xs, pp, rng, dtype, ints=False):
    if ints:  # many ties: the first maximum must win, like the naive layer
        x = rng.integers(-2, 3, xs).astype(dtype)
    else:
        x = rng.standard_normal(xs).astype(dtype)
    out, cache = max_pool_forward_naive(x, pp)
    if ints or dtype == np.float32:  # eighths: overlapping windows sum exactly in any order
        dout = (rng.integers(-24, 25, out.shape) / 8).astype(dtype)
    else:
        dout = rng.standard_normal(out.shape)
    naive = (out, max_pool_backward_naive(dout, cache))
    fout, fcache = fl.max_pool_forward_fast(x, pp)
    return naive, (fout, fl.max_pool_backward_fast(dout, fcache))


@HYP
@given(case=pool_cases(), ints=st.booleans())
def test_pool_matches_naive_float64(engine, case, ints):
    xs, pp, seed = case
    naive, fast = _pool_both(xs, pp, np.random.default_rng(seed), np.float64, ints)
    for name, a, b in zip(("out", "dx"), naive, fast, strict=True):
        assert b.shape == a.shape and b.dtype == np.float64, name
        assert rel_error(a, b) <= 1e-9, name


@HYP
@given(case=pool_cases())
def test_pool_float32_exact(engine, case):
    xs, pp, seed = case
    naive, fast = _pool_both(xs, pp, np.random.default_rng(seed), np.float32, ints=True)
    for name, a, b in zip(("out", "dx"), naive, fast, strict=True):
        assert b.dtype == np.float32, name
        np.testing.assert_array_equal(b, a, err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "pp",
    [
        {"pool_height": 2, "pool_width": 2, "stride": 2},  # the course's case
        {"pool_height": 3, "pool_width": 3, "stride": 2},  # overlapping, not tiling 32
        {"pool_height": 2, "pool_width": 3, "stride": 3},  # gaps, non-square
    ],
)
def test_pool_course_case(engine, dtype, pp):
    rng = np.random.default_rng(7)
    naive, fast = _pool_both((100, 3, 32, 32), pp, rng, dtype)
    for a, b in zip(naive, fast, strict=True):
        assert b.dtype == dtype
        if dtype == np.float64:  # overlapping windows: sums in another order
            assert rel_error(a, b) <= 1e-9
        else:  # float32 dout in eighths: exact in any order
            np.testing.assert_array_equal(b, a)


def test_pool_non_tiling_course_failure_case(engine):
    """A 3x3 stride-2 pool on a 9x7 input (the course's fast pooling fails here)."""
    rng = np.random.default_rng(3)
    naive, fast = _pool_both(
        (2, 3, 9, 7), {"pool_height": 3, "pool_width": 2, "stride": 2}, rng, np.float64
    )
    assert fast[0].shape == (2, 3, 4, 3)
    for a, b in zip(naive, fast, strict=True):
        np.testing.assert_array_equal(b, a)


def test_pool_nan_like_argmax(engine):
    """NaN propagates and takes the gradient, like np.max / np.argmax in the naive layer."""
    x = np.arange(2 * 1 * 4 * 4, dtype=np.float64).reshape(2, 1, 4, 4)
    x[0, 0, 1, 0] = np.nan
    x[1, 0, 2, 3] = np.nan
    pp = {"pool_height": 2, "pool_width": 2, "stride": 2}
    out, cache = fl.max_pool_forward_fast(x, pp)
    nout, ncache = max_pool_forward_naive(x, pp)
    np.testing.assert_array_equal(out, nout)
    dout = np.arange(1.0, 1 + out.size).reshape(out.shape)
    np.testing.assert_array_equal(
        fl.max_pool_backward_fast(dout, cache), max_pool_backward_naive(dout, ncache)
    )


def test_pool_numeric_gradient(engine):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 7, 8))
    pp = {"pool_height": 3, "pool_width": 2, "stride": 2}
    out, cache = fl.max_pool_forward_fast(x, pp)
    dout = rng.standard_normal(out.shape)
    dx = fl.max_pool_backward_fast(dout, cache)
    dx_num = eval_numerical_gradient_array(lambda v: fl.max_pool_forward_fast(v, pp)[0], x, dout)
    assert rel_error(dx, dx_num) < 1e-8


@pytest.mark.parametrize(
    ("xs", "pp"),
    [
        ((2, 3, 4, 4), {"pool_height": 5, "pool_width": 2, "stride": 2}),
        ((2, 3, 4, 4), {"pool_height": 2, "pool_width": 2, "stride": 0}),
        ((2, 3, 4, 4), {"pool_height": 0, "pool_width": 2, "stride": 1}),
        ((2, 3, 4, 4), {"pool_height": 2, "stride": 1}),
        ((3, 4, 4), {"pool_height": 2, "pool_width": 2, "stride": 2}),
    ],
)
def test_pool_bad_shapes(engine, xs, pp):
    with pytest.raises(ValueError):
        max_pool_forward_naive(np.zeros(xs), pp)
    with pytest.raises(ValueError):
        fl.max_pool_forward_fast(np.zeros(xs), pp)


def test_pool_bad_dout(engine):
    out, cache = fl.max_pool_forward_fast(
        np.zeros((2, 3, 4, 4)), {"pool_height": 2, "pool_width": 2, "stride": 2}
    )
    with pytest.raises(ValueError):
        fl.max_pool_backward_fast(np.zeros((2, 3, 2, 3)), cache)
    with pytest.raises(ValueError):
        fl.max_pool_backward_fast(out, (np.zeros((2, 3, 4, 4)), {"stride": 2}))


# --------------------------------------------------------------------------------------------
# engines, warning, threads


def test_fallback_warns_once():
    previous = fl.extension_active()
    saved = fl._warned
    try:
        fl._warned = False
        fl.use_extension(False)
        x = np.ones((1, 1, 4, 4))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(3):
                out, cache = fl.conv_forward_fast(
                    x, np.ones((1, 1, 2, 2)), np.zeros(1), {"stride": 1, "pad": 0}
                )
                fl.conv_backward_fast(out, cache)
                out, cache = fl.max_pool_forward_fast(
                    x, {"pool_height": 2, "pool_width": 2, "stride": 2}
                )
                fl.max_pool_backward_fast(out, cache)
        ours = [w for w in caught if "mlcore.nn._fast" in str(w.message)]
        assert len(ours) == 1
        assert issubclass(ours[0].category, RuntimeWarning)
        assert ours[0].filename == __file__  # points at the caller, not at mlcore
    finally:
        fl._warned = saved
        if fl.HAVE_EXTENSION:
            fl.use_extension(previous)


def test_extension_active_switch():
    if not fl.HAVE_EXTENSION:
        with pytest.raises(RuntimeError):
            fl.use_extension(True)
        return
    previous = fl.use_extension(False)
    assert not fl.extension_active()
    assert fl.use_extension(True) is False
    assert fl.extension_active()
    fl.use_extension(previous)


def test_env_switch_forces_numpy_path():
    code = (
        "import warnings, numpy as np\n"
        "from mlcore.nn import fast_layers as fl\n"
        "assert not fl.extension_active()\n"
        "with warnings.catch_warnings(record=True) as c:\n"
        "    warnings.simplefilter('always')\n"
        "    fl.max_pool_forward_fast(np.ones((1, 1, 2, 2)), "
        "{'pool_height': 2, 'pool_width': 2, 'stride': 2})\n"
        "    fl.max_pool_forward_fast(np.ones((1, 1, 2, 2)), "
        "{'pool_height': 2, 'pool_width': 2, 'stride': 2})\n"
        "assert len(c) == 1, c\n"
    )
    env = {**os.environ, "MLCORE_NO_EXTENSION": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)


def test_concurrent_calls_match_serial():
    """Two Python threads running the kernels at once (GIL released) get the serial results."""
    if not fl.HAVE_EXTENSION:
        pytest.skip("mlcore.nn._fast is not built")
    rng = np.random.default_rng(11)
    jobs = []
    for k in range(2):
        x = rng.standard_normal((8, 3, 20 + k, 18))
        w = rng.standard_normal((6, 3, 3, 5))
        jobs.append((x, w, rng.standard_normal(6), {"stride": 1 + k, "pad": 2 - k}))
    pp = {"pool_height": 3, "pool_width": 3, "stride": 2}

    def run(x, w, b, cp):
        out, cache = fl.conv_forward_fast(x, w, b, cp)
        dx, dw, db = fl.conv_backward_fast(np.cos(out), cache)
        pout, pcache = fl.max_pool_forward_fast(x, pp)
        return out, dx, dw, db, pout, fl.max_pool_backward_fast(np.sin(pout), pcache)

    serial = [run(*job) for job in jobs]
    results = [[None] * 20 for _ in jobs]
    errors = []

    def worker(k):
        try:
            for i in range(20):
                results[k][i] = run(*jobs[k])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for k, expect in enumerate(serial):
        for got in results[k]:
            # the Cython kernels are deterministic: pooling must match bit for bit; the conv
            # also goes through BLAS, whose thread split may differ between concurrent calls
            for a, b in zip(expect[:4], got[:4], strict=True):
                np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12 * np.abs(a).max())
            for a, b in zip(expect[4:], got[4:], strict=True):
                np.testing.assert_array_equal(b, a)


def test_backward_without_dx_skips_only_dx(engine):
    """A cache passed through without_dx() gives dx = None and the very same dw, db; the
    sandwich's need_dx=False does the same for the fast layers and is ignored by the naive
    ones (their cache has no without_dx)."""
    from mlcore.nn import layer_utils
    from mlcore.nn.layers import conv_backward_naive as cbn
    from mlcore.nn.layers import conv_forward_naive as cfn

    rng = np.random.default_rng(8)
    x, w, b = rng.standard_normal((3, 2, 9, 8)), rng.standard_normal((4, 2, 3, 3)), np.ones(4)
    cp, pp = {"stride": 1, "pad": 1}, {"pool_height": 2, "pool_width": 2, "stride": 2}
    out, cache = fl.conv_forward_fast(x, w, b, cp)
    dout = rng.standard_normal(out.shape)
    dx, dw, db = fl.conv_backward_fast(dout, cache)
    none, dw2, db2 = fl.conv_backward_fast(dout, cache.without_dx())
    assert none is None and dx is not None
    np.testing.assert_array_equal(dw2, dw)
    np.testing.assert_array_equal(db2, db)
    assert rel_error(dw, cbn(dout, cfn(x, w, b, cp)[1])[1]) <= 1e-9

    out, cache = layer_utils.conv_relu_pool_forward(x, w, b, cp, pp)
    dout = rng.standard_normal(out.shape)
    full = layer_utils.conv_relu_pool_backward(dout, cache)
    skip = layer_utils.conv_relu_pool_backward(dout, cache, need_dx=False)
    assert skip[0] is None and full[0].shape == x.shape
    np.testing.assert_array_equal(skip[1], full[1])
    np.testing.assert_array_equal(skip[2], full[2])
    naive_cache = (cfn(x, w, b, cp)[1], *cache[1:])
    saved = layer_utils.conv_backward
    try:
        layer_utils.conv_backward = cbn
        ndx, ndw, _ = layer_utils.conv_relu_pool_backward(dout, naive_cache, need_dx=False)
    finally:
        layer_utils.conv_backward = saved
    assert rel_error(ndx, full[0]) <= 1e-9 and rel_error(ndw, full[1]) <= 1e-9
