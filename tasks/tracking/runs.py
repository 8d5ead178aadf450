"""A flow's run and its children: created, reopened (a resumed run) and ended FINISHED,
FAILED or KILLED -- never left RUNNING by a flow that failed.

Every function takes an explicit ``run_id``: Prefect runs tasks in worker threads and MLflow's
active run is per thread, so nothing here relies on a run being "active" except the child
runs, which are started in the thread that logs them with an explicit ``parent_run_id``.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator, Mapping

import mlflow
from mlflow.entities import RunStatus

from tasks import environment
from tasks.errors import error_line
from tasks.killed import OWNED, kill_reason, signals_wait_for_database
from tasks.tracking import checkpoints, spool
from tasks.tracking.logging import log_params, log_text, set_tags
from tasks.tracking.ownership import ERROR_TAG, mark_process, process_tags
from tasks.tracking.provenance import (
    git_commit,
    mlflow_run_url,
    prefect_flow_run_id,
    prefect_run_tags,
    tag_prefect_flow_run,
)
from tasks.tracking.store import client, create_run, tracking_store_error


@contextlib.contextmanager
def parent_run(
    experiment: str,
    flow: str,
    flow_params: Mapping,
    resolved: Mapping | None = None,
    tags: Mapping | None = None,
) -> Iterator[str]:
    """Create the flow run's MLflow run and yield its id; end it FINISHED, or FAILED (and
    re-raise) if the body raises -- a failed flow never leaves its run RUNNING.

    ``flow_params`` are the flow's arguments as called; ``resolved`` the values the flow
    derived from them (a default taken per dataset, say). Both are logged as params (strings,
    for the UI), the resolved value winning; the arguments are also kept as JSON in the tag
    ``mlcore.flow_params``, so a rerun gets them back exactly, with their types.

    Within it, a signal that stops the process (Prefect's SIGTERM during a flow run, the CLI's,
    Ctrl-C) waits for a call into the tracking database to return (``killed.deferring``): raised
    inside one, it could leave the database locked, and the run RUNNING."""
    with signals_wait_for_database():
        yield from _parent_run(experiment, flow, flow_params, resolved, tags)


def _parent_run(experiment, flow, flow_params, resolved, tags) -> Iterator[str]:
    all_tags = {
        "prefect.flow_run_id": prefect_flow_run_id(),
        "mlcore.flow": flow,
        "mlcore.flow_params": json.dumps(dict(flow_params)),
        "git_commit": git_commit(),
        **environment.environment_tags(),
        **prefect_run_tags(),
        **(tags or {}),
    }
    # a run name given in the tags (a sweep's "trial 3: lr=0.003") wins over the flow's name
    name = all_tags.get("mlflow.runName", flow)
    # created with its owner's tags (see ownership.reap_if_dead): one write, not two
    run = create_run(experiment, {**all_tags, **process_tags()}, name)
    run_id = run.info.run_id
    OWNED.append(run_id)
    checkpoints.new_run(run_id, run.info.artifact_uri)
    # the flow run's MLflow run; a nested run (a sweep's trial, run inside the sweep's flow
    # run) is not the one that flow run made
    if "mlflow.parentRunId" not in all_tags:
        url = mlflow_run_url(run_id, run.info.experiment_id)
        tag_prefect_flow_run(all_tags["prefect.flow_run_id"], run_id, url)
    try:
        log_params(run_id, {**flow_params, **(resolved or {})})
        log_text(run_id, environment.freeze_text(), environment.FREEZE_ARTIFACT)
        yield run_id
    except BaseException as exc:
        end_run(run_id, exc)
        raise
    end_run(run_id)


@contextlib.contextmanager
def child_run(parent_run_id: str, run_name: str, params: Mapping) -> Iterator[str]:
    """Start a child run in the calling thread (so pyfunc.log_model can use it) under
    an explicit parent; ended FAILED if the body raises."""
    root = spool.root(parent_run_id)

    def start():
        parent = client().get_run(parent_run_id)
        tags = {"mlcore.flow": parent.data.tags.get("mlcore.flow", ""), "git_commit": git_commit()}
        return mlflow.start_run(
            experiment_id=parent.info.experiment_id, parent_run_id=parent_run_id,
            run_name=run_name, tags={**tags, **process_tags()},
        ).info.run_id  # fmt: skip

    run_id = spool.send(parent_run_id, start, lambda folder: None)
    if run_id is None:  # the store is gone: a local child, kept under its parent's folder
        run_id = f"unsent-{uuid.uuid4().hex[:12]}"
        spool.adopt(run_id, root)
        spool.keep_json(spool.folder(run_id), "run.json", {"run_name": run_name, "parent": root})
        log_params(run_id, params)
        try:
            yield run_id
        except BaseException as exc:
            _keep_end(run_id, RunStatus.KILLED if kill_reason(exc) else RunStatus.FAILED)
            raise
        _keep_end(run_id, RunStatus.FINISHED)
        return
    spool.adopt(run_id, root)
    OWNED.append(run_id)
    try:
        log_params(run_id, params)
        yield run_id
    except BaseException as exc:
        _end_child(run_id, RunStatus.KILLED if kill_reason(exc) else RunStatus.FAILED)
        raise
    _end_child(run_id, RunStatus.FINISHED)


def _end_child(run_id: str, status: int) -> None:
    """End the calling thread's active (child) run; a store that is gone cannot be told, and
    must not hide the error that ends the flow."""
    try:
        mlflow.end_run(RunStatus.to_string(status))
    except Exception:  # noqa: BLE001
        if tracking_store_error() is None:
            raise
        _keep_end(run_id, status)


def _keep_end(run_id: str, status: int) -> None:
    """The status a run's store could not be told, kept for `mlcore sync` (``end.json``)."""
    spool.keep_json(spool.folder(run_id), "end.json", {"status": RunStatus.to_string(status)})


