"""Hyper-parameter sweeps: what each experiment's trial is, its search space, and the record.

A trial is one configuration of an experiment trained by the experiment's own tasks (their
``.fn``: the Prefect task engine runs once, around the whole trial, in ``run_trial``), seeded
from the sweep's seed and the trial number only, and logged as a child run of the sweep's run.

Housing trial parameters: ``model`` (ols | ridge | sgd), ``alpha`` (ridge), ``lr``, ``epochs``,
``batch_size`` (sgd); the flow's list parameters are accepted as aliases (``alphas`` -> alpha,
``sgd_lrs`` -> lr, ``sgd_epochs`` -> epochs, ``sgd_batch_size`` -> batch_size). ConvNet trial
parameters are ``convnet_training``'s own (lr, reg, hidden_dim, update_rule, ...).
"""

from __future__ import annotations

import json
import math
import os
import socket
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
import pandas as pd
from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from tasks import tracking

SAMPLERS = ("grid", "random", "tpe")


@dataclass(frozen=True)
class Experiment:
    """What a sweep of one experiment may vary and fix, and how its trials are judged."""

    name: str
    trial_params: dict[str, Any]  # name -> type (swept or fixed per trial)
    data_params: dict[str, Any]  # name -> default (fixed for the whole sweep: --set only)
    metrics: dict[str, bool]  # metric a sweep may optimise -> higher is better
    default_metric: str
    reported: tuple[str, ...]  # the metrics a trial returns (and the leaderboard shows)
    aliases: dict[str, str] = field(default_factory=dict)


EXPERIMENTS = {
    "housing": Experiment(
        name="housing",
        trial_params={"model": str, "alpha": float, "lr": float, "epochs": int, "batch_size": int},
        data_params={
            "dataset": "housing_scale",
            "test_size": 0.33,
            "split_random_state": 42,
            "val_split": 0.2,
            "standardize": True,
        },  # fmt: skip
        metrics={"val_mae": False, "val_mse": False, "train_mae": False, "train_mse": False},
        default_metric="val_mae",
        reported=(
            "train_mae",
            "val_mae",
            "test_mae",
            "train_mse",
            "val_mse",
            "test_mse",
            "test_r2",
        ),  # fmt: skip
        aliases={
            "alphas": "alpha",
            "sgd_lrs": "lr",
            "sgd_lr": "lr",
            "sgd_epochs": "epochs",
            "sgd_batch_size": "batch_size",
        },  # fmt: skip
    ),
    "convnet": Experiment(
        name="convnet",
        trial_params={
            "epochs": int,
            "batch_size": int,
            "lr": float,
            "update_rule": str,
            "lr_decay": float,
            "reg": float,
            "hidden_dim": int,
            "num_filters": int,
            "filter_size": int,
            "weight_scale": float,
        },  # fmt: skip
        data_params={"dataset": "digits", "num_train": None},
        metrics={"best_val_acc": True, "final_train_acc": True},
        default_metric="best_val_acc",
        reported=("best_val_acc", "final_train_acc", "test_acc"),
    ),
}
HOUSING_MODELS = ("ols", "ridge", "sgd")
HOUSING_DEFAULTS = {"alpha": 1.0, "lr": 0.01, "epochs": 200, "batch_size": 32}
UPDATE_RULES = ("sgd", "sgd_momentum", "rmsprop", "adam")
CONVNET_DEFAULTS = {
    "epochs": 10, "batch_size": 50, "lr": 1e-3, "update_rule": "adam", "lr_decay": 1.0,
    "reg": 0.0,
}  # fmt: skip


