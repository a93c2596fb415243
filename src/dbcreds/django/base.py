"""Django's PostgreSQL backend (psycopg 3) logging in with a Secrets Manager secret.

``DATABASES = {"default": {"ENGINE": "dbcreds.django", "NAME": ..., "HOST": ..., "OPTIONS":
{"secret_id": "prod/app"}}}``: Django's own ``django.db.backends.postgresql`` in every
respect (this `DatabaseWrapper` subclasses it), except where the credentials come from and
how a login is made:

* **Credentials.** ``OPTIONS["secret_id"]`` names the secret (``OPTIONS["secret_ttl"]``: its
  cache TTL), or ``OPTIONS["credential_source"]`` is any ``login.CredentialSource`` (a
  ``SecretProvider(fetcher=...)`` over the Lambda extension, an ``iam.IamAuthSource``); with
  neither, the ``DBCREDS_*`` environment (``config.Settings.from_env``,
  ``login.source_for``). USER and PASSWORD come from the secret: either in the settings is
  refused (`ImproperlyConfigured`), since it would be ignored.
* **Endpoint.** HOST, PORT and NAME are configuration (the RDS Proxy endpoint) and win over
  the secret's; empty ones fall back to ``DBCREDS_HOST``/``DBCREDS_PORT``/``DBCREDS_DBNAME``
  when the environment names the source, then to the secret's.
* **Every new connection logs in through the login policy** (``login.py``: refresh once for
  everyone, AWSPENDING in the single-user window, bounded retry behind a proxy):
  - without a pool (``CONN_MAX_AGE`` 0, N or None), Django's ``get_new_connection`` calls
    ``self.Database.connect(**params)``; here ``self.Database`` is psycopg with a ``connect``
    that drives the plan through one `PoolLogin` per (source, endpoint) for the process;
  - with ``OPTIONS["pool"]`` (True or a dict of psycopg_pool options), Django's pool is a
    `dbcreds.pool.CredentialPool` built with every option Django gives
    ``psycopg_pool.ConnectionPool`` (``kwargs``, ``open=False``, ``configure``, ``check``
    from ``CONN_HEALTH_CHECKS``, the dict), so the pool's fast failure and its rotation
    handling (expired connections kept while a login waits out a rotation) apply.
* **Failure.** When the plan gives up, `AuthenticationFailed` (or `UntrustedServer`) reaches
  the code making the ORM query at once: Django's ``DatabaseErrorWrapper`` wraps only the
  driver's DB-API errors, so dbcreds' errors pass through unchanged. Without a pool, callers
  within a second of a failed login are told it without a new attempt (no GetSecretValue per
  request while a secret is wrong); then the next one tries again.
* **TLS.** dbcreds' policy (``dbcreds.tls``): verify-full by default; ``sslmode`` and
  ``sslrootcert`` in OPTIONS (or ``DBCREDS_SSLMODE``/``DBCREDS_SSLROOTCERT``) are read as the
  configured TLS, never sent as given.

The OPTIONS dbcreds reads (`OWN_OPTIONS`) are taken out before psycopg sees the rest; every
other OPTION (``pool``, ``isolation_level``, ``assume_role``, ``server_side_binding``,
``prepare_threshold``, ``connect_timeout``, ...) keeps its Django meaning.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.db.backends.base.base import NO_DB_ALIAS
from django.db.backends.postgresql import base as postgresql

from .. import _registry
from ..errors import DbcredsError
from ..login import (
    LOGIN_FAILURES,
    CredentialSource,
    Done,
    Plan,
    PoolLogin,
    Wait,
    advance,
    again,
    configure,
    drive,
)
from ..pool import CredentialPool
from ..secret import DbSecret

__all__ = ["OWN_OPTIONS", "CheckedConnection", "DatabaseWrapper"]

#: the OPTIONS dbcreds reads; taken out before the rest goes to psycopg (as Django does with
#: ``pool``, ``isolation_level``, ``assume_role``)
OWN_OPTIONS = ("secret_id", "secret_ttl", "credential_source", "auth_retry_budget")
C = TypeVar("C")

#: the connect parameters that are configuration and win over the secret's
_ENDPOINT = ("host", "port", "dbname")
#: seconds a failed login (no pool) is told to new callers before the next one tries again
_FAILURE_HOLD = 1.0
#: seconds an aged connection serves on before its replacement's login is tried again
_RENEW_RETRY = 0.5


@dataclass(frozen=True)
class _Credentials:
    """Where one database alias's credentials come from (resolved from its settings)."""

    source: CredentialSource
    auth_retry_budget: float
    #: connect parameters from ``DBCREDS_*`` (endpoint, TLS), under the Django settings'
    fallback: tuple[tuple[str, Any], ...] = ()


