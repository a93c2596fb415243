"""psycopg2: `connect()` and connection pools whose every login goes through dbcreds' policy.

``pip install 'dbcreds[psycopg2]'`` (``psycopg2-binary``, which bundles libpq 17; a
``psycopg2`` built from source works too when its libpq is 16 or later).

* `connect` is ``psycopg2.connect`` with the credentials of a secret: one connection, logged in
  through the login policy (``dbcreds.login``): AWSCURRENT, one shared refresh, AWSPENDING in
  the single-user rotation window, the bounded retry behind a proxy, then
  `AuthenticationFailed` (or `UntrustedServer`) at once. ``connection_factory`` and
  ``cursor_factory`` work as for ``psycopg2.connect``.
* `ThreadedConnectionPool` and `SimpleConnectionPool` are ``psycopg2.pool``'s classes
  (``getconn``/``putconn``/``closeall``, keys, ``minconn``/``maxconn``, ``PoolError``) whose
  new connections log in that way. A login runs in the thread that called ``getconn`` (psycopg2
  pools have no background thread) *outside* the pool's lock, so a login waiting out a rotation
  window does not stop the other threads from taking and returning connections (psycopg2's
  own pool connects under its lock). When the plan gives up, ``getconn`` raises
  `AuthenticationFailed` and the slot it had reserved is free again.
* ``max_lifetime`` (optional, seconds): psycopg2's pools keep a connection forever, so a
  long-lived service keeps its pre-rotation sessions (RDS and RDS Proxy tolerate that: an
  established session survives a password change). With ``max_lifetime`` a connection older
  than that is closed when it comes back (``putconn``) or is found idle (``getconn``), and the
  next ``getconn`` logs in afresh; while a login waits out a rotation window, connections are
  kept a little longer (``PoolLogin.expired_grace``). ``check=True`` probes an idle connection
  (``select 1``) before ``getconn`` hands it out and replaces it when the probe fails (a Lambda
  container thawed after the proxy closed its idle session).
* `get_connection` / `default_pool`: a process-wide pool configured by the ``DBCREDS_*``
  environment (`dbcreds.config`), for a Lambda function: built on first use, reused across
  invocations, registered for SnapStart (closed before a snapshot, rebuilt on next use).

Without ``secret_id`` or ``provider``, `connect` and the pools read the ``DBCREDS_*``
environment as well (``Settings.from_env()``; ``login.source_for``): its host, port, dbname,
TLS settings and retry budget are the defaults. Host, port and dbname given to the call
(keyword arguments or the dsn) win over the environment's and the secret's. The TLS
parameters are always dbcreds' policy (``dbcreds.tls``): an ``sslmode``/``sslrootcert`` in
the dsn or the keyword arguments is read as the configured TLS, never sent as given; a libpq
older than 16 (which cannot refuse a cleartext password request) is refused with a
`ConfigurationError`.

Credential sources are kept per secret (and per environment): repeated `connect` calls share
one cache and one flight to Secrets Manager.
"""

from __future__ import annotations

import random
import threading
import time
import weakref
from collections.abc import Callable, Hashable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.pool
from psycopg2.extensions import connection as Connection
from psycopg2.pool import PoolError

from . import _registry
from .config import Settings
from .errors import DbcredsError
from .login import (
    LOGIN_FAILURES,
    CredentialSource,
    PoolLogin,
    again,
    configure,
    drive,
    shared_source_for,
)
from .secret import DbSecret
from .tls import TlsClient

__all__ = [
    "PSYCOPG2",
    "PoolError",
    "Psycopg2Login",
    "SimpleConnectionPool",
    "ThreadedConnectionPool",
    "close_default_pool",
    "connect",
    "default_pool",
    "get_connection",
]

#: psycopg2's own libpq (the binary wheel bundles one): what the TLS policy may demand of it
PSYCOPG2 = TlsClient("psycopg2", psycopg2.extensions.libpq_version)

#: parameters that name where to connect: given to the call, they win over the secret's
_WHERE = ("host", "port", "dbname")


