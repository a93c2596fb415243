"""The asyncio side: AsyncSecretProvider, AsyncCredentialPool, get_async_connection().

Same guarantees as the sync pool (issue: zero failures), proven the same way on the real
stack: single flight across tasks and threads, a refusal healed by a refresh, the single-user
rotation window through both proxy behaviours under load, stale-if-error, and a fast
`AuthenticationFailed` for every waiting caller. Each scenario runs in ``asyncio.run`` inside
a plain test, bounded by ``asyncio.wait_for`` (no pytest plugin needed).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

import dbcreds
from dbcreds import AuthenticationFailed, SecretProvider
from dbcreds.aio import AsyncCredentialPool, AsyncSecretProvider, drive_async
from dbcreds.login import LoginPolicy, drive
from dbcreds_testing.workload import AsyncWorkload, WorkloadReport
from rotations import ROUTES, arotate_three_times, assert_three_rotations_served, report
from support import Clock, FakeSM, Refused
from test_zero_failures import load_pool_args

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run one scenario on a fresh loop, bounded in time."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def new_pool(secret_id: str, server: Any, **kw: Any) -> AsyncCredentialPool:
    provider, kw = load_pool_args(secret_id, server, AsyncCredentialPool, kw)
    return AsyncCredentialPool(provider, **kw)


# -- the driver, without a database ---------------------------------------------------------


def test_drive_async_runs_the_shared_plan_off_the_loop() -> None:
    """The same LoginPolicy plan as the sync pool: refused -> refresh -> the new secret works.
    The plan's steps (Secrets Manager calls) run in worker threads, never on the loop."""
    sm, clock = FakeSM(), Clock()
    sm.put("AWSCURRENT", "v1", "old")
    provider = SecretProvider("app", ttl=300, jitter=0.0, fetcher=sm, clock=clock)
    fetch_threads: list[int] = []

    def fetcher(secret_id: str, stage: str) -> dict[str, Any]:
        fetch_threads.append(threading.get_ident())
        return sm(secret_id, stage)

    provider._fetcher = fetcher
    policy = LoginPolicy(provider, budget=1.0)
    tried: list[str] = []

    async def attempt(secret: Any) -> str:
        tried.append(secret.password)
        if secret.password == "old":
            sm.put("AWSCURRENT", "v2", "new")  # rotated meanwhile
            raise Refused('FATAL: password authentication failed for user "u"')
        return f"conn-{secret.password}"

    async def scenario() -> tuple[str, int]:
        return await drive_async(policy.plan(), attempt), threading.get_ident()

    conn, loop_thread = run(scenario(), timeout=10)
    assert conn == "conn-new"
    assert tried == ["old", "new"]
    assert fetch_threads and loop_thread not in fetch_threads


def test_drive_async_waits_on_the_loop_and_gives_up_with_authentication_failed() -> None:
    sm, clock = FakeSM(), Clock()
    sm.put("AWSCURRENT", "v1", "pw")
    provider = SecretProvider("app", ttl=300, jitter=0.0, fetcher=sm, clock=clock)
    policy = LoginPolicy(provider, budget=0.3, backoff=(0.05, 0.1))
    ticks = 0

    async def ticker() -> None:  # the loop stays free while a login waits
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    async def attempt(secret: Any) -> str:
        raise Refused("server login has been failing, try again later (server_login_retry)")

    async def scenario() -> None:
        task = asyncio.create_task(ticker())
        try:
            with pytest.raises(AuthenticationFailed) as info:
                await drive_async(policy.plan(), attempt)
            # no link to the driver's error (whose frames would hold the attempt's password)
            assert info.value.__context__ is None and info.value.__cause__ is None
        finally:
            task.cancel()

    run(scenario(), timeout=10)
    assert ticks >= 10


def test_drive_gives_up_with_no_link_to_the_drivers_error() -> None:
    sm = FakeSM()
    sm.put("AWSCURRENT", "v1", "pw")
    policy = LoginPolicy(SecretProvider("app", fetcher=sm, clock=Clock()), budget=0)

    def attempt(secret: Any) -> str:
        raise Refused("password authentication failed for user")

    with pytest.raises(AuthenticationFailed) as info:
        drive(policy.plan(), attempt, lambda s: None)
    assert info.value.__context__ is None and info.value.__cause__ is None


# -- AsyncSecretProvider --------------------------------------------------------------------


