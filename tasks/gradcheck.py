"""Gradient checks as tasks: each layer's errors logged to MLflow, thresholds enforced."""

from __future__ import annotations

import pandas as pd
from prefect import task
from prefect.artifacts import create_table_artifact

from mlcore.nn.checks import GRADIENT_CHECKS, GradientCheckError, run_check
from tasks import tracking


@task(task_run_name="gradcheck-{name}")
def gradient_check(name: str, seed: int, run_id: str) -> dict:
    """Check one layer; log ``rel_error.<layer>.<input>`` to ``run_id``. Returns a table row
    per input."""
    errors = run_check(name, seed)
    tracking.log_metrics(run_id, {f"rel_error.{name}.{k}": v for k, v in errors.items()})
    threshold = GRADIENT_CHECKS[name].threshold
    return [
        {"layer": name, "input": k, "rel_error": v, "threshold": threshold, "ok": v <= threshold}
        for k, v in errors.items()
    ]


@task
def enforce_thresholds(rows: list[dict], run_id: str) -> list[dict]:
    """Publish the table (MLflow ``gradcheck.csv``, a Prefect table artifact) and fail if any
    error is over its threshold."""
    table = pd.DataFrame(rows)
    tracking.log_dataframe(run_id, table, "gradcheck.csv")
    failed = table[~table["ok"]]
    tracking.set_tags(run_id, {"gradcheck.passed": str(failed.empty).lower()})
    create_table_artifact(
        key="gradcheck",
        table=[{**r, "rel_error": f"{r['rel_error']:.2e}"} for r in rows],
        description=f"MLflow run {run_id}: {len(failed)} of {len(rows)} over threshold",
    )
    if not failed.empty:
        worst = ", ".join(
            f"{r.layer}.{r.input}={r.rel_error:.2e} (> {r.threshold:g})"
            for r in failed.itertuples()
        )
        raise GradientCheckError(f"gradient check failed: {worst}")
    return rows
