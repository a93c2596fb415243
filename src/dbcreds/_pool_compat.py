"""The one seam between dbcreds and psycopg_pool's internals.

dbcreds' pools are psycopg_pool pools (``CredentialPool``, ``AsyncCredentialPool``); four
things they add (the table) need state that psycopg_pool keeps private. Every use of a private
name of psycopg_pool is here, and nowhere else in dbcreds; ``tests/unit/test_pool_compat.py``
checks each one against the installed psycopg_pool (sync and asyncio) with `check_contract`, so
an upgrade that renames one fails that test by name instead of a pool in production.
Supported range: ``psycopg_pool>=3.3,<3.4`` (pyproject.toml; ``make test-matrix`` runs both
ends).

=========================================  ===================================================
private name (psycopg_pool 3.3)            why dbcreds relies on it
=========================================  ===================================================
``conn._expire_at`` (a float, set by       ``keep_alive_until``: while a login waits out a
``BasePool._set_connection_expiry_date``)  rotation window, a connection past ``max_lifetime``
                                           that comes back is kept a little longer instead of
                                           being replaced by one that cannot log in yet.
``pool._return_connection(conn,            the hook where a connection comes back, before
from_getconn)`` (sync; a coroutine in      psycopg_pool decides whether it expired:
the async pool)                            `HookedConnectionPool`, `HookedAsyncConnectionPool`.
``pool._lock`` (``threading.RLock`` /      ``fail_waiting``: taking the waiting callers out of
``asyncio.Lock``), ``pool._waiting`` (a    the queue, as ``close()`` does, to fail them at once
deque of ``WaitingClient``),               with ``AuthenticationFailed`` instead of letting
``WaitingClient.fail(error)`` (sync; a     them wait ``timeout`` for a ``PoolTimeout``.
coroutine in the async pool)
``pool._pool`` (a deque of idle            ``take_idle_connections``: the default async pool of
connections)                               an event loop that is gone closes the sockets of its
                                           idle connections directly.
=========================================  ===================================================

The contract check also calls ``BasePool._set_connection_expiry_date`` on a stand-in object, to
see that new connections are still stamped with ``_expire_at``.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic

from psycopg import AsyncConnection, Connection
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, ConnectionPool
from psycopg_pool import pool as _sync_module
from psycopg_pool import pool_async as _async_module
from typing_extensions import TypeVar

__all__ = [
    "ACT", "CT", "RELIED_ON", "ContractBroken", "HookedAsyncConnectionPool",
    "HookedConnectionPool", "PrivateName", "afail_waiting", "check_contract", "expires_at",
    "fail_waiting", "keep_alive_until", "take_idle_connections",
]

#: The connection type of a pool (as psycopg_pool's own ``CT``/``ACT``).
CT = TypeVar("CT", bound="Connection[Any]", default="Connection[TupleRow]")
ACT = TypeVar("ACT", bound="AsyncConnection[Any]", default="AsyncConnection[TupleRow]")


# -- connections ----------------------------------------------------------------------------


def expires_at(conn: Any) -> float | None:
    """The ``time.monotonic()`` after which the pool retires *conn* (None: not stamped)."""
    value = getattr(conn, "_expire_at", None)
    return None if value is None else float(value)


def keep_alive_until(conn: Any, t: float) -> None:
    """Have the pool keep *conn* until ``time.monotonic()`` reaches *t*."""
    conn._expire_at = t


def _keep_expired(conn: Any, grace: float) -> None:
    now = time.monotonic()
    expiry = expires_at(conn)
    if expiry is not None and expiry <= now:
        keep_alive_until(conn, now + grace)


# -- the return hook ------------------------------------------------------------------------


class HookedConnectionPool(ConnectionPool[CT], Generic[CT]):
    """A `ConnectionPool` that asks `_expired_grace` as each connection comes back."""

    def _expired_grace(self) -> float | None:
        """Seconds to keep a returning connection that is past ``max_lifetime`` (None: retire
        it, psycopg_pool's rule). Called for every connection that comes back."""
        return None

    def _return_connection(self, conn: CT, from_getconn: bool) -> None:
        grace = self._expired_grace()
        if grace is not None:
            _keep_expired(conn, grace)
        super()._return_connection(conn, from_getconn)


class HookedAsyncConnectionPool(AsyncConnectionPool[ACT], Generic[ACT]):
    """The asyncio twin of `HookedConnectionPool`."""

    def _expired_grace(self) -> float | None:
        return None

    async def _return_connection(self, conn: ACT, from_getconn: bool) -> None:
        grace = self._expired_grace()
        if grace is not None:
            _keep_expired(conn, grace)
        await super()._return_connection(conn, from_getconn)


# -- waiting callers and idle connections ----------------------------------------------------


def fail_waiting(pool: ConnectionPool[Any], error: Callable[[], Exception]) -> int:
    """Fail every caller waiting for a connection with a fresh ``error()`` (as ``close()``
    fails them with ``PoolClosed``); returns how many were waiting. The pool must be open."""
    with pool._lock:
        waiting = list(pool._waiting)
        pool._waiting.clear()
    for client in waiting:
        client.fail(error())
    return len(waiting)


async def afail_waiting(pool: AsyncConnectionPool[Any], error: Callable[[], Exception]) -> int:
    """The asyncio twin of `fail_waiting`."""
    async with pool._lock:
        waiting = list(pool._waiting)
        pool._waiting.clear()
    for client in waiting:
        await client.fail(error())
    return len(waiting)


def take_idle_connections(pool: ConnectionPool[Any] | AsyncConnectionPool[Any]) -> list[Any]:
    """Take the idle connections out of *pool* (without its lock: for a pool whose event loop
    is gone, whose tasks can no longer run) and return them."""
    idle = list(pool._pool)
    pool._pool.clear()
    return idle


# -- the contract ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PrivateName:
    """One private name of psycopg_pool that this module relies on."""

    owner: str  # e.g. "ConnectionPool"
    name: str
    kind: str  # "method", "coroutine method", "instance attribute", "connection attribute"
    params: tuple[str, ...] = ()  # a method's parameters after self
    type: type | None = None  # an attribute's type (instance attributes only)


RELIED_ON: tuple[PrivateName, ...] = (
    PrivateName("ConnectionPool", "_return_connection", "method", ("conn", "from_getconn")),
    PrivateName("AsyncConnectionPool", "_return_connection", "coroutine method",
                ("conn", "from_getconn")),
    PrivateName("WaitingClient", "fail", "method", ("error",)),
    PrivateName("AsyncWaitingClient", "fail", "coroutine method", ("error",)),
    PrivateName("ConnectionPool", "_lock", "lock"),
    PrivateName("AsyncConnectionPool", "_lock", "lock"),
    PrivateName("ConnectionPool", "_waiting", "instance attribute", type=deque),
    PrivateName("AsyncConnectionPool", "_waiting", "instance attribute", type=deque),
    PrivateName("ConnectionPool", "_pool", "instance attribute", type=deque),
    PrivateName("AsyncConnectionPool", "_pool", "instance attribute", type=deque),
    PrivateName("ConnectionPool", "_expire_at", "connection attribute"),
    PrivateName("AsyncConnectionPool", "_expire_at", "connection attribute"),
)


class ContractBroken(AssertionError):
    """The installed psycopg_pool lacks (or changed) a private name dbcreds relies on."""


def check_contract(sync_module: Any = _sync_module, async_module: Any = _async_module) -> None:
    """Check every name of `RELIED_ON` on psycopg_pool's ``pool`` and ``pool_async`` modules
    (by default the installed ones); raise `ContractBroken` naming the first one missing or
    changed.

    Instance attributes are checked on pools opened for the check (``min_size=0``: no
    connection is made), the async one on an event loop of its own (``asyncio.run``: call this
    from synchronous code).
    """
    owners = {
        "ConnectionPool": sync_module.ConnectionPool,
        "AsyncConnectionPool": async_module.AsyncConnectionPool,
        "WaitingClient": sync_module.WaitingClient,
        "AsyncWaitingClient": async_module.WaitingClient,
    }
    for item in RELIED_ON:
        if item.kind in ("method", "coroutine method"):
            _check_method(item, owners[item.owner])

    pool = owners["ConnectionPool"]("", min_size=0, max_size=1, open=False)
    pool.open()
    try:
        _check_instance(pool, "ConnectionPool")
    finally:
        pool.close()

    async def check_async() -> None:
        apool = owners["AsyncConnectionPool"]("", min_size=0, max_size=1, open=False)
        await apool.open()
        try:
            _check_instance(apool, "AsyncConnectionPool")
        finally:
            await apool.close()

    asyncio.run(check_async())


def _where(item: PrivateName) -> str:
    return f"psycopg_pool {item.owner}.{item.name} ({item.kind})"


def _check_method(item: PrivateName, owner: Any) -> None:
    func = inspect.getattr_static(owner, item.name, None)
    if not callable(func):
        raise ContractBroken(f"{_where(item)}: missing, dbcreds relies on it")
    if (item.kind == "coroutine method") != inspect.iscoroutinefunction(func):
        raise ContractBroken(f"{_where(item)}: not a {item.kind} any more")
    params = tuple(inspect.signature(func).parameters)[1:]
    if params != item.params:
        raise ContractBroken(f"{_where(item)}: parameters {params}, expected {item.params}")


def _check_instance(pool: Any, owner: str) -> None:
    for item in RELIED_ON:
        if item.owner != owner or item.kind in ("method", "coroutine method"):
            continue
        if item.kind == "connection attribute":
            # Stamped on each new connection by BasePool._set_connection_expiry_date.
            probe = _Probe()
            stamp = getattr(pool, "_set_connection_expiry_date", None)
            if stamp is not None:
                stamp(probe)
            if not isinstance(getattr(probe, item.name, None), float):
                raise ContractBroken(f"{_where(item)}: new connections are no longer stamped")
            continue
        value = getattr(pool, item.name, None)
        if item.kind == "lock":
            entry = "__aenter__" if owner.startswith("Async") else "__enter__"
            if not hasattr(value, entry):
                raise ContractBroken(f"{_where(item)}: missing or not a lock")
            continue
        if item.type is not None and not isinstance(value, item.type):
            raise ContractBroken(
                f"{_where(item)}: missing or not a {item.type.__name__}, dbcreds relies on it"
            )


class _Probe:
    """Stands in for a connection in the contract check."""
