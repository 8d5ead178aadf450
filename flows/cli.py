"""The ``mlcore`` command line: run flows, compare past runs, open the MLflow UI.

A mistake of the user's (a malformed list, an unknown experiment, a failed download) ends
with one ``error: ...`` line and a non-zero exit, never a Python traceback.
"""

from __future__ import annotations

import functools
import logging
import os
import subprocess
import sys
from typing import Annotated, Any

# Before Prefect is imported: no telemetry, and time for the ephemeral API server to start on
# a busy two-core machine.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
# The terminal gets mlcore's own tables, progress bars and one-line errors; Prefect's console
# log lines (a failed task's traceback among them) are off unless asked for, e.g.
# PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL=INFO. Every log still reaches the Prefect API and UI.
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
# MLflow draws a progress bar for every artifact it downloads (mlcore sweep --resume reads one)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.markup import escape  # noqa: E402
from rich.table import Table  # noqa: E402

app = typer.Typer(
    help="mlcore: run the course experiments as Prefect flows, tracked in MLflow.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
run_app = typer.Typer(help="Run a flow now, in this process.", no_args_is_help=True)
app.add_typer(run_app, name="run")
# "Creating initial MLflow database tables...", "Validating input example against model
# signature": noise on a terminal
for _name in ("mlflow.store.db.utils", "mlflow.pyfunc"):
    logging.getLogger(_name).setLevel(logging.WARNING)
console = Console(soft_wrap=True)
err_console = Console(stderr=True)


class UsageError(ValueError):
    """A mistake in what the user typed."""


def friendly_errors(fn):
    """Turn the errors a user can cause into one line on stderr and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import httpx
        from mlflow.exceptions import MlflowException

        try:
            return fn(*args, **kwargs)
        except (
            ValueError, ArithmeticError, OSError, RuntimeError, MlflowException, httpx.HTTPError,
        ) as exc:  # fmt: skip
            msg = exc.message if isinstance(exc, MlflowException) else str(exc)
            if isinstance(exc, httpx.TransportError | ConnectionRefusedError):
                from prefect.settings import PREFECT_API_URL

                if PREFECT_API_URL.value():
                    msg = f"cannot reach the Prefect API at {PREFECT_API_URL.value()}: {msg}"
            line = msg.splitlines()[0] if msg else type(exc).__name__
            err_console.print(f"[bold red]error:[/] {escape(line)}", soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def parse_list(text: str | None, kind: type, option: str) -> list | None:
    """``"1e-4,1e-2,1"`` -> ``[0.0001, 0.01, 1.0]``; a bad item names the option and the item."""
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise UsageError(f"{option}: empty list")
    try:
        return [kind(t) for t in items]
    except ValueError:
        bad = next(t for t in items if not _parses(kind, t))
        raise UsageError(f"{option}: {bad!r} is not a valid {kind.__name__}") from None


def _parses(kind: type, text: str) -> bool:
    try:
        kind(text)
    except ValueError:
        return False
    return True


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def print_table(
    title: str, rows: list[dict[str, Any]], columns: list[str], caption: str | None = None
) -> None:
    table = Table(title=title, caption=caption)
    for col in columns:
        table.add_column(
            col, justify="right" if rows and isinstance(rows[0].get(col), float) else "left"
        )
    for row in rows:
        table.add_row(*(_fmt(row.get(col)) for col in columns))
    console.print(table)


@run_app.command("housing")
@friendly_errors
def run_housing(
    alphas: Annotated[str | None, typer.Option(help="Ridge alphas, comma-separated.")] = None,
    sgd_lr: Annotated[str | None, typer.Option(help="SGD learning rates to tune over.")] = None,
    sgd_epochs: Annotated[str | None, typer.Option(help="SGD epoch counts to tune over.")] = None,
    sgd_batch_size: Annotated[int, typer.Option(min=1, help="SGD mini-batch size.")] = 32,
    seed: Annotated[int, typer.Option(help="Seed of SGD's shuffling.")] = 1234,
) -> None:
    """Linear regression on LIBSVM housing_scale: OLS, ridge per alpha, SGD tuned on val."""
    from flows.housing import housing_regression

    params: dict[str, Any] = {"sgd_batch_size": sgd_batch_size, "seed": seed}
    for key, option, kind, lowest, strict in (
        ("alphas", "--alphas", float, 0, False),
        ("sgd_lrs", "--sgd-lr", float, 0, True),
        ("sgd_epochs", "--sgd-epochs", int, 1, False),
    ):
        text = {"alphas": alphas, "sgd_lrs": sgd_lr, "sgd_epochs": sgd_epochs}[key]
        value = parse_list(text, kind, option)
        if value is None:
            continue
        bad = [v for v in value if v < lowest or (strict and v == lowest)]
        if bad:
            raise UsageError(f"{option}: {bad[0]!r} must be {'>' if strict else '>='} {lowest}")
        params[key] = value
    result = housing_regression(**params)
    show_housing_result(result)


def show_housing_result(result: dict) -> None:
    from tasks.linear import model_label

    hyper = ("alpha", "lr", "epochs", "batch_size")  # the seed is the same for every row
    rows = [
        {**r, "model": model_label(r["model"], {k: r[k] for k in hyper if k in r})}
        for r in sorted(result["results"], key=lambda r: r["val_mae"])
    ]
    cols = ["model", "train_mae", "val_mae", "test_mae", "test_r2"]
    print_table("housing_regression (sorted by validation MAE)", rows, cols)
    best = next(r for r in rows if r["run_id"] == result["best"]["run_id"])
    console.print(f"best by val_mae: [bold]{best['model']}[/] (child run {best['run_id']})")
    console.print(f"MLflow run id: [bold]{result['run_id']}[/]")


@run_app.command("gradcheck")
@friendly_errors
def run_gradcheck(
    layers: Annotated[
        str | None, typer.Option(help="Checks to run, comma-separated (default: all).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random inputs (the course's 231).")] = 231,
) -> None:
    """Gradient-check every layer, sandwich and the ConvNet (fails if any is over threshold)."""
    from flows.gradcheck import gradient_check_flow
    from mlcore.nn.checks import GRADIENT_CHECKS

    names = parse_list(layers, str, "--layers")
    unknown = [n for n in names or [] if n not in GRADIENT_CHECKS]
    if unknown:
        raise UsageError(
            f"--layers: unknown check {unknown[0]!r}; known: {', '.join(GRADIENT_CHECKS)}"
        )
    show_gradcheck_result(gradient_check_flow(layers=names, seed=seed))


def show_gradcheck_result(result: dict) -> None:
    rows = [{**r, "ok": "ok" if r["ok"] else "FAIL"} for r in result["results"]]
    print_table(
        "gradient_check: max relative error",
        rows,
        ["layer", "input", "rel_error", "threshold", "ok"],
    )
    console.print(f"MLflow run id: [bold]{result['run_id']}[/]")


@run_app.command("convnet")
@friendly_errors
def run_convnet(
    dataset: Annotated[str, typer.Option(help="digits (offline) or cifar10.")] = "digits",
    epochs: Annotated[int, typer.Option(min=1)] = 10,
    batch_size: Annotated[int, typer.Option(min=1)] = 50,
    lr: Annotated[float, typer.Option(min=0.0, help="Learning rate.")] = 1e-3,
    update_rule: Annotated[str, typer.Option(help="sgd, sgd_momentum, rmsprop or adam.")] = "adam",
    reg: Annotated[float, typer.Option(min=0.0, help="L2 regularisation.")] = 0.0,
    hidden_dim: Annotated[int | None, typer.Option(min=1, help="Default: per dataset.")] = None,
    num_filters: Annotated[int | None, typer.Option(min=1, help="Default: per dataset.")] = None,
    filter_size: Annotated[int | None, typer.Option(min=1, help="Default: per dataset.")] = None,
    weight_scale: Annotated[
        float | None, typer.Option(min=0.0, help="Default: per dataset.")
    ] = None,
    num_train: Annotated[
        int | None, typer.Option(min=1, help="Use the first N training rows.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of initialisation and minibatches.")] = 0,
) -> None:
    """Train the course's ThreeLayerConvNet with Solver (gated by a gradient check)."""
    from flows.convnet import convnet_training

    if update_rule not in ("sgd", "sgd_momentum", "rmsprop", "adam"):
        raise UsageError(
            f"--update-rule: {update_rule!r} is not one of sgd, sgd_momentum, rmsprop, adam"
        )
    result = convnet_training(
        dataset=dataset, epochs=epochs, batch_size=batch_size, lr=lr, update_rule=update_rule,
        reg=reg, hidden_dim=hidden_dim, num_filters=num_filters, filter_size=filter_size,
        weight_scale=weight_scale, num_train=num_train, seed=seed,
    )  # fmt: skip
    show_convnet_result(result)


def show_convnet_result(result: dict) -> None:
    row = {k: result[k] for k in ("final_train_acc", "best_val_acc", "test_acc")}
    print_table("convnet_training", [row], list(row))
    console.print(f"MLflow run id: [bold]{result['run_id']}[/]")


@run_app.command("pipeline")
@friendly_errors
def run_pipeline(
    convnet_epochs: Annotated[int, typer.Option(min=1)] = 10,
    seed: Annotated[int, typer.Option(help="Seed of the ConvNet training.")] = 0,
) -> None:
    """The main job: housing regression, the gradient checks, the ConvNet on digits."""
    from flows.pipeline import pipeline

    result = pipeline(convnet_epochs=convnet_epochs, seed=seed)
    show_housing_result(result["housing"])
    show_gradcheck_result(result["gradcheck"])
    show_convnet_result(result["convnet"])


@app.command("sweep")
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
    runner: Annotated[str, typer.Option(help="sequential, threads or dask.")] = "sequential",
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="Threads or LocalCluster worker processes (default: the cores)."),
    ] = None,
    dask_address: Annotated[
        str | None,
        typer.Option(help="Run on the existing Dask cluster at tcp://HOST:PORT (--runner dask)."),
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option(help="Continue the sweep of this MLflow run: run its unfinished trials."),
    ] = None,
) -> None:
    """Sweep an experiment's hyper-parameters with Optuna; one MLflow child run per trial."""
    from flows.sweep import SweepIncomplete, run_sweep

    try:
        result = run_sweep(
            experiment, param, sampler, trials, seed, metric, set_, runner, workers,
            dask_address, resume,
        )  # fmt: skip
    except SweepIncomplete as exc:
        show_sweep_result(exc.result, last_line=False)
        raise
    show_sweep_result(result)


