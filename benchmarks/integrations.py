"""Warm path of each integration: dbcreds vs the same library with static credentials.

For every integration (SQLAlchemy sync and asyncio, Django, asyncpg, psycopg2) one request
through the library's own API, once everything is warm, with one pooled (or persistent)
connection through the RDS Proxy stand-in:

* dbcreds: the integration, logging in with the secret (its provider cached);
* static: the same library used the usual way, the password read once at start.

Both verify the stack's TLS (verify-full with its CA). Requests are timed one by one in
interleaved blocks (the order reversed every other block), in this process; the ratio is
dbcreds' median over the static median, measured side by side in one run. The warm path never
logs in, so what it shows is what each integration adds per request (a check, a wrapper).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from _common import median

Request = Callable[[], Any]
AsyncRequest = Callable[[], Awaitable[Any]]


@dataclass
class Pair:
    """One integration: its dbcreds request and the static one, and how to close both."""

    name: str
    dbcreds: Request | AsyncRequest
    static: Request | AsyncRequest
    closers: list[Callable[[], Any]] = field(default_factory=list)
    is_async: bool = False


def _block(loop: asyncio.AbstractEventLoop, pair: Pair, which: str, n: int,
           out: list[float]) -> None:
    request = getattr(pair, which)
    if not pair.is_async:
        for _ in range(n):
            t = time.perf_counter()
            request()
            out.append(time.perf_counter() - t)
        return

    async def run() -> None:
        for _ in range(n):
            t = time.perf_counter()
            await request()
            out.append(time.perf_counter() - t)

    loop.run_until_complete(run())


def integrations(stack: Any, *, blocks: int = 10, per_block: int = 200) -> dict[str, Any]:
    app = stack.new_app("bench_integr")
    host, port = stack.address("rds_proxy")
    loop = asyncio.new_event_loop()
    pairs: list[Pair] = []
    try:
        for build in (_sqlalchemy, _sqlalchemy_async, _django, _asyncpg, _psycopg2):
            pairs.append(build(stack, app, host, port, loop))
        samples: dict[tuple[str, str], list[float]] = {}
        for pair in pairs:  # warm-up: connections made, caches filled
            for which in ("dbcreds", "static"):
                _block(loop, pair, which, 50, [])
                samples[pair.name, which] = []
        for block in range(blocks):
            for pair in pairs:
                order = ("dbcreds", "static") if block % 2 == 0 else ("static", "dbcreds")
                for which in order:
                    _block(loop, pair, which, per_block, samples[pair.name, which])
    finally:
        for pair in pairs:
            for close in pair.closers:
                result = close()
                if asyncio.iscoroutine(result):
                    loop.run_until_complete(result)
        loop.close()
        stack.rds_proxy.unwatch(app.secret_id)
    table = {}
    for pair in pairs:
        ours, theirs = samples[pair.name, "dbcreds"], samples[pair.name, "static"]
        table[pair.name] = {
            "dbcreds_median_us": median(ours) * 1e6,
            "static_median_us": median(theirs) * 1e6,
            "ratio": median(ours) / median(theirs),
            "n": len(ours),
        }
    return {"blocks": blocks, "per_block": per_block, "integrations": table}


# -- the integrations ---------------------------------------------------------------------------


def _static_url(stack: Any, app: Any, host: str, port: int) -> Any:
    """The usual way's URL: the password in it, verify-full with the stack's CA."""
    import sqlalchemy

    return sqlalchemy.URL.create(
        "postgresql+psycopg", username=app.username, password=app.password, host=host,
        port=port, database=stack.dbname,
        query={"sslmode": "verify-full", "sslrootcert": stack.ca_file},
    )


def _sqlalchemy(stack: Any, app: Any, host: str, port: int, loop: Any) -> Pair:
    import sqlalchemy

    import dbcreds.sqlalchemy

    url = f"postgresql+psycopg://{host}:{port}/{stack.dbname}"
    ours = dbcreds.sqlalchemy.create_engine(url, secret_id=app.secret_id, pool_size=1)
    static_url = _static_url(stack, app, host, port)
    theirs = sqlalchemy.create_engine(static_url, pool_size=1,
                                      connect_args={"prepare_threshold": None})
    query = sqlalchemy.text("select 1")

    def request(engine: sqlalchemy.Engine) -> Request:
        def run() -> Any:
            with sqlalchemy.orm.Session(engine) as session:
                return session.execute(query).scalar_one()
        return run

    return Pair("SQLAlchemy (Session, sync)", request(ours), request(theirs),
                [ours.dispose, theirs.dispose])


def _sqlalchemy_async(stack: Any, app: Any, host: str, port: int, loop: Any) -> Pair:
    import sqlalchemy
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

    import dbcreds.sqlalchemy

    url = f"postgresql+psycopg://{host}:{port}/{stack.dbname}"
    ours = dbcreds.sqlalchemy.create_async_engine(url, secret_id=app.secret_id, pool_size=1)
    static_url = _static_url(stack, app, host, port)
    theirs = create_async_engine(static_url, pool_size=1,
                                 connect_args={"prepare_threshold": None})
    query = sqlalchemy.text("select 1")

    def request(engine: AsyncEngine) -> AsyncRequest:
        async def run() -> Any:
            async with AsyncSession(engine) as session:
                return (await session.execute(query)).scalar_one()
        return run

    return Pair("SQLAlchemy (AsyncSession)", request(ours), request(theirs),
                [ours.dispose, theirs.dispose], is_async=True)


def _django(stack: Any, app: Any, host: str, port: int, loop: Any) -> Pair:
    import django
    from django.conf import settings

    common = {"HOST": host, "PORT": str(port), "NAME": stack.dbname, "CONN_MAX_AGE": None}
    settings.configure(
        DATABASES={
            "default": {"ENGINE": "dbcreds.django", **common,
                        "OPTIONS": {"secret_id": app.secret_id}},
            "static": {"ENGINE": "django.db.backends.postgresql", **common,
                       "USER": app.username, "PASSWORD": app.password,
                       "OPTIONS": {"sslmode": "verify-full", "sslrootcert": stack.ca_file,
                                   "prepare_threshold": None}},
        },
        INSTALLED_APPS=[], USE_TZ=True,
    )
    django.setup()
    from django.db import connections

    def request(alias: str) -> Request:
        def run() -> Any:
            with connections[alias].cursor() as cursor:
                cursor.execute("select 1")
                return cursor.fetchone()
        return run

    return Pair("Django (cursor, CONN_MAX_AGE=None)", request("default"), request("static"),
                [connections.close_all])


def _asyncpg(stack: Any, app: Any, host: str, port: int, loop: Any) -> Pair:
    import asyncpg

    import dbcreds.asyncpg

    context = ssl.create_default_context(cafile=stack.ca_file)

    async def build() -> tuple[Any, Any]:
        ours = await dbcreds.asyncpg.create_pool(
            f"postgresql://{host}:{port}/{stack.dbname}", secret_id=app.secret_id,
            min_size=1, max_size=1)
        theirs = await asyncpg.create_pool(
            host=host, port=port, database=stack.dbname, user=app.username,
            password=app.password, ssl=context, statement_cache_size=0, min_size=1,
            max_size=1)
        return ours, theirs

    ours, theirs = loop.run_until_complete(build())

    def request(pool: Any) -> AsyncRequest:
        async def run() -> Any:
            return await pool.fetchval("select 1")
        return run

    return Pair("asyncpg (pool.fetchval)", request(ours), request(theirs),
                [ours.close, theirs.close], is_async=True)


def _psycopg2(stack: Any, app: Any, host: str, port: int, loop: Any) -> Pair:
    import psycopg2.pool

    import dbcreds.psycopg2

    ours = dbcreds.psycopg2.ThreadedConnectionPool(
        1, 1, secret_id=app.secret_id, host=host, port=port, dbname=stack.dbname)
    theirs = psycopg2.pool.ThreadedConnectionPool(
        1, 1, host=host, port=port, dbname=stack.dbname, user=app.username,
        password=app.password, sslmode="verify-full", sslrootcert=stack.ca_file)

    def request(pool: Any) -> Request:
        def run() -> Any:
            conn = pool.getconn()
            try:
                with conn.cursor() as cursor:
                    cursor.execute("select 1")
                    return cursor.fetchone()
            finally:
                pool.putconn(conn)
        return run

    return Pair("psycopg2 (ThreadedConnectionPool)", request(ours), request(theirs),
                [ours.closeall, theirs.closeall])


if __name__ == "__main__":  # pragma: no cover - `make bench` runs it through run.py
    raise SystemExit("run it through benchmarks/run.py --only integrations")
