"""How a process was stopped by a signal. Kept apart from ``tasks.tracking`` (MLflow, pandas,
matplotlib: seconds of imports) so that the CLI can install its signal handlers before it
imports anything heavy."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Iterator

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


# A signal handler that raises (ours, Python's KeyboardInterrupt, the TerminationSignal that
# Prefect's flow engine raises for SIGTERM during a flow run) can raise inside SQLAlchemy; the
# exception can leave a SQLite connection holding the database's lock, and every later write
# of this process (the run's KILLED status) then waits MLflow's 20 s busy timeout in vain:
# the run stays RUNNING. So a signal that lands inside a call into the tracking database is
# sent again to the main thread until it lands outside it (at most ``DEFER_S`` later).
DEFER_S = 30.0
DATABASE_MODULES = ("sqlalchemy.", "sqlite3", "mlflow.store.", "psycopg", "pymysql", "alembic.")
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def in_database_call(frame) -> bool:
    """Whether ``frame`` (where a signal landed) is inside a call into a database driver or
    MLflow's SQL store."""
    while frame is not None:
        if str(frame.f_globals.get("__name__", "")).startswith(DATABASE_MODULES):
            return True
        frame = frame.f_back
    return False


def deferring(handler):
    """``handler`` (a Python signal handler), except that a signal landing inside a call into
    the tracking database is delivered again 20 ms later (see ``DATABASE_MODULES``), until it
    lands outside it or ``DEFER_S`` have passed. ``SIG_DFL``/``SIG_IGN`` and a handler that
    already defers are returned as they are."""
    if not callable(handler) or getattr(handler, "defers_database_calls", False):
        return handler
    first: list[float] = []
    main = threading.main_thread().ident

    def wrapper(signum, frame):
        now = time.monotonic()
        if in_database_call(frame) and now - (first or [now])[0] < DEFER_S:
            first[:] = first or [now]
            timer = threading.Timer(0.02, signal.pthread_kill, (main, signum))
            timer.daemon = True
            timer.start()
            return None
        first.clear()
        return handler(signum, frame)

    wrapper.defers_database_calls = True
    wrapper.__wrapped__ = handler
    return wrapper


@contextlib.contextmanager
def signals_wait_for_database() -> Iterator[None]:
    """Within: the handlers of SIGTERM, SIGINT and SIGHUP installed in Python (the CLI's,
    Prefect's, Python's Ctrl-C) are ``deferring``. Each is put back on exit if it is still the
    one installed here. Nothing changes outside the main thread (no signal reaches it)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    installed = {}
    for sig in SIGNALS:
        old = signal.getsignal(sig)
        new = deferring(old)
        if new is not old:
            signal.signal(sig, new)
            installed[sig] = (old, new)
    try:
        yield
    finally:
        for sig, (old, new) in installed.items():
            if signal.getsignal(sig) is new:
                signal.signal(sig, old)
