"""``mlcore serve``, ``mlcore server`` and ``mlcore trigger``: operating the deployments."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from flows.cli.alerts import AlertUrl, alert_url, install
from flows.cli.errors import UsageError, friendly_errors, preflight
from flows.cli.render import console


@friendly_errors
def serve(
    limit: Annotated[int | None, typer.Option(help="Most flow runs at once.")] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            help="The prefect.yaml whose deployments to serve (default: the project's). "
            "Entrypoints are read from the project's folder.",
        ),
    ] = None,
) -> None:
    """Run every deployment's schedule from prefect.yaml in this process (no work pool).

    Uses PREFECT_API_URL if set (e.g. a server from `mlcore server`), else starts a local
    Prefect server with its scheduler, stopped with this command. Ctrl-C stops it."""
    from flows.deployments import PREFECT_YAML, deployment_problems, read_spec

    path = file or PREFECT_YAML
    if not path.is_file():
        raise UsageError(f"--file: {path} is not a file")
    problems = deployment_problems(read_spec(path), defaults=False)
    if problems:
        raise UsageError(f"--file: {path}: {problems[0]}")
    _serve(path, limit)


@preflight(flows=True, scheduler=True)
def _serve(path: Path, limit: int | None) -> None:
    from prefect.client.orchestration import get_client

    from flows.deployments import declared_deployments, serve_all
    from tasks.errors import error_line

    with get_client(sync_client=True) as client:  # refused before anything is listed
        problem = client.api_healthcheck()
        if problem is not None:
            raise ConnectionError(
                f"cannot reach the Prefect API at {client.api_url}: {error_line(problem)}"
            )
        api_url = client.api_url
    deployments = declared_deployments(path)
    for dep in deployments:
        crons = ", ".join(s["cron"] for s in dep.get("schedules") or []) or "on request"
        console.print(f"serving [bold]{dep['full_name']}[/] ({crons})")
    console.print(f"Prefect API: {api_url}")
    serve_all(deployments, limit=limit)


@friendly_errors
def server(
    host: Annotated[str, typer.Option(help="Address both servers bind to.")] = "127.0.0.1",
    prefect_port: Annotated[int, typer.Option(help="Port of the Prefect server.")] = 4200,
    mlflow_port: Annotated[int, typer.Option(help="Port of the MLflow server.")] = 5000,
    prefect_db: Annotated[
        str | None,
        typer.Option(
            help="Prefect database URL (default: SQLite in PREFECT_HOME); "
            "e.g. postgresql+asyncpg://user@127.0.0.1/prefect"
        ),
    ] = None,  # fmt: skip
    mlflow_backend: Annotated[
        str, typer.Option(help="MLflow backend store URI, e.g. postgresql://user@127.0.0.1/mlflow")
    ] = "sqlite:///mlflow.db",
    artifacts: Annotated[
        Path, typer.Option(help="Folder the MLflow server keeps artifacts in.")
    ] = Path("mlartifacts"),
    logs: Annotated[Path, typer.Option(help="Folder of the servers' logs.")] = Path("logs"),
    alert_url_: AlertUrl = None,
) -> None:
    """Start the local stack: a Prefect server and an MLflow tracking server, until Ctrl-C.
    With --alert-url (or MLCORE_ALERT_URL), installs the alert on failed deployment runs
    (`mlcore alerts`) once both answer."""
    from flows.stack import local_stack

    url = alert_url(alert_url_)
    if url is not None:  # its window, refused before anything starts
        from flows.alerts import max_running_minutes

        max_running_minutes()
    for option, folder in (("--logs", logs), ("--artifacts", artifacts)):
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"{option}: {folder} is a file, not a folder")
    _stop_on_sigterm()
    console.print(f"starting the Prefect and MLflow servers (logs in [bold]{logs}[/]) ...")
    with local_stack(
        host, prefect_port, mlflow_port, prefect_db, mlflow_backend, artifacts, logs
    ) as (
        prefect_srv,
        mlflow_srv,
    ):
        console.print(
            f"Prefect API  {prefect_srv.url}   (UI {prefect_srv.url.removesuffix('/api')})"
        )
        console.print(f"MLflow       {mlflow_srv.url}")
        console.print("in another shell:")
        console.print(
            f"  export PREFECT_API_URL={prefect_srv.url} MLFLOW_TRACKING_URI={mlflow_srv.url}"
        )
        try:
            if url is None:
                console.print("alerts: off (give --alert-url or set MLCORE_ALERT_URL)")
            else:
                install(url, prefect_srv.url)
            while all(s.process.poll() is None for s in (prefect_srv, mlflow_srv)):
                time.sleep(1)
            dead = next(s for s in (prefect_srv, mlflow_srv) if s.process.poll() is not None)
            raise RuntimeError(f"{dead.name} stopped: {dead.tail()}")
        except KeyboardInterrupt:
            console.print("stopping ...")


@friendly_errors
def trigger(
    deployment: Annotated[
        str, typer.Argument(help="FLOW/DEPLOYMENT, e.g. housing_regression/nightly.")
    ],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Parameter override key=value (repeatable).")
    ] = None,
    wait: Annotated[bool, typer.Option(help="Wait until the flow run ends.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait at most.")] = 3600.0,
) -> None:
    """Run a deployment on the Prefect server at PREFECT_API_URL (like `prefect deployment run
    ... -p key=value`), optionally waiting for it."""
    from flows.deployments import run_on_server

    run = run_on_server(deployment, set_ or [], wait=wait, timeout=timeout)
    console.print(f"flow run [bold]{run.id}[/] ({run.name}): {run.state_name}")
    if wait and run.state_name != "Completed":
        raise RunFailed(f"flow run {run.id} ended {run.state_name}: {run.state.message or ''}")


def _stop_on_sigterm() -> None:
    """SIGTERM and SIGHUP stop the stack like Ctrl-C does (the servers run in process groups
    of their own, so without this they would outlive a terminated `mlcore server`)."""
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt)


class RunFailed(RuntimeError):
    """A triggered flow run ended in a state other than Completed."""
