"""``mlcore sweep``: an experiment's hyper-parameters swept with Optuna, and its leaderboard."""

from __future__ import annotations

import math
from typing import Annotated

import typer
from rich.text import Text

from flows.cli.errors import friendly_errors, preflight
from flows.cli.render import console, print_table


@friendly_errors
def sweep(
    experiment: Annotated[
        str | None, typer.Argument(help="housing or convnet (not with --resume).")
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            help="NAME=SPEC to sweep (repeatable): a,b,c (choices, a grid axis), LO..HI, "
            "LO..HI:log, LO..HI:int (ranges, for random/tpe).",
        ),
    ] = None,
    sampler: Annotated[
        str | None,
        typer.Option(
            help="grid, random or tpe (default: grid if every --param is a list, else tpe)."
        ),  # fmt: skip
    ] = None,
    trials: Annotated[
        int | None, typer.Option(min=1, help="Trials to run (default: the grid's size, or 10).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seeds the sampler and every trial.")] = 0,
    metric: Annotated[
        str | None,
        typer.Option(
            help="Metric to optimise (default: val_mae for housing, minimised; "
            "best_val_acc for convnet, maximised)."
        ),  # fmt: skip
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Fix a parameter for every trial: NAME=VALUE (repeatable)."),
    ] = None,
    runner: Annotated[
        str | None,
        typer.Option(
            help="sequential, threads or dask (default: dask with --dask-address, else sequential)."
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="Threads or LocalCluster worker processes (default: the cores)."),
    ] = None,
    dask_address: Annotated[
        str | None,
        typer.Option(help="Run the trials on the existing Dask cluster at tcp://HOST:PORT."),
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option(help="Continue the sweep of this MLflow run: run its unfinished trials."),
    ] = None,
    log_models: Annotated[
        str,
        typer.Option(
            help="best: only the best trial logs its model and plots (added when the sweep "
            "ends); all: every trial (convnet; housing trials always log theirs)."
        ),
    ] = "best",
) -> None:
    """Sweep an experiment's hyper-parameters with Optuna; one MLflow child run per trial."""
    from flows.space import check_resume_alone, sweep_config

    # the command line's mistakes are refused first, before any server starts
    check_resume_alone(
        resume, experiment, param, sampler, trials, metric, set_, log_models != "best"
    )
    if not resume:
        sweep_config(experiment, param, sampler, trials, seed, metric, set_, log_models)
    _run(experiment, param, sampler, trials, seed, metric, set_, runner, workers,
         dask_address, resume, log_models)  # fmt: skip


@preflight(flows=True)
def _run(*arguments) -> None:
    from flows.sweep import SweepIncomplete, run_sweep

    try:
        result = run_sweep(*arguments)
    except SweepIncomplete as exc:
        show_sweep_result(exc.result, last_line=False)
        raise
    show_sweep_result(result)


def show_sweep_result(result: dict, last_line: bool = True) -> None:
    board, metric = result["leaderboard"], result["metric"]
    # the board's columns: trial, state, the params, the metric, the other metrics, worker,
    # run_id, error; shown most important first, each failed trial's error on a line below
    cols = list(board.columns)
    params = cols[cols.index("state") + 1 : cols.index(metric)]
    others = cols[cols.index(metric) + 1 : cols.index("worker")]
    columns = ["trial", metric, *params, "state", *others, "run_id", "worker"]
    if not board["run_id"].astype(bool).any():
        columns.remove("run_id")
    rows = [
        {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}
        for row in board.to_dict(orient="records")
    ]
    print_table(
        f"sweep by {metric} (best first)", rows, columns, optional=["worker", *others[::-1]]
    )
    for row in rows:
        if row.get("error"):
            console.print(Text(f"trial {row['trial']} ({row['state']}): {row['error']}"))
    best = result["best"]
    if best is not None:
        console.print(f"best trial: [bold]{best['number']}[/] (child run {best['run_id']}), "
                      f"{metric}={best['metrics'][metric]:.6g}")  # fmt: skip
    console.print(f"sweep_wall_s: {result['sweep_wall_s']:.2f}")
    if last_line:
        console.print(f"MLflow run id: [bold]{result['run_id']}[/]")