def show_sweep_result(result: dict, last_line: bool = True) -> None:
    board = result["leaderboard"]
    drop = [c for c in ("run_id", "error") if c in board and not board[c].astype(bool).any()]
    rows = board.drop(columns=drop).to_dict(orient="records")
    columns = [c for c in board.columns if c not in drop]
    print_table(f"sweep by {result['metric']} (best first)", rows, columns)
    best = result["best"]
    if best is not None:
        console.print(f"best trial: [bold]{best['number']}[/] (child run {best['run_id']}), "
                      f"{result['metric']}={best['metrics'][result['metric']]:.6g}")  # fmt: skip
    console.print(f"sweep_wall_s: {result['sweep_wall_s']:.2f}")
    if last_line:
        console.print(f"MLflow run id: [bold]{result['run_id']}[/]")


@app.command("runs")
@friendly_errors
def runs(
    experiment: Annotated[str, typer.Argument(help="MLflow experiment, e.g. housing.")],
    sort: Annotated[str | None, typer.Option(help="Metric to sort by (ascending).")] = None,
    desc: Annotated[
        bool, typer.Option("--desc", help="Sort descending (e.g. accuracies).")
    ] = False,
    limit: Annotated[int, typer.Option(min=1, help="How many runs to show.")] = 20,
    children: Annotated[bool, typer.Option(help="Show each model's child run too.")] = False,
    plot: Annotated[
        str | None, typer.Option(help="Also write a bar chart of one metric per run (PNG).")
    ] = None,
    metric: Annotated[
        str | None, typer.Option(help="Metric to plot (default: --sort, else the first).")
    ] = None,
) -> None:
    """Compare past runs of EXPERIMENT, read back from MLflow: params and metrics as columns."""
    from flows.compare import metric_columns, plot_metric, run_table, save_plot

    rows, columns = run_table(experiment, sort, limit, children, descending=desc)
    if not rows:
        console.print(f"experiment {experiment!r} has no runs yet")
        return
    if plot is not None:
        known = metric_columns(rows, columns)
        chosen = metric or sort or (known[0] if known else None)
        if chosen is None:
            raise UsageError(f"--plot: the runs of {experiment!r} have no metrics")
        if chosen not in known:
            raise UsageError(
                f"--metric: no run has metric {chosen!r} (metrics: {', '.join(known)})"
            )
        title = f"{experiment}: {chosen} per run"
        save_plot(plot_metric(rows, chosen, title), plot)
    # a column that is the same in every run says nothing about the comparison: caption it
    same = [c for c in columns[3:] if len(rows) > 1 and len({_fmt(r.get(c)) for r in rows}) == 1]
    caption = ", ".join(f"{c}={_fmt(rows[0].get(c))}" for c in same)
    shown = [c for c in columns if c not in same]
    print_table(
        f"MLflow experiment {experiment!r}", rows, shown, caption and f"same in all: {caption}"
    )
    if plot is not None:
        console.print(f"plot of {chosen} written to {plot}")


