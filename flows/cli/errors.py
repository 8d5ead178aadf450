"""What the user sees when a command goes wrong: a mistake of theirs (a malformed list, an
unknown experiment, an unreachable store) ends with one ``error: ...`` line and exit code 1,
never a Python traceback; a SIGTERM, SIGINT or SIGHUP with one line and 128 + its number."""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading

import typer
from rich.markup import escape

from flows.cli.render import err_console


class UsageError(ValueError):
    """A mistake in what the user typed."""


def friendly_errors(fn):
    """Turn the errors a user can cause into one line on stderr and exit code 1; a SIGTERM,
    Ctrl-C (SIGINT) or SIGHUP into one line and exit code 128 + the signal's number, after
    the run was ended KILLED. The processes the command started stop as the interpreter exits
    (the temporary Prefect server's ``atexit`` hook, after Prefect has sent its last logs),
    and with it in any case (``flows.stack.tie``)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from tasks.killed import OWNED, kill_reason

        restore = _catch_signals()
        owned = len(OWNED)
        try:
            return fn(*args, **kwargs)
        except BaseException as exc:
            reason = kill_reason(exc)
            if len(OWNED) > owned and (reason or isinstance(exc, Exception)):
                from tasks.tracking import RunStatus, end_own_runs, error_line

                status = RunStatus.KILLED if reason else RunStatus.FAILED
                end_own_runs(owned, reason or error_line(exc), status)
            if isinstance(exc, _user_errors()):
                from tasks.errors import error_line

                line = error_line(exc)
                httpx = sys.modules.get("httpx")
                transport = (httpx.TransportError,) if httpx is not None else ()
                if isinstance(exc, (*transport, ConnectionRefusedError)):
                    from prefect.settings import PREFECT_API_URL

                    if PREFECT_API_URL.value():
                        line = f"cannot reach the Prefect API at {PREFECT_API_URL.value()}: {line}"
                err_console.print(f"[bold red]error:[/] {escape(line)}", soft_wrap=True)
                raise typer.Exit(1) from None
            if reason is None:
                raise
            signum = getattr(exc, "signum", None) or getattr(exc, "signal", signal.SIGINT)
            err_console.print(f"[bold red]error:[/] {reason}", soft_wrap=True)
            raise typer.Exit(128 + int(signum)) from None
        finally:
            restore()

    return wrapper


def _user_errors() -> tuple[type[BaseException], ...]:
    """The errors a user can cause. MLflow's and httpx's are among them only once those
    libraries were imported (an error of theirs cannot happen before): a mistake refused before
    any work is reported at once, without seconds of importing them."""
    errors: tuple[type[BaseException], ...] = (ValueError, ArithmeticError, OSError, RuntimeError)
    if (mlflow_exceptions := sys.modules.get("mlflow.exceptions")) is not None:
        errors += (mlflow_exceptions.MlflowException,)
    if "httpx" in sys.modules:
        import httpx

        errors += (httpx.HTTPError,)
    return errors


def _catch_signals():
    """SIGTERM, SIGINT and SIGHUP (a closed terminal) raise ``tasks.killed.RunKilled`` in
    the main thread: the flow's run ends KILLED (``tracking.end_run``) and the command exits.
    A second signal while that happens exits at once (the started servers' watchdogs stop
    them). A signal that lands inside a call into the tracking database is raised once the
    call returned (``tasks.killed.deferring``). Returns a function restoring the previous
    handlers."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    from tasks.killed import RunKilled, deferring

    received: list[int] = []

    def handler(signum, frame):
        if received:
            os._exit(128 + signum)
        received.append(signum)
        raise RunKilled(signum)

    handler = deferring(handler)

    # a signal the command was started to ignore (nohup, a shell's background job) stays so
    previous = {
        sig: signal.signal(sig, handler)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        if signal.getsignal(sig) is not signal.SIG_IGN
    }

    def restore():
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore


def preflight(flows: bool = False, scheduler: bool = False):
    """Before a command's work: one short check of the MLflow tracking store (a few seconds,
    not MLflow's minutes of retries); with ``flows``, the temporary Prefect server the
    command's flows report to, one that dies with it (``flows.stack.own_prefect_server``; with
    ``scheduler``, one that runs schedules), started first and waited for last."""

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            server = None
            if flows:  # first: the server starts while the rest is imported
                from flows.stack import own_prefect_server

                server = own_prefect_server(scheduler)
            check_tracking_store()
            if server is not None:
                server.wait_healthy()
            return fn(*args, **kwargs)

        return wrapper

    return decorate


def check_tracking_store() -> None:
    import mlflow

    from tasks.tracking import tracking_store_error

    uri = mlflow.get_tracking_uri()
    problem = tracking_store_error(uri)
    if problem is not None:
        raise ConnectionError(f"cannot reach the MLflow tracking store {uri}: {problem}")
