"""dbcreds.asyncpg on the real stack: asyncpg's own pool, logging in through dbcreds.

Each scenario runs in ``asyncio.run`` inside a plain test, bounded by ``asyncio.wait_for``
(no pytest plugin), as ``test_aio.py`` does. What is shown:

* zero failed requests through three rotations, through both proxy behaviours, with 8 tasks
  calling ``pool.fetchval`` on connections that asyncpg renews all the time (``max_queries``),
  while asyncpg used the usual way (the password read once at start) fails in the same
  rotations;
* a wrong secret: `AuthenticationFailed` for every caller within 2 s (asyncpg's own timeouts
  set to 30 s), a later caller at once, nothing secret in any text, and the fixed secret
  picked up by itself;
* TLS: verify-full against the stack's CA, the host name checked, no password to an
  impostor (plaintext, or TLS with an untrusted certificate): `UntrustedServer`; the libpq
  environment (``PGSSLMODE``, ``PGPASSWORD``, ``.pgpass``, ``PGHOST`` ...) changes nothing;
* asyncpg's contract: ``init``, ``setup``, ``reset``, ``connection_class``, ``record_class``,
  ``max_queries``, ``max_inactive_connection_lifetime``, ``expire_connections``,
  ``set_connect_args``, a ``connect=`` of the caller's, ``statement_cache_size``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest
import trustme

import dbcreds.asyncpg as dbc_asyncpg
from dbcreds import AuthenticationFailed, ConfigurationError, SecretProvider, UntrustedServer
from dbcreds_testing.workload import AsyncWorkload, WorkloadReport
from rotations import (
    PROXIES,
    arotate_three_times,
    assert_three_rotations_served,
    assert_usual_way_broke,
    report,
    stage_doc,
)
from test_tls_adversarial import FakeServer

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run one scenario on a fresh loop, bounded in time."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def dsn_of(server: Any, dbname: str) -> str:
    return f"postgresql://{server.host}:{server.port}/{dbname}"


class CountingConnect:
    """A ``connect=`` of the caller's (asyncpg's documented hook): counts the logins and
    records what asyncpg passed."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.times: list[float] = []

    async def __call__(self, dsn: str | None = None, **kwargs: Any) -> Any:
        self.calls.append({k: v for k, v in kwargs.items() if k != "password"})
        conn = await asyncpg.connect(dsn, **kwargs)
        self.times.append(time.perf_counter())
        return conn


def session(conn: Any) -> Any:
    return conn.fetchrow(
        "select current_user as user, pg_backend_pid() as pid, current_database() as db,"
        " (select ssl from pg_stat_ssl where pid = pg_backend_pid()) as ssl"
    )


# -- the basics -------------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["postgres", "pgbouncer", "rds_proxy"])
def test_pool_is_asyncpgs_own_and_logs_in_with_the_secret(
    stack: Any, app: Any, aws_env: dict[str, str], via: str
) -> None:
    server = getattr(stack, via)

    async def scenario() -> tuple[Any, ...]:
        async with dbc_asyncpg.create_pool(
            dsn_of(server, stack.dbname), secret_id=app.secret_id, min_size=1, max_size=2
        ) as pool:
            assert type(pool) is asyncpg.Pool
            user = await pool.fetchval("select current_user")
            async with pool.acquire() as conn:
                texts = repr(pool) + repr(conn) + str(pool) + repr(pool._connect)
            return user, texts

    user, texts = run(scenario())
    assert user == app.username
    assert app.password not in texts


def test_tls_verify_full_is_used_and_the_secret_gives_host_and_database(
    stack: Any, app: Any, aws_env: dict[str, str]
) -> None:
    """No dsn: the secret's host, port and database (the real database), over verified TLS."""

    async def scenario() -> Any:
        conn = await dbc_asyncpg.connect(secret_id=app.secret_id)
        try:
            return await session(conn), repr(conn)
        finally:
            await conn.close()

    row, text = run(scenario())
    assert row["user"] == app.username and row["db"] == stack.dbname and row["ssl"] is True
    assert app.password not in text


