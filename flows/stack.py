"""The local stack a team runs: a Prefect server and an MLflow tracking server.

Both bind to 127.0.0.1 unless told otherwise, run in their own process group (so stopping
them stops every child they spawned) and are waited for until their health endpoint answers.
The back ends are SQLite by default; a PostgreSQL URI works the same way.

Every process started here is *tied* to the process that started it: it dies with it, even
when that process is killed with SIGKILL (see ``tie``). ``own_prefect_server`` starts, the same
way, the temporary Prefect API server of a command that runs flows, which Prefect itself would
otherwise start as an ordinary child, one that outlives a killed parent.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class Server:
    name: str
    url: str
    health: str
    process: subprocess.Popen
    log: Path
    env: dict = field(default_factory=dict)
    tie: int | None = None
    scratch: Path | None = None  # a folder of the server's own, removed by stop

    def wait_healthy(self, timeout: float = 180.0) -> None:
        """Poll the health endpoint; fail with the server's last log lines if it dies or
        does not answer in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}: {self.tail()}"
                )
            try:
                with urllib.request.urlopen(self.health, timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        raise TimeoutError(
            f"{self.name} did not answer {self.health} within {timeout:.0f} s: {self.tail()}"
        )

    def tail(self, lines: int = 5) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return " | ".join(text.strip().splitlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the whole process group, then SIGKILL what is left."""
        stop_group(self.process, timeout)
        untie(self.tie)
        self.tie = None
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


def stop_group(process: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM the process group led by ``process``, then SIGKILL what is left."""
    if process.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


# A watchdog per tied process group: it blocks reading a pipe whose only writer is the parent;
# the read returns (end of file) when the parent exits, however it exits (SIGKILL included),
# and the watchdog then stops the group: SIGTERM, and SIGKILL after a grace period. It ignores
# the signals a terminal or a service manager sends to the parent's whole process group (Ctrl-C,
# a closed terminal, a group-wide SIGTERM): it lives as long as its parent, not less.
_WATCHDOG = """\
import os, signal, sys, time
for s in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
    signal.signal(s, signal.SIG_IGN)
pgid = int(sys.argv[1])
sys.stdin.buffer.read()
for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 0.0)):
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        sys.exit(0)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            sys.exit(0)
"""
_TIES: dict[int, subprocess.Popen] = {}  # write end of a watchdog's pipe -> the watchdog


def tie(process: subprocess.Popen) -> int:
    """Start a watchdog that stops ``process``'s process group (it must lead one:
    ``start_new_session=True``) when this process exits. Returns the pipe's write end: keep
    it open while the group should live; ``untie`` it once the group is stopped."""
    read, write = os.pipe()  # not inherited by other children (PEP 446)
    try:
        watchdog = subprocess.Popen(
            [sys.executable, "-S", "-c", _WATCHDOG, str(process.pid)],
            stdin=read, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
    finally:
        os.close(read)
    _TIES[write] = watchdog
    return write


def untie(write: int | None) -> None:
    """Let a watchdog go: it stops what is left of its group and exits."""
    if write is None:
        return
    with contextlib.suppress(OSError):
        os.close(write)
    watchdog = _TIES.pop(write, None)
    if watchdog is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            watchdog.wait(15)


def die_with_parent():
    """A ``preexec_fn`` asking Linux to SIGTERM the child when this thread exits
    (``prctl(PR_SET_PDEATHSIG)``): it also covers the case where a parent and its watchdogs
    are killed together. None elsewhere, or off the main thread (the signal follows the
    thread that forked, not the process)."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not (
        threading.main_thread()
    ):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before the fork
    parent = os.getpid()

    def hook() -> None:
        prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the prctl took effect
            os._exit(1)

    return hook


def _spawn(
    name: str, cmd: list[str], env: dict, log: Path, cwd: Path | None = None, nice: int = 0
) -> subprocess.Popen:
    """``cmd`` in a process group of its own, output to ``log``; ``nice`` added to its
    niceness (a helper server of this process: its bookkeeping yields the CPU to the work)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    tied = die_with_parent()

    def preexec() -> None:
        if nice:
            os.nice(nice)
        if tied is not None:
            tied()

    with open(log, "ab") as out:
        return subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=cwd, preexec_fn=preexec if nice or tied else None,
        )  # fmt: skip


def start_prefect_server(
    host: str = "127.0.0.1",
    port: int = 4200,
    database_url: str | None = None,
    home: Path | None = None,
    log: Path = Path("logs/prefect-server.log"),
) -> Server:
    """``prefect server start`` with its scheduler (deployments' schedules need it).
    ``database_url``: e.g. ``sqlite+aiosqlite:///…/prefect.db`` or
    ``postgresql+asyncpg://user@127.0.0.1:5432/prefect``; default: Prefect's own SQLite."""
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "true"}
    env.pop("PREFECT_API_URL", None)
    if database_url:
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database_url
    if home:
        env["PREFECT_HOME"] = str(home)
    cmd = [str(BIN / "prefect"), "server", "start", "--host", host, "--port", str(port)]
    url = f"http://{host}:{port}/api"
    proc = _spawn("prefect", cmd, env, log)
    return Server("Prefect server", url, f"{url}/health", proc, log, env, tie(proc))


def start_mlflow_server(
    host: str = "127.0.0.1",
    port: int = 5000,
    backend_uri: str = "sqlite:///mlflow.db",
    artifacts: Path = Path("mlartifacts"),
    log: Path = Path("logs/mlflow-server.log"),
) -> Server:
    """``mlflow server`` with one worker, artifacts served from a local folder, and the job
    runner off (it otherwise starts many worker processes)."""
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = [
        str(BIN / "mlflow"), "server", "--host", host, "--port", str(port), "--workers", "1",
        "--backend-store-uri", backend_uri,
        "--artifacts-destination", str(Path(artifacts).resolve()),
    ]  # fmt: skip
    proc = _spawn("mlflow", cmd, env, log)
    url = f"http://{host}:{port}"
    return Server("MLflow server", url, f"{url}/health", proc, log, env, tie(proc))


@contextlib.contextmanager
def local_stack(
    host: str = "127.0.0.1",
    prefect_port: int | None = None,
    mlflow_port: int | None = None,
    prefect_db: str | None = None,
    mlflow_backend: str = "sqlite:///mlflow.db",
    artifacts: Path = Path("mlartifacts"),
    logs: Path = Path("logs"),
    home: Path | None = None,
    timeout: float = 180.0,
) -> Iterator[tuple[Server, Server]]:
    """Start both servers, wait until both are healthy, and stop both on exit, whatever
    happened."""
    servers: list[Server] = []
    try:
        servers.append(
            start_prefect_server(
                host, prefect_port or free_port(host), prefect_db, home, logs / "prefect-server.log"
            )
        )
        servers.append(
            start_mlflow_server(
                host,
                mlflow_port or free_port(host),
                mlflow_backend,
                artifacts,
                logs / "mlflow-server.log",
            )
        )
        for server in servers:
            server.wait_healthy(timeout)
        yield servers[0], servers[1]
    finally:
        for server in reversed(servers):
            server.stop()


# The temporary server runs what a flow run in this process needs and nothing else, as Prefect's
# own temporary server does: its task-run recorder, event persister and triggers, but no UI, no
# telemetry, and none of the services that act on the database's other contents (the scheduler
# would start the runs of deployments scheduled in the user's PREFECT_HOME).
TEMPORARY_SERVER_SETTINGS = {
    "PREFECT_SERVER_SERVICES_CANCELLATION_CLEANUP_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_CLEANUP_RECONCILER_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED": "[]",
    "PREFECT_SERVER_SERVICES_FOREMAN_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_PAUSE_EXPIRATIONS_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_REPOSSESSOR_ENABLED": "false",
}


TEMPORARY_SERVER_NICE = 10  # added to the temporary server's niceness


def start_temporary_prefect_server(scheduler: bool = False) -> Server:
    """``prefect server start`` on a free loopback port for this process's flows: in its own
    process group, tied to this process (``tie``, ``die_with_parent``), its output in a scratch
    folder removed by ``stop``. Its database is the one Prefect's own temporary server would
    use (``PREFECT_HOME``'s, or ``PREFECT_SERVER_DATABASE_CONNECTION_URL``), so the runs stay
    visible to a later ``prefect server start``. It runs at ``TEMPORARY_SERVER_NICE`` more
    niceness than this process: on a busy machine the training it records goes first. With
    ``scheduler`` (``mlcore serve``), all of
    Prefect's services run, the scheduler and the late-runs marker among them: the served
    deployments' schedules create their flow runs. Not waited for: see ``wait_healthy``."""
    host, port = "127.0.0.1", free_port()
    env = {**os.environ, **({} if scheduler else TEMPORARY_SERVER_SETTINGS)}
    env.pop("PREFECT_API_URL", None)
    scratch = Path(tempfile.mkdtemp(prefix="mlcore-prefect-server-"))
    cmd = [
        sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port),
        "--no-ui", "--analytics-off", "--log-level", "WARNING",
        *([] if scheduler else ["--no-scheduler", "--no-late-runs"]),
    ]  # fmt: skip
    log = scratch / "prefect-server.log"
    # niced: it keeps the records of this process's flows, whose work must not wait for it
    proc = _spawn("prefect", cmd, env, log, nice=TEMPORARY_SERVER_NICE)
    url = f"http://{host}:{port}/api"
    name = "local Prefect server" if scheduler else "temporary Prefect server"
    return Server(name, url, f"{url}/health", proc, log, env, tie(proc), scratch=scratch)


