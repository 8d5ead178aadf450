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
# "Creating initial MLflow database tables..." is noise on a terminal
logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
console = Console()
err_console = Console(stderr=True)


class UsageError(ValueError):
    """A mistake in what the user typed."""


def friendly_errors(fn):
    """Turn the errors a user can cause into one line on stderr and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from mlflow.exceptions import MlflowException

        try:
            return fn(*args, **kwargs)
        except (ValueError, ArithmeticError, OSError, MlflowException) as exc:
            msg = exc.message if isinstance(exc, MlflowException) else str(exc)
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
    for key, value in {
        "alphas": parse_list(alphas, float, "--alphas"),
        "sgd_lrs": parse_list(sgd_lr, float, "--sgd-lr"),
        "sgd_epochs": parse_list(sgd_epochs, int, "--sgd-epochs"),
    }.items():
        if value is not None:
            params[key] = value
    result = housing_regression(**params)
    show_housing_result(result)


def show_housing_result(result: dict) -> None:
    rows = sorted(result["results"], key=lambda r: r["val_mae"])
    cols = [
        "model",
        "alpha",
        "lr",
        "epochs",
        "batch_size",
        "train_mae",
        "val_mae",
        "test_mae",
        "test_r2",
    ]
    cols = [c for c in cols if any(c in r for r in rows)]
    print_table("housing_regression (sorted by validation MAE)", rows, cols)
    best = result["best"]
    console.print(f"best by val_mae: [bold]{best['model']}[/] (child run {best['run_id']})")
    console.print(f"MLflow run id: [bold]{result['run_id']}[/]")


@app.command("runs")
@friendly_errors
def runs(
    experiment: Annotated[str, typer.Argument(help="MLflow experiment, e.g. housing.")],
    sort: Annotated[str | None, typer.Option(help="Metric to sort by (ascending).")] = None,
    limit: Annotated[int, typer.Option(min=1, help="How many runs to show.")] = 20,
    children: Annotated[bool, typer.Option(help="Show each model's child run too.")] = False,
) -> None:
    """Compare past runs of EXPERIMENT, read back from MLflow: params and metrics as columns."""
    from flows.compare import run_table

    rows, columns = run_table(experiment, sort=sort, limit=limit, children=children)
    if not rows:
        console.print(f"experiment {experiment!r} has no runs yet")
        return
    # a column that is the same in every run says nothing about the comparison: caption it
    same = [c for c in columns[3:] if len(rows) > 1 and len({_fmt(r.get(c)) for r in rows}) == 1]
    caption = ", ".join(f"{c}={_fmt(rows[0].get(c))}" for c in same)
    shown = [c for c in columns if c not in same]
    print_table(
        f"MLflow experiment {experiment!r}", rows, shown, caption and f"same in all: {caption}"
    )


@app.command("ui")
def ui(
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the UI.")] = 5000,
) -> None:
    """Start the MLflow UI on this machine's tracking store (MLFLOW_TRACKING_URI or ./mlflow.db)."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    console.print(f"MLflow UI for {uri} at http://{host}:{port} (Ctrl-C to stop)")
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--host",
        host,
        "--port",
        str(port),
    ]
    try:
        raise typer.Exit(subprocess.call(cmd, env=os.environ.copy()))
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


if __name__ == "__main__":
    app()
