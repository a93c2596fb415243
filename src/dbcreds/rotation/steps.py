"""The four rotation steps. Each is idempotent: Secrets Manager retries a failed step, and a
crashed rotation is resumed with the same token, so every step first checks whether its work is
already done.

===============  ==========================================================================
createSecret     AWSPENDING exists for the token: nothing. Else copy AWSCURRENT (every key
                 kept), give it a GetRandomPassword password (and, alternating-users, the
                 other user), put it as the token's version with AWSPENDING.
                 The strategy checks the pending value before it is stored.
setSecret        AWSPENDING logs in: nothing. Else the strategy changes the password.
testSecret       log in with AWSPENDING to the database host in the secret, run a query.
finishSecret     check that AWSPENDING logs in (skipped when testSecret of the same secret
                 and token proved it in this process), then move AWSCURRENT to the token
                 (AWSPREVIOUS follows) and take AWSPENDING off it, so that the next
                 RotateSecret does not find a rotation in progress. Invoked out of order
                 (setSecret skipped), it refuses: AWSCURRENT never gets a password the
                 database does not accept.
===============  ==========================================================================
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from ..secret import AWSCURRENT, AWSPENDING, DbSecret
from .connect import describe_failure, try_login
from .events import RotationEvent, RotationStep, Versions
from .exceptions import RotationError, RotationStateError, TestSecretFailed
from .settings import RotationSettings
from .store import SecretStore
from .strategies import RotationStrategy

__all__ = ["STEPS", "StepContext", "create_secret", "finish_secret", "set_secret", "test_secret"]


@dataclass
class StepContext:
    event: RotationEvent
    versions: Versions
    store: SecretStore
    settings: RotationSettings
    strategy: RotationStrategy

    @property
    def secret_arn(self) -> str:
        return self.versions.arn

    @property
    def step(self) -> str:
        return self.event.step.value

    @property
    def where(self) -> str:
        return f"{self.step} for secret {self.secret_arn!r}"

    def error(self, kind: type[RotationError], message: str) -> RotationError:
        """*kind* of error for this step: the message is prefixed with where it happened."""
        return kind(f"{self.where}: {message}", secret_id=self.secret_arn, step=self.step)

    def pending(self) -> DbSecret:
        pending = self.store.get(AWSPENDING, self.event.token)
        if pending is None:
            raise RotationStateError(
                f"{self.where}: version {self.event.token!r} has no AWSPENDING value; run "
                "createSecret for this token first",
                secret_id=self.secret_arn,
                step=self.step,
            )
        return pending


def create_secret(ctx: StepContext) -> str:
    current = ctx.store.current()  # validates AWSCURRENT: JSON, keys, engine
    if ctx.store.get(AWSPENDING, ctx.event.token) is not None:
        return "AWSPENDING already exists"
    username = ctx.strategy.pending_username(current, secret_id=ctx.secret_arn)
    password = ctx.store.random_password(ctx.settings.password_policy)
    pending = current.with_changes(username=username, password=password)
    ctx.strategy.check_pending(ctx, current, pending)  # never store a pending value it refuses
    if ctx.store.put_pending(pending, ctx.event.token):
        return "AWSPENDING created"
    return "AWSPENDING created by a concurrent invocation"


def set_secret(ctx: StepContext) -> str:
    pending = ctx.pending()
    current = ctx.store.current()
    ctx.strategy.check_pending(ctx, current, pending)
    conn, _ = try_login(pending, ctx.settings)
    if conn is not None:
        conn.close()
        return "AWSPENDING already logs in"
    return ctx.strategy.change_password(ctx, current, pending)


#: (secret ARN, token) pairs whose AWSPENDING testSecret saw log in, in this process: a
#: finishSecret for the same pair needs no second login. Bounded; never holds a secret value.
_PROVEN_MAX = 64
_proven: OrderedDict[tuple[str, str], None] = OrderedDict()
_proven_lock = threading.Lock()


def _remember_proven(arn: str, token: str) -> None:
    with _proven_lock:
        _proven[(arn, token)] = None
        _proven.move_to_end((arn, token))
        while len(_proven) > _PROVEN_MAX:
            _proven.popitem(last=False)


def _was_proven(arn: str, token: str) -> bool:
    with _proven_lock:
        return (arn, token) in _proven


def _forget_proven(arn: str, token: str) -> None:
    with _proven_lock:
        _proven.pop((arn, token), None)


def _login_problem(ctx: StepContext, pending: DbSecret) -> str | None:
    """Why AWSPENDING does not log in as its user (None when it does)."""
    conn, reason = try_login(pending, ctx.settings)
    if conn is None:
        return (
            f"AWSPENDING does not log in to {pending.host}:{pending.port}/"
            f"{pending.dbname} as {pending.username!r}: {reason}"
        )
    with conn:
        try:
            row = conn.execute("SELECT current_user").fetchone()
        except Exception as exc:
            return (
                "logged in with AWSPENDING but a query failed: "
                f"{describe_failure(exc, ctx.store.seen)}"
            )
    if not row or row[0] != pending.username:
        return (
            f"logged in with AWSPENDING as {row[0] if row else None!r}, "
            f"expected {pending.username!r}"
        )
    return None


def test_secret(ctx: StepContext) -> str:
    pending = ctx.pending()
    ctx.strategy.check_pending(ctx, ctx.store.current(), pending)  # same user pair and server
    problem = _login_problem(ctx, pending)
    if problem is not None:
        raise ctx.error(
            TestSecretFailed,
            f"{problem}. setSecret has not taken effect: the rotation stops here and "
            "AWSCURRENT is unchanged",
        )
    _remember_proven(ctx.secret_arn, ctx.event.token)
    return "AWSPENDING logs in"


def finish_secret(ctx: StepContext) -> str:
    token = ctx.event.token
    current_version = ctx.versions.version_of(AWSCURRENT)
    if not _was_proven(ctx.secret_arn, token):
        pending = ctx.pending()
        ctx.strategy.check_pending(ctx, ctx.store.current(), pending)
        problem = _login_problem(ctx, pending)
        if problem is not None:
            raise ctx.error(
                RotationStateError,
                f"{problem}. AWSCURRENT is unchanged (still version {current_version!r}): "
                "finishSecret only promotes a password the database accepts; run setSecret "
                "and testSecret for this token first",
            )
    ctx.store.move_stage(AWSCURRENT, to_version=token, from_version=current_version)
    ctx.store.move_stage(AWSPENDING, to_version=None, from_version=token)
    _forget_proven(ctx.secret_arn, token)
    return "AWSCURRENT moved to the token"


def finish_leftover(ctx: StepContext) -> str | None:
    """For a token that is already AWSCURRENT: take off an AWSPENDING label left behind."""
    if ctx.event.step is RotationStep.FINISH and ctx.versions.has(ctx.event.token, AWSPENDING):
        ctx.store.move_stage(AWSPENDING, to_version=None, from_version=ctx.event.token)
        return "already AWSCURRENT; AWSPENDING label removed"
    return None


STEPS = {
    RotationStep.CREATE: create_secret,
    RotationStep.SET: set_secret,
    RotationStep.TEST: test_secret,
    RotationStep.FINISH: finish_secret,
}
