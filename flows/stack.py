"""The local stack a team runs: a Prefect server and an MLflow tracking server.

Both bind to 127.0.0.1 unless told otherwise, run in their own process group (so stopping
them stops every child they spawned) and are waited for until their health endpoint answers.
The back ends are SQLite by default; a PostgreSQL URI works the same way.

Every process started here is *tied* to the process that started it: it dies with it, even
when that process is killed with SIGKILL (see ``tie``). ``own_prefect_server`` does the same
for the temporary Prefect API server that Prefect itself would otherwise start as an
ordinary child, one that outlives a killed parent.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import os
import signal
import socket
import subprocess
import sys
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
    name: str, cmd: list[str], env: dict, log: Path, cwd: Path | None = None
) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=cwd, preexec_fn=die_with_parent(),
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


def own_prefect_server() -> None:
    """Make the temporary Prefect API server of this process one that dies with it, and, when
    Prefect is not imported yet (the ``mlcore`` command line), start it right away.

    Without ``PREFECT_API_URL``, Prefect 3 starts a temporary server the first time a flow
    needs the API: ``python -m uvicorn prefect.server.api.server:create_app`` as an ordinary
    child (``prefect.server.api.server.SubprocessASGIServer``), stopped only by an ``atexit``
    hook, so it outlives a parent killed with SIGKILL (or SIGTERM, which skips ``atexit``).
    This puts in its place, as the instance Prefect looks up, a server started the same way
    but in its own process group on a free loopback port, tied to this process (``tie``,
    ``die_with_parent``). Nothing changes when ``PREFECT_API_URL`` is set, or a server is
    already running.

    Prefect waits for the server's first health answer (about 12 s of its start-up here) only
    when a flow first needs it. Started before Prefect and the flows' modules are imported (as
    many seconds again, on the other core), the server is up, or nearly, by then: a flow
    command saves most of the wait. Prefect's own settings still decide: when they name an
    API URL (a profile, a ``prefect.toml``), the early server is stopped unused."""
    early = None
    if "prefect" not in sys.modules and not os.environ.get("PREFECT_API_URL"):
        port = free_port()
        early = (port, *_spawn_temporary_server(port, {}))
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL

    current = SubprocessASGIServer._instances.get(None)
    if PREFECT_API_URL.value() or (
        current is not None and (isinstance(current, _owned_server_class()) or current.running)
    ):
        if early is not None:
            stop_group(early[1], 5.0)
            untie(early[2])
        return
    if current is not None:
        del SubprocessASGIServer._instances[None]
    server = _owned_server_class()()
    if early is not None:
        server.adopt(*early)


def _spawn_temporary_server(port: int, settings: dict[str, str]) -> tuple[subprocess.Popen, int]:
    """Prefect's temporary API server on ``127.0.0.1:port`` (the command and environment of
    ``SubprocessASGIServer``), in its own process group, tied to this process."""
    env = {
        **os.environ,
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
        **settings,
    }
    env.pop("PREFECT_API_URL", None)
    cmd = [
        sys.executable, "-m", "uvicorn", "--app-dir", str(Path(prefect_path()).parent),
        "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1",
        "--port", str(port), "--log-level", "error", "--lifespan", "on",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=env, stdin=subprocess.DEVNULL, start_new_session=True,
        preexec_fn=die_with_parent(),
    )  # fmt: skip
    return proc, tie(proc)


@functools.cache
def _owned_server_class():
    from prefect.server.api.server import SubprocessASGIServer

    class OwnedPrefectServer(SubprocessASGIServer):
        _early: subprocess.Popen | None = None
        _tie: int | None = None

        def adopt(self, port: int, process: subprocess.Popen, tied: int) -> None:
            """Use a server process already started on ``port`` (``own_prefect_server``):
            Prefect's ``start`` then only waits for its health answer. Stopped at exit even
            if no flow ever needed it."""
            self.port, self._early, self._tie = port, process, tied
            self.server_process = process
            atexit.register(self.stop)

        def find_available_port(self) -> int:
            return free_port()

        def _run_uvicorn_command(self) -> subprocess.Popen:
            if self._early is not None and self._early.poll() is None:
                process, self._early = self._early, None
                return process
            from prefect.settings import get_current_settings

            untie(self._tie)  # a retry on another port, or the early server exited
            settings = get_current_settings().to_environment_variables(exclude_unset=True)
            process, self._tie = _spawn_temporary_server(self.port, settings)
            return process

        def stop(self) -> None:
            process = self.server_process
            super().stop()
            if process is not None:
                stop_group(process, 5.0)
            untie(self._tie)
            self._tie = None

    return OwnedPrefectServer


def prefect_path() -> str:
    """Prefect's package folder, found without importing Prefect (seconds of imports)."""
    import importlib.util

    return str(importlib.util.find_spec("prefect").submodule_search_locations[0])