class Psycopg2Login:
    """How psycopg2 connections log in: the connect parameters of a `connect` call or of a
    pool (dsn, keyword arguments, factories), and a `login.PoolLogin` over them.

    :param dsn: a libpq connection string or URI (may be empty).
    :param kwargs: ``psycopg2.connect`` keyword arguments (libpq parameters; ``database`` is
        read as ``dbname``, as psycopg2 does).
    :param secret_id, provider: where the credentials come from (at most one; neither: the
        ``DBCREDS_*`` environment).
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        secret_id: str | None = None,
        provider: CredentialSource | None = None,
        sslmode: str | None = None,
        sslrootcert: str | None = None,
        auth_retry_budget: float | None = None,
        connection_factory: Callable[..., Connection] | None = None,
        cursor_factory: Callable[..., Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        config = configure(secret_id=secret_id, provider=provider,
                           auth_retry_budget=auth_retry_budget)
        source = config.source
        params = dict(kwargs or {})
        if "database" in params:  # psycopg2's alias
            params.setdefault("dbname", params.pop("database"))
        in_dsn = psycopg2.extensions.parse_dsn(dsn) if dsn else {}
        where: dict[str, Any] = {}
        for name in _WHERE:
            value = params.pop(name, None)
            if value is None:
                value = in_dsn.get(name)
            if value is None:
                value = getattr(config, name)
            where[name] = value
        sslmode = sslmode or config.sslmode
        sslrootcert = sslrootcert or config.sslrootcert
        self.source = source
        self.dsn = dsn or ""
        self.kwargs = params
        self.connection_factory = connection_factory
        self.cursor_factory = cursor_factory
        self.credentials = PoolLogin(
            source,
            host=where["host"],
            port=where["port"],
            dbname=where["dbname"],
            sslmode=sslmode,
            sslrootcert=sslrootcert,
            kwargs=params,
            auth_retry_budget=config.auth_retry_budget,
            conninfo=self.dsn,
            tls_client=PSYCOPG2,
            driver_defaults={},  # libpq knows no prepare_threshold (psycopg 3's option)
        )

    def connect(self) -> Connection:
        """A new connection, logged in through the login policy; `AuthenticationFailed` or
        `UntrustedServer` when the plan gives up (remembered in ``credentials.failure`` until
        a login works again)."""

        def attempt(secret: DbSecret) -> Connection:
            dsn, params = self.credentials.params(self.dsn, self.kwargs, secret)
            return psycopg2.connect(
                dsn or None,
                connection_factory=self.connection_factory,
                cursor_factory=self.cursor_factory,
                **params,
            )

        try:
            conn = drive(self.credentials.policy.plan(), attempt, time.sleep)
        except LOGIN_FAILURES as exc:
            self.credentials.set_failure(exc)
            raise
        if self.credentials.failure is not None:
            self.credentials.set_failure(None)
        return conn


def connect(
    dsn: str = "",
    *,
    secret_id: str | None = None,
    provider: CredentialSource | None = None,
    sslmode: str | None = None,
    sslrootcert: str | None = None,
    auth_retry_budget: float | None = None,
    connection_factory: Callable[..., Connection] | None = None,
    cursor_factory: Callable[..., Any] | None = None,
    **kwargs: Any,
) -> Connection:
    """``psycopg2.connect`` logging in with the credentials of a secret.

    :param dsn, kwargs: as for ``psycopg2.connect`` (``host``, ``port``, ``dbname``: the RDS
        Proxy endpoint, winning over the secret's; ``connect_timeout``, ``application_name``,
        ...). The user and password are the secret's.
    :param secret_id: the secret's name or ARN (its provider is shared by every call for it).
    :param provider: instead of *secret_id*: any credential source (a `SecretProvider`, an
        ``IamAuthSource``, ...). Neither: the ``DBCREDS_*`` environment.
    :param sslmode, sslrootcert: the TLS policy (``dbcreds.tls``; default verify-full against
        the system trust store, or ``DBCREDS_SSLMODE``/``DBCREDS_SSLROOTCERT``).
    :param auth_retry_budget: seconds a login may wait out a refusal that a rotation heals
        (default 5, or ``DBCREDS_AUTH_RETRY_BUDGET``).
    :param connection_factory, cursor_factory: as for ``psycopg2.connect``.
    """
    return Psycopg2Login(
        dsn, secret_id=secret_id, provider=provider, sslmode=sslmode, sslrootcert=sslrootcert,
        auth_retry_budget=auth_retry_budget, connection_factory=connection_factory,
        cursor_factory=cursor_factory, kwargs=kwargs,
    ).connect()


# -- pools -----------------------------------------------------------------------------------


class _Reservation:
    """A slot of ``_used`` held for a connection that is logging in, outside the pool's lock.

    It counts towards ``maxconn`` as a connection does; a ``getconn`` of the same key waits for
    it. ``close()`` is what ``closeall()`` calls on it: the login's connection is then closed.
    """

    def __init__(self, key: Hashable) -> None:
        self.key = key
        self.claimed = False
        self.cancelled = False
        self._done = threading.Event()
        self._conn: Connection | None = None
        self._error: BaseException | None = None

    def close(self) -> None:
        self.cancelled = True

    def settle(self, conn: Connection | None, error: BaseException | None) -> None:
        self._conn, self._error = conn, error
        self._done.set()

    def wait(self) -> Connection:
        self._done.wait()
        if self._conn is not None:
            return self._conn
        error = self._error
        if isinstance(error, DbcredsError):
            raise again(error)
        raise PoolError("the connection of this key could not be made") from None

    def __repr__(self) -> str:
        return f"<connection logging in, key={self.key!r}>"


class _CredentialPoolMixin:
    """What both pools add to psycopg2's (mixed in before the psycopg2 class).

    psycopg2 private names used (pinned by ``tests/unit/test_psycopg2_compat.py``):
    ``_connect(key)`` (makes a connection: for ``key`` None into ``_pool``, else into
    ``_used``/``_rused``), ``_getconn(key)`` (the bookkeeping of ``getconn``, which calls
    ``_connect(key)`` when no idle connection is left and ``maxconn`` is not reached),
    ``_putconn(conn, key, close)``, ``_pool``, ``_used``, ``_rused`` and, in the threaded
    pool, ``_lock``.
    """

    minconn: int
    maxconn: int
    closed: bool
    _pool: list[Connection]
    _used: dict[Hashable, Any]
    _rused: dict[int, Hashable]

    login: Psycopg2Login
    max_lifetime: float | None
    check: bool

    def __init__(
        self,
        minconn: int,
        maxconn: int,
        *args: Any,
        secret_id: str | None = None,
        provider: CredentialSource | None = None,
        sslmode: str | None = None,
        sslrootcert: str | None = None,
        auth_retry_budget: float | None = None,
        max_lifetime: float | None = None,
        check: bool = False,
        **kwargs: Any,
    ) -> None:
        """The login side, then psycopg2's pool (*args*, *kwargs*: ``psycopg2.connect``'s,
        which are the login's: psycopg2's pool gets only the sizes)."""
        if max_lifetime is not None and not max_lifetime > 0:
            raise ValueError("max_lifetime must be a positive number of seconds, or None")
        dsn, connection_factory, cursor_factory, params = _connect_args(*args, **kwargs)
        self.login = Psycopg2Login(
            dsn, secret_id=secret_id, provider=provider, sslmode=sslmode,
            sslrootcert=sslrootcert, auth_retry_budget=auth_retry_budget,
            connection_factory=connection_factory, cursor_factory=cursor_factory,
            kwargs=params,
        )
        self.max_lifetime = max_lifetime
        self.check = check
        self._expiry: weakref.WeakKeyDictionary[Connection, float] = weakref.WeakKeyDictionary()
        pool_init: Any = super().__init__  # psycopg2's pool (the class mixed in after this one)
        pool_init(minconn, maxconn)

    # -- what dbcreds adds to psycopg2's bookkeeping ------------------------------------------

    @property
    def provider(self) -> CredentialSource:
        return self.login.source

    @property
    def credentials(self) -> PoolLogin:
        return self.login.credentials

    def _mutex(self) -> AbstractContextManager[Any]:
        return nullcontext()

    def _stamp(self, conn: Connection) -> None:
        """Note when *conn* expires (under the lock: the expiry map is shared)."""
        if self.max_lifetime is not None:
            # jittered as psycopg_pool does (-5%), so connections made together do not all
            # log in again at the same moment
            self._expiry[conn] = time.monotonic() + self.max_lifetime * (
                1 - 0.05 * random.random()
            )

    def _expired(self, conn: Connection) -> bool:
        expiry = self._expiry.get(conn)
        if expiry is None:
            return False
        return time.monotonic() > expiry + (self.credentials.expired_grace() or 0.0)

    def _connect(self, key: Hashable | None = None) -> Any:
        if key is None:  # the constructor's minconn connections (no other thread yet)
            conn = self.login.connect()
            self._stamp(conn)
            self._pool.append(conn)
            return conn
        # From _getconn, under the lock: reserve the slot; getconn logs in outside the lock.
        reservation = _Reservation(key)
        self._used[key] = reservation
        self._rused[id(reservation)] = key
        return reservation

    def _forget(self, reservation: _Reservation) -> None:
        if self._used.get(reservation.key) is reservation:
            del self._used[reservation.key]
        self._rused.pop(id(reservation), None)

    def _getconn(self, key: Hashable | None = None) -> Any:  # psycopg2's, for typing
        return super()._getconn(key)  # type: ignore[misc]

    def _putconn(self, conn: Any, key: Hashable | None = None, close: bool = False) -> None:
        super()._putconn(conn, key, close)  # type: ignore[misc]

    def getconn(self, key: Hashable | None = None) -> Connection:
        """As psycopg2's ``getconn``: a connection (the same one for the same *key*), an idle
        one if any, else a new one logged in through the login policy (outside the lock).

        Raises `AuthenticationFailed`/`UntrustedServer` when the login plan gives up, and
        psycopg2's ``PoolError`` when the pool is closed or exhausted.
        """
        while True:
            with self._mutex():
                known = key is not None and key in self._used
                got = self._getconn(key)
                owner = False
                if isinstance(got, _Reservation):
                    owner = not got.claimed
                    got.claimed = True
                elif not known and self.max_lifetime is not None and self._expired(got):
                    self._putconn(got, self._rused[id(got)], close=True)  # retire, take another
                    continue
            if isinstance(got, _Reservation):
                return self._log_in(got) if owner else got.wait()
            if known or not self.check or _alive(got):
                conn: Connection = got
                return conn
            with self._mutex():
                if not self.closed and self._rused.get(id(got)) is not None:
                    self._putconn(got, self._rused[id(got)], close=True)

    def _log_in(self, reservation: _Reservation) -> Connection:
        try:
            conn = self.login.connect()
        except BaseException as exc:
            with self._mutex():
                self._forget(reservation)
            reservation.settle(None, exc)
            raise
        with self._mutex():
            if self.closed or reservation.cancelled:
                self._forget(reservation)
                conn.close()
                reservation.settle(None, PoolError("connection pool is closed"))
                raise PoolError("connection pool is closed")
            self._forget(reservation)
            self._used[reservation.key] = conn
            self._rused[id(conn)] = reservation.key
            self._stamp(conn)
        reservation.settle(conn, None)
        return conn

    def putconn(
        self, conn: Connection | None = None, key: Hashable | None = None, close: bool = False
    ) -> None:
        """As psycopg2's ``putconn``; a connection past ``max_lifetime`` is closed."""
        if conn is not None and not close and self.max_lifetime is not None:
            close = self._expired(conn)
        super().putconn(conn, key, close)  # type: ignore[misc]

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} secret={self.provider.secret_id!r} "
            f"minconn={self.minconn} maxconn={self.maxconn}"
            f"{' closed' if self.closed else ''}>"
        )


