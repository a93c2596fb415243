"""Warm path: one request (a pooled connection + ``SELECT 1``) once everything is warm.

dbcreds' ``get_connection()`` (its default pool, built from ``DBCREDS_*``), the same with
telemetry on (both sinks: ``dbcreds.telemetry``), the same with ``DBCREDS_POOL_CHECK=0``, and
a raw ``psycopg_pool.ConnectionPool`` with static credentials (without, and with, the same
connection check), all one connection through the RDS Proxy stand-in. Requests are timed one
by one, in interleaved blocks, in this process.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from _common import median

Source = Callable[[], AbstractContextManager[Any]]


def _time_block(source: Source, n: int, out: list[float]) -> None:
    for _ in range(n):
        t = time.perf_counter()
        with source() as conn:
            conn.execute("select 1").fetchone()
        out.append(time.perf_counter() - t)


@contextmanager
def _telemetry_on() -> Iterator[None]:
    """Both sinks on (an OpenTelemetry SDK meter and tracer, EMF lines to /dev/null): what an
    operator who turned telemetry on pays per request."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider

    from dbcreds import telemetry

    with open(os.devnull, "w") as sink:
        telemetry.use_opentelemetry(MeterProvider(metric_readers=[InMemoryMetricReader()]),
                                    TracerProvider())
        telemetry.use_emf(stream=sink)
        try:
            yield
        finally:
            telemetry.disable()


def warm_path(stack: Any, *, blocks: int = 20, per_block: int = 250) -> dict[str, Any]:
    from psycopg_pool import ConnectionPool

    import dbcreds
    from dbcreds.config import Settings
    from dbcreds.pool import build_pool

    app = stack.new_app("bench_warm")
    host, port = stack.address("rds_proxy")
    env = {"DBCREDS_SECRET_ID": app.secret_id, "DBCREDS_HOST": host, "DBCREDS_PORT": str(port)}
    os.environ.update(env)
    dbcreds.close_default_pool()
    no_check = build_pool(Settings.from_env({**env, "DBCREDS_POOL_CHECK": "0"}))
    static = {"host": host, "port": port, "dbname": stack.dbname, "user": app.username,
              "password": app.password, "prepare_threshold": None}
    raw = ConnectionPool(kwargs=static, min_size=1, max_size=1, open=True)
    raw_check = ConnectionPool(kwargs=static, min_size=1, max_size=1, open=True,
                               check=ConnectionPool.check_connection)
    telemetry_on = "dbcreds get_connection(), telemetry on (OpenTelemetry SDK + EMF)"
    variants: dict[str, Source] = {
        "dbcreds get_connection() (DBCREDS_POOL_CHECK=1, default)": dbcreds.get_connection,
        telemetry_on: dbcreds.get_connection,
        "dbcreds, DBCREDS_POOL_CHECK=0": no_check.connection,
        "psycopg_pool, static credentials": raw.connection,
        "psycopg_pool, static credentials + check_connection": raw_check.connection,
    }
    samples: dict[str, list[float]] = {name: [] for name in variants}

    def run(name: str, n: int, out: list[float]) -> None:
        if name != telemetry_on:
            _time_block(variants[name], n, out)
            return
        with _telemetry_on():
            _time_block(variants[name], n, out)

    try:
        for name in variants:  # warm-up: connections made, caches filled
            run(name, 100, [])
        for block in range(blocks):
            order = list(variants) if block % 2 == 0 else list(reversed(variants))
            for name in order:
                run(name, per_block, samples[name])
    finally:
        dbcreds.close_default_pool()
        no_check.close()
        raw.close()
        raw_check.close()
        for name in env:
            os.environ.pop(name, None)
        stack.rds_proxy.unwatch(app.secret_id)
    base = median(samples["psycopg_pool, static credentials"])
    base_check = median(samples["psycopg_pool, static credentials + check_connection"])
    table = {}
    for name, values in samples.items():
        ordered = sorted(values)
        table[name] = {
            "median_us": median(values) * 1e6,
            "p99_us": ordered[int(len(ordered) * 0.99)] * 1e6,
            "vs_raw": median(values) / base,
            "vs_raw_check": median(values) / base_check,
            "n": len(values),
        }
    return {"blocks": blocks, "per_block": per_block, "variants": table}
