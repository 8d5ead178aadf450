"""Alerts for the deployments' runs: Prefect automations that post a message when a flow run
of an mlcore deployment fails, or makes a model worse than the registry's champion.

Everything lives on the Prefect server: a notification block (``CustomWebhookNotificationBlock``,
a JSON POST) and an automation whose trigger is a flow run tagged ``mlcore`` (every deployment
of prefect.yaml carries that tag, and a flow run inherits its deployment's tags) entering
Failed, Crashed or TimedOut, and whose action sends one message through the block. The server's
automation services (triggers, actions) send it, so nothing of mlcore needs to run for an alert
to go out. A second automation does the same for the event ``mlcore.model.regressed``
(tasks.registry.signal_regression). Two more are proactive, for the runs that never end: a
flow run of a deployment turned Late (no worker picked it up: the worker is down, the pool
paused; Prefect's late-runs service marks it) and a flow run still Running after a window
(``MLCORE_ALERT_MAX_RUNNING_MINUTES``, 240 by default: a Prefect proactive trigger, Running
not followed by an end within the window). None fires on Scheduled, the state runs are created
in days ahead. ``install_alerts`` creates them, or updates them in place: running it again
leaves one block and one automation of each name.
"""

from __future__ import annotations

import os
from datetime import timedelta
from uuid import UUID

ALERT_TAG = "mlcore"
BLOCK_NAME = "mlcore-alerts"
AUTOMATION_NAME = "mlcore: a deployment's flow run failed"
FAILED_STATES = ("Failed", "Crashed", "TimedOut")
# the deployment's name, or the flow's for a tagged run of no deployment
NAME = "{{ deployment.name if deployment else flow.name }}"
SUBJECT = f"mlcore: {NAME} {{{{ flow_run.state.name }}}}"

# the last line of a message when the MLflow store is no server (no UI to link to)
NO_MLFLOW_URL = "no link: the MLflow store is on the machine that ran it (`mlcore ui` there)"

# Prefect renders this (Jinja, sandboxed) on the server when the automation fires, with the
# objects the triggering event names: the flow run (its state taken from the event), its flow
# and its deployment. ``__UI__`` becomes the link to the flow run's page (``flow_run_link``);
# the MLflow link is the flow run's tag ``mlflow.url=`` (tasks.tracking.provenance).
BODY = """\
Deployment: {{ flow.name }}/{{ deployment.name }}
Flow run: {{ flow_run.name }} ({{ flow_run.id }})
MLflow run: {% for tag in flow_run.tags if tag.startswith("mlflow.run_id=") %}\
{{ tag[14:] }}{% else %}(none recorded){% endfor %}
State: {{ flow_run.state.name }}
Reason: {{ (flow_run.state.message or "no message") | replace("\\n", " ") }}
Link: __UI__
MLflow: {% for tag in flow_run.tags if tag.startswith("mlflow.url=") %}{{ tag[11:] }}\
{% else %}__NO_MLFLOW__{% endfor %}""".replace("__NO_MLFLOW__", NO_MLFLOW_URL)

# A model worse than its champion (tasks.registry.signal_regression emits the event from the
# flow run that made it; the event names that flow run among its related resources).
REGRESSION_AUTOMATION_NAME = "mlcore: a model regressed"
REGRESSION_EVENT = "mlcore.model.regressed"
REGRESSION_SUBJECT = "mlcore: {{ event.payload.model }} regressed"
REGRESSION_BODY = """\
Model: {{ event.payload.model }}
Regression: {{ event.payload.summary }}
MLflow run: {{ event.payload.run_id }} (the champion's: {{ event.payload.champion_run_id }})
Flow run: {{ flow_run.name }} ({{ flow_run.id }})
Link: __UI__
MLflow: {{ event.payload.run_url or "__NO_MLFLOW__" }}""".replace("__NO_MLFLOW__", NO_MLFLOW_URL)

