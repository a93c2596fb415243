"""The layers of the pool integrations: login.py knows no driver, aio.py does not import
pool.py, Settings is plain data, and each default pool registers itself with the registry
that SnapStart resets."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import pytest

from dbcreds import _registry
from dbcreds.config import Settings


def _modules_after(statement: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{statement}; import sys; print(' '.join(sorted(sys.modules)))"],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout
    return set(out.split())


def test_login_imports_no_driver() -> None:
    loaded = _modules_after("import dbcreds.login")
    assert not {"psycopg", "psycopg_pool", "boto3", "dbcreds.pool", "dbcreds.aio"} & loaded


def test_aio_does_not_import_the_sync_pool() -> None:
    loaded = _modules_after("import dbcreds.aio")
    assert "dbcreds.aio" in loaded and "dbcreds.pool" not in loaded


def test_settings_is_plain_data() -> None:
    for name in ("build_source", "build_pool", "build_async_pool"):
        assert not hasattr(Settings, name)
    assert _modules_after("import dbcreds.config").isdisjoint({"psycopg", "boto3"})


def _registered() -> dict[str, _registry.Default]:
    return {d.name: d for d in _registry.registered_defaults()}


def test_default_pools_register_themselves_at_import() -> None:
    from dbcreds import aio, pool

    defaults = _registered()
    sync, asyncio_ = defaults["psycopg_pool"], defaults["psycopg_pool.asyncio"]
    assert sync.reopen is pool.default_pool
    assert asyncio_.reopen is None  # rebuilt on its next use, on the loop that uses it
    assert asyncio_.close is aio._close_default_outside_loop


def test_registry_close_and_reopen_the_sync_default(
    stack: Any, app: Any, aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from dbcreds import pool as pool_module

    monkeypatch.setenv("DBCREDS_SECRET_ID", app.secret_id)
    pool_module.close_default_pool()
    sync = _registered()["psycopg_pool"]
    assert sync.close() is False  # none yet
    first = pool_module.default_pool()
    with first.connection() as conn:
        conn.execute("select 1")
    fetches = first.provider.get_stats()["fetches"]
    assert sync.close() is True
    assert first.closed and pool_module._default is None
    assert first.provider.get_stats()["fetches"] == fetches
    assert sync.reopen is not None
    again = sync.reopen()
    try:
        assert again is pool_module.default_pool() and again is not first
        assert not again.closed
    finally:
        pool_module.close_default_pool()


def test_registry_close_of_the_async_default(
    stack: Any, app: Any, aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import dbcreds
    from dbcreds import aio

    monkeypatch.setenv("DBCREDS_SECRET_ID", app.secret_id)
    close = _registered()["psycopg_pool.asyncio"].close
    assert close() is False

    async def use() -> Any:
        async with dbcreds.get_async_connection() as conn:
            await conn.execute("select 1")
        return await aio.default_async_pool()

    loop = asyncio.new_event_loop()
    try:
        pool = loop.run_until_complete(use())
        assert close() is True  # closed on its own loop (not running now)
        assert pool.closed
    finally:
        loop.close()
