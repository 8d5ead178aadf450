"""Update rules against the course's expected arrays and a step-by-step re-derivation."""

import numpy as np
import pytest

from mlcore.nn.optim import adam, rmsprop, sgd, sgd_momentum

N, D = 4, 5


def linspace(lo, hi):
    return np.linspace(lo, hi, num=N * D).reshape(N, D)


# the course's values are printed to 8 decimals
def assert_course_close(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-8)


def test_sgd():
    w, dw = linspace(-0.4, 0.6), linspace(-0.6, 0.4)
    next_w, config = sgd(w, dw, {"learning_rate": 1e-3})
    np.testing.assert_allclose(next_w, w - 1e-3 * dw, rtol=1e-15)
    _, config = sgd(w, dw)
    assert config["learning_rate"] == 1e-2


def test_sgd_momentum_course_values():
    w, dw, v = linspace(-0.4, 0.6), linspace(-0.6, 0.4), linspace(0.6, 0.9)
    next_w, config = sgd_momentum(w, dw, {"learning_rate": 1e-3, "velocity": v})
    expected_next_w = np.asarray(
        [
            [0.1406, 0.20738947, 0.27417895, 0.34096842, 0.40775789],
            [0.47454737, 0.54133684, 0.60812632, 0.67491579, 0.74170526],
            [0.80849474, 0.87528421, 0.94207368, 1.00886316, 1.07565263],
            [1.14244211, 1.20923158, 1.27602105, 1.34281053, 1.4096],
        ]
    )
    expected_velocity = np.asarray(
        [
            [0.5406, 0.55475789, 0.56891579, 0.58307368, 0.59723158],
            [0.61138947, 0.62554737, 0.63970526, 0.65386316, 0.66802105],
            [0.68217895, 0.69633684, 0.71049474, 0.72465263, 0.73881053],
            [0.75296842, 0.76712632, 0.78128421, 0.79544211, 0.8096],
        ]
    )
    assert_course_close(next_w, expected_next_w)
    assert_course_close(config["velocity"], expected_velocity)
    assert config["momentum"] == 0.9


def test_rmsprop_course_values():
    w, dw, cache = linspace(-0.4, 0.6), linspace(-0.6, 0.4), linspace(0.6, 0.9)
    next_w, config = rmsprop(w, dw, {"learning_rate": 1e-2, "cache": cache})
    expected_next_w = np.asarray(
        [
            [-0.39223849, -0.34037513, -0.28849239, -0.23659121, -0.18467247],
            [-0.132737, -0.08078555, -0.02881884, 0.02316247, 0.07515774],
            [0.12716641, 0.17918792, 0.23122175, 0.28326742, 0.33532447],
            [0.38739248, 0.43947102, 0.49155973, 0.54365823, 0.59576619],
        ]
    )
    expected_cache = np.asarray(
        [
            [0.5976, 0.6126277, 0.6277108, 0.64284931, 0.65804321],
            [0.67329252, 0.68859723, 0.70395734, 0.71937285, 0.73484377],
            [0.75037008, 0.7659518, 0.78158892, 0.79728144, 0.81302936],
            [0.82883269, 0.84469141, 0.86060554, 0.87657507, 0.8926],
        ]
    )
    assert_course_close(next_w, expected_next_w)
    assert_course_close(config["cache"], expected_cache)


def test_adam_course_values():
    w, dw = linspace(-0.4, 0.6), linspace(-0.6, 0.4)
    m, v = linspace(0.6, 0.9), linspace(0.7, 0.5)
    next_w, config = adam(w, dw, {"learning_rate": 1e-2, "m": m, "v": v, "t": 5})
    expected_next_w = np.asarray(
        [
            [-0.40094747, -0.34836187, -0.29577703, -0.24319299, -0.19060977],
            [-0.1380274, -0.08544591, -0.03286534, 0.01971428, 0.0722929],
            [0.1248705, 0.17744702, 0.23002243, 0.28259667, 0.33516969],
            [0.38774145, 0.44031188, 0.49288093, 0.54544852, 0.59801459],
        ]
    )
    expected_v = np.asarray(
        [
            [0.69966, 0.68908382, 0.67851319, 0.66794809, 0.65738853],
            [0.64683452, 0.63628604, 0.6257431, 0.61520571, 0.60467385],
            [0.59414753, 0.58362676, 0.57311152, 0.56260183, 0.55209767],
            [0.54159906, 0.53110598, 0.52061845, 0.51013645, 0.49966],
        ]
    )
    expected_m = np.asarray(
        [
            [0.48, 0.49947368, 0.51894737, 0.53842105, 0.55789474],
            [0.57736842, 0.59684211, 0.61631579, 0.63578947, 0.65526316],
            [0.67473684, 0.69421053, 0.71368421, 0.73315789, 0.75263158],
            [0.77210526, 0.79157895, 0.81105263, 0.83052632, 0.85],
        ]
    )
    assert_course_close(next_w, expected_next_w)
    assert_course_close(config["v"], expected_v)
    assert_course_close(config["m"], expected_m)
    assert config["t"] == 6