@app.command("rerun")
@friendly_errors
def rerun(
    run_id: Annotated[str, typer.Argument(help="The MLflow run id of a past flow run.")],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Change a parameter: key=value (repeatable; lists a,b,c)."),
    ] = None,
) -> None:
    """Run a past run's flow again with its parameters (some changed with --set) and say
    whether it reproduced the original metrics, data and code."""
    from flows.rerun import rerun as rerun_flow

    out = rerun_flow(run_id, set_ or [])
    console.print(f"{out['flow']}: rerun of {out['original']} is MLflow run [bold]{out['new']}[/]")
    for key, (old, new) in out["changed"].items():
        console.print(f"changed parameter {key}: {old!r} -> {new!r}")
    for what in ("data", "code"):
        if out[what]:
            old, new = out[what]
            console.print(f"{what} differs: {old} -> {new}")
    if out["metrics_differ"]:
        rows = [
            {"metric": k, "original": _exact(a), "rerun": _exact(b)}
            for k, (a, b) in out["metrics_differ"].items()
        ]
        print_table("metrics that differ", rows, ["metric", "original", "rerun"])
    if out["reproduced"]:
        console.print("reproduced exactly: same parameters, data, code and every metric")
    elif not out["metrics_differ"]:
        console.print("every metric is the same")


