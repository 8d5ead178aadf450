"""Which process owns a RUNNING run (tags ``mlcore.host`` and ``mlcore.pid``), and the end of
runs whose owner is gone: ended by the command that owned them when it is stopped, or found
and ended KILLED later by any command on the same host (the start time of a process read from
``/proc`` tells a live owner from a pid reused by a newer process)."""

from __future__ import annotations

import os
import socket
import time

from mlflow.entities import RunStatus

from tasks.killed import OWNED
from tasks.tracking.logging import set_tags
from tasks.tracking.store import client, tracking_store_error

HOST_TAG, PID_TAG, ERROR_TAG = "mlcore.host", "mlcore.pid", "mlcore.error"


def process_tags() -> dict[str, str]:
    """``mlcore.host`` and ``mlcore.pid`` of this process: who owns a RUNNING run."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


def mark_process(run_id: str) -> None:
    """Tag ``run_id`` with the host and pid of this process (see ``reap_if_dead``)."""
    set_tags(run_id, process_tags())
    OWNED.append(run_id)


def end_own_runs(since: int, reason: str, status: int = RunStatus.KILLED) -> list[str]:
    """The last word of a command that a signal or an error stopped: every run this process
    owned (``OWNED[since:]``) that is still RUNNING ends ``status`` with ``reason`` in
    ``mlcore.error``. The flows end their runs themselves (``end_run``); this covers what they
    could not, e.g. a signal landing while the store was being written to. Returns the ids
    of the runs it ended; a store that cannot be reached is left to the reaper."""
    ended: list[str] = []
    if tracking_store_error() is not None:
        return ended
    for run_id in dict.fromkeys(OWNED[since:]):
        try:
            if client().get_run(run_id).info.status != "RUNNING":
                continue
            set_tags(run_id, {ERROR_TAG: reason[:1000]})
            client().set_terminated(run_id, RunStatus.to_string(status))
            ended.append(run_id)
        except Exception:  # noqa: BLE001 - reap_if_dead ends it at the next command
            continue
    return ended


def reap_if_dead(run_id: str) -> bool:
    """If ``run_id`` is RUNNING but the process that owned it is gone (same host, and its pid
    no longer alive or now a process started after the run), end it KILLED with the reason in
    ``mlcore.error``. Runs of another host, or without the tags, are left alone. Returns
    whether the run was reaped."""
    return _reap(client().get_run(run_id))


def reap_dead_runs(experiment_names) -> list[str]:
    """``reap_if_dead`` for every RUNNING run (children too) of these experiments; returns
    the ids of the runs it ended."""
    ids = [e.experiment_id for n in experiment_names if (e := client().get_experiment_by_name(n))]
    if not ids:
        return []
    running = client().search_runs(
        ids, filter_string="attributes.status = 'RUNNING'", max_results=1000
    )
    return [r.info.run_id for r in running if _reap(r)]


def _reap(run) -> bool:
    if run.info.status != "RUNNING":
        return False
    tags = run.data.tags
    host, pid = tags.get(HOST_TAG), tags.get(PID_TAG)
    if host != socket.gethostname() or not (pid or "").isdigit():
        return False  # another machine's process, or no owner recorded: cannot tell
    started = _process_start(int(pid))
    # a pid taken over by a process started after the run is not the run's process; the half
    # second of slack covers clock ticks and a small clock adjustment between the two readings
    if started is not None and started <= run.info.start_time / 1000 + 0.5:
        return False
    gone = "no longer running" if started is None else "now belongs to another process"
    reason = f"process {pid} on {host} is gone ({gone}); found by mlcore at {time.ctime()}"
    client().set_tag(run.info.run_id, ERROR_TAG, reason)
    client().set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
    return True


def _process_start(pid: int) -> float | None:
    """The start time (epoch seconds) of process ``pid``, None if there is none (a zombie
    counts as gone)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        coarse = proc.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return _precise_start(pid, coarse)


def _precise_start(pid: int, coarse: float) -> float:
    """``coarse`` (psutil's start time: the whole-second boot time Linux gives, btime, plus
    the process's start in clock ticks since boot) made precise where /proc tells the boot
    time to the hundredth of a second: btime's truncation made a process started up to a
    second after a run look started before it. Falls back to ``coarse`` wherever the two
    disagree by more than btime's truncation can explain (a /proc/uptime that a container
    virtualises counts from another boot)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        ticks = int(stat[stat.rfind(")") + 2 :].split()[19])  # field 22: starttime
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        precise = time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return coarse
    return precise if -0.1 <= precise - coarse <= 1.1 else coarse
