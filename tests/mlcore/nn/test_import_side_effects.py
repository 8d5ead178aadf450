"""Importing mlcore changes nothing process-wide: a library that writes the environment, the
warning filters or the logging configuration changes every other library in the process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

# Run in a fresh interpreter: first every third-party module that mlcore imports (their own
# import-time effects are not mlcore's), then a snapshot, then every mlcore module.
PROBE = r"""
import ast, importlib, json, logging, os, pkgutil, sys, warnings
from pathlib import Path

import mlcore

root = Path(mlcore.__file__).parent
names = ["mlcore"] + [m.name for m in pkgutil.walk_packages([str(root)], "mlcore.")]
third_party = set()
for path in root.rglob("*.py"):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            third_party.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            third_party.add(node.module)
for name in sorted(third_party):
    if not name.startswith("mlcore"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass


def state():
    rl = logging.getLogger()
    return {
        "environ": dict(os.environ),
        "filters": [repr(f) for f in warnings.filters],
        "root_level": rl.level,
        "root_handlers": [repr(h) for h in rl.handlers],
        "logging_disable": logging.root.manager.disable,
    }


before = state()
for name in names:
    importlib.import_module(name)
after = state()
print(json.dumps({"modules": names, "before": before, "after": after}))
"""


def test_importing_every_mlcore_module_changes_no_process_state():
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # the walk really reached the modules with a history of import-time effects
    assert {"mlcore.nn.fast_layers", "mlcore.nn._fast", "mlcore.nn.solver"} <= set(
        result["modules"]
    )
    before, after = result["before"], result["after"]
    assert after["environ"] == before["environ"]
    assert "OMP_WAIT_POLICY" not in after["environ"]
    assert after["filters"] == before["filters"]
    assert after["root_level"] == before["root_level"]
    assert after["root_handlers"] == before["root_handlers"]
    assert after["logging_disable"] == before["logging_disable"]


IDLE_PROBE = r"""
import json, os, threading, time
import numpy as np

# numpy's own start-up, not mlcore's: its OpenBLAS worker spins about 0.1 s after it starts
# (as after each of its calls), which would fall into the window below when the machine is slow
time.sleep(0.5)
from mlcore.nn.cnn import ThreeLayerConvNet

model = ThreeLayerConvNet(input_dim=(3, 16, 16), num_filters=8, hidden_dim=32, seed=0,
                          dtype=np.float32)
X = np.random.default_rng(0).standard_normal((64, 3, 16, 16)).astype(np.float32)
y = np.arange(64) % 10
for _ in range(5):
    model.loss(X, y)  # forward and backward: every kernel's loop on 2 threads

def busy_ticks():
    me, n = threading.get_native_id(), 0
    for tid in os.listdir("/proc/self/task"):
        if int(tid) != me:
            fields = open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()
            n += int(fields[11]) + int(fields[12])  # utime + stime, clock ticks
    return n

before = busy_ticks()
time.sleep(0.5)
print(json.dumps({"threads": len(os.listdir("/proc/self/task")),
                  "idle_ticks": busy_ticks() - before, "hz": os.sysconf("SC_CLK_TCK")}))
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads thread times in /proc")
def test_plain_import_no_settings_and_the_kernels_threads_sleep_when_idle():
    """mlcore imported plainly, no thread-wait variable set by anyone: after a training step the
    kernels' worker threads sleep, using no CPU (an OpenMP runtime without OMP_WAIT_POLICY,
    or OpenBLAS after a call, would keep a thread spinning on a core the next process needs)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OPENBLAS_THREAD_TIMEOUT")
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "2"
    proc = subprocess.run(
        [sys.executable, "-c", IDLE_PROBE], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["threads"] >= 2, got  # the pool's worker exists
    # half a second idle: a spinning thread would use ~0.5 s of CPU (50 ticks at 100 Hz)
    assert got["idle_ticks"] <= 0.02 * got["hz"], got


def test_the_cli_sets_no_thread_setting():
    """mlcore needs no thread-wait variable: the CLI's process set-up leaves them alone."""
    from flows.cli.process import ENVIRONMENT_DEFAULTS

    assert not {"OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT", "GOMP_SPINCOUNT"} & set(
        ENVIRONMENT_DEFAULTS
    )
