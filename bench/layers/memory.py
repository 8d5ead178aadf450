"""An epoch's peak memory (``--memory``), in a child process with the mlcore worker's settings
(no torch)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from bench.layers.processes import ROOT, child_command, child_env


def peak_rss_bytes() -> int:
    """This process's peak resident set (VmHWM; unlike ru_maxrss it is not inherited from
    the parent across fork + exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_child(steps):
    import tracemalloc

    import numpy as np

    rss0 = peak_rss_bytes()
    tracemalloc.start()
    rng = np.random.default_rng(0)
    X = rng.standard_normal((49_000, 3, 32, 32), dtype=np.float32)
    y = rng.integers(0, 10, 49_000)
    data_bytes = X.nbytes + y.nbytes
    from mlcore.nn.cnn import ThreeLayerConvNet
    from mlcore.nn.optim import adam

    model = ThreeLayerConvNet(dtype=np.float32, weight_scale=1e-2, seed=0)
    configs = {k: {"learning_rate": 1e-3} for k in model.params}
    order = rng.permutation(len(X))
    n_steps = len(X) // 50 if steps is None else steps
    t0 = time.perf_counter()
    for i in range(n_steps):
        idx = order[i * 50 : (i + 1) * 50]
        loss, grads = model.loss(X[idx], y[idx])
        for k, g in grads.items():
            model.params[k], configs[k] = adam(model.params[k], g, configs[k])
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    rss = peak_rss_bytes()
    print(
        json.dumps(
            {
                "steps": n_steps,
                "seconds": elapsed,
                "dataset_bytes": data_bytes,
                "tracemalloc_peak_bytes": peak,
                "maxrss_growth_bytes": rss - rss0,
                "peak_over_dataset": peak / data_bytes,
                "final_loss": float(loss),
            }
        )
    )


def measure_memory(threads, steps):
    env = child_env(ROOT)
    cmd = child_command("--memory-child", "--threads", str(threads))
    if steps is not None:
        cmd += ["--memory-steps", str(steps)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])
