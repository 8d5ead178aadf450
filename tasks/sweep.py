"""Hyper-parameter sweeps: samplers, trials and the record.

A trial is one run of the experiment's own flow (``mlcore run EXPERIMENT`` with the trial's
parameters and seed), nested under the sweep's MLflow run, leaving the registry alone; it is
seeded from the sweep's seed and the trial number only. The flow is named by its
``module:function`` path (flows.experiments declares it), so this module imports no flow.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import socket
import time
from typing import Any

import numpy as np
import optuna
import pandas as pd
from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from tasks import tracking

# ----------------------------------------------------------------------------- trials


def trial_seed(seed: int, number: int) -> int:
    """The seed of trial ``number`` of a sweep seeded ``seed``: independent of the runner, the
    worker and the order trials finish in."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0] >> 1)


def trial_name(number: int, params: dict[str, Any]) -> str:
    """The trial's MLflow run name, what it is: ``trial 3: lr=0.003 reg=0``."""
    shown = " ".join(
        f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )
    return f"trial {number}: {shown}" if shown else f"trial {number}"


def worker_id() -> str:
    """``host:pid`` of the process training the trial."""
    return f"{socket.gethostname()}:{os.getpid()}"


@task(task_run_name="trial-{number}", cache_policy=NO_CACHE)
def run_trial(
    flow: str,
    arguments: dict[str, Any],
    reported: tuple[str, ...],
    baseline_metric: str,
    sweep_seed: int,
    number: int,
    parent_run_id: str,
    tracking_uri: str,
    name: str | None = None,
    resume: str | None = None,
    subflow: bool = False,
) -> dict[str, Any]:
    """Run trial ``number``: the flow ``module:function`` with ``arguments``, the trial's seed,
    nested under the sweep's run and without registering, wherever the task runner puts it (a
    thread, a Dask worker process); with ``resume``, the trial's unfinished run of that id
    continued from its last checkpoint; ``subflow``: as a subflow (a flow that submits tasks
    to a task runner of its own), else its function inside this task. Returns its run id,
    model URI, ``reported`` metrics (as the flow logged them), the trivial baseline's
    ``baseline_metric``, the trial's seed and ``host:pid``."""
    from prefect.settings import PREFECT_API_URL

    started = time.time()  # when the task's own code began (after Dask and Prefect's engine)
    tracking.use_tracking_uri(tracking_uri)
    seed = trial_seed(sweep_seed, number)
    module, _, function = flow.partition(":")
    flow_fn = getattr(importlib.import_module(module), function)
    # the flow's own function inside this task, unless it needs a subflow (see
    # Experiment.trial_subflow): a subflow's run costs a trial about 1 s (its creation,
    # states and heartbeat thread in the Prefect API)
    flow_fn = flow_fn if subflow else flow_fn.fn
    # the Prefect API this task reports to: the parent's, never a server of the worker's own
    tags = {"mlcore.trial": str(number), "mlcore.worker": worker_id(),
            "mlcore.prefect_api_url": PREFECT_API_URL.value() or "",
            "mlflow.runName": name or f"trial {number}"}  # fmt: skip
    if resume is None:
        result = flow_fn(
            **arguments, seed=seed, parent_run_id=parent_run_id, run_tags=tags, registry=False
        )
    else:  # the trial's own run, continued from its last checkpoint, by this worker now
        tracking.set_tags(resume, {k: v for k, v in tags.items() if k != "mlflow.runName"})
        result = flow_fn(**arguments, seed=seed, resume=resume, registry=False)
    run_id = result["run_id"]
    if all(k in result for k in (*reported, "baseline")):  # what the flow logged, as it did
        logged = {**{k: result[k] for k in reported}, baseline_metric: result["baseline"]}
    else:  # (housing's flow returns them nested): read back from the run
        logged = tracking.client().get_run(run_id).data.metrics
    if result["model_uri"] is not None:  # None: a lean trial's (see Experiment.lean_trials)
        tracking.set_tags(run_id, {"mlcore.model_uri": result["model_uri"]})
    return {
        "run_id": run_id, "model_uri": result["model_uri"], "baseline": logged.get(baseline_metric),
        "metrics": {k: float(logged[k]) for k in reported if k in logged},
        "worker": worker_id(), "seed": seed, "train_s": result.get("train_s"),
        "started": started,
    }  # fmt: skip


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


def best_trial(trials: list[dict[str, Any]], metric: str, higher_is_better: bool) -> dict | None:
    """The finished trial with the best ``metric`` (the lowest number among equals), or None."""
    finished = [t for t in trials if t["state"] == "COMPLETE"]
    if not finished:
        return None
    pick = max if higher_is_better else min
    return pick(sorted(finished, key=lambda t: t["number"]), key=lambda t: t["metrics"][metric])


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
    best = best_trial(trials, metric, higher_is_better)
    if best is not None:
        tracking.log_metrics(
            parent_run_id,
            {"best_trial": best["number"], metric: best["metrics"][metric]},
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

    # a parameter every finished trial had the same value of says nothing (and its slice plot
    # would have an empty axis): the plots and importances are of the ones that varied
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    names = list(done[0].params) if done else []
    varied = [n for n in names if len({repr(t.params.get(n)) for t in done}) > 1]
    if not varied:
        tracking.set_tags(run_id, {"importances": "unavailable: no parameter varied"})
        return
    with warnings.catch_warnings():  # optuna's matplotlib plots are flagged experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        axes = ovm.plot_slice(study, params=varied, target_name=metric)
        fig = np.ravel(axes)[0].figure
        fig.set_size_inches(4 * max(len(np.ravel(axes)), 1), 4)
        tracking.log_figure(run_id, fig, f"plots/{metric}_vs_params.png")
        plt.close(fig)
        try:
            # a warning of the evaluator (with few trials, Optuna's default PED-ANOVA warns that
            # it cannot tell the parameters apart) means its numbers say nothing: not logged
            with warnings.catch_warnings(record=True) as warned:
                warnings.simplefilter("always")
                importances = optuna.importance.get_param_importances(study, params=varied)
        except (RuntimeError, ValueError) as exc:  # too few finished trials, nothing varied
            tracking.set_tags(run_id, {"importances": f"unavailable: {exc}"})
            return
        doubt = [
            w for w in warned if not issubclass(w.category, optuna.exceptions.ExperimentalWarning)
        ]
        if doubt:
            reason = str(doubt[0].message).splitlines()[0]
            tracking.set_tags(run_id, {"importances": f"unavailable: Optuna: {reason}"})
            return
        if not importances:
            return
        tracking.log_metrics(run_id, {f"importance.{k}": v for k, v in importances.items()})
        ax = ovm.plot_param_importances(study, params=varied, target_name=metric)
        tracking.log_figure(run_id, ax.figure, "plots/param_importances.png")
        plt.close(ax.figure)
