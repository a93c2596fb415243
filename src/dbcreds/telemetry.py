"""Metrics and traces: what dbcreds did, for the people who operate it. Off unless asked for.

dbcreds reports a handful of events (below) to *sinks*; with none (the default) each event
costs one check of a tuple, and nothing is imported. Two sinks ship:

* **OpenTelemetry** (`use_opentelemetry`, or ``DBCREDS_TELEMETRY=otel``; extra
  ``dbcreds[otel]``, the ``opentelemetry-api`` package): counters and histograms from a meter
  named ``dbcreds``, spans from a tracer named ``dbcreds``, through whatever providers the
  application configured (the global ones by default): an OTLP exporter, the ADOT Lambda
  layer, a Prometheus reader, ...
* **CloudWatch Embedded Metric Format** (`use_emf`, or ``DBCREDS_TELEMETRY=emf``): JSON lines
  on standard output, which CloudWatch Logs turns into metrics with no collector and no API
  call (what Powertools for AWS Lambda's Metrics does). Namespace ``POWERTOOLS_METRICS_NAMESPACE``
  (default ``dbcreds``), dimension ``service`` = ``POWERTOOLS_SERVICE_NAME`` (default
  ``dbcreds``), plus each event's attributes as dimensions. Counts are aggregated and written
  when anything but a cache hit happens (fetches, refusals, waits, failures: rare), at most once
  a minute for cache hits alone, at `flush` (call it at the end of a handler if you want every
  invocation's hits at once) and at exit.

``DBCREDS_TELEMETRY`` is ``off`` (default), ``otel``, ``emf`` or ``otel,emf``; it is read at the
first event unless code called `use_opentelemetry`/`use_emf`/`disable` before.

The names are stable (a dashboard or an alarm depends on them):

=====================================  ==========  ==============================================
name                                   kind        attributes; meaning
=====================================  ==========  ==============================================
``dbcreds.secret.fetches``             counter     ``stage``, ``outcome`` (ok, error): calls to
                                                   Secrets Manager (or the extension/Agent)
``dbcreds.secret.fetch.duration``      histogram   ``stage``; seconds per fetch
``dbcreds.secret.cache_hits``          counter     ``stage``: values served from the cache
``dbcreds.secret.refreshes``           counter     forced fetches after a refused login
``dbcreds.secret.stale_served``        counter     the cached value served while Secrets
                                                   Manager failed (stale-if-error)
``dbcreds.login.refused``              counter     ``kind`` (client, proxy), ``stage``: logins
                                                   the database or the proxy refused
``dbcreds.login.pending_used``         counter     logins that worked with AWSPENDING (the
                                                   single-user rotation window)
``dbcreds.login.retry_waits``          counter     waits for a rotation or a proxy to heal
``dbcreds.login.retry_wait.duration``  histogram   seconds of each such wait
``dbcreds.login.failures``             counter     ``error`` (AuthenticationFailed,
                                                   UntrustedServer): logins given up, told to
                                                   every waiting caller at once
=====================================  ==========  ==============================================

Spans: ``dbcreds.secret.fetch`` (attributes ``dbcreds.secret_id``, ``dbcreds.stage``) around
each fetch, ``dbcreds.login`` (``dbcreds.secret_id``) around each login a new connection makes
(its tries, refusals and waits). Neither ever carries a secret value.

Standard library only; OpenTelemetry is imported by `use_opentelemetry` alone.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import IO, Any, Protocol

from . import _env

logger = logging.getLogger("dbcreds.telemetry")

__all__ = [
    "CACHE_HITS", "FETCHES", "FETCH_DURATION", "LOGIN_FAILURES", "LOGIN_REFUSED",
    "PENDING_USED", "REFRESHES", "RETRY_WAITS", "RETRY_WAIT_DURATION", "STALE_SERVED",
    "EmfSink", "Sink", "SpanHandle", "count", "disable", "flush", "observe", "span", "use_emf",
    "use_opentelemetry",
]

FETCHES = "dbcreds.secret.fetches"
FETCH_DURATION = "dbcreds.secret.fetch.duration"
CACHE_HITS = "dbcreds.secret.cache_hits"
REFRESHES = "dbcreds.secret.refreshes"
STALE_SERVED = "dbcreds.secret.stale_served"
LOGIN_REFUSED = "dbcreds.login.refused"
PENDING_USED = "dbcreds.login.pending_used"
RETRY_WAITS = "dbcreds.login.retry_waits"
RETRY_WAIT_DURATION = "dbcreds.login.retry_wait.duration"
LOGIN_FAILURES = "dbcreds.login.failures"

#: what each instrument measures (OpenTelemetry descriptions; EMF units)
_COUNTERS = {
    FETCHES: "calls to Secrets Manager (or the Lambda extension / Secrets Manager Agent)",
    CACHE_HITS: "secret values served from dbcreds' cache",
    REFRESHES: "forced fetches of the secret after a refused login",
    STALE_SERVED: "cached secret values served while Secrets Manager failed",
    LOGIN_REFUSED: "logins refused by the database or the proxy",
    PENDING_USED: "logins that worked with the AWSPENDING version (single-user rotation)",
    RETRY_WAITS: "waits for a rotation or a proxy to heal before logging in again",
    LOGIN_FAILURES: "logins given up (told to every waiting caller at once)",
}
_HISTOGRAMS = {
    FETCH_DURATION: "seconds per fetch of the secret",
    RETRY_WAIT_DURATION: "seconds of each wait for a rotation or a proxy to heal",
}
_MODES = ("off", "otel", "emf")

Attributes = Mapping[str, str]


class Sink(Protocol):
    """Where events go (`EmfSink`, the OpenTelemetry sink, or a test's own)."""

    def add(self, name: str, value: int, attributes: Attributes) -> None: ...

    def record(self, name: str, value: float, attributes: Attributes) -> None: ...

    def span(self, name: str, attributes: Attributes) -> AbstractContextManager[Any]: ...


_lock = threading.Lock()
_sinks: tuple[Sink, ...] = ()
_configured = False


def count(name: str, attributes: Attributes | None = None, value: int = 1) -> None:
    """Add *value* to the counter *name*."""
    if not _configured:
        _configure_from_env()
    for sink in _sinks:
        sink.add(name, value, attributes or {})


def observe(name: str, value: float, attributes: Attributes | None = None) -> None:
    """Record *value* in the histogram *name*."""
    if not _configured:
        _configure_from_env()
    for sink in _sinks:
        sink.record(name, value, attributes or {})


class SpanHandle:
    """What ``with span(...) as handle`` gives: ``handle.set(key, value)`` adds an attribute
    to the span of every sink that traces (nothing when none does)."""

    def __init__(self, spans: tuple[Any, ...] = ()) -> None:
        self._spans = spans

    def set(self, key: str, value: str | int | float | bool) -> None:
        for item in self._spans:
            setter = getattr(item, "set_attribute", None)
            if setter is not None:
                setter(key, value)


_NO_SPAN: AbstractContextManager[SpanHandle] = nullcontext(SpanHandle())


def span(name: str, attributes: Attributes | None = None) -> AbstractContextManager[SpanHandle]:
    """A span around a block (a no-op context manager when no sink traces)."""
    if not _configured:
        _configure_from_env()
    if not _sinks:
        return _NO_SPAN
    return _spans(name, attributes or {})


@contextmanager
def _spans(name: str, attributes: Attributes) -> Iterator[SpanHandle]:
    from contextlib import ExitStack

    with ExitStack() as stack:
        yield SpanHandle(tuple(stack.enter_context(sink.span(name, attributes))
                               for sink in _sinks))


def _install(sink: Sink, *, replace: type | None = None) -> Sink:
    global _sinks, _configured
    with _lock:
        kept = tuple(s for s in _sinks if replace is None or not isinstance(s, replace))
        _sinks = (*kept, sink)
        _configured = True
    return sink


def disable() -> None:
    """No sink: every event is dropped (flushing the EMF sink's counts first)."""
    global _sinks, _configured
    flush()
    with _lock:
        _sinks = ()
        _configured = True


def flush() -> None:
    """Write what the EMF sink aggregated (a no-op for other sinks)."""
    for sink in _sinks:
        if isinstance(sink, EmfSink):
            sink.flush()


def _configure_from_env() -> None:
    global _configured
    with _lock:
        if _configured:
            return
        _configured = True  # first, so that a bad value is reported once, not per event
    # The first event may come from anywhere (a pool's worker, a prefetch thread): a bad
    # setting is logged there, once, naming the variable, and telemetry stays off; it is
    # not raised into the unrelated operation that happened to report first.
    raw = _env.text(os.environ, "DBCREDS_TELEMETRY") or "off"
    modes = {m.strip().lower() for m in raw.split(",") if m.strip()}
    if not modes <= set(_MODES) or ("off" in modes and len(modes) > 1):
        logger.error("DBCREDS_TELEMETRY must be off, otel, emf or otel,emf: telemetry is off")
        return
    try:
        if "otel" in modes:
            use_opentelemetry()
        if "emf" in modes:
            use_emf()
    except Exception as exc:
        logger.error("DBCREDS_TELEMETRY=%s: telemetry is off: %s", ",".join(sorted(modes)), exc)


# -- OpenTelemetry ------------------------------------------------------------------------------


class _OpenTelemetrySink:
    def __init__(self, meter_provider: Any, tracer_provider: Any) -> None:
        from opentelemetry import metrics, trace

        from ._version import __version__

        meter = (meter_provider or metrics.get_meter_provider()).get_meter("dbcreds", __version__)
        self._tracer = (tracer_provider or trace.get_tracer_provider()).get_tracer(
            "dbcreds", __version__
        )
        self._counters = {n: meter.create_counter(n, unit="1", description=d)
                          for n, d in _COUNTERS.items()}
        self._histograms = {n: meter.create_histogram(n, unit="s", description=d)
                            for n, d in _HISTOGRAMS.items()}

    def add(self, name: str, value: int, attributes: Attributes) -> None:
        self._counters[name].add(value, dict(attributes))

    def record(self, name: str, value: float, attributes: Attributes) -> None:
        self._histograms[name].record(value, dict(attributes))

    def span(self, name: str, attributes: Attributes) -> AbstractContextManager[Any]:
        cm: AbstractContextManager[Any] = self._tracer.start_as_current_span(
            name, attributes=dict(attributes)
        )
        return cm


def use_opentelemetry(meter_provider: Any = None, tracer_provider: Any = None) -> None:
    """Report to OpenTelemetry: the given providers, or the global ones (``opentelemetry-api``
    must be installed: ``pip install 'dbcreds[otel]'``). Replaces an earlier OpenTelemetry
    sink; keeps an EMF sink."""
    try:
        sink = _OpenTelemetrySink(meter_provider, tracer_provider)
    except ImportError:
        from .errors import ConfigurationError

        raise ConfigurationError(
            "OpenTelemetry is not installed: pip install 'dbcreds[otel]' (opentelemetry-api)"
        ) from None
    _install(sink, replace=_OpenTelemetrySink)


# -- CloudWatch Embedded Metric Format ----------------------------------------------------------


class EmfSink:
    """Aggregates events and writes them as CloudWatch EMF JSON lines (see the module
    docstring). Thread-safe."""

    #: seconds between writes when only cache hits happened
    quiet_interval = 60.0

    def __init__(
        self, namespace: str | None = None, service: str | None = None,
        stream: IO[str] | None = None,
    ) -> None:
        env = os.environ
        self.namespace = namespace or env.get("POWERTOOLS_METRICS_NAMESPACE") or "dbcreds"
        self.service = service or env.get("POWERTOOLS_SERVICE_NAME") or "dbcreds"
        self._stream = stream
        self._lock = threading.Lock()
        self._counts: dict[tuple[tuple[str, str], ...], dict[str, float]] = {}
        self._values: dict[tuple[tuple[str, str], ...], dict[str, list[float]]] = {}
        self._last_flush = time.monotonic()

    def add(self, name: str, value: int, attributes: Attributes) -> None:
        key = tuple(sorted(attributes.items()))
        with self._lock:
            group = self._counts.setdefault(key, {})
            group[name] = group.get(name, 0) + value
            due = name != CACHE_HITS or time.monotonic() - self._last_flush >= self.quiet_interval
        if due:
            self.flush()

    def record(self, name: str, value: float, attributes: Attributes) -> None:
        key = tuple(sorted(attributes.items()))
        with self._lock:
            self._values.setdefault(key, {}).setdefault(name, []).append(value)

    def span(self, name: str, attributes: Attributes) -> AbstractContextManager[Any]:
        return nullcontext()  # EMF has metrics only

    def flush(self) -> None:
        """Write one EMF document per set of attributes; forget what was written."""
        with self._lock:
            counts, self._counts = self._counts, {}
            values, self._values = self._values, {}
            self._last_flush = time.monotonic()
        lines = [self._document(key, counts.get(key, {}), values.get(key, {}))
                 for key in sorted({*counts, *values})]
        if lines:
            stream = self._stream or sys.stdout
            stream.write("".join(line + "\n" for line in lines))
            stream.flush()

    def _document(
        self, key: tuple[tuple[str, str], ...], counts: Mapping[str, float],
        values: Mapping[str, list[float]],
    ) -> str:
        metrics = [{"Name": n, "Unit": "Count"} for n in sorted(counts)]
        metrics += [{"Name": n, "Unit": "Seconds"} for n in sorted(values)]
        doc: dict[str, Any] = {
            "_aws": {
                "Timestamp": int(time.time() * 1000),
                "CloudWatchMetrics": [{
                    "Namespace": self.namespace,
                    "Dimensions": [["service", *(k for k, _ in key)]],
                    "Metrics": metrics,
                }],
            },
            "service": self.service,
            **dict(key),
            **counts,
            **values,
        }
        return json.dumps(doc, separators=(",", ":"))


def use_emf(
    namespace: str | None = None, service: str | None = None, stream: IO[str] | None = None
) -> EmfSink:
    """Report as CloudWatch EMF lines on *stream* (standard output by default). Replaces an
    earlier EMF sink (flushing it); keeps an OpenTelemetry sink."""
    for old in _sinks:
        if isinstance(old, EmfSink):
            old.flush()
    sink = EmfSink(namespace, service, stream)
    _install(sink, replace=EmfSink)
    return sink


atexit.register(flush)
