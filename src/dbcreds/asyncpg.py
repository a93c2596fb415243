"""asyncpg: ``create_pool()`` and ``connect()`` whose every login runs dbcreds' login policy.

`create_pool` returns asyncpg's own ``asyncpg.Pool``, built by ``asyncpg.create_pool`` with
every option the caller gives (``min_size``, ``max_size``, ``max_queries``,
``max_inactive_connection_lifetime``, ``setup``, ``init``, ``reset``, ``connection_class``,
``record_class``, connection keyword arguments, ...). dbcreds adds one thing through asyncpg's
documented hook, the pool's ``connect=`` coroutine (asyncpg >= 0.30): a `CredentialConnect`,
which asyncpg calls whenever the pool needs a new connection and which

* runs the same ``LoginPolicy.plan()`` as the psycopg pools, driven by
  ``login.drive_async``: AWSCURRENT from the shared cache, one refresh for every connection
  refused together, AWSPENDING in the single-user rotation window, the bounded retry behind a
  proxy (the plan's Secrets Manager calls run in a worker thread: the event loop never
  blocks);
* builds each attempt's parameters with ``login.PoolLogin`` (the secret, then the
  host/port/database named by the dsn or the keyword arguments, then the TLS policy) and
  translates them into asyncpg's arguments: ``database``, and ``ssl``, an ``ssl.SSLContext``
  made from the TLS policy (``tls.ssl_context``: verify-full; asyncpg has no libpq, so it can
  neither demand SCRAM channel binding nor refuse a cleartext-password request, and
  ``require``/``verify-ca`` are refused for it). Everything that decides where the password
  goes is passed explicitly, so asyncpg reads none of ``PGSSLMODE``, ``PGPASSWORD``,
  ``PGHOST``, ``PGPORT``, ``PGUSER``, ``PGDATABASE`` or ``.pgpass``;
* when the plan gives up (`AuthenticationFailed`, or `UntrustedServer`), raises it to the
  caller of ``pool.acquire()`` (asyncpg connects in the acquiring task) and remembers it: every
  other caller that needs a new connection gets it at once, not after a login of its own nor
  a timeout. One new login at a time is let through to try again (the first after 1 s, then
  after doubling pauses up to 10 s), so a fixed secret is picked up by itself; asyncpg's own
  background task that keeps ``min_size`` connections open (0.32) is such a caller too.

Deliberate differences from plain asyncpg, all in what reaches ``asyncpg.connect``:

* ``user`` and ``password`` always come from the secret (or the IAM token source); a password
  in the dsn or the keyword arguments is refused (`ConfigurationError`), a user is ignored.
* ``ssl`` and the dsn's ``sslmode``/``sslrootcert`` are read as the configured TLS (a string
  sslmode, ``True`` = verify-full, ``False`` = disable), never passed as given; an
  ``ssl.SSLContext`` of the caller's is refused (dbcreds could not tell what it verifies).
* ``statement_cache_size`` defaults to 0 (asyncpg's is 100), as dbcreds defaults psycopg's
  ``prepare_threshold=None``: PgBouncer in transaction mode loses named prepared statements
  between transactions ("prepared statement ... does not exist") and RDS Proxy pins a session
  that prepares one. Pass ``statement_cache_size=100`` for a direct connection to the database.
* One host: a dsn with a list of hosts is refused (RDS Proxy and RDS give one endpoint).

Host, port and database named in the dsn or the keyword arguments win over the secret's.
With neither ``secret_id`` nor ``provider``, the ``DBCREDS_*`` environment configures the
login (``config.Settings``: the secret or ``DBCREDS_IAM_USER``, host, port, database, TLS,
retry budget, cache TTL); the dsn and the arguments still win over it. Sources built from a
secret id or from the environment are cached per process (one cache, one refresh for every
pool and connection of that secret) and registered with SnapStart (``snapstart.register``).
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg

from .errors import ConfigurationError, DbcredsError, raise_clean
from .login import LOGIN_FAILURES, CredentialSource, PoolLogin, again, configure, drive_async
from .secret import DbSecret
from .tls import ASYNCPG, TlsPolicy, ssl_context

__all__ = ["CredentialConnect", "connect", "create_pool"]

logger = logging.getLogger("dbcreds.asyncpg")

#: ``PoolLogin.params()`` (libpq names) -> ``asyncpg.connect()``'s argument
ASYNCPG_NAMES = {
    "host": "host", "port": "port", "user": "user", "password": "password", "dbname": "database",
}
#: libpq parameters with no asyncpg argument: the TLS policy becomes ``ssl=`` (an SSLContext);
#: GSSAPI encryption, ``require_auth``, channel binding and ``prepare_threshold`` do not apply
LIBPQ_ONLY = frozenset({
    "sslmode", "sslrootcert", "gssencmode", "require_auth", "channel_binding",
    "prepare_threshold",
})
#: asyncpg arguments dbcreds sets at every login (what the caller gave is read as configuration)
SET_BY_DBCREDS = frozenset({"host", "port", "user", "password", "passfile", "database", "ssl"})
#: run on each new connection before the login counts as done: a proxy (PgBouncer, RDS Proxy)
#: accepts a client's login before it has a server login of its own, and a failing server
#: login ("server login has been failing") then shows at the first query
CHECK_QUERY = "SELECT 1"
#: (first, cap) seconds between logins let through while a failure is told to callers
FAILED_RETRY = (1.0, 10.0)

Connect = Callable[..., Any]


@dataclass(frozen=True)
class Target:
    """Where and how a login goes, as configured (no secret): host/port/database overrides of
    the secret's, and the configured TLS (``sslmode``, ``sslrootcert``)."""

    host: str | None = None
    port: int | None = None
    dbname: str | None = None
    sslmode: str | None = None
    sslrootcert: str | None = None

    def over(self, other: Target) -> Target:
        """*other*'s values where it has one, else this one's."""
        return Target(
            host=other.host if other.host is not None else self.host,
            port=other.port if other.port is not None else self.port,
            dbname=other.dbname if other.dbname is not None else self.dbname,
            sslmode=other.sslmode if other.sslmode is not None else self.sslmode,
            sslrootcert=other.sslrootcert if other.sslrootcert is not None else self.sslrootcert,
        )


