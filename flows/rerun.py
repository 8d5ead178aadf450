"""Rerun a past flow run from MLflow: same flow, same arguments (some optionally changed), then
compare what came out with what came out before."""

from __future__ import annotations

import json
from typing import Any

import mlflow
import prefect
from mlflow.exceptions import MlflowException

from flows.experiments import by_flow
from flows.params import parse_overrides
from tasks import environment, tracking

RERUN_TAG = "mlcore.rerun_of"


def original_call(run_id: str) -> tuple[Any, str, dict[str, Any]]:
    """The MLflow run ``run_id``, its flow's name and the flow's arguments as called."""
    try:
        run = tracking.client().get_run(run_id)
    except MlflowException:
        raise ValueError(f"no MLflow run {run_id!r} in {mlflow.get_tracking_uri()}") from None
    if tracking.reap_if_dead(run_id):  # its process is gone: KILLED, not RUNNING
        run = tracking.client().get_run(run_id)
    tags = run.data.tags
    if "mlflow.parentRunId" in tags:
        raise ValueError(
            f"run {run_id} is a child run of flow run {tags['mlflow.parentRunId']}; rerun that"
        )
    name = tags.get("mlcore.flow")
    if by_flow(name or "") is None or "mlcore.flow_params" not in tags:
        raise ValueError(f"run {run_id} was not made by an mlcore flow (no mlcore.flow tag)")
    return run, name, json.loads(tags["mlcore.flow_params"])


def rerun(run_id: str, sets: list[str] | None = None) -> dict[str, Any]:
    """Run the flow of ``run_id`` again with its arguments (``sets`` changed), tag the new
    run ``mlcore.rerun_of``, and compare. Returns ``{flow, original, new, changed,
    metrics_differ, data, code, reproduced}``: ``changed`` is ``{param: (old, new)}``,
    ``metrics_differ`` ``{metric: (old, new)}`` (a missing value is None; the experiment's
    ``timings`` are not compared), ``data`` and
    ``code`` ``(old, new)`` or None when equal; ``environment`` as :func:`compare_environments`
    returns it."""
    run, name, params = original_call(run_id)
    exp = by_flow(name)
    flow = exp.load_flow()
    overrides = parse_overrides(exp, sets or [])
    changed = {k: (params.get(k), v) for k, v in overrides.items() if params.get(k) != v}
    # a Prefect tag that tasks.tracking copies onto the new MLflow run as it creates it
    with prefect.tags(f"{RERUN_TAG}={run_id}"):
        result = flow(**{**params, **overrides})
    new_id = result["run_id"]
    new = tracking.client().get_run(new_id)
    old_m, new_m = run.data.metrics, new.data.metrics
    differ = {
        k: (old_m.get(k), new_m.get(k))
        for k in sorted(set(old_m) | set(new_m))
        if old_m.get(k) != new_m.get(k) and k not in exp.timings
    }
    data = _differs(run, new, "data.sha256")
    code = _differs(run, new, "git_commit")
    env = compare_environments(run, new)
    return {
        "flow": name,
        "original": run_id,
        "new": new_id,
        "changed": changed,
        "metrics_differ": differ,
        "data": data,
        "code": code,
        "environment": env,
        "reproduced": not (changed or differ or data or code or not env["same"]),
        "result": result,
    }


def _differs(old, new, tag: str) -> tuple[str | None, str | None] | None:
    a, b = old.data.tags.get(tag), new.data.tags.get(tag)
    return None if a == b else (a, b)


def compare_environments(old, new) -> dict[str, Any]:
    """The environments two flow runs recorded (tag ``env.python``, artifact
    ``environment/pip-freeze.txt``): ``{recorded, same, python, packages, count}``. ``recorded``
    is False when the original run has no freeze (made before runs recorded it); ``python`` is
    ``(old, new)`` or None when equal; ``packages`` ``{name: (old, new)}`` of the versions that
    differ (None: not installed); ``count`` the packages of the new run."""
    before, after = _recorded_freeze(old), _recorded_freeze(new)
    python = _differs(old, new, "env.python")
    if before is None or after is None:
        return {"recorded": False, "same": False, "python": python, "packages": {}, "count": 0}
    packages = environment.differences(before, after)
    return {
        "recorded": True,
        "same": not (python or packages),
        "python": python,
        "packages": packages,
        "count": len(after),
    }


def _recorded_freeze(run) -> dict[str, str] | None:
    folder, name = environment.FREEZE_ARTIFACT.rsplit("/", 1)
    listed = tracking.client().list_artifacts(run.info.run_id, folder)
    if not any(f.path == environment.FREEZE_ARTIFACT for f in listed):
        return None
    uri = f"{run.info.artifact_uri}/{environment.FREEZE_ARTIFACT}"
    return environment.parse_freeze(mlflow.artifacts.load_text(uri))
