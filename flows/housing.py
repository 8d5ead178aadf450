"""Experiment 1: linear regression on LIBSVM housing_scale, as a Prefect flow (its parameters
are declared in flows.experiments.HOUSING)."""

from __future__ import annotations

from itertools import product

from prefect import flow

from flows.experiments import HOUSING, nested_tags, register_best
from tasks import tracking
from tasks.data import fetch_cached, load_split, log_dataset, log_feature_stats, refreshed
from tasks.data import standardize as standardize_features
from tasks.linear import evaluate, fit_model
from tasks.registry import mean_baseline
from tasks.report import report_results

D = HOUSING.defaults()


@flow(name="housing_regression", log_prints=True)
def housing_regression(
    dataset: str = D["dataset"],
    models: list[str] = D["models"],
    alphas: list[float] = D["alphas"],
    sgd_lrs: list[float] = D["sgd_lrs"],
    sgd_epochs: list[int] = D["sgd_epochs"],
    sgd_batch_size: int = D["sgd_batch_size"],
    seed: int = D["seed"],
    test_size: float = D["test_size"],
    split_random_state: int = D["split_random_state"],
    val_split: float = D["val_split"],
    standardize: bool = D["standardize"],
    refresh_data: bool = D["refresh_data"],
    parent_run_id: str | None = None,
    run_tags: dict[str, str] | None = None,
    registry: bool = True,
) -> dict:
    """fetch -> split -> standardize (train only) -> fit OLS, ridge per alpha and SGD per
    (lr, epochs) in parallel (the kinds in ``models``) -> evaluate each on train/val/test ->
    best by validation MAE -> register it.

    The data steps (fetch, split, standardize) are cached across runs by Prefect
    (tasks.data); ``refresh_data`` runs them again.

    ``standardize=False`` fits on the features as downloaded (housing_scale is already in
    [-1, 1]): the course notebook's printed ridge errors are those of that fit.
    ``parent_run_id`` nests the flow's MLflow run under another (a sweep's trial) and
    ``run_tags`` are set on it as it is created; ``registry=False`` leaves the model registry
    alone."""
    call = dict(locals())
    for key in ("parent_run_id", "run_tags", "registry"):
        call.pop(key)
    with tracking.parent_run(
        "housing", "housing_regression", call, tags=nested_tags(parent_run_id, run_tags)
    ) as run_id:
        path = fetch_cached(dataset, refresh=refresh_data)
        split = refreshed(load_split, refresh_data)(path, test_size, split_random_state, val_split)
        log_dataset(run_id, dataset, path, split)
        data, scaler = refreshed(standardize_features, refresh_data)(split, standardize)
        log_feature_stats(run_id, split, data, standardize)
        configs = [("ols", {})] if "ols" in models else []
        configs += [("ridge", {"alpha": a}) for a in alphas if "ridge" in models]
        configs += [
            ("sgd", {"lr": lr, "epochs": ep, "batch_size": sgd_batch_size, "random_state": seed})
            for lr, ep in product(sgd_lrs, sgd_epochs)
            if "sgd" in models
        ]
        fitted = [fit_model.submit(kind, hp, data) for kind, hp in configs]
        rows = [
            evaluate.submit(model, kind, hp, data, scaler, run_id)
            for model, (kind, hp) in zip(fitted, configs, strict=True)
        ]
        for model in fitted:  # a failed fit raises its own error here, not "evaluate never ran"
            model.result()
        result = report_results([r.result() for r in rows], run_id)
        best = result["best"]
        result["model_uri"] = best["model_uri"]
        result["baseline"] = mean_baseline(split["y_train"], split["y_val"])
        tracking.log_metrics(run_id, {HOUSING.baseline_metric: result["baseline"]})
        result["registered"] = None
        if registry:
            result["registered"] = register_best(
                HOUSING, call, best["model_uri"], "best_val_mae", best["val_mae"], run_id,
                result["baseline"],
            )  # fmt: skip
        return result
