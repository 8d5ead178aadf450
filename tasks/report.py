"""Summaries: pick the best child run, log it to the parent, show the table in Prefect."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
from prefect import task
from prefect.artifacts import create_table_artifact

from tasks import tracking


@task
def report_results(
    rows: list[dict[str, Any]],
    parent_run_id: str,
    metric: str = "val_mae",
    lower_is_better: bool = True,
) -> dict[str, Any]:
    """Pick the best row by ``metric``, log it (tags ``best_model``, ``best_params`` (its
    hyper-parameters, JSON), ``best_run_id``, ``best_model_uri``, and ``best_<metric>`` metrics)
    and the whole table (``results.csv``) to the parent run, and publish the table as a
    Prefect artifact. Returns ``{"run_id", "results", "best"}``."""
    if not rows:
        raise ValueError("no results to report")
    pick = min if lower_is_better else max
    best = pick(rows, key=lambda r: r[metric])
    # the row: model, its hyper-parameters, <split>_<metric> values, run_id, model_uri
    measured = ("_mae", "_mse", "_r2")
    params = {
        k: v
        for k, v in best.items()
        if k not in ("model", "run_id", "model_uri") and not k.endswith(measured)
    }
    tracking.set_tags(
        parent_run_id,
        {
            "best_model": best["model"],
            "best_params": json.dumps(params),
            "best_run_id": best["run_id"],
            "best_model_uri": best["model_uri"],
        },
    )
    tracking.log_metrics(
        parent_run_id,
        {f"best_{k}": v for k, v in best.items() if isinstance(v, float) and k.count("_") == 1},
    )
    table = pd.DataFrame(rows)
    tracking.log_dataframe(parent_run_id, table, "results.csv")
    create_table_artifact(
        key="results",
        table=table.drop(columns=["model_uri"]).round(6).fillna("").to_dict(orient="records"),
        description=f"MLflow run {parent_run_id}; best by {metric}: {best['run_id']}",
    )
    return {"run_id": parent_run_id, "results": rows, "best": best}
