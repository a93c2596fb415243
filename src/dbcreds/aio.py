"""asyncio: `AsyncSecretProvider`, `AsyncCredentialPool` and `get_async_connection()`.

One design with the sync side, not a copy of it: both run the same login policy, only the
I/O differs. `AsyncCredentialPool` is a ``psycopg_pool.AsyncConnectionPool`` whose connection
class's ``connect`` runs the very ``LoginPolicy.plan()`` that `CredentialPool` runs: current
secret, one shared refresh, AWSPENDING in the single-user rotation window, the bounded retry
behind a proxy, then a fast `AuthenticationFailed` for every waiting caller. Only the driver
differs:

* the plan's steps call the credential source, which may block (a Secrets Manager call over
  HTTP) and is thread-safe with single-flight fetches, so each step of the plan is advanced
  in a worker thread (``asyncio.to_thread``); fetches stay single-flight across threads and
  tasks alike because every task reaches the same provider;
* the connection attempts (``AsyncConnection.connect``) and the waits (``asyncio.sleep``)
  run on the event loop: a task waiting out a rotation holds no thread.

The connect parameters, the TLS policy, the failure state, the name and the statistics come
from ``login.PoolLogin`` and ``login.CredentialPoolMixin``, shared with the sync pool (this
module does not import ``pool.py``); psycopg_pool's internals are reached through
``_pool_compat.py`` only.

**Event loops in Lambda.** An async pool belongs to the event loop that opened it. A handler
that calls ``asyncio.run()`` per invocation gets a new loop each time, which would throw the
pool (and its connections) away per invocation: keep one loop for the life of the process
(see the README's example). The default pool of `get_async_connection` is per loop: when it
finds itself on a new loop it builds a new pool and closes what it can of the old one.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any, cast

from psycopg import AsyncConnection, OperationalError

from . import _registry
from ._pool_compat import ACT, HookedAsyncConnectionPool, afail_waiting, take_idle_connections
from .config import Settings
from .errors import DbcredsError
from .login import (
    LOGIN_FAILURES,
    CredentialPoolMixin,
    CredentialSource,
    again,
    drive_async,
    source_for,
)
from .provider import SecretProvider
from .secret import DbSecret

__all__ = [
    "AsyncCredentialPool",
    "AsyncSecretProvider",
    "build_async_pool",
    "close_default_async_pool",
    "default_async_pool",
    "drive_async",
    "get_async_connection",
]

logger = logging.getLogger("dbcreds.aio")


class AsyncSecretProvider:
    """A `SecretProvider` (or any credential source) for asyncio code.

    Every call runs the thread-safe sync provider in a worker thread, so its cache and its
    single flight are shared by threads and tasks: 50 tasks on a cold cache cause one
    GetSecretValue, and so do 50 tasks plus the pools' workers.

    :param secret_id: name or ARN of the secret, or an existing credential source to wrap
        (e.g. a `SecretProvider` that sync code uses too).
    :param client, ttl, provider_kwargs: as for `SecretProvider`.
    """

    def __init__(
        self,
        secret_id: str | CredentialSource,
        client: Any = None,
        ttl: float = 300.0,
        **provider_kwargs: Any,
    ) -> None:
        if isinstance(secret_id, str):
            self.provider: CredentialSource = SecretProvider(
                secret_id, client, ttl, **provider_kwargs
            )
        else:
            if client is not None or provider_kwargs:
                raise TypeError("client/provider options apply only when given a secret id")
            self.provider = secret_id

    def __repr__(self) -> str:
        return f"AsyncSecretProvider({self.provider!r})"

    @property
    def secret_id(self) -> str:
        return self.provider.secret_id

    async def get(self) -> DbSecret:
        """The AWSCURRENT secret (see `SecretProvider.get`)."""
        return await asyncio.to_thread(self.provider.get)

    async def refresh(self, stale: DbSecret | None = None) -> DbSecret:
        """Fetch AWSCURRENT now, or join the fetch in flight (see `SecretProvider.refresh`)."""
        return await asyncio.to_thread(self.provider.refresh, stale)

    async def get_pending(self, stale: DbSecret | None = None) -> DbSecret | None:
        """AWSPENDING of a rotation in progress, or None (see `SecretProvider.get_pending`)."""
        return await asyncio.to_thread(self.provider.get_pending, stale)

    def invalidate(self) -> None:
        """Forget every cached value (no I/O)."""
        self.provider.invalidate()

    def changed_recently(self, within: float) -> bool:
        return self.provider.changed_recently(within)

    def get_stats(self) -> dict[str, Any]:
        return self.provider.get_stats()


class AsyncCredentialPool(CredentialPoolMixin, HookedAsyncConnectionPool[ACT]):
    """`CredentialPool` for asyncio: same parameters, same login policy, same guarantees.

    A `psycopg_pool.AsyncConnectionPool` in every documented respect (generic in the
    connection type: ``AsyncCredentialPool[MyAsyncConnection]``), plus what `CredentialPool`
    adds, with the same deliberate differences (see its docstring).

    :param provider: a credential source (`SecretProvider`, ``iam.IamAuthSource``, ...) or an
        `AsyncSecretProvider` (its source is used, so the cache is shared with it).
    :param conninfo, kwargs: as for psycopg_pool: also callables (sync or async) called at each
        connection attempt.
    :param open: as for psycopg_pool 3.3: opening an async pool in its constructor is
        deprecated, so use ``async with AsyncCredentialPool(...) as pool`` or pass
        ``open=False`` and ``await pool.open()``. None (the default) opens the pool now if a
        loop is running (RuntimeError otherwise) and warns (RuntimeWarning) at its first use
        unless it is used as a context manager; True warns (RuntimeWarning) at once.

    Other parameters as for `CredentialPool`.
    """

    def __init__(
        self,
        provider: CredentialSource | AsyncSecretProvider,
        *,
        host: str | None = None,
        port: int | None = None,
        dbname: str | None = None,
        sslmode: str | None = None,
        sslrootcert: str | None = None,
        auth_retry_budget: float = 5.0,
        conninfo: str | Callable[[], str] | Callable[[], Awaitable[str]] = "",
        kwargs: dict[str, Any]
        | Callable[[], dict[str, Any]]
        | Callable[[], Awaitable[dict[str, Any]]]
        | None = None,
        connection_class: type[ACT] = cast("type[ACT]", AsyncConnection),  # noqa: B008
        open: bool | None = None,
        name: str | None = None,
        **pool_kwargs: Any,
    ) -> None:
        source = provider.provider if isinstance(provider, AsyncSecretProvider) else provider
        name = self._setup_login(
            source, name=name, conninfo=conninfo, kwargs=kwargs, host=host, port=port,
            dbname=dbname, sslmode=sslmode, sslrootcert=sslrootcert,
            auth_retry_budget=auth_retry_budget,
        )
        super().__init__(
            conninfo,
            connection_class=_async_connection_class(connection_class, self),
            kwargs=kwargs,  # as given (psycopg_pool's attribute): read at each attempt
            open=open,
            name=name,
            **pool_kwargs,
        )

    # -- callers --------------------------------------------------------------------------

    async def getconn(self, timeout: float | None = None) -> ACT:
        self.credentials.raise_if_failed()
        return await super().getconn(timeout)

    async def reconnect_failed(self) -> None:
        # psycopg_pool gave up reconnecting: let the next caller trigger a fresh attempt.
        self.credentials.set_failure(None)
        await super().reconnect_failed()

    # -- the connect path (runs in the pool's worker tasks) ----------------------------

    async def _login(
        self, connect: Callable[..., Awaitable[ACT]], conninfo: str, kwargs: dict[str, Any]
    ) -> ACT:
        async def attempt(secret: DbSecret) -> ACT:
            info, params = self.credentials.params(conninfo, kwargs, secret)
            return await connect(info, **params)

        try:
            conn = await drive_async(self.login.plan(), attempt)
        except LOGIN_FAILURES as exc:
            await self._set_failure(exc)
            raise
        self.credentials.set_failure(None)
        return conn

    async def _set_failure(self, failure: DbcredsError) -> None:
        self.credentials.set_failure(failure)
        # Fail the callers already waiting, as close() does with PoolClosed (see pool.py).
        await afail_waiting(self, lambda: again(failure))


def _async_connection_class(base: type[ACT], pool: AsyncCredentialPool[ACT]) -> type[ACT]:
    """A subclass of *base* whose ``connect`` logs in through *pool*'s login policy (holding
    the pool weakly, as the sync pool's does)."""
    pool_ref = weakref.ref(pool)

    class AsyncCredentialConnection(base):  # type: ignore[valid-type,misc]
        @classmethod
        async def connect(cls, conninfo: str = "", **kwargs: Any) -> Any:
            parent = super().connect
            owner = pool_ref()
            if owner is None:
                raise OperationalError("the connection's pool is gone")
            return await owner._login(parent, conninfo, kwargs)

    AsyncCredentialConnection.__qualname__ = f"AsyncCredentialConnection[{base.__qualname__}]"
    return cast("type[ACT]", AsyncCredentialConnection)