def _exact(value: float | None) -> str:
    return "(missing)" if value is None else repr(value)


@app.command("predict")
@friendly_errors
def predict(
    model_uri: Annotated[
        str, typer.Argument(help="Any MLflow model URI, e.g. models:/housing-regressor@champion.")
    ],
    input_file: Annotated[
        str, typer.Argument(metavar="INPUT", help="A numeric CSV (header optional) or a .npy file.")
    ],
    output: Annotated[
        str | None, typer.Option(help="Write the predictions as CSV here instead.")
    ] = None,
) -> None:
    """Score INPUT with a model from MLflow: one prediction per line (or CSV to --output)."""
    import numpy as np
    import pandas as pd

    from tasks.registry import predict_file

    pred = np.asarray(predict_file(model_uri, input_file))
    flat = pred.reshape(len(pred), -1)
    if output is not None:
        cols = (
            ["prediction"]
            if flat.shape[1] == 1
            else [f"prediction_{j}" for j in range(flat.shape[1])]
        )
        pd.DataFrame(flat, columns=cols).to_csv(output, index=False)
        err_console.print(f"{len(flat)} predictions written to {output}")
        return
    for row in flat:
        typer.echo(",".join(repr(v.item()) for v in row))


@app.command("ui")
@friendly_errors
def ui(
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the UI.")] = 5000,
) -> None:
    """Start the MLflow UI on this machine's tracking store (MLFLOW_TRACKING_URI or ./mlflow.db)."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    if uri.startswith(("http://", "https://")):
        console.print(f"MLFLOW_TRACKING_URI is a tracking server: its UI is at {uri}")
        return
    console.print(f"MLflow UI for {uri} at http://{host}:{port} (Ctrl-C to stop)")
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
           "--host", host, "--port", str(port), "--workers", "1"]  # fmt: skip
    # the job runner would start several worker processes a local UI has no use for
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    try:
        raise typer.Exit(subprocess.call(cmd, env=env))
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


def _register_operations() -> None:
    """serve, server and trigger live in flows.ops_cli (they operate deployments)."""
    from flows import ops_cli

    app.command("serve")(friendly_errors(ops_cli.serve))
    app.command("server")(friendly_errors(ops_cli.server))
    app.command("trigger")(friendly_errors(ops_cli.trigger))


_register_operations()

if __name__ == "__main__":
    app()
