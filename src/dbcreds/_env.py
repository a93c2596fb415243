"""Reading settings from environment variables: one strict parser for every setting of dbcreds.

Used by `dbcreds.config` (the SDK's ``DBCREDS_*``), `dbcreds.extension` and
`dbcreds.rotation.settings`. Standard library only (``import dbcreds`` stays light).

Rules, the same for every variable:

* unset, empty or only whitespace means "not set": the default;
* any other value that is not allowed is a `ConfigurationError` that names the variable and
  says what is allowed, and never shows the value (a secret pasted into the wrong variable
  must not end up in a log or a traceback);
* numbers are written with ASCII digits only (Python's ``int()``/``float()`` also accept
  Arabic-Indic or full-width digits and ``1_000``: not here), are finite (no ``nan``/``inf``)
  and within the bounds given; an integer is an integer (``1.5`` is not a pool size);
* booleans are ``true``/``false``, ``1``/``0``, ``yes``/``no``, ``on``/``off`` (any case);
* choices are matched without regard to case and returned as spelled in the list of choices.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Literal, overload

from .errors import ConfigurationError, raise_clean
from .secret import SECRET_FIELDS, check_key_map
from .tls import SSLMODES  # the sslmodes dbcreds accepts: the TLS policy's own list

__all__ = [
    "LOG_LEVELS",
    "SSLMODES",
    "boolean",
    "choice",
    "key_map",
    "number",
    "port",
    "sslmode",
    "text",
]

Env = Mapping[str, str]

#: ``logging`` level names accepted for ``LOG_LEVEL``.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_BOOLEANS = "true/false, 1/0, yes/no or on/off"

# ASCII only, spelled out (``\d`` would match any Unicode digit).
_INTEGER = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_MAX_DIGITS = 100  # far beyond any setting; keeps int() clear of its own digit limit


def _raw(env: Env, name: str) -> str | None:
    value = env.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def text(env: Env, name: str) -> str | None:
    """The variable's value, stripped; None when unset or blank."""
    return _raw(env, name)


def _bounds(low: float | None, high: float | None, above: float | None) -> str:
    def show(x: float) -> str:
        return str(int(x)) if float(x).is_integer() else str(x)

    if above is not None:
        return f" > {show(above)}" + (f" and <= {show(high)}" if high is not None else "")
    if low is not None and high is not None:
        return f" from {show(low)} to {show(high)}"
    if low is not None:
        return f" >= {show(low)}"
    if high is not None:
        return f" <= {show(high)}"
    return ""


@overload
def number(env: Env, name: str, default: int, *, integer: Literal[True],
           low: float | None = ..., high: float | None = ..., above: float | None = ...) -> int:
    ...


@overload
def number(env: Env, name: str, default: None, *, integer: Literal[True],
           low: float | None = ..., high: float | None = ...,
           above: float | None = ...) -> int | None:
    ...


@overload
def number(env: Env, name: str, default: float, *, integer: Literal[False] = ...,
           low: float | None = ..., high: float | None = ..., above: float | None = ...) -> float:
    ...


@overload
def number(env: Env, name: str, default: None, *, integer: Literal[False] = ...,
           low: float | None = ..., high: float | None = ...,
           above: float | None = ...) -> float | None:
    ...


def number(
    env: Env,
    name: str,
    default: float | None,
    *,
    integer: bool = False,
    low: float | None = None,
    high: float | None = None,
    above: float | None = None,
) -> float | None:
    """A number (an ``int`` with ``integer=True``, else a finite ``float``) in bounds.

    :param low: smallest value allowed; :param high: largest; :param above: the value must be
        greater than this (an open bound, e.g. ``above=0`` for "positive").
    """
    raw = _raw(env, name)
    if raw is None:
        return default
    allowed = ("an integer" if integer else "a finite number") + _bounds(low, high, above)
    problem = ConfigurationError(f"{name} must be {allowed} (ASCII digits; value not shown)")
    if len(raw) > _MAX_DIGITS:
        raise problem
    value: float
    if integer:
        if not _INTEGER.fullmatch(raw):
            raise problem
        value = int(raw)
    else:
        if not _DECIMAL.fullmatch(raw):
            raise problem
        value = float(raw)
        if not math.isfinite(value):  # 1e999
            raise problem
    if (
        (low is not None and value < low)
        or (high is not None and value > high)
        or (above is not None and value <= above)
    ):
        raise problem
    return value


@overload
def port(env: Env, name: str, default: int) -> int: ...


@overload
def port(env: Env, name: str, default: None) -> int | None: ...


def port(env: Env, name: str, default: int | None) -> int | None:
    """A TCP port, 1-65535."""
    return number(env, name, default, integer=True, low=1, high=65535)


@overload
def boolean(env: Env, name: str, default: bool) -> bool: ...


@overload
def boolean(env: Env, name: str, default: None) -> bool | None: ...


def boolean(env: Env, name: str, default: bool | None) -> bool | None:
    """true/false, 1/0, yes/no, on/off (any case)."""
    raw = _raw(env, name)
    if raw is None:
        return default
    word = raw.lower() if raw.isascii() else ""
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ConfigurationError(f"{name} must be a boolean: {_BOOLEANS} (value not shown)")


@overload
def choice(env: Env, name: str, choices: Sequence[str], default: str, *,
           note: str = ...) -> str:
    ...


@overload
def choice(env: Env, name: str, choices: Sequence[str], default: None, *,
           note: str = ...) -> str | None:
    ...


def choice(
    env: Env, name: str, choices: Sequence[str], default: str | None, *, note: str = ""
) -> str | None:
    """One of *choices* (matched in any case, returned as spelled in *choices*).

    :param note: why other values are refused, added to the error message.
    """
    raw = _raw(env, name)
    if raw is None:
        return default
    if raw.isascii():  # no Unicode case folding into an ASCII choice (KELVIN SIGN -> "k")
        wanted = raw.lower()
        for option in choices:
            if option.lower() == wanted:
                return option
    reason = f" ({note})" if note else ""
    raise ConfigurationError(
        f"{name} must be one of {', '.join(choices)}{reason}; value not shown"
    )


def sslmode(env: Env, name: str) -> str | None:
    """A libpq sslmode from `SSLMODES` (lower-case), or None when unset."""
    return choice(env, name, SSLMODES, None,
                  note="allow/prefer can fall back to plaintext silently")


def key_map(env: Env, name: str) -> dict[str, str] | None:
    """A secret key mapping, ``field=key`` pairs separated by commas (e.g.
    ``username=user,dbname=database``); None when unset. See ``secret.check_key_map``."""
    raw = _raw(env, name)
    if raw is None:
        return None
    rule = (
        f"{name} must be field=key pairs separated by commas (e.g. username=user), each field "
        f"one of {', '.join(SECRET_FIELDS)} at most once, each key a non-empty name used for "
        "one field only"
    )
    pairs: dict[str, str] = {}
    for item in raw.split(","):
        field_name, sep, key = item.partition("=")
        field_name = field_name.strip()
        if not sep or not field_name or field_name in pairs:
            raise ConfigurationError(rule)
        pairs[field_name] = key.strip()
    try:
        return check_key_map(pairs, name)
    except ValueError:
        problem = ConfigurationError(rule)
    raise_clean(problem)  # check_key_map's message quotes the value
