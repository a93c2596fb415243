"""An application workload: N threads looping a query through a pool, every request recorded.

Used by the zero-failure tests, the demo and the benchmarks, so that they all count requests,
failures and latency the same way.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

__all__ = ["AsyncWorkload", "Mark", "Request", "Workload", "WorkloadReport"]


@dataclass(frozen=True)
class Request:
    start: float  # seconds since the workload started
    seconds: float
    error: str | None  # exception type and first line, None on success


@dataclass(frozen=True)
class Mark:
    at: float
    label: str


@dataclass
class WorkloadReport:
    requests: list[Request]
    marks: list[Mark] = field(default_factory=list)
    duration: float = 0.0

    @property
    def failures(self) -> list[Request]:
        return [r for r in self.requests if r.error is not None]

    @property
    def worst(self) -> float:
        return max((r.seconds for r in self.requests), default=0.0)

    def percentile(self, p: float) -> float:
        values = sorted(r.seconds for r in self.requests)
        if not values:
            return 0.0
        if len(values) == 1:
            return values[0]
        return statistics.quantiles(values, n=1000, method="inclusive")[int(p * 10) - 1]

    def summary(self) -> dict[str, Any]:
        return {
            "requests": len(self.requests),
            "failed": len(self.failures),
            "p50_ms": round(self.percentile(50) * 1000, 2),
            "p99_ms": round(self.percentile(99) * 1000, 2),
            "max_ms": round(self.worst * 1000, 2),
            "duration_s": round(self.duration, 2),
            "errors": sorted({r.error for r in self.failures if r.error})[:5],
        }


ConnectionSource = Callable[[], AbstractContextManager[Any]]
AsyncConnectionSource = Callable[[], AbstractAsyncContextManager[Any]]


class _Recorder:
    """The timeline shared by the thread and the asyncio workloads: requests and marks."""

    def __init__(self, query: str, max_requests: int | None) -> None:
        self.query = query
        self.max_requests = max_requests
        self._lock = threading.Lock()  # marks come from other threads (the rotation's)
        self._requests: list[Request] = []
        self._marks: list[Mark] = []
        self._t0 = time.perf_counter()

    def mark(self, label: str) -> None:
        """Record an event (e.g. a rotation step) on the workload's timeline."""
        with self._lock:
            self._marks.append(Mark(time.perf_counter() - self._t0, label))

    def snapshot(self) -> tuple[int, int]:
        """(requests, failures) so far, for live progress."""
        with self._lock:
            return len(self._requests), sum(1 for r in self._requests if r.error)

    def report(self) -> WorkloadReport:
        with self._lock:
            return WorkloadReport(
                list(self._requests), list(self._marks), time.perf_counter() - self._t0
            )

    def _record(self, started: float, exc: BaseException | None) -> bool:
        """Record one request; True when ``max_requests`` is reached."""
        done = time.perf_counter()
        error = None
        if exc is not None:
            text = str(exc).strip().splitlines()
            error = f"{type(exc).__name__}: {text[0] if text else ''}"
        with self._lock:
            self._requests.append(Request(started - self._t0, done - started, error))
            return self.max_requests is not None and len(self._requests) >= self.max_requests


class Workload(_Recorder):
    """Threads that each loop ``with source() as conn: conn.execute(query)`` until stopped.

    :param source: returns a connection context manager (``pool.connection`` or
        ``dbcreds.get_connection``).
    :param request: instead of *source*: one request through any library's own API (a
        SQLAlchemy ``Session`` query, a Django ORM query, a psycopg2 cursor); it raises on
        failure.
    :param max_requests: optional bound on the total (a load test stops by itself).
    """

    def __init__(
        self,
        source: ConnectionSource | None = None,
        *,
        request: Callable[[], object] | None = None,
        threads: int = 8,
        query: str = "select 1",
        max_requests: int | None = None,
    ) -> None:
        super().__init__(query, max_requests)
        if (source is None) == (request is None):
            raise ValueError("give a connection source or a request, not both")
        self.source = source
        self.request = request or self._query
        self.threads = threads
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

    def start(self) -> Workload:
        self._t0 = time.perf_counter()
        self._workers = [
            threading.Thread(target=self._loop, name=f"workload-{i}", daemon=True)
            for i in range(self.threads)
        ]
        for w in self._workers:
            w.start()
        return self

    def wait_for_requests(self, n: int, timeout: float = 30.0) -> bool:
        """Block until at least *n* requests are done (or timeout): warm-up without sleeps."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.snapshot()[0] >= n:
                return True
            if self._stop.wait(0.01):
                break
        return False

    def stop(self) -> WorkloadReport:
        self._stop.set()
        for w in self._workers:
            w.join(timeout=60)
        return self.report()

    def __enter__(self) -> Workload:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            t = time.perf_counter()
            failure: BaseException | None = None
            try:
                self.request()
            except Exception as exc:  # every failure is a data point
                failure = exc
            if self._record(t, failure):
                self._stop.set()

    def _query(self) -> None:
        assert self.source is not None
        with self.source() as conn:
            conn.execute(self.query).fetchall()


class AsyncWorkload(_Recorder):
    """The asyncio twin of `Workload`: *tasks* tasks looping ``async with source() as conn``.

    :param request: instead of *source*: a coroutine function making one request through any
        library's own API (an asyncpg pool's ``fetchval``, an async SQLAlchemy session query).

    Start and stop it inside the event loop that owns the pool.
    """

    def __init__(
        self,
        source: AsyncConnectionSource | None = None,
        *,
        request: Callable[[], Awaitable[object]] | None = None,
        tasks: int = 8,
        query: str = "select 1",
        max_requests: int | None = None,
    ) -> None:
        super().__init__(query, max_requests)
        if (source is None) == (request is None):
            raise ValueError("give a connection source or a request, not both")
        self.source = source
        self.request = request or self._query
        self.tasks = tasks
        self._stop = asyncio.Event()
        self._runners: list[asyncio.Task[None]] = []

    def start(self) -> AsyncWorkload:
        self._t0 = time.perf_counter()
        self._runners = [asyncio.create_task(self._loop()) for _ in range(self.tasks)]
        return self

    async def wait_for_requests(self, n: int, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.snapshot()[0] >= n:
                return True
            await asyncio.sleep(0.01)
        return False

    async def stop(self) -> WorkloadReport:
        self._stop.set()
        await asyncio.wait_for(asyncio.gather(*self._runners), 30)
        return self.report()

    async def _loop(self) -> None:
        while not self._stop.is_set():
            t = time.perf_counter()
            failure: BaseException | None = None
            try:
                await self.request()
            except Exception as exc:  # every failure is a data point
                failure = exc
            if self._record(t, failure):
                self._stop.set()

    async def _query(self) -> None:
        assert self.source is not None
        async with self.source() as conn:
            await (await conn.execute(self.query)).fetchall()
