"""Telemetry (``dbcreds.telemetry``): off costs nothing and imports nothing; each sink gets the
events; EMF lines are what CloudWatch (and Powertools users) expect; the login policy and the
provider report what they do (pure logic: a fake Secrets Manager, a fake login)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from dbcreds import AuthenticationFailed, SecretProvider, telemetry
from dbcreds.login import LoginPolicy, drive
from support import Clock, FakeSM, Refused, emf_counts, otel_sums


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    telemetry.disable()
    yield
    telemetry.disable()


def test_off_imports_nothing_and_costs_one_check() -> None:
    code = (
        "import sys, os; os.environ.pop('DBCREDS_TELEMETRY', None);"
        "from dbcreds import telemetry;"
        "telemetry.count(telemetry.FETCHES); telemetry.observe(telemetry.FETCH_DURATION, 1.0);"
        "print(telemetry._sinks == () and 'opentelemetry' not in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "True"


def test_the_environment_chooses_and_a_bad_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """A bad DBCREDS_TELEMETRY is logged once, naming the variable (never its value), and
    telemetry stays off: the first event may come from a pool's worker or a prefetch thread,
    whose operation must not fail for it."""
    monkeypatch.setattr(telemetry, "_configured", False)
    monkeypatch.setenv("DBCREDS_TELEMETRY", "statsd-secret-value")
    telemetry.count(telemetry.FETCHES)
    telemetry.count(telemetry.FETCHES)
    errors = [r.getMessage() for r in caplog.records if r.name == "dbcreds.telemetry"]
    assert len(errors) == 1 and "DBCREDS_TELEMETRY" in errors[0] and "statsd" not in errors[0]
    assert telemetry._sinks == ()
    monkeypatch.setattr(telemetry, "_configured", False)
    monkeypatch.setenv("DBCREDS_TELEMETRY", "emf")
    telemetry.count(telemetry.PENDING_USED)
    assert [type(s).__name__ for s in telemetry._sinks] == ["EmfSink"]


def test_emf_lines_are_cloudwatch_embedded_metric_format(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "Orders")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "checkout")
    out = io.StringIO()
    telemetry.use_emf(stream=out)
    telemetry.count(telemetry.CACHE_HITS, {"stage": "AWSCURRENT"})  # aggregated, not written
    assert out.getvalue() == ""
    telemetry.observe(telemetry.FETCH_DURATION, 0.012, {"stage": "AWSCURRENT"})
    telemetry.count(telemetry.FETCHES, {"stage": "AWSCURRENT", "outcome": "ok"})  # written
    telemetry.count(telemetry.LOGIN_REFUSED, {"kind": "proxy", "stage": "AWSCURRENT"})
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert all(d["service"] == "checkout" for d in lines)
    for doc in lines:
        directive = doc["_aws"]["CloudWatchMetrics"][0]
        assert directive["Namespace"] == "Orders"
        assert isinstance(doc["_aws"]["Timestamp"], int)
        for dimension in directive["Dimensions"][0]:
            assert isinstance(doc[dimension], str)  # every dimension has its value
        for metric in directive["Metrics"]:
            assert metric["Name"] in doc and metric["Unit"] in ("Count", "Seconds")
    assert emf_counts(out.getvalue()) == {
        telemetry.CACHE_HITS: 1, telemetry.FETCHES: 1, telemetry.FETCH_DURATION: 1,
        telemetry.LOGIN_REFUSED: 1,
    }


def test_the_provider_and_the_login_policy_report_what_they_do() -> None:
    """A rotation seen by one login: refused with AWSCURRENT, refreshed, AWSPENDING works."""
    reader = InMemoryMetricReader()
    exporter = InMemorySpanExporter()
    tracer = TracerProvider()
    tracer.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.use_opentelemetry(MeterProvider(metric_readers=[reader]), tracer)
    emf = io.StringIO()
    telemetry.use_emf(stream=emf)

    sm = FakeSM()
    sm.put("AWSCURRENT", "v1", "old-password")
    provider = SecretProvider("prod/app", fetcher=sm, clock=Clock())
    policy = LoginPolicy(provider, budget=0)
    sm.put("AWSPENDING", "v2", "new-password")  # setSecret done: only the pending one works

    def attempt(secret: Any) -> str:
        if secret.password != "new-password":
            raise Refused("password authentication failed for user")
        return "connection"

    assert drive(policy.plan(), attempt, lambda s: None) == "connection"
    provider.get()  # a cache hit

    sums = otel_sums(reader)
    assert sums[telemetry.LOGIN_REFUSED] == {(("kind", "client"), ("stage", "AWSCURRENT")): 1}
    assert sums[telemetry.PENDING_USED] == {(): 1}
    assert sums[telemetry.REFRESHES] == {(): 1}
    fetches = sum(sums[telemetry.FETCHES].values())
    assert fetches == provider.get_stats()["fetches"] == 3  # current, refresh, pending
    assert sum(sums[telemetry.CACHE_HITS].values()) == provider.get_stats()["cache_hits"]
    names = [s.name for s in exporter.get_finished_spans()]
    assert names.count("dbcreds.secret.fetch") == 3 and names.count("dbcreds.login") == 1
    login = next(s for s in exporter.get_finished_spans() if s.name == "dbcreds.login")
    assert login.attributes is not None and login.attributes["dbcreds.secret_id"] == "prod/app"
    texts = emf.getvalue() + repr([s.to_json() for s in exporter.get_finished_spans()])
    assert "old-password" not in texts and "new-password" not in texts

    telemetry.flush()
    totals = emf_counts(emf.getvalue())
    assert totals[telemetry.FETCHES] == fetches
    assert totals[telemetry.LOGIN_REFUSED] == 1 and totals[telemetry.PENDING_USED] == 1


def test_a_login_given_up_is_counted_by_its_error() -> None:
    reader = InMemoryMetricReader()
    telemetry.use_opentelemetry(MeterProvider(metric_readers=[reader]))
    sm = FakeSM()
    sm.put("AWSCURRENT", "v1", "wrong")
    policy = LoginPolicy(SecretProvider("prod/app", fetcher=sm, clock=Clock()), budget=0)

    def attempt(secret: Any) -> str:
        raise Refused("password authentication failed for user")

    with pytest.raises(AuthenticationFailed):
        drive(policy.plan(), attempt, lambda s: None)
    assert otel_sums(reader)[telemetry.LOGIN_FAILURES] == {
        (("error", "AuthenticationFailed"),): 1}


def test_every_client_dbcreds_makes_says_dbcreds_in_its_user_agent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dbcreds import __version__

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    from dbcreds._aws import new_client

    seen: list[str] = []
    client = new_client("secretsmanager", region_name="eu-west-1",
                        user_agent_extra="myapp/2")

    def capture(request: Any, **_: Any) -> Any:
        seen.append(request.headers["User-Agent"].decode()
                    if isinstance(request.headers["User-Agent"], bytes)
                    else request.headers["User-Agent"])
        raise RuntimeError("stop before the network")

    client.meta.events.register("before-send", capture)
    with pytest.raises(RuntimeError, match="stop before"):
        client.list_secrets()
    assert f"dbcreds/{__version__}" in seen[0] and "myapp/2" in seen[0]
