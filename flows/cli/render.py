"""Tables as a person reads them (design.md, "What a person sees").

On a terminal a table fits the width it gets: its columns come most important first, numbers
at 4 significant digits, run ids as their first 8 characters (the command prints the id a user
needs whole on a line of its own). Headers break at underscores when that makes the table fit,
then the optional columns are left out, last first, with a line naming them; a table that still
does not fit becomes one block of ``key: value`` lines per record, every value whole.

In a file or a pipe (no terminal) there is no width: plain columns aligned with spaces, every
value whole, run ids too. No layout ever cuts a value to an ellipsis.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.text import Text

console = Console(soft_wrap=True)
err_console = Console(stderr=True)

SHORT_ID = 8  # characters of a run id in a terminal's table
GAP = "  "  # between two columns


def fmt(value: Any) -> str:
    """A cell: floats at 4 significant digits, None empty, the rest as ``str`` on one line."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else " ".join(str(value).splitlines())


def print_table(
    title: str,
    rows: list[dict[str, Any]],
    columns: list[str],
    caption: str | None = None,
    *,
    optional: Sequence[str] = (),
    out: Console | None = None,
) -> str:
    """Print ``rows`` (dicts) under ``title`` as the ``columns`` (most important first), then
    ``caption``. ``optional`` columns may be left out on a narrow terminal, the first listed
    first. Returns the layout used: ``"table"`` (a terminal's, run ids shortened),
    ``"vertical"`` (a terminal's, one block per row) or ``"plain"`` (a file or pipe)."""
    out = out or console
    if not out.is_terminal:
        _print_plain(out, title, rows, columns, caption)
        return "plain"
    width = out.width
    dropped: list[str] = []
    left = [c for c in optional if c in columns]
    while True:
        shown = [c for c in columns if c not in dropped]
        for wrap in (False, True):
            lines = _table_lines(rows, shown, wrap)
            if max(len(line) for line, _ in lines) <= width:
                _say(out, title, style="bold")
                for line, style in lines:
                    out.print(Text(line.rstrip(), style=style), soft_wrap=True)
                if dropped:
                    _say(out, f"not shown at {width} columns: {', '.join(dropped)}")
                if caption:
                    _say(out, caption)
                return "table"
        if not left:
            break
        dropped.append(left.pop(0))
    _print_vertical(out, title, rows, columns, caption)
    return "vertical"


def _say(out: Console, text: str, style: str = "") -> None:
    """One paragraph, wrapped between words at the console's width (a word longer than the
    width is folded onto the next line, never cut)."""
    out.print(Text(text, style=style, overflow="fold"), soft_wrap=False)


def _numeric(rows: list[dict[str, Any]], column: str) -> bool:
    values = [r.get(column) for r in rows if r.get(column) is not None]
    return bool(values) and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in values
    )


def _align(columns: list[str], texts: list[str], widths: dict, right: dict) -> str:
    """One line of cells, each padded to its column's width (numbers to the right)."""
    return GAP.join(
        t.rjust(widths[c]) if right[c] else t.ljust(widths[c])
        for c, t in zip(columns, texts, strict=True)
    ).rstrip()


def _header_lines(name: str, width: int | None) -> list[str]:
    """``name`` on one line, or with ``width`` broken after underscores into lines of at most
    ``width`` characters (a part longer than that stays whole)."""
    if width is None or len(name) <= width:
        return [name]
    parts = [p + "_" for p in name.split("_")]
    parts[-1] = parts[-1][:-1]
    lines = [""]
    for part in parts:
        if lines[-1] and len(lines[-1]) + len(part) > width:
            lines.append("")
        lines[-1] += part
    return lines


def _table_lines(
    rows: list[dict[str, Any]], columns: list[str], wrap: bool
) -> list[tuple[str, str]]:
    """A terminal table's lines and their styles; with ``wrap``, headers broken at
    underscores down to their column's widest value."""
    cells = {
        c: [fmt(r.get(c))[: SHORT_ID if c == "run_id" else None] for r in rows] for c in columns
    }
    values_w = {c: max((len(v) for v in cells[c]), default=0) for c in columns}
    heads = {c: _header_lines(c, max(values_w[c], 1) if wrap else None) for c in columns}
    widths = {c: max(values_w[c], *(len(h) for h in heads[c])) for c in columns}
    right = {c: _numeric(rows, c) for c in columns}

    def line(texts: list[str]) -> str:
        return _align(columns, texts, widths, right)

    depth = max(len(h) for h in heads.values())
    out = [
        (line([heads[c][i] if i < len(heads[c]) else "" for c in columns]), "bold")
        for i in range(depth)
    ]
    out.append((GAP.join("─" * widths[c] for c in columns), "dim"))
    out.extend((line([cells[c][i] for c in columns]), "") for i in range(len(rows)))
    return out


def _print_vertical(
    out: Console,
    title: str,
    rows: list[dict[str, Any]],
    columns: list[str],
    caption: str | None,
) -> None:
    """One block of ``key: value`` lines per row (empty values left out), values aligned
    where the line fits; a value too long for its key's line gets lines of its own."""
    _say(out, title, style="bold")
    # values aligned after the longest key that takes at most half the width
    key_w = max((len(c) + 1 for c in columns if len(c) < out.width // 2), default=0)
    for row in rows:
        out.print()
        for c in columns:
            value = fmt(row.get(c))
            if not value:
                continue
            line = f"{c + ':':<{key_w}} {value}"
            if len(line) > out.width:  # unaligned
                line = f"{c}: {value}"
            if len(line) > out.width:  # the value on lines of its own
                _say(out, f"{c}:")
                line = f"  {value}"
            _say(out, line)
    if caption:
        out.print()
        _say(out, caption)


def _print_plain(
    out: Console,
    title: str,
    rows: list[dict[str, Any]],
    columns: list[str],
    caption: str | None,
) -> None:
    """Columns aligned with spaces and no width limit; an empty cell is ``-``."""
    cells = {c: [fmt(r.get(c)) or "-" for r in rows] for c in columns}
    widths = {c: max([len(c), *(len(v) for v in cells[c])]) for c in columns}
    right = {c: _numeric(rows, c) for c in columns}

    def line(texts: list[str]) -> str:
        return _align(columns, texts, widths, right)

    lines = [
        title,
        line(columns),
        *(line([cells[c][i] for c in columns]) for i in range(len(rows))),
    ]
    for text in [*lines, caption] if caption else lines:
        out.print(Text(text), soft_wrap=True)