# A run that never starts, or never ends
LATE_AUTOMATION_NAME = "mlcore: a scheduled run is late"
LATE_SUBJECT = f"mlcore: {NAME} is late"
LATE_BODY = "Not started: no worker picked it up (is the worker running? the pool paused?)\n" + BODY
RUNNING_AUTOMATION_NAME = "mlcore: a flow run is still running"
RUNNING_SUBJECT = f"mlcore: {NAME} still running"
RUNNING_BODY = "Still running after __WINDOW__ (no end yet: hung? too slow?)\n" + BODY
MAX_RUNNING_ENV = "MLCORE_ALERT_MAX_RUNNING_MINUTES"
DEFAULT_MAX_RUNNING_MINUTES = 240.0
ENDED_STATES = ("Completed", "Failed", "Crashed", "Cancelled", "TimedOut")

# The webhook's JSON body: a Slack (or Mattermost) incoming webhook takes it as it is.
WEBHOOK_JSON = {"text": "{{subject}}\n{{body}}"}


def flow_run_link() -> str:
    """The Prefect UI's page of the triggering flow run, as a template: the UI's address is
    the client's (``PREFECT_UI_URL``, by default PREFECT_API_URL without ``/api``), written
    in here because the server's ``ui_url`` filter knows no address unless the server itself
    was given PREFECT_UI_URL (``prefect server start`` is not)."""
    from prefect.utilities.urls import url_for

    marker = "00000000-0000-0000-0000-000000000000"
    url = url_for("flow-run", obj_id=marker, url_type="ui")
    if url is None:
        raise ValueError("no Prefect UI address: set PREFECT_API_URL (or PREFECT_UI_URL)")
    return url.replace(marker, "{{ flow_run.id }}")


def alert_automation(block_id: UUID):
    """The automation (not yet saved): a flow run tagged ``mlcore`` entering one of
    ``FAILED_STATES`` sends one message through the notification block ``block_id``."""
    return _automation(
        AUTOMATION_NAME,
        "Posts a message when a flow run of an mlcore deployment fails "
        "(installed by `mlcore alerts`).",
        _trigger({f"prefect.flow-run.{state}" for state in FAILED_STATES}, "prefect.flow-run.*"),
        SUBJECT,
        BODY,
        block_id,
    )


def regression_automation(block_id: UUID):
    """The automation (not yet saved): an ``mlcore.model.regressed`` event from a flow run
    tagged ``mlcore`` sends one message through the notification block ``block_id``."""
    return _automation(
        REGRESSION_AUTOMATION_NAME,
        "Posts a message when a run of an mlcore deployment made a model worse than the "
        "registry's champion (installed by `mlcore alerts`).",
        _trigger({REGRESSION_EVENT}, "mlcore.model.*"),
        REGRESSION_SUBJECT,
        REGRESSION_BODY,
        block_id,
    )


def late_automation(block_id: UUID):
    """The automation (not yet saved): a flow run tagged ``mlcore`` turning Late sends one
    message through the notification block ``block_id``."""
    return _automation(
        LATE_AUTOMATION_NAME,
        "Posts a message when a scheduled run of an mlcore deployment is late: no worker "
        "picked it up (installed by `mlcore alerts`).",
        _trigger({"prefect.flow-run.Late"}, "prefect.flow-run.*"),
        LATE_SUBJECT, LATE_BODY, block_id,
    )  # fmt: skip


def running_automation(block_id: UUID, minutes: float):
    """The automation (not yet saved): a flow run tagged ``mlcore`` still Running ``minutes``
    after it started (no Completed, Failed, Crashed, Cancelled or TimedOut within that window)
    sends one message through the notification block ``block_id``."""
    from prefect.events.schemas.automations import EventTrigger, Posture

    trigger = EventTrigger(
        after={"prefect.flow-run.Running"},
        expect={f"prefect.flow-run.{state}" for state in ENDED_STATES},
        for_each={"prefect.resource.id"},
        match={"prefect.resource.id": "prefect.flow-run.*"},
        match_related=_tagged(),
        posture=Posture.Proactive,
        threshold=1,
        within=timedelta(minutes=minutes),
    )
    return _automation(
        RUNNING_AUTOMATION_NAME,
        f"Posts a message when a flow run of an mlcore deployment is still running {minutes:g} "
        "minutes after it started (installed by `mlcore alerts`).",
        trigger, RUNNING_SUBJECT, RUNNING_BODY.replace("__WINDOW__", f"{minutes:g} min"),
        block_id,
    )  # fmt: skip


