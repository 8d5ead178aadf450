"""Importing mlcore changes nothing process-wide: a library that writes the environment, the
warning filters or the logging configuration changes every other library in the process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

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
