"""A credential pool is a psycopg_pool pool in every documented respect, sync and asyncio.

Each test runs against the plain psycopg_pool class (static credentials) and dbcreds' (the
credentials of a secret), under the same conditions, on the real stack: what holds for one
holds for the other. What dbcreds adds, or changes on purpose, is tested at the end.
"""

from __future__ import annotations

import asyncio
import gc
import json
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar, get_origin

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from dbcreds import AuthenticationFailed, SecretProvider, UntrustedServer
from dbcreds.aio import AsyncCredentialPool
from dbcreds.pool import CredentialPool

T = TypeVar("T")

SYNC = [ConnectionPool, CredentialPool]
ASYNC = [AsyncConnectionPool, AsyncCredentialPool]


def run(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture
def make(stack: Any, app: Any, aws_env: dict[str, str]) -> Callable[..., Any]:
    """make(cls, **kw): a pool of *cls*; psycopg_pool's get the app's credentials as static
    kwargs (merged into a callable kwargs' result), dbcreds' get them from the secret."""
    static = {
        "host": stack.postgres.host, "port": stack.postgres.port, "dbname": stack.dbname,
        "user": app.username, "password": app.password,
        "sslmode": "verify-full", "sslrootcert": stack.ca_file,
    }

    def build(cls: Any, **kw: Any) -> Any:
        kw.setdefault("min_size", 1)
        kw.setdefault("max_size", 2)
        kw.setdefault("timeout", 10)
        if (get_origin(cls) or cls) in (CredentialPool, AsyncCredentialPool):
            return cls(SecretProvider(app.secret_id), **kw)
        given = kw.pop("kwargs", None)
        if given is None:
            kw["kwargs"] = static
        elif asyncio.iscoroutinefunction(given):
            async def merged_async() -> dict[str, Any]:
                return {**static, **await given()}

            kw["kwargs"] = merged_async
        elif callable(given):
            kw["kwargs"] = lambda: {**static, **given()}
        else:
            kw["kwargs"] = {**static, **given}
        return cls(**kw)

    return build


def threads_named(prefix: str) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(prefix)]


def ids(classes: list[Any]) -> list[str]:
    return [c.__name__ for c in classes]


# -- garbage collection ---------------------------------------------------------------------


@pytest.mark.parametrize("cls", SYNC, ids=ids(SYNC))
def test_a_pool_dropped_without_close_is_collected_and_its_threads_stop(
    make: Any, cls: Any
) -> None:
    pool = make(cls, open=True, name=f"dropped-{cls.__name__}")
    pool.wait(timeout=10)
    with pool.connection() as conn:
        conn.execute("select 1")
    assert threads_named(pool.name)  # the scheduler and the workers
    ref = weakref.ref(pool)
    name = pool.name
    del pool, conn
    gc.collect()
    assert ref() is None, f"{cls.__name__} still referenced: {gc.get_referrers(ref())}"
    deadline = time.monotonic() + 10
    while threads_named(name) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threads_named(name) == []


@pytest.mark.parametrize("cls", SYNC, ids=ids(SYNC))
def test_refcounting_alone_frees_a_dropped_pool(make: Any, cls: Any) -> None:
    """No reference cycle through the connection class: freed as soon as it is dropped."""
    pool = make(cls, open=True)
    pool.wait(timeout=10)
    ref = weakref.ref(pool)
    gc.disable()
    try:
        del pool
        assert ref() is None
    finally:
        gc.enable()


@pytest.mark.parametrize("cls", ASYNC, ids=ids(ASYNC))
def test_an_async_pool_dropped_without_close_is_collected(make: Any, cls: Any) -> None:
    async def scenario() -> weakref.ref[Any]:
        pool = make(cls, open=False)
        await pool.open(wait=True, timeout=10)
        async with pool.connection() as conn:
            await conn.execute("select 1")
        ref = weakref.ref(pool)
        del pool, conn
        gc.collect()
        return ref

    ref = run(scenario())
    gc.collect()
    assert ref() is None


# -- callable conninfo and kwargs -----------------------------------------------------------


