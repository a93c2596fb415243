"""Database connections of the rotation: TLS settings and login attempts.

Rotation always connects to the database host named in the secret, never to a proxy: a proxy
cannot check a password it does not hold yet.

TLS follows the policy of every dbcreds login (``dbcreds.tls``), with no default trust: the
database endpoint's certificate chains to the RDS CA, which no system trust store holds. So:

* ``DBCREDS_ROTATION_SSLROOTCERT`` set (the RDS CA bundle packaged with the function, or
  ``system``): ``verify-full`` against it;
* not set: TLS with SCRAM channel binding (``sslmode=require channel_binding=require``): the
  database must prove, over this TLS session, that it holds the password's SCRAM verifier, so
  no man in the middle learns a password; a server that does not do SCRAM gets nothing;
* ``DBCREDS_ROTATION_SSLMODE`` (``verify-full``, ``verify-ca``, ``require``, ``disable``)
  overrides that; ``disable`` is for local development only and logs a warning at every
  connection.

The secret's own ``ssl`` key (``true``, ``false`` or an sslmode, as some RDS secrets carry)
may only ask for *stronger* TLS than the function's policy: whoever can write the secret must
not be able to turn TLS off for the passwords this function sends. A weaker value is ignored
with a warning; only the operator (the function's environment) can lower TLS.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..errors import InvalidSecret, classify_tls_failure
from ..secret import KEY_SSL, DbSecret
from ..tls import SSLMODES, TlsPolicy, check_hosts, login_tls
from .exceptions import scrub
from .settings import RotationSettings

if TYPE_CHECKING:
    import psycopg

__all__ = ["TlsPolicy", "connect", "describe_failure", "tls_policy", "try_login"]

logger = logging.getLogger("dbcreds.rotation")

APPLICATION_NAME = "dbcreds-rotation"
#: sslmodes from weakest to strongest
_CA_SETTING = "DBCREDS_ROTATION_SSLROOTCERT"
_STRENGTH = {"disable": 0, "require": 1, "verify-ca": 2, "verify-full": 3}


def tls_policy(secret: DbSecret, settings: RotationSettings) -> TlsPolicy:
    """The TLS settings for connecting with *secret* (see the module docstring)."""
    if settings.sslmode:
        return login_tls(
            sslmode=settings.sslmode, sslrootcert=settings.sslrootcert, default_trust=None,
            source="DBCREDS_ROTATION_SSLMODE", ca_setting=_CA_SETTING,
        )
    policy = login_tls(
        sslmode=None, sslrootcert=settings.sslrootcert, default_trust=None,
        source="DBCREDS_ROTATION_SSLROOTCERT" if settings.sslrootcert else "default",
        ca_setting=_CA_SETTING,
    )
    if KEY_SSL not in secret.extra:
        return policy
    asked = _from_secret(secret)
    if _strength(asked) > _strength(policy.sslmode):
        return login_tls(
            sslmode=asked, sslrootcert=settings.sslrootcert, default_trust=None,
            source="the secret's 'ssl' key", ca_setting=_CA_SETTING,
        )
    if _strength(asked) < _strength(policy.sslmode):
        logger.warning(
            "secret %r asks for weaker TLS (its 'ssl' key) than the rotation function's policy "
            "(%s): ignored. Only the function's DBCREDS_ROTATION_SSLMODE can lower TLS",
            secret.secret_id, policy.describe(),
        )
    return policy


def _strength(sslmode: str) -> int:
    return SSLMODES.index(sslmode)  # listed from the weakest to the strongest


def _from_secret(secret: DbSecret) -> str:
    value = secret.extra[KEY_SSL]
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        value = value.strip().lower() == "true"
    if value is True:
        return "require"
    if value is False:
        return "disable"
    if isinstance(value, str) and value.strip().lower() in SSLMODES:
        return value.strip().lower()
    raise InvalidSecret(
        secret.secret_id, KEY_SSL, f"must be true, false or one of {', '.join(SSLMODES)}"
    )


def connect(secret: DbSecret, settings: RotationSettings) -> psycopg.Connection[Any]:
    """An autocommit connection to the database host in *secret*, with *secret*'s login."""
    import psycopg  # deferred: only the steps that touch the database need it

    tls = tls_policy(secret, settings)
    check_hosts(secret.connect_kwargs(), tls)
    if tls.downgrade is not None:
        logger.warning(
            "the rotation's connection to %s:%s: %s", secret.host, secret.port, tls.downgrade
        )
    return psycopg.connect(
        **secret.connect_kwargs(),
        **tls.params,
        connect_timeout=settings.connect_timeout,
        application_name=APPLICATION_NAME,
        autocommit=True,
    )


def describe_failure(exc: BaseException, secrets: Iterable[str | None]) -> str:
    """A one-line reason for a failed login or query, with every given password masked.

    Masked first, then reshaped: a password with runs of spaces, or one that the cut would
    split, is still masked whole.
    """
    text = " ".join(scrub(str(exc), secrets).split()) or type(exc).__name__
    if len(text) > 300:
        text = text[:297] + "..."
    return text


def try_login(
    secret: DbSecret, settings: RotationSettings
) -> tuple[psycopg.Connection[Any] | None, str]:
    """(connection, "") when *secret* logs in, else (None, why not)."""
    import psycopg

    try:
        return connect(secret, settings), ""
    except (psycopg.Error, OSError) as exc:
        reason = describe_failure(exc, [secret.password])
        hint = classify_tls_failure(exc, _CA_SETTING)  # libpq kept the password: say so
        return None, f"{reason}. {hint}" if hint else reason
