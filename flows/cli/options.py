"""Parsing of option values the user types, e.g. ``--alphas 1e-4,1e-2,1``."""

from __future__ import annotations

from flows.cli.errors import UsageError


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
