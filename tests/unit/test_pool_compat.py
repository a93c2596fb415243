"""The seam's contract: every private name of psycopg_pool that dbcreds relies on exists, with
the expected kind and signature, on the installed psycopg_pool (sync and asyncio).

``make test-matrix`` runs this file with the oldest and the newest supported psycopg_pool.
No database needed.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from types import SimpleNamespace
from typing import Any

import psycopg_pool
import pytest
from psycopg_pool import pool as sync_module
from psycopg_pool import pool_async as async_module

from dbcreds import _pool_compat
from dbcreds._pool_compat import RELIED_ON, ContractBroken, check_contract


def test_the_installed_psycopg_pool_keeps_the_contract() -> None:
    print(f"\npsycopg_pool {psycopg_pool.__version__}: {len(RELIED_ON)} private names checked")
    check_contract()


def test_the_contract_covers_sync_and_asyncio() -> None:
    names = {(item.owner, item.name) for item in RELIED_ON}
    for name in ("_return_connection", "_waiting", "_pool", "_lock", "_expire_at"):
        assert ("ConnectionPool", name) in names
        assert ("AsyncConnectionPool", name) in names
    assert ("WaitingClient", "fail") in names and ("AsyncWaitingClient", "fail") in names


def _modules(
    sync_pool: Any = None, async_pool: Any = None, waiting: Any = None, async_waiting: Any = None
) -> tuple[Any, Any]:
    """psycopg_pool's pool/pool_async modules with some classes replaced (the fakes)."""
    sync = SimpleNamespace(
        ConnectionPool=sync_pool or sync_module.ConnectionPool,
        WaitingClient=waiting or sync_module.WaitingClient,
    )
    asyncio_ = SimpleNamespace(
        AsyncConnectionPool=async_pool or async_module.AsyncConnectionPool,
        WaitingClient=async_waiting or async_module.WaitingClient,
    )
    return sync, asyncio_


class PoolWithoutWaiting(sync_module.ConnectionPool):  # type: ignore[type-arg]
    """A psycopg_pool that renamed its queue of waiting callers."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._queue = self.__dict__.pop("_waiting")

    def close(self, timeout: float = 5.0) -> None:
        self._waiting = self._queue  # psycopg_pool's own close() still needs it
        super().close(timeout)


class PoolWithoutReturnHook(sync_module.ConnectionPool):  # type: ignore[type-arg]
    """A psycopg_pool whose connections come back some other way."""

    _return_connection = None  # type: ignore[assignment]


class AsyncPoolWithSyncReturn(async_module.AsyncConnectionPool):  # type: ignore[type-arg]
    """An async pool whose _return_connection is no longer a coroutine."""

    def _return_connection(self, conn: Any, from_getconn: bool) -> None:  # type: ignore[override]
        pass


class WaitingClientFailRenamed(sync_module.WaitingClient):  # type: ignore[type-arg]
    fail = None  # type: ignore[assignment]

    def fail_with(self, error: Exception) -> bool:
        return True


class AsyncPoolWithoutIdleDeque(async_module.AsyncConnectionPool):  # type: ignore[type-arg]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pool = list(self._pool)  # type: ignore[assignment]


class PoolThatStampsOtherwise(sync_module.ConnectionPool):  # type: ignore[type-arg]
    def _set_connection_expiry_date(self, conn: Any) -> None:
        conn._expires = time.monotonic() + self.max_lifetime


@pytest.mark.parametrize(
    ("modules", "named"),
    [
        (_modules(sync_pool=PoolWithoutWaiting), "ConnectionPool._waiting"),
        (_modules(sync_pool=PoolWithoutReturnHook), "ConnectionPool._return_connection"),
        (_modules(async_pool=AsyncPoolWithSyncReturn), "AsyncConnectionPool._return_connection"),
        (_modules(waiting=WaitingClientFailRenamed), "WaitingClient.fail"),
        (_modules(async_pool=AsyncPoolWithoutIdleDeque), "AsyncConnectionPool._pool"),
        (_modules(sync_pool=PoolThatStampsOtherwise), "ConnectionPool._expire_at"),
    ],
    ids=["no-_waiting", "no-_return_connection", "sync-_return_connection", "no-fail",
         "_pool-not-a-deque", "no-_expire_at"],
)
def test_the_check_fails_loudly_naming_what_is_missing(
    modules: tuple[Any, Any], named: str
) -> None:
    with pytest.raises(ContractBroken, match=f"psycopg_pool {named} "):
        check_contract(*modules)


def test_a_missing_attribute_monkeypatched_out_of_the_installed_class_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same with the installed class itself patched (as an upgrade would change it)."""
    monkeypatch.delattr(async_module.WaitingClient, "fail")
    with pytest.raises(ContractBroken, match=r"psycopg_pool AsyncWaitingClient\.fail "):
        check_contract()


# -- the seam's functions on real (unconnected) pools ----------------------------------------


class Conn:
    _expire_at = 0.0


def test_keep_alive_until_and_expires_at() -> None:
    conn = Conn()
    assert _pool_compat.expires_at(conn) == 0.0
    _pool_compat.keep_alive_until(conn, 42.0)
    assert _pool_compat.expires_at(conn) == 42.0
    assert _pool_compat.expires_at(object()) is None


def test_fail_waiting_fails_every_waiting_caller_once() -> None:
    pool = sync_module.ConnectionPool("", min_size=0, max_size=1, open=True)
    try:
        clients = [sync_module.WaitingClient() for _ in range(3)]  # type: ignore[var-annotated]
        pool._waiting.extend(clients)
        assert _pool_compat.fail_waiting(pool, lambda: RuntimeError("told")) == 3
        assert not pool._waiting
        errors = [c.error for c in clients]
        assert all(isinstance(e, RuntimeError) for e in errors)
        assert len({id(e) for e in errors}) == 3  # a fresh error each
    finally:
        pool.close()


def test_afail_waiting_and_take_idle_connections() -> None:
    async def scenario() -> None:
        pool = async_module.AsyncConnectionPool("", min_size=0, max_size=1, open=False)
        await pool.open()
        try:
            clients = [async_module.WaitingClient() for _ in range(2)]  # type: ignore[var-annotated]
            pool._waiting.extend(clients)
            assert await _pool_compat.afail_waiting(pool, lambda: RuntimeError("told")) == 2
            assert all(isinstance(c.error, RuntimeError) for c in clients)
            pool._pool.extend(["a", "b"])
            assert _pool_compat.take_idle_connections(pool) == ["a", "b"]
            assert pool._pool == deque()
        finally:
            await pool.close()

    asyncio.run(scenario())
