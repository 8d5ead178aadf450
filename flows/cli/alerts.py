"""``mlcore alerts``: install, on the Prefect server, the alert on failed deployment runs."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from flows.cli.errors import UsageError, friendly_errors
from flows.cli.render import console

ALERT_URL_ENV = "MLCORE_ALERT_URL"

AlertUrl = Annotated[
    str | None,
    typer.Option(
        "--alert-url",
        help=f"Webhook the alert posts its JSON message to (default: ${ALERT_URL_ENV}), "
        "e.g. a Slack incoming webhook.",
        show_default=False,
    ),
]


def alert_url(given: str | None) -> str | None:
    """``--alert-url``, else ``$MLCORE_ALERT_URL``, else None; refused in one line if it is
    not an http(s) address (before Prefect is imported)."""
    url = given or os.environ.get(ALERT_URL_ENV) or None
    if url is not None and not url.startswith(("http://", "https://")):
        source = "--alert-url" if given else ALERT_URL_ENV
        raise UsageError(f"{source}: {url!r} is not an http:// or https:// address")
    return url


@friendly_errors
def alerts(
    alert_url_: AlertUrl = None,
    max_running: Annotated[
        float | None,
        typer.Option(
            "--max-running",
            help="Minutes after which a flow run still running is reported (default: "
            "$MLCORE_ALERT_MAX_RUNNING_MINUTES, else 240).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Install (or update) the alerts on the Prefect server at PREFECT_API_URL: a flow run of an
    mlcore deployment that ends Failed, Crashed or TimedOut, turns Late (no worker took it), is
    still running after --max-running minutes, or made a model worse than its champion posts
    one message to the URL."""
    from flows.alerts import max_running_minutes

    url = alert_url(alert_url_)
    minutes = max_running_minutes(max_running)
    if url is None:
        raise UsageError(f"give --alert-url URL or set {ALERT_URL_ENV}")
    if not os.environ.get("PREFECT_API_URL"):
        raise UsageError(
            "PREFECT_API_URL is not set: alerts live on a Prefect server (mlcore server); "
            "export its API address"
        )
    api_url = reachable_api(os.environ["PREFECT_API_URL"])
    install(url, api_url, minutes)


def reachable_api(api_url: str) -> str:
    """``api_url``, once its health check answers; else a ConnectionError naming it."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks.errors import error_line

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        with get_client(sync_client=True) as client:
            problem = client.api_healthcheck()
    if problem is not None:
        raise ConnectionError(f"cannot reach the Prefect API at {api_url}: {error_line(problem)}")
    return api_url


def install(url: str, api_url: str, max_running: float | None = None) -> None:
    """Install the alerts on ``api_url`` and say so in one line."""
    from flows.alerts import install_alerts, max_running_minutes

    minutes = max_running_minutes(max_running)
    install_alerts(url, api_url, minutes)
    console.print(
        f"alerts: failed, late and still-running (after {minutes:g} min) flow runs of mlcore "
        f"deployments and worse models -> {url} (Prefect API {api_url})",
        soft_wrap=True,
    )
