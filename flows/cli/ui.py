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
