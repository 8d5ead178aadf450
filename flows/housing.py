"""Experiment 1: linear regression on LIBSVM housing_scale, as a Prefect flow."""

from __future__ import annotations

from itertools import product

from prefect import flow

from tasks import tracking
from tasks.data import fetch_dataset, load_split, log_dataset
from tasks.data import standardize as standardize_features
from tasks.linear import evaluate, fit_model
from tasks.registry import housing_data_key, mean_baseline, register_model
from tasks.report import report_results

DEFAULT_ALPHAS = (1e-4, 1e-2, 1.0, 10.0, 100.0)


@flow(name="housing_regression", log_prints=True)
def housing_regression(
    dataset: str = "housing_scale",
    alphas: list[float] = list(DEFAULT_ALPHAS),
    sgd_lrs: list[float] = [0.001, 0.01, 0.05],
    sgd_epochs: list[int] = [200],
    sgd_batch_size: int = 32,
    seed: int = 1234,
    test_size: float = 0.33,
    split_random_state: int = 42,
    val_split: float = 0.2,
    standardize: bool = True,
) -> dict:
    """fetch -> split -> standardize (train only) -> fit OLS, ridge per alpha and SGD per
    (lr, epochs) in parallel -> evaluate each on train/val/test -> best by validation MAE.

    ``standardize=False`` fits on the features as downloaded (housing_scale is already in
    [-1, 1]): the course notebook's printed ridge errors are those of that fit."""
    call = dict(locals())
    with tracking.parent_run("housing", "housing_regression", call) as run_id:
        path = fetch_dataset(dataset)
        split = load_split(path, test_size, split_random_state, val_split)
        log_dataset(run_id, dataset, path, split)
        data, scaler = standardize_features(split, run_id, standardize)
        configs = [("ols", {})]
        configs += [("ridge", {"alpha": a}) for a in alphas]
        configs += [
            ("sgd", {"lr": lr, "epochs": ep, "batch_size": sgd_batch_size, "random_state": seed})
            for lr, ep in product(sgd_lrs, sgd_epochs)
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
        key = housing_data_key(dataset, test_size, split_random_state, val_split)
        baseline = mean_baseline(split["y_train"], split["y_val"])
        result["registered"] = register_model(
            best["model_uri"], "housing-regressor", "best_val_mae", best["val_mae"],
            False, key, run_id, baseline, "train-mean",
        )  # fmt: skip
        return result
