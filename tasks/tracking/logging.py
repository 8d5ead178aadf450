"""Params, tags, metrics, figures, tables, texts, JSON values and dataset inputs, each logged
to an explicit run id. Every write goes through `spool.send`: during an outage of the
tracking store each of them is kept on local disk (see `tasks.tracking.spool`) instead of
raising."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag

from tasks.tracking import spool
from tasks.tracking.store import client, tracking_store_error


def _stringify(params: Mapping) -> dict[str, str]:
    return {
        k: ",".join(map(str, v)) if isinstance(v, list | tuple) else str(v)
        for k, v in params.items()
    }


def log_params(run_id: str, params: Mapping, tags: Mapping | None = None) -> None:
    """Log ``params`` (and ``tags``, in the same request when they fit in one)."""
    values, tag_values = _stringify(params), {k: str(v) for k, v in (tags or {}).items()}

    def send():
        items = [Param(k, v) for k, v in values.items()]
        tag_items = [RunTag(k, v) for k, v in tag_values.items()]
        while items or tag_items:  # MLflow's most params, and tags, per batch: 100
            client().log_batch(run_id, params=items[:100], tags=tag_items[:100])
            del items[:100], tag_items[:100]

    def keep(folder):
        spool.keep_json(folder, "params.json", values)
        if tag_values:
            spool.keep_json(folder, "tags.json", tag_values)

    spool.send(run_id, send, keep)


def set_tags(run_id: str, tags: Mapping) -> None:
    values = {k: str(v) for k, v in tags.items()}

    def send():
        items = [RunTag(k, v) for k, v in values.items()]
        for start in range(0, len(items), 100):
            client().log_batch(run_id, tags=items[start : start + 100])

    spool.send(run_id, send, lambda folder: spool.keep_json(folder, "tags.json", values))


def log_metrics(
    run_id: str, metrics: Mapping[str, float], step: int = 0, tags: Mapping | None = None
) -> None:
    """Log ``metrics`` at ``step`` (and ``tags``, in the same request)."""
    log_metric_history(run_id, {k: [v] for k, v in metrics.items()}, first_step=step, tags=tags)


def log_metric_history(
    run_id: str,
    history: Mapping[str, list[float]],
    first_step: int = 0,
    tags: Mapping | None = None,
) -> None:
    """Log whole series at once (``name -> values``, steps counted from ``first_step``), and
    ``tags`` with them."""
    buffer = MetricBuffer(run_id)
    buffer.tag(tags or {})
    for name, values in history.items():
        for i, value in enumerate(values):
            buffer.add(name, value, first_step + i)
    buffer.flush(final=True)


class MetricBuffer:
    """Collect metric points and send them in batches of MLflow's maximum size (a request
    per point is slow).

    A tracking store that has gone away does not stop training: ``flush`` keeps the points
    and tries again at a later flush, waiting longer after each failure (4x ``RETRY_DELAYS``
    seconds), and at the latest when the flow's run ends. ``flush(final=True)`` retries with
    ``RETRY_DELAYS`` back-offs and then, the store still gone, writes the points to
    ``./mlcore-unsent/<run id>/metrics.csv``; the flow then ends with ``TrackingUnavailable``
    naming that folder."""

    RETRY_DELAYS = (1.0, 2.0, 4.0)

    def __init__(self, run_id: str):
        self.run_id = run_id
        self._points: list[Metric] = []
        self._tags: list[RunTag] = []  # sent with the next batch of points
        self._failures = 0
        self._next_try = 0.0

    def add(self, name: str, value: float, step: int) -> None:
        self._points.append(Metric(name, float(value), int(time.time() * 1000), int(step)))

    def tag(self, tags: Mapping) -> None:
        """Send ``tags`` with the next batch (one request for both)."""
        self._tags.extend(RunTag(k, str(v)) for k, v in tags.items())

    def flush(self, final: bool = False, retry: bool = True) -> None:
        if not self._points and not self._tags:
            return
        if spool.offline(self.run_id):  # the flow already works offline
            self._keep()
            return
        if not final and time.monotonic() < self._next_try:
            return  # backing off: the points stay buffered
        delays = self.RETRY_DELAYS if final and retry else ()
        for attempt in range(len(delays) + 1):
            try:
                self._send()
                self._failures = 0
                return
            except Exception as exc:  # noqa: BLE001
                if tracking_store_error() is None:
                    raise  # the store answers: a real error, not an outage
                error = exc
            if attempt < len(delays):
                time.sleep(delays[attempt])
        self._failures += 1
        if not final:
            delay = self.RETRY_DELAYS[min(self._failures, len(self.RETRY_DELAYS)) - 1]
            self._next_try = time.monotonic() + 4 * delay
            spool.defer(self.run_id, self)  # the flow's end tries once more (``end_run``)
            return
        spool.mark_unsent(self.run_id, error)
        self._keep()

    def _send(self) -> None:
        while self._points or self._tags:  # a batch sent is a batch dropped from the buffer
            client().log_batch(self.run_id, metrics=self._points[:900], tags=self._tags[:100])
            del self._points[:900], self._tags[:100]

    def _keep(self) -> None:
        folder = spool.folder(self.run_id)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "metrics.csv"
        if self._points:
            new = not path.exists()
            with open(path, "a") as out:
                if new:
                    out.write("key,value,step,timestamp\n")
                for m in self._points:
                    out.write(f"{m.key},{m.value!r},{m.step},{m.timestamp}\n")
        self._points = []
        if self._tags:
            spool.keep_json(folder, "tags.json", {t.key: t.value for t in self._tags})
            self._tags = []


def log_figure(run_id: str, figure, artifact_file: str) -> None:
    """A matplotlib figure as an image (its format from ``artifact_file``'s suffix). Only the
    figure's own ``savefig`` renders it: a ``matplotlib.figure.Figure`` made without pyplot
    needs no backend, and the session's backend is never changed."""
    spool.send(
        run_id,
        lambda: client().log_figure(run_id, figure, artifact_file),
        lambda folder: figure.savefig(spool.artifact_path(folder, artifact_file)),
    )


def log_dataframe(run_id: str, df: pd.DataFrame, artifact_file: str) -> None:
    """Log a table as CSV (readable in the MLflow UI's artifact view and by pandas)."""
    text = df.to_csv(index=False)
    spool.send(
        run_id,
        lambda: client().log_text(run_id, text, artifact_file),
        lambda folder: spool.artifact_path(folder, artifact_file).write_text(text),
    )


def log_text(run_id: str, text: str, artifact_file: str) -> None:
    spool.send(
        run_id,
        lambda: client().log_text(run_id, text, artifact_file),
        lambda folder: spool.artifact_path(folder, artifact_file).write_text(text),
    )


def log_table(run_id: str, df: pd.DataFrame, artifact_file: str) -> None:
    """An MLflow table artifact (shown as a table in the UI's artifact view; a second call
    with the same file appends its rows). Kept during an outage in the same format and the
    same way (``.json``: pandas' ``orient="split"``; or ``.parquet``)."""
    parquet = artifact_file.endswith(".parquet")

    def keep(folder):
        path = spool.artifact_path(folder, artifact_file)
        table = df
        if path.exists():
            before = pd.read_parquet(path) if parquet else pd.read_json(path, orient="split")
            table = pd.concat([before, df], ignore_index=True)
        if parquet:
            table.to_parquet(path, index=False)
        else:
            table.to_json(path, orient="split", index=False, date_format="iso")

    spool.send(run_id, lambda: client().log_table(run_id, df, artifact_file), keep)


def log_json(run_id: str, value, artifact_file: str) -> None:
    """``value`` (anything ``json.dumps`` takes: a list too) as a JSON artifact; read it back
    with `load_json`."""
    text = json.dumps(value, indent=1)
    log_text(run_id, text, artifact_file)


def load_json(run_id: str, artifact_file: str):
    """The JSON value of a run's artifact (see `log_json`)."""
    return mlflow.artifacts.load_dict(f"runs:/{run_id}/{artifact_file}")


def load_text(run_id: str, artifact_file: str) -> str:
    """The text of a run's artifact (see `log_text`)."""
    return mlflow.artifacts.load_text(f"runs:/{run_id}/{artifact_file}")


def log_dataset(
    run_id: str,
    X: np.ndarray,
    y: np.ndarray,
    name: str,
    source: str,
    digest: str,
    context: str = "training",
) -> None:
    """A dataset as an input of the run (``mlflow.log_input``'s record, by explicit run id)."""
    ds = mlflow.data.from_numpy(X, targets=y, source=source, name=name, digest=digest[:36])
    # MlflowClient.log_inputs takes the entity; Dataset.to_dict() is the dataset's public
    # description (name, digest, source, source_type, schema, profile) that the entity holds
    described = ds.to_dict()
    entity = Dataset(
        name=described["name"],
        digest=described["digest"],
        source_type=described["source_type"],
        source=described["source"],
        schema=described.get("schema"),
        profile=described.get("profile"),
    )
    tags = [InputTag(key="mlflow.data.context", value=context)]
    info = {"name": name, "source": source, "digest": digest, "context": context}
    spool.send(
        run_id,
        lambda: client().log_inputs(run_id, [DatasetInput(dataset=entity, tags=tags)]),
        lambda folder: spool.keep_json(folder, "datasets.json", {name: info}),
    )