class DatabaseWrapper(postgresql.DatabaseWrapper):  # type: ignore[misc]
    """``ENGINE: "dbcreds.django"``: Django's PostgreSQL backend (psycopg 3), logging in with
    the credentials of a secret through dbcreds' login policy (see the module docstring)."""

    # Pools of this backend, by alias (Django keeps its own in the same way).
    _connection_pools: dict[str, CredentialPool[Any]] = {}  # noqa: RUF012 - Django's own shape

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._refuse_credentials_in_settings()
        # What Django's get_new_connection calls (`self.Database.connect`), and what its
        # DatabaseErrorWrapper reads the DB-API exceptions from: psycopg, logging in through
        # the policy. An instance attribute: the class attribute stays psycopg itself.
        self.Database = _LoginDriver(self)

    # -- settings -------------------------------------------------------------------------

    def _refuse_credentials_in_settings(self) -> None:
        for key in ("USER", "PASSWORD"):
            if self.settings_dict.get(key):
                raise ImproperlyConfigured(
                    f"DATABASES[{self.alias!r}]: {key} is set, but with ENGINE "
                    f"'dbcreds.django' the {key.lower()} comes from the secret (and changes "
                    f"when it rotates): remove {key} and name the secret in OPTIONS "
                    "['secret_id'] (or DBCREDS_SECRET_ID)"
                )
        options = self.settings_dict.get("OPTIONS") or {}
        for key in ("user", "password"):
            if options.get(key):
                raise ImproperlyConfigured(
                    f"DATABASES[{self.alias!r}]['OPTIONS']: {key!r} is set, but the {key} "
                    "comes from the secret: remove it"
                )
        if options.get("secret_id") and options.get("credential_source") is not None:
            raise ImproperlyConfigured(
                f"DATABASES[{self.alias!r}]['OPTIONS']: give 'secret_id' or "
                "'credential_source', not both"
            )

    def _credentials(self) -> _Credentials:
        """The credential source of these settings (one per secret for the process)."""
        self._refuse_credentials_in_settings()
        options = self.settings_dict["OPTIONS"]
        budget = options.get("auth_retry_budget")
        ttl = options.get("secret_ttl")
        config = configure(
            secret_id=str(options["secret_id"]) if options.get("secret_id") else None,
            provider=options.get("credential_source"),
            auth_retry_budget=None if budget is None else float(budget),
            secret_ttl=None if ttl is None else float(ttl),
        )
        fallback = {"host": config.host, "port": config.port, "dbname": config.dbname,
                    "sslmode": config.sslmode, "sslrootcert": config.sslrootcert}
        return _Credentials(
            config.source, config.auth_retry_budget,
            tuple((k, v) for k, v in fallback.items() if v is not None),
        )

    def get_connection_params(self) -> dict[str, Any]:
        """Django's connect parameters for these settings, without dbcreds' OPTIONS and with
        no user or password (the secret gives them at each login). An empty NAME means the
        secret's database (Django itself would refuse it)."""
        credentials = self._credentials()
        settings_dict = self.settings_dict
        options = {k: v for k, v in settings_dict["OPTIONS"].items() if k not in OWN_OPTIONS}
        view = {**settings_dict, "OPTIONS": options, "USER": "", "PASSWORD": ""}
        unnamed = settings_dict["NAME"] == "" and not options.get("service")
        if unnamed:
            view["NAME"] = "postgres"  # any valid name; dropped below
        params: dict[str, Any] = postgresql.DatabaseWrapper.get_connection_params(
            _SettingsView(self, view)
        )
        if unnamed:
            del params["dbname"]
        for key, value in credentials.fallback:
            params.setdefault(key, value)
        return params

    # -- connections without a pool: each login through the policy -----------------------

    def _connect(self, params: Mapping[str, Any]) -> Any:
        """``Database.connect(**params)`` for Django: one login through the policy (or the
        connection `close_if_unusable_or_obsolete` made before it retired the old one)."""
        renewed, self._renewed = self._renewed, None
        if renewed is not None:
            made_with, conn = renewed
            if made_with == dict(params) and not conn.closed:
                return conn
            conn.close()  # the settings changed meanwhile (the test runner's NAME)
        credentials = self._credentials()
        endpoint, kwargs = _split(params)
        login = _shared_login(credentials, endpoint)
        login.hold.raise_if_recent()
        try:
            conn = drive(login.login.policy.plan(), login.attempt(kwargs), time.sleep)
        except LOGIN_FAILURES as exc:
            login.hold.failed(exc)
            raise
        login.hold.succeeded()
        self._login, self._aged_at = login, None
        return conn

    _login: _Login | None = None
    _aged_at: float | None = None
    _renewed: tuple[dict[str, Any], Any] | None = None

    def close_if_unusable_or_obsolete(self) -> None:
        """Django's, make-before-break for a connection past ``CONN_MAX_AGE``.

        Django closes an aged connection and the next query logs in. Here the new connection
        logs in first: if its login would have to wait (a proxy that has not caught up with a
        rotation yet), the old connection, whose session a rotation never ends, serves on and
        the login is tried again `_RENEW_RETRY` seconds later, for at most the login's retry
        budget; then Django closes it and the next query waits the plan out as usual.
        """
        if self._aged_and_healthy():
            self._renew()
        super().close_if_unusable_or_obsolete()

    def _aged_and_healthy(self) -> bool:
        close_at = self._close_at()
        return (
            self.connection is not None
            and self._login is not None
            and close_at is not None
            and time.monotonic() >= close_at
            and not self.errors_occurred
            and not self.in_atomic_block
            and self.get_autocommit() == self.settings_dict["AUTOCOMMIT"]
        )

    def _close_at(self) -> float | None:
        close_at: float | None = getattr(self, "close_at", None)  # Django's, set by connect()
        return close_at

    def _renew(self) -> None:
        login = self._login
        close_at = self._close_at()
        assert login is not None and close_at is not None
        now = time.monotonic()
        if self._aged_at is None:
            self._aged_at = close_at
        if now - self._aged_at > login.login.policy.budget:
            return  # long enough: Django closes it, the next query waits the plan out
        params = self.get_connection_params()
        endpoint, kwargs = _split(params)
        if _shared_login(self._credentials(), endpoint) is not login:
            return  # other settings now: Django's way
        try:
            conn = drive_without_waiting(login.login.policy.plan(), login.attempt(kwargs))
        except Exception:  # not a refusal (network, server down): Django's way, as before
            return
        if conn is None:
            self.close_at = now + _RENEW_RETRY  # keep the old one a little longer
            return
        if self._renewed is not None:
            self._renewed[1].close()
        self._renewed = (params, conn)  # Django closes the old one now; connect() takes it

    # -- Django's connection pool: a CredentialPool ----------------------------------------

    @property
    def pool(self) -> CredentialPool[Any] | None:
        """Django's pool (``OPTIONS["pool"]``), made a `CredentialPool` with the options
        Django gives ``psycopg_pool.ConnectionPool`` (Django 5.1+'s ``pool``, step for step)."""
        pool_options = self.settings_dict["OPTIONS"].get("pool")
        if self.alias == NO_DB_ALIAS or not pool_options:
            return None
        if self.alias not in self._connection_pools:
            if self.settings_dict.get("CONN_MAX_AGE", 0) != 0:
                raise ImproperlyConfigured("Pooling doesn't support persistent connections.")
            if pool_options is True:
                pool_options = {}
            credentials = self._credentials()
            connect_kwargs = self.get_connection_params()
            # Ensure we run in autocommit, Django properly sets it later on.
            connect_kwargs["autocommit"] = True
            endpoint, kwargs = _split(connect_kwargs)
            enable_checks = self.settings_dict["CONN_HEALTH_CHECKS"]
            pool = CredentialPool(
                credentials.source,
                **endpoint,
                **{"auth_retry_budget": credentials.auth_retry_budget, **pool_options},
                kwargs=kwargs,
                connection_class=CheckedConnection,
                open=False,  # Do not open the pool during startup.
                configure=self._configure_connection,
                check=CredentialPool.check_connection if enable_checks else None,
            )
            # As Django: if threads race here, the first pool set wins (none is open yet).
            self._connection_pools.setdefault(self.alias, pool)
        return self._connection_pools[self.alias]


