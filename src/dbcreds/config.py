"""Environment configuration of the default pool behind ``get_connection()``.

======================== ===========================================================
``DBCREDS_SECRET_ID``    name or ARN of the secret (required)
``DBCREDS_HOST``         host to connect to instead of the secret's (the RDS Proxy endpoint)
``DBCREDS_PORT``         port instead of the secret's
``DBCREDS_DBNAME``       database instead of the secret's
``DBCREDS_SSLMODE``      libpq sslmode (``require`` / ``verify-full`` for RDS Proxy)
``DBCREDS_SECRET_TTL``   seconds the secret is cached (default 300)
``DBCREDS_POOL_MIN_SIZE`` connections kept open (default 1)
``DBCREDS_POOL_MAX_SIZE`` connections at most (default 1: Lambda runs one event at a time)
``DBCREDS_POOL_CHECK``   check a pooled connection before handing it out (default 1)
``DBCREDS_AUTH_RETRY_BUDGET`` seconds a login may retry a refusal a rotation heals (default 5)
======================== ===========================================================

Region and endpoint come from botocore's own settings (``AWS_REGION``,
``AWS_ENDPOINT_URL_SECRETS_MANAGER``); no password ever comes from the environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError

if TYPE_CHECKING:
    from .pool import CredentialPool

__all__ = ["Settings"]


@dataclass(frozen=True)
class Settings:
    secret_id: str
    host: str | None = None
    port: int | None = None
    dbname: str | None = None
    sslmode: str | None = None
    secret_ttl: float = 300.0
    pool_min_size: int = 1
    pool_max_size: int = 1
    pool_check: bool = True
    auth_retry_budget: float = 5.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        secret_id = env.get("DBCREDS_SECRET_ID", "").strip()
        if not secret_id:
            raise ConfigurationError(
                "DBCREDS_SECRET_ID is not set: set it to the name or ARN of the Secrets Manager "
                "secret that holds the database credentials"
            )

        def number(name: str, kind: type[int] | type[float], default: Any) -> Any:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                value = kind(raw)
            except ValueError:
                raise ConfigurationError(f"{name} must be a {kind.__name__}, got {raw!r}") from None
            if value < 0:
                raise ConfigurationError(f"{name} must not be negative, got {raw!r}")
            return value

        def text(name: str) -> str | None:
            return env.get(name, "").strip() or None

        min_size = number("DBCREDS_POOL_MIN_SIZE", int, 1)
        max_size = number("DBCREDS_POOL_MAX_SIZE", int, max(1, min_size))
        if max_size < max(min_size, 1):
            raise ConfigurationError(
                "DBCREDS_POOL_MAX_SIZE must be at least 1 and at least DBCREDS_POOL_MIN_SIZE"
            )
        return cls(
            secret_id=secret_id,
            host=text("DBCREDS_HOST"),
            port=number("DBCREDS_PORT", int, None),
            dbname=text("DBCREDS_DBNAME"),
            sslmode=text("DBCREDS_SSLMODE"),
            secret_ttl=number("DBCREDS_SECRET_TTL", float, 300.0),
            pool_min_size=min_size,
            pool_max_size=max_size,
            pool_check=env.get("DBCREDS_POOL_CHECK", "1").strip().lower()
            not in ("0", "false", "no", "off"),
            auth_retry_budget=number("DBCREDS_AUTH_RETRY_BUDGET", float, 5.0),
        )

    def build_pool(self) -> CredentialPool:
        from .pool import CredentialPool
        from .provider import SecretProvider

        extra: dict[str, Any] = {}
        if self.pool_check:
            extra["check"] = CredentialPool.check_connection
        return CredentialPool(
            SecretProvider(self.secret_id, ttl=self.secret_ttl),
            host=self.host,
            port=self.port,
            dbname=self.dbname,
            sslmode=self.sslmode,
            auth_retry_budget=self.auth_retry_budget,
            min_size=self.pool_min_size,
            max_size=self.pool_max_size,
            **extra,
        )