def _refuse(message: str) -> ConfigurationError:
    return ConfigurationError(f"dbcreds.asyncpg: {message}")


def _port(value: Any, where: str) -> int:
    try:
        port = int(str(value).strip())
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise_clean(_refuse(f"{where}: the port must be an integer in 1-65535"))
    return port


def target_of_dsn(dsn: str | None) -> Target:
    """What a ``postgresql://`` dsn says of host, port, database and TLS. A password in it is
    refused (it comes from the secret); the dsn is never quoted in an error (it may hold one).
    """
    if not dsn:
        return Target()
    try:
        parsed = urllib.parse.urlsplit(dsn)
        query = dict(urllib.parse.parse_qsl(parsed.query, strict_parsing=bool(parsed.query)))
        has_password = parsed.password is not None
        hostspec = parsed.netloc.rpartition("@")[2]
        host = urllib.parse.unquote(parsed.hostname) if parsed.hostname else None
        dsn_port = parsed.port if "," not in hostspec else None
    except ValueError:
        raise_clean(_refuse("the dsn is not a valid postgresql:// URI"))
    if parsed.scheme not in ("postgresql", "postgres"):
        raise_clean(_refuse("the dsn must be a postgresql:// (or postgres://) URI"))
    if has_password or "password" in query:
        raise_clean(_refuse(
            "the dsn holds a password: dbcreds logs in with the secret's, so remove it"
        ))
    if "," in hostspec or "," in query.get("host", "") or "," in query.get("port", ""):
        raise_clean(_refuse("the dsn names several hosts: give one endpoint"))
    host = query.get("host") or host
    port = query.get("port") or dsn_port
    dbname = query.get("dbname") or query.get("database") or (
        urllib.parse.unquote(parsed.path.lstrip("/")) or None
    )
    return Target(
        host=host, port=_port(port, "the dsn") if port else None, dbname=dbname,
        sslmode=query.get("sslmode") or None, sslrootcert=query.get("sslrootcert") or None,
    )


