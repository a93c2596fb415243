"""What dbcreds.psycopg2 relies on in psycopg2 that psycopg2 does not document: the
bookkeeping of ``psycopg2.pool`` (``_connect``, ``_getconn``, ``_putconn``, ``_pool``,
``_used``, ``_rused``, ``_lock``). Each test fails if psycopg2 changes what dbcreds uses; and
the pools' own logic on top of it, with fake connections (no database)."""

from __future__ import annotations

import threading
from collections.abc import Hashable
from types import SimpleNamespace
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.pool
import pytest

import dbcreds.psycopg2 as dp
from dbcreds import AuthenticationFailed, ConfigurationError, _registry
from dbcreds.tls import TlsClient
from support import StaticSource


class FakeConn:
    def __init__(self) -> None:
        self.closed = 0
        self.info = SimpleNamespace(transaction_status=psycopg2.extensions.TRANSACTION_STATUS_IDLE)

    def close(self) -> None:
        self.closed = 1

    def rollback(self) -> None:
        self.info.transaction_status = psycopg2.extensions.TRANSACTION_STATUS_IDLE


class Probe(psycopg2.pool.ThreadedConnectionPool):
    """psycopg2's pool, with ``_connect`` recording its calls (what dbcreds overrides)."""

    def __init__(self, minconn: int, maxconn: int) -> None:
        self.calls: list[Hashable | None] = []
        super().__init__(minconn, maxconn)

    def _connect(self, key: Hashable | None = None) -> Any:
        self.calls.append(key)
        conn = FakeConn()
        if key is not None:
            self._used[key] = conn  # type: ignore[attr-defined]
            self._rused[id(conn)] = key  # type: ignore[attr-defined]
        else:
            self._pool.append(conn)  # type: ignore[attr-defined]
        return conn


def test_the_constructor_makes_minconn_connections_with_no_key() -> None:
    pool = Probe(2, 3)
    assert pool.calls == [None, None]
    assert len(pool._pool) == 2 and pool._used == {} and pool._rused == {}  # type: ignore[attr-defined]
    assert isinstance(pool._lock, type(threading.Lock()))  # type: ignore[attr-defined]


def test_getconn_goes_through_getconn_and_connect_under_the_lock() -> None:
    pool = Probe(0, 2)
    seen: list[bool] = []
    original = pool._connect

    def connect(key: Hashable | None = None) -> Any:
        seen.append(pool._lock.locked())  # type: ignore[attr-defined]
        return original(key)

    pool._connect = connect  # type: ignore[method-assign]
    a = pool.getconn()
    assert seen == [True] and pool.calls == [1]  # keys are 1, 2, ... (_getkey)
    assert pool.getconn("k") is pool.getconn("k")  # a known key: _used[key], no _connect
    assert pool.calls == [1, "k"]
    with pytest.raises(psycopg2.pool.PoolError, match="exhausted"):  # len(_used) == maxconn
        pool.getconn()
    pool.putconn(a, close=True)  # _putconn: closes, forgets _used/_rused
    assert a.closed and 1 not in pool._used and id(a) not in pool._rused  # type: ignore[attr-defined]


def test_getconn_pops_an_idle_connection_and_putconn_keeps_minconn() -> None:
    pool = Probe(1, 2)
    idle = pool._pool[0]  # type: ignore[attr-defined]
    conn = pool.getconn()
    assert conn is idle and pool._pool == []  # type: ignore[attr-defined]
    assert pool._rused[id(conn)] in pool._used  # type: ignore[attr-defined]
    other = pool.getconn()
    pool.putconn(conn)
    pool.putconn(other)  # beyond minconn: closed
    assert pool._pool == [conn] and other.closed  # type: ignore[attr-defined]


def test_closeall_closes_used_values_and_swallows_their_errors() -> None:
    pool = Probe(0, 2)
    pool._used["x"] = object()  # type: ignore[attr-defined]  # no close(): an AttributeError
    conn = pool.getconn()
    pool.closeall()
    assert pool.closed and conn.closed


