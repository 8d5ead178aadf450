"""The environment a flow run ran in: the Python version, every installed distribution (as
``pip freeze`` lists it, read with importlib.metadata: no pip subprocess) and the lock it came
from. Computed once per process. Knows nothing of MLflow: tasks.tracking logs it."""

from __future__ import annotations

import functools
import hashlib
import platform
import re
from importlib import metadata
from pathlib import Path

import pooch

PROJECT_DIR = Path(__file__).resolve().parent.parent
FREEZE_ARTIFACT = "environment/pip-freeze.txt"


def canonical(name: str) -> str:
    """A distribution name as PyPI compares them (PEP 503): ``Typing_Extensions`` ->
    ``typing-extensions``."""
    return re.sub(r"[-_.]+", "-", name).lower()


@functools.cache
def packages() -> dict[str, str]:
    """``{name: version}`` of every distribution importable in this process, sorted by name;
    of two copies of one distribution on ``sys.path`` the first, the one Python imports."""
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name, version = _name_version(dist)
        if name and version:
            found.setdefault(canonical(name), version)
    return dict(sorted(found.items()))


def _name_version(dist: metadata.Distribution) -> tuple[str | None, str | None]:
    # The header fields only: dist.metadata runs the email parser over the whole file (long
    # descriptions included), five times slower for the ~200 distributions of this project.
    text = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""
    fields = {}
    for line in text.partition("\n\n")[0].splitlines():
        key, sep, value = line.partition(":")
        if sep and key in ("Name", "Version"):
            fields.setdefault(key, value.strip())
    return fields.get("Name"), fields.get("Version")


def freeze_text(pkgs: dict[str, str] | None = None) -> str:
    """``name==version`` lines, sorted (this process's packages by default)."""
    pkgs = packages() if pkgs is None else pkgs
    return "".join(f"{name}=={version}\n" for name, version in sorted(pkgs.items()))


def parse_freeze(text: str) -> dict[str, str]:
    """The packages of a ``pip freeze`` text: ``name==version`` lines, and ``name @ url`` lines
    (the url stands for the version); comments, options and blank lines are skipped."""
    pkgs = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        name, sep, version = line.partition("==")
        if not sep:
            name, sep, version = line.partition(" @ ")
            version = f"@ {version.strip()}" if sep else ""
        pkgs[canonical(name.strip())] = version.strip()
    return pkgs


def lock_record(project_dir: Path, installer: str | None, freeze: str) -> tuple[str, str]:
    """``(source, sha256)``: of ``uv.lock`` when the project was installed by uv from a project
    directory that has one, else of the sorted freeze (a plain pip install)."""
    lock = project_dir / "uv.lock"
    if installer == "uv" and lock.is_file():
        return "uv.lock", pooch.file_hash(str(lock))
    return "pip freeze", hashlib.sha256(freeze.encode()).hexdigest()


def installer(dist: str = "mlcore") -> str | None:
    """The tool that installed ``dist`` (the INSTALLER file of its dist-info: ``uv``, ``pip``),
    or None when it is not installed. A source tree's ``mlcore.egg-info`` (a build by-product,
    no INSTALLER) does not count."""
    for found in metadata.distributions(name=dist):
        text = found.read_text("INSTALLER")
        if text and text.strip():
            return text.strip()
    return None


@functools.cache
def environment_tags() -> dict[str, str]:
    """The tags every flow run carries: ``env.python``, ``env.lock_sha256`` and
    ``env.lock_source`` (``uv.lock`` or ``pip freeze``: what the sha256 is of)."""
    source, sha = lock_record(PROJECT_DIR, installer(), freeze_text())
    return {
        "env.python": platform.python_version(),
        "env.lock_sha256": sha,
        "env.lock_source": source,
    }


def differences(
    old: dict[str, str], new: dict[str, str]
) -> dict[str, tuple[str | None, str | None]]:
    """``{name: (old version, new version)}`` for every package whose version differs, None
    where a side does not have it; sorted by name."""
    return {
        name: (old.get(name), new.get(name))
        for name in sorted(set(old) | set(new))
        if old.get(name) != new.get(name)
    }
