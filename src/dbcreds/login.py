"""The login policy: which credentials a new connection tries, and what it does when refused.

Pure decision logic, shared by the sync and the asyncio pools: `LoginPolicy.plan()` is a
generator that yields `Try(secret)` (log in with this) or `Wait(seconds)`, and is sent the
outcome of each try (``None`` for success, the exception otherwise). The drivers in
``pool.py`` do the I/O.

On a refusal (see ``errors.classify_auth_failure``):

1. a newer AWSCURRENT, via ``provider.refresh(stale=...)``: one fetch however many
   connections failed together;
2. AWSPENDING, when a rotation is in progress and it differs: in the single-user window
   (setSecret done, finishSecret not yet) only the pending password logs in to the database
   or to a proxy that checks the live database. Whatever logs in is kept for new connections
   until AWSCURRENT catches up with it;
3. when the refusal came from the proxy's own server login (RDS Proxy before it re-reads the
   secret, PgBouncer's server_login_retry), or a rotation is visibly in progress, wait with
   jittered, capped exponential backoff and go round again, within ``budget`` seconds;
4. otherwise give up at once with `AuthenticationFailed` (a wrong secret is not a rotation:
   callers learn it in milliseconds, not after a 30 s PoolTimeout).

A login that libpq stopped to protect the credentials (the server's certificate is not
trusted, it offers no TLS, it asks for a cleartext password: see ``dbcreds.tls``) ends the
plan at once with `UntrustedServer`: configuration, which no retry heals.

Where credentials come from is a `CredentialSource`: `SecretProvider` (Secrets Manager) and
``iam.IamAuthSource`` (RDS IAM auth tokens) both are one, and both plug into the same pools;
`source_for` builds the one that `Settings` describe.

`PoolLogin` and `CredentialPoolMixin` are what ``pool.CredentialPool`` and
``aio.AsyncCredentialPool`` share above the driver: the connect parameters of each attempt,
the TLS policy, the failure told to every caller, the name and the statistics. Nothing here
imports psycopg or psycopg_pool (psycopg's ``conninfo_to_dict`` is imported when first used).
"""

from __future__ import annotations

import itertools
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable, Generator, Mapping
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, TypeVar, runtime_checkable

from . import telemetry
from .errors import (
    AuthenticationFailed,
    AuthFailure,
    ConfigurationError,
    DbcredsError,
    InvalidSecret,
    SecretAccessDenied,
    SecretNotFound,
    UntrustedServer,
    classify_auth_failure,
    classify_tls_failure,
    raise_clean,
)
from .secret import AWSCURRENT, AWSPENDING, DbSecret
from .tls import PSYCOPG, TlsClient, TlsPolicy, check_hosts, login_tls, tls_params_of

if TYPE_CHECKING:
    from .config import Settings

__all__ = [
    "LOGIN_FAILURES",
    "Configuration",
    "ConnectParamsPolicy",
    "CredentialPoolMixin",
    "CredentialSource",
    "Done",
    "LoginPolicy",
    "PoolLogin",
    "Try",
    "Wait",
    "advance",
    "again",
    "configure",
    "drive",
    "drive_async",
    "shared_source",
    "shared_source_for",
    "source_for",
]

_pool_logger = logging.getLogger("dbcreds.pool")  # the pools' logins log as the pools


class CredentialSource(Protocol):
    """Where a pool's credentials come from (`SecretProvider`, ``iam.IamAuthSource``).

    Thread-safe: the pools call it from worker threads. ``secret_id`` names the credentials
    in errors and logs (never a secret value).
    """

    secret_id: str

    def get(self) -> DbSecret:
        """The credentials to log in with now (cached)."""
        ...

    def refresh(self, stale: DbSecret | None = None) -> DbSecret:
        """Newer credentials, unless another caller already replaced *stale* (no herd)."""
        ...

    def get_pending(self, stale: DbSecret | None = None) -> DbSecret | None:
        """Credentials of a rotation in progress, None when there is none."""
        ...

    def changed_recently(self, within: float) -> bool:
        """True when the credentials changed within *within* seconds (a rotation's tail)."""
        ...

    def invalidate(self) -> None:
        """Forget every cached value (SnapStart: nothing secret survives a snapshot)."""
        ...

    def get_stats(self) -> dict[str, Any]:
        """Counters for observability."""
        ...


