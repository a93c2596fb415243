"""Rotation strategies: who the pending user is, and how its password gets changed.

* **single-user** (default, the seed's choice): one role; setSecret logs in as that role with
  AWSCURRENT (falling back to AWSPREVIOUS) and changes its own password. Between setSecret and
  finishSecret, AWSCURRENT holds a password the database no longer accepts: clients get through
  that window with AWSPENDING (the SDK does this).
* **alternating-users**: two roles, ``<user>`` and ``<user>_clone``; each rotation changes the
  password of the one *not* in AWSCURRENT, logged in with the master secret named by the
  secret's ``masterarn`` key. AWSCURRENT never stops working, and AWSPREVIOUS keeps working
  until the next rotation. The clone is created on the first rotation, WITH LOGIN and a member
  of the original role, so it has the same privileges. Because the master changes whatever
  roles the secret names, the pair is refused (`UnsafeRolePair`, before any change) when
  either role is the master, a ``pg_*`` name, too long for PostgreSQL, or is or can become
  privileged: the rules and queries are in `guard`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from ..errors import InvalidSecret
from ..secret import AWSCURRENT, AWSPREVIOUS, KEY_MASTERARN, DbSecret
from .connect import describe_failure, try_login
from .exceptions import NoWorkingCredentials, RotationError, UnsafeRolePair
from .guard import MAX_ROLE_NAME_BYTES, name_violations, privilege_violations
from .password import create_login_role, ensure_member, is_member, role_exists, set_password
from .settings import Strategy

if TYPE_CHECKING:
    import psycopg

    from .steps import StepContext

__all__ = [
    "CLONE_SUFFIX",
    "MAX_ROLE_NAME_BYTES",
    "AlternatingUsers",
    "RotationStrategy",
    "SingleUser",
    "alternate_username",
    "strategy_for",
]

CLONE_SUFFIX = "_clone"


class RotationStrategy(Protocol):
    strategy: Strategy

    def pending_username(self, current: DbSecret, *, secret_id: str) -> str:
        """The username that AWSPENDING gets in createSecret."""

    def check_pending(self, ctx: StepContext, current: DbSecret, pending: DbSecret) -> None:
        """Refuse a pending secret that this strategy must not apply (other user or host)."""

    def change_password(self, ctx: StepContext, current: DbSecret, pending: DbSecret) -> str:
        """Make the database accept *pending*; return what was done."""


def _target(secret: DbSecret) -> str:
    return f"{secret.host}:{secret.port}/{secret.dbname}"


def _same_server(a: DbSecret, b: DbSecret) -> bool:
    return (a.host, a.port) == (b.host, b.port)


class SingleUser:
    strategy = Strategy.SINGLE_USER

    def pending_username(self, current: DbSecret, *, secret_id: str) -> str:
        return current.username

    def check_pending(self, ctx: StepContext, current: DbSecret, pending: DbSecret) -> None:
        if pending.username != current.username:
            raise ctx.error(
                RotationError,
                f"AWSPENDING is for user {pending.username!r} but AWSCURRENT is "
                f"for {current.username!r}; the single-user strategy only changes the "
                "password of the current user (set ROTATION_STRATEGY=alternating-users for a "
                "user pair)",
            )
        if not _same_server(pending, current):
            raise ctx.error(
                RotationError,
                f"AWSPENDING is for server {pending.host}:{pending.port} but "
                f"AWSCURRENT is for {current.host}:{current.port}; rotation never changes a "
                "password on another server",
            )

    def change_password(self, ctx: StepContext, current: DbSecret, pending: DbSecret) -> str:
        logged_in, attempts = _own_login(ctx, current, users=(pending.username,))
        if logged_in is None:
            raise NoWorkingCredentials(
                secret_id=ctx.secret_arn,
                step=ctx.step,
                target=f"{_target(pending)} as {pending.username!r}",
                attempts=sorted(attempts, key=lambda a: a[0] != AWSCURRENT),
            )
        label, conn = logged_in
        with conn:
            try:
                set_password(conn, pending.username, pending.password)
            except Exception as exc:
                raise ctx.error(
                    RotationError,
                    f"changing the password of {pending.username!r} on "
                    f"{_target(pending)} failed: {describe_failure(exc, ctx.store.seen)}",
                ) from None
        return f"password changed, logged in with {label}"


def _own_login(
    ctx: StepContext, current: DbSecret, *, users: tuple[str, ...]
) -> tuple[tuple[str, psycopg.Connection[Any]] | None, list[tuple[str, str]]]:
    """The secret's own credentials that log in: AWSCURRENT, else AWSPREVIOUS when it is for
    one of *users* on AWSCURRENT's server. ``((label, connection) or None, why each other
    one did not)``; the caller closes the connection."""
    attempts: list[tuple[str, str]] = []
    candidates = [(AWSCURRENT, current)]
    previous = ctx.store.get(AWSPREVIOUS)
    if previous is None:
        attempts.append((AWSPREVIOUS, "no such version"))
    elif previous.username not in users or not _same_server(previous, current):
        attempts.append((AWSPREVIOUS, "skipped: it is for another user or server"))
    else:
        candidates.append((AWSPREVIOUS, previous))
    for label, secret in candidates:
        conn, reason = try_login(secret, ctx.settings)
        if conn is not None:
            return (label, conn), attempts
        attempts.append((label, reason))
    return None, attempts


def _other_of(username: str) -> str:
    if username.endswith(CLONE_SUFFIX) and len(username) > len(CLONE_SUFFIX):
        return username[: -len(CLONE_SUFFIX)]
    return username + CLONE_SUFFIX


def _refusal(current: str, pending: str, violations: list[str]) -> str:
    return (
        f"the alternating-users strategy refuses the role pair {current!r} / {pending!r}: "
        f"{'; '.join(violations)}. Nothing was changed; give the secret an unprivileged "
        "application user (not the master, not a pg_* role, at most "
        f"{MAX_ROLE_NAME_BYTES - len(CLONE_SUFFIX)} bytes with its clone fitting in "
        f"{MAX_ROLE_NAME_BYTES}) or use the single-user strategy"
    )


def alternate_username(username: str, *, secret_id: str = "") -> str:
    """The other user of the pair ``<user>`` / ``<user>_clone``.

    Raises `UnsafeRolePair` when the pair breaks a name rule of `guard` (the master's name is
    not known here: the strategy checks that one too).
    """
    other = _other_of(username)
    violations = name_violations(username, other)
    if violations:
        prefix = f"secret {secret_id!r}: " if secret_id else ""
        raise UnsafeRolePair(prefix + _refusal(username, other, violations),
                             secret_id=secret_id)
    return other


class AlternatingUsers:
    strategy = Strategy.ALTERNATING_USERS

    def __init__(self) -> None:
        self._masters: dict[str, DbSecret] = {}

    def pending_username(self, current: DbSecret, *, secret_id: str) -> str:
        # Not checked here: createSecret runs check_pending on the pending value before it
        # stores it, with the step's context and the master's name.
        return _other_of(current.username)

    def check_pending(self, ctx: StepContext, current: DbSecret, pending: DbSecret) -> None:
        master = self._master(ctx, current, pending) if self._master_arn(current, pending) else None
        self._refuse_unsafe_names(ctx, current, pending, master)
        expected = _other_of(current.username)
        if pending.username != expected:
            raise ctx.error(
                RotationError,
                f"AWSPENDING is for user {pending.username!r}, not {expected!r}, "
                f"the other user of AWSCURRENT's {current.username!r}",
            )
        if not _same_server(pending, current):
            raise ctx.error(
                RotationError,
                f"AWSPENDING is for server {pending.host}:{pending.port} but "
                f"AWSCURRENT is for {current.host}:{current.port}",
            )

    @staticmethod
    def _refuse_unsafe_names(
        ctx: StepContext, current: DbSecret, pending: DbSecret, master: DbSecret | None
    ) -> None:
        """The name rules of `guard`, for AWSCURRENT's pair and AWSPENDING's user."""
        expected = _other_of(current.username)
        master_name = master.username if master is not None else None
        violations = name_violations(current.username, expected, master_name)
        if pending.username not in (current.username, expected):
            violations += [v for v in name_violations(current.username, pending.username,
                                                      master_name) if v not in violations]
        if violations:
            raise ctx.error(UnsafeRolePair, _refusal(current.username, expected, violations))

    @staticmethod
    def _master_arn(current: DbSecret, pending: DbSecret) -> str | None:
        arn = current.extra.get(KEY_MASTERARN) or pending.extra.get(KEY_MASTERARN)
        return arn if isinstance(arn, str) and arn else None

    def _master(self, ctx: StepContext, current: DbSecret, pending: DbSecret) -> DbSecret:
        named_values = [d.extra.get(KEY_MASTERARN) for d in (current, pending)]
        if any(v is not None and not isinstance(v, str) for v in named_values):
            raise InvalidSecret(ctx.secret_arn, KEY_MASTERARN, "must be a string (a secret ARN)")
        arn = self._master_arn(current, pending)
        named = {a for a in named_values if a}
        if len(named) > 1:  # AWSPENDING is written mid-rotation: it may not pick another master
            raise ctx.error(
                UnsafeRolePair,
                "AWSPENDING names another master secret ('masterarn') than AWSCURRENT; the "
                "master secret of a rotation is the one AWSCURRENT names",
            )
        allowed = ctx.settings.master_secret_arn
        if allowed is not None and arn is not None and arn != allowed:
            raise ctx.error(
                UnsafeRolePair,
                f"the secret's 'masterarn' ({arn!r}) is not the master secret this function is "
                "configured for (DBCREDS_ROTATION_MASTER_SECRET_ARN): a secret's contents may "
                "not choose which credentials the rotation uses",
            )
        if arn is None:
            raise ctx.error(
                RotationError,
                "the alternating-users strategy needs a 'masterarn' key in the "
                "secret naming the secret of a user that can create roles and change "
                "passwords",
            )
        master = self._masters.get(arn)
        if master is None:
            master = self._masters[arn] = ctx.store.for_secret(arn).current()
        if not _same_server(master, pending):
            raise ctx.error(
                RotationError,
                f"the master secret {arn!r} is for server "
                f"{master.host}:{master.port}, not {pending.host}:{pending.port}",
            )
        return master

    def _refuse_unowned(self, ctx: StepContext, current: DbSecret, pending: DbSecret) -> None:
        """The secret must hold working credentials for its pair before the master touches it.

        Otherwise whoever can write the secret could name any role (another application's)
        and have the master reset its password or clone it. AWSCURRENT must log in as its
        user, or AWSPREVIOUS as the other user of the pair (the secret's own last rotation).
        """
        logged_in, attempts = _own_login(
            ctx, current, users=(current.username, pending.username)
        )
        if logged_in is not None:
            logged_in[1].close()
            return
        tried = [f"{label}: {reason}" for label, reason in attempts]
        raise ctx.error(
            UnsafeRolePair,
            f"not-owned: the secret holds no working credentials for {current.username!r} or "
            f"{pending.username!r} ({'; '.join(tried)}); the "
            "alternating-users strategy only changes a pair whose current (or previous) "
            "credentials log in, so a secret cannot name a role it holds no password for. "
            "Nothing was changed",
        )

    def change_password(self, ctx: StepContext, current: DbSecret, pending: DbSecret) -> str:
        master = self._master(ctx, current, pending)
        self._refuse_unsafe_names(ctx, current, pending, master)
        self._refuse_unowned(ctx, current, pending)
        conn, reason = try_login(master, ctx.settings)
        if conn is None:
            raise NoWorkingCredentials(
                secret_id=ctx.secret_arn,
                step=ctx.step,
                target=f"{_target(master)} as the master user {master.username!r}",
                attempts=[(f"master secret {master.secret_id} AWSCURRENT", reason)],
            )
        pending_is_clone = pending.username == current.username + CLONE_SUFFIX
        with conn:
            # Read-only, before any change: neither role may be or become privileged.
            try:
                violations = privilege_violations(
                    conn, [current.username, pending.username], master.username
                )
            except Exception as exc:
                raise ctx.error(
                    RotationError,
                    f"checking roles {current.username!r} and {pending.username!r} on "
                    f"{_target(pending)} as {master.username!r} failed (nothing was changed): "
                    f"{describe_failure(exc, ctx.store.seen)}",
                ) from None
            clone, base = ((pending.username, current.username) if pending_is_clone
                           else (current.username, pending.username))
            if role_exists(conn, clone) and not is_member(conn, clone, base):
                violations.append(
                    f"not-a-pair: role {clone!r} exists but is not a member of {base!r}: it is "
                    "not the clone this strategy made, and its password is not this secret's "
                    "to change"
                )
            if violations:
                raise ctx.error(
                    UnsafeRolePair, _refusal(current.username, pending.username, violations)
                )
            try:
                if role_exists(conn, pending.username):
                    set_password(conn, pending.username, pending.password)
                    if pending_is_clone:
                        ensure_member(conn, pending.username, current.username)
                    return f"password of {pending.username!r} changed with the master secret"
                if not pending_is_clone:
                    raise ctx.error(
                        RotationError,
                        f"role {pending.username!r} does not exist on "
                        f"{_target(pending)}; the alternating-users strategy only creates "
                        "the clone",
                    )
                created = create_login_role(
                    conn, pending.username, pending.password, member_of=current.username
                )
                if not created:  # it appeared after the check: check it on the retry
                    raise ctx.error(
                        RotationError,
                        f"role {pending.username!r} appeared on {_target(pending)} while "
                        "setSecret ran; nothing was changed, and Secrets Manager retries the "
                        "step, which checks the role first",
                    )
            except RotationError:
                raise
            except Exception as exc:
                raise ctx.error(
                    RotationError,
                    f"changing role {pending.username!r} on {_target(pending)} "
                    f"as {master.username!r} failed: {describe_failure(exc, ctx.store.seen)}",
                ) from None
        return f"role {pending.username!r} created as a member of {current.username!r}"


def strategy_for(strategy: Strategy) -> RotationStrategy:
    return AlternatingUsers() if strategy is Strategy.ALTERNATING_USERS else SingleUser()
