"""``mlcore rerun``: a past run's flow again, and whether it reproduced the original."""

from __future__ import annotations

from typing import Annotated

import typer

from flows.cli.errors import friendly_errors, preflight
from flows.cli.render import console, print_table


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
