"""The benchmark's cases: every worker builds the same list from the same seeds and offers
its own engines for them (``engines``); the fast/torch targets of the cases that have one."""

from __future__ import annotations

# issue 17's targets (fast/torch, median of the per-round ratios)
TARGETS = {"conv fwd": 1.3, "conv fwd+bwd": 1.0, "pool fwd+bwd": 1.0, "step float32": 0.75}

CONV_SPECS = [
    ("conv 3x3 s2 p1, x(100,3,31,31) w(25,3,3,3)", (100, 3, 31, 31), (25, 3, 3, 3), 2, 1),
    ("conv 7x7 s1 p3, x(50,3,32,32) w(32,3,7,7)", (50, 3, 32, 32), (32, 3, 7, 7), 1, 3),
]
POOL_SPECS = [
    ("pool 2x2 s2, x(100,3,32,32)", (100, 3, 32, 32), 2, 2),
    ("pool 3x3 s2, x(100,3,32,32)", (100, 3, 32, 32), 3, 2),
    ("pool 2x2 s2, x(50,32,32,32)", (50, 32, 32, 32), 2, 2),
    ("pool 3x3 s2, x(50,32,32,32)", (50, 32, 32, 32), 3, 2),
]
PHASES = ("fwd", "bwd", "fwd+bwd")


def case_list():
    """(case name, group, target kind) in benchmark order."""
    out = []
    for label, *_ in CONV_SPECS:
        for what in PHASES:
            kind = {"fwd": "conv fwd", "fwd+bwd": "conv fwd+bwd"}.get(what)
            out.append((f"{label} {what}", "conv", kind))
    for label, *_ in POOL_SPECS:
        for what in PHASES:
            out.append((f"{label} {what}", "pool", "pool fwd+bwd" if what == "fwd+bwd" else None))
    out.append(("ThreeLayerConvNet train step, batch 50, float32", "step", "step float32"))
    out.append(("ThreeLayerConvNet train step, batch 50, float64", "step", None))
    return out


def conv_data(np, xs, ws, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(xs).astype(np.float32)
    w = (0.1 * rng.standard_normal(ws)).astype(np.float32)
    b = rng.standard_normal(ws[0]).astype(np.float32)
    return rng, x, w, b
