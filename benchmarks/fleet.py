"""Fleet simulation: 10,000 Lambda containers on a simulated clock, GetSecretValue per second,
under the account's GetSecretValue quota (a token bucket answering ThrottlingException) and
botocore's retries.

Every container runs the REAL `dbcreds.SecretProvider` (its TTL cache, jitter, single flight,
forced refresh on a refused login, stale-if-error, error backoff), with an injected clock (the
simulation's) and an injected fetcher. Only the world around it is modelled:

* containers cold-start uniformly over the first ``ramp`` seconds (a deployment or a scale-out;
  ``ramp=1``: 10,000 containers within one second) and then each handle one invocation every
  ``interval`` seconds (random phase); every invocation calls ``provider.get()``;
* **Secrets Manager**: a token bucket for the account's GetSecretValue quota (refilled at
  ``quota`` per second, holding at most ``burst`` tokens, full at t = 0); a call that finds no
  token is answered ``ThrottlingException``. Every answer takes ``latency`` seconds;
* **botocore's retries** as dbcreds configures them (``_aws.new_client``: standard mode,
  ``total_max_attempts=3``), as botocore 1.4x implements them (``botocore/retries/standard.py``):
  a throttled attempt n (1-based) is retried after ``random() * min(1 s * 2 ** (n - 1), 20 s)``
  (``ExponentialBackoff``: full jitter, base 1 s for throttling errors), if the client's retry
  quota (``RetryQuota``: 500, a throttled retry costs 5, a success gives back 1, or what its
  last retry took) allows; when every attempt is throttled the provider sees
  `SecretsManagerUnavailable` (dbcreds' translation of ThrottlingException). One client (so
  one retry quota) per container;
* each container keeps one database connection through the proxy; it logs in again when the
  connection is closed (exponential lifetime, mean ``conn_life`` s: idle timeouts, churn);
* at ``rotate_at`` finishSecret moves AWSCURRENT to a new version; the proxy (RDS Proxy) starts
  refusing the old password ``proxy_lag`` s later. A login refused with the cached password
  does what dbcreds' login policy does: ``provider.refresh(stale=...)``, log in again, and while
  the proxy still refuses, wait (jittered backoff 0.05 s doubling to 0.5 s) and go round again
  within a 5 s budget;
* optionally every connection is dropped at the rotation (the worst case: every container
  logs in again within one invocation interval).

Outcomes: a **failed cold start** is a container whose first ``provider.get()`` raised (no
cached value to serve); a **failed request** is an invocation whose ``get()`` raised, or whose
login was still refused at the end of the policy's budget.

How the fetch is made to take simulated time: the provider is synchronous, so the fetcher
cannot wait. The first time a container's fetcher is called it raises `_Suspend` (a
BaseException: the provider's flight unwinds without counting an error); the simulation then
plays the API call (its attempts, the bucket, botocore's waits) as events in time order and,
when the call is over, runs the container's step again with the fetcher answering the call's
outcome at once. The provider thus sees the outcome at the moment the call ends; its
``fetched_at`` is that moment, not the call's start (at most a few seconds later).

Speed: an invocation is not executed when it is provably a cache hit with nothing to do: its
connection is open and it comes less than ``ttl * (1 - jitter)`` (the shortest life of a
fetched value) after the container's last successful fetch. Such an invocation would only
return the cached value; it is counted, not run. Every other invocation calls the provider.

Deterministic: the provider's jitter draws from ``random`` (seeded), the model's own draws
(botocore's backoff, the login waits) from a separate seeded generator.
"""

from __future__ import annotations

import functools
import heapq
import json
import math
import random
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dbcreds import DbcredsError, DbSecret, SecretProvider, SecretsManagerUnavailable

QUOTA = 10_000
#: The bucket: AWS documents GetSecretValue's quota as one figure, 10,000 requests per second,
#: with no separate burst. Where AWS documents a token bucket (EC2, ECS, RDS API throttling),
#: the bucket's capacity is the burst ("the maximum number of requests in any one second") and
#: its refill rate the sustained rate; one figure for both means a bucket of 10,000 tokens
#: refilled at 10,000/s.
BURST = 10_000
LATENCY = 0.020  # seconds per GetSecretValue answer (success or ThrottlingException)

