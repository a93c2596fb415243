"""CredentialPool: a psycopg_pool.ConnectionPool whose every new connection asks the provider.

New connections are made by the pool's worker threads through ``connection_class.connect``;
dbcreds gives the pool a connection class whose ``connect`` runs the login policy
(``login.py``): current secret, refresh, AWSPENDING, bounded retry. Only new connections ask:
connections already in the pool stay open through a rotation (PostgreSQL and RDS Proxy keep
established sessions when a password changes).

A plain ConnectionPool never shows its callers an authentication error: the worker logs it and
retries with backoff while callers wait ``timeout`` (30 s) for a PoolTimeout. So
when the login policy gives up, the pool fails every waiting caller at once with
`AuthenticationFailed`, and raises it to new callers until a login works again (or psycopg_pool
gives up reconnecting, after which the next caller triggers a fresh attempt). Errors that are
not refusals (database down, network) keep psycopg_pool's behaviour.

What this pool shares with ``aio.AsyncCredentialPool`` (connect parameters, TLS policy, the
failure told to callers, name, statistics) is in ``login.py`` (`PoolLogin`,
`CredentialPoolMixin`); what it needs of psycopg_pool's internals is in ``_pool_compat.py``.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, cast

from psycopg import Connection, OperationalError

from . import _registry
from ._pool_compat import CT, HookedConnectionPool, fail_waiting
from .config import Settings
from .errors import DbcredsError
from .login import (
    LOGIN_FAILURES,
    CredentialPoolMixin,
    CredentialSource,
    PoolLogin,
    again,
    drive,
    source_for,
)
from .secret import DbSecret

__all__ = [
    "LOGIN_FAILURES", "CredentialPool", "PoolLogin", "build_pool", "close_default_pool",
    "default_pool", "get_connection",
]



class CredentialPool(CredentialPoolMixin, HookedConnectionPool[CT]):
    """A connection pool that logs in with the credentials of a Secrets Manager secret.

    A `psycopg_pool.ConnectionPool` in every documented respect (its parameters, methods,
    statistics, ``open`` default and warnings, generic in the connection type:
    ``CredentialPool[MyConnection](..., connection_class=MyConnection)``, garbage-collected
    when dropped unclosed), plus:

    * each new connection logs in through the login policy (``login.py``), and when it gives
      up every waiting and new caller gets `AuthenticationFailed` (or `UntrustedServer`) at
      once instead of a `PoolTimeout`;
    * ``get_stats()``/``pop_stats()`` add ``auth_failed`` (1 while callers are told so);
    * a connection past ``max_lifetime`` is kept a second longer while a login waits out a
      rotation window;
    * the default name is ``dbcreds:<secret>:<n>`` (psycopg_pool's is ``pool-<n>``).

    Deliberate differences: ``kwargs`` get ``prepare_threshold=None`` unless they set it
    (PgBouncer in transaction mode and RDS Proxy break, or pin on, prepared statements); the
    TLS parameters are always dbcreds' policy (``sslmode`` etc. in ``conninfo``/``kwargs`` are
    read as the configured TLS, never sent as given: see ``dbcreds.tls``).

    :param provider: where the credentials come from: a `SecretProvider`, an
        ``iam.IamAuthSource`` (RDS IAM auth tokens), or any ``login.CredentialSource``.
    :param host, port, dbname: override the secret's (e.g. the RDS Proxy endpoint).
    :param sslmode: ``verify-full`` (the default), ``verify-ca``, ``require`` (TLS without a
        CA: SCRAM with channel binding is then required) or ``disable`` (local development
        only; logged as a warning). See ``dbcreds.tls``.
    :param sslrootcert: the CA bundle that signs the server's certificate (the RDS CA bundle
        for a database endpoint), or ``system`` (the default: the system trust store, which
        serves RDS Proxy).
    :param auth_retry_budget: seconds a new connection may spend retrying a refusal that a
        rotation or a proxy heals by itself (see ``login.py``).
    :param conninfo, kwargs: as for psycopg_pool: a string/dict, or a callable called at each
        connection attempt (then the TLS settings they name, and an IAM source's check of the
        endpoint, apply at each attempt).
    :param open: as for psycopg_pool 3.3: None (the default) opens the pool now and warns
        (DeprecationWarning) at its first use unless it is used as a context manager
        (``with CredentialPool(...) as pool``); pass True or False to say which.
    :param pool_kwargs: passed to `psycopg_pool.ConnectionPool` (``min_size``, ``max_size``,
        ``timeout``, ``max_lifetime``, ``check``, ``name``, ...).
    """

    def __init__(
        self,
        provider: CredentialSource,
        *,
        host: str | None = None,
        port: int | None = None,
        dbname: str | None = None,
        sslmode: str | None = None,
        sslrootcert: str | None = None,
        auth_retry_budget: float = 5.0,
        conninfo: str | Callable[[], str] = "",
        kwargs: dict[str, Any] | Callable[[], dict[str, Any]] | None = None,
        connection_class: type[CT] = cast("type[CT]", Connection),  # noqa: B008
        open: bool | None = None,
        name: str | None = None,
        **pool_kwargs: Any,
    ) -> None:
        name = self._setup_login(
            provider, name=name, conninfo=conninfo, kwargs=kwargs, host=host, port=port,
            dbname=dbname, sslmode=sslmode, sslrootcert=sslrootcert,
            auth_retry_budget=auth_retry_budget,
        )
        super().__init__(
            conninfo,
            connection_class=_credential_connection_class(connection_class, self),
            kwargs=kwargs,  # as given (psycopg_pool's attribute): read at each attempt
            open=open,
            name=name,
            **pool_kwargs,
        )

    # -- callers --------------------------------------------------------------------------

    def getconn(self, timeout: float | None = None) -> CT:
        self.credentials.raise_if_failed()
        return super().getconn(timeout)

    def reconnect_failed(self) -> None:
        # psycopg_pool gave up reconnecting: let the next caller trigger a fresh attempt.
        self.credentials.set_failure(None)
        super().reconnect_failed()

    # -- the connect path (runs in the pool's worker threads) --------------------------

    def _login(self, connect: Callable[..., CT], conninfo: str, kwargs: dict[str, Any]) -> CT:
        def attempt(secret: DbSecret) -> CT:
            info, params = self.credentials.params(conninfo, kwargs, secret)
            return connect(info, **params)

        try:
            conn = drive(self.login.plan(), attempt, time.sleep)
        except LOGIN_FAILURES as exc:
            self._set_failure(exc)
            raise
        self.credentials.set_failure(None)
        return conn

    def _set_failure(self, failure: DbcredsError) -> None:
        self.credentials.set_failure(failure)
        # Fail the callers already waiting for a connection, as close() does with PoolClosed;
        # otherwise they wait for `timeout`.
        fail_waiting(self, lambda: again(failure))


def _credential_connection_class(base: type[CT], pool: CredentialPool[CT]) -> type[CT]:
    """A subclass of *base* whose ``connect`` logs in through *pool*'s login policy.

    It holds the pool weakly: a pool dropped without ``close()`` is garbage-collected (and its
    threads stopped) as a plain ConnectionPool is, though its connections hold their class.
    """
    pool_ref = weakref.ref(pool)

    class CredentialConnection(base):  # type: ignore[valid-type,misc]
        @classmethod
        def connect(cls, conninfo: str = "", **kwargs: Any) -> Any:
            parent = super().connect
            owner = pool_ref()
            if owner is None:
                raise OperationalError("the connection's pool is gone")
            return owner._login(parent, conninfo, kwargs)

    CredentialConnection.__qualname__ = f"CredentialConnection[{base.__qualname__}]"
    return cast("type[CT]", CredentialConnection)


# -- the default pool of get_connection() -------------------------------------------------


def build_pool(settings: Settings, *, open: bool = True,
               source: CredentialSource | None = None) -> CredentialPool:
    """The pool *settings* describe (the default pool of `get_connection`), opened; *source*:
    the credential source to use (`dbcreds.prefetch` made it), else a new one."""
    extra: dict[str, Any] = {}
    if settings.pool_check:
        extra["check"] = CredentialPool.check_connection
    if source is None:
        source = source_for(settings)
    return CredentialPool(source, **settings.pool_options(), open=open, **extra)


_default: CredentialPool | None = None
_default_lock = threading.Lock()


def default_pool() -> CredentialPool:
    """The process-wide pool configured by environment variables, created on first use.

    Lambda reuses the process between invocations, so the pool (and its connections, and the
    cached secret) outlive the invocation that made them.
    """
    return _default_pool(None)


def _default_pool(prefetched: tuple[Settings, CredentialSource] | None) -> CredentialPool:
    """`default_pool`; *prefetched*: the settings and source `dbcreds.prefetch` made (the
    source is used when the settings are still those of the environment)."""
    global _default
    pool = _default
    if pool is not None:
        return pool
    with _default_lock:
        if _default is not None:
            return _default
        settings = Settings.from_env()
        source = prefetched[1] if prefetched and prefetched[0] == settings else None
        _default = pool = build_pool(settings, source=source)
    from . import snapstart

    snapstart.install()  # under Lambda SnapStart: no secret or connection in the snapshot
    return pool


def get_connection(timeout: float | None = None) -> Any:
    """``with get_connection() as conn:`` a connection from the default pool."""
    return default_pool().connection(timeout)


def close_default_pool() -> None:
    """Close and forget the default pool (the next `get_connection` builds a new one)."""
    _close_default()


def _close_default() -> bool:
    """Drop the default pool's cached credentials, close and forget it; whether there was one
    (the registry's ``close``, before a SnapStart snapshot)."""
    global _default
    with _default_lock:
        pool, _default = _default, None
    if pool is None:
        return False
    try:
        pool.provider.invalidate()
    finally:
        pool.close()
    return True


_registry.register_default("psycopg_pool", _close_default, default_pool)
