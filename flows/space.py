"""A sweep's command line against the experiment registry: ``--param`` specs become Optuna
distributions, ``--set`` items fixed flow arguments, and a trial's values the keyword
arguments of the experiment's own flow.

A swept list parameter is swept one item at a time under its singular alias (``--param
alpha=1,10``, or ``--param alphas=1,10``: each trial fits ``alphas=[1.0]`` or ``[10.0]``).
"""

from __future__ import annotations

import json
from typing import Any

import optuna

from flows import experiments
from flows.experiments import Experiment, Param
from flows.params import parse, parse_item, scalar, split_assignment


def get_experiment(name: str) -> Experiment:
    return experiments.get(name, experiments.SWEEPABLE)


def _trial_param(exp: Experiment, raw: str, option: str) -> Param:
    param = exp.find(raw)
    if param is None:
        known = ", ".join(p.name for p in exp.params)
        raise ValueError(f"{option}: {exp.name} has no parameter {raw!r}; known: {known}")
    if param.name == "seed":
        raise ValueError(f"{option} seed: trials are seeded from --seed and the trial number")
    return param


def axis_name(param: Param) -> str:
    """The name a swept parameter goes by in the study and the leaderboard: one item of a
    list parameter goes by its singular alias."""
    return param.alias if param.is_list and param.alias else param.name


def parse_space(experiment: str, specs: list[str]) -> dict[str, Any]:
    """``["lr=1e-4..1e-1:log", "update_rule=adam,sgd"]`` -> Optuna distributions. A comma list
    is a categorical choice (a grid axis); ``LO..HI`` a range, ``:log`` log-uniform, ``:int``
    integers (an int parameter's range is integer anyway)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    exp = get_experiment(experiment)
    space: dict[str, Any] = {}
    for spec in specs:
        raw, text = split_assignment(spec, "--param", "NAME=SPEC")
        param = _trial_param(exp, raw, "--param")
        where = f"--param {raw}"
        if param.data:
            raise ValueError(
                f"{where}: the data parameter {raw!r} is the same for every trial; "
                f"fix it with --set {raw}=VALUE"
            )
        name = axis_name(param)
        if name in space:
            raise ValueError(f"{where}: given twice")
        kind = param.item_type
        if ".." not in text:
            items = [t.strip() for t in text.split(",") if t.strip()]
            if not items:
                raise ValueError(f"{where}: empty list")
            values = [parse_item(param, t, where) for t in items]
            if len(set(values)) != len(values):
                raise ValueError(f"{where}: a value is listed twice")
            space[name] = CategoricalDistribution(values)
            continue
        if kind not in (int, float):
            raise ValueError(f"{where}: {name} is a choice, not a range; list values a,b,c")
        bounds, *flags = text.split(":")
        unknown = [f for f in flags if f not in ("log", "int")]
        if unknown:
            raise ValueError(f"{where}: unknown range flag {unknown[0]!r} (use :log, :int)")
        lo_text, _, hi_text = bounds.partition("..")
        integer = kind is int or "int" in flags
        lo, hi = (scalar(t, int if integer else float, where) for t in (lo_text, hi_text))
        if not lo < hi:
            raise ValueError(f"{where}: the range {lo}..{hi} is empty (LO must be below HI)")
        for bound in (lo, hi):
            parse_item(param, repr(bound), where)  # inside the parameter's constraint
        log = "log" in flags
        if log and lo <= 0:
            raise ValueError(f"{where}: a :log range must be positive, got {lo}..{hi}")
        dist = IntDistribution if integer else FloatDistribution
        space[name] = dist(lo, hi, log=log)
    if not space:
        raise ValueError("--param: give at least one parameter to sweep (NAME=SPEC)")
    return space


def parse_fixed(experiment: str, items: list[str], space: dict) -> dict[str, Any]:
    """``--set NAME=VALUE`` items -> flow arguments fixed for every trial, after the data
    parameters' defaults; a parameter cannot be both swept and fixed."""
    exp = get_experiment(experiment)
    fixed: dict[str, Any] = {p.name: p.default for p in exp.params if p.data}
    swept = {exp.find(name).name for name in space}
    for item in items:
        raw, text = split_assignment(item, "--set", "NAME=VALUE")
        param = _trial_param(exp, raw, "--set")
        where = f"--set {raw}"
        if param.name in swept:
            raise ValueError(f"{where}: {raw} is swept by --param; it cannot be fixed too")
        if param.is_list and raw == param.alias:
            fixed[param.name] = [parse_item(param, text, where)]
        else:
            fixed[param.name] = parse(param, text, where)
    return fixed


