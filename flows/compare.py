"""Read past runs back from MLflow as rows of params and metrics."""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient

from tasks import tracking

PARENT_TAG = "tags.mlflow.parentRunId"


def run_table(
    experiment: str,
    sort: str | None = None,
    limit: int = 20,
    children: bool = False,
    descending: bool = False,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows (one per run, newest first unless ``sort`` names a metric: ascending, or
    ``descending``; runs without it last) and the column order: ``run_id``, ``start``,
    ``status``, ``kind`` (with ``children``), the params, the metrics. A row leaves out the
    params and metrics its run does not have."""
    client = MlflowClient()
    if client.get_experiment_by_name(experiment) is None:
        names = ", ".join(e.name for e in client.search_experiments()) or "none yet"
        raise ValueError(f"no MLflow experiment {experiment!r} (experiments: {names})")
    tracking.reap_dead_runs([experiment])  # a run whose process is gone is not RUNNING
    order = ["attributes.start_time DESC"]
    if sort is not None:  # MLflow puts runs without the metric last either way
        order.insert(0, f"metrics.`{sort}` {'DESC' if descending else 'ASC'}")
    runs = mlflow.search_runs(
        experiment_names=[experiment],
        filter_string="" if children else f"{PARENT_TAG} IS NULL",
        order_by=order,
        max_results=limit,
        output_format="pandas",
    )
    metrics = sorted(c.removeprefix("metrics.") for c in runs.columns if c.startswith("metrics."))
    if sort is not None and (sort not in metrics or runs[f"metrics.{sort}"].isna().all()):
        # the runs are sorted by it: if the first ``limit`` lack it, every run does
        known = [m for m in metrics if runs[f"metrics.{m}"].notna().any()]
        raise ValueError(f"--sort: no run has metric {sort!r} (metrics: {', '.join(known)})")
    params = sorted(c.removeprefix("params.") for c in runs.columns if c.startswith("params."))
    rows = []
    for run in runs.to_dict(orient="records"):
        row = {
            "run_id": run["run_id"],  # whole: it is what `mlcore rerun` takes
            "start": _time(run["start_time"]),
            "status": run["status"],
            "kind": "flow" if _missing(run.get(PARENT_TAG)) else "child",
        }
        row.update({k: run[f"params.{k}"] for k in params if not _missing(run[f"params.{k}"])})
        row.update(
            {k: float(run[f"metrics.{k}"]) for k in metrics if not _missing(run[f"metrics.{k}"])}
        )
        rows.append(row)
    base = ["run_id", "start", "status"] + (["kind"] if children else [])
    return rows, base + params + metrics


def _missing(value: Any) -> bool:
    """None, or the NaN (NaT) pandas gives for a run without that param, metric or tag."""
    return value is None or (not isinstance(value, str) and bool(pd.isna(value)))


def _time(start) -> str:
    """The run's start (a UTC pandas ``Timestamp``) in local time."""
    from datetime import datetime

    if _missing(start):
        return ""
    return datetime.fromtimestamp(start.timestamp()).strftime("%Y-%m-%d %H:%M")


def metric_columns(rows: list[dict[str, Any]], columns: list[str]) -> list[str]:
    """The columns of ``run_table`` that are metrics (params are strings, metrics floats)."""
    return [c for c in columns if any(isinstance(r.get(c), float) for r in rows)]


def plot_metric(rows: list[dict[str, Any]], metric: str, title: str):
    """A bar chart of ``metric`` per run (in the order of ``rows``), run ids on the x axis.
    A matplotlib ``Figure`` built without pyplot: nothing global, nothing shown."""
    from matplotlib.figure import Figure

    shown = [r for r in rows if isinstance(r.get(metric), float)]
    if not shown:
        raise ValueError(f"--metric: no run has metric {metric!r}")
    labels = [r["run_id"][:8] for r in shown]
    values = [r[metric] for r in shown]
    fig = Figure(figsize=(max(4.0, 0.6 * len(shown) + 2), 4), layout="constrained")
    ax = fig.add_subplot()
    bars = ax.bar(range(len(shown)), values, color="tab:blue")
    ax.bar_label(bars, fmt="%.4g", fontsize=8)
    ax.set_xticks(range(len(shown)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_xlabel("run")
    ax.set_ylabel(metric)
    ax.set_title(title)
    return fig


def save_plot(fig, path: str) -> None:
    """Write ``fig`` as a PNG to ``path`` (Agg canvas; no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=100)
