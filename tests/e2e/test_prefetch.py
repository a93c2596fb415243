"""dbcreds.prefetch(): the default pool's secret fetch and first connection start in the
background during INIT; the first get_connection() joins them, on the real stack."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import dbcreds
import dbcreds.pool as pool_module
from dbcreds_testing import App, LocalStack, wait_until
from dbcreds_testing.latency import LatencyModel


@pytest.fixture
def lambda_env(stack: LocalStack, app: App, aws_env: dict[str, str],
               monkeypatch: pytest.MonkeyPatch) -> Iterator[App]:
    """get_connection()'s environment (through the RDS Proxy stand-in), no default pool."""
    host, port = stack.address("rds_proxy")
    monkeypatch.setenv("DBCREDS_SECRET_ID", app.secret_id)
    monkeypatch.setenv("DBCREDS_HOST", host)
    monkeypatch.setenv("DBCREDS_PORT", str(port))
    _reset()
    yield app
    _reset()


def _reset() -> None:
    prefetch = dbcreds._prefetch
    if prefetch is not None:
        prefetch.thread.join(timeout=30)
    dbcreds._prefetch = None
    dbcreds.close_default_pool()


def fetches(stack: LocalStack, app: App) -> int:
    return int(stack.secrets.count("GetSecretValue", secret_id=app.secret_id))


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "dbcreds-prefetch"]


def test_prefetch_joins_one_fetch_and_leaves_no_thread(stack: LocalStack,
                                                       lambda_env: App) -> None:
    dbcreds.prefetch()
    dbcreds.prefetch()  # idempotent
    with dbcreds.get_connection(timeout=30) as conn:
        assert conn.execute("select current_user").fetchone() == (lambda_env.username,)
        assert conn.info.pgconn.ssl_in_use  # the TLS policy holds (verify-full, stack's CA)
    assert fetches(stack, lambda_env) == 1
    assert prefetch_threads() == []  # the first get_connection() joined it
    assert dbcreds._prefetch is None  # consumed: the pool took the prefetched source
    dbcreds.prefetch()  # the default pool exists: nothing to do
    assert prefetch_threads() == [] and dbcreds._prefetch is None
    assert fetches(stack, lambda_env) == 1


def test_the_waits_overlap_the_work_that_follows(stack: LocalStack, lambda_env: App,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a slow network the fetch and the first login go on while the caller works: both
    are done before the first get_connection() is called, which then waits for neither."""
    model = LatencyModel(secrets_connect=0.15, secrets_request=0.15, proxy_connect=0.05,
                         proxy_rtt=0.02)
    with stack.latency(model) as slow:
        for name, value in slow.env().items():
            monkeypatch.setenv(name, value)
        _, port = slow.address("rds_proxy")
        monkeypatch.setenv("DBCREDS_PORT", str(port))
        dbcreds.prefetch()
        import psycopg_pool  # noqa: F401  (what a handler's module imports next)

        def first_connection_ready() -> bool:
            pool = pool_module._default
            return pool is not None and pool.get_stats().get("pool_available", 0) >= 1

        # The rest of INIT: the caller never calls dbcreds while the background work runs.
        wait_until(first_connection_ready, timeout=30, what="the prefetched first connection")
        assert fetches(stack, lambda_env) == 1
        assert slow.proxy_relay.connections == 1
        t0 = time.perf_counter()
        with dbcreds.get_connection(timeout=30) as conn:
            conn.execute("select 1")
        waited = time.perf_counter() - t0
        assert slow.proxy_relay.connections == 1  # the prefetched connection, no other
    assert fetches(stack, lambda_env) == 1
    # No fetch, no login left: only the pool's check and the query (2 round trips).
    assert waited < model.secrets_connect + model.secrets_request, waited


def _first_error(secret_id: str, monkeypatch: pytest.MonkeyPatch, prefetch: bool) -> Any:
    monkeypatch.setenv("DBCREDS_SECRET_ID", secret_id)
    _reset()
    if prefetch:
        dbcreds.prefetch()
    with pytest.raises(dbcreds.DbcredsError) as caught, dbcreds.get_connection(timeout=30):
        pass
    assert prefetch_threads() == []
    return caught.value


@pytest.mark.parametrize("case", ["missing secret", "wrong password"])
def test_errors_surface_at_the_first_get_connection_as_without_prefetch(
        stack: LocalStack, lambda_env: App, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, case: str) -> None:
    if case == "missing secret":
        secret_id = "dbcreds-test/no-such-secret"
    else:
        bad = stack.new_app("prefetch_bad", watch=False)
        stack.set_password(bad.username, "not-the-secret-s-password-0123456789")
        secret_id = bad.secret_id
    caplog.set_level(logging.DEBUG)
    without = _first_error(secret_id, monkeypatch, prefetch=False)
    with_prefetch = _first_error(secret_id, monkeypatch, prefetch=True)
    assert type(with_prefetch) is type(without)
    assert str(with_prefetch) == str(without)
    if case == "wrong password":
        assert bad.password not in caplog.text  # no secret in the logs


def test_a_configuration_error_surfaces_at_get_connection(
        lambda_env: App, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DBCREDS_SECRET_ID")
    dbcreds.prefetch()  # raises nothing
    assert dbcreds._prefetch is None and prefetch_threads() == []
    with pytest.raises(dbcreds.ConfigurationError, match="DBCREDS_SECRET_ID"):
        dbcreds.get_connection()


def test_nothing_is_prefetched_under_snapstart(stack: LocalStack, lambda_env: App,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_LAMBDA_INITIALIZATION_TYPE", "snap-start")
    monkeypatch.setitem(sys.modules, "snapshot_restore_py", None)  # not a Lambda runtime
    dbcreds.prefetch()
    assert dbcreds._prefetch is None and prefetch_threads() == []
    assert pool_module._default is None
    assert fetches(stack, lambda_env) == 0  # nothing fetched during INIT: no secret to snapshot