def test_the_libpq_environment_changes_nothing(
    stack: Any, app: Any, aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """What asyncpg would read from the environment when not told (PGSSLMODE, PGPASSWORD,
    .pgpass, PGHOST, PGPORT, PGUSER, PGDATABASE, PGSERVICE) neither weakens nor redirects
    a login: dbcreds passes all of it explicitly."""
    pgpass = tmp_path / ".pgpass"
    pgpass.write_text(f"*:*:*:*:Wr0ng-from-pgpass-{app.password[:6]}\n")
    pgpass.chmod(0o600)
    service = tmp_path / "pg_service.conf"
    service.write_text("[evil]\nhost=203.0.113.1\nsslmode=disable\npassword=wrong\n")
    for name, value in {
        "PGSSLMODE": "disable", "PGPASSWORD": "Wr0ng-from-env", "PGPASSFILE": str(pgpass),
        "PGHOST": "203.0.113.1", "PGPORT": "1", "PGUSER": "nobody", "PGDATABASE": "nothing",
        "PGSERVICEFILE": str(service), "PGSERVICE": "evil", "HOME": str(tmp_path),
    }.items():
        monkeypatch.setenv(name, value)

    async def scenario() -> Any:
        async with dbc_asyncpg.create_pool(
            dsn_of(stack.postgres, stack.dbname), secret_id=app.secret_id, min_size=1,
            max_size=1,
        ) as pool, pool.acquire() as conn:
            return await session(conn)

    row = run(scenario())
    assert row["user"] == app.username and row["db"] == stack.dbname and row["ssl"] is True


def test_host_port_database_given_win_over_the_secret(
    stack: Any, aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A secret that names a host nobody listens on: the dsn's (or the keyword arguments')
    endpoint wins, and the DBCREDS_* environment configures the rest when no secret is given."""
    app = stack.new_app("apgwin")
    stack.put_current(app.secret_id, stack.secret_doc(app.username, app.password,
                                                      host="localhost", port=1, dbname="nope"))
    monkeypatch.setenv("DBCREDS_SECRET_ID", app.secret_id)
    monkeypatch.setenv("DBCREDS_HOST", "127.0.0.1")
    monkeypatch.setenv("DBCREDS_PORT", "2")  # the dsn wins over the environment, too

    async def scenario() -> list[Any]:
        rows = []
        async with dbc_asyncpg.create_pool(
            dsn_of(stack.pgbouncer, stack.dbname), min_size=0, max_size=1
        ) as pool:
            rows.append(await pool.fetchval("select current_user"))
        async with dbc_asyncpg.create_pool(
            secret_id=app.secret_id, host="localhost", port=stack.postgres.port,
            database=stack.dbname, min_size=0, max_size=1,
        ) as pool, pool.acquire() as conn:
            rows.append(await session(conn))
        return rows

    try:
        via_env, direct = run(scenario())
    finally:
        stack.rds_proxy.unwatch(app.secret_id)
    assert via_env == app.username
    assert direct["db"] == stack.dbname and direct["ssl"] is True


# -- three rotations under load ---------------------------------------------------------------

#: queries after which asyncpg closes a connection (it has no max lifetime; each request is
#: two queries: the query and the pool's reset on release): with 8 tasks, a few new logins a
#: second, as the psycopg pools' 2 s max_lifetime gives
MAX_QUERIES = 100


@pytest.mark.load
@pytest.mark.parametrize("route", list(PROXIES))
def test_three_rotations_under_load_zero_failures(
    stack: Any, rotating_app: Any, sm_client: Any, route: str
) -> None:
    """8 tasks loop ``await pool.fetchval("select 1")`` on a dbcreds pool while the real
    rotation handler rotates three times; beside it, 4 tasks on ``asyncpg.create_pool`` with
    the password read once at start, in the same rotations, through the same proxy. Both
    renew connections after MAX_QUERIES queries.

    The usual way uses the database ``postgres``: the proxy keeps a server pool per database
    and user, and the stand-in's own server logins fail between setSecret and its re-read of
    the secret (as RDS Proxy's would), so a second application's load in the same server pool
    would fail queries on established connections of both, which no login policy can help."""
    app = rotating_app
    server = getattr(stack, PROXIES[route])
    provider = SecretProvider(app.secret_id)
    logins = CountingConnect()
    doc = stage_doc(sm_client, app.secret_id, "AWSCURRENT")
    assert doc is not None
    tls = ssl.create_default_context(cafile=stack.ca_file)
    options = {"min_size": 4, "max_size": 8, "max_queries": MAX_QUERIES}

    async def scenario() -> tuple[WorkloadReport, WorkloadReport, list[bool]]:
        async with dbc_asyncpg.create_pool(
            dsn_of(server, stack.dbname), provider=provider, connect=logins, **options
        ) as pool, asyncpg.create_pool(
            host=server.host, port=server.port, user=doc["username"], password=doc["password"],
            database="postgres", ssl=tls, statement_cache_size=0,
            **{**options, "min_size": 2, "max_size": 4},
        ) as usual:
            ours = AsyncWorkload(request=lambda: pool.fetchval("select 1"), tasks=8).start()
            theirs = AsyncWorkload(request=lambda: usual.fetchval("select 1"), tasks=4).start()
            try:
                assert await ours.wait_for_requests(50)
                assert await theirs.wait_for_requests(50)
                logins_ok = await arotate_three_times(stack, app, sm_client, [ours, theirs])
            finally:
                result = await ours.stop()
                usual_result = await theirs.stop()
            return result, usual_result, logins_ok

    result, usual_result, logins_ok = run(scenario(), timeout=120)
    report(f"asyncpg {route}", result, provider)
    report(f"asyncpg usual way {route}", usual_result)
    marks = [m.at for m in result.marks]
    t0 = time.perf_counter() - result.duration
    during = [t - t0 for t in logins.times if marks[0] <= t - t0 <= marks[-1]]
    print(f"  dbcreds logins during the rotations: {len(during)}")
    assert_three_rotations_served(stack, app, result, logins_ok)
    assert_usual_way_broke(usual_result)
    assert len(during) >= 10  # connections really logged in while the rotations ran


# -- fast failure -----------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["postgres", "pgbouncer"])
def test_wrong_password_fails_every_caller_fast(
    stack: Any, app: Any, aws_env: dict[str, str], via: str, caplog: pytest.LogCaptureFixture,
) -> None:
    """A wrong secret: 6 callers get AuthenticationFailed within 2 s (asyncpg's own acquire and
    connect timeouts are 30 s), a later caller at once; no password in any text; once the
    secret is fixed, the next login let through picks it up."""
    wrong = "Wr0ng-" + app.password[:10]
    stack.put_current(app.secret_id, stack.secret_doc(app.username, wrong))
    caplog.set_level(logging.DEBUG)
    server = getattr(stack, via)

    async def burst(pool: Any, n: int) -> list[BaseException | None]:
        async def one() -> None:
            async with pool.acquire(timeout=30) as conn:
                await conn.fetchval("select 1")

        results = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
        return list(results)

    async def scenario() -> tuple[float, list[Any], list[Any], float, list[Any], str]:
        pool = dbc_asyncpg.create_pool(
            dsn_of(server, stack.dbname), secret_id=app.secret_id, min_size=0, max_size=4,
            timeout=30, command_timeout=30,
        )
        async with pool:
            t0 = time.monotonic()
            errors = await burst(pool, 6)
            elapsed = time.monotonic() - t0
            t1 = time.monotonic()
            later = await burst(pool, 1)
            later_s = time.monotonic() - t1
            # The secret is fixed: the next login let through (after the pause, cut short
            # here) refreshes the secret and works; from then on every caller is served.
            stack.put_current(app.secret_id, stack.secret_doc(app.username, app.password))
            pool._connect._current[1]._retry_at = 0.0
            healed = await burst(pool, 1) + await burst(pool, 3)
            return elapsed, errors, later, later_s, healed, repr(pool)

    elapsed, errors, later, later_s, healed, pool_repr = run(scenario())
    print(f"\n[asyncpg {via}] AuthenticationFailed after {elapsed * 1000:.0f} ms "
          f"(a later caller: {later_s * 1000:.0f} ms)")
    assert elapsed < 2.0, f"AuthenticationFailed after {elapsed:.1f}s"
    assert len(errors) == 6 and all(isinstance(e, AuthenticationFailed) for e in errors), errors
    assert isinstance(later[0], AuthenticationFailed) and later_s < 0.5
    assert app.secret_id in str(errors[0])
    assert healed == [None, None, None, None]
    texts = [str(e) for e in [*errors, *later]] + [repr(later[0]), pool_repr] + [
        r.getMessage() + (r.exc_text or "") for r in caplog.records
    ]
    assert not [t for t in texts if wrong in t or app.password in t]
    assert all(e.__cause__ is None and e.__context__ is None for e in [*errors, *later])


def test_pool_start_and_connect_fail_fast_too(
    stack: Any, app: Any, aws_env: dict[str, str]
) -> None:
    """With min_size > 0 the pool's start fails with AuthenticationFailed; so does connect()."""
    wrong = "Wr0ng-" + app.password[:10]
    stack.put_current(app.secret_id, stack.secret_doc(app.username, wrong))

    async def scenario() -> list[tuple[BaseException, float]]:
        out = []
        t0 = time.monotonic()
        with pytest.raises(AuthenticationFailed) as info:
            await dbc_asyncpg.create_pool(secret_id=app.secret_id, min_size=2, timeout=30)
        out.append((info.value, time.monotonic() - t0))
        t0 = time.monotonic()
        with pytest.raises(AuthenticationFailed) as info:
            await dbc_asyncpg.connect(secret_id=app.secret_id, timeout=30)
        out.append((info.value, time.monotonic() - t0))
        return out

    for error, seconds in run(scenario()):
        print(f"\n[asyncpg] {type(error).__name__} after {seconds * 1000:.0f} ms")
        assert seconds < 2.0
        assert wrong not in str(error) and wrong not in repr(error)


# -- TLS --------------------------------------------------------------------------------------


@pytest.fixture(params=["plaintext", "self_signed"])
def impostor(request: pytest.FixtureRequest) -> Iterator[FakeServer]:
    server = FakeServer(request.param)
    yield server
    server.close()


class WrongNameServer(FakeServer):
    """TLS with a certificate from a CA the client trusts, for another host name."""

    def __init__(self, workdir: Path) -> None:
        super().__init__("self_signed")
        ca = trustme.CA()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("db.example").configure_cert(context)
        self._tls = context
        self.ca_file = str(workdir / "wrong-name-ca.pem")
        ca.cert_pem.write_to_path(self.ca_file)


def test_no_password_to_an_impostor(
    impostor: FakeServer, app: Any, aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """verify-full (the default) against the system trust store: a server that declines TLS or
    shows an untrusted certificate gets no password; the caller gets UntrustedServer at once."""
    monkeypatch.delenv("PGSSLROOTCERT", raising=False)
    monkeypatch.delenv("DBCREDS_SSLROOTCERT", raising=False)

    async def scenario() -> tuple[BaseException, float]:
        pool = dbc_asyncpg.create_pool(
            f"postgresql://{impostor.host}:{impostor.port}/postgres", secret_id=app.secret_id,
            min_size=0, max_size=2, timeout=30,
        )
        async with pool:
            t0 = time.monotonic()
            with pytest.raises(UntrustedServer) as info:
                await pool.fetchval("select 1")
            return info.value, time.monotonic() - t0

    error, seconds = run(scenario())
    assert seconds < 2.0
    assert impostor.connections >= 1
    assert impostor.saw(app.password) == []
    assert app.password not in str(error) + repr(error)
    expected = "does not offer TLS" if impostor.kind == "plaintext" else "CA bundle"
    assert expected in str(error), str(error)


def test_verify_full_checks_the_host_name(
    app: Any, aws_env: dict[str, str], tmp_path: Path
) -> None:
    """A certificate signed by the configured CA, for another name: no password sent."""
    server = WrongNameServer(tmp_path)
    try:
        async def scenario() -> BaseException:
            with pytest.raises(UntrustedServer) as info:
                await dbc_asyncpg.connect(
                    f"postgresql://{server.host}:{server.port}/postgres",
                    secret_id=app.secret_id, sslrootcert=server.ca_file,
                )
            return info.value

        error = run(scenario())
    finally:
        server.close()
    assert server.connections >= 1 and server.saw(app.password) == []
    assert "host" in str(error).lower() or "CA bundle" in str(error)


@pytest.mark.parametrize(("kwargs", "says"), [
    ({"sslmode": "require"}, "channel binding"),
    ({"sslmode": "verify-ca"}, "channel binding"),
    ({"sslmode": "prefer"}, "sslmode must be one of"),
    ({"ssl": "allow"}, "sslmode must be one of"),
    ({"ssl": ssl.create_default_context()}, "SSLContext"),
])  # fmt: skip
def test_weak_or_opaque_tls_is_refused(
    app: Any, aws_env: dict[str, str], kwargs: dict[str, Any], says: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        dbc_asyncpg.create_pool(secret_id=app.secret_id, **kwargs)
    assert says in str(info.value)
    with pytest.raises(ConfigurationError):
        run(dbc_asyncpg.connect(f"postgresql://h/db?sslmode={kwargs.get('sslmode', 'x')}",
                                secret_id=app.secret_id))


def test_a_password_given_to_asyncpg_is_refused_and_not_shown(
    app: Any, aws_env: dict[str, str]
) -> None:
    secret = "S3cr3t-in-the-dsn"
    for call in (
        lambda: dbc_asyncpg.create_pool(f"postgresql://u:{secret}@h/db", secret_id=app.secret_id),
        lambda: dbc_asyncpg.create_pool(f"postgresql://h/db?password={secret}",
                                        secret_id=app.secret_id),
        lambda: dbc_asyncpg.create_pool(secret_id=app.secret_id, password=secret),
    ):
        with pytest.raises(ConfigurationError) as info:
            call()
        assert "password" in str(info.value) and secret not in str(info.value)
        assert info.value.__context__ is None


# -- asyncpg's contract -----------------------------------------------------------------------


def test_asyncpg_pool_options_still_work(
    stack: Any, app: Any, aws_env: dict[str, str]
) -> None:
    """init, setup, reset, connection_class, record_class, max_queries, expire_connections,
    max_inactive_connection_lifetime, a connect= of the caller's, and keyword arguments of
    asyncpg.connect (server_settings, command_timeout) behave as with asyncpg alone."""
    calls: list[str] = []

    class MyConnection(asyncpg.Connection):  # type: ignore[misc]
        pass

    class MyRecord(asyncpg.Record):  # type: ignore[misc]
        pass

    async def init(conn: Any) -> None:
        calls.append("init")

    async def setup(conn: Any) -> None:
        calls.append("setup")

    async def reset(conn: Any) -> None:
        calls.append("reset")
        await conn.execute(conn.get_reset_query())

    counting = CountingConnect()

    async def scenario() -> dict[str, Any]:
        found: dict[str, Any] = {}
        async with dbc_asyncpg.create_pool(
            dsn_of(stack.postgres, stack.dbname), secret_id=app.secret_id, min_size=1,
            max_size=1, max_queries=3, init=init, setup=setup, reset=reset,
            connection_class=MyConnection, record_class=MyRecord, connect=counting,
            server_settings={"application_name": "dbcreds-apg"}, command_timeout=30,
        ) as pool:
            async with pool.acquire() as conn:
                found["class"] = type(conn._con)
                found["record"] = type(await conn.fetchrow("select 1 as one"))
                found["app"] = await conn.fetchval("show application_name")
                first = await conn.fetchval("select pg_backend_pid()")
            async with pool.acquire() as conn:  # max_queries=3 reached: a new connection
                second = await conn.fetchval("select pg_backend_pid()")
            await pool.expire_connections()
            async with pool.acquire() as conn:
                third = await conn.fetchval("select pg_backend_pid()")
            found["pids"] = [first, second, third]
        async with dbc_asyncpg.create_pool(
            dsn_of(stack.postgres, stack.dbname), secret_id=app.secret_id, min_size=0,
            max_size=1, max_inactive_connection_lifetime=0.2,
        ) as pool:
            await pool.fetchval("select 1")
            assert pool.get_size() == 1
            for _ in range(200):  # bounded: asyncpg's own timer closes the idle connection
                if pool.get_size() == 0:
                    break
                await asyncio.sleep(0.01)
            found["idle_closed"] = pool.get_size() == 0
        return found

    found = run(scenario())
    assert issubclass(found["class"], MyConnection)
    assert found["record"] is MyRecord
    assert found["app"] == "dbcreds-apg"
    assert len(set(found["pids"])) == 3
    assert found["idle_closed"]
    assert {"init", "setup", "reset"} <= set(calls) and calls.count("init") >= 3
    # The caller's connect= got what asyncpg passes, plus dbcreds' login arguments.
    assert len(counting.calls) >= 3
    first = counting.calls[0]
    assert first["connection_class"] is MyConnection and first["record_class"] is MyRecord
    assert first["user"] == app.username and isinstance(first["ssl"], ssl.SSLContext)
    assert first["ssl"].check_hostname and first["ssl"].verify_mode == ssl.CERT_REQUIRED
    assert first["statement_cache_size"] == 0 and first["command_timeout"] == 30


def test_set_connect_args_applies_to_new_logins(
    stack: Any, app: Any, aws_env: dict[str, str]
) -> None:
    """Pool.set_connect_args (documented): the next logins go where the new dsn says, still
    through dbcreds (the secret's credentials, the TLS policy)."""

    async def scenario() -> Any:
        async with dbc_asyncpg.create_pool(
            f"postgresql://127.0.0.1:1/{stack.dbname}", secret_id=app.secret_id, min_size=0,
            max_size=1,
        ) as pool:
            pool.set_connect_args(
                dsn_of(stack.postgres, stack.dbname) + "?application_name=moved"
            )
            async with pool.acquire() as conn:
                return await session(conn), await conn.fetchval("show application_name")

    row, name = run(scenario())
    assert row["user"] == app.username and row["ssl"] is True and name == "moved"


def test_statement_cache_defaults_off_and_can_be_set(
    stack: Any, app: Any, aws_env: dict[str, str]
) -> None:
    """statement_cache_size defaults to 0 (PgBouncer in transaction mode, RDS Proxy): no named
    prepared statement stays on the server; set it, and asyncpg caches as usual."""

    async def named(**kw: Any) -> int:
        async with dbc_asyncpg.create_pool(
            dsn_of(stack.postgres, stack.dbname), secret_id=app.secret_id, min_size=1,
            max_size=1, **kw,
        ) as pool, pool.acquire() as conn:
            for _ in range(3):
                await conn.fetchval("select $1::int + 1", 1)
            return int(await conn.fetchval(
                "select count(*) from pg_prepared_statements where name <> ''"))

    assert run(named()) == 0
    assert run(named(statement_cache_size=100)) >= 1
