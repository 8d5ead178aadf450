"""Read past runs back from MLflow as rows of params and metrics."""

from __future__ import annotations

from typing import Any

from mlflow import MlflowClient

from tasks import tracking


def run_table(
    experiment: str,
    sort: str | None = None,
    limit: int = 20,
    children: bool = False,
    descending: bool = False,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows (one per run, newest first unless ``sort`` names a metric: ascending, or
    ``descending``; runs without it last) and the column order."""
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = ", ".join(e.name for e in client.search_experiments()) or "none yet"
        raise ValueError(f"no MLflow experiment {experiment!r} (experiments: {names})")
    tracking.reap_dead_runs([experiment])  # a run whose process is gone is not RUNNING
    flt = "" if children else "tags.mlflow.parentRunId IS NULL"
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=flt,
        max_results=1000,
        order_by=["attributes.start_time DESC"],
    )
    if sort is not None:
        if not any(sort in r.data.metrics for r in runs):
            known = sorted({m for r in runs for m in r.data.metrics})
            raise ValueError(f"--sort: no run has metric {sort!r} (metrics: {', '.join(known)})")
        sign = -1.0 if descending else 1.0
        runs = sorted(runs, key=lambda r: sign * r.data.metrics.get(sort, sign * float("inf")))
    runs = runs[:limit]
    rows, params, metrics = [], [], []
    for r in runs:
        row = {
            "run_id": r.info.run_id,  # whole: it is what `mlcore rerun` takes
            "start": _time(r.info.start_time),
            "status": r.info.status,
            "kind": "child" if "mlflow.parentRunId" in r.data.tags else "flow",
        }
        for k, v in r.data.params.items():
            row[k] = v
            params.append(k) if k not in params else None
        for k, v in r.data.metrics.items():
            row[k] = v
            metrics.append(k) if k not in metrics else None
        rows.append(row)
    base = ["run_id", "start", "status"] + (["kind"] if children else [])
    return rows, base + params + sorted(metrics)


def _time(ms: int | None) -> str:
    from datetime import datetime

    return "" if ms is None else datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M")


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
