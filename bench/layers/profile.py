"""The per-part profile of the mlcore training step (``--profile``), run in a child process
with the mlcore worker's settings."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time

from bench.layers.processes import ROOT, child_command, child_env


def profile_step(reps: int, cpu: bool) -> dict:
    """Median milliseconds of every part of one ThreeLayerConvNet float32 training step (batch
    50, 3x32x32, 32 filters 7x7, 2x2 pool, affine 8192->100->10, adam), each part run on its
    own on the inputs the real step gives it, and of the whole step; the Python between the
    parts ("glue") is the whole step minus the parts. The parts are the calls the step makes:
    the fast conv and pool layers, the relus, the affine layers' products through
    ``mlcore.nn.linalg.matmul`` and their bias terms, the softmax loss and adam per parameter;
    rows without a kind (the conv kernels inside the layers, the first conv's input gradient,
    which the step does not compute) are for reference and not summed. ``cpu``: the calling
    thread's CPU time (meant for one thread: robust on a loaded machine, where wall time also
    counts the time the process waits for a core), else wall-clock time."""
    clock = time.thread_time if cpu else time.perf_counter
    import numpy as np

    from mlcore.nn import fast_layers as fl
    from mlcore.nn import layers as L
    from mlcore.nn.cnn import ThreeLayerConvNet
    from mlcore.nn.linalg import matmul
    from mlcore.nn.optim import adam

    dt = np.float32
    model = ThreeLayerConvNet(dtype=dt, weight_scale=1e-2, seed=0)
    p = model.params
    configs = {k: {"learning_rate": 1e-3} for k in p}
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 3, 32, 32)).astype(dt)
    y = rng.integers(0, 10, 50)
    cp, pp = model.conv_param, model.pool_param
    F, _, HH, WW = p["W1"].shape

    def full_step():
        loss, g = model.loss(X, y)
        for k, gk in g.items():
            p[k], configs[k] = adam(p[k], gk, configs[k])

    full_step()  # adam's moments exist from here on, as in every step but the first

    # the intermediate values of one step (model.loss)
    # conv -> pool -> relu: what layer_utils.conv_relu_pool_forward computes
    a, conv_cache = fl.conv_forward_fast(X, p["W1"], p["b1"], cp)
    pooled, pool_cache = fl.max_pool_forward_fast(a, pp)
    h1, _ = L.relu_forward(pooled)
    x2 = h1.reshape(len(h1), -1)
    z, fc2 = L.affine_forward(h1, p["W2"], p["b2"])
    h2, _ = L.relu_forward(z)
    scores, fc3 = L.affine_forward(h2, p["W3"], p["b3"])
    _, dscores = L.softmax_loss(scores, y)
    dh2, _, _ = L.affine_backward(dscores, fc3)
    dz = L.relu_backward(dh2, z)
    dh1, _, _ = L.affine_backward(dz, fc2)
    dp = L.relu_backward(dh1, pooled)
    da = fl.max_pool_backward_fast(dp, pool_cache)
    _, grads = model.loss(X, y)
    z_lin, s_lin = matmul(x2, p["W2"]), matmul(h2, p["W3"])

    def mm(a_, b_):
        return f"{'x'.join(map(str, a_.shape))} @ {'x'.join(map(str, b_.shape))}"

    # for reference: the kernels inside the conv layers, and the input gradient the first conv
    # skips (the numpy fallback has none)
    fwd_kernel, bwd_kernels = [], []
    if fl.extension_active():
        from mlcore.nn import _fast

        wb = np.concatenate([p["W1"].reshape(F, -1), p["b1"][:, None]], axis=1)
        out, dx = np.empty_like(a), np.empty_like(X)
        dwbT = np.empty((wb.shape[1], F), dt)
        geometry = (HH, WW, cp["stride"], cp["pad"])
        fwd_kernel = [
            (
                "(in conv1 fwd: the kernel conv_forward)",
                None,
                lambda: _fast.conv_forward(X, wb, out, *geometry),
            )
        ]
        bwd_kernels = [
            (
                "(in conv1 bwd: the kernel conv_backward_w)",
                None,
                lambda: _fast.conv_backward_w(X, da, dwbT, *geometry),
            ),
            (
                "(not run: conv1 dx, the kernel conv_backward_x)",
                None,
                lambda: _fast.conv_backward_x(p["W1"].reshape(F, -1), da, dx, *geometry),
            ),
        ]

    W2, W3 = p["W2"], p["W3"]
    phases = [
        (
            "conv1 fwd: conv_forward_fast",
            "conv",
            lambda: fl.conv_forward_fast(X, p["W1"], p["b1"], cp),
        ),
        *fwd_kernel,
        ("pool fwd", "pool", lambda: fl.max_pool_forward_fast(a, pp)),
        ("relu1 fwd (on the pooled array)", "relu", lambda: L.relu_forward(pooled)),
        (f"affine2 fwd: matmul x @ W2, {mm(x2, W2)}", "matmul", lambda: matmul(x2, W2)),
        ("affine2 fwd: + b2", "bias", lambda: z_lin + p["b2"]),
        ("relu2 fwd", "relu", lambda: L.relu_forward(z)),
        (f"affine3 fwd: matmul x @ W3, {mm(h2, W3)}", "matmul", lambda: matmul(h2, W3)),
        ("affine3 fwd: + b3", "bias", lambda: s_lin + p["b3"]),
        ("softmax loss", "softmax", lambda: L.softmax_loss(scores, y)),
        (
            f"affine3 bwd: matmul dout @ W3.T, {mm(dscores, W3.T)}",
            "matmul",
            lambda: matmul(dscores, W3.T),
        ),
        (
            f"affine3 bwd: matmul x.T @ dout, {mm(h2.T, dscores)}",
            "matmul",
            lambda: matmul(h2.T, dscores),
        ),
        ("affine3 bwd: db3", "bias", lambda: dscores.sum(axis=0)),
        ("relu2 bwd", "relu", lambda: L.relu_backward(dh2, z)),
        (f"affine2 bwd: matmul dout @ W2.T, {mm(dz, W2.T)}", "matmul", lambda: matmul(dz, W2.T)),
        (f"affine2 bwd: matmul x.T @ dout, {mm(x2.T, dz)}", "matmul", lambda: matmul(x2.T, dz)),
        ("affine2 bwd: db2", "bias", lambda: dz.sum(axis=0)),
        ("relu1 bwd", "relu", lambda: L.relu_backward(dh1, pooled)),
        ("pool bwd", "pool", lambda: fl.max_pool_backward_fast(dp, pool_cache)),
        (
            "conv1 bwd: conv_backward_fast, dw and db only (cache.without_dx())",
            "conv",
            lambda: fl.conv_backward_fast(da, conv_cache.without_dx()),
        ),
        *bwd_kernels,
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
    conv_layers = by_kind.get("conv", 0.0)
    conv_kernels = sum(r["ms"] for r in rows if r["phase"].startswith("(in conv1"))
    by_kind["glue"] = step - sum(by_kind.values())
    return {
        "clock": "thread CPU time" if cpu else "wall clock",
        "threads": int(os.environ.get("OMP_NUM_THREADS", "0")),
        "extension_active": fl.extension_active(),
        "reps": reps,
        "rows": rows,
        "by_kind": by_kind,
        "step_ms": step,
        # the conv layers as the step runs them (forward, backward without dx), and the two
        # kernels inside them: the rest is the layers' Python and allocations
        "conv_layers_ms": conv_layers,
        "conv_kernels_ms": conv_kernels if fl.extension_active() else None,
    }


def run_profile(threads, reps):
    env = child_env(ROOT)
    cmd = child_command("--profile-child", "--threads", str(threads))
    cmd += ["--profile-reps", str(reps)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])