def test_async_provider_single_flight_across_tasks_and_threads(
    stack: Any, app: Any, aws_env: dict[str, str]
) -> None:
    endpoint = stack.secrets
    before = endpoint.count("GetSecretValue", secret_id=app.secret_id)
    provider = AsyncSecretProvider(app.secret_id)
    from_threads: list[str] = []

    def in_a_thread() -> None:
        from_threads.append(provider.provider.get().username)

    async def scenario() -> list[str]:
        threads = [threading.Thread(target=in_a_thread) for _ in range(4)]
        for t in threads:
            t.start()
        names = await asyncio.gather(*(provider.get() for _ in range(32)))
        await asyncio.to_thread(lambda: [t.join() for t in threads])
        return [s.username for s in names]

    names = run(scenario())
    assert set(names + from_threads) == {app.username}
    assert endpoint.count("GetSecretValue", secret_id=app.secret_id) - before == 1
    assert "password" not in repr(provider) and app.password not in repr(provider)


# -- AsyncCredentialPool on the real stack --------------------------------------------------


@pytest.mark.load
@pytest.mark.parametrize("route", list(ROUTES))
def test_async_three_rotations_under_load_zero_failures(
    stack: Any, rotating_app: Any, sm_client: Any, route: str
) -> None:
    """8 asyncio tasks loop ``select 1`` through an AsyncCredentialPool whose connections are
    recycled every 2 s while the real rotation handler rotates 3 times (0.5 s between steps,
    in a thread): 0 failed requests, none slower than 1 s, through each proxy behaviour."""
    app = rotating_app
    server = getattr(stack, ROUTES[route])

    async def scenario() -> tuple[WorkloadReport, list[bool], AsyncCredentialPool]:
        async with new_pool(app.secret_id, server) as pool:
            await pool.wait(timeout=15)
            workload = AsyncWorkload(pool.connection, tasks=8).start()
            try:
                assert await workload.wait_for_requests(50)
                logins_ok = await arotate_three_times(stack, app, sm_client, [workload])
            finally:
                result = await workload.stop()
            return result, logins_ok, pool

    result, logins_ok, pool = run(scenario(), timeout=90)
    report(f"async {route}", result, pool.provider)
    assert_three_rotations_served(stack, app, result, logins_ok)


@pytest.mark.load
def test_async_secrets_manager_down_with_warm_cache(
    stack: Any, app: Any, aws_env: dict[str, str]
) -> None:
    """Stale-if-error: Secrets Manager down for 3 s while the cache expires every second and
    connections are remade every second: 0 failed requests."""

    async def scenario() -> tuple[WorkloadReport, AsyncCredentialPool]:
        async with new_pool(app.secret_id, stack.pgbouncer, ttl=0.5,
                            max_lifetime=1.0) as pool:
            await pool.wait(timeout=15)
            workload = AsyncWorkload(pool.connection, tasks=8).start()
            try:
                assert await workload.wait_for_requests(50)
                with stack.secrets.outage():
                    workload.mark("outage")
                    await asyncio.sleep(3.0)  # the outage lasts 3 s: this *is* the scenario
                workload.mark("back")
            finally:
                result = await workload.stop()
            return result, pool

    result, pool = run(scenario())
    report("async secrets-manager-down", result, pool.provider)
    assert result.failures == [], result.summary()
    assert pool.provider.get_stats()["stale_served"] >= 1


# -- the default pool of get_async_connection() --------------------------------------------


@pytest.fixture
def default_env(stack: Any, app: Any, aws_env: dict[str, str],
                monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("DBCREDS_SECRET_ID", app.secret_id)
    monkeypatch.setenv("DBCREDS_HOST", stack.pgbouncer.host)
    monkeypatch.setenv("DBCREDS_PORT", str(stack.pgbouncer.port))
    yield app
    from dbcreds import aio

    aio._close_default_outside_loop()


def test_get_async_connection_reuses_one_pool_per_loop(
    default_env: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from dbcreds.aio import default_async_pool

    async def invocation() -> tuple[str, int]:
        async with dbcreds.get_async_connection() as conn:
            row = await (await conn.execute("select current_user")).fetchone()
        assert row is not None
        return row[0], id(await default_async_pool())

    # The recommended Lambda shape: one loop for the life of the process.
    loop = asyncio.new_event_loop()
    try:
        first = loop.run_until_complete(invocation())
        second = loop.run_until_complete(invocation())
        assert first == second == (default_env.username, first[1])  # same pool, reused
        loop.run_until_complete(dbcreds.close_default_async_pool())
    finally:
        loop.close()

    # asyncio.run per invocation: each loop gets its own pool; the old one is let go.
    caplog.set_level(logging.WARNING, logger="dbcreds.aio")
    a = run(invocation())
    b = run(invocation())
    assert a[0] == b[0] == default_env.username and a[1] != b[1]
    assert any("another event loop" in r.getMessage() for r in caplog.records)
