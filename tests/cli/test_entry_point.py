"""Every command through the installed ``mlcore`` entry point (``.venv/bin/mlcore``), in a
subprocess, as a user meets it: a mistake refused before any work ends with exit code 1 and one
line ``error: ...`` naming the problem, no traceback; a usage error typer finds (an unknown
option, a value out of its range) with exit code 2; ``--help`` with 0.

Each case has a temporary MLflow store and ``PREFECT_HOME`` and runs in a temporary folder.
The commands that run flows (``run``, ``sweep``, ``rerun``, ``serve``) get a ``PREFECT_API_URL``
nothing listens on: else each would start its temporary Prefect server (a minute on a loaded
machine) before the option's refusal; the refusal comes before any call to that API. The cases
run three at a time (each process spends most of its time importing)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from flows.stack import free_port
from tests.conftest import prefect_home

pytestmark = pytest.mark.slow

MLCORE = Path(sys.executable).parent / "mlcore"
UNKNOWN_RUN = "0123456789abcdef0123456789abcdef"
NO_API = "no-api"  # a case that gets a PREFECT_API_URL nothing listens on
BAD_STORE = "bad-store"  # a case whose MLFLOW_TRACKING_URI is in a folder that does not exist
A_FILE = "a-file"  # a case run where a regular file named a-file exists

# id: (arguments, what the case needs, the pattern its one line must match)
REFUSED = {
    "run-housing-bad-float": (["run", "housing", "--alphas", "abc"], {NO_API},
                              r"--alphas: 'abc' is not a valid float"),
    "run-gradcheck-unknown-layer": (["run", "gradcheck", "--layers", "nosuch"], {NO_API},
                                    r"--layers: 'nosuch' is not one of affine, "),
    "run-convnet-resume-unknown-run": (["run", "convnet", "--resume", UNKNOWN_RUN], {NO_API},
                                       rf"no MLflow run '{UNKNOWN_RUN}' in sqlite:///"),
    "run-pipeline-bad-int": (["run", "pipeline", "--convnet-epochs", "two"], {NO_API},
                             r"--convnet-epochs: 'two' is not a valid int"),
    "sweep-nothing-to-sweep": (["sweep", "housing"], {NO_API},
                               r"--param: give at least one parameter to sweep \(NAME=SPEC\)"),
    "rerun-unknown-run": (["rerun", UNKNOWN_RUN], {NO_API}, rf"no MLflow run '{UNKNOWN_RUN}'"),
    "runs-unreachable-store": (["runs", "housing"], {BAD_STORE},
                               r"cannot reach the MLflow tracking store sqlite:///"),
    "sync-unreachable-store": (["sync"], {BAD_STORE},
                               r"cannot reach the MLflow tracking store sqlite:///"),
    "predict-unknown-run": (["predict", f"runs:/{UNKNOWN_RUN}/model", "rows.csv"], set(),
                            rf"cannot load model 'runs:/{UNKNOWN_RUN}/model': .*not found"),
    "trigger-without-server": (["trigger", "housing_regression/nightly"], set(),
                               r"PREFECT_API_URL is not set: start a server \(mlcore server\)"),
    # both refuse before they print anything (serve its deployments, server "starting ...")
    "serve-unreachable-api": (["serve"], {NO_API},
                              r"cannot reach the Prefect API at http://127\.0\.0\.1:\d+/api"),
    "server-logs-is-a-file": (["server", "--logs", "a-file"], {A_FILE},
                              r"--logs: a-file is a file, not a folder$"),
    # both refused before Prefect is imported
    "alerts-without-url": (["alerts"], set(), r"give --alert-url URL or set MLCORE_ALERT_URL$"),
    "alerts-window-too-short": (["alerts", "--alert-url", "http://127.0.0.1:9/hook",
                                 "--max-running", "0.1"], set(),
                                r"--max-running: 0.1 minutes is shorter than Prefect's least "
                                r"window, 10 s$"),
    "server-alert-url-not-http": (["server", "--alert-url", "ftp://x"], set(),
                                  r"--alert-url: 'ftp://x' is not an http:// or https://"),
}  # fmt: skip
USAGE = {  # typer's own refusals: exit code 2
    "run-housing-unknown-option": (["run", "housing", "--alpha", "1"], r"No such option: --alpha"),
    "runs-limit-out-of-range": (["runs", "housing", "--limit", "0"], r"'--limit'"),
    # ``ui`` checks no store and starts ``mlflow ui`` at once: only typer refuses before that
    "ui-port-not-an-int": (["ui", "--port", "abc"], r"Invalid value for '--port'"),
}  # fmt: skip


def mlcore(
    args: list[str], tmp: Path, needs: set[str] = frozenset()
) -> subprocess.CompletedProcess:
    """``mlcore ARGS`` in a fresh folder ``tmp`` with its own MLflow store and PREFECT_HOME;
    stdout and stderr together, as a terminal shows them."""
    tmp.mkdir(parents=True)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_API", "MLFLOW_", "MLCORE_ALERT_URL"))
    }
    store = tmp / "missing" / "mlflow.db" if BAD_STORE in needs else tmp / "mlflow.db"
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}"
    env["PREFECT_HOME"] = str(prefect_home(tmp / "prefect-home"))
    if A_FILE in needs:
        (tmp / "a-file").write_text("not a folder\n")
    if NO_API in needs:
        env["PREFECT_API_URL"] = f"http://127.0.0.1:{free_port()}/api"
    return subprocess.run(
        [str(MLCORE), *args], cwd=tmp, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, timeout=480,
    )  # fmt: skip


def test_the_entry_point_is_installed_beside_the_interpreter():
    assert MLCORE.is_file() and os.access(MLCORE, os.X_OK), MLCORE


def test_every_command_is_covered():
    from flows.cli import app
    from flows.cli.run import run_app

    commands = {c.name for c in app.registered_commands}
    commands |= {f"run {c.name}" for c in run_app.registered_commands}
    tried = [args for args, *_ in [*REFUSED.values(), *USAGE.values()]]
    covered = {" ".join(a[:2]) if a[0] == "run" else a[0] for a in tried}
    assert commands == covered, commands ^ covered


def test_every_command_through_the_installed_entry_point(tmp_path):
    """Each case's exit code and output, checked after all ran (three at a time). One test, so
    that pytest-xdist runs the cases once, on one worker: each starts a fresh interpreter."""
    cases = {k: (args, needs) for k, (args, needs, _) in REFUSED.items()}
    cases |= {k: (args, set()) for k, (args, _) in USAGE.items()}
    cases["help"] = (["run", "housing", "--help"], set())
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {k: pool.submit(mlcore, a, tmp_path / k, n) for k, (a, n) in cases.items()}
        results = {k: f.result() for k, f in futures.items()}
    wrong = {}
    for case, (_, _, pattern) in REFUSED.items():  # a user's mistake: exit 1, one error line
        proc = results[case]
        lines = [line for line in proc.stdout.splitlines() if line.strip()]
        if not (
            proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("error:")
            and re.search(pattern, lines[0]) and "Traceback" not in proc.stdout
        ):  # fmt: skip
            wrong[case] = (proc.returncode, proc.stdout[-2000:])
    for case, (_, pattern) in USAGE.items():  # typer's own refusals: exit 2, naming the option
        proc = results[case]
        if not (proc.returncode == 2 and re.search(pattern, proc.stdout)):
            wrong[case] = (proc.returncode, proc.stdout[-2000:])
    proc = results["help"]
    if not (proc.returncode == 0 and "Usage: mlcore run housing [OPTIONS]" in proc.stdout
            and "--alphas" in proc.stdout):  # fmt: skip
        wrong["help"] = (proc.returncode, proc.stdout[-2000:])
    assert not wrong, wrong
