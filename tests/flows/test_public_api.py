"""flows/ and tasks/ use only the public API of Prefect, MLflow, Dask and Optuna: no private
name (``_instances``, ``_to_mlflow_entity``), no server-internal module (``prefect.server``,
``mlflow.store``, ``distributed.scheduler``), no private setting (``PREFECT__SERVER_...``).

The check reads the source with ``ast``. What it flags:
- an import of a module of those libraries that is server-internal or has a dotted segment
  starting with ``_``, or of a name starting with ``_`` from one of them;
- ``x._name`` (one leading underscore) where ``x`` is bound to those libraries: an imported
  module or object, or a variable assigned (``=``, ``with ... as``, ``for``) from an expression
  that uses one; and ``x._name`` on any other object when ``_name`` is defined nowhere in
  mlcore's own code (a method or attribute of ours), since it is then another library's;
- the same through ``getattr``/``setattr``/``hasattr``/``delattr`` with a constant name;
- a dotted path through such a module's attributes (``mlflow.store.x`` after ``import mlflow``);
- a private method or attribute of a class of theirs, redefined in a subclass of ours;
- a string naming one of Prefect's private settings (``PREFECT__...``).
Names bound to other modules (``os._exit``, ``sys._getframe``) are not its business.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHECKED = sorted(p for d in ("flows", "tasks") for p in (REPO / d).rglob("*.py"))
LIBRARIES = ("prefect", "prefect_dask", "mlflow", "dask", "distributed", "optuna")
INTERNAL = ("prefect.server", "mlflow.server", "mlflow.store", "distributed.scheduler",
            "distributed.comm.core")  # fmt: skip
PRIVATE_SETTING = re.compile(r"\bPREFECT__\w+")
# one leading underscore, not a dunder; the namedtuple API (_replace, _asdict) is public
PUBLIC_UNDERSCORED = {"_replace", "_asdict", "_fields", "_make", "_field_defaults"}


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and name not in PUBLIC_UNDERSCORED


def _library(module: str) -> bool:
    return module.split(".")[0] in LIBRARIES


def _internal(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in INTERNAL)


def _bad_module(module: str) -> str | None:
    if _internal(module):
        return "server-internal module"
    if any(part.startswith("_") for part in module.split(".")):
        return "private module"
    return None


def _dotted(node: ast.AST) -> tuple[ast.AST, list[str]]:
    """``a.b.c`` -> (Name a, ["b", "c"]); the root is whatever the chain starts from."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return node, parts[::-1]


def _root_name(node: ast.AST) -> str | None:
    while True:
        if isinstance(node, ast.Attribute | ast.Subscript):
            node = node.value
        elif isinstance(node, ast.Call):
            node = node.func
        else:
            return node.id if isinstance(node, ast.Name) else None


def _names(target: ast.AST) -> list[str]:
    return [n.id for n in ast.walk(target) if isinstance(n, ast.Name)]