def test_rules_over_several_steps_match_rederivation():
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((3, 4))
    grads = [rng.standard_normal((3, 4)) for _ in range(4)]

    w, config = w0.copy(), None
    m = v = np.zeros_like(w0)
    w_ref = w0.copy()
    for t, g in enumerate(grads, start=1):
        w, config = adam(w, g, config)
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        w_ref = w_ref - 1e-3 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
    np.testing.assert_allclose(w, w_ref, rtol=1e-12)
    assert config["t"] == len(grads)

    w, config, cache, w_ref = w0.copy(), None, np.zeros_like(w0), w0.copy()
    for g in grads:
        w, config = rmsprop(w, g, config)
        cache = 0.99 * cache + 0.01 * g * g
        w_ref = w_ref - 1e-2 * g / (np.sqrt(cache) + 1e-8)
    np.testing.assert_allclose(w, w_ref, rtol=1e-12)

    w, config, vel, w_ref = w0.copy(), None, np.zeros_like(w0), w0.copy()
    for g in grads:
        w, config = sgd_momentum(w, g, config)
        vel = 0.9 * vel - 1e-2 * g
        w_ref = w_ref + vel
    np.testing.assert_allclose(w, w_ref, rtol=1e-12)


def test_adam_defaults():
    _, config = adam(np.zeros(3), np.ones(3))
    assert config["learning_rate"] == 1e-3
    assert (config["beta1"], config["beta2"], config["epsilon"], config["t"]) == (
        0.9,
        0.999,
        1e-8,
        1,
    )
    _, config = rmsprop(np.zeros(3), np.ones(3))
    assert (config["learning_rate"], config["decay_rate"], config["epsilon"]) == (1e-2, 0.99, 1e-8)


@pytest.mark.parametrize("rule", [sgd, sgd_momentum, rmsprop, adam])
def test_rules_keep_float32(rule):
    w = np.linspace(-1, 1, 6, dtype=np.float32)
    dw = np.linspace(1, -1, 6, dtype=np.float32)
    config = None
    for _ in range(3):
        w, config = rule(w, dw, config)
    assert w.dtype == np.float32
    for value in config.values():
        if isinstance(value, np.ndarray):
            assert value.dtype == np.float32


def course_adam(w, grads, learning_rate):
    """The course's adam expression over the gradients in ``grads``, in w's dtype: the
    reference the fused kernel must equal bit for bit. Returns w, m, v."""
    m, v = np.zeros_like(w), np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        m = (0.9 * m + (1 - 0.9) * g).astype(w.dtype, copy=False)
        v = (0.999 * v + (1 - 0.999) * g**2).astype(w.dtype, copy=False)
        m_hat, v_hat = m / (1 - 0.9**t), v / (1 - 0.999**t)
        w = (w - learning_rate * m_hat / (np.sqrt(v_hat) + 1e-8)).astype(w.dtype, copy=False)
    return w, m, v


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_adam_equals_the_numpy_expression_bit_for_bit(dtype, monkeypatch):
    """The compiled one-pass adam runs (its calls are counted) and rounds every operation like
    the numpy expression: equal bit for bit over several steps, on sizes below and across its
    thread chunks; switched off, the numpy path gives the same bits without the kernel."""
    from mlcore.nn import fast_layers as fl

    if not fl.HAVE_EXTENSION:
        pytest.skip("mlcore.nn._fast is not built")
    from mlcore.nn import _fast

    kernel, calls = _fast.adam_update, []

    def counted_adam_update(*args):
        calls.append(len(args[0]))
        return kernel(*args)

    monkeypatch.setattr(_fast, "adam_update", counted_adam_update)
    rng = np.random.default_rng(3)
    for shape in [(3, 4), (32, 3, 7, 7), (70001,)]:
        w0 = rng.standard_normal(shape).astype(dtype)
        grads = [(10.0 ** rng.integers(-6, 2)) * rng.standard_normal(shape) for _ in range(4)]
        grads = [g.astype(dtype) for g in grads]
        expected = course_adam(w0, grads, 3e-3)
        for use in (True, False):
            previous = fl.use_extension(use)
            calls.clear()
            try:
                w, config = w0.copy(), {"learning_rate": 3e-3}
                for g in grads:
                    w_before = w.copy()
                    next_w, config = adam(w, g, config)
                    np.testing.assert_array_equal(w, w_before)  # w itself is not changed
                    w = next_w
            finally:
                fl.use_extension(previous)
            assert calls == ([w0.size] * len(grads) if use else []), (shape, use)
            assert w.dtype == dtype and config["t"] == len(grads)
            for a, b in zip((w, config["m"], config["v"]), expected, strict=True):
                assert a.tobytes() == b.tobytes(), (shape, use)
        assert not np.array_equal(expected[0], w0)
