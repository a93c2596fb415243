"""What the sync and the asyncio credential pools must do alike, one test run against both.

Each test gets a `Pool` handle that hides only the I/O style: ``burst(n)`` runs *n* requests
(``select 1``) at once (8 threads for `CredentialPool`, *n* tasks on one event loop for
`AsyncCredentialPool`) and returns the errors. The scenarios and their assertions are shared,
on the real stack, directly and through PgBouncer.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from dbcreds import AsyncCredentialPool, AuthenticationFailed, CredentialPool, SecretProvider
from test_pool import change_password_out_of_band, hammer

T = TypeVar("T")
ROUTES = ["direct", "pgbouncer"]


class Pool:
    """A sync or asyncio credential pool, driven from the test's thread."""

    def __init__(self, flavour: str, secret_id: str, server: Any, **kw: Any) -> None:
        self.flavour = flavour
        options: dict[str, Any] = {"host": server.host, "port": server.port, **kw}
        if flavour == "sync":
            self.pool: Any = CredentialPool(SecretProvider(secret_id), open=True, **options)
            return
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

        async def build() -> AsyncCredentialPool:
            pool = AsyncCredentialPool(SecretProvider(secret_id), open=False, **options)
            await pool.open()
            return pool

        self.pool = self._call(build())

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(60)

    @property
    def provider(self) -> Any:
        return self.pool.provider

    def wait(self) -> None:
        if self.flavour == "sync":
            self.pool.wait(timeout=15)
        else:
            self._call(self.pool.wait(timeout=15))

    def drain(self) -> None:
        if self.flavour == "sync":
            self.pool.drain()
        else:
            self._call(self.pool.drain())

    def burst(self, n: int) -> list[BaseException]:
        if self.flavour == "sync":
            return hammer(self.pool, threads=min(8, n), requests=n)

        async def one() -> None:
            async with self.pool.connection(timeout=10) as conn:
                assert await (await conn.execute("select 1")).fetchone() == (1,)

        async def many() -> list[Any]:
            return await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)

        return [r for r in self._call(many()) if isinstance(r, BaseException)]

    def close(self) -> None:
        if self.flavour == "sync":
            self.pool.close()
            return
        self._call(self.pool.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture(params=["sync", "async"])
def make_pool(
    request: pytest.FixtureRequest, aws_env: dict[str, str]
) -> Iterator[Callable[..., Pool]]:
    pools: list[Pool] = []

    def make(secret_id: str, server: Any, **kw: Any) -> Pool:
        kw.setdefault("min_size", 2)
        kw.setdefault("max_size", 4)
        pool = Pool(request.param, secret_id, server, **kw)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.close()


def server_of(stack: Any, route: str) -> Any:
    return stack.postgres if route == "direct" else stack.pgbouncer


@pytest.mark.parametrize("route", ROUTES)
def test_password_changed_out_of_band_zero_errors(
    stack: Any, sm_client: Any, app: Any, make_pool: Callable[..., Pool], route: str
) -> None:
    """The database password and the secret change behind the pool's back; the idle
    connections are recycled: every request still succeeds, with one refresh."""
    pool = make_pool(app.secret_id, server_of(stack, route), max_lifetime=3600.0)
    pool.wait()
    assert pool.burst(40) == []

    change_password_out_of_band(stack, sm_client, app, "N3w-Out-Of-Band-" + app.password[:8])
    pool.drain()  # recycle every idle connection: the new ones must log in afresh
    assert pool.burst(200) == []
    assert pool.pool.get_stats()["connections_num"] >= 4  # connections really were remade
    assert pool.provider.get_stats()["version_changes"] == 1  # one refresh for everyone


@pytest.mark.parametrize("route", ROUTES)
def test_wrong_password_fails_every_waiting_caller_fast(
    stack: Any, app: Any, make_pool: Callable[..., Pool], route: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A wrong secret: every caller waiting for a connection gets AuthenticationFailed within
    2 s (not a 30 s PoolTimeout), a later caller at once, and no password is shown anywhere."""
    wrong = "Wr0ng-" + app.password[:10]
    stack.put_current(app.secret_id, stack.secret_doc(app.username, wrong))
    caplog.set_level(logging.DEBUG)  # from here on, only dbcreds' own calls run
    pool = make_pool(app.secret_id, server_of(stack, route), min_size=1, timeout=30,
                     max_lifetime=3600.0)
    t0 = time.monotonic()
    errors = pool.burst(6)
    elapsed = time.monotonic() - t0
    print(f"\n[{pool.flavour} {route}] AuthenticationFailed after {elapsed * 1000:.0f} ms")
    assert elapsed < 2.0, f"AuthenticationFailed after {elapsed:.1f}s"
    assert len(errors) == 6 and all(isinstance(e, AuthenticationFailed) for e in errors), errors
    assert app.secret_id in str(errors[0])

    later = pool.burst(1)  # told at once, too
    assert len(later) == 1 and isinstance(later[0], AuthenticationFailed)
    texts = [str(e) for e in [*errors, *later]] + [repr(later[0]), repr(pool.pool)] + [
        r.getMessage() + (r.exc_text or "") for r in caplog.records
    ]
    assert not [t for t in texts if wrong in t or app.password in t]


@pytest.mark.parametrize(
    ("doc", "error"),
    [
        (None, "SecretNotFound"),  # no such secret
        ({"username": "app"}, "InvalidSecret"),  # no password: the secret must hold it
    ],
    ids=["missing-secret", "no-password"],
)
def test_a_secret_no_retry_can_use_fails_every_waiting_caller_fast(
    stack: Any, aws_env: Any, make_pool: Callable[..., Pool], doc: Any, error: str
) -> None:
    """Configuration, not bad luck: every caller is told at once (not after a 30 s
    PoolTimeout while psycopg_pool retries in the background)."""
    name = f"dbcreds-test/unusable-{time.monotonic_ns()}"
    if doc is not None:
        stack.create_secret(name, doc)
    pool = make_pool(name, stack.pgbouncer, min_size=1, timeout=30)
    t0 = time.monotonic()
    errors = pool.burst(4)
    elapsed = time.monotonic() - t0
    print(f"\n[{pool.flavour} {error}] told after {elapsed * 1000:.0f} ms")
    assert elapsed < 2.0
    assert [type(e).__name__ for e in errors] == [error] * 4, errors
