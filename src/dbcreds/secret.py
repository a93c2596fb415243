"""DbSecret: the RDS secret JSON, parsed and validated, that never shows its password.

Also the names every part of dbcreds (the SDK and the rotation function) uses for the secret:
Secrets Manager's staging labels and the keys of the secret's JSON document.

**Formats.** The secret is a JSON object in the RDS format (``engine``, ``host``, ``port``,
``username``, ``password``, ``dbname``). Only ``username`` and ``password`` are required: an
RDS-managed master secret (``manage_master_user_password``) holds just those two, and the
host, port and database then come from configuration (``DBCREDS_HOST`` ..., or ``host=``);
``port`` defaults to 5432 and ``dbname`` to ``postgres``. A secret whose keys have other names
is read through a key mapping (`SECRET_FIELDS` -> the secret's key, ``DBCREDS_SECRET_KEYS``).
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
    "SECRET_FIELDS",
    "STAGES",
    "DbSecret",
    "check_key_map",
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
#: the keys `DbSecret` has fields for (each field is named after its key in the RDS format);
#: every other key is kept in ``extra``. A key mapping renames them (`check_key_map`).
SECRET_FIELDS = (KEY_ENGINE, KEY_HOST, KEY_PORT, KEY_USERNAME, KEY_PASSWORD, KEY_DBNAME)
#: alternating users: the ARN of the master secret whose user clones and updates the roles
KEY_MASTERARN = "masterarn"
#: the TLS the rotation uses to log in: true, false, or an sslmode (see ``rotation.connect``)
KEY_SSL = "ssl"

#: ``engine`` values accepted for a PostgreSQL secret (RDS writes "postgres").
POSTGRES_ENGINES = frozenset({"postgres", "postgresql", "aurora-postgresql"})
_DEFAULT_ENGINE = "postgres"


def check_key_map(keys: Mapping[str, str], source: str = "the key mapping") -> dict[str, str]:
    """A mapping of `SECRET_FIELDS` to the names of the secret's keys, checked: every field
    known, every key a non-empty string, no key used twice. Raises `ValueError` naming the
    problem (key names are not secret)."""
    mapping = dict(keys)
    unknown = sorted(set(mapping) - set(SECRET_FIELDS))
    if unknown:
        raise ValueError(
            f"{source}: {', '.join(map(repr, unknown))} is not a secret field (the fields are "
            f"{', '.join(SECRET_FIELDS)})"
        )
    for field_name, key in mapping.items():
        if not isinstance(key, str) or not key.strip():
            raise ValueError(f"{source}: the key for {field_name!r} must be a non-empty string")
    used = [mapping.get(f, f) for f in SECRET_FIELDS]
    twice = sorted({k for k in used if used.count(k) > 1})
    if twice:
        raise ValueError(f"{source}: key {twice[0]!r} would be read for two fields")
    return {f: k.strip() for f, k in mapping.items() if k.strip() != f}


@dataclass(frozen=True)
class DbSecret:
    """One version of a PostgreSQL secret in the RDS format.

    ``host`` is None when the secret does not name one (an RDS-managed master secret: the
    host comes from configuration). ``extra`` keeps every other key of the JSON
    (``masterarn``, ``ssl``, ``dbClusterIdentifier``, ...) so that rotation can copy a secret
    without losing anything.
    """

    username: str
    password: str = field(repr=False)
    host: str | None
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
        cls, secret_string: str, *, secret_id: str = "", version_id: str | None = None,
        keys: Mapping[str, str] | None = None,
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
        return cls.from_dict(doc, secret_id=secret_id, version_id=version_id, keys=keys)

    @classmethod
    def from_dict(
        cls, doc: Any, *, secret_id: str = "", version_id: str | None = None,
        keys: Mapping[str, str] | None = None,
    ) -> DbSecret:
        """Parse the secret's JSON object. *keys* maps fields to the secret's own key names
        (`check_key_map`; e.g. ``{"username": "user"}``)."""
        if not isinstance(doc, dict):
            raise InvalidSecret(secret_id, None, f"is a JSON {_json_type(doc)}, not an object")
        names = dict(keys or {})

        def key_of(name: str) -> str:
            return names.get(name, name)

        def text(name: str, *, required: bool, default: str = "") -> str:
            key = key_of(name)
            value = doc.get(key)
            if value is None:
                if required:
                    mapped = f" (the key mapping's name for {name})" if key != name else ""
                    raise InvalidSecret(
                        secret_id, key, f"is missing{mapped}: the secret itself must hold the "
                        f"{name}, which no configuration supplies"
                    )
                return default
            if not isinstance(value, str):
                raise InvalidSecret(secret_id, key, f"must be a string, not {_json_type(value)}")
            if not value:
                raise InvalidSecret(secret_id, key, "is empty")
            return value

        engine = text(KEY_ENGINE, required=False, default=_DEFAULT_ENGINE)
        if engine not in POSTGRES_ENGINES:
            raise InvalidSecret(
                secret_id, key_of(KEY_ENGINE), f"is not a PostgreSQL engine (expected one of "
                f"{', '.join(sorted(POSTGRES_ENGINES))})"
            )
        known = {key_of(name) for name in SECRET_FIELDS}
        return cls(
            username=text(KEY_USERNAME, required=True),
            password=text(KEY_PASSWORD, required=True),
            host=text(KEY_HOST, required=False) or None,
            port=_port(doc.get(key_of(KEY_PORT)), secret_id, key_of(KEY_PORT)),
            dbname=text(KEY_DBNAME, required=False, default="postgres"),
            engine=engine,
            version_id=version_id,
            secret_id=secret_id,
            extra={k: v for k, v in doc.items() if k not in known},
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON document in the RDS format (every extra key kept), as stored in Secrets
        Manager; without ``host`` when the secret has none."""
        doc: dict[str, Any] = dict(self.extra)
        doc.update({
            KEY_ENGINE: self.engine,
            KEY_HOST: self.host,
            KEY_PORT: self.port,
            KEY_USERNAME: self.username,
            KEY_PASSWORD: self.password,
            KEY_DBNAME: self.dbname,
        })
        if self.host is None:
            del doc[KEY_HOST]
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
        """Keyword arguments for ``psycopg.connect`` (no ``host`` when the secret has none)."""
        kwargs: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "dbname": self.dbname,
            "user": self.username,
            "password": self.password,
        }
        if self.host is None:
            del kwargs["host"]
        return kwargs


def _port(value: Any, secret_id: str, key: str = KEY_PORT) -> int:
    """A JSON integer or a string of ASCII digits, 1-65535 (the value is never quoted)."""
    if value is None:
        return 5432
    if isinstance(value, bool):
        raise InvalidSecret(secret_id, key, "must be a number, not a boolean")
    if isinstance(value, int):
        port = value
    elif isinstance(value, str) and _ascii_digits(value.strip()):
        digits = value.strip().lstrip("0")
        port = int(digits) if len(digits) <= 5 else 0
    else:
        # floats (5432.5, 5432.0), "١٢٣" (str.isdigit() says yes), "+5432", "5_432", ...
        raise InvalidSecret(secret_id, key, "must be an integer or a string of ASCII digits")
    if not 0 < port < 65536:
        raise InvalidSecret(secret_id, key, "is out of range 1-65535")
    return port


def _ascii_digits(text: str) -> bool:
    return bool(text) and text.isascii() and text.isdigit()


def _json_type(value: Any) -> str:
    return {
        dict: "object", list: "array", str: "string", int: "number", float: "number",
        bool: "boolean", type(None): "null",
    }.get(type(value), type(value).__name__)
