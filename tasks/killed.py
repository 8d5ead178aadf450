"""How a process was stopped by a signal. Kept apart from ``tasks.tracking`` (MLflow, pandas,
matplotlib: seconds of imports) so that the CLI can install its signal handlers before it
imports anything heavy."""

from __future__ import annotations

import signal
import sys

# MLflow runs this process created or took over (tasks.tracking.mark_process, child runs), so
# that a command stopped by a signal or an error can end any of them still RUNNING
# (tasks.tracking.end_own_runs), whatever left it so.
OWNED: list[str] = []


class RunKilled(BaseException):
    """Raised in the main thread by the CLI's SIGTERM/SIGINT handler: the run ends KILLED.
    A BaseException, so no ``except Exception`` (nor a Prefect retry) swallows it."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"killed by {signal.Signals(signum).name}")


def kill_reason(exc: BaseException | None) -> str | None:
    """``"killed by SIGTERM"`` when ``exc`` is a signal that stopped the process (ours, or the
    ``TerminationSignal`` Prefect raises for SIGTERM inside a flow), else None."""
    if isinstance(exc, RunKilled):
        return str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return "killed by SIGINT"
    # only Prefect raises it: if Prefect was never imported, ``exc`` is not one (and a refused
    # option is reported without seconds of importing Prefect)
    prefect_exceptions = sys.modules.get("prefect.exceptions")
    if prefect_exceptions is None:
        return None
    if isinstance(exc, prefect_exceptions.TerminationSignal):
        return f"killed by {signal.Signals(exc.signal).name}"
    return None