# -- the default pool of get_async_connection() -------------------------------------------


def build_async_pool(settings: Settings) -> AsyncCredentialPool:
    """The pool *settings* describe (the default pool of `get_async_connection`), not yet
    open (``await pool.open()`` on the loop it belongs to)."""
    extra: dict[str, Any] = {}
    if settings.pool_check:
        extra["check"] = AsyncCredentialPool.check_connection
    return AsyncCredentialPool(source_for(settings), **settings.pool_options(), open=False,
                               **extra)


_default: tuple[asyncio.AbstractEventLoop, AsyncCredentialPool] | None = None
_default_lock = threading.Lock()


async def default_async_pool() -> AsyncCredentialPool:
    """The pool configured by ``DBCREDS_*`` environment variables for the running loop.

    Created and opened on first use, reused by every later call on the same loop (across
    Lambda invocations, when the handler keeps one loop).
    """
    global _default
    loop = asyncio.get_running_loop()
    gone: tuple[asyncio.AbstractEventLoop, AsyncCredentialPool] | None = None
    created = False
    with _default_lock:
        if _default is not None and _default[0] is loop:
            pool = _default[1]
        else:
            gone = _default
            pool = build_async_pool(Settings.from_env())
            _default = (loop, pool)
            created = True
    if gone is not None:
        _abandon(*gone)
    if created:
        from . import snapstart

        snapstart.install()
    if pool.closed:
        await pool.open()  # idempotent: concurrent first callers are fine
    return pool


