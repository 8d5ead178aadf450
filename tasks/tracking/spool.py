"""What a tracking store that went away could not take: ``./mlcore-unsent/<flow run id>/``.

Every write to MLflow goes through `send`: if the store is gone (or already was for this
flow), the value is kept in the flow's folder instead and the flow is marked offline; from
then on everything it logs goes to that folder, and the flow ends with
`TrackingUnavailable` naming it. A child run's things go to a sub-folder named after it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import mlflow

from tasks.errors import error_line
from tasks.tracking.store import tracking_store_error

UNSENT_DIR = "mlcore-unsent"


class TrackingUnavailable(RuntimeError):
    """The tracking store went away during a flow; what it could not take is on local disk."""


_ROOT: dict[str, str] = {}  # a child run's id -> its flow's run id
_SPOOLED: set[str] = set()  # flow run ids with something kept locally
_SPOOL_ERRORS: dict[str, str] = {}
_LOCK = threading.Lock()
_PENDING: dict[str, list] = {}  # flow run id -> MetricBuffers holding points the store refused


def root(run_id: str) -> str:
    """The flow's run id of ``run_id`` (itself for a flow's run)."""
    return _ROOT.get(run_id, run_id)


def adopt(run_id: str, flow_run_id: str) -> None:
    """Record that ``run_id`` is a child of the flow run ``flow_run_id``."""
    _ROOT[run_id] = flow_run_id


def offline(run_id: str) -> bool:
    """Whether the flow of ``run_id`` already keeps what it logs on local disk."""
    return root(run_id) in _SPOOLED


def folder(run_id: str) -> Path:
    """``./mlcore-unsent/<flow run id>`` (``/<child run id>`` for a child run)."""
    flow = root(run_id)
    base = Path.cwd() / UNSENT_DIR / flow
    return base if flow == run_id else base / run_id


def mark_unsent(run_id: str, exc: BaseException) -> None:
    flow = root(run_id)
    with _LOCK:
        _SPOOLED.add(flow)
        _SPOOL_ERRORS.setdefault(flow, error_line(exc))


def unsent_error(run_id: str) -> TrackingUnavailable | None:
    """The error a flow's run ends with when some of what it logged is on local disk."""
    if run_id not in _SPOOLED:
        return None
    uri = mlflow.get_tracking_uri()
    return TrackingUnavailable(
        f"the MLflow tracking store {uri} went away during run {run_id}: what it could not "
        f"take (the trained model, metrics, plots) is kept in {folder(run_id)}"
    )


def send(run_id: str, send: Callable[[], Any], keep: Callable[[Path], Any]) -> Any:
    """``send()`` to the tracking store; if the store is gone (or already was for this flow),
    ``keep(folder)`` on local disk instead and remember that the flow could not send it."""
    if not offline(run_id):
        try:
            return send()
        except Exception as exc:  # noqa: BLE001
            if tracking_store_error() is None:
                raise  # the store answers: a real error, not an outage
            mark_unsent(run_id, exc)
    where = folder(run_id)
    where.mkdir(parents=True, exist_ok=True)
    return keep(where)


def defer(run_id: str, buffer) -> None:
    """Hold ``buffer`` (a MetricBuffer the store refused) for the last try at the flow's end."""
    with _LOCK:
        pending = _PENDING.setdefault(root(run_id), [])
        if buffer not in pending:
            pending.append(buffer)


def take_pending(flow_run_id: str) -> list:
    """The MetricBuffers deferred for this flow run, forgotten here."""
    with _LOCK:
        return _PENDING.pop(flow_run_id, [])


def keep_json(where: Path, name: str, values: Mapping) -> None:
    """Merge ``values`` into the JSON object in ``where/name``."""
    where.mkdir(parents=True, exist_ok=True)
    path = where / name
    with _LOCK:
        old = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps({**old, **values}, indent=1, default=str))


def read_json(where: Path, name: str) -> dict:
    """The JSON object kept in ``where/name`` (empty if there is none)."""
    path = where / name
    with _LOCK:
        return json.loads(path.read_text()) if path.exists() else {}


def artifact_path(where: Path, artifact_file: str) -> Path:
    """Where an artifact that could not be sent is kept, its folder created."""
    path = where / "artifacts" / artifact_file
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
