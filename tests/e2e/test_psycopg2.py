"""dbcreds.psycopg2 on the real stack: connect(), the pools, psycopg2's pool contract, the TLS
policy, the fast failure, and zero failed requests through three rotations under load beside
psycopg2 used the usual way (the password read once at start)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.extras
import psycopg2.pool
import pytest

import dbcreds.psycopg2 as dp
from dbcreds import AuthenticationFailed, ConfigurationError, SecretProvider, UntrustedServer
from dbcreds_testing.workload import Workload
from rotations import (
    PROXIES,
    assert_three_rotations_served,
    assert_usual_way_broke,
    report,
    rotate_three_times,
)


@pytest.fixture
def pools(aws_env: dict[str, str]) -> Iterator[list[Any]]:
    """Pools a test made: closed at its end."""
    made: list[Any] = []
    yield made
    for pool in made:
        if not pool.closed:
            pool.closeall()
    dp.close_default_pool()


def backend_pid(conn: Any) -> int:
    with conn.cursor() as cur:
        cur.execute("select pg_backend_pid()")
        pid: int = cur.fetchone()[0]
    conn.rollback()
    return pid


def current_user(conn: Any) -> str:
    with conn.cursor() as cur:
        cur.execute("select current_user")
        user: str = cur.fetchone()[0]
    conn.rollback()
    return user


# -- connect() --------------------------------------------------------------------------------


def test_connect_logs_in_with_the_secret_over_verified_tls(
    stack: Any, app: Any, aws_env: dict[str, str]
) -> None:
    conn = dp.connect(secret_id=app.secret_id, application_name="dbcreds-psycopg2")
    try:
        assert isinstance(conn, psycopg2.extensions.connection)
        assert current_user(conn) == app.username
        with conn.cursor() as cur:
            cur.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()")
            assert cur.fetchone() == (True,)
            cur.execute("show application_name")
            assert cur.fetchone() == ("dbcreds-psycopg2",)
        params = conn.get_dsn_parameters()
        assert params["sslmode"] == "verify-full"
        assert (conn.info.host, conn.info.port) == (stack.postgres.host, stack.postgres.port)
        # psycopg2 masks the password in the dsn and in the repr
        assert "password=xxx" in conn.dsn
        assert app.password not in conn.dsn and app.password not in repr(conn)
    finally:
        conn.close()


def test_connection_and_cursor_factories_keep_working(app: Any, aws_env: dict[str, str]) -> None:
    conn = dp.connect(secret_id=app.secret_id,
                      connection_factory=psycopg2.extras.RealDictConnection)
    try:
        assert isinstance(conn, psycopg2.extras.RealDictConnection)
        with conn.cursor() as cur:
            cur.execute("select 1 as one")
            assert cur.fetchone() == {"one": 1}
    finally:
        conn.close()
    conn = dp.connect(secret_id=app.secret_id, cursor_factory=psycopg2.extras.NamedTupleCursor)
    try:
        with conn.cursor() as cur:
            cur.execute("select 2 as two")
            assert cur.fetchone().two == 2
    finally:
        conn.close()


@pytest.mark.parametrize("how", ["kwargs", "dsn"])
def test_host_port_dbname_given_win_over_the_secret(
    stack: Any, app: Any, aws_env: dict[str, str], how: str
) -> None:
    proxy = stack.pgbouncer
    if how == "kwargs":
        conn = dp.connect(secret_id=app.secret_id, host=proxy.host, port=proxy.port,
                          database=stack.dbname)
    else:
        conn = dp.connect(f"host={proxy.host} port={proxy.port} dbname={stack.dbname}",
                          secret_id=app.secret_id)
    try:
        assert (conn.info.host, conn.info.port, conn.info.dbname) == (
            proxy.host, proxy.port, stack.dbname)
        assert current_user(conn) == app.username
    finally:
        conn.close()


def test_connect_from_the_environment_shares_one_provider(
    stack: Any, app: Any, aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DBCREDS_SECRET_ID", app.secret_id)
    monkeypatch.setenv("DBCREDS_HOST", stack.pgbouncer.host)
    monkeypatch.setenv("DBCREDS_PORT", str(stack.pgbouncer.port))
    before = stack.secrets.count("GetSecretValue", secret_id=app.secret_id)
    try:
        for _ in range(3):
            conn = dp.connect()
            try:
                assert conn.info.port == stack.pgbouncer.port
                assert current_user(conn) == app.username
            finally:
                conn.close()
        # one GetSecretValue for the three calls: the provider is shared (its TTL cache)
        assert stack.secrets.count("GetSecretValue", secret_id=app.secret_id) - before == 1
    finally:
        dp.close_default_pool()


def test_default_pool_and_get_connection(
    stack: Any, app: Any, aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DBCREDS_SECRET_ID", app.secret_id)
    monkeypatch.setenv("DBCREDS_HOST", stack.rds_proxy.host)
    monkeypatch.setenv("DBCREDS_PORT", str(stack.rds_proxy.port))
    try:
        with dp.get_connection() as conn:
            assert current_user(conn) == app.username
            assert conn.info.port == stack.rds_proxy.port
        pool = dp.default_pool()
        assert dp.default_pool() is pool  # one per process (a Lambda reuses it)
        assert (pool.minconn, pool.maxconn, pool.max_lifetime, pool.check) == (1, 1, 3600.0, True)
        with dp.get_connection() as again:
            assert again is conn  # the same connection, back from the pool
        with pytest.raises(ZeroDivisionError), dp.get_connection() as conn:
            1 / 0  # noqa: B018
        assert conn.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_IDLE
    finally:
        dp.close_default_pool()
    assert pool.closed


# -- the TLS policy ---------------------------------------------------------------------------


def test_an_untrusted_server_gets_no_password(
    stack: Any, app: Any, aws_env: dict[str, str], pools: list[Any]
) -> None:
    """The system trust store does not hold the stack's CA: libpq stops the login before the
    password leaves; UntrustedServer at once, from connect() and from getconn()."""
    t0 = time.monotonic()
    with pytest.raises(UntrustedServer, match="certificate verify failed") as info:
        dp.connect(secret_id=app.secret_id, sslrootcert="system", connect_timeout=30)
    assert time.monotonic() - t0 < 2.0
    assert app.password not in str(info.value) and info.value.__context__ is None
    pool = dp.ThreadedConnectionPool(0, 2, secret_id=app.secret_id, sslrootcert="system")
    pools.append(pool)
    with pytest.raises(UntrustedServer):
        pool.getconn()
    assert pool._used == {} and pool._rused == {}  # the slot is free again
    with pytest.raises(UntrustedServer, match="Unix-domain socket"):
        dp.connect(secret_id=app.secret_id, host="/tmp")


def test_tls_settings_in_the_dsn_are_policy_not_passthrough(
    app: Any, aws_env: dict[str, str]
) -> None:
    with pytest.raises(ConfigurationError, match="sslmode must be one of"):
        dp.connect("sslmode=prefer", secret_id=app.secret_id)
    conn = dp.connect("sslmode=verify-full", secret_id=app.secret_id)
    try:
        assert conn.get_dsn_parameters()["sslmode"] == "verify-full"
        assert conn.get_dsn_parameters().get("require_auth") in (None, "scram-sha-256,md5")
    finally:
        conn.close()


# -- fast failure ----------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["direct", "pgbouncer-auth_query"])
def test_wrong_password_fails_fast_and_the_pool_stays_usable(
    stack: Any, app: Any, aws_env: dict[str, str], pools: list[Any], route: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = stack.postgres if route == "direct" else stack.pgbouncer
    wrong = "Wr0ng-" + app.password[:10]
    stack.put_current(app.secret_id, stack.secret_doc(app.username, wrong))
    caplog.set_level(logging.DEBUG)
    provider = SecretProvider(app.secret_id)
    where = {"host": server.host, "port": server.port, "connect_timeout": 30}

    t0 = time.monotonic()
    with pytest.raises(AuthenticationFailed) as raised:
        dp.connect(provider=provider, **where)
    elapsed = time.monotonic() - t0
    print(f"\n[psycopg2 {route}] connect(): AuthenticationFailed after {elapsed * 1000:.0f} ms")
    assert elapsed < 2.0

    pool = dp.ThreadedConnectionPool(0, 1, provider=provider, **where)
    pools.append(pool)
    errors: list[BaseException] = []
    t0 = time.monotonic()
    for _ in range(3):  # maxconn=1: a leaked slot would make the next one PoolError
        try:
            pool.getconn()
        except Exception as exc:
            errors.append(exc)
    elapsed = time.monotonic() - t0
    print(f"[psycopg2 {route}] 3 x getconn(): AuthenticationFailed after {elapsed * 1000:.0f} ms")
    assert elapsed < 2.0
    assert len(errors) == 3 and all(isinstance(e, AuthenticationFailed) for e in errors), errors
    assert app.secret_id in str(errors[0])
    assert pool._used == {} and pool._rused == {} and pool._pool == []
    assert isinstance(pool.credentials.failure, AuthenticationFailed)

    texts = [str(e) for e in [raised.value, *errors]] + [repr(errors[0]), repr(pool)] + [
        r.getMessage() + (r.exc_text or "") for r in caplog.records
    ]
    assert not [t for t in texts if wrong in t or app.password in t]
    assert all(e.__context__ is None and e.__cause__ is None for e in errors)

    # the secret is fixed: the same pool logs in (refresh after the refusal), nothing leaked
    stack.put_current(app.secret_id, stack.secret_doc(app.username, app.password))
    conn = pool.getconn()
    assert current_user(conn) == app.username
    pool.putconn(conn)
    assert pool.credentials.failure is None


# -- psycopg2's pool contract ----------------------------------------------------------------


def test_threaded_pool_keeps_psycopg2s_contract(
    stack: Any, app: Any, aws_env: dict[str, str], pools: list[Any]
) -> None:
    pool = dp.ThreadedConnectionPool(2, 3, secret_id=app.secret_id)
    pools.append(pool)
    assert isinstance(pool, psycopg2.pool.ThreadedConnectionPool)
    assert len(pool._pool) == 2  # minconn connections logged in by the constructor
    a = pool.getconn()
    b = pool.getconn("key")
    assert pool.getconn("key") is b  # the same connection for the same key
    c = pool.getconn()  # a new one: nothing idle is left
    assert len({id(a), id(b), id(c)}) == 3 and current_user(c) == app.username
    with pytest.raises(psycopg2.pool.PoolError, match="exhausted"):
        pool.getconn()
    with pytest.raises(psycopg2.pool.PoolError, match="unkeyed"):
        pool.putconn(dp.connect(secret_id=app.secret_id))
    pool.putconn(b, "key")
    pool.putconn(a)
    pool.putconn(c)  # minconn idle connections already: psycopg2 closes this one
    assert c.closed and not a.closed and not b.closed and len(pool._pool) == 2
    d = pool.getconn()
    pool.putconn(d, close=True)
    assert d.closed
    # an idle connection in a transaction is rolled back when it comes back (psycopg2 reset)
    e = pool.getconn()
    with e.cursor() as cur:
        cur.execute("select 1")
    assert e.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_INTRANS
    pool.putconn(e)
    assert e.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_IDLE
    assert app.password not in repr(pool) and app.secret_id in repr(pool)
    pool.closeall()
    assert pool.closed and e.closed
    with pytest.raises(psycopg2.pool.PoolError, match="closed"):
        pool.getconn()


def test_simple_pool(stack: Any, app: Any, aws_env: dict[str, str], pools: list[Any]) -> None:
    pool = dp.SimpleConnectionPool(1, 2, host=stack.pgbouncer.host, port=stack.pgbouncer.port,
                                   secret_id=app.secret_id)
    pools.append(pool)
    assert isinstance(pool, psycopg2.pool.SimpleConnectionPool)
    a, b = pool.getconn(), pool.getconn()
    assert {a.info.port, b.info.port} == {stack.pgbouncer.port}
    pool.putconn(a)
    pool.putconn(b)
    assert len(pool._pool) == 1 and b.closed


def test_max_lifetime_renews_connections(
    stack: Any, app: Any, aws_env: dict[str, str], pools: list[Any]
) -> None:
    pool = dp.ThreadedConnectionPool(1, 2, secret_id=app.secret_id, max_lifetime=0.2)
    pools.append(pool)
    old = pool.getconn()
    pid = backend_pid(old)
    threading.Event().wait(0.25)  # the lifetime passing is the scenario (no event to wait for)
    pool.putconn(old)
    assert old.closed  # closed on putconn, past its lifetime
    new = pool.getconn()
    assert backend_pid(new) != pid
    pool.putconn(new)
    # an idle connection past its lifetime is not handed out either
    threading.Event().wait(0.25)
    newer = pool.getconn()
    assert new.closed and newer is not new and not newer.closed
    pool.putconn(newer)
    with pytest.raises(ValueError, match="max_lifetime"):
        dp.ThreadedConnectionPool(0, 1, secret_id=app.secret_id, max_lifetime=0)


def test_check_replaces_a_dead_idle_connection(
    stack: Any, app: Any, aws_env: dict[str, str], pools: list[Any]
) -> None:
    checked = dp.ThreadedConnectionPool(1, 1, secret_id=app.secret_id, check=True)
    plain = dp.ThreadedConnectionPool(1, 1, secret_id=app.secret_id)
    pools += [checked, plain]
    pids = [backend_pid(p._pool[0]) for p in (checked, plain)]
    with stack.admin() as admin:
        for pid in pids:
            admin.execute("select pg_terminate_backend(%s)", [pid])
    conn = checked.getconn()
    assert backend_pid(conn) not in pids and conn.autocommit is False
    checked.putconn(conn)
    dead = plain.getconn()  # psycopg2's behaviour without check: the dead connection
    with pytest.raises(psycopg2.OperationalError):
        backend_pid(dead)
    plain.putconn(dead)


class GatedSource:
    """A SecretProvider whose ``get`` blocks while ``gate`` is closed (a slow login)."""

    def __init__(self, secret_id: str) -> None:
        self.inner = SecretProvider(secret_id)
        self.secret_id = secret_id
        self.gate = threading.Event()
        self.gate.set()
        self.waiting = threading.Event()

    def get(self) -> Any:
        if not self.gate.is_set():
            self.waiting.set()
            self.gate.wait(30)
        return self.inner.get()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def run_in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def test_a_login_in_progress_holds_no_lock(
    app: Any, aws_env: dict[str, str], pools: list[Any]
) -> None:
    """While one thread's login waits (a rotation window), other threads take and return
    idle connections; the slot it holds counts towards maxconn."""
    source = GatedSource(app.secret_id)
    pool = dp.ThreadedConnectionPool(1, 2, provider=source)
    pools.append(pool)
    idle = pool.getconn()  # the constructor's connection; the next getconn must log in
    source.gate.clear()
    thread, out = run_in_thread(pool.getconn)
    assert source.waiting.wait(10)
    pool.putconn(idle)  # not blocked by the login in progress
    assert pool.getconn() is idle
    with pytest.raises(psycopg2.pool.PoolError, match="exhausted"):
        pool.getconn()  # the reserved slot counts
    source.gate.set()
    thread.join(10)
    assert isinstance(out[0], psycopg2.extensions.connection) and current_user(out[0])
    pool.putconn(out[0])
    pool.putconn(idle)


def test_closeall_during_a_login(app: Any, aws_env: dict[str, str], pools: list[Any]) -> None:
    source = GatedSource(app.secret_id)
    pool = dp.ThreadedConnectionPool(0, 2, provider=source)
    pools.append(pool)
    source.gate.clear()
    thread, out = run_in_thread(pool.getconn)
    assert source.waiting.wait(10)
    pool.closeall()
    source.gate.set()
    thread.join(10)
    assert isinstance(out[0], psycopg2.pool.PoolError) and "closed" in str(out[0])


# -- zero failures through three rotations ----------------------------------------------------


def psycopg2_request(pool: Any, close_every: int | None = None) -> Callable[[], None]:
    """One request through psycopg2's own API: getconn, a cursor's select 1, putconn (the
    usual way closes every *close_every*-th connection: renewal as a service sees it)."""
    count = iter(range(1 << 62))

    def request() -> None:
        conn = pool.getconn()
        ok = False
        try:
            with conn, conn.cursor() as cur:
                cur.execute("select 1")
                assert cur.fetchone() == (1,)
            ok = True
        finally:
            close = not ok or (close_every is not None and next(count) % close_every == 0)
            pool.putconn(conn, close=close)

    return request


@pytest.mark.load
@pytest.mark.parametrize("route", list(PROXIES))
def test_three_rotations_under_load_zero_failures(
    stack: Any, rotating_app: Any, sm_client: Any, pools: list[Any], route: str
) -> None:
    app = rotating_app
    server = getattr(stack, PROXIES[route])
    # renewed every 2 s and checked before use, as the psycopg_pool load tests' pools (the
    # RDS Proxy stand-in, unlike RDS Proxy, closes the sessions of a user whose password it
    # re-read: a check finds them, as it finds the sessions a proxy closed in production)
    pool = dp.ThreadedConnectionPool(8, 8, secret_id=app.secret_id, host=server.host,
                                     port=server.port, max_lifetime=2.0, check=True)
    pools.append(pool)
    # the usual way: the password read from the secret once, at start
    doc = json.loads(sm_client.get_secret_value(SecretId=app.secret_id)["SecretString"])
    usual = psycopg2.pool.ThreadedConnectionPool(
        8, 8, host=server.host, port=server.port, dbname=doc["dbname"], user=doc["username"],
        password=doc["password"], sslmode="verify-full", sslrootcert=stack.ca_file,
    )
    pools.append(usual)

    with Workload(request=psycopg2_request(pool), threads=8) as workload, \
            Workload(request=psycopg2_request(usual, close_every=10), threads=8) as usual_way:
        assert workload.wait_for_requests(50) and usual_way.wait_for_requests(50)
        logins_ok = rotate_three_times(stack, app, sm_client, [workload, usual_way])
        result = workload.stop()
        usual_result = usual_way.stop()

    report(f"psycopg2 dbcreds {route}", result, pool.provider)
    report(f"psycopg2 usual way {route}", usual_result)
    assert_three_rotations_served(stack, app, result, logins_ok)
    assert_usual_way_broke(usual_result)