class CheckedConnection(psycopg.Connection[Any]):
    """A psycopg connection that serves one query before it counts as logged in.

    Behind a proxy, a login the proxy accepted can still fail at its first query, while the
    proxy's own login to the database is refused (RDS Proxy before it re-reads a rotated
    secret; PgBouncer's "server login has been failing"). Made part of the login attempt,
    that failure reaches the login policy, which waits it out within its budget, instead of
    the first ORM query of a request. One round trip per new connection.
    """

    @classmethod
    def connect(cls, conninfo: str = "", **kwargs: Any) -> Any:
        conn = super().connect(conninfo, **kwargs)
        try:
            conn.execute("select 1")
            if not conn.autocommit:
                conn.rollback()
        except BaseException:
            conn.close()
            raise
        return conn


class _SettingsView:
    """The wrapper as Django's ``get_connection_params`` sees it, with other settings."""

    def __init__(self, wrapper: DatabaseWrapper, settings_dict: dict[str, Any]) -> None:
        self._wrapper = wrapper
        self.settings_dict = settings_dict

    def __getattr__(self, name: str) -> Any:
        return getattr(self._wrapper, name)


class _LoginDriver:
    """psycopg, as a Django backend uses it (``self.Database``), whose ``connect`` logs in
    through the wrapper's credentials."""

    def __init__(self, wrapper: DatabaseWrapper) -> None:
        self._wrapper = wrapper

    def __getattr__(self, name: str) -> Any:
        return getattr(psycopg, name)

    def connect(self, **params: Any) -> Any:
        return self._wrapper._connect(params)

    def __repr__(self) -> str:
        return f"<dbcreds login driver over {psycopg.__name__} {psycopg.__version__}>"


