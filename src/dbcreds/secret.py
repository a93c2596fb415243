"""DbSecret: the RDS secret JSON, parsed and validated, that never shows its password."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import MASK, InvalidSecret, raise_clean

__all__ = ["POSTGRES_ENGINES", "DbSecret"]

#: ``engine`` values accepted for a PostgreSQL secret (RDS writes "postgres").
POSTGRES_ENGINES = frozenset({"postgres", "postgresql", "aurora-postgresql"})

_KNOWN = ("engine", "host", "port", "username", "password", "dbname")


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
    engine: str = "postgres"
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

        engine = text("engine", required=False, default="postgres")
        if engine not in POSTGRES_ENGINES:
            raise InvalidSecret(
                secret_id, "engine", f"is not a PostgreSQL engine (expected one of "
                f"{', '.join(sorted(POSTGRES_ENGINES))})"
            )
        return cls(
            username=text("username", required=True),
            password=text("password", required=True),
            host=text("host", required=True),
            port=_port(doc.get("port"), secret_id),
            dbname=text("dbname", required=False, default="postgres"),
            engine=engine,
            version_id=version_id,
            secret_id=secret_id,
            extra={k: v for k, v in doc.items() if k not in _KNOWN},
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (every extra key kept), as stored in Secrets Manager."""
        doc: dict[str, Any] = dict(self.extra)
        doc.update(
            engine=self.engine,
            host=self.host,
            port=self.port,
            username=self.username,
            password=self.password,
            dbname=self.dbname,
        )
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
        raise InvalidSecret(secret_id, "port", "must be a number, not a boolean")
    if isinstance(value, int):
        port = value
    elif isinstance(value, str) and _ascii_digits(value.strip()):
        digits = value.strip().lstrip("0")
        port = int(digits) if len(digits) <= 5 else 0
    else:
        # floats (5432.5, 5432.0), "١٢٣" (str.isdigit() says yes), "+5432", "5_432", ...
        raise InvalidSecret(secret_id, "port", "must be an integer or a string of ASCII digits")
    if not 0 < port < 65536:
        raise InvalidSecret(secret_id, "port", "is out of range 1-65535")
    return port


def _ascii_digits(text: str) -> bool:
    return bool(text) and text.isascii() and text.isdigit()


def _json_type(value: Any) -> str:
    return {
        dict: "object", list: "array", str: "string", int: "number", float: "number",
        bool: "boolean", type(None): "null",
    }.get(type(value), type(value).__name__)
