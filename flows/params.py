"""The one parser of parameter text: ``mlcore run`` options, ``mlcore sweep --param/--set``,
``mlcore rerun --set`` and ``mlcore trigger --set`` all read values through it, against the
parameters declared in :mod:`flows.experiments`, so the same text means the same value
everywhere.

Rules: ``none``/``null`` is None where a parameter may be None; a bool is true/false, yes/no or
1/0; an int may be written as a whole number in float notation (``1e3`` is 1000, ``2.5`` is an
error); a list is comma-separated (``1,10``) or JSON (``[1, 10]``). A value outside its
parameter's constraint is refused naming the parameter.
"""

from __future__ import annotations

import json
import math
from typing import Any

from flows.experiments import Experiment, Param

_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def scalar(text: str, kind: type, where: str) -> Any:
    """``text`` as one value of ``kind`` (int, float, bool or str)."""
    text = text.strip()
    try:
        if kind is bool:
            return _BOOLS[text.lower()]
        if kind is int:
            try:
                return int(text)
            except ValueError:
                number = float(text)
                if not math.isfinite(number) or not number.is_integer():
                    raise
                return int(number)
        if kind is float:
            return float(text)
    except (ValueError, KeyError):
        raise ValueError(f"{where}: {text!r} is not a valid {kind.__name__}") from None
    return text


def parse(param: Param, text: str, where: str) -> Any:
    """``text`` as a value of ``param`` (checked against its constraint)."""
    text = text.strip()
    if param.optional and text.lower() in ("none", "null"):
        return None
    if param.is_list:
        items = _json_list(text)
        if items is None:
            items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise ValueError(f"{where}: empty list")
        value = [scalar(str(t), param.item_type, where) for t in items]
    else:
        value = scalar(text, param.item_type, where)
    return validate(param, value, where)


def parse_item(param: Param, text: str, where: str) -> Any:
    """One item of ``param`` (one value of a list parameter): what a sweep's choice is."""
    value = scalar(text, param.item_type, where)
    check_item(param, value, where)
    return value


def validate(param: Param, value: Any, where: str) -> Any:
    """``value`` (already typed, e.g. from JSON or YAML) if it fits ``param``, else a one-line
    error naming the parameter."""
    if value is None:
        if param.optional or param.default is None:
            return None
        raise ValueError(f"{where}: may not be none")
    if param.is_list:
        if not isinstance(value, list | tuple) or not value:
            raise ValueError(f"{where}: expected a non-empty list, got {value!r}")
        value = [_typed(param.item_type, v, where) for v in value]
        for v in value:
            check_item(param, v, where)
        return value
    value = _typed(param.item_type, value, where)
    check_item(param, value, where)
    return value


def _typed(kind: type, value: Any, where: str) -> Any:
    if isinstance(value, str) and kind is not str:
        return scalar(value, kind, where)
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, int | float) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(kind, True)
    if not ok:
        raise ValueError(f"{where}: {value!r} is not a valid {kind.__name__}")
    return float(value) if kind is float else value


def check_item(param: Param, value: Any, where: str) -> None:
    allowed = param.allowed
    if allowed and value not in allowed:
        raise ValueError(f"{where}: {value!r} is not one of {', '.join(map(str, allowed))}")
    lo, hi, strict = param.minimum, param.maximum, param.exclusive
    if lo is not None and (value < lo or (strict and value == lo)):
        raise ValueError(f"{where}: {value!r} must be {'>' if strict else '>='} {lo:g}")
    if hi is not None and (value > hi or (strict and value == hi)):
        raise ValueError(f"{where}: {value!r} must be {'<' if strict else '<='} {hi:g}")


def split_assignment(item: str, option: str, form: str = "NAME=VALUE") -> tuple[str, str]:
    """``"lr = 1e-3"`` -> ``("lr", "1e-3")``; anything but NAME=TEXT is a one-line error."""
    name, sep, text = item.partition("=")
    name, text = name.strip(), text.strip()
    if not sep or not name or not text:
        raise ValueError(f"{option}: expected {form}, got {item!r}")
    return name, text


def parse_overrides(exp: Experiment, items: list[str], option: str = "--set") -> dict[str, Any]:
    """``["alphas=1,10", "seed=3"]`` -> ``{"alphas": [1.0, 10.0], "seed": 3}`` for the
    experiment's flow parameters."""
    known = [p.name for p in exp.params]
    out = {}
    for item in items:
        key, text = split_assignment(item, option, "key=value")
        if key not in known:
            raise ValueError(
                f"{option}: {exp.flow_name} has no parameter {key!r}; known: {', '.join(known)}"
            )
        out[key] = parse(exp.param(key), text, f"{option} {key}")
    return out


def _json_list(text: str) -> list | None:
    if not text.startswith("["):
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, list) else None
