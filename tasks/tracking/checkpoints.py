"""A run's training checkpoints: logged as artifacts, listed (with their sha256) in the tag
``mlcore.checkpoints``, the older ones deleted, and downloaded back checked."""

from __future__ import annotations

import base64
import json
import os
import shutil
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import mlflow
import pooch

from tasks.tracking import spool
from tasks.tracking.store import client

CHECKPOINT_TAG = "mlcore.checkpoints"
CHECKPOINT_DIR = "checkpoints"
_ARTIFACTS_API = "/api/2.0/mlflow-artifacts/artifacts"


def logged_checkpoints(run_id: str) -> list[dict]:
    """The checkpoints logged to ``run_id`` by log_checkpoint, oldest first: dicts of
    ``epoch``, ``artifact`` (path in the run's artifacts) and ``sha256``.

    None while the run's flow works offline (the tracking store went away during it): the
    store cannot be asked, and the checkpoints kept in ``./mlcore-unsent`` meanwhile are not
    in MLflow, so a caller keeps its own copies."""
    if spool.offline(run_id):
        return []
    return json.loads(client().get_run(run_id).data.tags.get(CHECKPOINT_TAG, "[]"))


def log_checkpoint(run_id: str, path: str | Path, epoch: int, keep: int = 2) -> bool:
    """Log the checkpoint file at ``path`` as ``checkpoints/<file name>``; then record it (with
    its sha256) in the tag ``mlcore.checkpoints``, which lists the last ``keep`` ones, and
    delete the older checkpoint artifacts. The tag is written only once the upload is complete,
    so it never names a half-written artifact.

    With the tracking store gone, the file is kept in ``./mlcore-unsent/<run id>/artifacts/
    checkpoints/`` (the last ``keep`` of them, listed in that folder's ``tags.json``).
    Returns whether the checkpoint went to MLflow (False: kept locally)."""
    path = Path(path)
    digest = pooch.file_hash(str(path))
    entry = {"epoch": int(epoch), "artifact": f"{CHECKPOINT_DIR}/{path.name}", "sha256": digest}

    def send():
        client().log_artifact(run_id, str(path), CHECKPOINT_DIR)
        if run_id in _swept:  # this process wrote the tag last: no need to read it back
            before, artifact_uri = _swept[run_id]
        else:
            run = client().get_run(run_id)
            before = json.loads(run.data.tags.get(CHECKPOINT_TAG, "[]"))
            artifact_uri = run.info.artifact_uri
        kept = _last(before, entry, keep)
        client().set_tag(run_id, CHECKPOINT_TAG, json.dumps(kept))
        names = {c["artifact"] for c in kept}
        if run_id in _swept:  # the ones the tag dropped (a listing costs as much as the rest)
            stale = [c["artifact"] for c in before if c["artifact"] not in names]
        else:  # first checkpoint of this run in this process: also what a killed one left
            stale = [
                a.path
                for a in client().list_artifacts(run_id, CHECKPOINT_DIR)
                if not a.is_dir and a.path not in names
            ]
        _swept[run_id] = (kept, artifact_uri)
        for artifact in stale:
            _delete_artifact(artifact_uri, artifact)
        return True

    def keep_locally(folder: Path) -> None:
        shutil.copy(path, spool.artifact_path(folder, entry["artifact"]))
        before = json.loads(spool.read_json(folder, "tags.json").get(CHECKPOINT_TAG, "[]"))
        kept = _last(before, entry, keep)
        spool.keep_json(folder, "tags.json", {CHECKPOINT_TAG: json.dumps(kept)})
        names = {Path(c["artifact"]).name for c in kept}
        for old in (folder / "artifacts" / CHECKPOINT_DIR).iterdir():
            if old.name not in names:
                old.unlink()
        return False

    return spool.send(run_id, send, keep_locally)


# run id -> (its checkpoint tag as this process last wrote it, its artifact URI): the runs
# whose checkpoint artifacts this process has listed once, or created (see log_checkpoint)
_swept: dict[str, tuple[list[dict], str]] = {}


def new_run(run_id: str, artifact_uri: str) -> None:
    """``run_id`` was just created by this process: it has no checkpoint yet, so its first
    one needs neither the tag read back nor a listing of what a killed process left."""
    _swept[run_id] = ([], artifact_uri)


def forget(run_id: str) -> None:
    """``run_id`` may have been changed by another process (a run reopened to resume it): its
    next checkpoint reads the tag back and lists the artifacts again."""
    _swept.pop(run_id, None)


def _last(logged: list[dict], entry: dict, keep: int) -> list[dict]:
    """``logged`` with ``entry`` added last (replacing one of the same artifact), cut to the
    last ``keep``."""
    return [*[c for c in logged if c["artifact"] != entry["artifact"]], entry][-keep:]


def download_checkpoint(run_id: str, entry: Mapping, directory: str | Path) -> Path:
    """Download a checkpoint listed by logged_checkpoints into ``directory`` and check its
    sha256 (a mismatch is a ValueError and leaves no file)."""
    local = Path(client().download_artifacts(run_id, entry["artifact"], str(directory)))
    if pooch.file_hash(str(local)) != entry["sha256"]:
        local.unlink()
        raise ValueError(
            f"checkpoint {entry['artifact']} of run {run_id} does not match its sha256"
        )
    return local


def _delete_artifact(artifact_uri: str, artifact: str) -> bool:
    """Delete ``artifact`` (a path in the run's artifacts) from the run's ``artifact_uri``;
    returns whether this kind of artifact store allows it.

    MLflow's public Python API logs, lists and downloads artifacts but deletes none (its
    artifact repositories live in ``mlflow.store``, which is not part of the documented
    API). So: a store on this machine's disk (a ``file:`` URI or a plain path, e.g. the
    ``./mlruns`` of a sqlite store) is changed directly; a tracking server that serves the
    artifacts (``mlflow-artifacts:`` URIs, as ``mlcore server`` runs it) is asked through its
    artifacts REST API, ``DELETE /api/2.0/mlflow-artifacts/artifacts/<path>``. Any other
    store (``s3://``, ``gs://``, ...) keeps the older checkpoints."""
    parsed = urllib.parse.urlparse(artifact_uri)
    if parsed.scheme in ("", "file"):
        root = urllib.request.url2pathname(parsed.path) if parsed.scheme else artifact_uri
        target = Path(root) / artifact
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
        return True
    if parsed.scheme == "mlflow-artifacts":
        tracking = urllib.parse.urlparse(mlflow.get_tracking_uri())
        base = f"{tracking.scheme}://{parsed.netloc}" if parsed.netloc else tracking.geturl()
        url = f"{base.rstrip('/')}{_ARTIFACTS_API}/{parsed.path.strip('/')}/{artifact}"
    elif parsed.scheme in ("http", "https") and _ARTIFACTS_API in parsed.path:
        url = f"{artifact_uri.rstrip('/')}/{artifact}"
    else:
        return False
    parts = urllib.parse.urlsplit(url)
    url = parts._replace(path=urllib.parse.quote(parts.path)).geturl()
    request = urllib.request.Request(url, method="DELETE", headers=_auth_headers())
    with urllib.request.urlopen(request, timeout=60):
        return True


def _auth_headers() -> dict[str, str]:
    """The credentials MLflow's documented variables give its client for a tracking server."""
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"Authorization": f"Bearer {token}"}
    user, password = (os.environ.get(f"MLFLOW_TRACKING_{k}") for k in ("USERNAME", "PASSWORD"))
    if user and password:
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {basic}"}
    return {}
