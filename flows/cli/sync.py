"""``mlcore sync``: send what flows kept in ``./mlcore-unsent`` while the tracking store was
away into their runs (``tasks.tracking.sync``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from flows.cli.errors import check_tracking_store, friendly_errors
from flows.cli.render import console, err_console

UNSENT = "mlcore-unsent"  # tasks.tracking.spool.UNSENT_DIR (not imported: it imports MLflow)


def waiting_notice(argv: list[str]) -> None:
    """One line on stderr when runs' results wait in ``./mlcore-unsent``, before any command
    but ``sync`` itself (and ``--help``); a scheduled run never goes through here."""
    if argv[:1] == ["sync"] or "--help" in argv:
        return
    root = Path.cwd() / UNSENT
    found = [p for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
    if found:
        err_console.print(
            f"note: {len(found)} run(s)' results wait in ./{UNSENT} (kept while the tracking "
            "store was away): send them with `mlcore sync`", soft_wrap=True,
        )  # fmt: skip


@friendly_errors
def sync(
    folder: Annotated[
        Path, typer.Option(help="The folder flows kept their unsent results in.")
    ] = Path(UNSENT),
) -> None:
    """Send what flows kept in ./mlcore-unsent while the tracking store was away (models,
    metrics, params, tags, datasets, plots, child runs) into their runs, then remove it."""
    check_tracking_store()
    from tasks.errors import error_line
    from tasks.tracking.sync import sync_folder, waiting

    found = waiting(folder.resolve())
    if not found:
        console.print(f"nothing to send: {folder} holds no run's folder")
        return
    failed = 0
    for where in found:
        try:
            sent = sync_folder(where)
        except Exception as exc:  # noqa: BLE001 - one run's failure leaves the others to send
            failed += 1
            print(f"{where.name}: not sent (kept): {error_line(exc)}", file=sys.stderr)
            continue
        console.print(
            f"{sent['run_id']}: sent {sent['runs']} run(s), {sent['models']} model(s), "
            f"{sent['metrics']} metric point(s)", soft_wrap=True,
        )  # fmt: skip
    if failed:
        raise RuntimeError(
            f"{failed} of {len(found)} folder(s) not sent, kept in {folder} (why: above)"
        )
