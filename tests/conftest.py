"""Shared fixtures: real data from ../shared/data, a loopback HTTP server, a temporary MLflow
store per test, and one Prefect test harness per session (for whole-flow tests only)."""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

# Prefect reads its settings at import: give the whole session a private PREFECT_HOME first.
_PREFECT_HOME = tempfile.mkdtemp(prefix="mlcore-prefect-home-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("MPLBACKEND", "Agg")
# pytest-xdist's workers run with COLUMNS=80, and the CLI's rich console reads COLUMNS once, at
# import: the tests' own COLUMNS (CliRunner's env) must win, as in a user's terminal.
os.environ.pop("COLUMNS", None)
# The tests run the CLI's typer app in-process (CliRunner) and start it in subprocesses that
# inherit this environment: the process settings `mlcore`'s main() makes, made here first
# (after COLUMNS is gone: the console is made as flows.cli is imported).
from flows.cli import set_up_process  # noqa: E402

set_up_process()

REPO = Path(__file__).resolve().parent.parent


_MIGRATING = threading.Lock()


def _migrated_prefect_db() -> Path:
    """A Prefect SQLite database with its schema made once per test process by Prefect's own
    ``prefect server database upgrade`` (tests call it from several threads at once)."""
    with _MIGRATING:
        return _migrate_once()


@functools.cache
def _migrate_once() -> Path:
    home = Path(_PREFECT_HOME) / "migrated-template"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_API", "PREFECT_SERVER_DATABASE"))
    }
    env["PREFECT_HOME"] = str(home)
    prefect = Path(sys.executable).parent / "prefect"
    subprocess.run([str(prefect), "server", "database", "upgrade", "-y"], env=env, check=True,
                   capture_output=True, timeout=600)  # fmt: skip
    return home / "prefect.db"


def prefect_home(home: Path) -> Path:
    """``home`` made a fresh PREFECT_HOME holding a migrated copy of Prefect's database: a
    Prefect server (the CLI's temporary one, ``mlcore server``'s) started with it is healthy in
    seconds instead of running every migration of a new database first (about 15 s here)."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(_migrated_prefect_db(), home / "prefect.db")
    return home


def one_line_error(result, pattern: str) -> None:
    """A CLI result that failed the way a user's mistake must: exit 1, exactly one non-empty
    line of output, starting with ``error:`` and matching ``pattern``, no traceback."""
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert lines[0].startswith("error:") and re.search(pattern, lines[0]), lines[0]


def shared_data_dir() -> Path | None:
    """The folder of real data files: MLCORE_DATA_MIRROR if it is a folder, else ../shared/data."""
    mirror = os.environ.get("MLCORE_DATA_MIRROR", "")
    for candidate in (Path(mirror) if mirror else None, REPO.parent / "shared" / "data"):
        if candidate is not None and (candidate / "housing_scale").is_file():
            return candidate.resolve()
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Real data; skips where there is none, but fails in CI (MLCORE_REQUIRE_DATA=1), where
    the real-data tests must run."""
    found = shared_data_dir()
    if found is None:
        if os.environ.get("MLCORE_REQUIRE_DATA"):
            pytest.fail("MLCORE_REQUIRE_DATA is set but no housing_scale under ../shared/data")
        pytest.skip("no real data: set MLCORE_DATA_MIRROR to a folder holding housing_scale")
    return found


@pytest.fixture
def data_env(shared_data, tmp_path, monkeypatch) -> Path:
    """Datasets come from the shared folder (offline) into a fresh cache for this test."""
    cache = tmp_path / "raw"
    monkeypatch.setenv("MLCORE_DATA_MIRROR", str(shared_data))
    monkeypatch.setenv("MLCORE_DATA_DIR", str(cache))
    return cache


@pytest.fixture(scope="session")
def housing(shared_data):
    """The course's split of the real housing_scale data, parsed once per session."""
    from mlcore.data import load_libsvm, split_like_course

    X, y = load_libsvm(shared_data / "housing_scale")
    return split_like_course(X, y)


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        self.server.hits.append(self.path)
        status = self.server.status_for.get(self.path.lstrip("/"))
        if status is not None:
            self.send_error(status)
            return
        super().do_GET()


@pytest.fixture
def http_server(tmp_path):
    """A real HTTP server on a free loopback port serving ``root`` (a fresh folder).

    Yields an object with ``url``, ``root``, ``hits`` (the paths requested) and
    ``status_for`` (file name -> HTTP status to answer with instead)."""
    root = tmp_path / "www"
    root.mkdir()

    def handler(*args, **kwargs):
        return _Handler(*args, directory=str(root), **kwargs)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.hits, server.status_for, server.root = [], {}, root
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def _empty_mlflow_db(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its schema created once: migrating a new database takes
    seconds, copying a migrated one does not."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch, _empty_mlflow_db) -> str:
    """This test's own MLflow store, ``sqlite:///<tmp>/mlflow.db`` with artifacts beside it."""
    import mlflow

    shutil.copy(_empty_mlflow_db, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # artifacts of the default sqlite store land in ./mlruns here
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test server for the whole session, for whole-flow tests only."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


# make test runs the suite on three pytest-xdist workers that take one test at a time from the
# front of the list (-n 3 --dist load --maxschedchunk 1). The tests marked ``slow`` (they start
# servers, clusters and CLI processes, or take a minute or more; `pytest -m "not slow"` leaves
# them out) go first, so that the workers share them and no long test starts last, alone.
def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture
def receiver():
    """An HTTP server on a free loopback port recording the JSON body of every POST (the
    alerts' receiver)."""
    import json
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from flows.stack import free_port

    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            received.append(json.loads(body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/hook", received
    finally:
        httpd.shutdown()
        httpd.server_close()
