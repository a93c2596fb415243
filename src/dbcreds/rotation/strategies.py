"""Rotation strategies: who the pending user is, and how its password gets changed.

* **single-user** (default, the seed's choice): one role; setSecret logs in as that role with
  AWSCURRENT (falling back to AWSPREVIOUS) and changes its own password. Between setSecret and
  finishSecret, AWSCURRENT holds a password the database no longer accepts: clients get through
  that window with AWSPENDING (the SDK does this).
* **alternating-users**: two roles, ``<user>`` and ``<user>_clone``; each rotation changes the
  password of the one *not* in AWSCURRENT, logged in with the master secret named by the
  secret's ``masterarn`` key. AWSCURRENT never stops working, and AWSPREVIOUS keeps working
  until the next rotation. The clone is created on the first rotation, WITH LOGIN and a member
  of the original role, so it has the same privileges.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from ..secret import DbSecret
from .connect import describe_failure, try_login
from .events import AWSCURRENT, AWSPREVIOUS
from .exceptions import NoWorkingCredentials, RotationError
from .password import create_login_role, ensure_member, role_exists, set_password
from .settings import Strategy

if TYPE_CHECKING:
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

#: PostgreSQL truncates longer identifiers (NAMEDATALEN 64, in bytes): a truncated clone name
#: could name another role, so a name that does not fit is an error, never truncated.
MAX_ROLE_NAME_BYTES = 63
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
        attempts: list[tuple[str, str]] = []
        candidates: list[tuple[str, DbSecret | None]] = [(AWSCURRENT, current)]
        previous = ctx.store.get(AWSPREVIOUS)
        if previous is None:
            attempts.append((AWSPREVIOUS, "no such version"))
        elif previous.username != pending.username or not _same_server(previous, pending):
            attempts.append((AWSPREVIOUS, "skipped: it is for another user or server"))
        else:
            candidates.append((AWSPREVIOUS, previous))
        for label, secret in candidates:
            assert secret is not None
            conn, reason = try_login(secret, ctx.settings)
            if conn is None:
                attempts.append((label, reason))
                continue
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
        raise NoWorkingCredentials(
            secret_id=ctx.secret_arn,
            step=ctx.step,
            target=f"{_target(pending)} as {pending.username!r}",
            attempts=sorted(attempts, key=lambda a: a[0] != AWSCURRENT),
        )


def alternate_username(username: str, *, secret_id: str = "") -> str:
    """The other user of the pair ``<user>`` / ``<user>_clone``."""
    if username.endswith(CLONE_SUFFIX) and len(username) > len(CLONE_SUFFIX):
        return username[: -len(CLONE_SUFFIX)]
    clone = username + CLONE_SUFFIX
    if len(clone.encode("utf-8")) > MAX_ROLE_NAME_BYTES:
        raise RotationError(
            f"secret {secret_id!r}: user {username!r} is too long for the alternating-users "
            f"strategy: {clone!r} would exceed PostgreSQL's {MAX_ROLE_NAME_BYTES}-byte limit "
            "on role names (and a truncated name could be another role); use a shorter user "
            "name or the single-user strategy",
            secret_id=secret_id,
        )
    return clone


class AlternatingUsers:
    strategy = Strategy.ALTERNATING_USERS

    def pending_username(self, current: DbSecret, *, secret_id: str) -> str:
        return alternate_username(current.username, secret_id=secret_id)

    def check_pending(self, ctx: StepContext, current: DbSecret, pending: DbSecret) -> None:
        expected = alternate_username(current.username, secret_id=ctx.secret_arn)
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

    def _master(self, ctx: StepContext, current: DbSecret, pending: DbSecret) -> DbSecret:
        arn = pending.extra.get("masterarn") or current.extra.get("masterarn")
        if not isinstance(arn, str) or not arn:
            raise ctx.error(
                RotationError,
                "the alternating-users strategy needs a 'masterarn' key in the "
                "secret naming the secret of a user that can create roles and change "
                "passwords",
            )
        master = ctx.store.for_secret(arn).current()
        if not _same_server(master, pending):
            raise ctx.error(
                RotationError,
                f"the master secret {arn!r} is for server "
                f"{master.host}:{master.port}, not {pending.host}:{pending.port}",
            )
        return master

    def change_password(self, ctx: StepContext, current: DbSecret, pending: DbSecret) -> str:
        master = self._master(ctx, current, pending)
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
            except RotationError:
                raise
            except Exception as exc:
                raise ctx.error(
                    RotationError,
                    f"changing role {pending.username!r} on {_target(pending)} "
                    f"as {master.username!r} failed: {describe_failure(exc, ctx.store.seen)}",
                ) from None
        return (
            f"role {pending.username!r} created as a member of {current.username!r}"
            if created
            else f"password of {pending.username!r} changed with the master secret"
        )


def strategy_for(strategy: Strategy) -> RotationStrategy:
    return AlternatingUsers() if strategy is Strategy.ALTERNATING_USERS else SingleUser()
