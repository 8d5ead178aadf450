"""``mlcore ui``: the MLflow UI on this machine's tracking store."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from typing import Annotated

import typer

from flows.cli.errors import friendly_errors
from flows.cli.render import console
from flows.stack import die_with_parent, stop_group, tie, untie
from tasks.killed import RunKilled

# MLflow 3's UI opens an experiment on its GenAI overview (traces, token usage) unless the
# browser has stored the other choice; these query parameters open it in its model-training
# mode on its runs, beside a chart of each metric of the top-level runs (a flow's or a
# sweep's run, each with its best_* metrics: one bar per run, comparable across nights)
RUNS_VIEW = "runs?workflowType=machine_learning&compareRunsMode=CHART"


def experiment_links(uri: str, base: str) -> list[tuple[str, str]]:
    """(name, link to its runs in the UI) for each experiment of the store ``uri``, by name;
    none for a SQLite file that does not exist yet."""
    from mlflow import MlflowClient

    from tasks.tracking import sqlite_path

    path = sqlite_path(uri)
    if path is not None and not os.path.exists(path):
        return []
    experiments = MlflowClient(uri).search_experiments()
    return [
        (e.name, f"{base}/#/experiments/{e.experiment_id}/{RUNS_VIEW}")
        for e in sorted(experiments, key=lambda e: e.name)
    ]


@friendly_errors
def ui(
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the UI.")] = 5000,
) -> None:
    """Start the MLflow UI on this machine's tracking store (MLFLOW_TRACKING_URI or ./mlflow.db)."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    if uri.startswith(("http://", "https://")):
        console.print(f"MLFLOW_TRACKING_URI is a tracking server: its UI is at {uri}")
        return
    # mlflow ui exits 0 when its port is taken (uvicorn's bind error is only logged)
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise OSError(
                f"cannot serve the UI on {host}:{port}: {exc.strerror}; pick another --port"
            ) from None
    console.print(f"MLflow UI for {uri} at http://{host}:{port} (Ctrl-C to stop)")
    for name, link in experiment_links(uri, f"http://{host}:{port}"):
        console.print(f"  {name}: {link}", soft_wrap=True)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
           "--host", host, "--port", str(port), "--workers", "1"]  # fmt: skip
    # the job runner would start several worker processes a local UI has no use for
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    # its own process group (mlflow ui runs uvicorn in a child process), stopped whole when
    # this command ends, however it ends: Ctrl-C, SIGTERM, SIGHUP, or a SIGKILL (the watchdog)
    proc = subprocess.Popen(
        cmd, env=env, stdin=subprocess.DEVNULL, start_new_session=True,
        preexec_fn=die_with_parent(),
    )  # fmt: skip
    watchdog = tie(proc)
    try:
        code = proc.wait()
    except RunKilled as killed:
        if killed.signum != signal.SIGINT:
            raise  # SIGTERM, SIGHUP: one line and 128 + the signal's number
        code = 0  # Ctrl-C is how a user stops it
    finally:
        stop_group(proc)
        untie(watchdog)
    if code:  # its own error is on the terminal above this line
        raise RuntimeError(f"mlflow ui exited with {code}")
