"""Linear-regression steps: fit one model, evaluate it on every split and log it as a child run."""

from __future__ import annotations

from typing import Any

import numpy as np
from prefect import task

from mlcore import metrics
from mlcore.linear import LinearRegression, RidgeRegression, SGDRegressor
from mlcore.preprocessing import Standardizer
from mlcore.vis import plot_loss_curve, plot_predicted_vs_true, plot_residuals
from tasks import tracking

MODELS = {"ols": LinearRegression, "ridge": RidgeRegression, "sgd": SGDRegressor}


def model_label(kind: str, hparams: dict[str, Any]) -> str:
    """A short name for a result table row or a run name: ``ridge(alpha=0.01)``."""
    args = ", ".join(f"{k}={v}" for k, v in hparams.items())
    return f"{kind}({args})" if args else kind


@task(task_run_name="fit-{kind}-{hparams}")
def fit_model(kind: str, hparams: dict[str, Any], data: dict[str, np.ndarray]):
    """Fit model ``kind`` (ols | ridge | sgd) with ``hparams`` on the training rows (SGD also
    tracks the validation loss per epoch)."""
    if kind not in MODELS:
        raise ValueError(f"unknown model {kind!r}; expected one of {', '.join(MODELS)}")
    model = MODELS[kind](**hparams)
    if kind == "sgd":
        return model.fit(data["X_train"], data["y_train"], data["X_val"], data["y_val"])
    return model.fit(data["X_train"], data["y_train"])


@task(task_run_name="evaluate-{kind}-{hparams}")
def evaluate(
    model,
    kind: str,
    hparams: dict[str, Any],
    data: dict[str, np.ndarray],
    scaler: Standardizer,
    parent_run_id: str,
) -> dict[str, Any]:
    """Score ``model`` on train/val/test and log a child run of ``parent_run_id`` with its
    hyper-parameters, metrics, plots and the model itself. Returns a result-table row."""
    row: dict[str, Any] = {"model": kind, **hparams}
    for split in ("train", "val", "test"):
        y_true, y_pred = data[f"y_{split}"], model.predict(data[f"X_{split}"])
        row[f"{split}_mae"] = metrics.mean_absolute_error(y_true, y_pred)
        row[f"{split}_mse"] = metrics.mean_squared_error(y_true, y_pred)
    row["test_r2"] = metrics.r2_score(data["y_test"], model.predict(data["X_test"]))
    label = model_label(kind, hparams)
    with tracking.child_run(parent_run_id, label, {"model": kind, **hparams}) as run_id:
        tracking.log_metrics(
            run_id, {k: v for k, v in row.items() if k.endswith(("_mae", "_mse", "_r2"))}
        )
        y_test, p_test = data["y_test"], model.predict(data["X_test"])
        tracking.log_figure(
            run_id,
            plot_predicted_vs_true(y_test, p_test, f"{label}: test"),
            "plots/predicted_vs_true.png",
        )
        tracking.log_figure(
            run_id,
            plot_residuals(y_test, p_test, f"{label}: test residuals"),
            "plots/residuals.png",
        )
        if kind == "sgd":
            history = {"train_loss": model.loss_history_, "val_loss": model.val_loss_history_}
            tracking.log_metric_history(run_id, history, first_step=1)
            fig = plot_loss_curve(
                model.loss_history_, model.val_loss_history_, f"{label}: half-MSE per epoch"
            )
            tracking.log_figure(run_id, fig, "plots/loss_curve.png")
        weights = {"mean": scaler.mean_, "scale": scaler.scale_, "weights": model.weights_}
        # the model takes raw features: the original (unstandardized) test rows are its example
        raw_example = scaler.inverse_transform(data["X_test"][:5])
        row["model_uri"] = tracking.log_pyfunc_model(run_id, "linear", weights, raw_example)
        row["run_id"] = run_id
    return row
