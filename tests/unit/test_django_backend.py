"""ENGINE "dbcreds.django" without a database: what it keeps of Django's PostgreSQL backend
(connect parameters, the pool's options) and the Django internals it relies on.

Django is configured here (a minimal ``settings.configure``) unless something configured it
already; no test of dbcreds reads Django's settings otherwise.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import psycopg_pool
import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db.backends.postgresql import base as postgresql
from django.db.utils import ConnectionHandler

from dbcreds.django import base as dbcreds_base
from dbcreds.pool import CredentialPool

if not settings.configured:
    settings.configure(USE_TZ=True, TIME_ZONE="UTC", DATABASES={}, INSTALLED_APPS=[])

ENDPOINT = {"HOST": "proxy.example", "PORT": "6432", "NAME": "app"}
POOL = {"min_size": 2, "max_size": 7, "max_lifetime": 90.0, "timeout": 11.0, "name": "p"}


def wrapper(engine: str, alias: str = "default", **settings_dict: Any) -> Any:
    databases = {"default": {"ENGINE": "django.db.backends.dummy"},
                 alias: {"ENGINE": engine, **settings_dict}}
    return ConnectionHandler(databases)[alias]


def dbcreds_wrapper(alias: str = "default", **settings_dict: Any) -> Any:
    options = {"secret_id": "unit/app", **settings_dict.pop("OPTIONS", {})}
    return wrapper("dbcreds.django", alias, OPTIONS=options, **settings_dict)


@pytest.fixture(autouse=True)
def forget_state() -> Iterator[None]:
    yield
    dbcreds_base._close_all()


def test_engine_is_djangos_postgresql_backend() -> None:
    conn = dbcreds_wrapper(**ENDPOINT)
    assert isinstance(conn, postgresql.DatabaseWrapper)
    assert type(conn).__module__ == "dbcreds.django.base"
    assert conn.vendor == "postgresql"


def test_connect_params_are_djangos_without_credentials_and_dbcreds_options() -> None:
    options = {"connect_timeout": 7, "sslmode": "verify-full", "application_name": "x",
               "server_side_binding": True, "isolation_level": 3, "assume_role": "r"}
    plain = wrapper("django.db.backends.postgresql", USER="u", PASSWORD="p",
                    OPTIONS=dict(options), **ENDPOINT)
    ours = dbcreds_wrapper(OPTIONS={**options, "secret_ttl": 60, "auth_retry_budget": 3},
                           **ENDPOINT)
    expected = plain.get_connection_params()
    del expected["user"], expected["password"]
    assert ours.get_connection_params() == expected


def test_empty_name_means_the_secrets_database_and_none_means_postgres() -> None:
    params = dbcreds_wrapper(HOST="h", NAME="").get_connection_params()
    assert "dbname" not in params and params["host"] == "h"
    assert dbcreds_wrapper(NAME=None).get_connection_params()["dbname"] == "postgres"


@pytest.mark.parametrize("key", ["USER", "PASSWORD"])
def test_credentials_in_settings_are_refused(key: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=f"{key} is set.*comes from the secret"):
        dbcreds_wrapper(**{key: "x", **ENDPOINT})


def test_password_in_options_and_two_sources_are_refused() -> None:
    with pytest.raises(ImproperlyConfigured, match="'password' is set"):
        dbcreds_wrapper(OPTIONS={"password": "x"}, **ENDPOINT)
    with pytest.raises(ImproperlyConfigured, match="not both"):
        dbcreds_wrapper(OPTIONS={"credential_source": object()}, **ENDPOINT)


def test_environment_names_the_source_when_options_do_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("DBCREDS_IAM_USER", "DBCREDS_SSLMODE", "DBCREDS_DBNAME", "DBCREDS_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DBCREDS_SECRET_ID", "env/app")
    monkeypatch.setenv("DBCREDS_HOST", "env-proxy.example")
    monkeypatch.setenv("DBCREDS_SSLROOTCERT", "/ca.pem")
    monkeypatch.setenv("DBCREDS_AUTH_RETRY_BUDGET", "4")
    conn = wrapper("dbcreds.django", NAME="app")
    creds = conn._credentials()
    assert creds.source.secret_id == "env/app" and creds.auth_retry_budget == 4.0
    params = conn.get_connection_params()
    assert params["host"] == "env-proxy.example" and params["sslrootcert"] == "/ca.pem"
    # Django's HOST wins over DBCREDS_HOST; one source per secret for the process.
    other = wrapper("dbcreds.django", "other", NAME="app", HOST="settings-host")
    assert other.get_connection_params()["host"] == "settings-host"
    assert other._credentials().source is creds.source


class _Recorder:
    check_connection = psycopg_pool.ConnectionPool.check_connection

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs


@pytest.mark.parametrize("checks", [True, False])
def test_the_pool_gets_every_option_django_gives_psycopg_pool(
    monkeypatch: pytest.MonkeyPatch, checks: bool
) -> None:
    """Django 5.1+ builds ``psycopg_pool.ConnectionPool(kwargs=..., open=False, configure=...,
    check=..., **OPTIONS["pool"])``; dbcreds builds a CredentialPool with the same, plus the
    source and the endpoint (which win over the secret's)."""
    monkeypatch.setattr(psycopg_pool, "ConnectionPool", _Recorder)
    monkeypatch.setattr(dbcreds_base, "CredentialPool", _Recorder)
    common = {**ENDPOINT, "CONN_HEALTH_CHECKS": checks}
    plain = wrapper("django.db.backends.postgresql", "plain", USER="u",
                    PASSWORD="p", OPTIONS={"pool": dict(POOL)}, **common)
    ours = dbcreds_wrapper("ours", OPTIONS={"pool": dict(POOL)}, **common)
    try:
        theirs, mine = plain.pool, ours.pool
    finally:
        postgresql.DatabaseWrapper._connection_pools.pop("plain", None)
        dbcreds_base.DatabaseWrapper._connection_pools.pop("ours", None)
    assert theirs.args == ()
    assert mine.args == (ours._credentials().source,)
    dbcreds_only = {"host", "port", "dbname", "auth_retry_budget", "connection_class"}
    assert set(mine.kwargs) - dbcreds_only == set(theirs.kwargs)
    expected_kwargs = dict(theirs.kwargs["kwargs"])
    for key in ("user", "password", "host", "port", "dbname"):
        expected_kwargs.pop(key)
    assert mine.kwargs["kwargs"] == expected_kwargs
    assert mine.kwargs["kwargs"]["autocommit"] is True
    for key in set(theirs.kwargs) - {"kwargs", "configure", "check"}:
        assert mine.kwargs[key] == theirs.kwargs[key], key
    assert mine.kwargs["configure"].__func__ is theirs.kwargs["configure"].__func__
    assert mine.kwargs["check"] == theirs.kwargs["check"]
    assert (mine.kwargs["check"] is CredentialPool.check_connection) is checks
    assert mine.kwargs["open"] is False
    assert (mine.kwargs["host"], mine.kwargs["port"], mine.kwargs["dbname"]) == (
        "proxy.example", 6432, "app")
    assert mine.kwargs["connection_class"] is dbcreds_base.CheckedConnection


def test_pool_refuses_persistent_connections_as_django_does() -> None:
    ours = dbcreds_wrapper("ours2", OPTIONS={"pool": True}, CONN_MAX_AGE=10, **ENDPOINT)
    with pytest.raises(ImproperlyConfigured, match="persistent connections"):
        _ = ours.pool


# -- the Django internals dbcreds relies on (fail here when Django changes them) -------------


def test_django_connects_through_self_database_connect() -> None:
    """Without a pool, Django's get_new_connection connects with
    ``self.Database.connect(**conn_params)``: dbcreds' ``Database`` logs in there."""
    source = inspect.getsource(postgresql.DatabaseWrapper.get_new_connection)
    assert "self.Database.connect(**conn_params)" in source
    assert "self.pool.getconn()" in source  # with a pool: the pool property's pool


def test_django_get_connection_params_reads_only_what_the_view_gives() -> None:
    """dbcreds calls Django's get_connection_params with a view of the wrapper whose
    settings_dict is another: it must read the settings through ``self.settings_dict``."""
    source = inspect.getsource(postgresql.DatabaseWrapper.get_connection_params)
    assert "settings_dict = self.settings_dict" in source


def test_djangos_pool_property_is_the_one_dbcreds_mirrors() -> None:
    """The pool property dbcreds mirrors (Django 5.1+); a change in Django's shows here."""
    source = inspect.getsource(postgresql.DatabaseWrapper.pool.fget)
    for line in ("kwargs=connect_kwargs,", "open=False,", "configure=self._configure_connection,",
                 "check=ConnectionPool.check_connection if enable_checks else None,",
                 "**pool_options,", 'connect_kwargs["autocommit"] = True',
                 "self._connection_pools.setdefault(self.alias, pool)"):
        assert line in source, line


def test_the_driver_is_psycopg_for_everything_but_connect() -> None:
    conn = dbcreds_wrapper(**ENDPOINT)
    import psycopg

    assert conn.Database.Error is psycopg.Error
    assert conn.Database.OperationalError is psycopg.OperationalError
    assert type(conn).Database is psycopg  # the class attribute is untouched
    assert "psycopg" in repr(conn.Database)


def test_snapstart_makes_the_backends_sources_forget(monkeypatch: pytest.MonkeyPatch) -> None:
    """One source per secret for the process (``login.configure``), registered with SnapStart:
    before a snapshot it forgets its secret; the "django" default closes what it opened."""
    from dbcreds import _registry, snapstart

    default = {d.name: d for d in _registry.registered_defaults()}["django"]
    first = dbcreds_wrapper(**ENDPOINT)._credentials().source
    assert dbcreds_wrapper(**ENDPOINT)._credentials().source is first  # one per secret
    forgot: list[bool] = []
    monkeypatch.setattr(first, "invalidate", lambda: forgot.append(True))
    snapstart.before_snapshot()
    assert forgot
    assert default.reopen is None  # rebuilt on next use


# -- make-before-break past CONN_MAX_AGE: a login that does not wait ------------------------


def test_drive_without_waiting_logs_in_or_gives_up_at_the_first_wait() -> None:
    """The replacement of an aged connection logs in at once, or the old one serves on: the
    plan is closed at its first Wait (nobody sleeps), and a failure it would raise is left to
    the next login that may wait."""
    from dbcreds import SecretProvider
    from dbcreds.django.base import drive_without_waiting
    from dbcreds.login import LoginPolicy
    from support import Clock, FakeSM, Refused

    sm, clock = FakeSM(), Clock()
    sm.put("AWSCURRENT", "v1", "old")
    policy = LoginPolicy(SecretProvider("app", jitter=0.0, fetcher=sm, clock=clock),
                         clock=clock)

    def accepting(*passwords: str) -> Any:
        def attempt(secret: Any) -> str:
            if secret.password not in passwords:
                raise Refused("ERROR: server login has been failing, try again later")
            return str(secret.password)

        return attempt

    assert drive_without_waiting(policy.plan(), accepting("old")) == "old"
    # The proxy cannot log in yet: the plan would wait (proxy side); no wait, no connection.
    assert drive_without_waiting(policy.plan(), accepting()) is None
    assert not policy.retrying  # the closed plan counts no waiting login
    # A wrong secret (client side, no rotation): the plan gives up; left to the next login.
    def wrong(secret: Any) -> str:
        raise Refused('FATAL:  password authentication failed for user "u"')

    assert drive_without_waiting(policy.plan(), wrong) is None
