"""dbcreds.sqlalchemy without a database: what each login attempt is given, what is refused,
what the caller sees, and the SQLAlchemy behaviour (some of it undocumented) it relies on.

psycopg's ``connect`` / ``AsyncConnection.connect`` are replaced by fakes that record their
arguments and refuse the login (or raise a sentinel), so no server is needed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
import sqlalchemy
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

import dbcreds.sqlalchemy as dsa
from dbcreds import AuthenticationFailed, ConfigurationError, SecretProvider
from support import Clock, FakeSM, Refused

PASSWORD = "s3cret-Pa55word"


class Recorded(Exception):
    """Raised by the fake connect after recording its arguments (not a login refusal)."""


def provider(password: str = PASSWORD) -> SecretProvider:
    sm = FakeSM()
    sm.put("AWSCURRENT", "v1", password)
    return SecretProvider("app", ttl=300, jitter=0.0, fetcher=sm)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """psycopg.connect and AsyncConnection.connect record (conninfo, kwargs), then raise."""
    seen: list[tuple[str, dict[str, Any]]] = []

    def connect(conninfo: str = "", **kwargs: Any) -> Any:
        seen.append((conninfo, kwargs))
        raise Recorded()

    async def aconnect(conninfo: str = "", **kwargs: Any) -> Any:
        return connect(conninfo, **kwargs)

    monkeypatch.setattr(psycopg, "connect", connect)
    monkeypatch.setattr(psycopg.AsyncConnection, "connect", aconnect)
    return seen


@pytest.fixture(autouse=True)
def ca_bundle(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> str:
    """A CA bundle file (verify-full needs one; its content is not read by the fakes)."""
    path = tmp_path / "ca.pem"
    path.write_text("not read\n")
    monkeypatch.setenv("PGSSLROOTCERT", str(path))
    for name in ("DBCREDS_SSLMODE", "DBCREDS_SSLROOTCERT", "PGSSLMODE"):
        monkeypatch.delenv(name, raising=False)
    return str(path)


# -- the parameters of a login ------------------------------------------------------------------


def test_the_urls_endpoint_wins_the_secrets_credentials_and_the_tls_policy_apply(
    calls: list[tuple[str, dict[str, Any]]],
) -> None:
    engine = dsa.create_engine(
        "postgresql+psycopg://proxy.example.com:6432/appdb?application_name=web",
        provider=provider(), connect_args={"connect_timeout": 7},
    )
    with pytest.raises(Recorded):
        engine.connect()
    conninfo, kw = calls[-1]
    assert conninfo == ""
    assert (kw["host"], kw["port"], kw["dbname"]) == ("proxy.example.com", 6432, "appdb")
    assert (kw["user"], kw["password"]) == ("u", PASSWORD)  # the secret's
    assert kw["application_name"] == "web" and kw["connect_timeout"] == 7  # query, connect_args
    assert kw["sslmode"] == "verify-full" and kw["require_auth"] == "scram-sha-256,md5"
    assert kw["prepare_threshold"] is None  # dbcreds' default
    assert kw["context"] is engine.dialect._psycopg_adapters_map  # type: ignore[attr-defined]


def test_a_url_without_host_uses_the_secrets(calls: list[tuple[str, dict[str, Any]]]) -> None:
    engine = dsa.create_engine(provider=provider(), connect_args={"prepare_threshold": 5})
    with pytest.raises(Recorded):
        engine.connect()
    _, kw = calls[-1]
    assert (kw["host"], kw["port"], kw["user"]) == ("h", 5432, "u")
    assert kw["prepare_threshold"] == 5  # the user's choice is kept


def test_tls_settings_of_the_url_are_the_configured_tls(
    calls: list[tuple[str, dict[str, Any]]], ca_bundle: str
) -> None:
    engine = dsa.create_engine(
        f"postgresql+psycopg://db.example.com/app?sslmode=require&sslrootcert={ca_bundle}",
        provider=provider(),
    )
    with pytest.raises(Recorded):
        engine.connect()
    _, kw = calls[-1]
    assert kw["sslmode"] == "require" and kw["channel_binding"] == "require"
    with pytest.raises(ConfigurationError, match="sslmode"):
        dsa.create_engine("postgresql+psycopg://db.example.com/app?sslmode=prefer",
                          provider=provider())


def first_async_connect(
    engine: Any, calls: list[tuple[str, dict[str, Any]]]
) -> dict[str, Any]:
    """The parameters of an async engine's first connection attempt (the recording driver
    stops it with `Recorded`); the engine is disposed."""

    async def scenario() -> None:
        try:
            with pytest.raises(Recorded):
                await engine.connect()
        finally:
            await engine.dispose()

    asyncio.run(scenario())
    return calls[-1][1]


def test_the_async_engine_gets_the_same_parameters(
    calls: list[tuple[str, dict[str, Any]]],
) -> None:
    engine = dsa.create_async_engine("postgresql+psycopg://proxy.example.com/appdb",
                                     provider=provider(), connect_args={"connect_timeout": 3})
    kw = first_async_connect(engine, calls)
    assert (kw["host"], kw["dbname"], kw["user"], kw["password"]) == (
        "proxy.example.com", "appdb", "u", PASSWORD)
    assert kw["connect_timeout"] == 3 and kw["sslmode"] == "verify-full"
    assert kw["context"] is engine.sync_engine.dialect._psycopg_adapters_map  # type: ignore[attr-defined]


# -- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize("url, kw", [
    (f"postgresql+psycopg://u:{PASSWORD}@db.example.com/app", {}),
    ("postgresql+psycopg://db.example.com/app", {"connect_args": {"password": PASSWORD}}),
    (f"postgresql+psycopg://db.example.com/app?password={PASSWORD}", {}),
])
def test_a_password_in_the_url_is_refused_without_showing_it(url: str, kw: dict[str, Any]) -> None:
    for make in (dsa.create_engine, dsa.create_async_engine):
        with pytest.raises(ConfigurationError, match="password") as err:
            make(url, provider=provider(), **kw)
        assert PASSWORD not in str(err.value) and "ignored" in str(err.value)


def test_a_user_in_the_url_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="user"):
        dsa.create_engine("postgresql+psycopg://someone@db.example.com/app", provider=provider())


def test_other_dialects_and_async_engines_are_refused_by_attach() -> None:
    with pytest.raises(ConfigurationError, match="psycopg"):
        dsa.attach(sqlalchemy.create_engine("sqlite://"), provider())
    async_engine = sqlalchemy.ext.asyncio.create_async_engine("postgresql+psycopg://h/db")
    with pytest.raises(TypeError, match="create_async_engine"):
        dsa.attach(async_engine, provider())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="not both"):
        dsa.create_engine("postgresql+psycopg://h/db", provider=provider(), secret_id="app")
    with pytest.raises(TypeError, match="creator"):
        dsa.create_engine("postgresql+psycopg://h/db", provider=provider(), creator=lambda: None)
    with pytest.raises(TypeError, match="creator"):
        dsa.create_async_engine("postgresql+psycopg://h/db", provider=provider(),
                                async_creator=lambda: None)


# -- what the caller sees ----------------------------------------------------------------------


def refusing(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """psycopg refuses every login as PostgreSQL does a wrong password."""
    tries: list[dict[str, Any]] = []

    def connect(conninfo: str = "", **kwargs: Any) -> Any:
        tries.append(kwargs)
        raise psycopg.OperationalError('FATAL:  password authentication failed for user "u"')

    async def aconnect(conninfo: str = "", **kwargs: Any) -> Any:
        return connect(conninfo, **kwargs)

    monkeypatch.setattr(psycopg, "connect", connect)
    monkeypatch.setattr(psycopg.AsyncConnection, "connect", aconnect)
    return tries


def test_a_refused_login_is_authentication_failed_itself_not_a_wrapped_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tries = refusing(monkeypatch)
    engine = dsa.create_engine("postgresql+psycopg://db.example.com/app", provider=provider())
    with pytest.raises(AuthenticationFailed) as err:
        with engine.connect() as conn:
            conn.execute(text("select 1"))
    assert not isinstance(err.value, sqlalchemy.exc.DBAPIError)
    assert err.value.__cause__ is None and err.value.__context__ is None
    assert len(tries) == 1  # AWSCURRENT; the refresh found the same login: not tried again
    texts = [str(err.value), repr(err.value), repr(engine), str(engine.url),
             repr(dsa.login_of(engine)), repr(dsa.login_of(engine).source)]
    assert not [t for t in texts if PASSWORD in t]
    with pytest.raises(AuthenticationFailed):  # told at once (FAILURE_HOLD)
        engine.connect()
    assert len(tries) == 1


def test_async_refused_login_is_authentication_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    refusing(monkeypatch)
    engine = dsa.create_async_engine("postgresql+psycopg://db.example.com/app",
                                     provider=provider())

    async def scenario() -> BaseException:
        try:
            with pytest.raises(AuthenticationFailed) as err:
                await engine.connect()
            return err.value
        finally:
            await engine.dispose()

    error = asyncio.run(scenario())
    assert PASSWORD not in str(error) and PASSWORD not in repr(engine)


def test_the_failure_is_told_at_once_for_a_second_then_a_login_tries_again() -> None:
    clock = Clock()
    login = dsa.EngineLogin(provider(), host="db.example.com", port=None, dbname=None,
                            sslmode="disable", sslrootcert=None, auth_retry_budget=0.0,
                            kwargs={}, clock=clock)
    tries: list[str] = []

    def connect(conninfo: str, **kw: Any) -> str:
        tries.append(kw["password"])
        if len(tries) == 1:
            raise Refused('password authentication failed for user "u"')
        return "conn"

    with pytest.raises(AuthenticationFailed):
        login.connect(connect, "", {})
    clock.now += dsa.FAILURE_HOLD / 2
    with pytest.raises(AuthenticationFailed):
        login.connect(connect, "", {})
    assert len(tries) == 1  # not tried again
    clock.now += dsa.FAILURE_HOLD
    assert login.connect(connect, "", {}) == "conn"
    assert login.failure is None and login.credentials.failure is None


# -- the SQLAlchemy behaviour dbcreds relies on (pinned) ----------------------------------------


def test_sqlalchemy_raises_a_non_dbapi_error_from_connect_as_it_is() -> None:
    """dbcreds' AuthenticationFailed reaches the caller because SQLAlchemy wraps only the
    DBAPI's errors raised while connecting (``_handle_dbapi_exception_noconnection``)."""
    for raised, expected in ((AuthenticationFailed("app", "refused"), AuthenticationFailed),
                             (psycopg.OperationalError("down"), sqlalchemy.exc.OperationalError)):
        engine = sqlalchemy.create_engine("postgresql+psycopg://h/db")

        @event.listens_for(engine, "do_connect")
        def fail(*args: Any, raised: BaseException = raised) -> None:
            raise raised

        with pytest.raises(expected):
            engine.connect()