# botocore's standard retry mode, as dbcreds configures it (src/dbcreds/_aws.py new_client) and
# as botocore/retries/standard.py and quota.py implement it.
MAX_ATTEMPTS = 3
THROTTLING_BASE = 1.0  # ExponentialBackoff: base scale for throttling errors
MAX_BACKOFF = 20.0
RETRY_QUOTA = 500  # RetryQuota.INITIAL_CAPACITY, per client
THROTTLING_RETRY_COST = 5  # RetryQuotaChecker._THROTTLING_RETRY_COST
NO_RETRY_INCREMENT = 1

# the login policy (src/dbcreds/login.py LoginPolicy defaults)
LOGIN_BUDGET = 5.0
LOGIN_BACKOFF = (0.05, 0.5)


class SimClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Suspend(BaseException):
    """Raised by the fetcher to park a container until its API call is over."""


@dataclass(frozen=True)
class Scenario:
    name: str
    jitter: float
    drop_all_at_rotation: bool = False
    ramp: float | None = None  # None: the fleet's default ramp
    burst: int = BURST
    attempts: int = MAX_ATTEMPTS  # botocore's total_max_attempts
    provider: dict[str, Any] = field(default_factory=dict)  # more SecretProvider arguments


def _response(version: str) -> dict[str, Any]:
    doc = {"engine": "postgres", "host": "proxy.example", "port": 5432, "username": "app",
           "password": f"pw-{version}", "dbname": "app"}
    return {"ARN": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:app-AbCdEf",
            "Name": "app", "VersionId": version, "SecretString": json.dumps(doc),
            "VersionStages": ["AWSCURRENT"]}


# what an invocation's generator yields to the simulation
_FETCH = ("fetch", 0.0)


