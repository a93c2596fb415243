"""DbSecret: the RDS secret JSON, parsed and validated, that never shows its password.

Also the names every part of dbcreds (the SDK and the rotation function) uses for the secret:
Secrets Manager's staging labels and the keys of the secret's JSON document.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import MASK, InvalidSecret, raise_clean

__all__ = [
    "AWSCURRENT",
    "AWSPENDING",
    "AWSPREVIOUS",
    "KEY_DBNAME",
    "KEY_ENGINE",
    "KEY_HOST",
    "KEY_MASTERARN",
    "KEY_PASSWORD",
    "KEY_PORT",
    "KEY_SSL",
    "KEY_USERNAME",
    "POSTGRES_ENGINES",
    "STAGES",
    "DbSecret",
]

# -- Secrets Manager's staging labels --------------------------------------------------------

#: the version applications use
AWSCURRENT = "AWSCURRENT"
#: the version a rotation in progress has stored and not yet made current
AWSPENDING = "AWSPENDING"
#: the version that was AWSCURRENT before the last rotation finished
AWSPREVIOUS = "AWSPREVIOUS"
STAGES = (AWSCURRENT, AWSPENDING, AWSPREVIOUS)

# -- the keys of the secret's JSON (the RDS format) -------------------------------------------

KEY_ENGINE = "engine"
KEY_HOST = "host"
KEY_PORT = "port"
KEY_USERNAME = "username"
KEY_PASSWORD = "password"  # noqa: S105 (a key name)
KEY_DBNAME = "dbname"
#: the keys `DbSecret` has fields for; every other key is kept in ``extra``
_KNOWN = (KEY_ENGINE, KEY_HOST, KEY_PORT, KEY_USERNAME, KEY_PASSWORD, KEY_DBNAME)
#: alternating users: the ARN of the master secret whose user clones and updates the roles
KEY_MASTERARN = "masterarn"
#: the TLS the rotation uses to log in: true, false, or an sslmode (see ``rotation.connect``)
KEY_SSL = "ssl"

#: ``engine`` values accepted for a PostgreSQL secret (RDS writes "postgres").
POSTGRES_ENGINES = frozenset({"postgres", "postgresql", "aurora-postgresql"})
_DEFAULT_ENGINE = "postgres"


@dataclass(frozen=True)
class DbSecret:
    """One version of a PostgreSQL secret in the RDS format.

    ``extra`` keeps every other key of the JSON (``masterarn``, ``ssl``, ``dbClusterIdentifier``,
    ...) so that rotation can copy a secret without losing anything.
    """

    username: str
    password: str = field(repr=False)
    host: str
    port: int = 5432
    dbname: str = "postgres"
    engine: str = _DEFAULT_ENGINE
    version_id: str | None = None
    secret_id: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        return (
            f"DbSecret(secret_id={self.secret_id!r}, version_id={self.version_id!r}, "
            f"username={self.username!r}, password={MASK!r}, host={self.host!r}, "
            f"port={self.port}, dbname={self.dbname!r}, engine={self.engine!r})"
        )

    __str__ = __repr__

    @classmethod
    def from_json(
        cls, secret_string: str, *, secret_id: str = "", version_id: str | None = None
    ) -> DbSecret:
        """Parse a SecretString. Raises `InvalidSecret` naming the key at fault, never a value."""
        problem: InvalidSecret | None = None
        try:
            doc = json.loads(secret_string)
        except (TypeError, ValueError):
            problem = InvalidSecret(secret_id, None, "is not JSON")
        except RecursionError:
            problem = InvalidSecret(secret_id, None, "is not JSON dbcreds can read (nested too "
                                    "deeply)")
        if problem is not None:
            # The decoder's message quotes the document: neither chained nor kept as context.
            raise_clean(problem)
        return cls.from_dict(doc, secret_id=secret_id, version_id=version_id)

    @classmethod
    def from_dict(
        cls, doc: Any, *, secret_id: str = "", version_id: str | None = None
    ) -> DbSecret:
        if not isinstance(doc, dict):
            raise InvalidSecret(secret_id, None, f"is a JSON {_json_type(doc)}, not an object")

        def text(key: str, *, required: bool, default: str = "") -> str:
            value = doc.get(key)
            if value is None:
                if required:
                    raise InvalidSecret(secret_id, key, "is missing")
                return default
            if not isinstance(value, str):
                raise InvalidSecret(secret_id, key, f"must be a string, not {_json_type(value)}")
            if not value:
                raise InvalidSecret(secret_id, key, "is empty")
            return value

        engine = text(KEY_ENGINE, required=False, default=_DEFAULT_ENGINE)
        if engine not in POSTGRES_ENGINES:
            raise InvalidSecret(
                secret_id, KEY_ENGINE, f"is not a PostgreSQL engine (expected one of "
                f"{', '.join(sorted(POSTGRES_ENGINES))})"
            )
        return cls(
            username=text(KEY_USERNAME, required=True),
            password=text(KEY_PASSWORD, required=True),
            host=text(KEY_HOST, required=True),
            port=_port(doc.get(KEY_PORT), secret_id),
            dbname=text(KEY_DBNAME, required=False, default="postgres"),
            engine=engine,
            version_id=version_id,
            secret_id=secret_id,
            extra={k: v for k, v in doc.items() if k not in _KNOWN},
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (every extra key kept), as stored in Secrets Manager."""
        doc: dict[str, Any] = dict(self.extra)
        doc.update({
            KEY_ENGINE: self.engine,
            KEY_HOST: self.host,
            KEY_PORT: self.port,
            KEY_USERNAME: self.username,
            KEY_PASSWORD: self.password,
            KEY_DBNAME: self.dbname,
        })
        return doc

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def with_changes(self, **changes: Any) -> DbSecret:
        """A copy with some fields replaced (used by rotation: new password, other user)."""
        return replace(self, **changes)

    def same_login(self, other: DbSecret | None) -> bool:
        """True when *other* would log in exactly as this one does."""
        return other is not None and (
            (self.username, self.password, self.host, self.port, self.dbname)
            == (other.username, other.password, other.host, other.port, other.dbname)
        )

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``psycopg.connect``."""
        return {
            "host": self.host,
            "port": self.port,
            "dbname": self.dbname,
            "user": self.username,
            "password": self.password,
        }


def _port(value: Any, secret_id: str) -> int:
    """A JSON integer or a string of ASCII digits, 1-65535 (the value is never quoted)."""
    if value is None:
        return 5432
    if isinstance(value, bool):
        raise InvalidSecret(secret_id, KEY_PORT, "must be a number, not a boolean")
    if isinstance(value, int):
        port = value
    elif isinstance(value, str) and _ascii_digits(value.strip()):
        digits = value.strip().lstrip("0")
        port = int(digits) if len(digits) <= 5 else 0
    else:
        # floats (5432.5, 5432.0), "١٢٣" (str.isdigit() says yes), "+5432", "5_432", ...
        raise InvalidSecret(secret_id, KEY_PORT, "must be an integer or a string of ASCII digits")
    if not 0 < port < 65536:
        raise InvalidSecret(secret_id, KEY_PORT, "is out of range 1-65535")
    return port


def _ascii_digits(text: str) -> bool:
    return bool(text) and text.isascii() and text.isdigit()


def _json_type(value: Any) -> str:
    return {
        dict: "object", list: "array", str: "string", int: "number", float: "number",
        bool: "boolean", type(None): "null",
    }.get(type(value), type(value).__name__)
