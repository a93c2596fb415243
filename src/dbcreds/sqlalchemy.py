"""SQLAlchemy 2.x engines (psycopg 3 dialect) that log in with a rotated secret.

Change one line::

    engine = sqlalchemy.create_engine("postgresql+psycopg://proxy.example.com/app")
    engine = dbcreds.sqlalchemy.create_engine("postgresql+psycopg://proxy.example.com/app",
                                              secret_id="prod/app")

and every new connection the engine's pool makes logs in through the login policy of
``dbcreds.login`` (the pools' own): the secret's current version, one refresh for everyone,
AWSPENDING in the single-user rotation window, the bounded retry behind a proxy, and when the
plan gives up `AuthenticationFailed` (or `UntrustedServer`) raised to the caller at once.

How it hooks in (SQLAlchemy's documented hooks only):

* sync engines: a ``do_connect`` listener (``DialectEvents.do_connect``, which may return the
  DBAPI connection itself) runs the plan with ``login.drive`` and ``Dialect.connect``. The
  ``do_connect`` listeners added to the engine after it still run, before dbcreds connects,
  with the same ``cargs``/``cparams`` they may change (SQLAlchemy stops at the first listener
  that returns a connection: dbcreds' calls the later ones first). `attach` adds the listener
  to an engine built with ``sqlalchemy.create_engine``.
* asyncio engines: ``async_creator`` (``create_async_engine``, SQLAlchemy 2.0.16+) is a
  coroutine that runs the plan with ``login.drive_async`` (its steps, which may call Secrets
  Manager, in a worker thread; the connection attempts and the waits on the loop) and
  psycopg's ``AsyncConnection.connect``. As with any ``async_creator``, SQLAlchemy fires no
  ``do_connect`` event for such an engine; the URL, its query and ``connect_args`` still
  apply (dbcreds reads them through ``Dialect.create_connect_args``).

What the URL means: the host, port and database it names are the configuration (e.g. the RDS
Proxy endpoint) and win over the secret's; a URL without them uses the secret's. The user name
and the password come from the secret: a URL (or ``connect_args``) that carries them is
refused, since they would be ignored. The query and ``connect_args`` reach psycopg as usual,
except the TLS settings (``sslmode``, ``sslrootcert``), which are read as the configured TLS
policy (``dbcreds.tls``: verify-full by default, never a password to an unverified server), and
``prepare_threshold``, which defaults to None (PgBouncer in transaction mode and RDS Proxy
break, or pin on, prepared statements).

Everything else is SQLAlchemy's: the pool (``QueuePool``, ``pool_size``, ``pool_recycle``,
``pool_pre_ping``, ...), the events, ``dispose()``; except that ``pool_recycle`` is applied
as psycopg_pool applies ``max_lifetime``: each connection's life is up to 5 % shorter, at
random (connections made together are not all recycled, and logged in again, together), and
while a login waits out a rotation window a connection that comes back past ``pool_recycle``
is kept a second longer (`keep_while_retrying`). A login that
fails because of the network or a database that is down raises SQLAlchemy's
``OperationalError`` as usual.

After a login plan gave up, callers that need a new connection are told at once
(`AuthenticationFailed`, a fresh copy) for one second; the next one after that tries again
(SQLAlchemy connects in the caller's thread: there is no background worker to do it). Callers
waiting for a slot of a full ``QueuePool`` (all of them taken, some by logins in progress) are
told too, at once, rather than after ``pool_timeout`` (`wake_waiting`: the one place that
touches SQLAlchemy's private names).

With neither ``secret_id`` nor ``provider``, the ``DBCREDS_*`` environment configures the
engine (``dbcreds.config``: the secret or IAM user, host/port/dbname when the URL names none,
the TLS settings, the retry budget), so a Lambda function can build its engine at module level
with ``dbcreds.sqlalchemy.create_engine()``.
"""

from __future__ import annotations

import random
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import sqlalchemy
from psycopg import AsyncConnection
from sqlalchemy import event
from sqlalchemy.engine import URL, Dialect, Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.ext.asyncio import create_async_engine as _sa_create_async_engine
from sqlalchemy.pool import Pool, QueuePool
from sqlalchemy.pool.base import _ConnectionRecord
from sqlalchemy.util.queue import Full

from . import _registry
from .errors import ConfigurationError, DbcredsError
from .login import (
    LOGIN_FAILURES,
    CredentialSource,
    PoolLogin,
    again,
    configure,
    drive,
    drive_async,
)
from .secret import DbSecret

