"""``mlcore run EXPERIMENT``'s options, built from the experiment registry: one option per
declared parameter, its help, default and constraint from the declaration, its text read by
:mod:`flows.params` (the parser every command shares)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, Any

import typer

from flows.experiments import Experiment, Param, default_text
from flows.params import parse

RESUME_HELP = (
    "Continue this unfinished (FAILED or KILLED) MLflow run from its last checkpoint, with its "
    "own parameters."
)


def _metavar(param: Param) -> str:
    kind = {int: "INT", float: "FLOAT", bool: "BOOL", str: "TEXT"}.get(param.item_type, "TEXT")
    if param.choices:
        kind = "|".join(map(str, param.choices))
    return f"{kind},..." if param.is_list else kind


def _option(param: Param) -> inspect.Parameter:
    flag = param.option_name
    if param.base_type is bool:
        name = flag[2:]
        option = typer.Option(f"--{name}/--no-{name}", help=param.help)
        return inspect.Parameter(
            param.name, inspect.Parameter.KEYWORD_ONLY, default=param.default,
            annotation=Annotated[bool, option],
        )  # fmt: skip
    extra = " Comma-separated." if param.is_list else ""
    option = typer.Option(
        flag, help=param.help + extra, metavar=_metavar(param), show_default=default_text(param)
    )
    return inspect.Parameter(
        param.name, inspect.Parameter.KEYWORD_ONLY, default=None,
        annotation=Annotated[str | None, option],
    )  # fmt: skip


def run_command(exp: Experiment, run: Callable[..., None]) -> Callable[..., None]:
    """A typer command for ``exp`` that parses its options and calls ``run(values, resume)``
    with the flow arguments given (the rest keep the flow's defaults). An experiment whose
    flow can resume also gets ``--resume RUN_ID``, which takes no other option."""
    params = [p for p in exp.params if p.cli]
    signature = [_option(p) for p in params]
    if exp.resumable:
        signature.append(
            inspect.Parameter(
                "resume",
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=Annotated[str | None, typer.Option(metavar="RUN_ID", help=RESUME_HELP)],
            )  # fmt: skip
        )

    def command(**given: Any) -> None:
        resume = given.pop("resume", None)
        values = {}
        for p in params:
            raw = given.get(p.name)
            if p.base_type is bool:
                if raw != p.default:
                    values[p.name] = raw
            elif raw is not None:
                values[p.name] = parse(p, raw, p.option_name)
        if resume is not None and values:
            first = next(p for p in params if p.name in values)
            raise ValueError(
                f"--resume continues the run with its own parameters: drop {first.option_name}"
            )
        run(values, resume)

    command.__signature__ = inspect.Signature(signature)
    command.__name__ = f"run_{exp.name}"
    command.__doc__ = exp.help
    return command