def own_prefect_server(scheduler: bool = False) -> Server | None:
    """Start the Prefect API server this process's flows report to, one that dies with it, and
    point this process at it (``PREFECT_API_URL``); returns it, not yet answering (call its
    ``wait_healthy`` before the first flow), or None when Prefect's settings already name an
    API (``PREFECT_API_URL`` in the environment, a profile, a ``prefect.toml``). ``scheduler``:
    with Prefect's scheduler and late-runs services (``start_temporary_prefect_server``).

    Without an API URL, Prefect 3 would start a temporary server itself the first time a flow
    needs one, as an ordinary child stopped only by an ``atexit`` hook: it outlives a parent
    killed with SIGKILL (or SIGTERM, which skips ``atexit``). This one is stopped at exit and,
    in any case, by its watchdog (``tie``).

    Called before Prefect is imported (the ``mlcore`` command line), the server comes up while
    this process imports Prefect (to read its settings) and then MLflow (``cli.preflight``);
    when the settings turn out to name an API, it is stopped unused."""
    if os.environ.get("PREFECT_API_URL"):
        return None
    imported = "prefect" in sys.modules
    if imported and _configured_api_url():
        return None
    server = start_temporary_prefect_server(scheduler)
    if not imported and _configured_api_url():
        server.stop(5.0)
        return None
    os.environ["PREFECT_API_URL"] = server.url
    # Prefect read its settings when it was imported (above): read them again. This is the
    # function Prefect itself calls after its plugins have changed the environment.
    from prefect.context import refresh_global_settings_context

    refresh_global_settings_context()
    atexit.register(server.stop, 5.0)
    return server


def _configured_api_url() -> str | None:
    from prefect.settings import get_current_settings

    return get_current_settings().api.url
