"""The environment record: uv.lock agrees with pyproject.toml, the freeze read with
importlib.metadata lists what is installed, and every flow run carries it (tags and artifact,
read back from MLflow)."""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from packaging.requirements import Requirement

from tasks import environment, tracking
from tests.conftest import REPO

try:
    import tomllib
except ImportError:  # Python 3.10: pytest's own dependency
    import tomli as tomllib

LOCK = REPO / "uv.lock"
PYPROJECT = REPO / "pyproject.toml"


def _declared() -> set[tuple]:
    """pyproject.toml's requirements as (name, extras, specifier, extra) tuples."""
    pyproject = tomllib.loads(PYPROJECT.read_text())
    project = pyproject["project"]
    groups = {None: project["dependencies"], **project["optional-dependencies"]}
    groups.update({f"group {g}": r for g, r in pyproject["dependency-groups"].items()})
    out = set()
    for extra, reqs in groups.items():
        for text in reqs:
            r = Requirement(text)
            assert r.marker is None, f"{text}: a marker needs this comparison taught it"
            out.add(
                (environment.canonical(r.name), tuple(sorted(r.extras)), str(r.specifier), extra)
            )
    return out


@functools.cache
def _lock() -> dict:
    return tomllib.loads(LOCK.read_text())


def _locked() -> set[tuple]:
    """What uv.lock recorded of mlcore's requirements when it was resolved."""
    lock = _lock()
    (me,) = [p for p in lock["package"] if p["name"] == "mlcore"]
    out = set()
    for dep in me["metadata"]["requires-dist"]:
        marker = dep.get("marker")
        extra = re.fullmatch(r"extra == '([\w-]+)'", marker).group(1) if marker else None
        specifier = str(Requirement(f"x{dep.get('specifier', '')}").specifier)
        out.add((dep["name"], tuple(sorted(dep.get("extras", []))), specifier, extra))
    for group, deps in me["metadata"]["requires-dev"].items():
        for dep in deps:
            specifier = str(Requirement(f"x{dep.get('specifier', '')}").specifier)
            out.add(
                (dep["name"], tuple(sorted(dep.get("extras", []))), specifier, f"group {group}")
            )
    return out


def test_lock_agrees_with_pyproject():
    declared, locked = _declared(), _locked()
    assert declared - locked == set(), "in pyproject.toml, not in uv.lock: run make lock"
    assert locked - declared == set(), "in uv.lock, not in pyproject.toml: run make lock"
    lock = _lock()
    # torch stays outside the lock (make bench installs the local CPU wheel with pip)
    assert lock["manifest"]["excludes"] == ["torch"]
    assert not [p for p in lock["package"] if p["name"] == "torch"]
    # ... at the version the Makefile installs
    bench = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]["bench"]
    (torch,) = [r for r in bench if r.startswith("torch")]
    assert f"BENCH_TORCH := {torch}\n" in (REPO / "Makefile").read_text()


def _uv() -> str | None:
    return shutil.which("uv") or next(
        (str(p) for p in [REPO / ".tools" / "uv" / "bin" / "uv"] if p.is_file()), None
    )


@pytest.mark.skipif(_uv() is None, reason="no uv (make test bootstraps it into .tools/uv)")
def test_uv_lock_check_fails_when_pyproject_changes(tmp_path):
    """make lock-check (in make test, so in CI) passes on the project and fails as soon as
    pyproject.toml declares something uv.lock does not have."""
    for name in ("pyproject.toml", "uv.lock", "setup.py", "README.md"):
        shutil.copy(REPO / name, tmp_path / name)
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "UV_NO_CONFIG": "1"}
    check = [_uv(), "lock", "--check", "--python", sys.executable]  # as make lock-check
    ok = subprocess.run(check, cwd=tmp_path, capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    text = (tmp_path / "pyproject.toml").read_text()
    (tmp_path / "pyproject.toml").write_text(text.replace('"pooch>=1.8",', '"pooch>=1.9",'))
    stale = subprocess.run(check, cwd=tmp_path, capture_output=True, text=True, env=env)
    assert stale.returncode != 0
    assert "needs to be updated" in stale.stderr, stale.stderr


def test_packages_are_what_is_installed():
    pkgs = environment.packages()
    assert pkgs is environment.packages()  # read once per process
    assert list(pkgs) == sorted(pkgs)
    assert pkgs["numpy"] == np.__version__
    assert pkgs["mlflow"] == metadata.version("mlflow")
    assert pkgs["mlcore"] == "0.1.0"
    assert pkgs["typing-extensions"] == metadata.version("typing_extensions")
    for name, version in pkgs.items():
        assert metadata.version(name) == version, name
    assert environment.parse_freeze(environment.freeze_text()) == pkgs


def test_parse_freeze_reads_pip_freeze_output():
    text = (
        "# a comment\n-e git+https://example.invalid/x.git@abc#egg=x\n"
        "Typing_Extensions==4.16.0\nnumpy==2.4.6  # pinned\n\nfoo @ file:///tmp/foo.whl\n"
    )
    assert environment.parse_freeze(text) == {
        "typing-extensions": "4.16.0",
        "numpy": "2.4.6",
        "foo": "@ file:///tmp/foo.whl",
    }
    assert environment.differences(
        {"a": "1", "b": "2", "c": "3"}, {"a": "1", "b": "2.1", "d": "4"}
    ) == {
        "b": ("2", "2.1"),
        "c": ("3", None),
        "d": (None, "4"),
    }


def test_lock_sha256_is_of_uv_lock_or_of_the_freeze(tmp_path):
    freeze = "a==1\nb==2\n"
    of_freeze = hashlib.sha256(freeze.encode()).hexdigest()
    assert environment.lock_record(tmp_path, "uv", freeze) == ("pip freeze", of_freeze)
    (tmp_path / "uv.lock").write_text("version = 1\n")
    of_lock = hashlib.sha256(b"version = 1\n").hexdigest()
    assert environment.lock_record(tmp_path, "uv", freeze) == ("uv.lock", of_lock)
    # a pip install from a checkout that has a uv.lock was not made from it
    assert environment.lock_record(tmp_path, "pip", freeze) == ("pip freeze", of_freeze)
    assert environment.lock_record(tmp_path, None, freeze) == ("pip freeze", of_freeze)


def test_every_flow_run_records_its_environment(mlflow_store, tmp_path):
    with tracking.parent_run("housing", "housing_regression", {"seed": 1}) as run_id:
        pass
    run = MlflowClient().get_run(run_id)
    tags = run.data.tags
    assert tags["env.python"] == platform.python_version()
    made_by = next(
        (d.read_text("INSTALLER").strip() for d in metadata.distributions(name="mlcore")
         if d.read_text("INSTALLER")),
        None,
    )  # fmt: skip
    if made_by == "uv":  # make run / make test: the venv is the lock
        assert tags["env.lock_source"] == "uv.lock"
        assert tags["env.lock_sha256"] == hashlib.sha256(LOCK.read_bytes()).hexdigest()
    else:
        assert tags["env.lock_source"] == "pip freeze"
        assert (
            tags["env.lock_sha256"]
            == hashlib.sha256(environment.freeze_text().encode()).hexdigest()
        )
    got = MlflowClient().download_artifacts(run_id, environment.FREEZE_ARTIFACT, str(tmp_path))
    logged = Path(got).read_text()
    assert logged == environment.freeze_text()
    assert f"numpy=={np.__version__}\n" in logged
    assert environment.parse_freeze(logged)["scikit-learn"] == metadata.version("scikit-learn")