@asynccontextmanager
async def get_async_connection(
    timeout: float | None = None,
) -> AsyncIterator[AsyncConnection[Any]]:
    """``async with get_async_connection() as conn:`` a connection from the default pool."""
    pool = await default_async_pool()
    async with pool.connection(timeout) as conn:
        yield conn


async def close_default_async_pool() -> None:
    """Close and forget the default async pool (the next use builds a new one)."""
    global _default
    with _default_lock:
        current, _default = _default, None
    if current is None:
        return
    loop, pool = current
    if loop is asyncio.get_running_loop():
        await pool.close()
    else:
        _abandon(loop, pool)


def _close_default_outside_loop() -> bool:
    """Close and forget the default async pool from synchronous code, with no loop running
    (SnapStart's before-snapshot hook). Returns whether there was one."""
    global _default
    with _default_lock:
        current, _default = _default, None
    if current is None:
        return False
    loop, pool = current
    pool.provider.invalidate()
    if not loop.is_closed() and not loop.is_running():
        try:
            loop.run_until_complete(pool.close())
            return True
        except Exception as exc:  # fall back to closing the sockets
            logger.warning("closing the default async pool failed: %s", exc)
    _abandon(loop, pool)
    return True


def _abandon(loop: asyncio.AbstractEventLoop, pool: AsyncCredentialPool) -> None:
    """Forget the pool of an event loop we cannot run (closed by ``asyncio.run``, or running
    in another thread): its tasks are gone with the loop; close the sockets of its idle
    connections directly so that they don't linger on the proxy."""
    logger.warning(
        "the default async pool %r belonged to another event loop: its idle connections are "
        "closed directly. Keep one event loop for the life of the process to reuse "
        "connections across invocations (see dbcreds.aio)",
        pool.name,
    )
    pool.provider.invalidate()
    for conn in take_idle_connections(pool):
        with suppress(Exception):
            conn.pgconn.finish()


_registry.register_default("psycopg_pool.asyncio", _close_default_outside_loop)
