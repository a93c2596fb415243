"""Telemetry after three rotations under load, on the real stack: the OpenTelemetry metrics (an
in-memory reader) and the CloudWatch EMF lines (parsed) count what the pool and its provider
did, and agree with each other and with the provider's own statistics."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from dbcreds import CredentialPool, SecretProvider, telemetry
from dbcreds_testing.workload import Workload
from rotations import assert_three_rotations_served, report, rotate_three_times
from support import emf_counts, otel_sums

pytestmark = pytest.mark.load


@pytest.fixture
def sinks() -> Iterator[tuple[InMemoryMetricReader, io.StringIO]]:
    reader, emf = InMemoryMetricReader(), io.StringIO()
    telemetry.use_opentelemetry(MeterProvider(metric_readers=[reader]))
    telemetry.use_emf(stream=emf)
    yield reader, emf
    telemetry.disable()


def total(sums: dict[str, Any], name: str) -> float:
    return sum(sums.get(name, {}).values())


def test_metrics_count_a_rotation_under_load(
    stack: Any, rotating_app: Any, sm_client: Any,
    sinks: tuple[InMemoryMetricReader, io.StringIO],
) -> None:
    reader, emf = sinks
    app = rotating_app
    provider = SecretProvider(app.secret_id)
    with CredentialPool(provider, host=stack.rds_proxy.host, port=stack.rds_proxy.port,
                        min_size=4, max_size=8, max_lifetime=2.0,
                        check=CredentialPool.check_connection, open=True) as pool:
        pool.wait(timeout=15)
        with Workload(pool.connection, threads=8) as workload:
            assert workload.wait_for_requests(50)
            logins_ok = rotate_three_times(stack, app, sm_client, [workload])
            result = workload.stop()
    report("telemetry rds-proxy-like", result, provider)
    assert_three_rotations_served(stack, app, result, logins_ok)

    telemetry.flush()
    sums, lines = otel_sums(reader), emf_counts(emf.getvalue())
    stats = provider.get_stats()
    print(f"\n[telemetry] {({k: total(sums, k) for k in sorted(sums)})} {stats}")
    assert total(sums, telemetry.FETCHES) == stats["fetches"]
    assert total(sums, telemetry.CACHE_HITS) == stats["cache_hits"]
    assert total(sums, telemetry.FETCH_DURATION) == stats["fetches"]  # one duration each
    refreshes = total(sums, telemetry.REFRESHES)
    current = sums[telemetry.FETCHES].get((("outcome", "ok"), ("stage", "AWSCURRENT")), 0)
    # AWSCURRENT is fetched once at start (the TTL, 300 s, never expires here), then once per
    # forced refresh: one for everyone whose login was refused together.
    assert current == 1 + refreshes
    # Rotations back to back: a refresh may skip a version; every new version came by one.
    assert 1 <= stats["version_changes"] <= refreshes <= total(sums, telemetry.LOGIN_REFUSED)
    assert total(sums, telemetry.LOGIN_FAILURES) == 0
    for name in (telemetry.FETCHES, telemetry.CACHE_HITS, telemetry.LOGIN_REFUSED,
                 telemetry.REFRESHES, telemetry.RETRY_WAITS, telemetry.PENDING_USED):
        assert lines.get(name, 0) == total(sums, name), name  # EMF says the same
    assert app.password not in emf.getvalue()
