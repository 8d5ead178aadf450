"""First-order update rules, as in cs231n.

Each rule is ``rule(w, dw, config=None) -> (next_w, config)``: w and dw have the same shape,
config holds the hyper-parameters and the rule's state (filled with the course's defaults on
first use) and is returned for the next step. next_w keeps w's dtype.
"""

from __future__ import annotations

import numpy as np

try:  # the compiled kernels (a one-pass adam)
    from mlcore.nn import _fast
except ImportError:  # pragma: no cover - depends on the build
    _fast = None


def sgd(w, dw, config=None):
    """Vanilla SGD. config: learning_rate (1e-2)."""
    config = {} if config is None else config
    config.setdefault("learning_rate", 1e-2)
    next_w = w - config["learning_rate"] * dw
    return next_w.astype(w.dtype, copy=False), config


def sgd_momentum(w, dw, config=None):
    """SGD with momentum. config: learning_rate (1e-2), momentum (0.9), velocity (zeros)."""
    config = {} if config is None else config
    config.setdefault("learning_rate", 1e-2)
    config.setdefault("momentum", 0.9)
    v = config.get("velocity")
    v = np.zeros_like(w) if v is None else v
    v = (config["momentum"] * v - config["learning_rate"] * dw).astype(w.dtype, copy=False)
    config["velocity"] = v
    return (w + v).astype(w.dtype, copy=False), config


def rmsprop(w, dw, config=None):
    """RMSProp. config: learning_rate (1e-2), decay_rate (0.99), epsilon (1e-8),
    cache (zeros; moving average of squared gradients)."""
    config = {} if config is None else config
    config.setdefault("learning_rate", 1e-2)
    config.setdefault("decay_rate", 0.99)
    config.setdefault("epsilon", 1e-8)
    cache = config.get("cache")
    cache = np.zeros_like(w) if cache is None else cache
    decay = config["decay_rate"]
    cache = (decay * cache + (1 - decay) * dw**2).astype(w.dtype, copy=False)
    config["cache"] = cache
    next_w = w - config["learning_rate"] * dw / (np.sqrt(cache) + config["epsilon"])
    return next_w.astype(w.dtype, copy=False), config


def adam(w, dw, config=None):
    """Adam with bias correction. config: learning_rate (1e-3), beta1 (0.9), beta2 (0.999),
    epsilon (1e-8), m and v (zeros; moment estimates), t (0; incremented before use).

    With the compiled extension the step is one fused pass (``mlcore.nn._fast.adam_update``)
    equal bit for bit to the numpy expression below; it updates config's m and v arrays in
    place (they are the rule's state) and returns a fresh next_w."""
    config = {} if config is None else config
    config.setdefault("learning_rate", 1e-3)
    config.setdefault("beta1", 0.9)
    config.setdefault("beta2", 0.999)
    config.setdefault("epsilon", 1e-8)
    config.setdefault("t", 0)
    m = config.get("m")
    v = config.get("v")
    m = np.zeros_like(w) if m is None else m
    v = np.zeros_like(w) if v is None else v
    beta1, beta2 = config["beta1"], config["beta2"]
    t = config["t"] + 1
    fused = _adam_fused(w, dw, m, v, t, config)
    if fused is not None:
        next_w, m, v = fused
        config.update(m=m, v=v, t=t)
        return next_w, config
    m = (beta1 * m + (1 - beta1) * dw).astype(w.dtype, copy=False)
    v = (beta2 * v + (1 - beta2) * dw**2).astype(w.dtype, copy=False)
    m_hat = m / (1 - beta1**t)
    v_hat = v / (1 - beta2**t)
    next_w = w - config["learning_rate"] * m_hat / (np.sqrt(v_hat) + config["epsilon"])
    config.update(m=m, v=v, t=t)
    return next_w.astype(w.dtype, copy=False), config


def _adam_fused(w, dw, m, v, t, config):
    """The adam step of the expression in :func:`adam` in one pass of the compiled kernel,
    equal to it bit for bit, or None where the kernel does not apply (extension not built or
    switched off, mixed dtypes or shapes, non-contiguous arrays, hyper-parameters that are not
    plain Python numbers: numpy would round those differently). Returns fresh arrays
    (next_w, m, v): next_w is a fresh array (w is not changed); m and v, the rule's own state,
    are updated in place when they are writeable contiguous arrays (saving the page faults of
    two fresh arrays per step), else fresh too."""
    from mlcore.nn import fast_layers

    if _fast is None or not fast_layers.extension_active():
        return None
    dt = w.dtype
    if dt not in (np.float32, np.float64) or not all(
        isinstance(a, np.ndarray) and a.dtype == dt and a.shape == w.shape for a in (dw, m, v)
    ):
        return None
    hyper = [config[k] for k in ("beta1", "beta2", "learning_rate", "epsilon")]
    if not all(type(h) in (float, int) for h in hyper) or type(t) is not int:
        return None
    flat = [np.ascontiguousarray(a).reshape(-1) for a in (w, dw, m, v)]
    next_w = np.empty_like(w, order="C")
    next_m, next_v = (
        a if a.flags.c_contiguous and a.flags.writeable else np.empty_like(w, order="C")
        for a in (m, v)
    )
    _fast.adam_update(
        *flat,
        next_w.reshape(-1),
        next_m.reshape(-1),
        next_v.reshape(-1),
        *(float(h) for h in hyper),
        t,
    )
    return next_w, next_m, next_v