def end_run(run_id: str, exc: BaseException | None = None) -> None:
    """End a flow's run: FINISHED, KILLED (a signal, with its reason in ``mlcore.error``) or
    FAILED. If the tracking store went away during the flow, raise ``TrackingUnavailable``
    naming the folder that holds what it could not take (unless the process was killed);
    a store that cannot be told the status never hides the error that ended the flow."""
    reason = kill_reason(exc)
    status = RunStatus.KILLED if reason else RunStatus.FAILED if exc else RunStatus.FINISHED
    for buffer in spool.take_pending(run_id):  # metrics still waiting for the store
        with contextlib.suppress(Exception):
            buffer.flush(final=True, retry=reason is None)
    unsent = spool.unsent_error(run_id)
    if unsent is not None and reason is None:
        status = RunStatus.FAILED
    tags = (
        {ERROR_TAG: reason}
        if reason
        else {ERROR_TAG: str(unsent)}
        if unsent
        else {ERROR_TAG: error_line(exc)[:1000]}
        if exc
        else {}
    )
    if spool.offline(run_id):  # told later by `mlcore sync` (tasks.tracking.sync)
        spool.keep_json(spool.folder(run_id), "tags.json", tags)
        _keep_end(run_id, status)
    else:
        try:
            set_tags(run_id, tags)
            client().set_terminated(run_id, RunStatus.to_string(status))
        except Exception as err:  # noqa: BLE001
            if exc is None and unsent is None:
                if tracking_store_error() is None:
                    raise
                raise spool.TrackingUnavailable(
                    f"the MLflow tracking store {mlflow.get_tracking_uri()} went away: run "
                    f"{run_id} could not be ended FINISHED ({error_line(err)})"
                ) from err
    if unsent is not None and reason is None:
        if exc is None:
            raise unsent
        raise unsent from exc


@contextlib.contextmanager
def reopened_run(run_id: str) -> Iterator[str]:
    """Set an ended run back to RUNNING (its old ``mlcore.error`` removed, this process as its
    owner) and yield its id; end it as parent_run does (``end_run``)."""
    client().update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
    checkpoints.forget(run_id)
    if ERROR_TAG in client().get_run(run_id).data.tags:
        client().delete_tag(run_id, ERROR_TAG)
    mark_process(run_id)  # this process owns it now (see reap_if_dead)
    try:
        yield run_id
    except BaseException as exc:
        end_run(run_id, exc)
        raise
    end_run(run_id)


def child_runs(parent_run_id: str) -> list:
    """Every run whose parent is ``parent_run_id`` (any status)."""
    parent = client().get_run(parent_run_id)
    return client().search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
        max_results=50000,
    )


def end_orphaned_children(parent_run_id: str) -> list[str]:
    """End KILLED every child run still RUNNING (its process died, or was stopped, before it
    could end it); returns their ids."""
    orphans = [r.info.run_id for r in child_runs(parent_run_id) if r.info.status == "RUNNING"]
    for run_id in orphans:
        client().set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))
    return orphans