def flow_arguments(exp: Experiment, params: dict[str, Any], fixed: dict[str, Any]) -> dict:
    """A trial's keyword arguments of the experiment's flow: the fixed ones, the swept values
    (one item of a list parameter as a one-item list) and what the experiment infers from
    them. The seed, nesting and registration are added by the trial."""
    args = dict(fixed)
    for name, value in params.items():
        param = exp.find(name)
        args[param.name] = [value] if param.is_list else value
    given = {k: v for k, v in args.items() if not exp.param(k).data}
    if exp.trial_defaults is not None:
        args.update(exp.trial_defaults(given))
    return args


def check_metric(experiment: str, metric: str | None) -> tuple[str, bool]:
    """The metric to optimise (the experiment's first declared metric by default) and whether
    higher is better."""
    exp = get_experiment(experiment)
    metric = metric or exp.default_metric
    if metric not in exp.metrics:
        raise ValueError(
            f"--metric: {metric!r} is not a metric a {exp.name} sweep can optimise; "
            f"choose from {', '.join(exp.metrics)}"
        )
    return metric, exp.metrics[metric]


def all_choices(space: dict) -> bool:
    return all(isinstance(d, optuna.distributions.CategoricalDistribution) for d in space.values())


# ----------------------------------------------------------------------------- samplers

SAMPLERS = ("grid", "random", "tpe")


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


# which trials log their model and plots: the best one (added when the sweep ends), or all
LOG_MODELS = ("best", "all")


def sweep_config(
    experiment: str | None,
    params: list[str] | None,
    sampler: str | None,
    trials: int | None,
    seed: int,
    metric: str | None,
    fixed: list[str] | None,
    log_models: str = "best",
) -> dict[str, Any]:
    """A new sweep's settings from the command line's text, validated against the registry
    (every refusal names its option); what ``hyperparameter_sweep`` takes as ``config``."""
    if log_models not in LOG_MODELS:
        raise ValueError(f"--log-models: {log_models!r} is not one of {', '.join(LOG_MODELS)}")
    if experiment is None:
        raise ValueError("give the EXPERIMENT to sweep (housing or convnet), or --resume")
    get_experiment(experiment)
    space = parse_space(experiment, params or [])
    sampler = sampler or ("grid" if all_choices(space) else "tpe")
    make_sampler(sampler, space, seed)  # validates (a grid of ranges is an error)
    if sampler == "grid":
        size = 1
        for dist in space.values():
            size *= len(dist.choices)
        if trials is not None and trials > size:
            raise ValueError(f"--trials: the grid has only {size} points, not {trials}")
        trials = trials or size
    metric, _ = check_metric(experiment, metric)
    return {
        "experiment": experiment, "space": space_to_json(space), "sampler": sampler,
        "trials": trials or 10, "seed": seed, "metric": metric,
        "fixed": parse_fixed(experiment, fixed or [], space), "log_models": log_models,
    }  # fmt: skip


def check_resume_alone(resume: str | None, *given: Any) -> None:
    """``--resume`` takes the original sweep's settings: refuse any other given."""
    if resume and any(given):
        raise ValueError(
            "--resume: the sweep's settings are the original run's; give only the runner "
            "options (--runner, --workers, --dask-address)"
        )
