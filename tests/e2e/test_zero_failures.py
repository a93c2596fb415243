"""Zero failed requests through rotation, proxy behaviour and faults (issue: zero failures).

Each case is a bounded load test on the real stack: 8 threads loop ``SELECT 1`` through a
CredentialPool whose connections are recycled every 2 s, while the local rotation driver runs
the real rotation handler. Figures are printed (run with ``-s``) for the issue note.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from dbcreds import CredentialPool, SecretProvider
from dbcreds.rotation.events import RotationStep
from dbcreds.rotation.local import rotate_locally
from dbcreds_testing.workload import Workload
from rotations import (
    ROUTES,
    assert_three_rotations_served,
    report,
    rotate_three_times,
)

pytestmark = pytest.mark.load

def load_pool_args(
    secret_id: str, server: Any, pool_class: Any, kw: dict[str, Any]
) -> tuple[SecretProvider, dict[str, Any]]:
    """The load tests' pool (sync or asyncio): 4-8 connections recycled every 2 s (so new
    logins happen all the time), each checked before use, through *server*."""
    kw = {"min_size": 4, "max_size": 8, "max_lifetime": 2.0,
          "check": pool_class.check_connection, **kw}
    provider = SecretProvider(secret_id, ttl=kw.pop("ttl", 300.0))
    return provider, {"host": server.host, "port": server.port, **kw}


@pytest.fixture
def make_pool(aws_env: dict[str, str]) -> Iterator[Any]:
    pools: list[CredentialPool] = []

    def make(secret_id: str, server: Any, **kw: Any) -> CredentialPool:
        provider, kw = load_pool_args(secret_id, server, CredentialPool, kw)
        pool = CredentialPool(provider, open=True, **kw)
        pool.wait(timeout=15)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.close()


@pytest.mark.parametrize("route", list(ROUTES))
def test_three_rotations_under_load_zero_failures(
    stack: Any, rotating_app: Any, make_pool: Any, sm_client: Any, route: str
) -> None:
    app = rotating_app
    pool = make_pool(app.secret_id, getattr(stack, ROUTES[route]))
    with Workload(pool.connection, threads=8) as workload:
        assert workload.wait_for_requests(50)
        logins_ok = rotate_three_times(stack, app, sm_client, [workload])
        result = workload.stop()

    report(route, result, pool.provider)
    assert_three_rotations_served(stack, app, result, logins_ok)


def test_existing_connections_survive_a_rotation(
    stack: Any, rotating_app: Any, make_pool: Any
) -> None:
    pool = make_pool(rotating_app.secret_id, stack.pgbouncer, min_size=2, max_size=2,
                     max_lifetime=3600.0)
    conn = pool.getconn()
    pid = conn.execute("select pg_backend_pid()").fetchone()
    rotate_locally(rotating_app.secret_id)
    assert conn.execute("select pg_backend_pid()").fetchone() == pid  # same session, still up
    pool.putconn(conn)
    assert pool.get_stats().get("connections_lost", 0) == 0


def test_secrets_manager_down_10s_with_warm_cache(
    stack: Any, app: Any, make_pool: Any
) -> None:
    pool = make_pool(app.secret_id, stack.pgbouncer, ttl=1.0)
    with Workload(pool.connection, threads=8) as workload:
        assert workload.wait_for_requests(50)
        done = threading.Event()
        with stack.secrets.outage():
            workload.mark("outage")
            done.wait(10.0)  # the outage lasts 10 s: this *is* the scenario, not a sync point
        workload.mark("back")
        result = workload.stop()
    report("secrets-manager-down", result, pool.provider)
    assert result.failures == [], result.summary()
    assert pool.provider.get_stats()["stale_served"] >= 1  # the cache really expired meanwhile


def test_throttling_is_retried(stack: Any, app: Any, aws_env: dict[str, str]) -> None:
    provider = SecretProvider(app.secret_id, max_stale=0)
    endpoint = stack.secrets

    def throttled() -> int:
        return int(endpoint.count("GetSecretValue", secret_id=app.secret_id, rejected=True))

    def lift_after_first_throttle() -> None:
        tick = threading.Event()
        for _ in range(1000):  # bounded: 10 s
            if throttled() >= 1:
                break
            tick.wait(0.01)
        endpoint.clear_fault()

    endpoint.set_fault("throttling")
    lifter = threading.Thread(target=lift_after_first_throttle)
    lifter.start()
    try:
        assert provider.get().username == app.username  # botocore retried with backoff
    finally:
        lifter.join()
        endpoint.clear_fault()
    assert throttled() >= 1
    assert provider.get_stats()["fetch_errors"] == 0


@pytest.mark.parametrize("server_name", ["postgres", "pgbouncer"])
def test_restart_during_load_recovers_by_itself(
    stack: Any, app: Any, make_pool: Any, server_name: str
) -> None:
    server = stack.pgbouncer if server_name == "pgbouncer" else stack.postgres
    pool = make_pool(app.secret_id, server)
    with Workload(pool.connection, threads=8) as workload:
        assert workload.wait_for_requests(50)
        workload.mark("restart")
        server.restart()
        workload.mark("restarted")
        restarted_at = workload.snapshot()[0]
        assert workload.wait_for_requests(restarted_at + 200, timeout=30)
        result = workload.stop()
    report(f"{server_name}-restart", result, pool.provider)
    marks = {m.label: m.at for m in result.marks}
    after = [r for r in result.requests if r.start > marks["restarted"]]
    assert len(after) >= 200 and all(r.error is None for r in after[-100:]), "no recovery"
    for failure in result.failures:
        # Only requests caught by the outage fail, and as connection errors.
        assert "AuthenticationFailed" not in (failure.error or "")
        assert "authentication failed" not in (failure.error or "").lower()
        assert failure.start <= marks["restarted"], failure


@pytest.mark.parametrize("route", ["direct", "pgbouncer-auth_query"])
def test_rotation_stopped_after_set_secret_keeps_serving_and_resumes(
    stack: Any, rotating_app: Any, make_pool: Any, route: str
) -> None:
    app = rotating_app
    pool = make_pool(app.secret_id, getattr(stack, ROUTES[route]))
    with Workload(pool.connection, threads=8) as workload:
        assert workload.wait_for_requests(50)
        crashed = rotate_locally(app.secret_id, stop_after="setSecret")
        workload.mark("crashed after setSecret")
        # The database now knows only the pending password: make every connection log in
        # again (as max_lifetime would, sooner) and serve on them for a while.
        made = pool.get_stats().get("connections_num", 0)
        pool.drain()
        served = workload.snapshot()[0]
        assert workload.wait_for_requests(served + 400, timeout=30)
        assert pool.get_stats().get("connections_num", 0) > made
        resumed = rotate_locally(app.secret_id, token=crashed.token)
        workload.mark("resumed")
        assert resumed.completed
        served = workload.snapshot()[0]
        assert workload.wait_for_requests(served + 200, timeout=30)
        result = workload.stop()
    report(f"crash-after-setSecret-{route}", result, pool.provider)
    assert result.failures == [], result.summary()


def test_failed_test_secret_notifies_once_and_app_keeps_serving(
    stack: Any, rotating_app: Any, make_pool: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = rotating_app
    sns = stack.secrets.client("sns", stack=True)
    topic = sns.create_topic(Name=f"rotation-failures-{app.username}")["TopicArn"]
    monkeypatch.setenv("ROTATION_FAILURE_TOPIC_ARN", topic)
    pool = make_pool(app.secret_id, stack.pgbouncer)

    def revert_password(step: Any) -> None:
        # Something undoes setSecret (another actor, a restored snapshot...): testSecret
        # will find that AWSPENDING does not log in.
        if step.step is RotationStep.SET:
            stack.set_password(app.username, app.password)

    before = stack.secrets.count("Publish")
    with Workload(pool.connection, threads=8) as workload:
        assert workload.wait_for_requests(50)
        with pytest.raises(Exception) as info:
            rotate_locally(app.secret_id, between_steps=revert_password)
        pool.drain()  # new logins after the failed rotation
        served = workload.snapshot()[0]
        assert workload.wait_for_requests(served + 200, timeout=30)
        result = workload.stop()
    report("testSecret-fails", result, pool.provider)
    assert "testSecret" in str(info.value) or "test" in type(info.value).__name__.lower()
    assert stack.secrets.count("Publish") - before == 1
    assert result.failures == [], result.summary()
