"""The experiments' parameter tables in the docs, generated from the registry
(``make docs`` rewrites the marked blocks of docs/experiments.md; a test checks they are
current)."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from flows import experiments
from flows.experiments import Experiment, Param


def _type_name(param: Param) -> str:
    def name(t: Any) -> str:
        return getattr(t, "__name__", str(t))

    text = f"list of {name(param.item_type)}" if param.is_list else name(param.item_type)
    return f"{text} or none" if param.optional else text


def _constraint(param: Param) -> str:
    if param.allowed:
        return "one of " + ", ".join(map(str, param.allowed))
    lo, hi = param.minimum, param.maximum
    strict = "<" if param.exclusive else "<="
    if lo is not None and hi is not None:
        return f"{lo:g} {strict} x {strict} {hi:g}"
    if lo is not None:
        return f"{'>' if param.exclusive else '>='} {lo:g}"
    return ""


def default_text(param: Param) -> str:
    if param.default is None and param.per_dataset:
        return ", ".join(f"{k}: {v:g}" for k, v in param.per_dataset.items())
    if param.is_list and param.default is not None:
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in param.default)
    if isinstance(param.default, float):
        return f"{param.default:g}"
    return "none" if param.default is None else str(param.default).lower() if isinstance(
        param.default, bool) else str(param.default)  # fmt: skip


def parameter_table(exp: Experiment) -> str:
    """The experiment's parameters as a Markdown table (docs/experiments.md); for a sweepable
    experiment, how a sweep may use each."""
    sweepable = exp.name in experiments.SWEEPABLE
    head = ["parameter", "`mlcore run` option", "type", "default", "allowed"]
    head += ["sweep", "help"] if sweepable else ["help"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in exp.params:
        cells = [f"`{p.name}`", f"`{p.option_name}`", _type_name(p), default_text(p),
                 _constraint(p)]  # fmt: skip
        if sweepable:
            sweep = "per trial" if p.name == "seed" else "--set only" if p.data else "yes"
            cells.append(sweep + (f" (one item: `{p.alias}`)" if p.alias and p.is_list else ""))
        lines.append("| " + " | ".join([*cells, p.help]) + " |")
    return "\n".join(lines)


def render_docs(text: str) -> str:
    """``text`` with each block between ``<!-- parameters:NAME -->`` and
    ``<!-- /parameters:NAME -->`` replaced by :func:`parameter_table` of experiment NAME."""

    def table(match: re.Match) -> str:
        name = match.group(1)
        body = parameter_table(experiments.get(name))
        return f"<!-- parameters:{name} -->\n{body}\n<!-- /parameters:{name} -->"

    return re.sub(
        r"<!-- parameters:(\w+) -->.*?<!-- /parameters:\1 -->", table, text, flags=re.DOTALL
    )


if __name__ == "__main__":  # make docs: regenerate the parameter tables of docs/experiments.md
    for page in sys.argv[1:]:
        path = Path(page)
        path.write_text(render_docs(path.read_text()))
