"""The temporary Prefect API server of a command that runs flows
(``flows.stack.own_prefect_server``): started with ``prefect server start``, used through
``PREFECT_API_URL``, stopped with its process; nothing started when Prefect's settings already
name an API. Each case runs in a fresh process, as the ``mlcore`` command does (it changes that
process's environment)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from flows.stack import TEMPORARY_SERVER_NICE

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import json, os
from flows.stack import own_prefect_server

server = own_prefect_server()
out = {"server": None}
if server is not None:
    server.wait_healthy()
    from prefect import flow
    from prefect.context import get_run_context
    from prefect.settings import get_current_settings

    @flow
    def where() -> str:
        return str(get_run_context().client.api_url)

    out = {"server": server.url, "pid": server.process.pid, "env": os.environ["PREFECT_API_URL"],
           "settings": get_current_settings().api.url, "flow_api": where(),
           "cmdline": " ".join(server.process.args), "own_nice": os.nice(0),
           "server_nice": int(open(f"/proc/{server.process.pid}/stat").read().rsplit(")", 1)[1]
                              .split()[16])}
print(json.dumps(out))
"""


def _run(env: dict) -> dict:
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _servers_of(home: Path) -> list[psutil.Process]:
    """Live ``prefect server start`` processes whose PREFECT_HOME is ``home``."""
    found = []
    for p in psutil.process_iter():
        try:
            started = "server start" in " ".join(p.cmdline())
            if started and p.environ().get("PREFECT_HOME") == str(home):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


def _env(home: Path) -> dict:
    env = {**os.environ, "PREFECT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    return env


def _gone_soon(home: Path, bound: float = 30.0) -> list[psutil.Process]:
    deadline = time.monotonic() + bound
    while (left := _servers_of(home)) and time.monotonic() < deadline:
        time.sleep(0.3)
    return left


def test_a_flow_reports_to_the_started_server_which_stops_with_the_process(tmp_path):
    home = tmp_path / "prefect"
    out = _run(_env(home))
    url = out["server"]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/api")
    # the process, Prefect's settings in it, and the flow run itself use it
    assert out["env"] == out["settings"] == out["flow_api"].rstrip("/") == url
    assert "-m prefect server start --host 127.0.0.1" in out["cmdline"]
    assert "--no-ui" in out["cmdline"] and "--no-scheduler" in out["cmdline"]
    assert (home / "prefect.db").is_file()  # the database of PREFECT_HOME, as Prefect's own
    # niced: its bookkeeping yields the CPU to the training it records
    assert out["server_nice"] == min(out["own_nice"] + TEMPORARY_SERVER_NICE, 19)
    assert _gone_soon(home) == []


def test_nothing_is_started_when_the_settings_name_an_api(tmp_path):
    # in the environment
    home = tmp_path / "env"
    out = _run({**_env(home), "PREFECT_API_URL": "http://127.0.0.1:9/api"})
    assert out == {"server": None}
    assert _servers_of(home) == []
    # in the active profile: the server started early is stopped unused
    home = tmp_path / "profile"
    home.mkdir()
    (home / "profiles.toml").write_text(
        'active = "remote"\n\n[profiles.remote]\nPREFECT_API_URL = "http://127.0.0.1:9/api"\n'
    )
    out = _run(_env(home))
    assert out == {"server": None}
    assert _gone_soon(home) == []
