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
``iam.IamAuthSource`` (RDS IAM auth tokens) both are one, and both plug into the same pools.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

from .errors import (
    AuthenticationFailed,
    AuthFailure,
    DbcredsError,
    UntrustedServer,
    classify_auth_failure,
    classify_tls_failure,
    raise_clean,
)
from .secret import DbSecret

__all__ = [
    "ConnectParamsPolicy", "CredentialSource", "Done", "LoginPolicy", "Try", "Wait", "advance",
    "drive",
]


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
        self._lock = threading.Lock()
        self._preferred: DbSecret | None = None
        self._retrying = 0

    def first_choice(self) -> Try:
        """AWSCURRENT, unless another version is known to work and AWSCURRENT has not caught up."""
        current = self.provider.get()
        with self._lock:
            preferred = self._preferred
            if preferred is not None and (
                preferred.version_id == current.version_id or preferred.same_login(current)
            ):
                self._preferred = preferred = None
        if preferred is not None:
            return Try(preferred, "AWSPENDING")
        return Try(current, "AWSCURRENT")

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

                next_step = self._untried(refused)
                if next_step is not None:
                    step = next_step
                    continue
                if self._worth_waiting(kind) and self._clock() + delay <= deadline:
                    if not retrying:
                        retrying = True
                        self._count_retrying(+1)
                    yield Wait(delay * (0.5 + random.random() / 2))
                    delay = min(self.backoff[1], delay * 2)
                    refused.clear()
                    step = self.first_choice()
                    continue
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
        with self._lock:
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
            return Try(current, "AWSCURRENT")
        try:
            pending = self.provider.get_pending()
        except DbcredsError:
            pending = None  # AWSPENDING is a bonus; failing to read it must not fail the login
        if pending is not None and new(pending):
            return Try(pending, "AWSPENDING")
        return None

    def _worth_waiting(self, kind: AuthFailure) -> bool:
        if kind is AuthFailure.PROXY or self.provider.changed_recently(self.rotation_grace):
            return True
        try:
            return self.provider.get_pending() is not None
        except DbcredsError:
            return False

    def _worked(self, step: Try) -> None:
        with self._lock:
            self._preferred = step.secret if step.stage == "AWSPENDING" else None

    def _refused(self, secret: DbSecret) -> None:
        with self._lock:
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
    step = advance(plan, None)
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
            step = advance(plan, exc)
            continue
        if isinstance(advance(plan, None), Done):
            return conn
        raise RuntimeError("login plan went on after a successful login")  # pragma: no cover
