"""Gradient-check every layer, sandwich and the ConvNet; fail if any error is over threshold."""

from __future__ import annotations

from prefect import flow

from flows.experiments import GRADCHECK
from mlcore.nn.checks import GRADIENT_CHECKS
from tasks import tracking
from tasks.gradcheck import enforce_thresholds, gradient_check

D = GRADCHECK.defaults()


@flow(name="gradient_check", log_prints=True)
def gradient_check_flow(layers: list[str] | None = D["layers"], seed: int = D["seed"]) -> dict:
    """Analytic vs numeric gradients in float64 for ``layers`` (default: all), logged to the
    MLflow experiment ``gradcheck``; the flow and its run fail if any check fails."""
    call = dict(locals())
    with tracking.parent_run(
        "gradcheck", "gradient_check", call, {"layers": layers or "all"}
    ) as run_id:
        names = layers or list(GRADIENT_CHECKS)
        futures = [gradient_check.submit(name, seed, run_id) for name in names]
        rows = [row for f in futures for row in f.result()]
        return {"run_id": run_id, "results": enforce_thresholds(rows, run_id)}
