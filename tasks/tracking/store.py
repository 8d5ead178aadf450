"""The tracking store: its URI, a client for it, and one short check that it is there."""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import mlflow
from mlflow import MlflowClient


def client() -> MlflowClient:
    return MlflowClient()


# MLflow's UI opens an experiment by its kind: without one it guesses, and a fresh store's
# experiments land on the GenAI overview (traces, token usage). mlcore's are model training.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def create_run(experiment: str, tags: dict[str, str], run_name: str):
    """A new run in experiment ``experiment`` (by name, created if missing). The name's id is
    looked up once per process and store; a cached id whose experiment was deleted (or
    replaced) meanwhile is looked up again."""
    key = (mlflow.get_tracking_uri(), experiment)
    if key in _EXPERIMENT_IDS:
        try:
            return client().create_run(_EXPERIMENT_IDS[key], tags=tags, run_name=run_name)
        except mlflow.exceptions.MlflowException:
            del _EXPERIMENT_IDS[key]
    _EXPERIMENT_IDS[key] = experiment_id(experiment)
    return client().create_run(_EXPERIMENT_IDS[key], tags=tags, run_name=run_name)


_EXPERIMENT_IDS: dict[tuple[str, str], str] = {}


def experiment_id(name: str) -> str:
    """The id of experiment ``name``, created as model training (``EXPERIMENT_KIND``) if
    missing; an existing one without a kind gets it (a kind set by someone else stays)."""
    exp = client().get_experiment_by_name(name)
    if exp is not None:
        for key, value in EXPERIMENT_KIND.items():
            if key not in exp.tags:
                client().set_experiment_tag(exp.experiment_id, key, value)
        return exp.experiment_id
    try:
        return client().create_experiment(name, tags=EXPERIMENT_KIND)
    except mlflow.exceptions.MlflowException:  # created meanwhile by a concurrent run
        return client().get_experiment_by_name(name).experiment_id


SQLITE = "sqlite:///"


def sqlite_path(uri: str) -> str | None:
    """The database file of a ``sqlite:///`` URI as written (relative or absolute), or None
    for another kind of store or an in-memory database."""
    if not uri.startswith(SQLITE):
        return None
    path = uri[len(SQLITE) :]
    return None if path in ("", ":memory:") else path


def tracking_uri() -> str:
    """The tracking URI with a relative ``sqlite:///`` path made absolute, so a process with
    another working directory (a Dask worker) writes to the same store."""
    uri = mlflow.get_tracking_uri()
    path = sqlite_path(uri)
    if path is not None and not path.startswith("/"):
        return SQLITE + str(Path(path).resolve())
    return uri


def use_tracking_uri(uri: str) -> None:
    """Point this process at ``uri`` (a sweep's trial on a Dask worker)."""
    if mlflow.get_tracking_uri() != uri:
        mlflow.set_tracking_uri(uri)


def tracking_store_error(uri: str | None = None, timeout: float = 3.0) -> str | None:
    """One short check of the tracking store (``uri`` or MLflow's current one): None if it
    is usable, else why not. http(s): a GET of the server's ``/health`` with a ``timeout``;
    sqlite and file stores: the folder exists and is writable; other databases: the TCP port
    accepts a connection."""
    uri = uri or mlflow.get_tracking_uri()
    parsed = urllib.parse.urlparse(uri)
    scheme = parsed.scheme.split("+")[0]
    if scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as r:
                return None if r.status == 200 else f"/health answered HTTP {r.status}"
        except urllib.error.HTTPError as exc:
            return f"/health answered HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            return str(getattr(exc, "reason", exc))
    if scheme in ("sqlite", "file", ""):
        if scheme == "sqlite":
            path = sqlite_path(uri)
            if path is None:
                return None
        else:
            path = parsed.path if scheme == "file" else uri
        target = Path(path)
        folder = target if scheme != "sqlite" and target.is_dir() else target.parent
        if not folder.is_dir():
            return f"folder {folder} does not exist"
        if not os.access(folder, os.W_OK) or (target.exists() and not os.access(target, os.R_OK)):
            return f"{target if target.exists() else folder} is not writable"
        return None
    if parsed.hostname and parsed.port:  # postgresql://, mysql://, ...
        try:
            socket.create_connection((parsed.hostname, parsed.port), timeout=timeout).close()
        except OSError as exc:
            return str(exc)
    return None