def target_of_kwargs(kwargs: Mapping[str, Any]) -> Target:
    """What asyncpg keyword arguments say of host, port, database and TLS (``ssl``)."""
    if kwargs.get("password") is not None:
        raise_clean(_refuse(
            "a password was given: dbcreds logs in with the secret's, so remove it"
        ))
    host = kwargs.get("host")
    if (host is not None and not isinstance(host, str)) or "," in str(host or ""):
        raise_clean(_refuse("host must be one host name"))
    port = kwargs.get("port")
    tls = kwargs.get("ssl")
    if isinstance(tls, ssl.SSLContext):
        raise_clean(_refuse(
            "ssl= is an SSLContext: dbcreds builds the context from its TLS policy; give "
            "sslmode= and sslrootcert= instead"
        ))
    sslmode: str | None
    if tls is None:
        sslmode = None
    elif tls is True:
        sslmode = "verify-full"
    elif tls is False:
        sslmode = "disable"
    elif isinstance(tls, str):
        sslmode = tls
    else:
        raise_clean(_refuse("ssl= must be an sslmode (a string), True or False"))
    return Target(host=host, port=_port(port, "port") if port is not None else None,
                  dbname=kwargs.get("database"), sslmode=sslmode)


class _NoTls(ConnectionError):
    """asyncpg's "rejected SSL upgrade", worded as libpq does (``errors.classify_tls_failure``
    knows that text): the login stops with `UntrustedServer`, not a generic error."""


class _Login:
    """The login state of one configuration: `PoolLogin` (parameters, TLS policy, the failure
    told to callers) and the gate that tells it while it holds."""

    def __init__(self, login: PoolLogin) -> None:
        self.login = login
        self._mutex = threading.Lock()
        self._probing = False
        self._retry_at = 0.0
        self._pause = FAILED_RETRY[0]

    def admit(self) -> bool:
        """Raise the failure at once while it holds; True when this call is the one login let
        through to try again."""
        with self._mutex:
            failure = self.login.failure
            if failure is None:
                return False
            if self._probing or time.monotonic() < self._retry_at:
                raise again(failure)
            self._probing = True
            return True

    def done(self, probe: bool, failure: DbcredsError | None) -> None:
        """A login worked (*failure* None) or the plan gave up with *failure*."""
        first = failure is not None and self.login.failure is None
        self.login.set_failure(failure)
        with self._mutex:
            if probe:
                self._probing = False
            if failure is None:
                self._pause = FAILED_RETRY[0]
            elif probe or first:
                # The pause grows once per verdict on a retry (or at the first failure), not
                # once per connection that failed together (the first retry after 1 s).
                self._later()

    def interrupted(self, probe: bool) -> None:
        """The login let through ended with no verdict (network, cancelled): the failure
        stays, and another login is let through after the next pause."""
        if probe:
            with self._mutex:
                self._probing = False
                self._later()

    def _later(self) -> None:
        self._retry_at = time.monotonic() + self._pause
        self._pause = min(FAILED_RETRY[1], self._pause * 2)


