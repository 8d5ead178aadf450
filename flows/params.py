"""``--set key=value`` overrides, read as the types of a flow's parameters (used by
``mlcore rerun`` and ``mlcore trigger``)."""

from __future__ import annotations

import inspect
import json
import types
import typing
from typing import Any


def parse_overrides(flow, items: list[str]) -> dict[str, Any]:
    """``["alphas=1,10", "seed=3"]`` -> ``{"alphas": [1.0, 10.0], "seed": 3}``, each value
    coerced to the type of the flow's parameter of that name."""
    hints = typing.get_type_hints(flow.fn)
    known = list(inspect.signature(flow.fn).parameters)
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set: expected key=value, got {item!r}")
        if key not in known:
            raise ValueError(
                f"--set: {flow.name} has no parameter {key!r}; known: {', '.join(known)}"
            )
        out[key] = coerce(text.strip(), hints.get(key, str), key)
    return out


def coerce(text: str, annotation: Any, key: str) -> Any:
    """``text`` as a value of ``annotation`` (int, float, bool, str, list[...], X | None)."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        if type(None) in args and text.lower() in ("none", "null"):
            return None
        kinds = [a for a in args if a is not type(None)]
        annotation = kinds[0] if len(kinds) == 1 else str
        args = typing.get_args(annotation)
    if typing.get_origin(annotation) is list:
        kind = args[0] if args else str
        items = _json_list(text)
        if items is None:
            items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise ValueError(f"--set {key}: empty list")
        return [coerce(str(t), kind, key) for t in items]
    try:
        if annotation is bool:
            return {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}[
                text.lower()
            ]
        if annotation is int:
            return int(text)
        if annotation is float:
            return float(text)
    except (ValueError, KeyError):
        raise ValueError(f"--set {key}: {text!r} is not a valid {annotation.__name__}") from None
    return text


def _json_list(text: str) -> list | None:
    if not text.startswith("["):
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, list) else None
