"""The ``mlcore`` command line: run flows, sweep them, compare past runs, rerun one, score
files with a model, open the MLflow UI, operate the deployments.

One module per command group (``run``, ``sweep``, ``runs``, ``rerun``, ``predict``, ``ui``,
``ops``, ``alerts``, ``sync``), plus ``errors`` (one-line errors, signals), ``render`` (tables) and
``process`` (the process's settings). Importing this package changes nothing process-wide and
imports neither Prefect, MLflow nor numpy: ``main()``, the ``mlcore`` entry point, applies the
process's settings (``flows.cli.process``) and then runs the command.
"""

from __future__ import annotations

import sys

import typer

from flows.cli import alerts, ops, predict, rerun, runs, sweep, sync, ui
from flows.cli.errors import UsageError, check_tracking_store, friendly_errors, preflight
from flows.cli.process import set_up_process
from flows.cli.render import console, err_console, fmt, print_table
from flows.cli.run import (
    run_app,
    show_convnet_result,
    show_gradcheck_result,
    show_housing_result,
)
from flows.cli.sweep import show_sweep_result

app = typer.Typer(
    help="mlcore: run the course experiments as Prefect flows, tracked in MLflow.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(run_app, name="run")
app.command("sweep")(sweep.sweep)
app.command("runs")(runs.runs)
app.command("rerun")(rerun.rerun)
app.command("predict")(predict.predict)
app.command("ui")(ui.ui)
app.command("serve")(ops.serve)
app.command("server")(ops.server)
app.command("trigger")(ops.trigger)
app.command("alerts")(alerts.alerts)
app.command("sync")(sync.sync)


def main() -> None:
    """The ``mlcore`` entry point: the process's settings, then the command."""
    set_up_process()
    sync.waiting_notice(sys.argv[1:])
    app()


__all__ = [
    "UsageError",
    "app",
    "check_tracking_store",
    "console",
    "err_console",
    "fmt",
    "friendly_errors",
    "main",
    "preflight",
    "print_table",
    "run_app",
    "set_up_process",
    "show_convnet_result",
    "show_gradcheck_result",
    "show_housing_result",
    "show_sweep_result",
]
