"""A closed terminal (SIGHUP) stops a command as SIGTERM does, sent for real to this process:
a command under the CLI's error policy ends with one line and 128 + 1; ``mlcore server`` (and
``mlcore serve``'s stack, which stops on Ctrl-C) turns SIGTERM and SIGHUP into Ctrl-C. The
whole commands are stopped by real signals end to end in tests/cli/test_cli.py (``mlcore ui``,
SIGTERM and SIGINT), tests/flows/test_deployments.py (``mlcore server``, ``mlcore serve``) and
tests/faults/test_faults_kill.py (``mlcore run``)."""

from __future__ import annotations

import signal
import time

import pytest
import typer

from flows.cli.errors import friendly_errors
from flows.cli.ops import _stop_on_sigterm


@pytest.fixture
def handlers():
    """The signal handlers as they were, restored after the test."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_a_command_with_one_line_and_its_code(handlers, capsys, sig):
    for s in (signal.SIGHUP, signal.SIGINT):  # as in a terminal (a test may inherit them ignored)
        signal.signal(s, signal.default_int_handler if s == signal.SIGINT else signal.SIG_DFL)

    @friendly_errors
    def command():
        signal.raise_signal(sig)
        time.sleep(5)
        raise AssertionError("the signal did not stop the command")

    with pytest.raises(typer.Exit) as stopped:
        command()
    assert stopped.value.exit_code == 128 + sig
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == [f"error: killed by {signal.Signals(sig).name}"]


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM])
def test_mlcore_server_stops_on_sigterm_and_sighup_as_on_ctrl_c(handlers, sig):
    _stop_on_sigterm()
    with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(sig)
        time.sleep(5)
