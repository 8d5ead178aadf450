"""pyproject.toml's [project.dependencies] is what the code imports: every third-party module
that mlcore/, tasks/ or flows/ imports (at the top of a module or inside a function) comes
from a declared distribution, and every declared distribution is imported somewhere or listed
in NEEDED_WITHOUT_IMPORT with the reason."""

from __future__ import annotations

import ast
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name as canonical

from tests.conftest import REPO

try:
    import tomllib
except ImportError:  # Python 3.10: pytest's own dependency
    import tomli as tomllib

SOURCES = ("mlcore", "tasks", "flows")

# Declared distributions the code never imports, and why each is needed all the same (none
# now: flows/runners.py imports dask, for the configuration its LocalCluster's workers start with).
NEEDED_WITHOUT_IMPORT: dict[str, str] = {}


def imported_modules(root: Path, folders=SOURCES) -> dict[str, set[str]]:
    """The top-level names of the absolute imports in every .py file under ``folders`` of
    ``root``, each with the files (relative to ``root``) that import it."""
    found: dict[str, set[str]] = {}
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    names = [node.module]
                else:  # not an import, or a relative one (inside the project)
                    continue
                for name in names:
                    found.setdefault(name.partition(".")[0], set()).add(
                        path.relative_to(root).as_posix()
                    )
    return found


def _dependencies() -> list[str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]


def third_party_imports() -> dict[str, set[str]]:
    """imported_modules of the project without the standard library and its own packages."""
    return {
        module: files
        for module, files in imported_modules(REPO).items()
        if module not in sys.stdlib_module_names and module not in SOURCES
    }


def declared_distributions() -> dict[str, str]:
    """Each distribution [project.dependencies] declares (canonical name) -> its requirement.
    A requirement with extras declares the distributions those extras add too:
    ``dask[distributed]`` declares dask and distributed."""
    declared: dict[str, str] = {}
    for text in _dependencies():
        req = Requirement(text)
        declared[canonical(req.name)] = text
        for extra in req.extras:
            for dep in map(Requirement, metadata.requires(req.name) or []):
                marker = dep.marker
                if marker and marker.evaluate({"extra": extra}) and not marker.evaluate():
                    declared.setdefault(canonical(dep.name), text)
    return declared


def test_every_imported_package_is_declared():
    distributions = metadata.packages_distributions()
    declared = declared_distributions()
    not_installed, undeclared = {}, {}
    for module, files in sorted(third_party_imports().items()):
        # a module can come from several distributions (mlflow from mlflow and mlflow-skinny)
        dists = {canonical(d) for d in distributions.get(module, [])}
        if not dists:
            not_installed[module] = sorted(files)
        elif not dists & declared.keys():
            undeclared[" or ".join(sorted(dists))] = sorted(files)
    assert not_installed == {}, "imported, but no installed distribution provides them"
    assert undeclared == {}, "imported, not declared in pyproject.toml's [project.dependencies]"


def test_every_declared_package_is_imported_or_needed_for_a_stated_reason():
    distributions = metadata.packages_distributions()
    imported = {
        canonical(dist)
        for module in third_party_imports()
        for dist in distributions.get(module, [])
    }
    direct = {canonical(Requirement(text).name) for text in _dependencies()}
    # also fails when an entry of NEEDED_WITHOUT_IMPORT is no longer declared, or now imported
    assert sorted(direct - imported) == sorted(NEEDED_WITHOUT_IMPORT), (
        "declared in [project.dependencies] but never imported by mlcore/, tasks/ or flows/: "
        "remove it, or list it in NEEDED_WITHOUT_IMPORT with the reason"
    )


def test_import_scan_reads_imports_in_functions_and_skips_relative_ones(tmp_path):
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "a.py").write_text(
        "import os.path, numpy as np\n"
        "from yaml.loader import SafeLoader\n"
        "from . import b\n"
        "from .sub import c\n"
        "def f():\n"
        "    import requests\n"
        "    class K:\n"
        "        from httpx import HTTPError\n"
    )
    (tmp_path / "pkg" / "sub" / "c.py").write_text("if True:\n    import rich.console\n")
    assert imported_modules(tmp_path, ["pkg"]) == {
        "os": {"pkg/a.py"},
        "numpy": {"pkg/a.py"},
        "yaml": {"pkg/a.py"},
        "requests": {"pkg/a.py"},
        "httpx": {"pkg/a.py"},
        "rich": {"pkg/sub/c.py"},
    }


def test_extras_declare_the_distributions_they_add():
    declared = declared_distributions()
    assert declared["dask"] == declared["distributed"]
    assert declared["dask"].startswith("dask[distributed]")