class CredentialConnect:
    """asyncpg's ``connect=`` coroutine (``asyncpg.create_pool(connect=...)``) that logs in
    with the credentials of *source* through dbcreds' login policy. `create_pool` and
    `connect` build one; build it yourself for an ``asyncpg.Pool`` of your own.

    Called as asyncpg calls ``asyncpg.connect``: ``await it(dsn, **kwargs)``; returns what
    *connect* (``asyncpg.connect`` by default, or the pool's own ``connect=``) returns.

    :param source: a `SecretProvider`, an ``iam.IamAuthSource``, any ``CredentialSource``.
    :param defaults: host/port/database/TLS used when neither the dsn nor the keyword
        arguments name them (the ``DBCREDS_*`` environment).
    :param sslmode, sslrootcert: the TLS policy (``dbcreds.tls``): verify-full (the default)
        against *sslrootcert* or the system trust store, or ``disable`` (local development).
        They win over the dsn's and ``ssl=``.
    :param auth_retry_budget: seconds a login may retry a refusal that a rotation or a proxy
        heals by itself.
    """

    def __init__(
        self,
        source: CredentialSource,
        *,
        sslmode: str | None = None,
        sslrootcert: str | None = None,
        auth_retry_budget: float = 5.0,
        defaults: Target | None = None,
        connect: Connect | None = None,
    ) -> None:
        self.source = source
        self.auth_retry_budget = auth_retry_budget
        self._defaults = defaults or Target()
        self._tls = Target(sslmode=sslmode, sslrootcert=sslrootcert)
        self._connect: Connect = connect if connect is not None else asyncpg.connect
        self._mutex = threading.Lock()
        self._current: tuple[Target, _Login] | None = None
        self._contexts: dict[tuple[str, str | None], ssl.SSLContext | None] = {}

    def __repr__(self) -> str:
        return f"<CredentialConnect secret={self.source.secret_id!r}>"

    @property
    def failure(self) -> DbcredsError | None:
        """The failure told to callers now (None while logins work)."""
        current = self._current
        return current[1].login.failure if current is not None else None

    def target(self, dsn: str | None, kwargs: Mapping[str, Any]) -> Target:
        """The configuration of a login with this dsn and these keyword arguments."""
        named = target_of_dsn(dsn).over(target_of_kwargs(kwargs))
        return self._defaults.over(named).over(self._tls)

    def login_for(self, target: Target) -> _Login:
        """The login state of *target* (a new one when the pool's connect arguments changed:
        ``Pool.set_connect_args``). Raises `ConfigurationError` for TLS settings the policy
        refuses."""
        with self._mutex:
            current = self._current
            if current is not None and current[0] == target:
                return current[1]
        login = _Login(PoolLogin(
            self.source, host=target.host, port=target.port, dbname=target.dbname,
            sslmode=target.sslmode, sslrootcert=target.sslrootcert, kwargs={}, conninfo="",
            auth_retry_budget=self.auth_retry_budget, tls_client=ASYNCPG,
        ))
        with self._mutex:
            if self._current is not None and self._current[0] == target:
                return self._current[1]
            self._current = (target, login)
        return login

    async def __call__(self, dsn: str | None = None, **kwargs: Any) -> Any:
        target = self.target(dsn, kwargs)
        state = self.login_for(target)
        probe = state.admit()
        passed = {k: v for k, v in kwargs.items() if k not in SET_BY_DBCREDS}
        passed.setdefault("statement_cache_size", 0)
        connect = self._connect

        async def attempt(secret: DbSecret) -> Any:
            args = self.connect_args(state.login, secret)
            try:
                conn = await connect(dsn, **passed, **args)
            except ConnectionError as exc:
                if "rejected ssl upgrade" not in str(exc).lower():
                    raise
                raise_clean(_NoTls(f"server does not support SSL, but SSL was required ({exc})"))
            try:
                await conn.execute(CHECK_QUERY)
            except BaseException:
                conn.terminate()
                raise
            return conn

        failure: DbcredsError | None = None
        try:
            conn = await drive_async(state.login.policy.plan(), attempt)
        except LOGIN_FAILURES as exc:
            state.done(probe, exc)
            failure = again(exc)
        except BaseException:
            state.interrupted(probe)
            raise
        if failure is not None:
            # A fresh copy, with no chain: drive_async raises the plan's verdict while it
            # handles the driver's error, whose frames hold the attempt's password.
            raise_clean(failure)
        state.done(probe, None)
        return conn

    def connect_args(self, login: PoolLogin, secret: DbSecret) -> dict[str, Any]:
        """asyncpg's arguments for a login with *secret*: ``PoolLogin.params`` (the secret,
        the host/port/database overrides, the TLS policy, the source's own check), translated:
        ``dbname`` -> ``database``, the TLS policy -> ``ssl`` (an SSLContext, or False)."""
        _, params = login.params("", {}, secret)
        args: dict[str, Any] = {}
        for key, value in params.items():
            if key in ASYNCPG_NAMES:
                args[ASYNCPG_NAMES[key]] = value
            elif key not in LIBPQ_ONLY:
                raise_clean(_refuse(f"no asyncpg argument for the login parameter {key!r}"))
        args["ssl"] = self.ssl_for(login.tls, params)
        return args

    def ssl_for(self, policy: TlsPolicy, params: Mapping[str, Any]) -> ssl.SSLContext | bool:
        """The SSLContext of *policy* (made once), or False when TLS is disabled."""
        if params.get("sslmode") != policy.sslmode or (
            params.get("sslrootcert") != policy.params.get("sslrootcert")
        ):  # pragma: no cover - PoolLogin applies the pool's one policy last
            raise_clean(_refuse("the login's TLS parameters are not the pool's policy"))
        key = (policy.sslmode, policy.params.get("sslrootcert"))
        with self._mutex:
            if key in self._contexts:
                context = self._contexts[key]
            else:
                context = self._contexts[key] = ssl_context(policy)
                if context is not None:
                    context.set_alpn_protocols(["postgresql"])  # as asyncpg's own contexts
        return context if context is not None else False


