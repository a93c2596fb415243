"""Environment configuration of the default pool behind ``get_connection()``.

======================== ===========================================================
``DBCREDS_SECRET_ID``    name or ARN of the secret (required)
``DBCREDS_HOST``         host to connect to instead of the secret's (the RDS Proxy endpoint)
``DBCREDS_PORT``         port instead of the secret's
``DBCREDS_DBNAME``       database instead of the secret's
``DBCREDS_SECRET_KEYS``  the secret's own key names, when they are not the RDS format's:
                         ``field=key`` pairs, e.g. ``username=user,dbname=database`` (fields:
                         ``username``, ``password``, ``host``, ``port``, ``dbname``,
                         ``engine``)
``DBCREDS_SSLMODE``      ``verify-full`` (default), ``verify-ca``, ``require`` (no CA: SCRAM
                         channel binding required) or ``disable`` (local development only)
``DBCREDS_SSLROOTCERT``  CA bundle of the server (the RDS CA bundle for a database endpoint)
                         or ``system`` (default: the system trust store, for RDS Proxy)
``DBCREDS_SECRET_TTL``   seconds the secret is cached (default 300)
``DBCREDS_POOL_MIN_SIZE`` connections kept open (default 1)
``DBCREDS_POOL_MAX_SIZE`` connections at most (default 1: Lambda runs one event at a time)
``DBCREDS_POOL_CHECK``   check a pooled connection before handing it out (default 1)
``DBCREDS_AUTH_RETRY_BUDGET`` seconds a login may retry a refusal a rotation heals (default 5)
``DBCREDS_POOL_MAX_LIFETIME`` seconds a connection is used before it is replaced (default 3600)
``DBCREDS_IAM_USER``     log in as this database user with RDS IAM auth tokens instead of a
                         secret (needs ``DBCREDS_HOST``; excludes ``DBCREDS_SECRET_ID``)
======================== ===========================================================

Every value is checked (``dbcreds._env``): numbers in ASCII digits, finite, in range (ports
1-65535; pool sizes integers); booleans ``true``/``false``/``1``/``0``/``yes``/``no``/``on``/
``off``. A bad value is a `ConfigurationError` naming the variable, not a silent default.

Plain data: ``login.source_for(settings)`` builds the credential source, ``pool.build_pool`` and
``aio.build_async_pool`` the default pools.

**Which side supplies what.** The secret must hold the username and the password (no
configuration supplies them). Host, port and database come from ``DBCREDS_HOST``/``_PORT``/
``_DBNAME`` when set, else from the secret (an RDS-managed master secret holds only the
username and the password, so ``DBCREDS_HOST`` is then required), else port 5432 and database
``postgres``. A login with no host from either side is refused with an error saying so.

Region and endpoint come from botocore's own settings (``AWS_DEFAULT_REGION``, set by Lambda,
``AWS_ENDPOINT_URL_SECRETS_MANAGER``); no password ever comes from the environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import _env
from .errors import ConfigurationError

__all__ = ["Settings"]


@dataclass(frozen=True)
class Settings:
    secret_id: str
    host: str | None = None
    port: int | None = None
    dbname: str | None = None
    sslmode: str | None = None
    sslrootcert: str | None = None
    secret_ttl: float = 300.0
    pool_min_size: int = 1
    pool_max_size: int = 1
    pool_check: bool = True
    auth_retry_budget: float = 5.0
    iam_user: str | None = None
    pool_max_lifetime: float = 3600.0
    #: the secret's own key names as sorted ``(field, key)`` pairs (hashable: settings key
    #: the process's shared sources)
    secret_keys: tuple[tuple[str, str], ...] | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``DBCREDS_*`` variables; a bad value is a `ConfigurationError` naming
        the variable (never showing the value)."""
        env = os.environ if environ is None else environ
        secret_id = _env.text(env, "DBCREDS_SECRET_ID") or ""
        iam_user = _env.text(env, "DBCREDS_IAM_USER")
        host = _env.text(env, "DBCREDS_HOST")
        if not secret_id and not iam_user:
            raise ConfigurationError(
                "DBCREDS_SECRET_ID is not set: set it to the name or ARN of the Secrets Manager "
                "secret that holds the database credentials (or DBCREDS_IAM_USER and "
                "DBCREDS_HOST for RDS IAM authentication)"
            )
        if secret_id and iam_user:
            raise ConfigurationError(
                "DBCREDS_SECRET_ID and DBCREDS_IAM_USER are both set: set only one (the secret's "
                "password, or RDS IAM auth tokens for DBCREDS_IAM_USER)"
            )
        if iam_user and not host:
            raise ConfigurationError(
                "DBCREDS_IAM_USER needs DBCREDS_HOST: the RDS Proxy or database endpoint the "
                "IAM auth token is signed for"
            )
        min_size = _env.number(env, "DBCREDS_POOL_MIN_SIZE", 1, integer=True, low=0)
        max_size = _env.number(env, "DBCREDS_POOL_MAX_SIZE", max(1, min_size), integer=True,
                               low=1)
        if max_size < min_size:
            raise ConfigurationError(
                "DBCREDS_POOL_MAX_SIZE must be at least 1 and at least DBCREDS_POOL_MIN_SIZE"
            )
        return cls(
            secret_id=secret_id,
            host=host,
            port=_env.port(env, "DBCREDS_PORT", None),
            dbname=_env.text(env, "DBCREDS_DBNAME"),
            sslmode=_env.sslmode(env, "DBCREDS_SSLMODE"),
            sslrootcert=_env.text(env, "DBCREDS_SSLROOTCERT"),
            secret_ttl=_env.number(env, "DBCREDS_SECRET_TTL", 300.0, low=0),
            pool_min_size=min_size,
            pool_max_size=max_size,
            pool_check=_env.boolean(env, "DBCREDS_POOL_CHECK", True),
            auth_retry_budget=_env.number(env, "DBCREDS_AUTH_RETRY_BUDGET", 5.0, low=0),
            iam_user=iam_user,
            pool_max_lifetime=_env.number(env, "DBCREDS_POOL_MAX_LIFETIME", 3600.0, above=0),
            secret_keys=_pairs(_env.key_map(env, "DBCREDS_SECRET_KEYS")),
        )

    def pool_options(self) -> dict[str, Any]:
        """Keyword arguments shared by `CredentialPool` and `AsyncCredentialPool`."""
        return {
            "host": self.host,
            "port": self.port,
            "dbname": self.dbname,
            "sslmode": self.sslmode,
            "sslrootcert": self.sslrootcert,
            "auth_retry_budget": self.auth_retry_budget,
            "min_size": self.pool_min_size,
            "max_size": self.pool_max_size,
            "max_lifetime": self.pool_max_lifetime,
        }


def _pairs(mapping: Mapping[str, str] | None) -> tuple[tuple[str, str], ...] | None:
    return None if mapping is None else tuple(sorted(mapping.items()))
