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


CLI_PROBE = """
import json, os, sys, threading, time
import flows.cli
flows.cli.set_up_process()  # as the entry point, flows.cli.main, does first
import numpy as np
a = np.ones((512, 512), np.float32)
a @ a  # OpenBLAS's helper thread works, then spins until its timeout

def spinning():
    me, n = threading.get_native_id(), 0
    for tid in os.listdir("/proc/self/task"):
        if int(tid) != me:
            stat = open(f"/proc/self/task/{tid}/stat").read()
            n += stat[stat.rfind(")") + 2] == "R"
    return n

t0 = time.perf_counter()
while spinning() and time.perf_counter() - t0 < 1.0:
    time.sleep(0.0005)
print(json.dumps({
    "env": {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT")},
    "spin_s": time.perf_counter() - t0,
}))
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads thread states in /proc")
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="OpenBLAS starts no helper thread on one CPU")
@pytest.mark.parametrize("preset", [None, "24"])
def test_the_cli_sets_the_thread_wait_settings_before_numpy_loads_and_keeps_the_users(preset):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OPENBLAS_THREAD_TIMEOUT")
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["OPENBLAS_NUM_THREADS"] = "2"  # a helper thread that can spin
    if preset:
        env["OPENBLAS_THREAD_TIMEOUT"] = preset
    proc = subprocess.run(
        [sys.executable, "-c", CLI_PROBE], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["env"] == {"OMP_WAIT_POLICY": "passive", "OPENBLAS_THREAD_TIMEOUT": preset or "20"}
    # numpy's OpenBLAS read the setting (it loaded after it was made): its helper thread went
    # to sleep at once, not after OpenBLAS's default 2**28 cycles (~0.1 s)
    assert got["spin_s"] < 0.03, got
