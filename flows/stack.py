"""The local stack a team runs: a Prefect server and an MLflow tracking server.

Both bind to 127.0.0.1 unless told otherwise, run in their own process group (so stopping
them stops every child they spawned) and are waited for until their health endpoint answers.
The back ends are SQLite by default; a PostgreSQL URI works the same way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
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
        if self.process.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            try:
                self.process.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


def _spawn(
    name: str, cmd: list[str], env: dict, log: Path, cwd: Path | None = None
) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=cwd,
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
    return Server("Prefect server", url, f"{url}/health", proc, log, env)


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
    return Server("MLflow server", url, f"{url}/health", proc, log, env)


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
