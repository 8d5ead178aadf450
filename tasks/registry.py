"""The model registry: register a flow's best model, move ``champion`` only on a fair win; and
score input files with any MLflow model URI (``mlcore predict``).

A version carries three tags: the metric it was chosen by (``best_val_mae=2.87...``, the
value as ``repr`` so it reads back exactly), ``data_key`` (what validation data that value
was measured on) and ``flow_run_id`` (the MLflow run of the flow that made it). Two values
are comparable only on the same ``data_key``: the alias never moves to a version that merely
looks better on easier data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from prefect import task

from tasks import tracking

CHAMPION = "champion"


def housing_data_key(dataset: str, test_size: float, split_random_state: int, val_split: float):
    """The identity of the housing validation rows: the file's sha256 and the split."""
    from mlcore.data import get_dataset

    sha = get_dataset(dataset).sha256
    return (
        f"{dataset}:sha256={sha}:test_size={test_size!r}:"
        f"split_random_state={split_random_state!r}:val_split={val_split!r}"
    )


def convnet_data_key(dataset: str, num_train: int | None) -> str:
    """What a ConvNet's validation accuracy is comparable on: the dataset, its default split
    (the flow always takes it) and ``num_train``, the number of training rows it learnt from."""
    return f"{dataset}:split=default:num_train={num_train}"


@task
def register_model(
    model_uri: str,
    name: str,
    metric: str,
    value: float,
    higher_is_better: bool,
    data_key: str,
    run_id: str,
) -> dict[str, Any]:
    """Register ``model_uri`` as a new version of ``name``, tagged with ``metric=value``,
    ``data_key`` and the flow's ``run_id``; point alias ``champion`` at it if there is no
    champion yet, or if the champion was measured on the same ``data_key`` and this value is
    strictly better. Tags the flow's run with ``registered_model``, ``registered_version`` and
    ``champion``. Returns ``{name, version, champion_version, promoted, reason}``."""
    value = float(value)
    tags = {metric: repr(value), "data_key": data_key, "flow_run_id": run_id}
    version = str(mlflow.register_model(model_uri, name, tags=tags).version)
    client = tracking.client()
    holder = client.get_registered_model(name).aliases.get(CHAMPION)
    promoted, reason = _should_promote(
        client, name, holder, metric, value, higher_is_better, data_key
    )
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
    champion_version = version if promoted else str(holder)
    tracking.set_tags(
        run_id,
        {
            "registered_model": name,
            "registered_version": version,
            "champion": str(promoted).lower(),
        },
    )
    print(f"registered {name} version {version}: {reason}")
    return {
        "name": name,
        "version": version,
        "champion_version": champion_version,
        "promoted": promoted,
        "reason": reason,
    }


def _should_promote(
    client,
    name: str,
    holder: str | None,
    metric: str,
    value: float,
    higher_is_better: bool,
    data_key: str,
) -> tuple[bool, str]:
    if holder is None:
        return True, f"first {CHAMPION} ({metric}={value:.6g})"
    tags = client.get_model_version(name, holder).tags
    if tags.get("data_key") != data_key:
        return False, (
            f"{CHAMPION} stays version {holder}: it was measured on other validation data "
            f"({tags.get('data_key', 'unknown')!r}, not {data_key!r})"
        )
    if metric not in tags:
        return False, f"{CHAMPION} stays version {holder}: it has no {metric} tag to compare"
    best = float(tags[metric])
    better = value > best if higher_is_better else value < best
    if not better:
        return False, (
            f"{CHAMPION} stays version {holder}: its {metric}={best:.6g} is not beaten "
            f"by {value:.6g}"
        )
    return True, f"beats {CHAMPION} version {holder} on {metric}: {value:.6g} vs {best:.6g}"


def load_model(model_uri: str):
    """``mlflow.pyfunc.load_model`` with a one-line error naming the URI."""
    try:
        return mlflow.pyfunc.load_model(model_uri)
    except (mlflow.exceptions.MlflowException, OSError) as exc:
        msg = exc.message if isinstance(exc, mlflow.exceptions.MlflowException) else str(exc)
        first = msg.strip().splitlines()[0] if msg.strip() else type(exc).__name__
        raise ValueError(f"cannot load model {model_uri!r}: {first}") from None


def read_features(path: str | Path) -> np.ndarray:
    """A ``.npy`` array (no pickles) or a numeric CSV with or without a header row, as
    (rows, columns) for a CSV."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no input file {str(path)!r}")
    if path.suffix.lower() == ".npy":
        return np.load(path, allow_pickle=False)
    with path.open() as f:
        first = f.readline()
    if not first.strip():
        raise ValueError(f"{path}: empty file")
    header = not all(_is_float(cell) for cell in first.split(","))
    try:
        return np.loadtxt(path, delimiter=",", skiprows=int(header), ndmin=2, dtype=np.float64)
    except ValueError as exc:
        where = f"{path} (rows counted after the header)" if header else str(path)
        raise ValueError(f"{where}: {str(exc).splitlines()[0]}") from None


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def fit_to_signature(X: np.ndarray, model, source: str = "input") -> Any:
    """Reshape ``X`` to the model's tensor input ``(-1, *shape)`` (a flat row per example is
    accepted) in its dtype, or name its columns for a column schema; a wrong number of
    features is a one-line error naming the expected and the actual shape."""
    schema = model.metadata.get_input_schema()
    if schema is None:
        return X
    if schema.is_tensor_spec():
        spec = schema.inputs[0]
        shape = tuple(spec.shape[1:])
        n = int(np.prod(shape))
        rows = X.shape[0] if X.ndim >= 1 else 0
        if X.ndim >= 2 and tuple(X.shape[1:]) == shape:
            return np.asarray(X, dtype=spec.type)
        if X.ndim == 2 and X.shape[1] == n:
            return np.asarray(X, dtype=spec.type).reshape(rows, *shape)
        raise ValueError(
            f"{source}: the model expects input of shape {(-1, *shape)} ({n} features per row), "
            f"got shape {X.shape}"
        )
    import pandas as pd

    names = schema.input_names()
    if X.ndim != 2 or X.shape[1] != len(names):
        raise ValueError(
            f"{source}: the model expects {len(names)} columns ({', '.join(map(str, names))}), "
            f"got shape {X.shape}"
        )
    return pd.DataFrame(X, columns=names)


def predict_file(model_uri: str, path: str | Path) -> np.ndarray:
    """Score the file at ``path`` with the model at ``model_uri``; one prediction per row."""
    model = load_model(model_uri)
    X = fit_to_signature(read_features(path), model, Path(path).name)
    return np.asarray(model.predict(X))
