"""dbcreds.sqlalchemy on the real stack: SQLAlchemy 2.x engines (psycopg 3 dialect, sync and
asyncio) that log in with a rotated secret.

* zero failed requests through three rotations, through both proxy behaviours, with 8 threads
  (``Session``) or 8 tasks (``AsyncSession``), beside the same engine used the usual way (the
  password read from the secret once at start), which fails requests in the same rotations;
* a wrong secret: `AuthenticationFailed` within 2 s, nothing secret shown;
* SQLAlchemy's contract: pre-ping, recycle, pool and dialect events, dispose, reset on return;
* the URL's host/port/database win over the secret's; the ``DBCREDS_*`` environment.

Each asyncio scenario runs in ``asyncio.run`` inside a plain test, bounded by
``asyncio.wait_for`` (no pytest plugin needed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest
import sqlalchemy
from sqlalchemy import URL, event, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

import dbcreds
import dbcreds.sqlalchemy as dsa
from dbcreds import AuthenticationFailed, SecretProvider
from dbcreds_testing.workload import AsyncWorkload, Workload, WorkloadReport
from rotations import (
    PROXIES,
    arotate_three_times,
    assert_three_rotations_served,
    assert_usual_way_broke,
    report,
    rotate_three_times,
    stage_doc,
)

T = TypeVar("T")

#: the load tests' pools: 4 connections (+4 overflow), recycled every 2 s (so that new logins
#: happen all the time, during the rotations too), each pinged before use
LOAD_POOL = {"pool_size": 4, "max_overflow": 4, "pool_recycle": 2, "pool_pre_ping": True}


def run(coro: Coroutine[Any, Any, T], timeout: float = 90.0) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def url_of(stack: Any, server: Any, *, driver: str = "postgresql+psycopg", **kw: Any) -> URL:
    return URL.create(driver, host=server.host, port=server.port, database=stack.dbname, **kw)


def usual_url(stack: Any, server: Any, sm_client: Any, secret_id: str) -> URL:
    """The usual way: the password read from the secret once, at start, into the URL."""
    doc = stage_doc(sm_client, secret_id, "AWSCURRENT")
    assert doc is not None
    return url_of(stack, server, username=doc["username"], password=doc["password"])


def usual_connect_args(stack: Any) -> dict[str, Any]:
    """What a careful user of plain SQLAlchemy passes: verify-full, no prepared statements
    (both proxies)."""
    return {"sslmode": "verify-full", "sslrootcert": stack.ca_file, "prepare_threshold": None}


@pytest.fixture
def engines(aws_env: dict[str, str]) -> Iterator[list[Any]]:
    """Sync engines to dispose at the end of a test."""
    made: list[Any] = []
    yield made
    for engine in made:
        engine.dispose()


#: threads (tasks) of the usual way's workload: enough to show its failures, leaving the CPU
#: to dbcreds' 8
USUAL_WORKERS = 4


def warm_up(engine: sqlalchemy.Engine, n: int = 8) -> None:
    """Fill the pool (as the psycopg_pool tests' ``pool.wait()``) and run the request once
    (SQLAlchemy's first ``Session`` imports and compiles lazily): the first logins and
    imports are not what the load test measures."""
    select_one(engine)
    with contextlib.ExitStack() as stack:
        for _ in range(n):
            stack.enter_context(engine.connect())


async def awarm_up(engine: AsyncEngine, n: int = 8) -> None:
    async with AsyncSession(engine) as session:
        await session.execute(text("select 1"))
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(n):
            await stack.enter_async_context(engine.connect())


def select_one(engine: sqlalchemy.Engine) -> None:
    with Session(engine) as session:
        assert session.execute(text("select 1")).scalar_one() == 1


def backend_pid(engine: sqlalchemy.Engine) -> int:
    with engine.connect() as conn:
        pid: int = conn.execute(text("select pg_backend_pid()")).scalar_one()
        return pid


# -- three rotations under load -------------------------------------------------------------


@pytest.mark.load
@pytest.mark.parametrize("route", list(PROXIES))
def test_sync_three_rotations_under_load_zero_failures(
    stack: Any, rotating_app: Any, sm_client: Any, engines: list[Any], route: str
) -> None:
    """8 threads, each request a ``Session`` query, through a dbcreds engine whose connections
    are recycled every 2 s, while the real rotation handler rotates 3 times: 0 failures.
    The same engine used the usual way fails requests in the same rotations."""
    app = rotating_app
    server = getattr(stack, PROXIES[route])
    provider = SecretProvider(app.secret_id)
    engine = dsa.create_engine(url_of(stack, server), provider=provider, **LOAD_POOL)
    usual = sqlalchemy.create_engine(usual_url(stack, server, sm_client, app.secret_id),
                                     connect_args=usual_connect_args(stack), **LOAD_POOL)
    engines += [engine, usual]
    warm_up(engine)
    warm_up(usual, USUAL_WORKERS)

    with Workload(request=lambda: select_one(engine), threads=8) as ours, \
            Workload(request=lambda: select_one(usual), threads=USUAL_WORKERS) as plain:
        assert ours.wait_for_requests(50) and plain.wait_for_requests(50)
        logins_ok = rotate_three_times(stack, app, sm_client, [ours, plain])
        result, usual_result = ours.stop(), plain.stop()

    report(f"sqlalchemy sync {route}", result, provider)
    report(f"sqlalchemy sync {route}, the usual way", usual_result)
    assert_three_rotations_served(stack, app, result, logins_ok)
    assert_usual_way_broke(usual_result)


@pytest.mark.load
@pytest.mark.parametrize("route", list(PROXIES))
def test_async_three_rotations_under_load_zero_failures(
    stack: Any, rotating_app: Any, sm_client: Any, route: str
) -> None:
    """The asyncio twin: 8 tasks, each request an ``AsyncSession`` query."""
    app = rotating_app
    server = getattr(stack, PROXIES[route])
    provider = SecretProvider(app.secret_id)

    async def request(engine: AsyncEngine) -> None:
        async with AsyncSession(engine) as session:
            assert (await session.execute(text("select 1"))).scalar_one() == 1

    async def scenario() -> tuple[WorkloadReport, WorkloadReport, list[bool]]:
        engine = dsa.create_async_engine(url_of(stack, server), provider=provider, **LOAD_POOL)
        usual = sqlalchemy.ext.asyncio.create_async_engine(
            usual_url(stack, server, sm_client, app.secret_id),
            connect_args=usual_connect_args(stack), **LOAD_POOL)
        try:
            await awarm_up(engine)
            await awarm_up(usual, USUAL_WORKERS)
            ours = AsyncWorkload(request=lambda: request(engine), tasks=8).start()
            plain = AsyncWorkload(request=lambda: request(usual), tasks=USUAL_WORKERS).start()
            assert await ours.wait_for_requests(50) and await plain.wait_for_requests(50)
            logins_ok = await arotate_three_times(stack, app, sm_client, [ours, plain])
            return await ours.stop(), await plain.stop(), logins_ok
        finally:
            await engine.dispose()
            await usual.dispose()

    result, usual_result, logins_ok = run(scenario(), timeout=180)
    report(f"sqlalchemy asyncio {route}", result, provider)
    report(f"sqlalchemy asyncio {route}, the usual way", usual_result)
    assert_three_rotations_served(stack, app, result, logins_ok)
    assert_usual_way_broke(usual_result)


# -- a wrong secret: AuthenticationFailed at once ----------------------------------------------


def assert_nothing_secret(app: Any, wrong: str, texts: list[str]) -> None:
    assert not [t for t in texts if wrong in t or app.password in t]


@pytest.mark.parametrize("route", list(PROXIES))
def test_sync_wrong_password_fails_fast(
    stack: Any, app: Any, engines: list[Any], route: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A wrong secret: 6 threads on a pool of 2 (4 of them wait for a slot), each gets
    AuthenticationFailed itself (not SQLAlchemy's OperationalError, not a TimeoutError after
    pool_timeout=30 s) within 2 s; a later caller at once; no password in the errors, the
    engine's repr, its URL or the logs."""
    wrong = "Wr0ng-" + app.password[:10]
    stack.put_current(app.secret_id, stack.secret_doc(app.username, wrong))
    caplog.set_level(logging.DEBUG)
    engine = dsa.create_engine(url_of(stack, getattr(stack, PROXIES[route])),
                               secret_id=app.secret_id, pool_size=2, max_overflow=0,
                               pool_timeout=30, connect_args={"connect_timeout": 30})
    engines.append(engine)

    def one() -> BaseException | None:
        try:
            select_one(engine)
        except Exception as exc:
            return exc
        return None

    t0 = time.monotonic()
    with ThreadPoolExecutor(6) as pool:
        errors = list(pool.map(lambda _: one(), range(6)))
    elapsed = time.monotonic() - t0
    print(f"\n[sqlalchemy sync {route}] AuthenticationFailed after {elapsed * 1000:.0f} ms")
    assert elapsed < 2.0, f"AuthenticationFailed after {elapsed:.1f}s"
    assert all(isinstance(e, AuthenticationFailed) for e in errors), errors
    first = errors[0]
    assert app.secret_id in str(first)

    t0 = time.monotonic()
    with pytest.raises(AuthenticationFailed) as later:  # told at once, too
        select_one(engine)
    assert time.monotonic() - t0 < 0.5
    texts = [str(e) for e in errors] + [str(later.value), repr(later.value), repr(engine),
                                         str(engine.url), repr(engine.url),
                                         repr(dsa.login_of(engine))]
    texts += [r.getMessage() + (r.exc_text or "") for r in caplog.records]
    assert_nothing_secret(app, wrong, texts)
    assert all(e.__cause__ is None and e.__context__ is None for e in errors if e)


@pytest.mark.parametrize("route", list(PROXIES))
def test_async_wrong_password_fails_fast(
    stack: Any, app: Any, aws_env: dict[str, str], route: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    wrong = "Wr0ng-" + app.password[:10]
    stack.put_current(app.secret_id, stack.secret_doc(app.username, wrong))
    caplog.set_level(logging.DEBUG)

    async def scenario() -> tuple[float, list[BaseException], str]:
        engine = dsa.create_async_engine(url_of(stack, getattr(stack, PROXIES[route])),
                                         secret_id=app.secret_id, pool_size=2, max_overflow=0,
                                         pool_timeout=30, connect_args={"connect_timeout": 30})
        try:
            async def one() -> None:
                async with AsyncSession(engine) as session:
                    await session.execute(text("select 1"))

            t0 = time.monotonic()
            errors = await asyncio.gather(*(one() for _ in range(6)), return_exceptions=True)
            elapsed = time.monotonic() - t0
            return elapsed, [e for e in errors if isinstance(e, BaseException)], repr(engine)
        finally:
            await engine.dispose()

    elapsed, errors, engine_repr = run(scenario(), timeout=30)
    print(f"\n[sqlalchemy asyncio {route}] AuthenticationFailed after {elapsed * 1000:.0f} ms")
    assert elapsed < 2.0, f"AuthenticationFailed after {elapsed:.1f}s"
    assert len(errors) == 6 and all(isinstance(e, AuthenticationFailed) for e in errors), errors
    texts = [str(e) for e in errors] + [repr(errors[0]), engine_repr]
    texts += [r.getMessage() + (r.exc_text or "") for r in caplog.records]
    assert_nothing_secret(app, wrong, texts)


# -- what the URL and the environment configure -----------------------------------------------


def test_the_urls_host_port_and_database_win_over_the_secrets(
    stack: Any, app: Any, engines: list[Any]
) -> None:
    """The secret names a host, port and database that do not exist; the URL names the
    proxy's: the URL wins. A URL with none of them uses the secret's."""
    stack.put_current(app.secret_id, stack.secret_doc(
        app.username, app.password, host="nowhere.invalid", port=1, dbname="no_such_db"))
    server = stack.rds_proxy
    engine = dsa.create_engine(url_of(stack, server), secret_id=app.secret_id)
    engines.append(engine)
    with engine.connect() as conn:
        assert conn.execute(text("select current_database(), current_user")).one() == (
            stack.dbname, app.username)
        assert conn.connection.dbapi_connection.info.port == server.port  # type: ignore[union-attr]

    stack.put_current(app.secret_id, stack.secret_doc(app.username, app.password))
    # (a provider of its own: engines naming the secret share one cache, which still holds
    # the value above for its TTL)
    bare = dsa.create_engine(provider=SecretProvider(app.secret_id))  # the secret's endpoint
    engines.append(bare)
    with bare.connect() as conn:
        assert conn.connection.dbapi_connection.info.port == stack.postgres.port  # type: ignore[union-attr]
        assert conn.execute(text("select current_database()")).scalar_one() == stack.dbname


def test_connect_args_name_the_endpoint_for_sync_and_async_engines_alike(
    stack: Any, app: Any, engines: list[Any]
) -> None:
    """``connect_args`` are configuration, as the URL is: a host/port they name wins over the
    secret's, for a sync engine (do_connect) and an asyncio one (async_creator) alike."""
    stack.put_current(app.secret_id, stack.secret_doc(
        app.username, app.password, host="nowhere.invalid", port=1))
    server = stack.rds_proxy
    where = {"host": server.host, "port": server.port}
    engine = dsa.create_engine(f"postgresql+psycopg:///{stack.dbname}",
                               provider=SecretProvider(app.secret_id), connect_args=where)
    engines.append(engine)
    with engine.connect() as conn:
        assert conn.connection.dbapi_connection.info.port == server.port  # type: ignore[union-attr]

    async def scenario() -> int:
        aengine = dsa.create_async_engine(f"postgresql+psycopg:///{stack.dbname}",
                                          provider=SecretProvider(app.secret_id),
                                          connect_args=where)
        try:
            async with aengine.connect() as conn:
                raw = await conn.get_raw_connection()
                return int(raw.driver_connection.info.port)  # type: ignore[union-attr]
        finally:
            await aengine.dispose()

    assert run(scenario()) == server.port


def test_the_environment_configures_an_engine_without_arguments(
    stack: Any, app: Any, engines: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Lambda function's module-level ``engine = dbcreds.sqlalchemy.create_engine()``."""
    monkeypatch.setenv("DBCREDS_SECRET_ID", app.secret_id)
    monkeypatch.setenv("DBCREDS_HOST", stack.pgbouncer.host)
    monkeypatch.setenv("DBCREDS_PORT", str(stack.pgbouncer.port))
    engine = dsa.create_engine()
    engines.append(engine)
    with engine.connect() as conn:
        assert conn.connection.dbapi_connection.info.port == stack.pgbouncer.port  # type: ignore[union-attr]
        assert conn.execute(text("select current_user")).scalar_one() == app.username
    assert dsa.login_of(engine).source.secret_id == app.secret_id


def test_tls_settings_in_the_url_are_the_configured_tls(
    stack: Any, app: Any, engines: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``sslrootcert`` in the URL's query is the CA bundle a login verifies the server with
    (verify-full); a CA that does not sign the server's certificate is refused as
    UntrustedServer, at once, with no password sent."""
    monkeypatch.delenv("DBCREDS_SSLROOTCERT")
    monkeypatch.delenv("PGSSLROOTCERT")
    server = stack.postgres
    good = dsa.create_engine(url_of(stack, server, query={"sslrootcert": stack.ca_file}),
                             secret_id=app.secret_id)
    engines.append(good)
    with good.connect() as conn:
        info = conn.connection.dbapi_connection.info  # type: ignore[union-attr]
        assert info.get_parameters()["sslmode"] == "verify-full"
        assert conn.execute(text("select ssl from pg_stat_ssl where pid = pg_backend_pid()")
                            ).scalar_one() is True

    bad = dsa.create_engine(url_of(stack, server), secret_id=app.secret_id)  # system trust
    engines.append(bad)
    with pytest.raises(dbcreds.UntrustedServer):
        bad.connect()


# -- SQLAlchemy's contract ----------------------------------------------------------------------


def test_pool_options_and_events_work_as_documented(
    stack: Any, app: Any, engines: list[Any]
) -> None:
    """QueuePool's size, pool events (connect, checkout, checkin, reset), a do_connect
    listener added after dbcreds' (it sees and changes the connect arguments), dispose."""
    engine = dsa.create_engine(url_of(stack, stack.postgres), secret_id=app.secret_id,
                               pool_size=2, max_overflow=0)
    engines.append(engine)
    seen: dict[str, int] = {"connect": 0, "checkout": 0, "checkin": 0, "reset": 0}
    cparams_seen: list[dict[str, Any]] = []

    for name in ("connect", "checkout", "checkin", "reset"):
        def count(*args: Any, name: str = name) -> None:
            seen[name] += 1
        event.listen(engine, name, count)

    @event.listens_for(engine, "do_connect")
    def set_application_name(dialect: Any, rec: Any, cargs: Any, cparams: Any) -> None:
        cparams_seen.append(dict(cparams))
        cparams["application_name"] = "from-do-connect"

    assert isinstance(engine.pool, sqlalchemy.pool.QueuePool)
    assert engine.pool.size() == 2
    with engine.connect() as a, engine.connect() as b:
        names = {c.execute(text("show application_name")).scalar_one() for c in (a, b)}
        assert names == {"from-do-connect"}
        assert engine.pool.checkedout() == 2
    assert seen["connect"] == 2 and seen["checkout"] == 2 and seen["checkin"] == 2
    assert seen["reset"] == 2  # reset on return (rollback) as usual
    assert len(cparams_seen) == 2 and cparams_seen[0]["host"] == stack.postgres.host
    assert "password" not in cparams_seen[0]  # the listener never sees the secret

    pid = backend_pid(engine)
    assert engine.pool.checkedin() == 2
    engine.dispose()
    assert engine.pool.checkedin() == 0  # a new pool
    assert backend_pid(engine) != pid  # new connection, logged in again through dbcreds
    assert seen["connect"] == 3


def test_pre_ping_replaces_a_dead_connection(
    stack: Any, app: Any, engines: list[Any]
) -> None:
    engine = dsa.create_engine(url_of(stack, stack.postgres), secret_id=app.secret_id,
                               pool_size=1, max_overflow=0, pool_pre_ping=True)
    engines.append(engine)
    pid = backend_pid(engine)
    with stack.admin() as admin:
        admin.execute("select pg_terminate_backend(%s)", [pid])
    assert backend_pid(engine) != pid  # pinged, found dead, replaced: no error to the caller


def test_recycle_replaces_an_old_connection(
    stack: Any, app: Any, engines: list[Any]
) -> None:
    engine = dsa.create_engine(url_of(stack, stack.postgres), secret_id=app.secret_id,
                               pool_size=1, max_overflow=0, pool_recycle=1)
    engines.append(engine)
    pid = backend_pid(engine)
    assert backend_pid(engine) == pid  # reused while young
    time.sleep(1.1)  # the connection's age is the scenario (pool_recycle=1), not a sync point
    assert backend_pid(engine) != pid


def test_async_pool_and_events(stack: Any, app: Any, aws_env: dict[str, str]) -> None:
    """The asyncio engine: its pool events fire, pre-ping replaces a dead connection, dispose
    closes, connect_args apply, and the engine's psycopg adapters (the dialect's connect
    arguments) reach each connection."""
    engine = dsa.create_async_engine(url_of(stack, stack.postgres), secret_id=app.secret_id,
                                     pool_size=1, max_overflow=0, pool_pre_ping=True,
                                     connect_args={"application_name": "async-dbcreds"},
                                     json_deserializer=lambda value: ("custom", value))
    connects: list[Any] = []
    event.listen(engine.sync_engine, "connect", lambda dbapi, rec: connects.append(dbapi))

    def terminate(pid: int) -> None:
        with stack.admin() as admin:
            admin.execute("select pg_terminate_backend(%s)", [pid])

    async def pid_of() -> int:
        async with engine.connect() as conn:
            pid: int = (await conn.execute(text("select pg_backend_pid()"))).scalar_one()
            return pid

    async def scenario() -> tuple[str, Any, list[int]]:
        try:
            async with engine.connect() as conn:
                name = (await conn.execute(text("show application_name"))).scalar_one()
                doc = (await conn.execute(text("""select '{"a": 1}'::json"""))).scalar_one()
            pids = [await pid_of(), await pid_of()]  # reused
            await asyncio.to_thread(terminate, pids[-1])
            pids.append(await pid_of())  # pinged, found dead, replaced
            await engine.dispose()
            pids.append(await pid_of())  # a new pool
            return name, doc, pids
        finally:
            await engine.dispose()

    name, doc, pids = run(scenario(), timeout=30)
    assert name == "async-dbcreds"
    assert pids[0] == pids[1] and len(set(pids[1:])) == 3
    assert len(connects) == 3
    assert doc[0] == "custom"  # the dialect's psycopg adapters (json_deserializer) apply


def test_async_creator_for_an_engine_built_by_hand(
    stack: Any, app: Any, aws_env: dict[str, str]
) -> None:
    url = url_of(stack, stack.pgbouncer)
    creator = dsa.async_creator(url, secret_id=app.secret_id)
    engine = sqlalchemy.ext.asyncio.create_async_engine(url, async_creator=creator)

    async def scenario() -> str:
        try:
            async with AsyncSession(engine) as session:
                user: str = (await session.execute(text("select current_user"))).scalar_one()
                return user
        finally:
            await engine.dispose()

    assert run(scenario(), timeout=30) == app.username
    assert app.password not in repr(creator)


def test_attach_to_an_engine_built_by_hand(
    stack: Any, app: Any, engines: list[Any]
) -> None:
    engine = sqlalchemy.create_engine(url_of(stack, stack.postgres), pool_size=1)
    engines.append(engine)
    assert dsa.attach(engine, SecretProvider(app.secret_id)) is engine
    with Session(engine) as session:
        assert session.execute(text("select current_user")).scalar_one() == app.username
    with pytest.raises(ValueError, match="already"):
        dsa.attach(engine, SecretProvider(app.secret_id))


def test_before_a_snapstart_snapshot_engines_forget_secrets_and_connections(
    stack: Any, app: Any, engines: list[Any]
) -> None:
    """The registry's ``sqlalchemy`` default (what SnapStart's before-snapshot hook calls):
    every engine built here drops its cached secret and its pooled connections, and makes
    new ones on its next use."""
    from dbcreds import _registry

    provider = SecretProvider(app.secret_id)
    engine = dsa.create_engine(url_of(stack, stack.postgres), provider=provider)
    engines.append(engine)
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        pid = conn.execute(text("select pg_backend_pid()")).scalar_one()
    assert engine.pool.checkedin() == 1 and provider.version_id is not None

    (default,) = [d for d in _registry.registered_defaults() if d.name == "sqlalchemy"]
    assert default.close() is True and default.reopen is None
    assert engine.pool.checkedin() == 0 and provider.version_id is None
    assert raw is not None and raw.closed  # closed, not merely forgotten
    assert backend_pid(engine) != pid  # the engine works on


def test_a_connection_past_recycle_is_kept_while_a_login_waits_out_a_rotation(
    stack: Any, app: Any, engines: list[Any]
) -> None:
    """As CredentialPool keeps a connection past max_lifetime while a login is retrying, a
    connection that comes back past ``pool_recycle`` then is kept a second longer; otherwise
    SQLAlchemy recycles it as usual."""
    engine = dsa.create_engine(url_of(stack, stack.postgres), secret_id=app.secret_id,
                               pool_size=1, max_overflow=0, pool_recycle=1)
    engines.append(engine)
    policy = dsa.login_of(engine).policy

    def pid_after_holding_past_recycle(retrying: bool) -> tuple[int, int]:
        with engine.connect() as conn:
            pid = conn.execute(text("select pg_backend_pid()")).scalar_one()
            time.sleep(1.1)  # the connection's age is the scenario (pool_recycle=1)
            if retrying:
                policy._count_retrying(+1)  # a login is waiting out a rotation window
        try:
            return pid, backend_pid(engine)
        finally:
            if retrying:
                policy._count_retrying(-1)

    kept = pid_after_holding_past_recycle(retrying=True)
    assert kept[0] == kept[1]
    recycled = pid_after_holding_past_recycle(retrying=False)
    assert recycled[0] != recycled[1]