def test_sqlalchemy_iterates_do_connect_listeners_in_order_as_given(
    calls: list[tuple[str, dict[str, Any]]],
) -> None:
    """``attach`` runs the do_connect listeners added after its own (SQLAlchemy stops at the
    first that returns a connection): it finds them by iterating
    ``dialect.dispatch.do_connect`` (not documented), where each listener is the function
    given, in the order added."""
    engine = sqlalchemy.create_engine("postgresql+psycopg://db.example.com/app")

    def before(dialect: Any, rec: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        cparams["application_name"] = "before"

    event.listen(engine, "do_connect", before)
    dsa.attach(engine, provider())
    listeners = list(engine.dialect.dispatch.do_connect)
    assert listeners[0] is before and len(listeners) == 2
    ours = listeners[1]

    def after(dialect: Any, rec: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        cparams["application_name"] += "+after"

    event.listen(engine, "do_connect", after)
    assert dsa._listeners_after(engine.dialect, ours) == [after]
    with pytest.raises(Recorded):
        engine.connect()
    assert calls[-1][1]["application_name"] == "before+after"


def test_sqlalchemy_async_creator_is_what_connects_an_async_engine(
    calls: list[tuple[str, dict[str, Any]]],
) -> None:
    """create_async_engine(async_creator=...) (2.0.16+): the creator is awaited on the loop
    for each new connection, and what it raises reaches the caller as it is."""
    engine = dsa.create_async_engine("postgresql+psycopg://db.example.com/app",
                                     provider=provider())
    assert isinstance(engine, AsyncEngine)

    async def scenario() -> None:
        try:
            for _ in range(2):
                with pytest.raises(Recorded):
                    await engine.connect()
        finally:
            await engine.dispose()

    asyncio.run(scenario())
    assert len(calls) == 2


def test_async_creator_for_an_engine_built_by_hand(
    calls: list[tuple[str, dict[str, Any]]],
) -> None:
    url = "postgresql+psycopg://proxy.example.com/appdb?application_name=x"
    creator = dsa.async_creator(url, provider=provider(), connect_args={"connect_timeout": 2})
    engine = sqlalchemy.ext.asyncio.create_async_engine(url, async_creator=creator)
    kw = first_async_connect(engine, calls)
    assert (kw["host"], kw["dbname"], kw["application_name"], kw["connect_timeout"]) == (
        "proxy.example.com", "appdb", "x", 2)
    assert PASSWORD not in repr(creator) and "app" in repr(creator)


def test_wake_waiting_hands_a_full_queuepool_an_unconnected_entry() -> None:
    """What `wake_waiting` needs of QueuePool's internals (``_pool``, ``_overflow``,
    ``_max_overflow``, ``_overflow_lock``, ``_ConnectionRecord(pool, connect=False)``): on a
    full pool it queues an entry that the next caller connects, and the pool's count of
    connections is right again once every connection is back."""
    from unittest.mock import MagicMock

    made: list[Any] = []

    def creator() -> Any:
        made.append(MagicMock())
        return made[-1]

    pool = sqlalchemy.pool.QueuePool(creator, pool_size=1, max_overflow=0, timeout=0.1)
    held = pool.connect()
    with pytest.raises(sqlalchemy.exc.TimeoutError):
        pool.connect()  # full: a caller would wait
    dsa.wake_waiting(pool)
    assert pool.checkedin() == 1
    second = pool.connect()  # the entry, connected now (by the creator: dbcreds' login)
    assert len(made) == 2 and second.dbapi_connection is made[1]
    held.close()
    second.close()
    assert pool.checkedin() == 1 and pool.overflow() == 0 and pool.checkedout() == 0
    dsa.wake_waiting(pool)  # not full: nothing to do
    assert pool.checkedin() == 1
    pool.dispose()


def test_extend_life_moves_the_recycle_clock_unless_invalidated() -> None:
    """What `keep_while_retrying` needs of the pool's internals: an entry's ``starttime``
    (``last_connect_time``) is what ``pool_recycle`` is measured from at checkout, and the
    pool's ``_recycle``, ``_invalidate_time`` and the entry's ``_soft_invalidate_time``."""
    import time as _time
    from unittest.mock import MagicMock

    pool = sqlalchemy.pool.QueuePool(MagicMock, pool_size=1, max_overflow=0, recycle=2)
    records: list[Any] = []
    event.listen(pool, "checkin", lambda dbapi, record: records.append(record))
    conn = pool.connect()
    first = conn.dbapi_connection
    conn.close()
    record = records[-1]
    assert record.last_connect_time == record.starttime
    now = _time.time()
    record.starttime = now - 10  # long past pool_recycle
    dsa._extend_life(pool, record, 1.0, now)
    assert record.starttime == now - 1.0  # one more second to live
    conn = pool.connect()
    assert conn.dbapi_connection is first  # not recycled
    conn.close()

    record.starttime = now - 10
    conn = pool.connect()  # without the grace: recycled, as SQLAlchemy does
    assert conn.dbapi_connection is not first
    conn.invalidate(soft=True)  # the pool wants it retired: no grace
    conn.close()
    started = records[-1].starttime
    dsa._extend_life(pool, records[-1], 1.0, _time.time() + 10)
    assert records[-1].starttime == started
    pool.dispose()


def test_spread_recycle_shortens_a_new_connections_life_by_up_to_5_percent() -> None:
    from unittest.mock import MagicMock

    pool = sqlalchemy.pool.QueuePool(MagicMock, pool_size=1, max_overflow=0, recycle=10)
    records: list[Any] = []
    event.listen(pool, "connect", lambda dbapi, record: records.append(record))
    pool.connect().close()
    record = records[-1]
    start = record.starttime
    dsa._spread_recycle(pool, record, 0.5)
    assert record.starttime == start - 0.25  # half of 5 % of 10 s
    dsa._spread_recycle(pool, record, 0.0)
    assert record.starttime == start - 0.25
    pool._invalidate_time = start - 0.3  # type: ignore[attr-defined]
    dsa._spread_recycle(pool, record, 1.0)  # would go before the invalidation: unchanged
    assert record.starttime == start - 0.25
    pool.dispose()