def _connect_args(
    dsn: str | None = None,
    connection_factory: Callable[..., Connection] | None = None,
    cursor_factory: Callable[..., Any] | None = None,
    **kwargs: Any,
) -> tuple[str | None, Callable[..., Connection] | None, Callable[..., Any] | None,
           dict[str, Any]]:
    """``psycopg2.connect``'s arguments, as psycopg2's pools take them (``*args, **kwargs``)."""
    return dsn, connection_factory, cursor_factory, kwargs


def _alive(conn: Connection) -> bool:
    """Probe an idle connection with ``select 1`` (in autocommit: no transaction left open)."""
    if conn.closed:
        return False
    try:
        autocommit = conn.autocommit
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("select 1")
        finally:
            conn.autocommit = autocommit
    except psycopg2.Error:
        return False
    return True


class ThreadedConnectionPool(_CredentialPoolMixin, psycopg2.pool.ThreadedConnectionPool):
    """``psycopg2.pool.ThreadedConnectionPool`` whose new connections log in with the
    credentials of a secret (see the module docstring).

    ``ThreadedConnectionPool(minconn, maxconn, dsn, *, secret_id=..., host=..., ...)``: the
    positional and keyword arguments after *maxconn* are ``psycopg2.connect``'s, as for
    psycopg2's pool (``host``/``port``/``dbname`` win over the secret's).

    :param secret_id, provider, sslmode, sslrootcert, auth_retry_budget: as for `connect`.
    :param max_lifetime: seconds a connection is used before it is replaced (None, the
        default: forever, as psycopg2's pool).
    :param check: probe an idle connection before handing it out (default False, as psycopg2).
    """

    _lock: threading.Lock

    def _mutex(self) -> AbstractContextManager[Any]:
        return self._lock