@pytest.mark.parametrize("cls", SYNC, ids=ids(SYNC))
def test_callable_conninfo_and_kwargs_are_called_at_each_attempt(make: Any, cls: Any) -> None:
    calls = {"conninfo": 0, "kwargs": 0}

    def conninfo() -> str:
        calls["conninfo"] += 1
        return f"application_name=info{calls['conninfo']}"

    def kwargs() -> dict[str, Any]:
        calls["kwargs"] += 1
        return {"options": f"-c search_path=kw{calls['kwargs']}"}

    with make(cls, conninfo=conninfo, kwargs=kwargs, min_size=2, max_size=2, open=False) as pool:
        pool.wait(timeout=10)
        assert calls == {"conninfo": 2, "kwargs": 2}
        pool.drain()  # two new connections: two more calls of each
        with pool.connection() as conn:
            name, path = conn.execute(
                "select current_setting('application_name'), current_setting('search_path')"
            ).fetchone()
        assert name in ("info3", "info4") and path in ("kw3", "kw4")
        deadline = time.monotonic() + 10
        while calls != {"conninfo": 4, "kwargs": 4} and time.monotonic() < deadline:
            time.sleep(0.05)
        assert calls == {"conninfo": 4, "kwargs": 4}


@pytest.mark.parametrize("cls", ASYNC, ids=ids(ASYNC))
def test_async_callable_kwargs_sync_or_async(make: Any, cls: Any) -> None:
    seen: list[str] = []

    async def kwargs() -> dict[str, Any]:
        seen.append("async")
        return {"application_name": f"akw{len(seen)}"}

    def conninfo() -> str:
        seen.append("sync")
        return ""

    async def scenario() -> str:
        async with make(cls, conninfo=conninfo, kwargs=kwargs, max_size=1, open=False) as pool:
            await pool.wait(timeout=10)
            async with pool.connection() as conn:
                cur = await conn.execute("select current_setting('application_name')")
                row = await cur.fetchone()
        return str(row[0])

    assert run(scenario()) == "akw2"  # conninfo, then kwargs, per attempt
    assert seen == ["sync", "async"]