def get_experiment(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; expected one of {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]


# ---------------------------------------------------------------- search space and settings


def _value(text: str, kind: type, where: str) -> Any:
    try:
        if kind is bool:
            return {"true": True, "1": True, "yes": True, "false": False, "0": False,
                    "no": False}[text.lower()]  # fmt: skip
        if kind is int:
            number = float(text)
            if not number.is_integer():
                raise ValueError
            return int(number)
        return kind(text)
    except (ValueError, KeyError):
        raise ValueError(f"{where}: {text!r} is not a valid {kind.__name__}") from None


def _name_and_text(item: str, option: str, form: str) -> tuple[str, str]:
    """``"lr = 1e-3"`` -> ``("lr", "1e-3")``; anything but NAME=TEXT is a one-line error."""
    raw, sep, text = item.partition("=")
    raw, text = raw.strip(), text.strip()
    if not sep or not raw or not text:
        raise ValueError(f"{option}: expected {form}, got {item!r}")
    return raw, text


def _name(exp: Experiment, raw: str, option: str) -> str:
    name = exp.aliases.get(raw, raw)
    if name in exp.data_params:
        raise ValueError(
            f"{option} {raw}: the data parameter {raw!r} is the same for every trial; "
            f"fix it with --set {raw}=VALUE"
        )
    if name == "seed":
        raise ValueError(f"{option} seed: trials are seeded from --seed and the trial number")
    if name not in exp.trial_params:
        known = ", ".join([*exp.trial_params, *exp.data_params])
        raise ValueError(f"{option}: {exp.name} has no parameter {raw!r}; known: {known}")
    return name


def _check_choice(name: str, value: Any, where: str) -> None:
    allowed = {"model": HOUSING_MODELS, "update_rule": UPDATE_RULES}.get(name)
    if allowed and value not in allowed:
        raise ValueError(f"{where}: {value!r} is not one of {', '.join(allowed)}")


def parse_space(
    experiment: str, specs: list[str]
) -> dict[str, optuna.distributions.BaseDistribution]:
    """``["lr=1e-4..1e-1:log", "update_rule=adam,sgd"]`` -> Optuna distributions. A comma list
    is a categorical choice (a grid axis); ``LO..HI`` a range, ``:log`` log-uniform, ``:int``
    integers (an int parameter's range is integer anyway)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    exp = get_experiment(experiment)
    space: dict[str, Any] = {}
    for spec in specs:
        raw, text = _name_and_text(spec, "--param", "NAME=SPEC")
        name = _name(exp, raw, "--param")
        where = f"--param {raw}"
        if name in space:
            raise ValueError(f"{where}: given twice")
        kind = exp.trial_params[name]
        if ".." not in text:
            items = [t.strip() for t in text.split(",") if t.strip()]
            if not items:
                raise ValueError(f"{where}: empty list")
            values = [_value(t, kind, where) for t in items]
            for v in values:
                _check_choice(name, v, where)
            if len(set(values)) != len(values):
                raise ValueError(f"{where}: a value is listed twice")
            space[name] = CategoricalDistribution(values)
            continue
        if kind is str:
            raise ValueError(f"{where}: {name} is a choice, not a range; list values a,b,c")
        bounds, *flags = text.split(":")
        unknown = [f for f in flags if f not in ("log", "int")]
        if unknown:
            raise ValueError(f"{where}: unknown range flag {unknown[0]!r} (use :log, :int)")
        lo_text, _, hi_text = bounds.partition("..")
        integer = kind is int or "int" in flags
        lo, hi = (_value(t.strip(), int if integer else float, where) for t in (lo_text, hi_text))
        if not lo < hi:
            raise ValueError(f"{where}: the range {lo}..{hi} is empty (LO must be below HI)")
        log = "log" in flags
        if log and lo <= 0:
            raise ValueError(f"{where}: a :log range must be positive, got {lo}..{hi}")
        dist = IntDistribution if integer else FloatDistribution
        space[name] = dist(lo, hi, log=log)
    if not space:
        raise ValueError("--param: give at least one parameter to sweep (NAME=SPEC)")
    return space


def parse_fixed(experiment: str, items: list[str], space: dict) -> dict[str, Any]:
    """``--set NAME=VALUE`` items -> values of the experiment's parameters (data parameters
    included); a parameter cannot be both swept and fixed."""
    exp = get_experiment(experiment)
    fixed: dict[str, Any] = {}
    for item in items:
        raw, text = _name_and_text(item, "--set", "NAME=VALUE")
        where = f"--set {raw}"
        name = exp.aliases.get(raw, raw)
        if name in exp.data_params:
            default = exp.data_params[name]
            kind = type(default) if default is not None else int
            fixed[name] = None if text.lower() == "none" else _value(text, kind, where)
            continue
        name = _name(exp, raw, "--set")
        if name in space:
            raise ValueError(f"{where}: {raw} is swept by --param; it cannot be fixed too")
        fixed[name] = _value(text, exp.trial_params[name], where)
        _check_choice(name, fixed[name], where)
    return {**exp.data_params, **fixed}


def check_metric(experiment: str, metric: str | None) -> tuple[str, bool]:
    """The metric to optimise (the experiment's validation metric by default) and whether
    higher is better."""
    exp = get_experiment(experiment)
    metric = metric or exp.default_metric
    if metric not in exp.metrics:
        raise ValueError(
            f"--metric: {metric!r} is not a metric a {exp.name} sweep can optimise; "
            f"choose from {', '.join(exp.metrics)}"
        )
    return metric, exp.metrics[metric]


def grid_of(space: dict) -> dict[str, list]:
    """The grid of a space of choices only (GridSampler's search space)."""
    ranges = [
        n
        for n, d in space.items()
        if not isinstance(d, optuna.distributions.CategoricalDistribution)
    ]
    if ranges:
        raise ValueError(
            f"--sampler grid: {ranges[0]} is a range; give a comma list, or use --sampler "
            "random or tpe"
        )
    return {n: list(d.choices) for n, d in space.items()}


def make_sampler(
    name: str, space: dict, seed: int, trials: int = 10
) -> optuna.samplers.BaseSampler:
    """Optuna's sampler ``name``, seeded. TPE starts from min(10, trials / 2) random trials
    (Optuna's default of 10 would leave a 10-trial sweep all random)."""
    if name == "grid":
        return optuna.samplers.GridSampler(grid_of(space), seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, trials // 2)))
    raise ValueError(f"--sampler: {name!r} is not one of {', '.join(SAMPLERS)}")


def space_to_json(space: dict) -> str:
    return json.dumps({n: optuna.distributions.distribution_to_json(d) for n, d in space.items()})


def space_from_json(text: str) -> dict:
    return {n: optuna.distributions.json_to_distribution(d) for n, d in json.loads(text).items()}


# ----------------------------------------------------------------------------- trials


def trial_seed(seed: int, number: int) -> int:
    """The seed of trial ``number`` of a sweep seeded ``seed``: independent of the runner, the
    worker and the order trials finish in."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0] >> 1)


def worker_id() -> str:
    """``host:pid`` of the process training the trial."""
    return f"{socket.gethostname()}:{os.getpid()}"


def housing_hparams(params: dict[str, Any], seed: int) -> tuple[str, dict[str, Any]]:
    """A housing trial's model and its estimator's hyper-parameters, as the flow builds them:
    a ridge alpha, or SGD's lr, epochs and batch size with ``random_state`` = the trial seed."""
    kind = params.get("model")
    if kind is None:
        sgd = any(k in params for k in ("lr", "epochs", "batch_size"))
        if sgd and "alpha" in params:
            raise ValueError("housing: give --param model=... to sweep both alpha and SGD's lr")
        kind = "sgd" if sgd else "ridge"
    get = {**HOUSING_DEFAULTS, **params}
    if kind == "ols":
        return kind, {}
    if kind == "ridge":
        return kind, {"alpha": float(get["alpha"])}
    return kind, {
        "lr": float(get["lr"]), "epochs": int(get["epochs"]),
        "batch_size": int(get["batch_size"]), "random_state": seed,
    }  # fmt: skip


def housing_trial(params: dict, fixed: dict, seed: int, number: int, parent_run_id: str) -> dict:
    """One housing model: the flow's fetch -> split -> standardize -> fit_model -> evaluate
    (which logs the child run and the model)."""
    from tasks.data import fetch_dataset, load_split, standardize
    from tasks.linear import evaluate, fit_model

    kind, hparams = housing_hparams({**fixed, **params}, seed)
    path = fetch_dataset.fn(fixed["dataset"])
    split = load_split.fn(path, fixed["test_size"], fixed["split_random_state"], fixed["val_split"])
    data, scaler = standardize.fn(split, enabled=fixed.get("standardize", True))
    model = fit_model.fn(kind, hparams, data)
    row = evaluate.fn(model, kind, hparams, data, scaler, parent_run_id)
    tracking.set_tags(row["run_id"], {"mlcore.trial": number, "mlcore.worker": worker_id()})
    metrics = {k: float(row[k]) for k in EXPERIMENTS["housing"].reported}
    return {"run_id": row["run_id"], "model_uri": row["model_uri"], "metrics": metrics}


def convnet_trial(params: dict, fixed: dict, seed: int, number: int, parent_run_id: str) -> dict:
    """One ConvNet: the flow's load_images -> gradient_gate -> train_convnet ->
    evaluate_convnet, all logged to the trial's child run."""
    from mlcore.data import DATASETS
    from mlcore.data.images import class_names
    from tasks.convnet import (
        evaluate_convnet,
        gradient_gate,
        load_images,
        model_config,
        train_convnet,
    )  # fmt: skip
    from tasks.data import fetch_dataset

    args = {**CONVNET_DEFAULTS, **fixed, **params}
    dataset = args["dataset"]
    config = model_config(
        dataset, **{k: args.get(k) for k in ("hidden_dim", "num_filters", "filter_size",
                                             "weight_scale", "reg")}
    )  # fmt: skip
    solver_config = {
        "update_rule": args["update_rule"], "optim_config": {"learning_rate": args["lr"]},
        "lr_decay": args["lr_decay"], "batch_size": args["batch_size"],
        "num_epochs": args["epochs"], "num_train_samples": 1000,
    }  # fmt: skip
    # the flow's parameter names (as a single run logs them), resolved, and the trial's seed
    logged = {
        **{k: args.get(k) for k in EXPERIMENTS["convnet"].trial_params}, **config,
        **{k: v for k, v in solver_config.items() if k != "optim_config"},
        "dataset": dataset, "num_train": fixed["num_train"], "seed": seed,
    }  # fmt: skip
    with tracking.child_run(parent_run_id, f"trial-{number}", logged) as run_id:
        tracking.set_tags(run_id, {"mlcore.trial": number, "mlcore.worker": worker_id()})
        path = fetch_dataset.fn(dataset) if dataset in DATASETS else None
        data = load_images.fn(dataset, fixed["num_train"], run_id, path)
        num_classes = len(class_names(dataset))
        gradient_gate.fn(
            data["X_train"].shape[1:], config["filter_size"], num_classes, seed, run_id
        )
        trained = train_convnet.fn(data, num_classes, config, solver_config, seed, run_id)
        result = evaluate_convnet.fn(trained, data, run_id)
    metrics = {k: float(result[k]) for k in EXPERIMENTS["convnet"].reported}
    return {"run_id": run_id, "model_uri": result["model_uri"], "metrics": metrics}


TRIALS = {"housing": housing_trial, "convnet": convnet_trial}


@task(task_run_name="trial-{number}", cache_policy=NO_CACHE)
def run_trial(
    experiment: str,
    params: dict[str, Any],
    fixed: dict[str, Any],
    sweep_seed: int,
    number: int,
    parent_run_id: str,
    tracking_uri: str,
) -> dict[str, Any]:
    """Train and log trial ``number`` wherever the task runner puts it (a thread, a Dask
    worker process); returns its child run id, model URI, metrics and ``host:pid``."""
    from prefect.settings import PREFECT_API_URL

    tracking.use_tracking_uri(tracking_uri)
    seed = trial_seed(sweep_seed, number)
    result = TRIALS[experiment](params, fixed, seed, number, parent_run_id)
    # the Prefect API this task reported to: the parent's, never a server of the worker's own
    api = PREFECT_API_URL.value() or ""
    tracking.set_tags(
        result["run_id"], {"mlcore.prefect_api_url": api, "mlcore.model_uri": result["model_uri"]}
    )
    return {**result, "number": number, "params": params, "worker": worker_id(), "seed": seed}


# ----------------------------------------------------------------------------- the record


def leaderboard(trials: list[dict[str, Any]], metric: str, higher_is_better: bool) -> pd.DataFrame:
    """One row per trial: number, state, parameters, the metric and the other metrics, the
    worker and the child run; finished trials best first, then the others by number."""
    rows = []
    for t in trials:
        row = {"trial": t["number"], "state": t["state"], **t["params"]}
        row[metric] = t.get("metrics", {}).get(metric, math.nan)
        row.update({k: v for k, v in t.get("metrics", {}).items() if k != metric})
        row.update({"worker": t.get("worker", ""), "run_id": t.get("run_id", ""),
                    "error": t.get("error", "")})  # fmt: skip
        rows.append(row)
    df = pd.DataFrame(rows)
    done = df["state"] == "COMPLETE"
    ranked = df[done].sort_values([metric, "trial"], ascending=[not higher_is_better, True])
    return pd.concat([ranked, df[~done].sort_values("trial")], ignore_index=True)


def metric_tag_name(metric: str) -> str:
    """The registry tag a sweep's best value is compared under: the flows' name for it."""
    return metric if metric.startswith("best_") else f"best_{metric}"


@task(cache_policy=NO_CACHE)
def record_sweep(
    parent_run_id: str,
    study: optuna.Study,
    trials: list[dict[str, Any]],
    metric: str,
    higher_is_better: bool,
) -> dict[str, Any]:
    """On the sweep's run: the leaderboard (``leaderboard.csv``, MLflow table
    ``leaderboard.json``, a Prefect table artifact), ``plots/<metric>_vs_params.png``,
    Optuna's parameter importances (metrics ``importance.<param>``, a plot), ``best_trial``
    and ``best_<metric>``. Returns ``{"leaderboard", "best"}`` (best is None without a
    finished trial)."""
    board = leaderboard(trials, metric, higher_is_better)
    tracking.log_dataframe(parent_run_id, board, "leaderboard.csv")
    tracking.log_table(parent_run_id, board, "leaderboard.json")
    create_table_artifact(
        key="sweep-leaderboard",
        table=json.loads(board.round(6).fillna("").to_json(orient="records")),
        description=f"MLflow run {parent_run_id}: trials by {metric}, best first",
    )
    finished = [t for t in trials if t["state"] == "COMPLETE"]
    best = None
    if finished:
        pick = max if higher_is_better else min
        best = pick(sorted(finished, key=lambda t: t["number"]), key=lambda t: t["metrics"][metric])
        tracking.log_metrics(
            parent_run_id,
            {"best_trial": best["number"], metric_tag_name(metric): best["metrics"][metric]},
        )
        tracking.set_tags(
            parent_run_id,
            {"best_trial": best["number"], "best_run_id": best["run_id"],
             "best_model_uri": best["model_uri"], "best_params": json.dumps(best["params"])},
        )  # fmt: skip
        _log_plots(parent_run_id, study, metric)
    return {"leaderboard": board, "best": best}


def _log_plots(run_id: str, study: optuna.Study, metric: str) -> None:
    import warnings

    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    with warnings.catch_warnings():  # optuna's matplotlib plots are flagged experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        axes = ovm.plot_slice(study, target_name=metric)
        fig = np.ravel(axes)[0].figure
        fig.set_size_inches(4 * max(len(np.ravel(axes)), 1), 4)
        tracking.log_figure(run_id, fig, f"plots/{metric}_vs_params.png")
        plt.close(fig)
        try:
            importances = optuna.importance.get_param_importances(study)
        except (RuntimeError, ValueError) as exc:  # too few finished trials, nothing varied
            tracking.set_tags(run_id, {"importances": f"unavailable: {exc}"})
            return
        if not importances:
            return
        tracking.log_metrics(run_id, {f"importance.{k}": v for k, v in importances.items()})
        ax = ovm.plot_param_importances(study, target_name=metric)
        tracking.log_figure(run_id, ax.figure, "plots/param_importances.png")
        plt.close(ax.figure)
