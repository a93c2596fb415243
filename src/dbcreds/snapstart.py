"""Lambda SnapStart: no secret and no pooled connection survives a snapshot restore.

Under SnapStart, Lambda runs a function's init phase once, snapshots the memory of the
execution environment, and resumes many environments from that snapshot. Whatever init left
in memory is in the snapshot: a cached secret or IAM token would be stored with it, and
would be stale after a restore days later (a rotation may have happened since); pooled
connections are TCP sessions that no longer exist after a restore (and would be "shared" by
every environment restored from the same snapshot).

`install()` registers two runtime hooks with ``snapshot_restore_py``, the module the Lambda
Python managed runtime provides for this (imported lazily: it does not exist elsewhere):

* **before snapshot**: every process-wide default registered in ``dbcreds._registry`` (the
  pools of ``get_connection()`` and ``get_async_connection()``, registered by ``dbcreds.pool``
  and ``dbcreds.aio`` when they are imported) has its cache dropped and is closed, and every
  source given to `register()` forgets its cached values (``invalidate()``);
* **after restore**: registered sources are invalidated again, and each default that was open
  and can be rebuilt at once is reopened. The default sync pool fetches the secret and opens
  its connections in its background threads, so the hook returns at once (after-restore hooks
  must finish within Lambda's 10 s restore timeout). The default async pool is rebuilt on its
  first use (it needs the loop).

This module knows no integration: it only walks ``dbcreds._registry`` (so nothing is imported
just to be reset).

`install()` is idempotent and does nothing unless the function runs under SnapStart
(``AWS_LAMBDA_INITIALIZATION_TYPE=snap-start``). dbcreds calls it when it creates a default
pool; call it (or `register()`) at module scope for sources of your own. A pool you build
yourself should be built after restore (in the handler, on first use) or closed and rebuilt by
hooks of your own: a closed psycopg pool cannot be reopened.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import weakref
from collections.abc import Mapping
from types import ModuleType
from typing import Any, Protocol, TypeVar

from ._registry import Default, registered_defaults

__all__ = ["after_restore", "before_snapshot", "install", "register", "under_snapstart"]

logger = logging.getLogger("dbcreds.snapstart")

_lock = threading.Lock()
_hooked: ModuleType | None = None  # the snapshot_restore_py our hooks are registered with
_sources: weakref.WeakSet[Any] = weakref.WeakSet()
_closed: list[Default] = []  # the defaults before_snapshot() closed, to reopen after restore


def under_snapstart(environ: Mapping[str, str] | None = None) -> bool:
    """True in a Lambda function initialised for SnapStart."""
    env = os.environ if environ is None else environ
    return env.get("AWS_LAMBDA_INITIALIZATION_TYPE") == "snap-start"


def install() -> bool:
    """Register dbcreds' before-snapshot / after-restore hooks, under SnapStart only.

    Returns True when the hooks are registered (now or before). Idempotent.
    """
    global _hooked
    if not under_snapstart():
        return False
    try:
        runtime = importlib.import_module("snapshot_restore_py")  # the Lambda runtime's
    except ImportError:
        logger.warning(
            "AWS_LAMBDA_INITIALIZATION_TYPE is snap-start but the runtime's snapshot_restore_py "
            "module is missing: dbcreds cannot drop its cache and connections before a snapshot"
        )
        return False
    with _lock:
        if _hooked is runtime:
            return True
        runtime.register_before_snapshot(before_snapshot)
        runtime.register_after_restore(after_restore)
        _hooked = runtime
    logger.debug("SnapStart hooks registered")
    return True


class Invalidatable(Protocol):
    """What `register` needs of a source (a `dbcreds.login.CredentialSource` has it)."""

    def invalidate(self) -> None: ...


S = TypeVar("S", bound=Invalidatable)


def register(source: S) -> S:
    """Have *source* (a `SecretProvider`, an IAM source, ...) forget its cached values before
    a snapshot and after a restore; returns it. Held weakly. Installs the hooks."""
    with _lock:
        _sources.add(source)
    install()
    return source


def before_snapshot() -> None:
    """Drop every cached secret and close the default pools (the before-snapshot hook)."""
    closed = []
    for default in registered_defaults():
        try:
            if default.close():
                closed.append(default)
        except Exception as exc:  # the others must still be closed
            logger.error("before snapshot: closing the default %s failed: %s", default.name, exc)
    with _lock:
        _closed[:] = closed
    _invalidate_sources()
    logger.info("before snapshot: secrets dropped, default pools closed")


def after_restore() -> None:
    """Drop whatever is cached and reopen the default pools (the after-restore hook)."""
    _invalidate_sources()
    with _lock:
        closed, _closed[:] = list(_closed), []
    for default in closed:
        if default.reopen is None:  # rebuilt on its next use
            continue
        try:
            default.reopen()  # the sync pool connects in its background threads: returns at once
        except Exception as exc:  # the next use will say what is wrong
            logger.error("after restore: the default %s could not be rebuilt: %s",
                         default.name, exc)
    logger.info("after restore: caches dropped, default pools reopened")


def _invalidate_sources() -> None:
    with _lock:
        sources = list(_sources)
    for source in sources:
        source.invalidate()
