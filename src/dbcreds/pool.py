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

`PoolLogin` is what this pool and ``aio.AsyncCredentialPool`` share around the login policy
(connect parameters, the failure told to callers); only the I/O differs between them.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from psycopg import Connection
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from ._registry import register_default
from .config import Settings
from .errors import AuthenticationFailed, ConfigurationError, DbcredsError, UntrustedServer
from .login import ConnectParamsPolicy, CredentialSource, LoginPolicy, drive
from .secret import DbSecret
from .tls import TlsPolicy, check_hosts, login_tls, tls_params_of

__all__ = [
    "LOGIN_FAILURES", "CredentialPool", "PoolLogin", "close_default_pool", "default_pool",
    "get_connection",
]

logger = logging.getLogger("dbcreds.pool")

#: seconds an expired connection is kept while a login waits out a rotation window
_LIFETIME_GRACE = 1.0


class PoolLogin:
    """The login side of a credential pool, shared by the sync and the asyncio pools.

    Holds the `LoginPolicy` and the TLS policy (``dbcreds.tls``), builds the psycopg
    parameters of each attempt (pool kwargs, then the credentials, then the host/port/dbname
    overrides, then the TLS policy, then the source's own word: see `ConnectParamsPolicy`),
    and remembers the failure (`AuthenticationFailed`, `UntrustedServer`) that callers are
    told at once until a login works again.
    """

    def __init__(
        self,
        source: CredentialSource,
        *,
        host: str | None,
        port: int | None,
        dbname: str | None,
        sslmode: str | None,
        kwargs: dict[str, Any] | None,
        auth_retry_budget: float,
        conninfo: str = "",
        sslrootcert: str | None = None,
    ) -> None:
        self.source = source
        self.policy = LoginPolicy(source, budget=auth_retry_budget)
        self.overrides = {
            k: v for k, v in (("host", host), ("port", port), ("dbname", dbname)) if v is not None
        }
        connect_kwargs: dict[str, Any] = {"prepare_threshold": None}
        connect_kwargs.update(kwargs or {})
        self.tls = self._tls_policy(conninfo, connect_kwargs, sslmode, sslrootcert)
        self.connect_kwargs = connect_kwargs
        self._policy = source if isinstance(source, ConnectParamsPolicy) else None
        if self._policy is not None:  # refuse a configuration the source refuses, now
            self._policy.connect_params(
                {**conninfo_to_dict(conninfo), **connect_kwargs, **self.overrides,
                 **self.tls.params}
            )
        self._failure: DbcredsError | None = None
        self._lock = threading.Lock()
        self.announce()

    def _tls_policy(
        self,
        conninfo: str,
        kwargs: dict[str, Any],
        sslmode: str | None,
        sslrootcert: str | None,
    ) -> TlsPolicy:
        """The one TLS policy of this pool's logins (``dbcreds.tls``).

        ``sslmode``/``sslrootcert`` may come from the parameters, the ``kwargs`` or the
        conninfo (in that order of precedence).
        """
        named = {**conninfo_to_dict(conninfo), **kwargs}
        mode, root = tls_params_of(named)
        mode = sslmode or mode
        root = sslrootcert or root
        return login_tls(
            sslmode=mode,
            sslrootcert=root,
            token=getattr(self.source, "credential_kind", "password") == "token",
            source="the pool's sslmode",
            what=f"the pool of {self.source.secret_id!r}",
        )

    def announce(self) -> None:
        """Log how this pool logs in; a downgrade of TLS as a warning (at every pool start)."""
        if self.tls.downgrade is not None:
            logger.warning("pool of %r: %s", self.source.secret_id, self.tls.downgrade)
        else:
            logger.debug("pool of %r logs in with TLS %s", self.source.secret_id,
                         self.tls.describe())

    def params(
        self, conninfo: str, kwargs: dict[str, Any], secret: DbSecret
    ) -> tuple[str, dict[str, Any]]:
        """(conninfo, kwargs) for ``connect`` logging in with *secret*."""
        params = {**kwargs, **secret.connect_kwargs(), **self.overrides, **self.tls.params}
        try:
            check_hosts({**conninfo_to_dict(conninfo), **params}, self.tls)
        except ConfigurationError as exc:  # configuration: every caller is told at once
            raise UntrustedServer(self.source.secret_id, f"host {params.get('host')!r}",
                                  "a Unix-domain socket", str(exc)) from None
        if self._policy is None:
            return conninfo, params
        # The source sees everything, conninfo included (psycopg lets kwargs win over it).
        return "", self._policy.connect_params({**conninfo_to_dict(conninfo), **params})

    @property
    def failure(self) -> DbcredsError | None:
        return self._failure

    def raise_if_failed(self) -> None:
        """Raise (a fresh copy of) the failure of the last login, if it failed."""
        failure = self._failure
        if failure is not None:
            raise _again(failure)

    def keep_through_window(self, conn: Any) -> None:
        """Called as a connection comes back to its pool.

        psycopg_pool retires a connection past ``max_lifetime`` when it comes back, and
        callers wait for its replacement (break-before-make). While a login waits out a
        rotation window (``policy.retrying``) that replacement cannot log in yet: keep the
        old connection a little longer instead. ``_expire_at`` is psycopg_pool's (3.x) own
        expiry stamp.
        """
        if self.policy.retrying:
            now = time.monotonic()
            if getattr(conn, "_expire_at", now + 1) <= now:
                conn._expire_at = now + _LIFETIME_GRACE

    def set_failure(self, failure: DbcredsError | None) -> None:
        if failure is not None:
            logger.error("%s", failure)
        with self._lock:
            self._failure = failure


