"""``import flows.cli`` changes nothing process-wide; ``main()``'s set-up makes the settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli.process import ENVIRONMENT_DEFAULTS, LOGGER_LEVELS

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, logging, os, sys

def state():
    manager = logging.root.manager
    return {
        "environ": dict(os.environ),
        "levels": {n: logging.getLogger(n).level for n in [*manager.loggerDict, *NAMES]},
        "root": logging.root.level,
    }

NAMES = json.loads(sys.argv[1])
before = state()
import flows.cli
imported = state()
loaded = [m for m in ("numpy", "pandas", "prefect", "mlflow") if m in sys.modules]
flows.cli.set_up_process()
print(json.dumps({"before": before, "imported": imported, "loaded": loaded, "set_up": state()}))
"""


def test_importing_the_cli_changes_nothing_and_its_set_up_makes_the_settings():
    # a fresh interpreter without any of the settings (the test session has them: conftest)
    env = {k: v for k, v in os.environ.items() if k not in ENVIRONMENT_DEFAULTS}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(list(LOGGER_LEVELS))],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    before, imported, set_up = got["before"], got["imported"], got["set_up"]
    assert imported["environ"] == before["environ"]
    assert imported["root"] == before["root"]
    assert imported["levels"] == {n: before["levels"].get(n, 0) for n in imported["levels"]}
    assert all(imported["levels"][name] == 0 for name in LOGGER_LEVELS)  # NOTSET
    # nor does the import load what reads those settings as it loads
    assert got["loaded"] == []
    # the entry point's set-up makes them, every one
    assert {k: set_up["environ"].get(k) for k in ENVIRONMENT_DEFAULTS} == ENVIRONMENT_DEFAULTS
    assert {n: set_up["levels"][n] for n in LOGGER_LEVELS} == LOGGER_LEVELS


def test_the_set_up_keeps_a_value_the_user_set(monkeypatch):
    from flows.cli import set_up_process

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "5")
    set_up_process()
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "5"


def test_the_mlcore_script_runs_main():
    """pyproject.toml's entry point is main(), which makes the settings before the command."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"mlcore": "flows.cli:main"}
    env = {k: v for k, v in os.environ.items() if k not in ENVIRONMENT_DEFAULTS}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    code = (
        "import os, sys, flows.cli\n"
        "@flows.cli.app.command('env-probe')\n"
        "def probe():\n"
        "    env = os.environ\n"
        "    print(env['PREFECT_SERVER_ANALYTICS_ENABLED'], env['MLFLOW_HTTP_REQUEST_TIMEOUT'])\n"
        "sys.argv = ['mlcore', 'env-probe']\n"
        "flows.cli.main()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["false", "30"]
