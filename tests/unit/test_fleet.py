"""The fleet simulation's throttling model (benchmarks/fleet.py), on small fleets."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from support import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
fleet = pytest.importorskip("fleet")

SMALL: dict[str, Any] = {"containers": 200, "duration": 400.0, "ttl": 100.0,
                         "rotate_at": 250.0, "conn_life": 150.0}


def test_under_the_quota_nothing_is_throttled_and_each_cold_start_takes_one_answer() -> None:
    r = fleet.simulate(fleet.Scenario("x", 0.1, ramp=1.0), **SMALL)
    assert r["throttled"] == 0
    assert r["failed_cold_starts"] == r["failed_requests"] == 0
    assert r["cold_start_max"] == pytest.approx(fleet.LATENCY)
    assert r["calls"] == r["total"]  # one attempt per call


def test_throttled_first_fetches_are_retried_by_botocore_and_some_fail_the_cold_start() -> None:
    # 200 containers within 0.1 s against 20 calls/s and a bucket of 5: most throttled.
    scenario = fleet.Scenario("x", 0.1, ramp=0.1, burst=5)
    r = fleet.simulate(scenario, quota=20.0, **SMALL)
    assert r["throttled"] > 0
    assert r["total"] == r["calls"] + r["throttled"] - r["exhausted_calls"]  # retries
    assert r["failed_cold_starts"] > 0
    assert r["failed_cold_starts"] == r["containers_failed_first"]
    # botocore's waits: a retried cold start lands in a later second
    assert r["cold_start_max"] > 1.0
    assert fleet.simulate(scenario, quota=20.0, **SMALL) == r  # seeded: deterministic


def test_more_attempts_fail_fewer_cold_starts() -> None:
    few = fleet.simulate(fleet.Scenario("x", 0.1, ramp=0.1, burst=5), quota=20.0, **SMALL)
    more = fleet.simulate(fleet.Scenario("x", 0.1, ramp=0.1, burst=5, attempts=6),
                          quota=20.0, **SMALL)
    assert more["failed_cold_starts"] < few["failed_cold_starts"]


def test_a_throttled_refresh_serves_the_cached_value() -> None:
    # No jitter: the whole fleet refreshes together at the TTL, beyond a small quota.
    r = fleet.simulate(fleet.Scenario("x", 0.0, ramp=10.0, burst=5), quota=15.0, **SMALL)
    assert r["stale_served"] > 0
