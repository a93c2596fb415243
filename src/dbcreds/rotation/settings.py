"""Configuration of the rotation Lambda, read from its environment (AWS Lambda convention).

=============================  ===============================================================
``ROTATION_STRATEGY``          ``single-user`` (default) or ``alternating-users``
``PASSWORD_LENGTH``            GetRandomPassword ``PasswordLength`` (default 32)
``EXCLUDE_CHARACTERS``         GetRandomPassword ``ExcludeCharacters`` (default ``:/@"'\\``:
                               characters that break URLs, pgpass, pg_hba or shell quoting)
``EXCLUDE_NUMBERS`` ...        ``EXCLUDE_NUMBERS``, ``EXCLUDE_PUNCTUATION``, ``EXCLUDE_UPPERCASE``,
                               ``EXCLUDE_LOWERCASE``, ``INCLUDE_SPACE``,
                               ``REQUIRE_EACH_INCLUDED_TYPE``: booleans (``true``/``false``)
``DBCREDS_ROTATION_SSLMODE``   ``verify-full``, ``verify-ca``, ``require`` or ``disable``;
                               overrides the secret's ``ssl`` key
``DBCREDS_ROTATION_SSLROOTCERT``  path of the CA bundle for verify-full/verify-ca (the RDS
                               global bundle packaged with the function), or ``system``
``DBCREDS_ROTATION_CONNECT_TIMEOUT``  seconds for each database login attempt (default 5)
``ROTATION_FAILURE_TOPIC_ARN`` SNS topic notified when a step fails (optional)
``LOG_LEVEL``                  level of the ``dbcreds.rotation`` logger in the Lambda (INFO)
=============================  ===============================================================

Pure: `RotationSettings.from_env()` only reads a mapping; a bad value is a `ConfigurationError`
naming the variable.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigurationError

__all__ = ["DEFAULT_EXCLUDE_CHARACTERS", "RotationSettings", "Strategy"]

DEFAULT_PASSWORD_LENGTH = 32
DEFAULT_EXCLUDE_CHARACTERS = ":/@\"'\\"
_MAX_PASSWORD_LENGTH = 4096  # GetRandomPassword's own limit

#: environment variable -> GetRandomPassword parameter, for the boolean switches
_SWITCHES = {
    "EXCLUDE_NUMBERS": "ExcludeNumbers",
    "EXCLUDE_PUNCTUATION": "ExcludePunctuation",
    "EXCLUDE_UPPERCASE": "ExcludeUppercase",
    "EXCLUDE_LOWERCASE": "ExcludeLowercase",
    "INCLUDE_SPACE": "IncludeSpace",
    "REQUIRE_EACH_INCLUDED_TYPE": "RequireEachIncludedType",
}
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})

SSLMODES = ("disable", "require", "verify-ca", "verify-full")


class Strategy(str, enum.Enum):
    SINGLE_USER = "single-user"
    ALTERNATING_USERS = "alternating-users"


@dataclass(frozen=True)
class RotationSettings:
    strategy: Strategy = Strategy.SINGLE_USER
    #: keyword arguments for GetRandomPassword
    password_policy: Mapping[str, Any] = field(
        default_factory=lambda: {
            "PasswordLength": DEFAULT_PASSWORD_LENGTH,
            "ExcludeCharacters": DEFAULT_EXCLUDE_CHARACTERS,
        }
    )
    sslmode: str | None = None
    sslrootcert: str | None = None
    connect_timeout: int = 5
    failure_topic_arn: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RotationSettings:
        env = os.environ if env is None else env

        raw_strategy = env.get("ROTATION_STRATEGY", "").strip().lower() or "single-user"
        try:
            strategy = Strategy(raw_strategy)
        except ValueError:
            raise ConfigurationError(
                f"ROTATION_STRATEGY={raw_strategy!r} is not a strategy: use "
                f"{' or '.join(s.value for s in Strategy)}"
            ) from None

        policy: dict[str, Any] = {
            "PasswordLength": _integer(
                env, "PASSWORD_LENGTH", DEFAULT_PASSWORD_LENGTH, 1, _MAX_PASSWORD_LENGTH
            )
        }
        exclude = env.get("EXCLUDE_CHARACTERS", DEFAULT_EXCLUDE_CHARACTERS)
        if exclude:  # set but empty: exclude nothing
            policy["ExcludeCharacters"] = exclude
        for name, parameter in _SWITCHES.items():
            value = _boolean(env, name)
            if value is not None:
                policy[parameter] = value

        sslmode = env.get("DBCREDS_ROTATION_SSLMODE", "").strip().lower() or None
        if sslmode is not None and sslmode not in SSLMODES:
            raise ConfigurationError(
                f"DBCREDS_ROTATION_SSLMODE={sslmode!r} is not allowed: use one of "
                f"{', '.join(SSLMODES)} (prefer/allow could fall back to plaintext silently)"
            )
        return cls(
            strategy=strategy,
            password_policy=policy,
            sslmode=sslmode,
            sslrootcert=env.get("DBCREDS_ROTATION_SSLROOTCERT", "").strip() or None,
            connect_timeout=_integer(env, "DBCREDS_ROTATION_CONNECT_TIMEOUT", 5, 1, 300),
            failure_topic_arn=env.get("ROTATION_FAILURE_TOPIC_ARN", "").strip() or None,
        )


def _integer(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not an integer") from None
    if not low <= value <= high:
        raise ConfigurationError(f"{name}={value} is out of range {low}-{high}")
    return value


def _boolean(env: Mapping[str, str], name: str) -> bool | None:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return None
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ConfigurationError(f"{name}={raw!r} is not a boolean: use true or false")
