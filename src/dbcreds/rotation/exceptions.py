"""Errors of the rotation Lambda.

Each says which secret and which step failed and what to do; none carries a secret value. Text
that comes from elsewhere (a driver's message) goes through `scrub()` with every password the
step has seen before it is put into an error (``dbcreds.errors.scrub``, shared with the SDK's
``dbcreds check``; re-exported here).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import MASK, DbcredsError, scrub

__all__ = [
    "MASK",
    "InvalidRotationEvent",
    "NoWorkingCredentials",
    "RotationError",
    "RotationNotEnabled",
    "RotationStateError",
    "TestSecretFailed",
    "UnsafeRolePair",
    "scrub",
]


class RotationError(DbcredsError):
    """A rotation step failed. ``secret_id`` and ``step`` say where (either may be empty)."""

    def __init__(self, message: str, *, secret_id: str = "", step: str = "") -> None:
        self.secret_id = secret_id
        self.step = step
        super().__init__(message)


class InvalidRotationEvent(RotationError):
    """The Lambda event is not a Secrets Manager rotation event (a key missing, unknown step)."""


class RotationNotEnabled(RotationError):
    """DescribeSecret says rotation is not enabled on the secret."""


class RotationStateError(RotationError):
    """The token is not a version of the secret, or not the AWSPENDING one, or labels disagree."""


class NoWorkingCredentials(RotationError):
    """setSecret found no credentials that log in to change the password.

    ``attempts`` lists ``(label, reason)`` for each credential tried (reasons are scrubbed).
    """

    def __init__(
        self,
        *,
        secret_id: str,
        step: str,
        target: str,
        attempts: Sequence[tuple[str, str]],
    ) -> None:
        self.attempts = list(attempts)
        tried = "; ".join(f"{label}: {reason}" for label, reason in attempts) or "nothing to try"
        super().__init__(
            f"{step} for secret {secret_id!r}: no credentials could log in to {target} to "
            f"change the password (tried {tried}). Restore a working password in AWSCURRENT "
            "(or fix the database's pg_hba / network) and rotate again",
            secret_id=secret_id,
            step=step,
        )


class TestSecretFailed(RotationError):
    """testSecret could not log in with AWSPENDING (or its query failed)."""

    __test__ = False  # not a pytest test class, whatever its name says


class UnsafeRolePair(RotationError):
    """The alternating-users strategy refused its pair of roles: one of them is (or could
    become) privileged, is the master user, or does not name a role safely (`guard`).

    Raised before anything is changed in the database or in the secret.
    """