__all__ = ["AsyncCreator", "EngineLogin", "async_creator", "attach", "create_async_engine",
           "create_engine", "keep_while_retrying", "login_of", "wake_waiting"]

#: the URL of `create_engine` and `create_async_engine` when none is given
DEFAULT_URL = "postgresql+psycopg://"
#: seconds during which callers are told of a failed login at once, without trying again
FAILURE_HOLD = 1.0

C = TypeVar("C")


class EngineLogin:
    """The login side of one engine: a `login.PoolLogin` (connect parameters, TLS policy,
    the failure told to callers) and its `LoginPolicy`, driven in the caller's thread (sync)
    or on its event loop (asyncio).

    :param kwargs: the psycopg parameters the URL and ``connect_args`` give (their TLS
        settings are read as the configured TLS).
    """

    def __init__(
        self,
        source: CredentialSource,
        *,
        host: str | None,
        port: int | None,
        dbname: str | None,
        sslmode: str | None,
        sslrootcert: str | None,
        auth_retry_budget: float,
        kwargs: Mapping[str, Any],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.credentials = PoolLogin(
            source, host=host, port=port, dbname=dbname, sslmode=sslmode,
            sslrootcert=sslrootcert, auth_retry_budget=auth_retry_budget, conninfo="",
            kwargs=dict(kwargs),
        )
        self.policy = self.credentials.policy
        self._clock = clock
        self._failed_at: float | None = None
        self._mutex = threading.Lock()

    def __repr__(self) -> str:
        return f"<EngineLogin secret={self.source.secret_id!r}>"

    def connect(self, connect: Callable[..., C], conninfo: str, kwargs: Mapping[str, Any]) -> C:
        """Log in with ``connect(conninfo, **params)`` (blocking) through the login plan."""
        self._raise_if_failed()

        def attempt(secret: DbSecret) -> C:
            info, params = self.credentials.params(conninfo, kwargs, secret, _endpoint(kwargs))
            return connect(info, **params)

        try:
            conn = drive(self.policy.plan(), attempt, time.sleep)
        except LOGIN_FAILURES as exc:
            self._set_failure(exc)
            raise
        self._set_failure(None)
        return conn

    async def aconnect(
        self, connect: Callable[..., Awaitable[C]], conninfo: str, kwargs: Mapping[str, Any]
    ) -> C:
        """Log in with ``await connect(conninfo, **params)`` through the login plan, whose
        steps run in a worker thread (``login.drive_async``)."""
        self._raise_if_failed()

        async def attempt(secret: DbSecret) -> C:
            info, params = self.credentials.params(conninfo, kwargs, secret, _endpoint(kwargs))
            return await connect(info, **params)

        try:
            conn = await drive_async(self.policy.plan(), attempt)
        except LOGIN_FAILURES as exc:
            self._set_failure(exc)
            raise
        self._set_failure(None)
        return conn

    @property
    def failure(self) -> DbcredsError | None:
        """The failure callers are told at once now (None: the next login tries)."""
        with self._mutex:
            failed_at = self._failed_at
        if failed_at is None or self._clock() - failed_at >= FAILURE_HOLD:
            return None
        return self.credentials.failure

    def _raise_if_failed(self) -> None:
        failure = self.failure
        if failure is not None:
            raise again(failure)

    def _set_failure(self, failure: DbcredsError | None) -> None:
        if failure is None and self.credentials.failure is None:
            return  # the usual case: nothing to clear
        self.credentials.set_failure(failure)
        with self._mutex:
            self._failed_at = None if failure is None else self._clock()


# -- configuration --------------------------------------------------------------------------


def _endpoint(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """host/port/dbname of one connection's arguments (the URL, ``connect_args``, what a
    ``do_connect`` listener set): configuration, which wins over the secret's."""
    return {k: kwargs[k] for k in ("host", "port", "dbname") if kwargs.get(k)}


def _login_for(
    url: URL,
    cparams: Mapping[str, Any],
    *,
    secret_id: str | None,
    provider: CredentialSource | None,
    sslmode: str | None,
    sslrootcert: str | None,
    auth_retry_budget: float | None,
) -> EngineLogin:
    """The `EngineLogin` of an engine of *url*, whose psycopg parameters are *cparams*."""
    _refuse_credentials(url, cparams)
    if url.get_backend_name() != "postgresql" or url.get_driver_name() not in (
        "psycopg", "psycopg_async"
    ):
        raise ConfigurationError(
            f"dbcreds.sqlalchemy supports the psycopg 3 dialect (postgresql+psycopg://), not "
            f"{url.drivername!r}"
        )
    config = configure(secret_id=secret_id, provider=provider,
                       auth_retry_budget=auth_retry_budget)
    source = config.source
    host = (str(cparams["host"]) if cparams.get("host") else None) or config.host
    port = cparams.get("port") or config.port
    dbname = (str(cparams["dbname"]) if cparams.get("dbname") else None) or config.dbname
    sslmode = sslmode or config.sslmode
    sslrootcert = sslrootcert or config.sslrootcert
    from . import snapstart

    snapstart.install()  # under Lambda SnapStart: no secret or connection in the snapshot
    return EngineLogin(
        source, host=host, port=port, dbname=dbname, sslmode=sslmode, sslrootcert=sslrootcert,
        auth_retry_budget=config.auth_retry_budget,
        kwargs=cparams,
    )


def _refuse_credentials(url: URL, cparams: Mapping[str, Any]) -> None:
    """A user name or password in the URL or ``connect_args`` would be ignored: refuse it
    (the message never shows them)."""
    if url.password is not None or "password" in cparams:
        raise ConfigurationError(
            "the URL (or connect_args) carries a password: dbcreds logs in with the password of "
            "the secret, so this one would be ignored. Remove it from the URL"
        )
    if url.username is not None or "user" in cparams:
        raise ConfigurationError(
            "the URL (or connect_args) names a user: dbcreds logs in as the secret's user, so "
            "this one would be ignored. Remove it from the URL"
        )


def _psycopg_args(cargs: Any, cparams: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(conninfo, kwargs) for psycopg's ``connect`` from the dialect's cargs and cparams."""
    args = list(cargs)
    if len(args) > 1:  # pragma: no cover - the psycopg dialect gives at most a conninfo
        raise ConfigurationError("unexpected positional connect arguments")
    return (str(args[0]) if args else ""), dict(cparams)


def _url_params(dialect: Dialect, url: URL, connect_args: Mapping[str, Any] | None
                ) -> tuple[str, dict[str, Any]]:
    """What SQLAlchemy would pass to psycopg: the URL through the dialect, then connect_args."""
    cargs, cparams = dialect.create_connect_args(url)
    conninfo, kwargs = _psycopg_args(cargs, cparams)
    return conninfo, {**kwargs, **(connect_args or {})}


# -- sync engines: the do_connect event -----------------------------------------------------

_logins: weakref.WeakKeyDictionary[Any, EngineLogin] = weakref.WeakKeyDictionary()
_logins_lock = threading.Lock()


def _remember(engine: Engine | AsyncEngine, login: EngineLogin) -> None:
    with _logins_lock:
        _logins[engine.sync_engine if isinstance(engine, AsyncEngine) else engine] = login


def login_of(engine: Engine | AsyncEngine) -> EngineLogin:
    """The `EngineLogin` of an engine built or attached here (its source: ``.source``)."""
    key = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    with _logins_lock:
        login = _logins.get(key)
    if login is None:
        raise LookupError("this engine does not log in through dbcreds")
    return login


def attach(
    engine: Engine,
    provider: CredentialSource | None = None,
    *,
    secret_id: str | None = None,
    sslmode: str | None = None,
    sslrootcert: str | None = None,
    auth_retry_budget: float | None = None,
) -> Engine:
    """Have *engine* (built with ``sqlalchemy.create_engine``, psycopg dialect) log in with
    the credentials of a secret; returns it.

    A ``do_connect`` listener makes each new DBAPI connection through the login policy. The
    URL's host/port/database win over the secret's; its query and the engine's
    ``connect_args`` reach psycopg (their TLS settings read as the configured TLS). Call it
    before the engine's first connection, on an engine built without ``creator`` or ``pool``
    (SQLAlchemy fires no ``do_connect`` event for those). For an asyncio engine use
    `create_async_engine`, or `async_creator` with ``sqlalchemy.ext.asyncio.create_async_engine``.

    :param provider: a `SecretProvider`, an ``iam.IamAuthSource``, or any
        ``login.CredentialSource``.
    :param secret_id: instead of *provider*: the secret's name or ARN. With neither, the
        ``DBCREDS_*`` environment configures it (``dbcreds.config``).
    :param sslmode, sslrootcert, auth_retry_budget: as for `dbcreds.CredentialPool`.
    """
    if isinstance(engine, AsyncEngine):
        raise TypeError(
            "attach() is for sync engines: build an asyncio engine with "
            "dbcreds.sqlalchemy.create_async_engine(), or pass "
            "async_creator=dbcreds.sqlalchemy.async_creator(url, ...) to "
            "sqlalchemy.ext.asyncio.create_async_engine()"
        )
    if engine.dialect.is_async:
        raise TypeError("attach() is for sync engines: see create_async_engine()")
    with _logins_lock:
        if engine in _logins:
            raise ValueError("this engine already logs in through dbcreds")
    _, cparams = _url_params(engine.dialect, engine.url, None)
    login = _login_for(
        engine.url, cparams, secret_id=secret_id, provider=provider, sslmode=sslmode,
        sslrootcert=sslrootcert, auth_retry_budget=auth_retry_budget,
    )

    def do_connect(dialect: Dialect, conn_rec: Any, cargs: list[Any],
                   cparams: dict[str, Any]) -> Any:
        # SQLAlchemy stops at the first listener that returns a connection: run the ones
        # added after this one first, so that they see (and may change) the arguments.
        for fn in _listeners_after(dialect, do_connect):
            conn = fn(dialect, conn_rec, cargs, cparams)
            if conn is not None:
                return conn
        conninfo, kwargs = _psycopg_args(cargs, cparams)
        _refuse_credentials(engine.url, kwargs)
        try:
            return login.connect(dialect.connect, conninfo, kwargs)
        except LOGIN_FAILURES:
            wake_waiting(engine.pool)
            raise

    event.listen(engine, "do_connect", do_connect)
    keep_while_retrying(engine, login)
    _remember(engine, login)
    return engine


def keep_while_retrying(engine: Engine, login: EngineLogin) -> None:
    """While a login of *engine* waits out a rotation window (``policy.retrying``), a
    connection that comes back to the pool past ``pool_recycle`` (or within a second of it)
    is kept a second longer: recycling it now would make its next caller wait for a login
    that cannot succeed yet (break-before-make), as ``CredentialPool`` keeps a connection
    past ``max_lifetime`` (``PoolLogin.expired_grace``).

    Through the documented ``checkin`` pool event; what it changes, the entry's start time
    (``last_connect_time``, which ``pool_recycle`` is measured from), is not documented as
    writable: ``_extend_life`` is the one place, pinned by the unit tests. A connection the
    pool invalidated is never kept.
    """

    def checkin(dbapi_connection: Any, record: Any) -> None:
        grace = login.credentials.expired_grace()
        if grace is not None and dbapi_connection is not None:
            _extend_life(engine.pool, record, grace, time.time())

    def connect(dbapi_connection: Any, record: Any) -> None:
        _spread_recycle(engine.pool, record, random.random())

    event.listen(engine, "checkin", checkin)
    event.listen(engine, "connect", connect)


#: the share of ``pool_recycle`` by which a new connection's life is shortened at random
RECYCLE_JITTER = 0.05


def _spread_recycle(pool: Pool, record: Any, draw: float) -> None:
    """Shorten a new connection's life by up to `RECYCLE_JITTER` of ``pool_recycle`` (5 %,
    as psycopg_pool does with ``max_lifetime``): connections made together (at start, after a
    restart) are then not all recycled together, which would make every caller log in at
    the same moment, possibly in a rotation window. Never before a pool invalidation (the
    connection would count as invalidated)."""
    recycle = pool._recycle
    if recycle <= 0:
        return
    start = record.starttime
    earlier = start - draw * RECYCLE_JITTER * recycle
    if earlier > pool._invalidate_time and earlier > record._soft_invalidate_time:
        record.starttime = earlier


def _extend_life(pool: Pool, record: Any, grace: float, now: float) -> None:
    """Let *record*'s connection live *grace* more seconds before ``pool_recycle`` retires it
    (its start time moved forward, never past *now*, so that any later invalidation of the
    pool still retires it)."""
    recycle = pool._recycle
    start = record.starttime
    if recycle < 0 or pool._invalidate_time > start or record._soft_invalidate_time > start:
        return  # no recycling, or invalidated: SQLAlchemy retires it as usual
    wanted = min(now, now + grace - recycle)
    if wanted > start:
        record.starttime = wanted


def wake_waiting(pool: Pool) -> None:
    """Let the callers waiting for a connection of a full `QueuePool` learn at once that the
    login failed, instead of after ``pool_timeout``.

    A caller waits when the pool's every slot is in use, some by logins in progress; a login
    that fails frees its slot but wakes no one (SQLAlchemy's queue is woken only by a
    connection coming back). So the failing login hands its slot to an unconnected pool entry,
    put in the queue: a waiter takes it and connects it through dbcreds, which tells it the
    failure at once, and SQLAlchemy puts the entry back for the next waiter (its own path for
    a pooled connection whose reconnect failed). The entry stays as any invalidated one does:
    the next checkout after the failure connects it.

    SQLAlchemy's private names (``QueuePool._pool``, ``_overflow``, ``_max_overflow``,
    ``_overflow_lock``, ``_ConnectionRecord(pool, connect=False)``) are used here only, and
    pinned by ``tests/unit/test_sqlalchemy_logins.py``.
    """
    if not isinstance(pool, QueuePool):
        return  # NullPool, StaticPool, ...: no caller waits for a slot
    with pool._overflow_lock:
        if pool._max_overflow < 0 or pool.checkedin() > 0 or (
            pool._overflow < pool._max_overflow
        ):
            return  # room left, or a connection in the queue: nobody waits
        pool._overflow += 1  # the entry takes the slot the failed login frees
    try:
        pool._pool.put(_ConnectionRecord(pool, connect=False), False)
    except Full:  # pragma: no cover - the queue was filled meanwhile: nobody waits
        pool._dec_overflow()


def _listeners_after(dialect: Dialect, listener: Callable[..., Any]) -> list[Callable[..., Any]]:
    """The ``do_connect`` listeners that come after *listener*, in the order SQLAlchemy runs
    them (it iterates ``dialect.dispatch.do_connect`` the same way in ``create_engine``)."""
    listeners = list(dialect.dispatch.do_connect)
    for i, fn in enumerate(listeners):
        if fn is listener:
            return listeners[i + 1:]
    return []


def create_engine(
    url: str | URL = DEFAULT_URL,
    *,
    secret_id: str | None = None,
    provider: CredentialSource | None = None,
    sslmode: str | None = None,
    sslrootcert: str | None = None,
    auth_retry_budget: float | None = None,
    **engine_kwargs: Any,
) -> Engine:
    """``sqlalchemy.create_engine(url, **engine_kwargs)`` whose connections log in with the
    credentials of a secret (see `attach`, and the module docstring).

    :param url: a ``postgresql+psycopg://`` URL with no user name and no password: its host,
        port and database (when it names them) win over the secret's.
    :param engine_kwargs: as for ``sqlalchemy.create_engine`` (``pool_size``,
        ``pool_recycle``, ``pool_pre_ping``, ``connect_args``, ...).

    With neither *secret_id* nor *provider*, the ``DBCREDS_*`` environment configures it (a
    Lambda function: ``engine = dbcreds.sqlalchemy.create_engine()`` at module level).
    """
    if "creator" in engine_kwargs or "pool" in engine_kwargs:
        # SQLAlchemy fires no do_connect event for them: the login would bypass dbcreds
        raise TypeError("dbcreds makes the connections: give no creator or pool")
    _refuse_credentials(make_url(url), engine_kwargs.get("connect_args") or {})
    engine = sqlalchemy.create_engine(url, **engine_kwargs)
    return attach(engine, provider, secret_id=secret_id, sslmode=sslmode,
                  sslrootcert=sslrootcert, auth_retry_budget=auth_retry_budget)


# -- asyncio engines: async_creator -----------------------------------------------------------


class AsyncCreator:
    """An ``async_creator`` for ``sqlalchemy.ext.asyncio.create_async_engine``: each call
    logs in through the login policy with psycopg's ``AsyncConnection.connect``, with the
    parameters the URL and ``connect_args`` give (read through the psycopg dialect)."""

    def __init__(self, url: URL, login: EngineLogin, connect_args: Mapping[str, Any] | None,
                 dialect: Dialect) -> None:
        self.url = url
        self.login = login
        self.connect_args = dict(connect_args or {})
        self.dialect = dialect
        #: the engine whose pool's waiting callers learn a failed login at once (set by
        #: `create_async_engine`; an engine built by hand has its waiters time out)
        self.engine: AsyncEngine | None = None

    def __repr__(self) -> str:
        return f"<AsyncCreator {self.url!r} secret={self.login.source.secret_id!r}>"

    async def __call__(self) -> AsyncConnection[Any]:
        conninfo, kwargs = _url_params(self.dialect, self.url, self.connect_args)
        try:
            conn: AsyncConnection[Any] = await self.login.aconnect(
                AsyncConnection.connect, conninfo, kwargs
            )
        except LOGIN_FAILURES:
            if self.engine is not None:
                wake_waiting(self.engine.sync_engine.pool)
            raise
        return conn


def async_creator(
    url: str | URL = DEFAULT_URL,
    *,
    secret_id: str | None = None,
    provider: CredentialSource | None = None,
    sslmode: str | None = None,
    sslrootcert: str | None = None,
    auth_retry_budget: float | None = None,
    connect_args: Mapping[str, Any] | None = None,
) -> AsyncCreator:
    """An ``async_creator`` for an asyncio engine you build yourself::

        engine = sqlalchemy.ext.asyncio.create_async_engine(
            url, async_creator=dbcreds.sqlalchemy.async_creator(url, secret_id="prod/app"))

    SQLAlchemy applies neither the URL nor ``connect_args`` to an ``async_creator``: give
    them here (the same URL). Parameters as for `create_async_engine`.
    """
    parsed = make_url(url)
    dialect = parsed.get_dialect()()  # parses the URL as the psycopg dialect does
    return _async_creator(parsed, dialect, secret_id=secret_id, provider=provider,
                          sslmode=sslmode, sslrootcert=sslrootcert,
                          auth_retry_budget=auth_retry_budget, connect_args=connect_args)


def _async_creator(url: URL, dialect: Dialect, *, connect_args: Mapping[str, Any] | None,
                   **login_kw: Any) -> AsyncCreator:
    _, cparams = _url_params(dialect, url, connect_args)
    login = _login_for(url, cparams, **login_kw)
    return AsyncCreator(url, login, connect_args, dialect)


def create_async_engine(
    url: str | URL = DEFAULT_URL,
    *,
    secret_id: str | None = None,
    provider: CredentialSource | None = None,
    sslmode: str | None = None,
    sslrootcert: str | None = None,
    auth_retry_budget: float | None = None,
    **engine_kwargs: Any,
) -> AsyncEngine:
    """``sqlalchemy.ext.asyncio.create_async_engine(url, **engine_kwargs)`` whose connections
    log in with the credentials of a secret, without blocking the event loop (see the module
    docstring). Parameters as for `create_engine`; *engine_kwargs* must not hold
    ``async_creator`` or ``creator``.
    """
    if "async_creator" in engine_kwargs or "creator" in engine_kwargs:
        raise TypeError("dbcreds makes the connections: give no creator or async_creator")
    parsed = make_url(url)
    connect_args = engine_kwargs.get("connect_args")
    _refuse_credentials(parsed, connect_args or {})
    holder: list[AsyncCreator] = []

    async def creator() -> AsyncConnection[Any]:
        return await holder[0]()

    engine = _sa_create_async_engine(parsed, async_creator=creator, **engine_kwargs)
    # The engine's own dialect: its connect arguments carry the engine's psycopg adapters
    # (JSON serializers, hstore), as SQLAlchemy's own connect would.
    made = _async_creator(engine.url, engine.sync_engine.dialect, secret_id=secret_id,
                          provider=provider, sslmode=sslmode, sslrootcert=sslrootcert,
                          auth_retry_budget=auth_retry_budget, connect_args=connect_args)
    made.engine = engine
    holder.append(made)
    keep_while_retrying(engine.sync_engine, made.login)
    _remember(engine, made.login)
    return engine


# -- Lambda SnapStart -----------------------------------------------------------------------


def _close_engines() -> bool:
    """Before a SnapStart snapshot: every engine built here forgets its cached credentials
    and its pooled connections (sync engines close them; asyncio engines, whose connections
    need their event loop, drop them). Each engine makes new ones on its next use."""
    with _logins_lock:
        engines = list(_logins.items())
    for engine, login in engines:
        login.source.invalidate()
        engine.dispose(close=not engine.dialect.is_async)
    return bool(engines)


_registry.register_default("sqlalchemy", _close_engines)
