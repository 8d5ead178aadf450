"""Data steps: fetch (retried, cached), load and split, standardize on the training rows."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import task
from prefect.tasks import exponential_backoff

from mlcore.data import fetch, get_dataset, load_libsvm, split_like_course
from mlcore.data.registry import PermanentDownloadError, data_dir
from mlcore.preprocessing import Standardizer, feature_stats
from tasks import tracking

SPLITS = ("train", "val", "test")


def _fetch_cache_key(context, parameters) -> str:
    """Cached on dataset name + sha256 and the cache folder's path. Whether the file is still
    there is `fetch_cached`'s to check (a key that changed with it would store the first
    download's result under a key no later run computes)."""
    ds = get_dataset(parameters["name"])
    path = (data_dir() / ds.filename).resolve()
    return hashlib.sha256(f"fetch-{ds.name}-{ds.sha256}-{path}".encode()).hexdigest()


def _is_network_error(task, task_run, state) -> bool:
    """Retry what may heal (a refused connection, a timeout, HTTP 5xx: ``ConnectionError``),
    never a permanent refusal (HTTP 404/403: ``PermanentDownloadError``), a checksum
    mismatch or an unknown dataset."""
    try:
        state.result()
    except PermanentDownloadError:
        return False
    except ConnectionError:
        return True
    except Exception:  # noqa: BLE001 - a checksum or registry error will not heal by retrying
        return False
    return False


@task(
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_condition_fn=_is_network_error,
    cache_key_fn=_fetch_cache_key,
    persist_result=True,
    result_serializer="json",
)
def fetch_dataset(name: str) -> str:
    """Download dataset ``name`` (or take it from the cache) and return its local path. Call
    it through `fetch_cached`."""
    return str(fetch(name))


def fetch_cached(name: str, **call):
    """The fetch task, answered by Prefect's cache (state Cached) while the file it names is in
    the cache folder; when the file is gone, the task runs and its cached result is refreshed
    (Prefect's ``refresh_cache``). ``call``: the task call's own options (``return_state``)."""
    ds = get_dataset(name)
    missing = not (data_dir() / ds.filename).resolve().is_file()
    return fetch_dataset.with_options(refresh_cache=missing)(name, **call)


@task
def load_split(
    path: str, test_size: float = 0.33, random_state: int = 42, val_split: float = 0.2
) -> dict[str, np.ndarray]:
    """Parse a LIBSVM file and split it as the course does."""
    X, y = load_libsvm(Path(path))
    return split_like_course(X, y, test_size, random_state, val_split)


@task
def standardize(
    split: dict, run_id: str | None = None, enabled: bool = True
) -> tuple[dict, Standardizer]:
    """Fit a Standardizer on X_train only and apply it to every split; log the course's
    table of feature means/variances before and after to ``run_id``.

    With ``enabled=False`` the features stay as downloaded: the returned scaler is the
    identity (mean 0, scale 1, so a model that applies it sees exactly the raw values) and the
    table's ``standardized`` column says ``False`` (its ``_std`` columns then equal ``_raw``)."""
    if enabled:
        scaler = Standardizer().fit(split["X_train"])
    else:
        n = split["X_train"].shape[1]
        scaler = Standardizer.from_stats(np.zeros(n), np.ones(n))
    out = dict(split)
    for name in SPLITS:
        out[f"X_{name}"] = scaler.transform(split[f"X_{name}"]) if enabled else split[f"X_{name}"]
    if run_id:
        table = pd.DataFrame(feature_stats(split, out, SPLITS))
        table["standardized"] = enabled
        tracking.log_dataframe(run_id, table, "feature_stats.csv")
    return out, scaler


@task
def log_dataset(run_id: str, name: str, path: str, split: dict[str, np.ndarray]) -> None:
    """Tag the run with the dataset's sha256 and ``log_input`` its training rows."""
    ds = get_dataset(name)
    tracking.set_tags(run_id, {"data.name": ds.name, "data.sha256": ds.sha256, "data.path": path})
    tracking.log_dataset(run_id, split["X_train"], split["y_train"], ds.name, ds.url, ds.sha256)
