"""Database connections of the rotation: TLS settings and login attempts.

Rotation always connects to the database host named in the secret, never to a proxy: a proxy
cannot check a password it does not hold yet (DESIGN.md).

TLS (``sslmode``) comes from, in order: ``DBCREDS_ROTATION_SSLMODE``; the secret's ``ssl`` key
(``true``, ``false`` or an sslmode); else ``verify-full`` when a CA bundle is configured
(``DBCREDS_ROTATION_SSLROOTCERT``), else ``require``. ``prefer``/``allow`` are refused: they fall
back to plaintext without saying so. ``disable`` happens only when configured, and every
connection made that way logs a warning that says who configured it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError, InvalidSecret
from ..secret import DbSecret
from .exceptions import scrub
from .settings import SSLMODES, RotationSettings

if TYPE_CHECKING:
    import psycopg

__all__ = ["TlsPolicy", "connect", "describe_failure", "tls_policy", "try_login"]

logger = logging.getLogger("dbcreds.rotation")

APPLICATION_NAME = "dbcreds-rotation"


@dataclass(frozen=True)
class TlsPolicy:
    sslmode: str
    sslrootcert: str | None
    source: str  # who chose the sslmode (an env var, the secret's key, or the default)

    def kwargs(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sslmode": self.sslmode}
        if self.sslrootcert and self.sslmode.startswith("verify"):
            out["sslrootcert"] = self.sslrootcert
        return out


def tls_policy(secret: DbSecret, settings: RotationSettings) -> TlsPolicy:
    """The TLS settings for connecting with *secret* (see the module docstring)."""
    if settings.sslmode:
        sslmode, source = settings.sslmode, "DBCREDS_ROTATION_SSLMODE"
    elif "ssl" in secret.extra:
        sslmode, source = _from_secret(secret, settings), "the secret's 'ssl' key"
    elif settings.sslrootcert:
        sslmode, source = "verify-full", "default with DBCREDS_ROTATION_SSLROOTCERT"
    else:
        sslmode, source = "require", "default"
    if sslmode.startswith("verify") and not settings.sslrootcert:
        raise ConfigurationError(
            f"sslmode {sslmode} (from {source}) needs a CA bundle: set "
            "DBCREDS_ROTATION_SSLROOTCERT to the path of the RDS CA bundle shipped with the "
            "function (or to 'system')"
        )
    return TlsPolicy(sslmode, settings.sslrootcert, source)


def _from_secret(secret: DbSecret, settings: RotationSettings) -> str:
    value = secret.extra["ssl"]
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        value = value.strip().lower() == "true"
    if value is True:
        return "verify-full" if settings.sslrootcert else "require"
    if value is False:
        return "disable"
    if isinstance(value, str) and value.strip().lower() in SSLMODES:
        return value.strip().lower()
    raise InvalidSecret(
        secret.secret_id, "ssl", f"must be true, false or one of {', '.join(SSLMODES)}"
    )


def connect(secret: DbSecret, settings: RotationSettings) -> psycopg.Connection[Any]:
    """An autocommit connection to the database host in *secret*, with *secret*'s login."""
    import psycopg  # deferred: only the steps that touch the database need it

    tls = tls_policy(secret, settings)
    if tls.sslmode == "disable":
        logger.warning(
            "TLS is disabled for the rotation's connection to %s:%s (configured by %s)",
            secret.host, secret.port, tls.source,
        )
    return psycopg.connect(
        **secret.connect_kwargs(),
        **tls.kwargs(),
        connect_timeout=settings.connect_timeout,
        application_name=APPLICATION_NAME,
        autocommit=True,
    )


def describe_failure(exc: BaseException, secrets: Iterable[str | None]) -> str:
    """A one-line reason for a failed login or query, with every given password masked."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if len(text) > 300:
        text = text[:297] + "..."
    return scrub(text, secrets)


def try_login(
    secret: DbSecret, settings: RotationSettings
) -> tuple[psycopg.Connection[Any] | None, str]:
    """(connection, "") when *secret* logs in, else (None, why not)."""
    import psycopg

    try:
        return connect(secret, settings), ""
    except (psycopg.Error, OSError) as exc:
        return None, describe_failure(exc, [secret.password])
