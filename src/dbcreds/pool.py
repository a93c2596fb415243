"""CredentialPool: a psycopg_pool.ConnectionPool whose every new connection asks the provider.

New connections are made by the pool's worker threads through ``connection_class.connect``;
dbcreds gives the pool a connection class whose ``connect`` runs the login policy
(``login.py``): current secret, refresh, AWSPENDING, bounded retry. Only new connections ask:
connections already in the pool stay open through a rotation (PostgreSQL and RDS Proxy keep
established sessions when a password changes).

A plain ConnectionPool never shows its callers an authentication error: the worker logs it and
retries with backoff while callers wait ``timeout`` (30 s) for a PoolTimeout (DESIGN.md). So
when the login policy gives up, the pool fails every waiting caller at once with
`AuthenticationFailed`, and raises it to new callers until a login works again (or psycopg_pool
gives up reconnecting, after which the next caller triggers a fresh attempt). Errors that are
not refusals (database down, network) keep psycopg_pool's behaviour.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from psycopg import Connection
from psycopg_pool import ConnectionPool

from .config import Settings
from .errors import AuthenticationFailed
from .login import LoginPolicy, drive
from .provider import SecretProvider
from .secret import DbSecret

__all__ = ["CredentialPool", "close_default_pool", "default_pool", "get_connection"]

logger = logging.getLogger("dbcreds.pool")


class CredentialPool(ConnectionPool[Connection[Any]]):
    """A connection pool that logs in with the credentials of a Secrets Manager secret.

    :param provider: where the credentials come from.
    :param host, port, dbname: override the secret's (e.g. the RDS Proxy endpoint).
    :param sslmode: libpq ``sslmode`` (RDS Proxy requires TLS: use ``require`` or
        ``verify-full``).
    :param auth_retry_budget: seconds a new connection may spend retrying a refusal that a
        rotation or a proxy heals by itself (see ``login.py``).
    :param pool_kwargs: passed to `psycopg_pool.ConnectionPool` (``min_size``, ``max_size``,
        ``timeout``, ``max_lifetime``, ``check``, ``kwargs`` for psycopg.connect, ...).
        ``prepare_threshold`` defaults to None: PgBouncer in transaction mode and RDS Proxy
        break (or pin on) prepared statements.
    """

    def __init__(
        self,
        provider: SecretProvider,
        *,
        host: str | None = None,
        port: int | None = None,
        dbname: str | None = None,
        sslmode: str | None = None,
        auth_retry_budget: float = 5.0,
        conninfo: str = "",
        kwargs: dict[str, Any] | None = None,
        connection_class: type[Connection[Any]] = Connection,
        open: bool = True,
        **pool_kwargs: Any,
    ) -> None:
        self.provider = provider
        self.login = LoginPolicy(provider, budget=auth_retry_budget)
        self._overrides = {
            k: v for k, v in (("host", host), ("port", port), ("dbname", dbname)) if v is not None
        }
        connect_kwargs: dict[str, Any] = {"prepare_threshold": None}
        if sslmode:
            connect_kwargs["sslmode"] = sslmode
        connect_kwargs.update(kwargs or {})
        self._auth_failure: AuthenticationFailed | None = None
        self._failure_lock = threading.Lock()
        pool_kwargs.setdefault("name", f"dbcreds:{provider.secret_id}")
        super().__init__(
            conninfo,
            connection_class=_credential_connection_class(connection_class, self),
            kwargs=connect_kwargs,
            open=open,
            **pool_kwargs,
        )

    def __repr__(self) -> str:
        return f"<CredentialPool {self.name!r} secret={self.provider.secret_id!r}>"

    # -- callers --------------------------------------------------------------------------

    def getconn(self, timeout: float | None = None) -> Connection[Any]:
        failure = self._auth_failure
        if failure is not None:
            raise AuthenticationFailed(failure.secret_id, failure.detail)
        return super().getconn(timeout)

    def reconnect_failed(self) -> None:
        # psycopg_pool gave up reconnecting: let the next caller trigger a fresh attempt.
        self._set_failure(None)
        super().reconnect_failed()

    def close(self, timeout: float = 5.0) -> None:
        """Close the pool (idempotent)."""
        if not self.closed:
            super().close(timeout)

    def get_stats(self) -> dict[str, int]:
        stats = super().get_stats()
        stats["auth_failed"] = int(self._auth_failure is not None)
        return stats

    # -- the connect path (runs in the pool's worker threads) --------------------------

    def _login(self, connect: Any, conninfo: str, kwargs: dict[str, Any]) -> Connection[Any]:
        def attempt(secret: DbSecret) -> Connection[Any]:
            params = {**kwargs, **secret.connect_kwargs(), **self._overrides}
            conn: Connection[Any] = connect(conninfo, **params)
            return conn

        try:
            conn = drive(self.login.plan(), attempt, time.sleep)
        except AuthenticationFailed as exc:
            logger.error("%s", exc)
            self._set_failure(exc)
            raise
        self._set_failure(None)
        return conn

    def _set_failure(self, failure: AuthenticationFailed | None) -> None:
        with self._failure_lock:
            self._auth_failure = failure
        if failure is None:
            return
        # Fail the callers already waiting for a connection, as close() does with PoolClosed
        # (psycopg_pool's WaitingClient.fail); otherwise they wait for `timeout`.
        with self._lock:
            waiting = list(self._waiting)
            self._waiting.clear()
        for client in waiting:
            client.fail(AuthenticationFailed(failure.secret_id, failure.detail))


def _credential_connection_class(
    base: type[Connection[Any]], pool: CredentialPool
) -> type[Connection[Any]]:
    """A subclass of *base* whose ``connect`` logs in through *pool*'s login policy."""

    class CredentialConnection(base):  # type: ignore[valid-type,misc]
        @classmethod
        def connect(cls, conninfo: str = "", **kwargs: Any) -> Any:
            parent = super().connect
            return pool._login(parent, conninfo, kwargs)

    CredentialConnection.__qualname__ = f"CredentialConnection[{base.__qualname__}]"
    return CredentialConnection


# -- the default pool of get_connection() -------------------------------------------------

_default: CredentialPool | None = None
_default_lock = threading.Lock()


def default_pool() -> CredentialPool:
    """The process-wide pool configured by environment variables, created on first use.

    Lambda reuses the process between invocations, so the pool (and its connections, and the
    cached secret) outlive the invocation that made them.
    """
    global _default
    pool = _default
    if pool is not None:
        return pool
    with _default_lock:
        if _default is None:
            _default = Settings.from_env().build_pool()
        return _default


def get_connection(timeout: float | None = None) -> Any:
    """``with get_connection() as conn:`` a connection from the default pool."""
    return default_pool().connection(timeout)


def close_default_pool() -> None:
    """Close and forget the default pool (the next `get_connection` builds a new one)."""
    global _default
    with _default_lock:
        pool, _default = _default, None
    if pool is not None:
        pool.close()

