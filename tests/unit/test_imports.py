"""The import graph of dbcreds: every module imports alone, no cycle, layers that point down.

The layers, from the bottom (`RANKS`): the secret model (``errors``, ``secret``) and the
registry of process-wide defaults -> ``_aws``, ``_env``, ``tls``, ``config`` (plain settings)
and ``snapstart`` (which only walks the registry) -> the credential sources (``provider``,
``extension``, ``iam``) -> the login policy (``login``, which also builds a source from the
settings) -> the integrations (``_pool_compat``, ``pool``, ``aio``) ->
the entry points (``dbcreds``, ``cli``). A module imports modules of its own rank or below,
never above, and the module-level imports form no cycle (so a sibling of the same rank is fine
one way). The rotation Lambda (``dbcreds.rotation.*``) imports only `ROTATION_MAY_IMPORT` and
itself; of the SDK only the ``dbcreds rotate --local`` command (``cli``) imports it.

Imports are read with `ast`: module-level ones, those in functions (lazy imports) and those
under ``if TYPE_CHECKING:`` all count for the layers; the cycle check takes the module-level
imports that run. Importing each module alone in a fresh interpreter checks the same rules on
what Python really loads.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import pkgutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import dbcreds

SKIPPED: tuple[str, ...] = ()  # every module of the runtime package is ranked

RANKS = {
    "dbcreds.errors": 0,
    "dbcreds.secret": 0,
    "dbcreds._registry": 0,
    "dbcreds._version": 0,
    "dbcreds._aws": 1,
    "dbcreds._env": 1,
    "dbcreds.tls": 1,
    "dbcreds.snapstart": 1,
    "dbcreds.telemetry": 1,  # metrics and traces (sinks: OpenTelemetry, CloudWatch EMF)
    "dbcreds.provider": 2,
    "dbcreds.extension": 2,
    "dbcreds.iam": 2,
    "dbcreds.config": 1,  # plain settings read from the environment
    "dbcreds.login": 3,
    "dbcreds._pool_compat": 4,  # psycopg_pool's private names, for the integrations below
    "dbcreds.pool": 4,
    "dbcreds.aio": 4,
    "dbcreds.psycopg2": 4,  # psycopg2 connect() and pools (the psycopg2 extra)
    "dbcreds.asyncpg": 4,  # asyncpg's create_pool(connect=...): the dbcreds[asyncpg] extra
    "dbcreds.django": 4, "dbcreds.django.base": 4,  # ENGINE "dbcreds.django" (Django's backend)
    "dbcreds.sqlalchemy": 4,  # SQLAlchemy engines (the sqlalchemy extra)
    "dbcreds": 5,
    "dbcreds.cli": 5,
}
ROTATION = "dbcreds.rotation"
ROTATION_MAY_IMPORT = frozenset(
    {"dbcreds.errors", "dbcreds.secret", "dbcreds._aws", "dbcreds._env", "dbcreds.tls",
     "dbcreds._version"}
)
#: the SDK modules that may import rotation code: `dbcreds rotate --local` runs the steps
ROTATION_USERS = frozenset({"dbcreds.cli"})

#: (importer, imported) edges that break the rules (none: keep it that way).
KNOWN_EXCEPTIONS: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str
    where: str  # "module", "function" or "typing"
    line: int

    def __str__(self) -> str:
        return f"{self.importer} -> {self.imported} ({self.where}, line {self.line})"


def _modules() -> dict[str, Path]:
    found = {"dbcreds": Path(dbcreds.__file__)}
    for info in pkgutil.walk_packages(dbcreds.__path__, "dbcreds."):
        if info.name.startswith(SKIPPED):
            continue
        spec = importlib.util.find_spec(info.name)
        assert spec is not None and spec.origin is not None
        found[info.name] = Path(spec.origin)
    return found


MODULES = _modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _target(name: str) -> str | None:
    """The dbcreds module an import of *name* loads (None: not ours)."""
    if name == "dbcreds" or name.startswith("dbcreds."):
        while name not in MODULES and "." in name:
            if name.startswith(SKIPPED):
                return name
            name = name.rsplit(".", 1)[0]
        return name
    return None


def _edges(module: str, path: Path) -> list[Edge]:
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    edges: list[Edge] = []

    def add(name: str, where: str, node: ast.stmt) -> None:
        target = _target(name)
        if target is not None and target != module:
            edges.append(Edge(module, target, where, node.lineno))

    def visit(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            here = where
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                here = "typing"
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                here = "function" if where == "module" else where
            if isinstance(child, ast.Import):
                for alias in child.names:
                    add(alias.name, here, child)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - child.level + 1])
                    if child.module:
                        base += "." + child.module
                else:
                    base = child.module or ""
                for alias in child.names:  # `from . import snapstart` imports a module
                    sub = f"{base}.{alias.name}"
                    add(sub if sub in MODULES or sub.startswith(SKIPPED) else base, here, child)
            visit(child, here)

    visit(ast.parse(path.read_text(encoding="utf-8")), "module")
    return edges


EDGES = [edge for name, path in MODULES.items() for edge in _edges(name, path)]


def _violation(importer: str, imported: str) -> str | None:
    """Why *importer* may not import *imported*, or None."""
    if imported.startswith(SKIPPED):
        return None if importer in ROTATION_USERS else "imports the test harness or the demo"
    in_rotation = importer.startswith(ROTATION)
    if imported.startswith(ROTATION):
        if in_rotation or importer in ROTATION_USERS:
            return None
        return "the SDK imports rotation code"
    if in_rotation:
        return None if imported in ROTATION_MAY_IMPORT else "rotation code imports the SDK"
    if RANKS[imported] > RANKS[importer]:
        return f"rank {RANKS[importer]} imports rank {RANKS[imported]}"
    return None


def test_every_module_has_a_layer() -> None:
    unranked = [m for m in MODULES if m not in RANKS and not m.startswith(ROTATION)]
    assert not unranked, f"give these modules a rank in RANKS: {unranked}"
    assert set(RANKS) <= set(MODULES), "RANKS names modules that no longer exist"


def test_the_layers_point_down() -> None:
    bad = [f"{edge}: {why}" for edge in EDGES
           if (why := _violation(edge.importer, edge.imported))
           and (edge.importer, edge.imported) not in KNOWN_EXCEPTIONS]
    assert not bad, "\n".join(bad)


def test_the_known_exceptions_still_exist() -> None:
    """An exception that the code no longer needs is deleted from KNOWN_EXCEPTIONS."""
    pairs = {(e.importer, e.imported) for e in EDGES}
    assert KNOWN_EXCEPTIONS <= pairs, KNOWN_EXCEPTIONS - pairs
    assert all(_violation(*pair) for pair in KNOWN_EXCEPTIONS)


def _cycle(edges: list[Edge]) -> list[str] | None:
    graph: dict[str, set[str]] = {}
    for edge in edges:
        graph.setdefault(edge.importer, set()).add(edge.imported)
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle() -> None:
    at_import = [e for e in EDGES if e.where == "module"]
    cycle = _cycle(at_import)
    assert cycle is None, "module-level import cycle: " + " -> ".join(cycle or ())
    # Lazy imports (in functions) close no cycle either, but for the known exceptions.
    run = [e for e in EDGES if e.where != "typing"
           and (e.importer, e.imported) not in KNOWN_EXCEPTIONS]
    cycle = _cycle(run)
    assert cycle is None, "import cycle through a lazy import: " + " -> ".join(cycle or ())


def test_the_graph_is_read() -> None:
    """The parser sees the imports it must see (a check of this test itself)."""
    pairs = {(e.importer, e.imported, e.where) for e in EDGES}
    assert ("dbcreds.provider", "dbcreds._aws", "module") in pairs
    assert ("dbcreds.provider", "dbcreds.extension", "function") in pairs  # lazy
    assert ("dbcreds.pool", "dbcreds.snapstart", "function") in pairs  # `from . import x`
    assert ("dbcreds.rotation.settings", "dbcreds._env", "module") in pairs  # `from .. import`
    assert ("dbcreds", "dbcreds.pool", "typing") in pairs
    assert ("dbcreds.cli", "dbcreds.rotation.local", "function") in pairs


_ALONE = r"""
import importlib, json, sys
report = {}
for name in json.loads(sys.argv[1]):
    for loaded in [m for m in sys.modules if m == "dbcreds" or m.startswith("dbcreds.")]:
        del sys.modules[loaded]
    before = set(sys.modules)
    try:
        importlib.import_module(name)
    except BaseException as exc:
        report[name] = {"error": f"{type(exc).__name__}: {exc}"}
        continue
    report[name] = {"loaded": sorted(set(sys.modules) - before)}
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def imported_alone() -> dict[str, dict[str, object]]:
    """Each module imported alone (dbcreds* cleared from sys.modules in between), with what
    else it loaded."""
    names = sorted(MODULES)
    out = subprocess.run(
        [sys.executable, "-c", _ALONE, json.dumps(names)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert out.returncode == 0, out.stderr
    report: dict[str, dict[str, object]] = json.loads(out.stdout)
    assert sorted(report) == names
    return report


def test_every_module_imports_alone(imported_alone: dict[str, dict[str, object]]) -> None:
    failed = {m: r["error"] for m, r in imported_alone.items() if "error" in r}
    assert not failed, failed


def test_what_a_module_loads_respects_the_layers(
    imported_alone: dict[str, dict[str, object]],
) -> None:
    bad = []
    for name, result in imported_alone.items():
        loaded = result.get("loaded", [])
        assert isinstance(loaded, list)
        for other in loaded:
            ours = _target(other)
            if ours is None or ours == name or name.startswith(ours + "."):
                continue  # not dbcreds, or the module itself, or a package it lives in
            why = _violation(name, ours)
            if why and (name, ours) not in KNOWN_EXCEPTIONS:
                bad.append(f"importing {name} loads {ours}: {why}")
    assert not bad, "\n".join(bad)


def test_import_dbcreds_loads_neither_boto3_nor_psycopg(
    imported_alone: dict[str, dict[str, object]],
) -> None:
    loaded = imported_alone["dbcreds"]["loaded"]
    assert isinstance(loaded, list)
    heavy = [m for m in loaded if m.split(".")[0] in ("boto3", "botocore", "psycopg",
                                                       "psycopg_pool")]
    assert heavy == []