def _resolve(dotted: str):
    """The object a dotted path names (``prefect.flows.Flow``), or None."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for part in parts[i:]:
            obj = getattr(obj, part, None)
        return obj
    return None


def _defined_names(item: ast.AST) -> list[str]:
    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return [item.name]
    if isinstance(item, ast.Assign | ast.AnnAssign):
        targets = item.targets if isinstance(item, ast.Assign) else [item.target]
        return [t.id for t in targets if isinstance(t, ast.Name)]
    return []


def own_attributes(paths) -> set[str]:
    """Every name mlcore's own code defines: functions, classes, attributes set on an object,
    assigned names, parameters."""
    own: set[str] = set()
    for path in paths:
        for node in ast.walk(ast.parse(Path(path).read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                own.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                own.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                own.add(node.id)
            elif isinstance(node, ast.arg):
                own.add(node.arg)
    return own


def offences(source: str, own: set[str] = frozenset(), filename: str = "<source>") -> list[str]:
    """Every use of a private or internal API of the checked libraries in ``source``, as
    ``line: what``."""
    tree = ast.parse(source, filename)
    found: list[tuple[int, str]] = []
    library: dict[str, str] = {}  # local name -> what it is bound to in a library
    other: set[str] = set()  # names bound to modules of other libraries (os, sys, numpy)
    imported: set[str] = set()  # the names of ``library`` bound by an import

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                local = alias.asname or alias.name.split(".")[0]
                if _library(alias.name):
                    library[local] = alias.name if alias.asname else local
                    imported.add(local)
                    if why := _bad_module(alias.name):
                        found.append((node.lineno, f"import {alias.name} ({why})"))
                else:
                    other.add(local)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                local = alias.asname or alias.name
                if not _library(node.module):
                    other.add(local)
                    continue
                library[local] = f"{node.module}.{alias.name}"
                imported.add(local)
                if why := _bad_module(node.module):
                    found.append((node.lineno, f"from {node.module} import ... ({why})"))
                elif _private(alias.name):
                    found.append((node.lineno, f"from {node.module} import {alias.name} "
                                               "(private name)"))  # fmt: skip
                elif _internal(library[local]):
                    found.append((node.lineno, f"from {node.module} import {alias.name} "
                                               "(server-internal module)"))  # fmt: skip

    # variables holding the libraries' objects: assigned from an expression that uses one
    # (to a fixed point: ``run = mlflow.start_run(); info = run.info``)
    bindings: list[tuple[list[str], ast.AST]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            bindings.append(([n for t in node.targets for n in _names(t)], node.value))
        elif isinstance(node, ast.AnnAssign | ast.NamedExpr) and node.value is not None:
            bindings.append((_names(node.target), node.value))
        elif isinstance(node, ast.withitem) and node.optional_vars is not None:
            bindings.append((_names(node.optional_vars), node.context_expr))
        elif isinstance(node, ast.For | ast.AsyncFor | ast.comprehension):
            bindings.append((_names(node.target), node.iter))
    changed = True
    while changed:
        changed = False
        for targets, value in bindings:
            if _root_name(value) in library:
                for name in targets:
                    if name not in library and name not in other:
                        library[name] = "a value from " + ast.unparse(value)[:60]
                        changed = True

    def check_private(node: ast.AST, base: ast.AST, attr: str) -> None:
        if not _private(attr):
            return
        root = _root_name(base)
        if root in library:
            found.append((node.lineno, f"{ast.unparse(base)}.{attr} (private; "
                                       f"{root} is {library[root]})"))  # fmt: skip
        elif root not in other and root not in ("self", "cls") and attr not in own:
            found.append((node.lineno, f"{ast.unparse(base)}.{attr} (private name of no "
                                       "object of mlcore's)"))  # fmt: skip

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            check_private(node, node.value, node.attr)
            root, parts = _dotted(node)
            if isinstance(root, ast.Name) and root.id in imported:
                # the shortest offending path only: ``mlflow.store``, not ``mlflow.store.x``
                path = ".".join([library[root.id], *parts])
                if _internal(path) and not _internal(path.rsplit(".", 1)[0]):
                    found.append((node.lineno, f"{ast.unparse(node)} (server-internal module)"))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
        ):
            check_private(node, node.args[0], node.args[1].value)
        elif isinstance(node, ast.ClassDef):
            for base in node.bases:
                if _root_name(base) not in imported:
                    continue
                root, parts = _dotted(base)
                cls = _resolve(".".join([library[root.id], *parts]))
                for item in node.body:
                    for name in _defined_names(item):
                        if _private(name) and hasattr(cls, name):
                            found.append((item.lineno, f"{node.name}.{name} overrides "
                                                       f"{ast.unparse(base)}.{name} "
                                                       "(private)"))  # fmt: skip
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            for match in PRIVATE_SETTING.findall(node.value):
                found.append((node.lineno, f"{match!r} (a private Prefect setting)"))
    return [f"{line}: {what}" for line, what in sorted(set(found))]


# ---------------------------------------------------------------------------- the checker


@pytest.mark.parametrize(
    "snippet, expected",
    [
        ("from prefect.server.api.server import SubprocessASGIServer\n"
         "SubprocessASGIServer._instances.get(None)\n",
         ["1: from prefect.server.api.server import ... (server-internal module)",
          "2: SubprocessASGIServer._instances (private; SubprocessASGIServer is "
          "prefect.server.api.server.SubprocessASGIServer)"]),
        ("import mlflow\n"
         "ds = mlflow.data.from_numpy(x)\n"
         "entity = ds._to_mlflow_entity()\n",
         ["3: ds._to_mlflow_entity (private; ds is a value from mlflow.data.from_numpy(x))"]),
        ("def log(ds):\n    return ds._to_mlflow_entity()\n",
         ["2: ds._to_mlflow_entity (private name of no object of mlcore's)"]),
        ("from mlflow.store.artifact.artifact_repository_registry import "
         "get_artifact_repository\n",
         ["1: from mlflow.store.artifact.artifact_repository_registry import ... "
          "(server-internal module)"]),
        ("from distributed.scheduler import KilledWorker\n",
         ["1: from distributed.scheduler import ... (server-internal module)"]),
        ("from distributed.comm.core import CommClosedError\n",
         ["1: from distributed.comm.core import ... (server-internal module)"]),
        ('env = {"PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}\n',
         ["1: 'PREFECT__SERVER_EPHEMERAL' (a private Prefect setting)",
          "1: 'PREFECT__SERVER_FINAL' (a private Prefect setting)"]),
        ("import optuna._imports\n", ["1: import optuna._imports (private module)"]),
        ("from optuna.samplers._grid import GridSampler\n",
         ["1: from optuna.samplers._grid import ... (private module)"]),
        ("from prefect.context import _temporary_global_settings_context\n",
         ["1: from prefect.context import _temporary_global_settings_context (private name)"]),
        ("import prefect.server.api.server as s\n",
         ["1: import prefect.server.api.server (server-internal module)"]),
        ("from prefect import server\n",
         ["1: from prefect import server (server-internal module)"]),
        ("import mlflow\nmlflow.store.artifact.x()\n",
         ["2: mlflow.store (server-internal module)"]),
        ("import optuna\n"
         "study = optuna.create_study()\n"
         "for t in study.trials:\n    t._trial_id\n"
         "getattr(study, '_storage')\n",
         ["4: t._trial_id (private; t is a value from study.trials)",
          "5: study._storage (private; study is a value from optuna.create_study())"]),
        ("from prefect.server.api import server\n"
         "class Owned(server.SubprocessASGIServer):\n"
         "    _early = None\n"
         "    def _run_uvicorn_command(self):\n        return None\n"
         "    def find_available_port(self):\n        return 1\n",
         ["1: from prefect.server.api import ... (server-internal module)",
          "4: Owned._run_uvicorn_command overrides server.SubprocessASGIServer."
          "_run_uvicorn_command (private)"]),
        ("import mlflow\nwith mlflow.start_run() as run:\n    run._info\n",
         ["3: run._info (private; run is a value from mlflow.start_run())"]),
    ],
)  # fmt: skip
def test_the_checker_flags_each_kind_of_private_use(snippet, expected):
    assert offences(snippet) == expected


def test_the_checker_leaves_public_uses_and_other_libraries_alone():
    source = """
import os, sys
import optuna
from distributed import KilledWorker
from distributed.comm import CommClosedError
from prefect.settings import PREFECT_API_URL, get_current_settings
from prefect.context import refresh_global_settings_context


class Mine:
    def __init__(self):
        self._tie = None

    def _helper(self):
        return self._tie


def f(mine, row):
    os._exit(1)
    sys._getframe()
    mine._helper()
    row._asdict()
    study = optuna.create_study()
    return study.get_trials(deepcopy=False), study.sampler, "PREFECT_API_URL"
"""
    tree_own = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef):
            tree_own.add(node.name)
    assert offences(source, own=tree_own) == []


# ---------------------------------------------------------------------------- mlcore's code


OWN = own_attributes(sorted((REPO / "mlcore").rglob("*.py")) + CHECKED)


@pytest.mark.parametrize("path", CHECKED, ids=lambda p: str(p.relative_to(REPO)))
def test_flows_and_tasks_use_only_public_apis(path):
    found = offences(path.read_text(), OWN, str(path))
    assert found == [], f"{path.relative_to(REPO)}:\n  " + "\n  ".join(found)