#: What ends a login plan for every caller at once (configuration, not bad luck).
LOGIN_FAILURES = (AuthenticationFailed, UntrustedServer)


def _again(failure: DbcredsError) -> DbcredsError:
    again = getattr(failure, "again", None)
    return again() if again is not None else failure


class CredentialPool(ConnectionPool[Connection[Any]]):
    """A connection pool that logs in with the credentials of a Secrets Manager secret.

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
    :param pool_kwargs: passed to `psycopg_pool.ConnectionPool` (``min_size``, ``max_size``,
        ``timeout``, ``max_lifetime``, ``check``, ``kwargs`` for psycopg.connect, ...).
        ``prepare_threshold`` defaults to None: PgBouncer in transaction mode and RDS Proxy
        break (or pin on) prepared statements.
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
        conninfo: str = "",
        kwargs: dict[str, Any] | None = None,
        connection_class: type[Connection[Any]] = Connection,
        open: bool = True,
        **pool_kwargs: Any,
    ) -> None:
        self.provider = provider
        self.credentials = PoolLogin(
            provider, host=host, port=port, dbname=dbname, sslmode=sslmode, kwargs=kwargs,
            auth_retry_budget=auth_retry_budget, conninfo=conninfo, sslrootcert=sslrootcert,
        )
        self.login = self.credentials.policy
        pool_kwargs.setdefault("name", f"dbcreds:{provider.secret_id}")
        super().__init__(
            conninfo,
            connection_class=_credential_connection_class(connection_class, self),
            kwargs=self.credentials.connect_kwargs,
            open=open,
            **pool_kwargs,
        )

    def __repr__(self) -> str:
        return f"<CredentialPool {self.name!r} secret={self.provider.secret_id!r}>"

    # -- callers --------------------------------------------------------------------------

    def getconn(self, timeout: float | None = None) -> Connection[Any]:
        self.credentials.raise_if_failed()
        return super().getconn(timeout)

    def reconnect_failed(self) -> None:
        # psycopg_pool gave up reconnecting: let the next caller trigger a fresh attempt.
        self.credentials.set_failure(None)
        super().reconnect_failed()

    def close(self, timeout: float = 5.0) -> None:
        """Close the pool (idempotent)."""
        if not self.closed:
            super().close(timeout)

    def get_stats(self) -> dict[str, int]:
        stats = super().get_stats()
        stats["auth_failed"] = int(self.credentials.failure is not None)
        return stats

    # -- connection lifetime ---------------------------------------------------------------

    def _return_connection(self, conn: Connection[Any], from_getconn: bool) -> None:
        self.credentials.keep_through_window(conn)
        super()._return_connection(conn, from_getconn)

    # -- the connect path (runs in the pool's worker threads) --------------------------

    def _login(self, connect: Any, conninfo: str, kwargs: dict[str, Any]) -> Connection[Any]:
        def attempt(secret: DbSecret) -> Connection[Any]:
            info, params = self.credentials.params(conninfo, kwargs, secret)
            conn: Connection[Any] = connect(info, **params)
            return conn

        try:
            conn = drive(self.login.plan(), attempt, time.sleep)
        except LOGIN_FAILURES as exc:
            self._set_failure(exc)
            raise
        self.credentials.set_failure(None)
        return conn

    def _set_failure(self, failure: DbcredsError) -> None:
        self.credentials.set_failure(failure)
        # Fail the callers already waiting for a connection, as close() does with PoolClosed
        # (psycopg_pool's WaitingClient.fail); otherwise they wait for `timeout`.
        with self._lock:
            waiting = list(self._waiting)
            self._waiting.clear()
        for client in waiting:
            client.fail(_again(failure))


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
        if _default is not None:
            return _default
        _default = pool = Settings.from_env().build_pool()
    from . import snapstart

    snapstart.install()  # under Lambda SnapStart: no secret or connection in the snapshot
    return pool


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


def _close_default_for_snapshot() -> bool:
    pool = _default
    if pool is None:
        return False
    pool.provider.invalidate()
    close_default_pool()
    return True


register_default("psycopg_pool", _close_default_for_snapshot, default_pool)  # SnapStart