def test_the_driver_api_dbcreds_uses() -> None:
    assert psycopg2.extensions.parse_dsn("host=h port=1 dbname=d") == {
        "host": "h", "port": "1", "dbname": "d"}
    assert psycopg2.extensions.libpq_version() >= 160000  # the binary wheel's libpq
    assert dp.PSYCOPG2.libpq_version is psycopg2.extensions.libpq_version


# -- dbcreds' pools on fake connections ---------------------------------------------------------


@pytest.fixture
def fake_pool(monkeypatch: pytest.MonkeyPatch) -> Any:
    outcomes: list[Any] = []

    def connect(self: dp.Psycopg2Login) -> Any:
        outcome = outcomes.pop(0) if outcomes else FakeConn()
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    monkeypatch.setattr(dp.Psycopg2Login, "connect", connect)
    pool = dp.ThreadedConnectionPool(0, 1, provider=StaticSource(), sslrootcert="/ca.pem")
    pool.outcomes = outcomes  # type: ignore[attr-defined]
    return pool


def test_a_failed_login_frees_its_slot(fake_pool: Any) -> None:
    fake_pool.outcomes += [AuthenticationFailed("prod/app", "refused"),
                           AuthenticationFailed("prod/app", "refused")]
    for _ in range(2):  # maxconn=1: a leaked slot would make the second one PoolError
        with pytest.raises(AuthenticationFailed):
            fake_pool.getconn()
        assert fake_pool._used == {} and fake_pool._rused == {}
    conn = fake_pool.getconn()
    assert fake_pool._used == {fake_pool._rused[id(conn)]: conn}
    fake_pool.putconn(conn)


def test_the_same_key_waits_for_the_login_in_progress(
    fake_pool: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    started, release = threading.Event(), threading.Event()
    conn = FakeConn()

    def slow(self: dp.Psycopg2Login) -> Any:
        started.set()
        release.wait(10)
        return conn

    monkeypatch.setattr(dp.Psycopg2Login, "connect", slow)
    got: list[Any] = []
    first = threading.Thread(target=lambda: got.append(fake_pool.getconn("k")))
    first.start()
    assert started.wait(10)
    second = threading.Thread(target=lambda: got.append(fake_pool.getconn("k")))
    second.start()
    release.set()
    first.join(10)
    second.join(10)
    assert got == [conn, conn]
    assert fake_pool._used == {"k": conn} and fake_pool._rused == {id(conn): "k"}


def test_repr_names_the_secret_never_the_password(fake_pool: Any) -> None:
    assert repr(fake_pool) == "<ThreadedConnectionPool secret='prod/app' minconn=0 maxconn=1>"


def test_the_pools_arguments_are_psycopg2_connects() -> None:
    factory = psycopg2.extensions.connection
    assert dp._connect_args("host=h", factory, None, port=1) == ("host=h", factory, None,
                                                                {"port": 1})
    assert dp._connect_args(dsn="x") == ("x", None, None, {})


def test_an_old_libpq_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dp, "PSYCOPG2", TlsClient("psycopg2", lambda: 150004))
    with pytest.raises(ConfigurationError, match=r"libpq 16 or later.*psycopg2-binary"):
        dp.ThreadedConnectionPool(0, 1, provider=StaticSource(), sslrootcert="/ca.pem")


def test_without_a_secret_the_environment_configures_it(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DBCREDS_SECRET_ID", "DBCREDS_IAM_USER"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigurationError, match="DBCREDS_SECRET_ID is not set"):
        dp.connect()
    with pytest.raises(ConfigurationError, match="not both"):
        dp.connect(secret_id="a", provider=StaticSource())


def test_snapstart_closes_the_default_pool_and_the_shared_sources_forget(fake_pool: Any) -> None:
    from dbcreds import snapstart
    from dbcreds.login import shared_source

    class Counting(StaticSource):
        invalidated = 0

        def invalidate(self) -> None:
            self.invalidated += 1

    source = Counting()
    assert shared_source(("test-psycopg2", id(source)), lambda: source) is source
    (default,) = [d for d in _registry.registered_defaults() if d.name == "psycopg2"]
    assert default.reopen is None  # rebuilt on its next use
    dp._default = fake_pool
    snapstart.before_snapshot()
    assert fake_pool.closed and source.invalidated >= 1 and dp._default is None
    assert default.close() is False  # nothing left