def _split(params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(host/port/dbname, the other connect parameters) of Django's parameters."""
    endpoint = {k: params[k] for k in _ENDPOINT if params.get(k) not in (None, "")}
    if "port" in endpoint:
        endpoint["port"] = int(endpoint["port"])
    rest = {k: v for k, v in params.items() if k not in _ENDPOINT}
    return endpoint, rest


# -- process-wide state: one source per secret, one login per (source, endpoint) -------------


class _FailureHold:
    """The last failed login of a `PoolLogin` without a pool, told to callers for
    `_FAILURE_HOLD` seconds; then the next caller tries again."""

    def __init__(self, login: PoolLogin, clock: Callable[[], float] = time.monotonic) -> None:
        self._login = login
        self._clock = clock
        self._at = 0.0

    def raise_if_recent(self) -> None:
        failure = self._login.failure
        if failure is not None and self._clock() - self._at < _FAILURE_HOLD:
            raise again(failure)

    def failed(self, failure: DbcredsError) -> None:
        self._at = self._clock()
        self._login.set_failure(failure)

    def succeeded(self) -> None:
        if self._login.failure is not None:
            self._login.set_failure(None)


@dataclass(frozen=True)
class _Login:
    login: PoolLogin
    hold: _FailureHold

    def attempt(self, kwargs: Mapping[str, Any]) -> Callable[[DbSecret], Any]:
        """One login with a secret (a `CheckedConnection`), Django's other parameters."""

        def attempt(secret: DbSecret) -> Any:
            conninfo, params = self.login.params("", kwargs, secret)
            return CheckedConnection.connect(conninfo, **params)

        return attempt


def drive_without_waiting(plan: Plan, attempt: Callable[[DbSecret], C]) -> C | None:
    """`login.drive` until the plan says wait: then None (the plan is closed), and a
    failure the plan raises is left for the next login that may wait."""
    try:
        step = advance(plan, None)
        while True:
            if isinstance(step, Wait):
                return None
            if isinstance(step, Done):  # pragma: no cover - a plan ends after a success
                return None
            try:
                conn = attempt(step.secret)
            except Exception as exc:
                step = advance(plan, exc)
                continue
            advance(plan, None)
            return conn
    except LOGIN_FAILURES:
        return None
    finally:
        plan.close()


_lock = threading.Lock()
_logins: dict[tuple[int, tuple[tuple[str, Any], ...], float], _Login] = {}


def _shared_login(credentials: _Credentials, endpoint: Mapping[str, Any]) -> _Login:
    key = (id(credentials.source), tuple(sorted(endpoint.items())), credentials.auth_retry_budget)
    with _lock:
        found = _logins.get(key)
        if found is not None and found.login.source is credentials.source:
            return found
    login = PoolLogin(
        credentials.source, host=endpoint.get("host"), port=endpoint.get("port"),
        dbname=endpoint.get("dbname"), sslmode=None, sslrootcert=None, kwargs=None,
        conninfo=None, auth_retry_budget=credentials.auth_retry_budget,
    )
    with _lock:
        found = _logins.get(key)
        if found is None or found.login.source is not credentials.source:
            found = _logins[key] = _Login(login, _FailureHold(login))
    from .. import snapstart

    snapstart.install()  # under Lambda SnapStart: no secret or connection in the snapshot
    return found


def _close_all() -> bool:
    """Forget every cached credential and close this backend's pools and this thread's
    connections (the registry's ``close``, before a SnapStart snapshot); whether there was
    anything. Everything is rebuilt on next use."""
    with _lock:  # (the shared sources forget their secrets through snapstart.register too)
        sources = {id(v.login.source): v.login.source for v in _logins.values()}
        _logins.clear()
    pools = DatabaseWrapper._connection_pools
    aliases = list(pools)
    for source in sources.values():
        source.invalidate()
    for alias in aliases:
        pool = pools.pop(alias, None)
        if pool is not None:
            pool.close()
    try:
        opened = connections.all(initialized_only=True)
    except ImproperlyConfigured:  # Django not configured: no connection of ours either
        opened = []
    for conn in opened:
        if isinstance(conn, DatabaseWrapper):
            conn.close()
            renewed, conn._renewed = conn._renewed, None
            if renewed is not None:  # a replacement made ahead of CONN_MAX_AGE: not Django's
                renewed[1].close()
    return bool(sources or aliases)


_registry.register_default("django", _close_all)