@runtime_checkable
class ConnectParamsPolicy(Protocol):
    """Optional: a source that has the last word on the connection parameters of a login.

    ``connect_params`` gets the complete psycopg parameters of one attempt (conninfo merged
    in) and returns them, possibly changed, or raises `ConfigurationError`. The IAM source
    uses it to check that a token goes to a verified server on the endpoint it was signed for.
    """

    def connect_params(self, params: dict[str, Any]) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Try:
    secret: DbSecret
    stage: str


@dataclass(frozen=True)
class Wait:
    seconds: float


Step = Try | Wait
Plan = Generator[Step, BaseException | None, DbSecret]


class LoginPolicy:
    """Per-pool login state (the credentials known to work) and the retry plan.

    :param budget: seconds a connection attempt may spend retrying a refusal that a rotation
        or a proxy will heal by itself.
    :param backoff: (first, cap) seconds between such retries (jittered).
    :param rotation_grace: a refusal within this many seconds of seeing AWSCURRENT change is
        treated as the tail of a rotation (proxies re-read the secret on their own schedule).
    """

    def __init__(
        self,
        provider: CredentialSource,
        *,
        budget: float = 5.0,
        backoff: tuple[float, float] = (0.05, 0.5),
        rotation_grace: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.provider = provider
        self.budget = budget
        self.backoff = backoff
        self.rotation_grace = rotation_grace
        self._clock = clock
        self._mutex = threading.Lock()
        self._preferred: DbSecret | None = None
        self._retrying = 0

    def first_choice(self) -> Try:
        """AWSCURRENT, unless another version is known to work and AWSCURRENT has not caught up."""
        current = self.provider.get()
        with self._mutex:
            preferred = self._preferred
            if preferred is not None and (
                preferred.version_id == current.version_id or preferred.same_login(current)
            ):
                self._preferred = preferred = None
        if preferred is not None:
            return Try(preferred, AWSPENDING)
        return Try(current, AWSCURRENT)

    def plan(self) -> Plan:
        """Yield the tries and waits of one connection attempt; return the secret that worked."""
        deadline = self._clock() + self.budget
        delay = self.backoff[0]
        step = self.first_choice()
        refused: list[DbSecret] = []  # logins refused since the last wait
        tried: list[str] = []
        retrying = False
        try:
            while True:
                error = yield step
                if error is None:
                    self._worked(step)
                    return step.secret
                kind = classify_auth_failure(error)
                if kind is None:
                    hint = classify_tls_failure(error)
                    if hint is not None:  # libpq kept the credentials: configuration, not luck
                        telemetry.count(telemetry.LOGIN_FAILURES, {"error": "UntrustedServer"})
                        # Not chained: the driver's error holds the connection parameters
                        # (password included) in its pgconn and its traceback's frames.
                        raise_clean(UntrustedServer(
                            self.provider.secret_id, "the server", _first_line(error), hint
                        ))
                    raise error  # not a refusal: the pool's own reconnect policy applies
                tried.append(
                    f"{step.stage} (version {step.secret.version_id}): {_first_line(error)}"
                )
                refused.append(step.secret)
                self._refused(step.secret)
                telemetry.count(telemetry.LOGIN_REFUSED, {"kind": kind.value, "stage": step.stage})

                next_step = self._untried(refused)
                if next_step is not None:
                    step = next_step
                    continue
                if self._worth_waiting(kind) and self._clock() + delay <= deadline:
                    if not retrying:
                        retrying = True
                        self._count_retrying(+1)
                    wait = delay * (0.5 + random.random() / 2)
                    telemetry.count(telemetry.RETRY_WAITS)
                    telemetry.observe(telemetry.RETRY_WAIT_DURATION, wait)
                    yield Wait(wait)
                    delay = min(self.backoff[1], delay * 2)
                    refused.clear()
                    step = self.first_choice()
                    continue
                telemetry.count(telemetry.LOGIN_FAILURES, {"error": "AuthenticationFailed"})
                raise_clean(AuthenticationFailed(  # not chained: see UntrustedServer above
                    self.provider.secret_id, "; ".join(dict.fromkeys(tried))
                ))
        finally:
            if retrying:
                self._count_retrying(-1)

    @property
    def retrying(self) -> bool:
        """True while a login waits out a refusal that a rotation or a proxy will heal.

        The pool then keeps connections past their ``max_lifetime``: retiring one now would
        make callers wait for a replacement that cannot log in yet (break-before-make).
        """
        return self._retrying > 0

    def _count_retrying(self, delta: int) -> None:
        with self._mutex:
            self._retrying += delta

    # -- internals ----------------------------------------------------------------------

    def _untried(self, refused: list[DbSecret]) -> Try | None:
        """A credential not refused in this round: AWSCURRENT (refetched once it has been
        refused: one fetch for all connections refused together), then AWSPENDING."""

        def new(secret: DbSecret | None) -> bool:
            return secret is not None and not any(secret.same_login(r) for r in refused)

        current = self.provider.get()
        if not new(current):
            current = self.provider.refresh(stale=current)
        if new(current):
            return Try(current, AWSCURRENT)
        try:
            pending = self.provider.get_pending()
        except DbcredsError:
            pending = None  # AWSPENDING is a bonus; failing to read it must not fail the login
        if pending is not None and new(pending):
            return Try(pending, AWSPENDING)
        return None

    def _worth_waiting(self, kind: AuthFailure) -> bool:
        if kind is AuthFailure.PROXY or self.provider.changed_recently(self.rotation_grace):
            return True
        try:
            return self.provider.get_pending() is not None
        except DbcredsError:
            return False

    def _worked(self, step: Try) -> None:
        if step.stage == AWSPENDING:
            telemetry.count(telemetry.PENDING_USED)
        with self._mutex:
            self._preferred = step.secret if step.stage == AWSPENDING else None

    def _refused(self, secret: DbSecret) -> None:
        with self._mutex:
            if self._preferred is not None and self._preferred.same_login(secret):
                self._preferred = None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


@dataclass(frozen=True)
class Done:
    """The plan is over: *secret* logged in."""

    secret: DbSecret


def advance(plan: Plan, outcome: BaseException | None) -> Step | Done:
    """Send a plan the outcome of its last step (None also starts it); the next step or Done.

    Shared by the drivers: the asyncio driver runs it in a worker thread (the plan calls the
    blocking, thread-safe source), where a StopIteration could not cross into a Future.
    """
    try:
        return plan.send(outcome)
    except StopIteration as stop:
        secret: DbSecret = stop.value
        return Done(secret)


C = TypeVar("C")


def drive(plan: Plan, attempt: Callable[[DbSecret], C], sleep: Callable[[float], None]) -> C:
    """Run a plan synchronously: *attempt* logs in with a secret and returns a connection."""
    with telemetry.span("dbcreds.login") as span:
        step = advance(plan, None)
        _name_span(span, step)
        return _drive(plan, step, attempt, sleep)


def _name_span(span: telemetry.SpanHandle, step: Step | Done) -> None:
    if isinstance(step, Try):
        span.set("dbcreds.secret_id", step.secret.secret_id)


def _drive(
    plan: Plan, step: Step | Done, attempt: Callable[[DbSecret], C],
    sleep: Callable[[float], None],
) -> C:
    while True:
        if isinstance(step, Done):  # pragma: no cover - a plan ends only after a success
            raise RuntimeError("login plan ended without a successful login")
        if isinstance(step, Wait):
            sleep(step.seconds)
            step = advance(plan, None)
            continue
        try:
            conn = attempt(step.secret)
        except Exception as exc:
            failed: Exception | None = exc
        else:
            failed = None
        if failed is not None:  # outside the handler: the plan's verdict gets no __context__
            step = advance(plan, failed)
            continue
        if isinstance(advance(plan, None), Done):
            return conn
        raise RuntimeError("login plan went on after a successful login")  # pragma: no cover


async def drive_async(plan: Plan, attempt: Callable[[DbSecret], Awaitable[C]]) -> C:
    """Run a login plan on the event loop: the asyncio twin of `drive`.

    The plan is advanced in a worker thread (its steps may call Secrets Manager); *attempt*
    (an ``AsyncConnection.connect``) and the waits run on the loop.
    """
    import asyncio  # here: a sync-only process (psycopg2, SQLAlchemy sync) never loads it

    with telemetry.span("dbcreds.login") as span:
        step = await asyncio.to_thread(advance, plan, None)
        _name_span(span, step)
        return await _drive_async(plan, step, attempt)


async def _drive_async(
    plan: Plan, step: Step | Done, attempt: Callable[[DbSecret], Awaitable[C]]
) -> C:
    import asyncio

    while True:
        if isinstance(step, Done):  # pragma: no cover - a plan ends only after a success
            raise RuntimeError("login plan ended without a successful login")
        if isinstance(step, Wait):
            await asyncio.sleep(step.seconds)
            step = await asyncio.to_thread(advance, plan, None)
            continue
        try:
            conn = await attempt(step.secret)
        except Exception as exc:
            failed: Exception | None = exc
        else:
            failed = None
        if failed is not None:
            # Outside the handler: the plan's verdict (AuthenticationFailed), re-raised here
            # from the worker thread, must not get the driver's error (whose frames hold the
            # attempt's password) as its __context__.
            step = await asyncio.to_thread(advance, plan, failed)
            continue
        try:
            end = await asyncio.to_thread(advance, plan, None)
        except BaseException:  # cancelled after the login: don't leak the connection
            close = getattr(conn, "close", None)
            if close is not None:
                with suppress(Exception):
                    await close()
            raise
        if isinstance(end, Done):
            return conn
        raise RuntimeError("login plan went on after a successful login")  # pragma: no cover


# -- what the sync and the asyncio pools share --------------------------------------------

#: What ends a login plan for every caller at once: configuration, not bad luck (a refused
#: login the plan could not heal, a server libpq would not trust, a secret that is missing,
#: unreadable or incomplete, a host that neither the secret nor the configuration gives).
#: Secrets Manager being unavailable is not among them: stale-if-error and retries apply.
LOGIN_FAILURES = (
    AuthenticationFailed, ConfigurationError, InvalidSecret, SecretNotFound, SecretAccessDenied,
)

#: seconds an expired connection is kept while a login waits out a rotation window
_LIFETIME_GRACE = 1.0


def again(failure: DbcredsError) -> DbcredsError:
    """A fresh copy of *failure* to raise to one more caller (its own traceback)."""
    return failure.again()


def source_for(settings: Settings) -> CredentialSource:
    """The credential source *settings* describe: the secret's `SecretProvider`, or an RDS
    IAM token source (``DBCREDS_IAM_USER``)."""
    if settings.iam_user:
        from .iam import IamAuthSource

        if not settings.host:
            raise ConfigurationError("an IAM auth token source needs a host (DBCREDS_HOST)")
        return IamAuthSource(
            settings.host, settings.port or 5432, settings.iam_user,
            dbname=settings.dbname or "postgres",
        )
    from .provider import SecretProvider

    return SecretProvider(settings.secret_id, ttl=settings.secret_ttl,
                          keys=dict(settings.secret_keys or ()))


@dataclass(frozen=True)
class Configuration:
    """What an integration's logins use: the credential source, and the endpoint, TLS and
    retry budget that the ``DBCREDS_*`` environment gives when it configured the source
    (None where it says nothing: the integration's own parameters, then the secret's, apply).
    """

    source: CredentialSource
    auth_retry_budget: float = 5.0
    host: str | None = None
    port: int | None = None
    dbname: str | None = None
    sslmode: str | None = None
    sslrootcert: str | None = None


def configure(
    *,
    secret_id: str | None = None,
    provider: CredentialSource | None = None,
    auth_retry_budget: float | None = None,
    secret_ttl: float | None = None,
) -> Configuration:
    """The credentials of an integration (SQLAlchemy, Django, asyncpg, psycopg2), one way:

    * *provider*: that source, as given;
    * *secret_id*: the process's one `SecretProvider` of that secret (and *secret_ttl*),
      shared by every engine, pool and connection that names it (one cache, one flight);
    * neither: the ``DBCREDS_*`` environment (``config.Settings.from_env``, `source_for`),
      whose source is shared the same way and whose endpoint, TLS and budget come along.

    Shared sources forget what they cached before a SnapStart snapshot (``snapstart``).
    *auth_retry_budget* None means the environment's, else 5 s.
    """
    if secret_id is not None and provider is not None:
        raise ConfigurationError("give secret_id or provider, not both")
    if provider is not None:
        return Configuration(provider, _budget(auth_retry_budget, 5.0))
    if secret_id is not None:
        if not secret_id:
            raise ConfigurationError("secret_id is empty: give the secret's name or ARN")
        ttl = 300.0 if secret_ttl is None else float(secret_ttl)

        def provider_of_secret() -> CredentialSource:
            from .provider import SecretProvider

            return SecretProvider(secret_id, ttl=ttl)

        source = shared_source(("secret", secret_id, ttl), provider_of_secret)
        return Configuration(source, _budget(auth_retry_budget, 5.0))
    from .config import Settings

    settings = Settings.from_env()
    source = shared_source_for(settings)
    return Configuration(
        source, _budget(auth_retry_budget, settings.auth_retry_budget),
        host=settings.host, port=settings.port, dbname=settings.dbname,
        sslmode=settings.sslmode, sslrootcert=settings.sslrootcert,
    )


def _budget(given: float | None, default: float) -> float:
    return default if given is None else float(given)


_shared_sources: dict[Any, CredentialSource] = {}
_shared_lock = threading.Lock()


def shared_source_for(settings: Settings) -> CredentialSource:
    """The process's one source that *settings* describe (`source_for`, shared)."""
    return shared_source(("environment", settings), lambda: source_for(settings))


def shared_source(key: Any, build: Callable[[], CredentialSource]) -> CredentialSource:
    """The process's one source for *key*, built by *build* the first time (and registered
    with ``snapstart``: nothing it caches survives a snapshot)."""
    with _shared_lock:
        source = _shared_sources.get(key)
        if source is not None:
            return source
        source = _shared_sources[key] = build()
    from . import snapstart

    snapstart.register(source)
    return source


def _conninfo_to_dict(conninfo: str) -> dict[str, Any]:
    if not conninfo:
        return {}
    from psycopg.conninfo import conninfo_to_dict  # psycopg only when a pool connects

    return conninfo_to_dict(conninfo)


#: psycopg 3's connect parameters that dbcreds defaults: no prepared statements (PgBouncer in
#: transaction mode and RDS Proxy break, or pin on, them)
PSYCOPG_DEFAULTS: Mapping[str, Any] = {"prepare_threshold": None}


class PoolLogin:
    """The login side of a credential pool, shared by the sync and the asyncio pools.

    Holds the `LoginPolicy` and the TLS policy (``dbcreds.tls``), builds the psycopg
    parameters of each attempt (the pool's ``kwargs``, then the credentials, then the
    host/port/dbname overrides, then the TLS policy, then the source's own word: see
    `ConnectParamsPolicy`), and remembers the failure (`AuthenticationFailed`,
    `UntrustedServer`) that callers are told at once until a login works again.

    :param tls_client: the driver that logs in (``tls.PSYCOPG`` by default; psycopg2's own
        libpq, or ``tls.ASYNCPG``, which has none): what the TLS policy can demand of it.
    :param driver_defaults: connect parameters the driver gets unless the pool's kwargs set
        them: `PSYCOPG_DEFAULTS` (``prepare_threshold=None``) by default; ``{}`` for a driver
        that does not know them (psycopg2).
    :param conninfo, kwargs: the pool's, when they are fixed (a string, a dict): the TLS
        settings they name and the source's check apply now, at construction. None when the
        pool's are callables (psycopg_pool calls them at each connection attempt): then both
        apply at each attempt, to what the callables return.
    """

    def __init__(
        self,
        source: CredentialSource,
        *,
        host: str | None,
        port: int | None,
        dbname: str | None,
        sslmode: str | None,
        kwargs: Mapping[str, Any] | None,
        auth_retry_budget: float,
        conninfo: str | None = "",
        sslrootcert: str | None = None,
        tls_client: TlsClient = PSYCOPG,
        driver_defaults: Mapping[str, Any] | None = None,
    ) -> None:
        self.source = source
        self.tls_client = tls_client
        self.driver_defaults = dict(
            PSYCOPG_DEFAULTS if driver_defaults is None else driver_defaults
        )
        self.policy = LoginPolicy(source, budget=auth_retry_budget)
        self.overrides = {
            k: v for k, v in (("host", host), ("port", port), ("dbname", dbname)) if v is not None
        }
        self._sslmode = sslmode
        self._sslrootcert = sslrootcert
        self._policy = source if isinstance(source, ConnectParamsPolicy) else None
        self._failure: DbcredsError | None = None
        self._mutex = threading.Lock()
        self._tls_by_key: dict[tuple[str | None, str | None], TlsPolicy] = {}
        fixed = conninfo is not None and kwargs is not None
        self._tls_key = self._key(conninfo or "", self.connect_kwargs(kwargs or {}))
        self.tls = self._tls_for_key(self._tls_key)
        if fixed and self._policy is not None:  # refuse a configuration the source refuses, now
            assert conninfo is not None and kwargs is not None
            self._policy.connect_params({
                **_conninfo_to_dict(conninfo), **self.connect_kwargs(kwargs), **self.overrides,
                **self.tls.params,
            })
        self.announce(self.tls)

    def connect_kwargs(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The pool's kwargs over the driver's defaults (``driver_defaults``)."""
        return {**self.driver_defaults, **kwargs}

    def _key(
        self, conninfo: str, kwargs: Mapping[str, Any]
    ) -> tuple[str | None, str | None]:
        """(sslmode, sslrootcert) as configured: the parameters, then the ``kwargs``, then the
        conninfo (in that order of precedence)."""
        mode, root = tls_params_of({**_conninfo_to_dict(conninfo), **kwargs})
        return self._sslmode or mode, self._sslrootcert or root

    def _tls_for_key(self, key: tuple[str | None, str | None]) -> TlsPolicy:
        with self._mutex:
            policy = self._tls_by_key.get(key)
        if policy is None:
            policy = login_tls(
                sslmode=key[0],
                sslrootcert=key[1],
                token=getattr(self.source, "credential_kind", "password") == "token",
                source="the pool's sslmode",
                what=f"the pool of {self.source.secret_id!r}",
                client=self.tls_client,
            )
            with self._mutex:
                if len(self._tls_by_key) >= _TLS_POLICIES_KEPT:  # callables may vary forever
                    self._tls_by_key.pop(next(iter(self._tls_by_key)))
                self._tls_by_key[key] = policy
        return policy

    def tls_for(self, conninfo: str, kwargs: Mapping[str, Any]) -> TlsPolicy:
        """The TLS policy of an attempt with these (resolved) conninfo and kwargs: the pool's
        own unless callables named other TLS settings (logged when first seen)."""
        key = self._key(conninfo, kwargs)
        if key == self._tls_key:
            return self.tls
        known = key in self._tls_by_key
        policy = self._tls_for_key(key)
        if not known:
            self.announce(policy)
        return policy

    def announce(self, tls: TlsPolicy | None = None) -> None:
        """Log how this pool logs in; a downgrade of TLS as a warning (at every pool start)."""
        tls = tls or self.tls
        if tls.downgrade is not None:
            _pool_logger.warning("pool of %r: %s", self.source.secret_id, tls.downgrade)
        else:
            _pool_logger.debug("pool of %r logs in with TLS %s", self.source.secret_id,
                               tls.describe())

    def params(
        self, conninfo: str, kwargs: Mapping[str, Any], secret: DbSecret,
        endpoint: Mapping[str, Any] | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """(conninfo, kwargs) for ``connect`` logging in with *secret*, from the conninfo and
        kwargs that psycopg_pool resolved for this attempt.

        *endpoint*: host/port/dbname of this very attempt that win over the secret's and the
        fixed overrides (an integration whose per-connection arguments are configuration, such
        as a SQLAlchemy URL and ``connect_args``).

        A configuration that no retry heals (a Unix-domain socket with TLS, TLS settings or
        an endpoint the source refuses) raises `UntrustedServer`, no host from either the
        secret or the configuration a `ConfigurationError`: every caller is told at once.
        """
        kwargs = self.connect_kwargs(kwargs)
        try:
            tls = self.tls_for(conninfo, kwargs)
        except ConfigurationError as exc:
            self._refuse("the server", "the pool's TLS settings are refused", exc)
        params = {**kwargs, **secret.connect_kwargs(), **self.overrides, **(endpoint or {}),
                  **tls.params}
        everything = {**_conninfo_to_dict(conninfo), **params}
        if not everything.get("host") and not everything.get("hostaddr"):
            raise_clean(ConfigurationError(
                f"secret {self.source.secret_id!r} names no host, and no host is configured: "
                "an RDS-managed secret holds only the username and the password, so the "
                "configuration must give the endpoint (DBCREDS_HOST, or host=: the RDS Proxy "
                "or database endpoint)"
            ))
        try:
            check_hosts(everything, tls)
        except ConfigurationError as exc:
            self._refuse(f"host {params.get('host')!r}", "a Unix-domain socket", exc)
        if self._policy is None:
            return conninfo, params
        # The source sees everything, conninfo included (psycopg lets kwargs win over it).
        try:
            return "", self._policy.connect_params(everything)
        except ConfigurationError as exc:
            self._refuse(f"host {params.get('host')!r}",
                         "the credential source refused the parameters", exc)

    def _refuse(self, where: str, detail: str, exc: ConfigurationError) -> NoReturn:
        """`UntrustedServer` for a configuration no retry heals, with no chain to *exc*
        (whose frames hold this attempt's parameters, password included)."""
        raise_clean(UntrustedServer(self.source.secret_id, where, detail, str(exc)))

    @property
    def failure(self) -> DbcredsError | None:
        return self._failure

    def raise_if_failed(self) -> None:
        """Raise (a fresh copy of) the failure of the last login, if it failed."""
        failure = self._failure
        if failure is not None:
            raise again(failure)

    def expired_grace(self) -> float | None:
        """Seconds to keep a connection past ``max_lifetime`` as it comes back to its pool.

        psycopg_pool retires such a connection, and callers wait for its replacement
        (break-before-make). While a login waits out a rotation window (``policy.retrying``)
        that replacement cannot log in yet: keep the old connection a little longer instead.
        """
        return _LIFETIME_GRACE if self.policy.retrying else None

    def set_failure(self, failure: DbcredsError | None) -> None:
        """Remember *failure* (a fresh copy: no traceback, whose frames would hold the
        attempt's parameters) to tell callers at once, or forget it (None)."""
        if failure is not None:
            _pool_logger.error("%s", failure)
            failure = again(failure)
        with self._mutex:
            self._failure = failure


_pool_numbers = itertools.count(1)
#: TLS policies a pool keeps for the settings its conninfo/kwargs callables returned
_TLS_POLICIES_KEPT = 8


def pool_name(source: CredentialSource, name: str | None) -> str:
    """*name*, or ``dbcreds:<secret>:<n>``: distinct for each pool of a process (as
    psycopg_pool's ``pool-<n>``); its threads or tasks are named after it."""
    return name or f"dbcreds:{source.secret_id}:{next(_pool_numbers)}"


if TYPE_CHECKING:

    class _PoolStats:
        """What the mixin needs of the psycopg_pool class it is mixed into (typing only)."""

        name: str

        def get_stats(self) -> dict[str, int]: ...

        def pop_stats(self) -> dict[str, int]: ...

else:
    _PoolStats = object


class CredentialPoolMixin(_PoolStats):
    """The members `CredentialPool` and `AsyncCredentialPool` share, above the I/O (mixed in
    before the psycopg_pool class)."""

    provider: CredentialSource
    credentials: PoolLogin
    login: LoginPolicy

    def _setup_login(
        self,
        source: CredentialSource,
        *,
        name: str | None,
        conninfo: str | Callable[..., Any],
        kwargs: Mapping[str, Any] | Callable[..., Any] | None,
        host: str | None,
        port: int | None,
        dbname: str | None,
        sslmode: str | None,
        sslrootcert: str | None,
        auth_retry_budget: float,
    ) -> str:
        """Set up the login side (before psycopg_pool's ``__init__``); returns the pool name."""
        self.provider = source
        self.credentials = PoolLogin(
            source, host=host, port=port, dbname=dbname, sslmode=sslmode,
            sslrootcert=sslrootcert, auth_retry_budget=auth_retry_budget,
            conninfo=None if callable(conninfo) else conninfo,
            kwargs=None if callable(kwargs) else dict(kwargs or {}),
        )
        self.login = self.credentials.policy
        return pool_name(source, name)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} secret={self.provider.secret_id!r}>"

    def _expired_grace(self) -> float | None:
        return self.credentials.expired_grace()

    def get_stats(self) -> dict[str, int]:
        """psycopg_pool's statistics, plus ``auth_failed``: 1 while callers are told that the
        last login failed (`AuthenticationFailed`, `UntrustedServer`), else 0."""
        return self._with_auth(super().get_stats())

    def pop_stats(self) -> dict[str, int]:
        """As `get_stats`, resetting psycopg_pool's counters (``auth_failed`` is a state)."""
        return self._with_auth(super().pop_stats())

    def _with_auth(self, stats: dict[str, int]) -> dict[str, int]:
        stats["auth_failed"] = int(self.credentials.failure is not None)
        return stats