class CheckingSource(SecretProvider):
    """A source with the last word on the connect parameters (as the IAM source has)."""

    def __init__(self, *args: Any, refuse: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[dict[str, Any]] = []
        self.refuse = refuse

    def connect_params(self, params: dict[str, Any]) -> dict[str, Any]:
        from dbcreds import ConfigurationError

        self.seen.append(dict(params))
        if self.refuse and self.refuse in str(params.get("application_name")):
            raise ConfigurationError(f"refused {params.get('application_name')}")
        return params


def test_a_callable_conninfo_reaches_a_source_that_checks_parameters_at_each_attempt(
    app: Any, aws_env: dict[str, str]
) -> None:
    n = iter(range(1, 100))
    source = CheckingSource(app.secret_id, refuse="bad")
    names: list[str] = []

    def conninfo() -> str:
        names.append(f"attempt{next(n)}")
        return f"application_name={names[-1]}"

    with CredentialPool(source, conninfo=conninfo, min_size=1, max_size=1, open=False) as pool:
        assert source.seen == []  # not called at construction: psycopg_pool calls it per attempt
        pool.wait(timeout=10)
        pool.drain()
        with pool.connection() as conn:
            assert conn.execute("select current_setting('application_name')").fetchone() == (
                names[-1],
            )
    assert [p["application_name"] for p in source.seen] == names[: len(source.seen)]
    assert len(source.seen) >= 2

    # A conninfo the source refuses, at an attempt: every caller is told at once.
    source = CheckingSource(app.secret_id, refuse="bad")
    t0 = time.monotonic()
    with CredentialPool(source, conninfo=lambda: "application_name=bad", min_size=1,
                        timeout=20, open=False) as pool:
        with pytest.raises(UntrustedServer, match="refused"):
            pool.getconn()
    assert time.monotonic() - t0 < 5


# -- the connection type --------------------------------------------------------------------


class MyConnection(psycopg.Connection[Any]):
    pass


class MyAsyncConnection(psycopg.AsyncConnection[Any]):
    pass


@pytest.mark.parametrize("cls", SYNC, ids=ids(SYNC))
def test_generic_in_the_connection_type(make: Any, cls: Any) -> None:
    typed = cls[MyConnection]
    with make(typed, connection_class=MyConnection, open=False) as pool:
        conn = pool.getconn()
        try:
            assert isinstance(conn, MyConnection)
        finally:
            pool.putconn(conn)


@pytest.mark.parametrize("cls", ASYNC, ids=ids(ASYNC))
def test_async_generic_in_the_connection_type(make: Any, cls: Any) -> None:
    async def scenario() -> bool:
        async with make(cls[MyAsyncConnection], connection_class=MyAsyncConnection,
                        open=False) as pool:
            async with pool.connection() as conn:
                return isinstance(conn, MyAsyncConnection)

    assert run(scenario())


# -- open: the default and its warnings -----------------------------------------------------


def _warnings_of(func: Callable[[], Any]) -> list[tuple[type[Warning], str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        func()
    return [(w.category, str(w.message)) for w in caught
            if issubclass(w.category, DeprecationWarning | RuntimeWarning)]


@pytest.mark.parametrize("cls", SYNC, ids=ids(SYNC))
def test_open_default_opens_and_warns_at_first_use(make: Any, cls: Any) -> None:
    pool = make(cls)
    try:
        assert not pool.closed
        caught = _warnings_of(lambda: pool.getconn())
        assert [c for c, _ in caught] == [DeprecationWarning]
        assert f"{cls.__name__} 'open' parameter" in caught[0][1]
    finally:
        pool.close()
    with make(cls) as pool:  # a context manager: no warning
        assert _warnings_of(lambda: pool.putconn(pool.getconn())) == []
    for value in (True, False):
        explicit = make(cls, open=value)
        assert explicit.closed is not value
        if value:
            assert _warnings_of(lambda p=explicit: p.putconn(p.getconn())) == []
        explicit.close()


@pytest.mark.parametrize("cls", ASYNC, ids=ids(ASYNC))
def test_async_open_default_and_warnings(make: Any, cls: Any) -> None:
    with pytest.raises(RuntimeError, match="open with no running loop"):
        make(cls)  # None: opened in the constructor, which needs a loop

    async def scenario() -> None:
        pool = make(cls)
        assert not pool.closed
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            conn = await pool.getconn()
        await pool.putconn(conn)
        assert [w.category for w in caught] == [RuntimeWarning]
        await pool.close()

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pool = make(cls, open=True)
        assert [w.category for w in caught] == [RuntimeWarning]
        assert "in the constructor is deprecated" in str(caught[0].message)
        await pool.close()

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            async with make(cls, open=False) as pool:
                async with pool.connection():
                    pass
        assert [w.category for w in caught if w.category is RuntimeWarning] == []

    run(scenario())


# -- statistics and names -------------------------------------------------------------------


@pytest.mark.parametrize("cls", SYNC, ids=ids(SYNC))
def test_pop_stats_reports_what_get_stats_reports(make: Any, cls: Any) -> None:
    with make(cls, open=False) as pool:
        with pool.connection():
            pass
        got = pool.get_stats()
        popped = pool.pop_stats()
        assert set(got) == set(popped)
        assert popped["requests_num"] >= 1 or popped.get("connections_num", 0) >= 1
        assert pool.pop_stats().get("requests_num", 0) == 0  # counters reset


def test_pop_stats_and_get_stats_report_auth_failed(
    app: Any, sm_client: Any, aws_env: dict[str, str]
) -> None:
    with CredentialPool(SecretProvider(app.secret_id), min_size=1, open=False) as pool:
        with pool.connection():
            pass
        assert pool.get_stats()["auth_failed"] == pool.pop_stats()["auth_failed"] == 0
    doc = json.loads(sm_client.get_secret_value(SecretId=app.secret_id)["SecretString"])
    sm_client.put_secret_value(SecretId=app.secret_id,
                               SecretString=json.dumps({**doc, "password": "Wr0ng-pass"}))
    with CredentialPool(SecretProvider(app.secret_id), min_size=1, open=False) as pool:
        with pytest.raises(AuthenticationFailed):
            pool.getconn(timeout=10)
        assert pool.get_stats()["auth_failed"] == 1
        assert pool.pop_stats()["auth_failed"] == 1
        assert pool.pop_stats()["auth_failed"] == 1  # a state, not a counter


@pytest.mark.parametrize("cls", SYNC, ids=ids(SYNC))
def test_pools_get_distinct_names_and_their_threads_follow(make: Any, cls: Any) -> None:
    with make(cls, open=False) as a, make(cls, open=False) as b:
        assert a.name != b.name
        for pool in (a, b):
            named = threads_named(pool.name + "-")
            assert f"{pool.name}-scheduler" in named and f"{pool.name}-worker-0" in named
    with make(cls, open=False, name="mine") as mine:
        assert mine.name == "mine"


def test_default_names_say_which_secret(app: Any, aws_env: dict[str, str]) -> None:
    a = CredentialPool(SecretProvider(app.secret_id), open=False)
    b = CredentialPool(SecretProvider(app.secret_id), open=False)
    assert a.name.startswith(f"dbcreds:{app.secret_id}:")
    assert b.name.startswith(f"dbcreds:{app.secret_id}:") and a.name != b.name
    assert app.secret_id in repr(a)


# -- deliberate differences -----------------------------------------------------------------


@pytest.mark.parametrize("cls", SYNC, ids=ids(SYNC))
def test_kwargs_are_kept_as_given_but_prepared_statements_are_off_by_default(
    make: Any, cls: Any
) -> None:
    with make(cls, kwargs={"application_name": "given"}, open=False) as pool:
        assert (pool.kwargs or {}).get("application_name") == "given"
        assert "prepare_threshold" not in (pool.kwargs or {})
        with pool.connection() as conn:
            threshold = conn.prepare_threshold
    # Deliberate: dbcreds' pools go through RDS Proxy / PgBouncer (transaction mode), which
    # break or pin on prepared statements; psycopg's default is 5.
    assert threshold == (None if cls is CredentialPool else 5)


def test_tls_settings_in_kwargs_are_read_as_the_configured_tls(
    stack: Any, app: Any, aws_env: dict[str, str]
) -> None:
    """Deliberate: sslmode in kwargs (or conninfo, or returned by their callables) is the
    configured TLS of dbcreds' policy, never sent as given (``require`` gets channel binding)."""
    for kwargs in ({"sslmode": "require"}, lambda: {"sslmode": "require"}):
        with CredentialPool(SecretProvider(app.secret_id), kwargs=kwargs, min_size=1,
                            open=False) as pool:
            with pool.connection() as conn:
                assert conn.pgconn.ssl_in_use
                dsn = conn.info.dsn
        assert "sslmode=require" in dsn and "channel_binding=require" in dsn


TYPED = '''
from typing import Any
from psycopg import AsyncConnection, Connection
from dbcreds import SecretProvider
from dbcreds.aio import AsyncCredentialPool
from dbcreds.pool import CredentialPool

class MyConnection(Connection[Any]): ...
class MyAsync(AsyncConnection[Any]): ...

p = CredentialPool[MyConnection](SecretProvider("x"), connection_class=MyConnection)
reveal_type(p.getconn())
reveal_type(CredentialPool(SecretProvider("x"), connection_class=MyConnection))
bad = CredentialPool[MyConnection](SecretProvider("x"), connection_class=Connection)

async def f() -> None:
    a = AsyncCredentialPool[MyAsync](SecretProvider("x"), connection_class=MyAsync)
    reveal_type(await a.getconn())
'''


def test_the_connection_type_is_checked_statically(tmp_path: Any) -> None:
    """``connection_class`` is typed as psycopg_pool's: mypy infers and checks it."""
    mypy_api = pytest.importorskip("mypy.api")
    path = tmp_path / "typed.py"
    path.write_text(TYPED)
    out, _, _ = mypy_api.run(["--strict", "--no-incremental", str(path)])
    assert 'Revealed type is "typed.MyConnection"' in out
    assert 'Revealed type is "dbcreds.pool.CredentialPool[typed.MyConnection]"' in out
    assert 'Revealed type is "typed.MyAsync"' in out
    assert 'incompatible type "type[Connection[Any]]"; expected "type[MyConnection]"' in out
    assert "Found 1 error" in out, out


@pytest.mark.parametrize("cls", SYNC + ASYNC, ids=ids(SYNC + ASYNC))
def test_conninfo_and_kwargs_attributes_are_what_was_given(cls: Any) -> None:
    """psycopg_pool reads ``pool.conninfo``/``pool.kwargs`` at each attempt: they are the very
    objects given (changing them changes the next connections), for both classes."""
    given: dict[str, Any] = {"application_name": "given"}
    info = "connect_timeout=5"
    args = (SecretProvider("some/secret"),) if cls in (CredentialPool, AsyncCredentialPool) else ()
    pool = cls(*args, conninfo=info, kwargs=given, open=False)
    assert pool.kwargs is given and pool.conninfo is info
