"""dbcreds: PostgreSQL credentials from AWS Secrets Manager that survive rotation.

``import dbcreds`` is cheap: boto3 and psycopg are imported when first used (cold start is a
product feature), which is why `CredentialPool` is loaded lazily.
"""

from __future__ import annotations

import sys
import threading
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
    "prefetch",
]


def get_connection(timeout: float | None = None) -> Any:
    """A connection from the default pool, as a context manager::

        with dbcreds.get_connection() as conn:
            conn.execute("select 1")

    The pool is built on first use from ``DBCREDS_*`` environment variables (see
    `dbcreds.config`) and reused for the life of the process (across Lambda invocations).
    """
    from .pool import get_connection as _get_connection  # psycopg: overlaps a prefetch

    _join_prefetch(timeout)  # a dbcreds.prefetch() in flight builds the default pool
    return _get_connection(timeout)


def prefetch() -> None:
    """Start the default pool's secret fetch and first connection now, in the background.

    Call it at the top of a Lambda handler's module, right after ``import dbcreds``: during
    INIT, the network waits (Secrets Manager's handshake and request, the proxy login) then
    overlap with the CPU work that follows (psycopg's import, the application's own imports)::

        import dbcreds
        dbcreds.prefetch()
        import myapp.models  # ... the rest of the module

    The AWS client is made in the calling thread (CPU work that must come before the request);
    a daemon thread then fetches the secret and builds the default pool of `get_connection`,
    whose worker opens its first connection (the usual login policy, TLS policy and pool). The
    first `dbcreds.get_connection()` imports psycopg (overlapping the fetch), then joins the
    thread: one GetSecretValue in all, and no prefetch thread is left once it returns.
    Nothing is raised here: a configuration error, a failed fetch or a refused login surfaces
    at the first `get_connection()` exactly as without `prefetch` (a failed fetch is tried
    again there). Idempotent; does nothing when the default
    pool exists, and nothing under Lambda SnapStart (the after-restore hook already reopens
    the default pool, and nothing fetched during INIT may enter the snapshot).
    """
    global _prefetch
    from . import snapstart

    if snapstart.under_snapstart():
        return
    with _prefetch_lock:
        if _prefetch is not None:
            return
        pool_module = sys.modules.get(f"{__name__}.pool")
        if pool_module is not None and getattr(pool_module, "_default", None) is not None:
            return
        try:
            from .config import Settings
            from .login import source_for

            settings = Settings.from_env()
            source = source_for(settings)
        except Exception:  # said again, the same way, by the first get_connection()
            return
        prepare = getattr(source, "prepare", None)
        if prepare is not None:
            try:
                prepare()  # the AWS client: CPU work the request waits for, done first
            except Exception:
                return
        thread = threading.Thread(target=_run_prefetch, args=(source,),
                                  name="dbcreds-prefetch", daemon=True)
        _prefetch = _Prefetch(settings, source, thread)
    thread.start()


class _Prefetch:
    __slots__ = ("settings", "source", "thread")

    def __init__(self, settings: Any, source: Any, thread: threading.Thread) -> None:
        self.settings, self.source, self.thread = settings, source, thread


_prefetch: _Prefetch | None = None
_prefetch_lock = threading.Lock()


def _run_prefetch(source: Any) -> None:
    try:
        source.get()  # single flight: a get_connection() arriving now joins this fetch
    except Exception:
        # Not logged with its text (it may quote a request); the first get_connection()
        # fetches again and raises it as it would have without prefetch.
        return
    with _prefetch_lock:
        found = _prefetch
    if found is None or found.source is not source:
        return
    try:
        from .pool import _default_pool

        # The default pool with this source: its worker opens the first connection.
        _default_pool((found.settings, source))
    except Exception:
        return


def _join_prefetch(timeout: float | None = None) -> None:
    """Wait for a prefetch in flight, then forget it (the first `get_connection` joins it).

    Within *timeout*, as `get_connection` without a prefetch waits for its pool: past it,
    psycopg_pool's ``PoolTimeout`` (the prefetch goes on; a later call joins it)."""
    global _prefetch
    found = _prefetch  # the warm path: one read, no lock
    if found is None:
        return
    found.thread.join(timeout)
    if found.thread.is_alive():
        from psycopg_pool import PoolTimeout

        raise PoolTimeout(f"couldn't get a connection after {timeout:.2f} sec (the secret "
                          "fetch started by dbcreds.prefetch() is still under way)")
    with _prefetch_lock:
        if _prefetch is found:
            _prefetch = None


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
