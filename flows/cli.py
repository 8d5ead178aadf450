"""The ``mlcore`` command line: run flows, compare past runs, open the MLflow UI.

A mistake of the user's (a malformed list, an unknown experiment, a failed download) ends
with one ``error: ...`` line and a non-zero exit, never a Python traceback.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import subprocess
import sys
import threading
from typing import Annotated, Any

# Before Prefect is imported: no telemetry, and time for the ephemeral API server to start on
# a busy two-core machine.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
# The terminal gets mlcore's own tables, progress bars and one-line errors; Prefect's console
# log lines (a failed task's traceback among them) are off unless asked for, e.g.
# PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL=INFO. Every log still reaches the Prefect API and UI.
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
# MLflow retries an unanswered HTTP request 7 times with back-off by default (minutes before a
# dead tracking server is reported); the CLI checks the store before any work and tolerates
# a short outage itself (tasks.tracking.MetricBuffer), so its requests retry briefly.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
# mlcore's fast layers: idle OpenMP threads sleep instead of spinning on the cores the next
# BLAS call needs (read when libgomp loads; mlcore itself changes no process-wide setting).
os.environ.setdefault("OMP_WAIT_POLICY", "passive")
# and OpenBLAS's threads stop spinning after 2**20 cycles (about 0.4 ms) instead of its default
# 2**28 (about 0.1 s), which left a thread busy through the kernels between two GEMMs (read
# when numpy loads OpenBLAS; measured here: a training step 5-11% faster on two cores)
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "20")
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
logging.getLogger("mlflow.pyfunc").setLevel(logging.WARNING)
# ... and the SQLite store logs every "database is locked" it then retries as an ERROR with a
# traceback; a retry that fails for good still raises, and that error is the one line printed
logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
console = Console(soft_wrap=True)
err_console = Console(stderr=True)


class UsageError(ValueError):
    """A mistake in what the user typed."""


def friendly_errors(fn):
    """Turn the errors a user can cause into one line on stderr and exit code 1; a SIGTERM,
    Ctrl-C (SIGINT) or SIGHUP into one line and exit code 128 + the signal's number, after
    the run was ended KILLED. The processes the command started stop as the interpreter exits
    (the temporary Prefect server's ``atexit`` hook, after Prefect has sent its last logs),
    and with it in any case (``flows.stack.tie``)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from tasks.killed import OWNED, kill_reason

        restore = _catch_signals()
        owned = len(OWNED)
        try:
            return fn(*args, **kwargs)
        except BaseException as exc:
            reason = kill_reason(exc)
            if len(OWNED) > owned and (reason or isinstance(exc, Exception)):
                from tasks.tracking import RunStatus, end_own_runs, error_line

                status = RunStatus.KILLED if reason else RunStatus.FAILED
                end_own_runs(owned, reason or error_line(exc), status)
            if isinstance(exc, _user_errors()):
                import httpx
                from mlflow.exceptions import MlflowException

                msg = exc.message if isinstance(exc, MlflowException) else str(exc)
                if isinstance(exc, httpx.TransportError | ConnectionRefusedError):
                    from prefect.settings import PREFECT_API_URL

                    if PREFECT_API_URL.value():
                        msg = f"cannot reach the Prefect API at {PREFECT_API_URL.value()}: {msg}"
                line = msg.splitlines()[0] if msg else type(exc).__name__
                err_console.print(f"[bold red]error:[/] {escape(line)}", soft_wrap=True)
                raise typer.Exit(1) from None
            if reason is None:
                raise
            signum = getattr(exc, "signum", None) or getattr(exc, "signal", signal.SIGINT)
            err_console.print(f"[bold red]error:[/] {reason}", soft_wrap=True)
            raise typer.Exit(128 + int(signum)) from None
        finally:
            restore()

    return wrapper


def _user_errors() -> tuple[type[BaseException], ...]:
    """The errors a user can cause (imported when one happens: the CLI starts its work, and the
    temporary Prefect server, before it imports MLflow)."""
    import httpx
    from mlflow.exceptions import MlflowException

    return (ValueError, ArithmeticError, OSError, RuntimeError, MlflowException, httpx.HTTPError)


def _catch_signals():
    """SIGTERM, SIGINT and SIGHUP (a closed terminal) raise ``tasks.killed.RunKilled`` in
    the main thread: the flow's run ends KILLED (``tracking.end_run``) and the command exits.
    A second signal while that happens exits at once (the started servers' watchdogs stop
    them). Returns a function restoring the previous handlers."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    from tasks.killed import RunKilled

    received: list[int] = []

    def handler(signum, frame):
        if received:
            os._exit(128 + signum)
        received.append(signum)
        raise RunKilled(signum)

    # a signal the command was started to ignore (nohup, a shell's background job) stays so
    previous = {
        sig: signal.signal(sig, handler)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        if signal.getsignal(sig) is not signal.SIG_IGN
    }

    def restore():
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore


def preflight(flows: bool = False):
    """Before a command's work: one short check of the MLflow tracking store (a few seconds,
    not MLflow's minutes of retries); with ``flows``, the temporary Prefect server the
    command's flows report to, one that dies with it (``flows.stack.own_prefect_server``),
    started first and waited for last."""

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            server = None
            if flows:  # first: the server starts while the rest is imported
                from flows.stack import own_prefect_server

                server = own_prefect_server()
            check_tracking_store()
            if server is not None:
                server.wait_healthy()
            return fn(*args, **kwargs)

        return wrapper

    return decorate


def check_tracking_store() -> None:
    import mlflow

    from tasks.tracking import tracking_store_error

    uri = mlflow.get_tracking_uri()
    problem = tracking_store_error(uri)
    if problem is not None:
        raise ConnectionError(f"cannot reach the MLflow tracking store {uri}: {problem}")


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
        # a run id is what `mlcore rerun` and `--resume` take: never shortened or wrapped
        whole = {"no_wrap": True, "min_width": 32} if col == "run_id" else {}
        table.add_column(
            col, justify="right" if rows and isinstance(rows[0].get(col), float) else "left",
            **whole,
        )  # fmt: skip
    for row in rows:
        table.add_row(*(_fmt(row.get(col)) for col in columns))
    console.print(table)


@run_app.command("housing")
@friendly_errors
@preflight(flows=True)
def run_housing(
    alphas: Annotated[str | None, typer.Option(help="Ridge alphas, comma-separated.")] = None,
    sgd_lr: Annotated[str | None, typer.Option(help="SGD learning rates to tune over.")] = None,
    sgd_epochs: Annotated[str | None, typer.Option(help="SGD epoch counts to tune over.")] = None,
    sgd_batch_size: Annotated[int, typer.Option(min=1, help="SGD mini-batch size.")] = 32,
    seed: Annotated[int, typer.Option(help="Seed of SGD's shuffling.")] = 1234,
    standardize: Annotated[
        bool,
        typer.Option(
            help="Standardize the features on the training rows (--no-standardize: fit on the "
            "features as downloaded, which reproduces the course's printed ridge errors)."
        ),
    ] = True,
) -> None:
    """Linear regression on LIBSVM housing_scale: OLS, ridge per alpha, SGD tuned on val."""
    from flows.housing import housing_regression

    params: dict[str, Any] = {
        "sgd_batch_size": sgd_batch_size, "seed": seed, "standardize": standardize,
    }  # fmt: skip
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
@preflight(flows=True)
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
@preflight(flows=True)
def run_convnet(
    ctx: typer.Context,
    dataset: Annotated[str, typer.Option(help="digits (offline) or cifar10.")] = "digits",
    epochs: Annotated[int, typer.Option(min=1)] = 10,
    batch_size: Annotated[
        int | None, typer.Option(min=1, help="Default: per dataset (digits 25, cifar10 50).")
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(min=0.0, help="Learning rate (per dataset: digits 1e-2, cifar10 1e-3)."),
    ] = None,
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
    resume: Annotated[
        str | None,
        typer.Option(
            metavar="RUN_ID",
            help="Continue this unfinished (FAILED or KILLED) MLflow run from its last "
            "checkpoint, with its own parameters.",
        ),
    ] = None,
) -> None:
    """Train the course's ThreeLayerConvNet with Solver (gated by a gradient check)."""
    from flows.convnet import convnet_training

    if resume is not None:
        from tasks import tracking

        # by name: typer's Context may come from its own copy of click
        given = [
            name for name in ctx.params
            if name != "resume" and ctx.get_parameter_source(name).name != "DEFAULT"
        ]  # fmt: skip
        if given:
            raise UsageError(
                f"--resume continues the run with its own parameters: drop "
                f"--{given[0].replace('_', '-')}"
            )
        params = tracking.resumable_params(resume, "convnet_training")
        show_convnet_result(convnet_training(**params, resume=resume))
        return
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
    if result.get("resumed_from_epoch"):
        console.print(f"resumed from the checkpoint of epoch {result['resumed_from_epoch']}")
    row = {k: result[k] for k in ("final_train_acc", "best_val_acc", "test_acc")}
    print_table("convnet_training", [row], list(row))
    console.print(f"MLflow run id: [bold]{result['run_id']}[/]")


@run_app.command("pipeline")
@friendly_errors
@preflight(flows=True)
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
@preflight(flows=True)
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
@preflight()
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
@preflight(flows=True)
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
    _print_environment(out["environment"])
    if out["reproduced"]:
        console.print(
            "reproduced exactly: same parameters, data, code, environment and every metric"
        )
    elif not out["metrics_differ"]:
        console.print("every metric is the same")


def _print_environment(env: dict) -> None:
    if env["python"]:
        console.print(f"python differs: {env['python'][0]} -> {env['python'][1]}")
    if not env["recorded"]:
        console.print("environment: the original run has no record of it (pip freeze)")
    elif env["same"]:
        console.print(f"same environment (python and {env['count']} package versions)")
    elif env["packages"]:
        rows = [
            {"package": name, "original": a or "(absent)", "rerun": b or "(absent)"}
            for name, (a, b) in env["packages"].items()
        ]
        console.print(f"environment differs: {len(rows)} packages")
        print_table("packages that differ", rows, ["package", "original", "rerun"])


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
    trust_model: Annotated[
        bool,
        typer.Option(
            "--trust-model",
            help="Load a model mlcore did not log. Loading an MLflow model can run code "
            "(unpickling, a models-from-code file), so by default only mlcore's own model "
            "kinds are loaded, checked before loading; use this only for a model whose "
            "source you trust.",
        ),
    ] = False,
) -> None:
    """Score INPUT with a model from MLflow: one prediction per line (or CSV to --output).
    Only models mlcore logged, unless --trust-model."""
    import numpy as np
    import pandas as pd

    from tasks.registry import predict_file

    if model_uri.startswith(("runs:/", "models:/")):
        check_tracking_store()

    pred = np.asarray(predict_file(model_uri, input_file, trust=trust_model))
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

    app.command("serve")(friendly_errors(preflight(flows=True)(ops_cli.serve)))
    app.command("server")(friendly_errors(ops_cli.server))
    app.command("trigger")(friendly_errors(ops_cli.trigger))


_register_operations()

if __name__ == "__main__":
    app()
