"""Resuming a run that stopped: may it be continued, with which arguments, and from where."""

from __future__ import annotations

import json

import mlflow

from tasks.tracking.ownership import reap_if_dead
from tasks.tracking.provenance import git_commit
from tasks.tracking.store import client


def resumable_params(run_id: str, flow: str, finished_if: tuple[str, str] | None = None) -> dict:
    """The recorded arguments (tag ``mlcore.flow_params``) of ``run_id``, a run of ``flow``
    that may be resumed: it is not FINISHED (unless it has the tag ``finished_if`` = (name,
    value): a finished run with something left to add) nor still RUNNING, and was made by this
    code. Anything else is a ValueError naming the reason."""
    try:
        run = client().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise ValueError(f"no MLflow run {run_id!r} in {mlflow.get_tracking_uri()}") from None
    tags = run.data.tags
    if tags.get("mlcore.flow") != flow or "mlcore.flow_params" not in tags:
        made_by = tags.get("mlcore.flow") or "no mlcore flow"
        raise ValueError(f"cannot resume run {run_id}: it was made by {made_by}, not {flow}")
    status = run.info.status
    if status == "RUNNING" and reap_if_dead(run_id):  # its process is gone: now KILLED
        status = client().get_run(run_id).info.status
    if status == "FINISHED" and not (finished_if and tags.get(finished_if[0]) == finished_if[1]):
        raise ValueError(f"cannot resume run {run_id}: it FINISHED; nothing to resume")
    if status == "RUNNING":
        raise ValueError(f"cannot resume run {run_id}: run is still RUNNING")
    if tags.get("git_commit") != git_commit():
        raise ValueError(
            f"cannot resume run {run_id}: it was made by other code (git_commit "
            f"{tags.get('git_commit')}, this is {git_commit()})"
        )
    return json.loads(tags["mlcore.flow_params"])


def last_metric_steps(run_id: str, names: list[str]) -> dict[str, int]:
    """The highest step logged so far of each metric in ``names`` that has one."""
    out = {}
    for name in names:
        steps = [m.step for m in client().get_metric_history(run_id, name)]
        if steps:
            out[name] = max(steps)
    return out
