"""The one registry of process-wide defaults (the pools behind ``get_connection()`` and
``get_async_connection()``), which Lambda SnapStart resets.

Each integration registers its default when its module is imported (so nothing is imported
just to be reset), with two callables:

* ``close()``: drop the cached credentials, close and forget the default; returns whether
  there was one (called before a snapshot);
* ``reopen()``: build the default again (called after a restore, only when ``close()`` said
  there was one), or None when the default is rebuilt on its next use instead.

Standard library only; nothing here knows any integration.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Default", "register_default", "registered_defaults"]


@dataclass(frozen=True)
class Default:
    name: str
    close: Callable[[], bool]
    reopen: Callable[[], object] | None = None


_lock = threading.Lock()
_defaults: dict[str, Default] = {}


def register_default(
    name: str, close: Callable[[], bool], reopen: Callable[[], object] | None = None
) -> None:
    """Register (or replace) the default called *name* (e.g. ``"psycopg_pool"``)."""
    with _lock:
        _defaults[name] = Default(name, close, reopen)


def registered_defaults() -> list[Default]:
    """The registered defaults, in registration order."""
    with _lock:
        return list(_defaults.values())
