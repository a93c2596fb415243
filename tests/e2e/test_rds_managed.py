"""Secrets that are not in the full RDS format: an RDS-managed master secret (only
``username`` and ``password``: host, port and database come from configuration) and secrets
with other key names (``DBCREDS_SECRET_KEYS``), end to end through ``get_connection()``.

RDS rotates the secrets it manages itself; `LocalStack.rotate_like_rds` does what it does on
the local stack (single user, the two-key format kept), so the zero-failure test below is the
one an application on such a secret lives through.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

import dbcreds
from dbcreds import ConfigurationError, InvalidSecret
from dbcreds.pool import default_pool
from dbcreds_testing.workload import Workload
from rotations import PROXIES, assert_three_rotations_served, report, rotate_three_times


@pytest.fixture
def rds_app(stack: Any, aws_env: dict[str, str]) -> Iterator[Any]:
    """A role whose secret has the RDS-managed format (username and password only)."""
    app = stack.new_app("managed", rds_managed=True)
    yield app
    stack.rds_proxy.unwatch(app.secret_id)


@pytest.fixture
def default_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """The default pool of get_connection(), closed after the test."""
    for name in ("DBCREDS_HOST", "DBCREDS_PORT", "DBCREDS_DBNAME", "DBCREDS_SECRET_KEYS"):
        monkeypatch.delenv(name, raising=False)
    yield monkeypatch
    dbcreds.close_default_pool()


def configure(monkeypatch: pytest.MonkeyPatch, stack: Any, secret_id: str, via: str) -> None:
    server = getattr(stack, via)
    for name, value in {
        "DBCREDS_SECRET_ID": secret_id, "DBCREDS_HOST": server.host,
        "DBCREDS_PORT": str(server.port), "DBCREDS_DBNAME": stack.dbname,
        # connections renewed every 2 s: logins happen all through the rotations
        "DBCREDS_POOL_MIN_SIZE": "4", "DBCREDS_POOL_MAX_SIZE": "8",
        "DBCREDS_POOL_MAX_LIFETIME": "2",
    }.items():
        monkeypatch.setenv(name, value)


def test_the_secret_holds_only_username_and_password(stack: Any, rds_app: Any,
                                                     sm_client: Any) -> None:
    doc = json.loads(sm_client.get_secret_value(SecretId=rds_app.secret_id)["SecretString"])
    assert sorted(doc) == ["password", "username"]


@pytest.mark.load
@pytest.mark.parametrize("route", list(PROXIES))
def test_rds_managed_secret_through_rds_rotations_zero_failures(
    stack: Any, rds_app: Any, default_env: pytest.MonkeyPatch, sm_client: Any, route: str
) -> None:
    """get_connection() on a two-key secret with DBCREDS_HOST/PORT/DBNAME set, while RDS-style
    rotations (the two-key format kept) run three times: 0 failed requests."""
    configure(default_env, stack, rds_app.secret_id, PROXIES[route])
    with Workload(dbcreds.get_connection, threads=8) as workload:
        assert workload.wait_for_requests(50)
        logins_ok = rotate_three_times(stack, rds_app, sm_client, [workload],
                                       rotate=stack.rotate_like_rds)
        result = workload.stop()
    report(f"rds-managed {route}", result, default_pool().provider)
    assert_three_rotations_served(stack, rds_app, result, logins_ok)
    doc = json.loads(sm_client.get_secret_value(SecretId=rds_app.secret_id)["SecretString"])
    assert sorted(doc) == ["password", "username"]  # RDS's format, kept through rotations


def test_no_host_anywhere_fails_at_once_saying_what_to_set(
    stack: Any, rds_app: Any, default_env: pytest.MonkeyPatch
) -> None:
    """A two-key secret and no DBCREDS_HOST: every caller learns at once that the configuration
    must give the host (not a 30 s PoolTimeout, not a login over a Unix socket)."""
    default_env.setenv("DBCREDS_SECRET_ID", rds_app.secret_id)
    t0 = time.monotonic()
    with pytest.raises(ConfigurationError) as info:
        with dbcreds.get_connection(timeout=30):
            pass
    elapsed = time.monotonic() - t0
    print(f"\n[rds-managed no host] ConfigurationError after {elapsed * 1000:.0f} ms")
    assert elapsed < 2.0
    assert "DBCREDS_HOST" in str(info.value) and "names no host" in str(info.value)
    assert rds_app.password not in str(info.value)
    assert default_pool().get_stats()["auth_failed"] == 1


def test_missing_password_says_the_secret_must_hold_it(
    stack: Any, aws_env: dict[str, str], default_env: pytest.MonkeyPatch
) -> None:
    name = f"dbcreds-test/nopassword-{time.monotonic_ns()}"
    stack.create_secret(name, {"username": "someone"})
    default_env.setenv("DBCREDS_SECRET_ID", name)
    default_env.setenv("DBCREDS_HOST", stack.pgbouncer.host)
    with pytest.raises(InvalidSecret, match="the secret itself must hold the password"):
        with dbcreds.get_connection(timeout=30):
            pass


def test_other_key_names_through_a_key_mapping(
    stack: Any, aws_env: dict[str, str], default_env: pytest.MonkeyPatch
) -> None:
    app = stack.new_app("mapped", watch=False)
    name = f"{app.secret_id}-mapped"
    stack.create_secret(name, {"user": app.username, "pass": app.password,
                               "hostname": stack.pgbouncer.host,
                               "db_port": stack.pgbouncer.port, "database": stack.dbname})
    default_env.setenv("DBCREDS_SECRET_ID", name)
    default_env.setenv("DBCREDS_SECRET_KEYS",
                       "username=user,password=pass,host=hostname,port=db_port,dbname=database")
    with dbcreds.get_connection(timeout=15) as conn:
        row = conn.execute("select current_user, current_database()").fetchone()
    assert row == (app.username, stack.dbname)


@pytest.mark.load
@pytest.mark.parametrize("route", list(PROXIES))
def test_rds_managed_secret_through_a_sqlalchemy_engine_zero_failures(
    stack: Any, rds_app: Any, default_env: pytest.MonkeyPatch, sm_client: Any, route: str
) -> None:
    """``dbcreds.sqlalchemy.create_engine()`` configured by the environment alone (a Lambda's
    module-level engine) on a two-key secret, Session queries from 8 threads while RDS-style
    rotations run three times: 0 failed requests."""
    import sqlalchemy
    from sqlalchemy.orm import Session

    import dbcreds.sqlalchemy

    configure(default_env, stack, rds_app.secret_id, PROXIES[route])
    engine = dbcreds.sqlalchemy.create_engine(
        pool_size=4, max_overflow=4, pool_recycle=2, pool_pre_ping=True)
    query = sqlalchemy.text("select current_user")

    def request() -> None:
        with Session(engine) as session:
            assert session.execute(query).scalar_one() == rds_app.username

    try:
        with Workload(request=request, threads=8) as workload:
            assert workload.wait_for_requests(50)
            logins_ok = rotate_three_times(stack, rds_app, sm_client, [workload],
                                           rotate=stack.rotate_like_rds)
            result = workload.stop()
    finally:
        engine.dispose()
    report(f"rds-managed sqlalchemy {route}", result)
    assert_three_rotations_served(stack, rds_app, result, logins_ok, min_requests=200)
