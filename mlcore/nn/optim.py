"""First-order update rules, as in cs231n.

Each rule is ``rule(w, dw, config=None) -> (next_w, config)``: w and dw have the same shape,
config holds the hyper-parameters and the rule's state (filled with the course's defaults on
first use) and is returned for the next step. next_w keeps w's dtype.
"""

from __future__ import annotations

import numpy as np


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
    epsilon (1e-8), m and v (zeros; moment estimates), t (0; incremented before use)."""
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
    m = (beta1 * m + (1 - beta1) * dw).astype(w.dtype, copy=False)
    v = (beta2 * v + (1 - beta2) * dw**2).astype(w.dtype, copy=False)
    m_hat = m / (1 - beta1**t)
    v_hat = v / (1 - beta2**t)
    next_w = w - config["learning_rate"] * m_hat / (np.sqrt(v_hat) + config["epsilon"])
    config.update(m=m, v=v, t=t)
    return next_w.astype(w.dtype, copy=False), config
