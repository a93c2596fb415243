"""Configuration of the rotation Lambda, read from its environment (AWS Lambda convention).

=============================  ===============================================================
``ROTATION_STRATEGY``          ``single-user`` (default) or ``alternating-users``
``PASSWORD_LENGTH``            GetRandomPassword ``PasswordLength`` (default 32)
``EXCLUDE_CHARACTERS``         GetRandomPassword ``ExcludeCharacters`` (default ``:/@"'\\``:
                               characters that break URLs, pgpass, pg_hba or shell quoting)
``EXCLUDE_NUMBERS`` ...        ``EXCLUDE_NUMBERS``, ``EXCLUDE_PUNCTUATION``, ``EXCLUDE_UPPERCASE``,
                               ``EXCLUDE_LOWERCASE``, ``INCLUDE_SPACE``,
                               ``REQUIRE_EACH_INCLUDED_TYPE``: booleans (``true``/``false``,
                               ``1``/``0``, ``yes``/``no``, ``on``/``off``)
``DBCREDS_ROTATION_SSLMODE``   ``verify-full``, ``verify-ca``, ``require`` or ``disable``;
                               overrides the secret's ``ssl`` key
``DBCREDS_ROTATION_SSLROOTCERT``  path of the CA bundle for verify-full/verify-ca (the RDS
                               global bundle packaged with the function), or ``system``
``DBCREDS_ROTATION_CONNECT_TIMEOUT``  seconds for each database login attempt (default 5)
``ROTATION_FAILURE_TOPIC_ARN`` SNS topic notified when a step fails (optional)
``DBCREDS_ROTATION_MASTER_SECRET_ARN``  alternating-users: the only master secret the
                               secrets' ``masterarn`` may name (the template sets it)
``LOG_LEVEL``                  level of the ``dbcreds.rotation`` logger in the Lambda: DEBUG,
                               INFO (default), WARNING, ERROR or CRITICAL
=============================  ===============================================================

Pure: `RotationSettings.from_env()` only reads a mapping; a bad value is a `ConfigurationError`
naming the variable and never showing the value (the rules of ``dbcreds._env``: ASCII digits,
in range, no silent default). The handler reports it like any failed step (log line, SNS).
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import _env
from .._env import LOG_LEVELS, SSLMODES

__all__ = [
    "DEFAULT_EXCLUDE_CHARACTERS",
    "ENVIRONMENT",
    "LOG_LEVELS",
    "SSLMODES",
    "RotationSettings",
    "Strategy",
]

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

#: every environment variable `RotationSettings.from_env` reads (the table above)
ENVIRONMENT: tuple[str, ...] = (
    "ROTATION_STRATEGY",
    "PASSWORD_LENGTH",
    "EXCLUDE_CHARACTERS",
    *_SWITCHES,
    "DBCREDS_ROTATION_SSLMODE",
    "DBCREDS_ROTATION_SSLROOTCERT",
    "DBCREDS_ROTATION_CONNECT_TIMEOUT",
    "ROTATION_FAILURE_TOPIC_ARN",
    "LOG_LEVEL",
    "DBCREDS_ROTATION_MASTER_SECRET_ARN",
)


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
    #: level of the ``dbcreds.rotation`` logger in the Lambda (``LOG_LEVEL``)
    log_level: str = "INFO"
    #: the only master secret a secret's ``masterarn`` may name (None: any the role can read)
    master_secret_arn: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RotationSettings:
        env = os.environ if env is None else env
        strategy = Strategy(
            _env.choice(env, "ROTATION_STRATEGY", [s.value for s in Strategy],
                        Strategy.SINGLE_USER.value)
        )
        policy: dict[str, Any] = {
            "PasswordLength": _env.number(env, "PASSWORD_LENGTH", DEFAULT_PASSWORD_LENGTH,
                                          integer=True, low=1, high=_MAX_PASSWORD_LENGTH)
        }
        exclude = env.get("EXCLUDE_CHARACTERS", DEFAULT_EXCLUDE_CHARACTERS)
        if exclude:  # set but empty: exclude nothing
            policy["ExcludeCharacters"] = exclude
        for name, parameter in _SWITCHES.items():
            value = _env.boolean(env, name, None)
            if value is not None:
                policy[parameter] = value
        return cls(
            strategy=strategy,
            password_policy=policy,
            sslmode=_env.sslmode(env, "DBCREDS_ROTATION_SSLMODE"),
            sslrootcert=_env.text(env, "DBCREDS_ROTATION_SSLROOTCERT"),
            connect_timeout=_env.number(env, "DBCREDS_ROTATION_CONNECT_TIMEOUT", 5,
                                        integer=True, low=1, high=300),
            failure_topic_arn=_env.text(env, "ROTATION_FAILURE_TOPIC_ARN"),
            log_level=_env.choice(env, "LOG_LEVEL", LOG_LEVELS, "INFO"),
            master_secret_arn=_env.text(env, "DBCREDS_ROTATION_MASTER_SECRET_ARN"),
        )
