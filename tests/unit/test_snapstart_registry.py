"""SnapStart's hooks walk dbcreds._registry: no integration is reached through sys.modules."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from dbcreds import _registry, snapstart


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """An empty registry (the real defaults are put back afterwards); returns the call log."""
    monkeypatch.setattr(_registry, "_defaults", {})
    monkeypatch.setattr(snapstart, "_closed", [])
    return []


def test_only_what_was_open_is_reopened_and_failures_are_logged(
    registry: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    calls = registry

    def closer(name: str, had: bool) -> Any:
        def close() -> bool:
            calls.append(f"close {name}")
            return had
        return close

    def reopener(name: str, fail: bool = False) -> Any:
        def reopen() -> None:
            calls.append(f"reopen {name}")
            if fail:
                raise RuntimeError(f"{name} cannot be rebuilt")
        return reopen

    def broken_close() -> bool:
        calls.append("close broken")
        raise RuntimeError("closing failed")

    _registry.register_default("open", closer("open", True), reopener("open"))
    _registry.register_default("idle", closer("idle", False), reopener("idle"))
    _registry.register_default("lazy", closer("lazy", True))  # rebuilt on its next use
    _registry.register_default("failing", closer("failing", True), reopener("failing", True))
    _registry.register_default("broken", broken_close, reopener("broken"))

    caplog.set_level(logging.INFO, logger="dbcreds.snapstart")
    snapstart.before_snapshot()
    assert calls == ["close open", "close idle", "close lazy", "close failing", "close broken"]
    assert "closing the default broken failed" in caplog.text
    calls.clear()
    snapstart.after_restore()  # raises nothing
    assert calls == ["reopen open", "reopen failing"]
    assert "the default failing could not be rebuilt" in caplog.text
    calls.clear()
    snapstart.after_restore()  # a second restore reopens nothing more
    assert calls == []


def test_the_integrations_register_their_defaults() -> None:
    import dbcreds.aio
    import dbcreds.pool

    names = {d.name: d for d in _registry.registered_defaults()}
    assert names["psycopg_pool"].reopen is dbcreds.pool.default_pool
    assert names["psycopg_pool.asyncio"].reopen is None
    assert names["psycopg_pool"].close() is False  # no default pool: nothing to close
    assert names["psycopg_pool.asyncio"].close() is False


def test_snapstart_knows_no_integration() -> None:
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(snapstart))
    ours = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level}
    ours |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
             if a.name.startswith("dbcreds")}
    assert ours == {"_registry"}
    assert "sys.modules" not in inspect.getsource(snapstart)