def max_running_minutes(given: float | None = None) -> float:
    """The window of the still-running alert: ``given``, else ``$MLCORE_ALERT_MAX_RUNNING_MINUTES``,
    else 240; in minutes, at least 10 s (Prefect's least window of a proactive trigger)."""
    text = str(given) if given is not None else os.environ.get(MAX_RUNNING_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_RUNNING_MINUTES
    try:
        minutes = float(text)
    except ValueError:
        minutes = -1.0
    source = "--max-running" if given is not None else MAX_RUNNING_ENV
    if not 0 < minutes < float("inf"):
        raise ValueError(f"{source}: {text!r} is not a positive number of minutes")
    if minutes * 60 < 10:
        raise ValueError(f"{source}: {text} minutes is shorter than Prefect's least window, 10 s")
    return minutes


def _tagged() -> dict:
    """The related resource every alert's event must have: the tag ``mlcore``."""
    return {"prefect.resource.role": "tag", "prefect.resource.id": f"prefect.tag.{ALERT_TAG}"}


def _trigger(expect: set[str], resource: str):
    """A reactive trigger: one of the events ``expect`` of a resource matching ``resource``
    related to the tag ``mlcore``."""
    from prefect.events.schemas.automations import EventTrigger, Posture

    return EventTrigger(
        expect=expect, match={"prefect.resource.id": resource}, match_related=_tagged(),
        posture=Posture.Reactive, threshold=1,
    )  # fmt: skip


def _automation(name: str, description: str, trigger, subject: str, body: str, block_id: UUID):
    """An automation on ``trigger``: one message (``subject``, ``body`` with the flow run's UI
    link for ``__UI__``) through the notification block ``block_id``."""
    from prefect.automations import Automation
    from prefect.events.actions import SendNotification

    return Automation(
        name=name,
        description=description,
        trigger=trigger,
        actions=[
            SendNotification(
                block_document_id=block_id,
                subject=subject,
                body=body.replace("__UI__", flow_run_link()),
            )
        ],
    )


def _save(automation, client) -> UUID:
    """Create ``automation``, or update the one of its name in place (deleting duplicates)."""
    existing = client.read_automations_by_name(automation.name)
    if not existing:
        return automation.create().id
    automation.id = existing[0].id
    automation.update()
    for duplicate in existing[1:]:
        client.delete_automation(duplicate.id)
    return automation.id


def install_alerts(url: str, api_url: str | None = None, max_running: float | None = None) -> UUID:
    """Create or update, on the Prefect server at ``api_url`` (default: the one this process
    is configured for, PREFECT_API_URL), the notification block posting to ``url``, the
    automation alerting on failed flow runs of mlcore deployments (its id is returned), the
    one alerting on regressed models, on late runs and on runs still running after
    ``max_running`` minutes (`max_running_minutes`). Idempotent: the block is overwritten, each
    automation updated in place (and any duplicate of it, made by hand, deleted)."""
    import contextlib

    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if not url.startswith(("http://", "https://")):
        raise ValueError(f"alert URL {url!r} is not an http:// or https:// address")
    minutes = max_running_minutes(max_running)
    scope = (
        temporary_settings(updates={PREFECT_API_URL: api_url})
        if api_url
        else contextlib.nullcontext()
    )
    with scope:
        if not PREFECT_API_URL.value():
            raise ValueError(
                "PREFECT_API_URL is not set: alerts live on a Prefect server "
                "(mlcore server); export its API address"
            )
        block = CustomWebhookNotificationBlock(name=BLOCK_NAME, url=url, json_data=WEBHOOK_JSON)
        block_id = block.save(BLOCK_NAME, overwrite=True)
        with get_client(sync_client=True) as client:
            _save(regression_automation(block_id), client)
            _save(late_automation(block_id), client)
            _save(running_automation(block_id, minutes), client)
            return _save(alert_automation(block_id), client)
