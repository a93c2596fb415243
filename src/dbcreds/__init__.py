"""dbcreds: PostgreSQL credentials from AWS Secrets Manager that survive rotation.

``import dbcreds`` is cheap: boto3 and psycopg are imported when first used (cold start is a
product feature), which is why `CredentialPool` is loaded lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__ as __version__
from .errors import (
    AuthenticationFailed,
    ConfigurationError,
    DbcredsError,
    InvalidSecret,
    SecretAccessDenied,
    SecretNotFound,
    SecretsManagerUnavailable,
    UntrustedServer,
    is_auth_failure,
)
from .secret import DbSecret

if TYPE_CHECKING:
    from .aio import AsyncCredentialPool, AsyncSecretProvider
    from .iam import IamAuthSource
    from .login import CredentialSource
    from .pool import CredentialPool
    from .provider import SecretProvider

__all__ = [
    "AsyncCredentialPool",
    "AsyncSecretProvider",
    "AuthenticationFailed",
    "ConfigurationError",
    "CredentialPool",
    "CredentialSource",
    "DbSecret",
    "DbcredsError",
    "IamAuthSource",
    "InvalidSecret",
    "SecretAccessDenied",
    "SecretNotFound",
    "SecretProvider",
    "SecretsManagerUnavailable",
    "UntrustedServer",
    "close_default_async_pool",
    "close_default_pool",
    "get_async_connection",
    "get_connection",
    "is_auth_failure",
]


def get_connection(timeout: float | None = None) -> Any:
    """A connection from the default pool, as a context manager::

        with dbcreds.get_connection() as conn:
            conn.execute("select 1")

    The pool is built on first use from ``DBCREDS_*`` environment variables (see
    `dbcreds.config`) and reused for the life of the process (across Lambda invocations).
    """
    from .pool import get_connection as _get_connection

    return _get_connection(timeout)


def close_default_pool() -> None:
    """Close the default pool of `get_connection` (a new one is built on next use)."""
    from .pool import close_default_pool as _close

    _close()


def get_async_connection(timeout: float | None = None) -> Any:
    """A connection from the default asyncio pool, as an async context manager::

        async with dbcreds.get_async_connection() as conn:
            await conn.execute("select 1")

    Configured like `get_connection`; the pool belongs to the running event loop (see
    `dbcreds.aio`).
    """
    from .aio import get_async_connection as _get_async_connection

    return _get_async_connection(timeout)


async def close_default_async_pool() -> None:
    """Close the default pool of `get_async_connection` (a new one is built on next use)."""
    from .aio import close_default_async_pool as _close

    await _close()


_LAZY = {
    "CredentialPool": ".pool",
    "SecretProvider": ".provider",
    # asyncio, IAM authentication: psycopg / boto3 load only when these are used
    "AsyncCredentialPool": ".aio",
    "AsyncSecretProvider": ".aio",
    "IamAuthSource": ".iam",
    "CredentialSource": ".login",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is not None:
        import importlib

        value = getattr(importlib.import_module(module, __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dbcreds' has no attribute {name!r}")