class SimpleConnectionPool(_CredentialPoolMixin, psycopg2.pool.SimpleConnectionPool):
    """``psycopg2.pool.SimpleConnectionPool`` (one thread only) whose new connections log in
    with the credentials of a secret; parameters as for `ThreadedConnectionPool`."""


# -- the default pool of get_connection() ---------------------------------------------------

_default: ThreadedConnectionPool | None = None
_default_lock = threading.Lock()


def build_pool(settings: Settings) -> ThreadedConnectionPool:
    """The pool *settings* describe (the default pool of `get_connection`)."""
    return ThreadedConnectionPool(
        settings.pool_min_size, settings.pool_max_size,
        provider=shared_source_for(settings),
        host=settings.host, port=settings.port, dbname=settings.dbname,
        sslmode=settings.sslmode, sslrootcert=settings.sslrootcert,
        auth_retry_budget=settings.auth_retry_budget,
        max_lifetime=settings.pool_max_lifetime, check=settings.pool_check,
    )


def default_pool() -> ThreadedConnectionPool:
    """The process-wide pool configured by ``DBCREDS_*`` (`dbcreds.config`), made on first
    use (its ``DBCREDS_POOL_MIN_SIZE`` connections log in then) and reused afterwards (across
    Lambda invocations)."""
    global _default
    pool = _default
    if pool is not None:
        return pool
    with _default_lock:
        if _default is None:
            _default = build_pool(Settings.from_env())
        pool = _default
    from . import snapstart

    snapstart.install()  # under Lambda SnapStart: no secret or connection in the snapshot
    return pool


@contextmanager
def get_connection(key: Hashable | None = None) -> Iterator[Connection]:
    """``with get_connection() as conn:`` a connection of the default pool, in a transaction
    (``with conn:``: committed when the block ends, rolled back on an exception), given back
    to the pool afterwards."""
    pool = default_pool()
    conn = pool.getconn(key)
    try:
        with conn:
            yield conn
    finally:
        pool.putconn(conn, key)


def close_default_pool() -> None:
    """Close the default pool (``closeall``); the next `get_connection` builds a new one."""
    _close_defaults()


def _close_defaults() -> bool:
    """Close and forget the default pool; whether there was one (the registry's ``close``,
    before a SnapStart snapshot: the shared sources forget their secrets through
    ``snapstart.register``, see ``login.shared_source``)."""
    global _default
    with _default_lock:
        pool, _default = _default, None
    if pool is not None and not pool.closed:
        pool.closeall()
    return pool is not None


_registry.register_default("psycopg2", _close_defaults)
