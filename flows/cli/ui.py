"""``mlcore ui``: the MLflow UI on this machine's tracking store."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Annotated

import typer

from flows.cli.errors import friendly_errors
from flows.cli.render import console


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
    console.print(f"MLflow UI for {uri} at http://{host}:{port} (Ctrl-C to stop)")
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
           "--host", host, "--port", str(port), "--workers", "1"]  # fmt: skip
    # the job runner would start several worker processes a local UI has no use for
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    try:
        raise typer.Exit(subprocess.call(cmd, env=env))
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
