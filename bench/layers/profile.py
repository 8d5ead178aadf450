"""The per-phase profile of the mlcore training step (``--profile``), run in a child process
with the mlcore worker's settings."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time

from bench.layers.processes import ROOT, child_command, child_env


def profile_step(reps: int, cpu: bool) -> dict:
    """Median milliseconds of every phase of one ThreeLayerConvNet training step, each phase
    run on its own on the inputs the real step gives it, and of the whole step; the Python
    between the layers is the whole step minus the phases. ``cpu``: the calling thread's CPU
    time (meant for one thread: robust on a loaded machine, where wall time also counts the
    time the process waits for a core), else wall-clock time."""
    clock = time.thread_time if cpu else time.perf_counter
    import numpy as np

    from mlcore.nn import fast_layers as fl
    from mlcore.nn import layers as L
    from mlcore.nn.cnn import ThreeLayerConvNet
    from mlcore.nn.optim import adam

    dt = np.float32
    model = ThreeLayerConvNet(dtype=dt, weight_scale=1e-2, seed=0)
    p = model.params
    configs = {k: {"learning_rate": 1e-3} for k in p}
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 3, 32, 32)).astype(dt)
    y = rng.integers(0, 10, 50)
    cp, pp = model.conv_param, model.pool_param
    N, F, HH, WW = 50, 32, 7, 7
    K, P = 3 * HH * WW, 32 * 32

    # the intermediate values of one step
    # conv -> pool -> relu: what layer_utils.conv_relu_pool_forward computes
    a, conv_cache = fl.conv_forward_fast(X, p["W1"], p["b1"], cp)
    pooled, pool_cache = fl.max_pool_forward_fast(a, pp)
    h1, _ = L.relu_forward(pooled)
    z, fc2 = L.affine_forward(h1, p["W2"], p["b2"])
    h2, _ = L.relu_forward(z)
    scores, fc3 = L.affine_forward(h2, p["W3"], p["b3"])
    _, dscores = L.softmax_loss(scores, y)
    dh2, dW3, _ = L.affine_backward(dscores, fc3)
    dz = L.relu_backward(dh2, z)
    dh1, dW2, _ = L.affine_backward(dz, fc2)
    dp = L.relu_backward(dh1, pooled)
    da = fl.max_pool_backward_fast(dp, pool_cache)
    cols = conv_cache.cols
    wb = np.concatenate([p["W1"].reshape(F, K), p["b1"][:, None]], axis=1)
    res = np.empty((F, N * P), dt)
    nchw = np.empty((N, F, P), dt)
    dflat = np.ascontiguousarray(da.reshape(N, F, P).transpose(1, 0, 2)).reshape(F, N * P)
    grads = model.loss(X, y)[1]
    dcols = np.empty((K, N * P), dt)
    ext = fl._fast if fl.extension_active() else None

    def im2col():
        if ext is not None:
            ext.im2col(X, cols.reshape(-1), HH, WW, 1, 3, 32, 32, N * P, P)

    def col2im():
        if ext is not None:
            ext.col2im(dcols.reshape(-1), np.empty(X.shape, dt), HH, WW, 1, 3, 32, 32, N * P, P)

    def full_step():
        loss, g = model.loss(X, y)
        for k, gk in g.items():
            p[k], configs[k] = adam(p[k], gk, configs[k])

    phases = [
        ("conv1 fwd: im2col", "im2col", im2col),
        ("conv1 fwd: GEMM", "GEMM", lambda: np.matmul(wb, cols.reshape(K + 1, -1), out=res)),
        (
            "conv1 fwd: (F, N*P) to NCHW",
            "copies",
            lambda: np.copyto(nchw, res.reshape(F, N, P).transpose(1, 0, 2)),
        ),
        ("conv1 fwd: whole layer", None, lambda: fl.conv_forward_fast(X, p["W1"], p["b1"], cp)),
        ("pool fwd", "pool", lambda: fl.max_pool_forward_fast(a, pp)),
        ("relu1 fwd (on the pooled array)", "relu", lambda: L.relu_forward(pooled)),
        ("affine2 fwd (8192x100)", "affine", lambda: L.affine_forward(h1, p["W2"], p["b2"])),
        ("relu2 fwd", "relu", lambda: L.relu_forward(z)),
        ("affine3 fwd (100x10)", "affine", lambda: L.affine_forward(h2, p["W3"], p["b3"])),
        ("softmax loss", "softmax", lambda: L.softmax_loss(scores, y)),
        ("affine3 bwd", "affine", lambda: L.affine_backward(dscores, fc3)),
        ("relu2 bwd", "relu", lambda: L.relu_backward(dh2, z)),
        ("affine2 bwd", "affine", lambda: L.affine_backward(dz, fc2)),
        ("relu1 bwd", "relu", lambda: L.relu_backward(dh1, pooled)),
        ("pool bwd", "pool", lambda: fl.max_pool_backward_fast(dp, pool_cache)),
        (
            "conv1 bwd: dout to (F, N*P)",
            "copies",
            lambda: np.copyto(dflat.reshape(F, N, P), da.reshape(N, F, P).transpose(1, 0, 2)),
        ),
        ("conv1 bwd: GEMM dw and db", "GEMM", lambda: np.matmul(dflat, cols.reshape(K + 1, -1).T)),
        (
            "conv1 bwd: whole layer (no dx)",
            None,
            lambda: fl.conv_backward_fast(da, conv_cache.without_dx()),
        ),
        (
            "(not run: conv1 dx GEMM)",
            None,
            lambda: np.matmul(p["W1"].reshape(F, K).T, dflat, out=dcols),
        ),
        ("(not run: conv1 col2im)", None, col2im),
    ]
    for k in p:
        phases.append(
            (f"adam {k} {p[k].shape}", "adam", lambda k=k: adam(p[k], grads[k], dict(configs[k])))
        )
    phases.append(("whole step", None, full_step))

    def median_ms(fn):
        fn()
        times = []
        for _ in range(reps):
            t0 = clock()
            fn()
            times.append(clock() - t0)
        return 1e3 * statistics.median(times)

    rows, by_kind = [], {}
    for name, kind, fn in phases:
        ms = median_ms(fn)
        rows.append({"phase": name, "kind": kind, "ms": ms})
        if kind is not None:
            by_kind[kind] = by_kind.get(kind, 0.0) + ms
    step = rows[-1]["ms"]
    # the whole conv layers' Python and allocation overhead beyond im2col + GEMM
    fwd = next(r["ms"] for r in rows if r["phase"] == "conv1 fwd: whole layer")
    bwd = next(r["ms"] for r in rows if r["phase"] == "conv1 bwd: whole layer (no dx)")
    parts = sum(by_kind.values())
    conv_parts = by_kind.get("im2col", 0.0) + sum(
        r["ms"] for r in rows if r["phase"].startswith("conv1") and r["kind"] == "GEMM"
    )
    by_kind["glue"] = step - parts
    return {
        "clock": "thread CPU time" if cpu else "wall clock",
        "threads": int(os.environ.get("OMP_NUM_THREADS", "0")),
        "reps": reps,
        "rows": rows,
        "by_kind": by_kind,
        "step_ms": step,
        "conv_layers_ms": fwd + bwd,
        "conv_parts_ms": conv_parts,
    }


def run_profile(threads, reps):
    env = child_env(ROOT)
    cmd = child_command("--profile-child", "--threads", str(threads))
    cmd += ["--profile-reps", str(reps)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])
