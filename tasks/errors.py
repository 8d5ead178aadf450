"""Errors as people read them: one line."""

from __future__ import annotations


def error_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name if it has none); an
    ``MlflowException``'s message without its error-code prefix."""
    msg = getattr(exc, "message", None)
    msg = msg if isinstance(msg, str) and msg else str(exc)
    return msg.strip().splitlines()[0] if msg.strip() else type(exc).__name__