def simulate(
    scenario: Scenario,
    *,
    containers: int = 10_000,
    duration: float = 1500.0,
    ramp: float = 10.0,
    interval: float = 5.0,
    ttl: float = 300.0,
    conn_life: float = 600.0,
    rotate_at: float = 900.0,
    proxy_lag: float = 1.0,
    quota: float = QUOTA,
    latency: float = LATENCY,
    seed: int = 7,
) -> dict[str, Any]:
    random.seed(seed)  # the provider's jitter draws from `random` too: reproducible
    rng = random.Random(seed + 1)  # the model's own draws (botocore's backoff, login waits)
    ramp = scenario.ramp if scenario.ramp is not None else ramp
    burst = float(scenario.burst)
    clock = SimClock()
    seconds = int(duration) + 30
    per_second = [0] * seconds  # GetSecretValue attempts (every one reaches the service)
    throttled = [0] * seconds  # of which answered ThrottlingException
    responses = {"v1": _response("v1"), "v2": _response("v2")}
    drop_at = rotate_at + proxy_lag if scenario.drop_all_at_rotation else math.inf

    # Secrets Manager's bucket
    tokens = burst
    refilled_at = 0.0

    # per container
    prepared: list[Any] = [None] * containers  # the outcome of the call just played
    suspended = [False] * containers
    attempt_no = [0] * containers
    retry_quota = [RETRY_QUOTA] * containers
    last_acquired = [0] * containers
    conn_until = [-1.0] * containers  # no connection yet
    safe_until = [-1.0] * containers  # invocations before this are cache hits
    started = [False] * containers
    failed_first = [False] * containers
    cold_done_at = [math.nan] * containers
    cold_began = [0.0] * containers
    min_life = ttl * (1.0 - scenario.jitter)
    stats = {"refused_logins": 0, "forced_refreshes": 0, "failed_requests": 0,
             "failed_cold_starts": 0, "calls": 0, "exhausted_calls": 0, "invocations": 0,
             "executed_invocations": 0, "login_waits": 0, "retry_quota_refusals": 0}

    def make_fetcher(i: int) -> Callable[[str, str], dict[str, Any]]:
        def fetch(secret_id: str, stage: str) -> dict[str, Any]:
            outcome = prepared[i]
            if outcome is None:
                suspended[i] = True
                raise _Suspend
            prepared[i] = None
            if isinstance(outcome, BaseException):
                safe_until[i] = -1.0  # the provider caches the stale value for a short while
                raise outcome
            safe_until[i] = clock.now + min_life  # the provider caches it now
            return outcome
        return fetch

    def proxy_accepts(secret: DbSecret) -> bool:
        return secret.version_id == ("v2" if clock.now >= rotate_at + proxy_lag else "v1")

    providers = [
        SecretProvider("app", ttl=ttl, jitter=scenario.jitter, fetcher=make_fetcher(i),
                       clock=clock, **scenario.provider)
        for i in range(containers)
    ]

    Step = Generator[tuple[str, float], None, Any]

    def call(i: int, fn: Callable[[], DbSecret]) -> Step:
        while True:
            try:
                return fn()
            except _Suspend:
                yield _FETCH

    def invocation(i: int) -> Step:
        provider = providers[i]
        first = not started[i]
        started[i] = True
        try:
            secret = yield from call(i, provider.get)
        except DbcredsError:
            stats["failed_requests"] += 1
            if first:
                stats["failed_cold_starts"] += 1
                failed_first[i] = True
            return
        if first:
            cold_done_at[i] = clock.now
        if clock.now < conn_until[i]:
            return
        # a new login: the login policy (refresh on refusal, wait while the proxy catches up)
        deadline = clock.now + LOGIN_BUDGET
        delay = LOGIN_BACKOFF[0]
        while not proxy_accepts(secret):
            stats["refused_logins"] += 1
            stats["forced_refreshes"] += 1
            try:
                secret = yield from call(i, functools.partial(provider.refresh, stale=secret))
            except DbcredsError:
                stats["failed_requests"] += 1
                return
            if proxy_accepts(secret):
                break
            stats["refused_logins"] += 1
            if clock.now + delay > deadline:
                stats["failed_requests"] += 1  # the login stays refused
                return
            stats["login_waits"] += 1
            yield ("sleep", delay * (0.5 + rng.random() / 2))
            delay = min(LOGIN_BACKOFF[1], delay * 2)
            try:
                secret = yield from call(i, provider.get)
            except DbcredsError:
                stats["failed_requests"] += 1
                return
        conn_until[i] = clock.now + rng.expovariate(1.0 / conn_life)

    # events: (time, seq, kind, container); kinds below. seq: FIFO among equal times.
    invoke, attempt, resume, drop = 0, 1, 2, 3
    events: list[tuple[float, int, int, int]] = []
    seq = 0

    def push(t: float, kind: int, i: int) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, seq, kind, i))

    for i in range(containers):
        t0 = random.uniform(0, ramp)
        cold_began[i] = t0
        push(t0, invoke, i)
    if drop_at < duration:
        push(drop_at, drop, -1)
    running: list[Step | None] = [None] * containers
    began_at = [0.0] * containers

    def play_attempt(i: int, t: float) -> None:
        """One GetSecretValue attempt of container i's call, at t (events in time order)."""
        nonlocal tokens, refilled_at
        attempt_no[i] += 1
        per_second[int(t)] += 1
        tokens = min(burst, tokens + (t - refilled_at) * quota)
        refilled_at = t
        if tokens >= 1.0:
            tokens -= 1.0
            # the retry quota gets back what the last retry took, or 1 (no retry)
            back = last_acquired[i] or NO_RETRY_INCREMENT
            retry_quota[i] = min(RETRY_QUOTA, retry_quota[i] + back)
            prepared[i] = responses["v2" if t >= rotate_at else "v1"]
            push(t + latency, resume, i)
            return
        throttled[int(t)] += 1
        n = attempt_no[i]
        if n < scenario.attempts:
            if retry_quota[i] >= THROTTLING_RETRY_COST:
                retry_quota[i] -= THROTTLING_RETRY_COST
                last_acquired[i] = THROTTLING_RETRY_COST
                wait = rng.random() * min(THROTTLING_BASE * 2 ** (n - 1), MAX_BACKOFF)
                push(t + latency + wait, attempt, i)
                return
            stats["retry_quota_refusals"] += 1
        stats["exhausted_calls"] += 1
        prepared[i] = SecretsManagerUnavailable("app", "ThrottlingException")
        push(t + latency, resume, i)

    def step(i: int) -> None:
        """Run container i's invocation until it parks (a fetch, a wait) or ends."""
        gen = running[i]
        assert gen is not None
        try:
            what, seconds_ = next(gen)
        except StopIteration:
            running[i] = None
            nxt = max(began_at[i] + interval, clock.now)
            if nxt < duration:
                push(nxt, invoke, i)
            return
        if what == "fetch":
            suspended[i] = False
            stats["calls"] += 1
            attempt_no[i] = 0
            last_acquired[i] = 0
            play_attempt(i, clock.now)
        else:
            push(clock.now + seconds_, resume, i)

    while events:
        t, _, kind, i = heapq.heappop(events)
        if t >= duration:
            break
        clock.now = t
        if kind == invoke:
            target = min(conn_until[i], safe_until[i], drop_at if t < drop_at else math.inf)
            if t < target:  # provably cache hits with an open connection: counted, not run
                k = math.ceil((target - t) / interval)  # t, t + interval, ... before target
                nxt = t + k * interval
                if nxt < duration:
                    stats["invocations"] += k
                    push(nxt, invoke, i)
                else:
                    stats["invocations"] += math.ceil((duration - t) / interval)
                continue
            stats["invocations"] += 1
            stats["executed_invocations"] += 1
            began_at[i] = t
            running[i] = invocation(i)
            step(i)
        elif kind == attempt:
            play_attempt(i, t)
        elif kind == resume:
            step(i)
        else:  # the proxy drops every connection
            conn_until[:] = [-1.0] * containers

    steady = per_second[int(ramp) + 60:int(rotate_at)]
    after = per_second[int(rotate_at):int(rotate_at + ttl)]
    per_second = per_second[:int(duration) + 1]
    throttled = throttled[:int(duration) + 1]
    cold = sorted(d - b for d, b in zip(cold_done_at, cold_began, strict=True) if d == d)
    stale_served = sum(p.get_stats()["stale_served"] for p in providers)
    return {
        "name": scenario.name,
        "jitter": scenario.jitter,
        "ramp": ramp,
        "burst": scenario.burst,
        "attempts": scenario.attempts,
        "provider": scenario.provider,
        "drop_all_at_rotation": scenario.drop_all_at_rotation,
        "per_second": per_second,
        "throttled_per_second": throttled,
        "total": sum(per_second),
        "throttled": sum(throttled),
        "ramp_peak": max(per_second[:int(ramp) + 60]),
        "steady_peak": max(steady),
        "steady_mean": sum(steady) / len(steady),
        "rotation_peak": max(after),
        "peak": max(per_second),
        "stale_served": stale_served,
        "cold_start_p50": cold[len(cold) // 2] if cold else None,
        "cold_start_p99": cold[int(len(cold) * 0.99)] if cold else None,
        "cold_start_max": cold[-1] if cold else None,
        "containers_failed_first": sum(failed_first),
        **stats,
    }


#: The fleet table (the default ramp; figures comparable with earlier runs).
SCENARIOS = [
    Scenario("no jitter", 0.0),
    Scenario("jitter 10% (default)", 0.1),
    Scenario("jitter 10%, proxy drops every connection at the rotation", 0.1, True),
]
#: The throttled table: these, and the rows below.
BURST_SCENARIOS = [
    Scenario("burst: 10,000 containers within 1 s, no jitter", 0.0, ramp=1.0),
    Scenario("burst within 1 s, jitter 5%", 0.05, ramp=1.0),
    Scenario("burst within 1 s, jitter 10% (default)", 0.1, ramp=1.0),
    Scenario("burst within 1 s, jitter 20%", 0.2, ramp=1.0),
    Scenario("burst within 1 s, jitter 30%", 0.3, ramp=1.0),
    Scenario("burst within 1 s, jitter 10%, proxy drops every connection at the rotation",
             0.1, True, ramp=1.0),
    # Beyond the goals: a burst 10x the quota's rate into a bucket a tenth as deep.
    Scenario("stress: within 0.1 s, bucket of 1,000 tokens, jitter 10%", 0.1, ramp=0.1,
             burst=1000),
    Scenario("stress, with botocore total_max_attempts=4 (client setting)", 0.1, ramp=0.1,
             burst=1000, attempts=4),
]


def fleet(out_dir: Path, *, containers: int = 10_000, duration: float = 1500.0,
          interval: float = 5.0) -> dict[str, Any]:
    import time

    params: dict[str, Any] = {"containers": containers, "duration": duration, "ramp": 10.0,
              "interval": interval, "ttl": 300.0, "conn_life": 600.0,
              # not a multiple of the TTL: the no-jitter refresh waves would hide the rotation
              "rotate_at": 1000.0 if duration >= 1500 else round(duration * 0.63),
              "proxy_lag": 1.0}
    t0 = time.monotonic()
    results = [simulate(s, **params) for s in SCENARIOS + BURST_SCENARIOS]
    elapsed = time.monotonic() - t0
    png = out_dir / "fleet.png"
    _plot([results[i] for i in (1, 2, 3, 5, 8, 9, 10)], params, png)
    no_cache = containers / interval
    model = {"quota_per_second": QUOTA, "latency_s": LATENCY, "max_attempts": MAX_ATTEMPTS,
             "throttling_backoff_base_s": THROTTLING_BASE, "max_backoff_s": MAX_BACKOFF,
             "retry_quota": RETRY_QUOTA, "throttling_retry_cost": THROTTLING_RETRY_COST,
             "login_budget_s": LOGIN_BUDGET, "login_backoff_s": list(LOGIN_BACKOFF)}
    rows = [{k: v for k, v in r.items() if "per_second" not in k} for r in results]
    return {"params": params, "no_cache_per_second": no_cache, "quota": QUOTA, "burst": BURST,
            "model": model, "scenarios": rows[:len(SCENARIOS)], "throttled": rows,
            "elapsed_s": round(elapsed), "png": png.name}


def _plot(results: list[dict[str, Any]], params: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(12, 2.6 * len(results) + 0.6), dpi=110,
                             sharex=True, sharey=True)
    no_cache = params["containers"] / params["interval"]
    for ax, r in zip(axes, results, strict=True):
        ys = [max(v, 0.8) for v in r["per_second"]]
        ax.plot(range(len(ys)), ys, color="#3182bd", linewidth=0.8,
                label="GetSecretValue calls per second (every attempt)")
        if r["throttled"]:
            th = [max(v, 0.8) for v in r["throttled_per_second"]]
            ax.plot(range(len(th)), th, color="#de2d26", linewidth=0.8,
                    label="of which ThrottlingException")
        ax.axhline(QUOTA, color="black", linestyle="--", linewidth=1,
                   label="account quota (10,000/s)")
        ax.axhline(no_cache, color="#777777", linestyle=":", linewidth=1,
                   label=f"no cache: one call per invocation ({no_cache:,.0f}/s)")
        ax.axvline(params["rotate_at"], color="#54278f", linestyle="-.", linewidth=1,
                   label="rotation (finishSecret)")
        ax.set_yscale("log")
        ax.set_ylim(0.8, QUOTA * 3)
        ax.set_title(f"{r['name']}: peak {r['peak']:,}/s, steady-state peak "
                     f"{r['steady_peak']:,}/s, throttled {r['throttled']:,}, failed cold starts "
                     f"{r['failed_cold_starts']:,}, failed requests {r['failed_requests']:,}",
                     fontsize=8, loc="left")
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].legend(loc="upper right", fontsize=7, ncol=2)
    axes[-1].set_xlim(0, params["duration"])
    axes[-1].set_xlabel("simulated seconds")
    fig.supylabel("GetSecretValue / s (log)", fontsize=9)
    fig.suptitle(f"{params['containers']:,} containers running the real SecretProvider (TTL "
                 f"{params['ttl']:.0f} s), one invocation per {params['interval']:.0f} s each; "
                 f"GetSecretValue quota {QUOTA:,}/s (token bucket, {BURST:,} tokens unless "
                 "stated), botocore standard retries", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    import time

    t = time.perf_counter()
    out = fleet(Path("."), containers=2000, duration=900)
    print(json.dumps(out["throttled"], indent=1), time.perf_counter() - t)
