"""``mlcore runs``: past runs of an experiment compared, read back from MLflow."""

from __future__ import annotations

from typing import Annotated

import typer

from flows.cli.errors import UsageError, friendly_errors, preflight
from flows.cli.render import console, fmt, print_table


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
    metrics = metric_columns(rows, columns)
    if plot is not None:
        chosen = metric or sort or (metrics[0] if metrics else None)
        if chosen is None:
            raise UsageError(f"--plot: the runs of {experiment!r} have no metrics")
        if chosen not in metrics:
            raise UsageError(
                f"--metric: no run has metric {chosen!r} (metrics: {', '.join(metrics)})"
            )
        title = f"{experiment}: {chosen} per run"
        save_plot(plot_metric(rows, chosen, title), plot)
    # most important first: the run, how it ended, its metrics (the sorted one first), params
    params = [c for c in columns[3:] if c not in metrics and c != "kind"]
    order = ["run_id", "status", "kind"] + sorted(metrics, key=lambda m: m != sort) + params
    order = [c for c in order if c in columns] + ["start"]
    # a column that is the same in every run says nothing about the comparison: caption it
    same = [
        c for c in order[1:-1] if len(rows) > 1 and len({fmt(r.get(c)) for r in rows}) == 1
    ]  # fmt: skip
    caption = ", ".join(f"{c}={fmt(rows[0].get(c))}" for c in same)
    layout = print_table(
        f"MLflow experiment {experiment!r}",
        rows,
        [c for c in order if c not in same],
        caption and f"same in all: {caption}",
        optional=["start"],
    )
    if plot is not None:
        console.print(f"plot of {chosen} written to {plot}")
    if layout == "table":  # the ids above are shortened: the first row's in full
        first = f"{'highest' if desc else 'lowest'} {sort}" if sort else "newest"
        console.print(f"{first}: run {rows[0]['run_id']}", highlight=False)
