"""dbcreds.asyncpg without a database: how a dsn and asyncpg's arguments are read, how the
login parameters become asyncpg's, the failure told to callers, and what of asyncpg it
relies on (pinned: these fail if asyncpg changes them)."""

from __future__ import annotations

import asyncio
import inspect
import ssl
import subprocess
import sys
from typing import Any

import asyncpg
import asyncpg.connect_utils
import pytest

import dbcreds.asyncpg as dbc_asyncpg
from dbcreds import AuthenticationFailed, ConfigurationError
from dbcreds.asyncpg import CredentialConnect, Target, target_of_dsn, target_of_kwargs
from dbcreds.login import PoolLogin
from dbcreds.tls import ASYNCPG
from support import StaticSource

PASSWORD = "S3cr3t-Pa55word"


def static_source() -> StaticSource:
    """A CredentialSource holding one secret (no AWS)."""
    return StaticSource(PASSWORD, secret_id="app/secret")


# -- reading the configuration ----------------------------------------------------------------


@pytest.mark.parametrize(("dsn", "expected"), [
    (None, Target()),
    ("postgresql://proxy.example:6432/app", Target("proxy.example", 6432, "app")),
    ("postgres://user@proxy.example/app", Target("proxy.example", None, "app")),
    ("postgresql://[::1]:5433/app", Target("::1", 5433, "app")),
    ("postgresql:///app?host=proxy.example&port=6432", Target("proxy.example", 6432, "app")),
    ("postgresql://h/?dbname=d%20b", Target("h", None, "d b")),
    ("postgresql://h/my%2Fdb", Target("h", None, "my/db")),
    ("postgresql://h/db?sslmode=verify-full&sslrootcert=/ca.pem&application_name=x",
     Target("h", None, "db", "verify-full", "/ca.pem")),
])  # fmt: skip
def test_dsn(dsn: str | None, expected: Target) -> None:
    assert target_of_dsn(dsn) == expected


@pytest.mark.parametrize(("dsn", "says"), [
    (f"postgresql://app:{PASSWORD}@h/db", "password"),
    (f"postgresql://h/db?password={PASSWORD}", "password"),
    (f"postgresql://app:{PASSWORD}@h1,h2/db", "password"),
    ("postgresql://h1:5432,h2:5432/db", "several hosts"),
    ("postgresql:///db?host=h1,h2", "several hosts"),
    ("mysql://h/db", "postgresql://"),
    (f"postgresql://h:99999/db?x={PASSWORD}", "not a valid"),
    (f"postgresql://h/db?port=99999&x={PASSWORD}", "port"),
    (f"postgresql://h/db?{PASSWORD}", "not a valid"),
])  # fmt: skip
def test_dsn_refusals_say_why_and_never_quote_the_dsn(dsn: str, says: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        target_of_dsn(dsn)
    assert says in str(info.value)
    assert PASSWORD not in str(info.value) and info.value.__context__ is None


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({}, Target()),
    ({"host": "h", "port": "6432", "database": "db"}, Target("h", 6432, "db")),
    ({"ssl": True}, Target(sslmode="verify-full")),
    ({"ssl": False}, Target(sslmode="disable")),
    ({"ssl": "verify-full"}, Target(sslmode="verify-full")),
    ({"user": "ignored", "command_timeout": 5}, Target()),
])  # fmt: skip
def test_kwargs(kwargs: dict[str, Any], expected: Target) -> None:
    assert target_of_kwargs(kwargs) == expected


@pytest.mark.parametrize("kwargs", [
    {"password": PASSWORD}, {"ssl": ssl.create_default_context()}, {"ssl": 1},
    {"host": ["h1", "h2"]}, {"host": "h1,h2"}, {"port": 0},
])  # fmt: skip
def test_kwargs_refusals(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError) as info:
        target_of_kwargs(kwargs)
    assert PASSWORD not in str(info.value)


def test_precedence_arguments_over_dsn_over_environment() -> None:
    connector = CredentialConnect(static_source(), sslrootcert="/explicit.pem",
                                  defaults=Target("env-host", 1, "env-db", None, "/env.pem"))
    target = connector.target("postgresql://dsn-host:2/dsn-db?sslrootcert=/dsn.pem",
                              {"port": 3, "ssl": "verify-full"})
    assert target == Target("dsn-host", 3, "dsn-db", "verify-full", "/explicit.pem")
    assert connector.target(None, {}) == Target("env-host", 1, "env-db", None, "/explicit.pem")


# -- the login parameters, as asyncpg's ------------------------------------------------------


def login(**kw: Any) -> PoolLogin:
    options: dict[str, Any] = {"host": None, "port": None, "dbname": None, "sslmode": None,
                               "sslrootcert": None, "kwargs": {}, "conninfo": "",
                               "auth_retry_budget": 1.0, "tls_client": ASYNCPG, **kw}
    return PoolLogin(static_source(), **options)


