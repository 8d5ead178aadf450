"""Where a run comes from: the code's commit and the Prefect flow run that made it."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent.parent


@functools.cache
def git_commit() -> str:
    """The commit the code runs from, with ``-dirty`` when the work tree has changes."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=PROJECT_DIR,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_DIR,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def prefect_flow_run_id() -> str:
    """The id of the Prefect flow run this code runs in ("" outside a flow)."""
    try:
        from prefect.runtime import flow_run

        return str(flow_run.id or "")
    except Exception:  # noqa: BLE001 - outside a flow there is simply no id
        return ""


def prefect_run_tags() -> dict[str, str]:
    """``key=value`` tags of the current Prefect flow run whose key starts with ``mlcore.``
    (e.g. ``mlcore.rerun_of=<run id>``, set with ``prefect.tags`` by ``mlcore rerun``): they are
    copied onto the MLflow run when it is created, so a run that fails carries them too."""
    try:
        from prefect.runtime import flow_run

        tags = list(flow_run.tags or [])
    except Exception:  # noqa: BLE001 - outside a flow there are none
        return {}
    return dict(t.split("=", 1) for t in tags if t.startswith("mlcore.") and "=" in t)


MLFLOW_RUN_TAG = "mlflow.run_id="  # a Prefect flow run's tag naming its MLflow run
MLFLOW_URL_TAG = "mlflow.url="  # ... and its page in the MLflow UI, when the store is a server


def mlflow_run_url(run_id: str, experiment_id: str) -> str | None:
    """The MLflow UI's page of a run, ``{server}/#/experiments/{id}/runs/{run_id}`` (the
    address MLflow itself prints when a run on a server ends), when the tracking store is a
    server (``http(s)://``); None for a store on this machine's disk, whose UI is started on
    demand (``mlcore ui``)."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return None
    return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def tag_prefect_flow_run(flow_run_id: str, mlflow_run_id: str, url: str | None = None) -> None:
    """Name the MLflow run on the Prefect flow run that made it (tag ``mlflow.run_id=<id>``,
    and ``mlflow.url=<its page in the MLflow UI>`` when ``url`` is given), so that what reads
    the flow run (the Prefect UI, an alert: ``flows.alerts``) can name it and link to it.
    Best effort: a Prefect API that cannot be told is no reason to fail the run."""
    if not flow_run_id:
        return
    wanted = [f"{MLFLOW_RUN_TAG}{mlflow_run_id}", *([f"{MLFLOW_URL_TAG}{url}"] if url else [])]
    try:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            tags = client.read_flow_run(flow_run_id).tags
            missing = [t for t in wanted if t not in tags]
            if missing:
                client.update_flow_run(flow_run_id, tags=[*tags, *missing])
    except Exception:  # noqa: BLE001 - the run's own record (MLflow) is what matters
        return
