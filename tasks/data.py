"""Data steps: fetch (retried), load and split, standardize on the training rows; each cached
across runs by Prefect.

The results of split and standardize are persisted by Prefect as ``.npz`` archives of plain
arrays (`ArraysSerializer`, read back with ``allow_pickle=False``: nothing is pickled), under a
key made of the step's inputs (the data file's sha256 for the split, the split's arrays for
standardize) and the sha256 of the code the step runs (its mlcore module and this one): a
second run on the same data skips them (Prefect shows them Cached), a changed file or changed
code misses. ``refresh`` (the flows' ``refresh_data``) runs them again and refreshes the cache.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import sys
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pooch
from prefect import task
from prefect.serializers import Serializer
from prefect.tasks import exponential_backoff

import mlcore.data.libsvm
import mlcore.preprocessing
from mlcore.data import fetch, get_dataset, load_libsvm, split_like_course
from mlcore.data.registry import PermanentDownloadError, data_dir
from mlcore.preprocessing import Standardizer, feature_stats
from tasks import tracking

SPLITS = ("train", "val", "test")
SCALER = ("scaler.mean", "scaler.scale")  # a standardize result's scaler, among its arrays


class ArraysSerializer(Serializer):
    """A Prefect result serializer for a dict of numpy arrays, or a (dict of arrays,
    Standardizer) pair: an ``.npz`` archive, read back with ``allow_pickle=False`` (base64: a
    result record is JSON, as Prefect's own serializers of bytes write it)."""

    type: Literal["mlcore-arrays"] = "mlcore-arrays"

    def dumps(self, obj) -> bytes:
        arrays, scaler = obj if isinstance(obj, tuple) else (obj, None)
        if scaler is not None:
            arrays = {**arrays, SCALER[0]: scaler.mean_, SCALER[1]: scaler.scale_}
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return base64.b64encode(buffer.getvalue())

    def loads(self, blob: bytes):
        with np.load(io.BytesIO(base64.b64decode(blob)), allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
        if SCALER[0] not in arrays:
            return arrays
        scaler = Standardizer.from_stats(arrays.pop(SCALER[0]), arrays.pop(SCALER[1]))
        return arrays, scaler


def code_sha256(*modules) -> str:
    """The sha256 of the source files of ``modules`` together."""
    digest = hashlib.sha256()
    for module in modules:
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()


def _key(step: str, *parts) -> str:
    return hashlib.sha256(json.dumps([step, *parts], default=str).encode()).hexdigest()


def _split_cache_key(context, parameters) -> str | None:
    """The file's sha256, the split's parameters, the parsing and splitting code."""
    path = Path(parameters["path"])
    if not path.is_file():
        return None  # (the task fails, naming the file)
    inputs = [parameters[k] for k in ("test_size", "random_state", "val_split")]
    code = code_sha256(mlcore.data.libsvm, sys.modules[__name__])
    return _key("split", pooch.file_hash(str(path)), inputs, code)


def _arrays_sha256(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}{a.dtype}{a.shape}".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def _standardize_cache_key(context, parameters) -> str:
    """The split's arrays, whether to standardize, the standardizing code."""
    code = code_sha256(mlcore.preprocessing, sys.modules[__name__])
    return _key("standardize", _arrays_sha256(parameters["split"]), parameters["enabled"], code)


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


def fetch_cached(name: str, refresh: bool = False, **call):
    """The fetch task, answered by Prefect's cache (state Cached) while the file it names is in
    the cache folder; when the file is gone (or with ``refresh``), the task runs and its cached
    result is refreshed (Prefect's ``refresh_cache``). ``call``: the task call's own options
    (``return_state``)."""
    ds = get_dataset(name)
    missing = not (data_dir() / ds.filename).resolve().is_file()
    return fetch_dataset.with_options(refresh_cache=missing or refresh)(name, **call)


@task(cache_key_fn=_split_cache_key, persist_result=True, result_serializer=ArraysSerializer())
def load_split(
    path: str, test_size: float = 0.33, random_state: int = 42, val_split: float = 0.2
) -> dict[str, np.ndarray]:
    """Parse a LIBSVM file and split it as the course does (cached: see the module)."""
    X, y = load_libsvm(Path(path))
    return split_like_course(X, y, test_size, random_state, val_split)


@task(
    cache_key_fn=_standardize_cache_key, persist_result=True, result_serializer=ArraysSerializer()
)
def standardize(split: dict, enabled: bool = True) -> tuple[dict, Standardizer]:
    """Fit a Standardizer on X_train only and apply it to every split (cached: see the module).

    With ``enabled=False`` the features stay as downloaded: the returned scaler is the
    identity (mean 0, scale 1, so a model that applies it sees exactly the raw values)."""
    if enabled:
        scaler = Standardizer().fit(split["X_train"])
    else:
        n = split["X_train"].shape[1]
        scaler = Standardizer.from_stats(np.zeros(n), np.ones(n))
    out = dict(split)
    for name in SPLITS:
        out[f"X_{name}"] = scaler.transform(split[f"X_{name}"]) if enabled else split[f"X_{name}"]
    return out, scaler


@task
def log_feature_stats(run_id: str, split: dict, data: dict, enabled: bool) -> None:
    """The course's table of feature means/variances before and after standardizing, logged
    to ``run_id`` (``feature_stats.csv``); its ``standardized`` column says ``False`` when the
    features stayed as downloaded (its ``_std`` columns then equal ``_raw``)."""
    table = pd.DataFrame(feature_stats(split, data, SPLITS))
    table["standardized"] = enabled
    tracking.log_dataframe(run_id, table, "feature_stats.csv")


def refreshed(step, refresh: bool):
    """``step`` (a task), made to run again and refresh its cached result when ``refresh``."""
    return step.with_options(refresh_cache=True) if refresh else step


@task
def log_dataset(run_id: str, name: str, path: str, split: dict[str, np.ndarray]) -> None:
    """Tag the run with the dataset's sha256 and ``log_input`` its training rows."""
    ds = get_dataset(name)
    tracking.set_tags(run_id, {"data.name": ds.name, "data.sha256": ds.sha256, "data.path": path})
    tracking.log_dataset(run_id, split["X_train"], split["y_train"], ds.name, ds.url, ds.sha256)