def _connector(
    dsn: str | None,
    kwargs: Mapping[str, Any],
    *,
    secret_id: str | None,
    provider: CredentialSource | None,
    sslrootcert: str | None,
    sslmode: str | None,
    auth_retry_budget: float | None,
    connect: Connect | None = None,
) -> CredentialConnect:
    config = configure(secret_id=secret_id, provider=provider,
                       auth_retry_budget=auth_retry_budget)
    defaults = Target(config.host, config.port, config.dbname, config.sslmode,
                      config.sslrootcert)
    connector = CredentialConnect(
        config.source, sslmode=sslmode, sslrootcert=sslrootcert,
        auth_retry_budget=config.auth_retry_budget, defaults=defaults, connect=connect,
    )
    connector.login_for(connector.target(dsn, kwargs))  # refuse a bad configuration now
    return connector


def create_pool(
    dsn: str | None = None,
    *,
    secret_id: str | None = None,
    provider: CredentialSource | None = None,
    sslrootcert: str | None = None,
    sslmode: str | None = None,
    auth_retry_budget: float | None = None,
    **pool_kwargs: Any,
) -> asyncpg.Pool:
    """``asyncpg.create_pool(dsn, **pool_kwargs)`` whose every new connection logs in with the
    credentials of a Secrets Manager secret (see the module docstring).

    Use it as asyncpg's: ``async with create_pool(...) as pool`` or
    ``pool = await create_pool(...)``.

    :param dsn: a ``postgresql://host:port/database?...`` URI without user or password (the
        secret gives them); host, port and database win over the secret's.
    :param secret_id: name or ARN of the secret (a cached `SecretProvider` per process).
    :param provider: a credential source instead (`SecretProvider`, ``iam.IamAuthSource``).
        With neither, ``DBCREDS_*`` (``config.Settings.from_env``) configures the login.
    :param sslrootcert: the CA bundle that signs the server's certificate (the RDS CA bundle
        for a database endpoint), or ``system`` (the default: the system trust store).
    :param sslmode: ``verify-full`` (the default) or ``disable`` (local development only,
        logged as a warning); ``require`` and ``verify-ca`` are refused for asyncpg.
    :param auth_retry_budget: seconds a login may retry a refusal that a rotation or a proxy
        heals by itself (default 5; ``DBCREDS_AUTH_RETRY_BUDGET`` from the environment).
    :param pool_kwargs: asyncpg's: pool options and ``asyncpg.connect`` keyword arguments
        (``statement_cache_size`` defaults to 0); a ``connect=`` of yours is called by dbcreds
        with each attempt's arguments.
    """
    inner = pool_kwargs.pop("connect", None)
    connector = _connector(
        dsn, pool_kwargs, secret_id=secret_id, provider=provider, sslrootcert=sslrootcert,
        sslmode=sslmode, auth_retry_budget=auth_retry_budget, connect=inner,
    )
    return asyncpg.create_pool(dsn, connect=connector, **pool_kwargs)


async def connect(
    dsn: str | None = None,
    *,
    secret_id: str | None = None,
    provider: CredentialSource | None = None,
    sslrootcert: str | None = None,
    sslmode: str | None = None,
    auth_retry_budget: float | None = None,
    **connect_kwargs: Any,
) -> asyncpg.Connection:
    """``asyncpg.connect(dsn, **connect_kwargs)`` logging in through dbcreds' login policy: one
    connection (parameters as for `create_pool`). A refusal the plan cannot heal raises
    `AuthenticationFailed`; an unverified server, `UntrustedServer`."""
    connector = _connector(
        dsn, connect_kwargs, secret_id=secret_id, provider=provider, sslrootcert=sslrootcert,
        sslmode=sslmode, auth_retry_budget=auth_retry_budget,
    )
    return await connector(dsn, **connect_kwargs)