def test_connect_args_translate_the_login_parameters() -> None:
    connector = CredentialConnect(static_source())
    args = connector.connect_args(login(host="proxy.example", dbname="other"),
                                  static_source().secret)
    assert set(args) == {"host", "port", "user", "password", "database", "ssl"}
    assert (args["host"], args["port"], args["user"], args["database"]) == (
        "proxy.example", 5432, "app", "other")
    context = args["ssl"]
    assert isinstance(context, ssl.SSLContext)
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    # One context per TLS policy, made once.
    assert connector.connect_args(login(), static_source().secret)["ssl"] is context


def test_disable_is_ssl_false_explicitly(caplog: pytest.LogCaptureFixture) -> None:
    args = CredentialConnect(static_source()).connect_args(login(sslmode="disable"),
                                                           static_source().secret)
    assert args["ssl"] is False  # explicit: asyncpg does not read PGSSLMODE
    assert any("TLS is disabled" in r.getMessage() for r in caplog.records)


def test_require_and_verify_ca_are_refused_for_asyncpg() -> None:
    for mode in ("require", "verify-ca"):
        with pytest.raises(ConfigurationError, match="channel binding"):
            login(sslmode=mode, sslrootcert="/ca.pem")


def test_an_unknown_login_parameter_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A libpq parameter that asyncpg has no argument for is not dropped silently."""
    the_login = login()
    real = PoolLogin.params

    def params(self: PoolLogin, *args: Any) -> tuple[str, dict[str, Any]]:
        info, found = real(self, *args)
        return info, {**found, "hostaddr": "10.0.0.1"}

    monkeypatch.setattr(PoolLogin, "params", params)
    with pytest.raises(ConfigurationError, match="hostaddr"):
        CredentialConnect(static_source()).connect_args(the_login, static_source().secret)


# -- the failure told to callers --------------------------------------------------------------


class Refused(Exception):
    sqlstate = "28P01"  # as asyncpg's InvalidPasswordError, in whatever language


def test_the_failure_is_told_at_once_and_one_login_is_let_through_later() -> None:
    attempts: list[str] = []

    async def refuse(dsn: Any = None, **kwargs: Any) -> Any:
        attempts.append(kwargs["password"])
        raise Refused("Passwort-Authentifizierung fehlgeschlagen")  # a localized server

    source = static_source()
    connector = CredentialConnect(source, connect=refuse, auth_retry_budget=0.0)

    async def scenario() -> list[BaseException]:
        errors = []
        for _ in range(3):
            with pytest.raises(AuthenticationFailed) as info:
                await connector("postgresql://db.example/app")
            errors.append(info.value)
        return errors

    errors = asyncio.run(scenario())
    assert len(attempts) == 1  # the 2nd and 3rd callers were told at once
    assert source.fetches == 1  # one refresh, then given up
    assert all(e.__context__ is None and e.__cause__ is None for e in errors)
    assert all(PASSWORD not in str(e) + repr(e) for e in errors)
    assert connector.failure is not None and PASSWORD not in repr(connector)

    state = connector.login_for(connector.target("postgresql://db.example/app", {}))
    state._retry_at = 0.0  # the pause is over: the next caller tries again
    with pytest.raises(AuthenticationFailed):
        asyncio.run(connector("postgresql://db.example/app"))
    assert len(attempts) == 2


# -- what dbcreds relies on in asyncpg (pinned) ----------------------------------------------


def test_asyncpg_has_the_connect_hook() -> None:
    """create_pool(connect=...) (asyncpg 0.30): called instead of asyncpg.connect."""
    assert "connect" in inspect.signature(asyncpg.create_pool).parameters
    assert "connect" in inspect.signature(asyncpg.pool.Pool.__init__).parameters


def test_asyncpg_says_rejected_ssl_upgrade() -> None:
    """The text dbcreds turns into libpq's "server does not support SSL" (UntrustedServer)."""
    assert "rejected SSL upgrade" in inspect.getsource(asyncpg.connect_utils)


def test_asyncpg_arguments_dbcreds_sets_exist() -> None:
    params = inspect.signature(asyncpg.connect).parameters
    assert set(dbc_asyncpg.SET_BY_DBCREDS) <= set(params)
    assert set(dbc_asyncpg.ASYNCPG_NAMES.values()) <= set(params)
    assert "statement_cache_size" in params


def test_import_loads_neither_psycopg_nor_boto3() -> None:
    code = ("import sys, dbcreds.asyncpg; print(sorted(m for m in sys.modules if m.split('.')[0]"
            " in ('psycopg', 'psycopg_pool', 'boto3', 'botocore')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_connections_failing_together_grow_the_pause_once() -> None:
    """Ten connections whose logins the plan gave up together: the next login is let through
    after the first pause (1 s), not after a pause doubled ten times."""
    from dbcreds.asyncpg import FAILED_RETRY, _Login

    gate = _Login(PoolLogin(static_source(), host=None, port=None, dbname=None, sslmode=None,
                            sslrootcert="/ca.pem", kwargs={}, auth_retry_budget=0.0,
                            tls_client=ASYNCPG))
    failure = AuthenticationFailed("app/secret", "refused")
    for _ in range(10):
        gate.done(False, failure)
    assert gate._pause == FAILED_RETRY[0] * 2  # grew once: the next pause after the retry
