"""Fleet simulation: 10,000 Lambda containers on a simulated clock, GetSecretValue per second.

Every container runs the REAL `dbcreds.SecretProvider` (its TTL cache, jitter, single flight,
forced refresh on a refused login), with an injected clock (the simulation's) and an injected
fetcher (which counts the call in the current second and answers with the secret's current
version). Only the world around it is modelled:

* containers cold-start uniformly over the first ``ramp`` seconds (a deployment or a scale-out)
  and then each handle one invocation every ``interval`` seconds (random phase); every
  invocation calls ``provider.get()``;
* each container keeps one database connection through the proxy; it logs in again when the
  connection is closed (exponential lifetime, mean ``conn_life`` s: idle timeouts, churn);
* at ``rotate_at`` finishSecret moves AWSCURRENT to a new version; the proxy (RDS Proxy) starts
  refusing the old password ``proxy_lag`` s later. A login refused with the cached password
  calls ``provider.refresh(stale=...)`` (what dbcreds' login policy does first) and logs in
  again; a container still refused retries at its next invocation;
* optionally every connection is dropped at the rotation (the worst case: every container
  logs in again within one invocation interval).

The 10,000 TPS GetSecretValue quota is per account and region: the plot shows it.
"""

from __future__ import annotations

import heapq
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dbcreds import SecretProvider

QUOTA = 10_000


class SimClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class Scenario:
    name: str
    jitter: float
    drop_all_at_rotation: bool = False


def _response(version: str) -> dict[str, Any]:
    doc = {"engine": "postgres", "host": "proxy.example", "port": 5432, "username": "app",
           "password": f"pw-{version}", "dbname": "app"}
    return {"ARN": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:app-AbCdEf",
            "Name": "app", "VersionId": version, "SecretString": json.dumps(doc),
            "VersionStages": ["AWSCURRENT"]}


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
    seed: int = 7,
) -> dict[str, Any]:
    random.seed(seed)  # the provider's jitter draws from `random` too: reproducible
    clock = SimClock()
    per_second = [0] * (int(duration) + 1)
    responses = {"v1": _response("v1"), "v2": _response("v2")}

    def current_version() -> str:
        return "v2" if clock.now >= rotate_at else "v1"

    def fetch(secret_id: str, stage: str) -> dict[str, Any]:
        per_second[int(clock.now)] += 1
        return responses[current_version()]

    def proxy_accepts(version: str | None) -> bool:
        return version == ("v2" if clock.now >= rotate_at + proxy_lag else "v1")

    providers = [SecretProvider("app", ttl=ttl, jitter=scenario.jitter, fetcher=fetch,
                                clock=clock) for _ in range(containers)]
    conn_until = [-1.0] * containers  # no connection yet
    events = [(random.uniform(0, ramp), i) for i in range(containers)]
    heapq.heapify(events)
    dropped = False
    refused = forced = 0
    while events:
        t, i = heapq.heappop(events)
        if t >= duration:
            break
        clock.now = t
        if scenario.drop_all_at_rotation and not dropped and t >= rotate_at + proxy_lag:
            dropped = True
            conn_until = [-1.0] * containers
        provider = providers[i]
        secret = provider.get()
        if t >= conn_until[i]:  # a new login
            if not proxy_accepts(secret.version_id):
                refused += 1
                secret = provider.refresh(stale=secret)
                forced += 1
            if proxy_accepts(secret.version_id):
                conn_until[i] = t + random.expovariate(1.0 / conn_life)
        heapq.heappush(events, (t + interval, i))

    steady = per_second[int(ramp) + 60:int(rotate_at)]
    after = per_second[int(rotate_at):int(rotate_at + ttl)]
    return {
        "name": scenario.name,
        "jitter": scenario.jitter,
        "drop_all_at_rotation": scenario.drop_all_at_rotation,
        "per_second": per_second,
        "total": sum(per_second),
        "ramp_peak": max(per_second[:int(ramp) + 60]),
        "steady_peak": max(steady),
        "steady_mean": sum(steady) / len(steady),
        "rotation_peak": max(after),
        "refused_logins": refused,
        "forced_refreshes": forced,
    }


SCENARIOS = [
    Scenario("no jitter", 0.0),
    Scenario("jitter 10% (default)", 0.1),
    Scenario("jitter 10%, proxy drops every connection at the rotation", 0.1, True),
]


def fleet(out_dir: Path, *, containers: int = 10_000, duration: float = 1500.0,
          interval: float = 5.0) -> dict[str, Any]:
    params: dict[str, Any] = {"containers": containers, "duration": duration, "ramp": 10.0,
              "interval": interval, "ttl": 300.0, "conn_life": 600.0,
              # not a multiple of the TTL: the no-jitter refresh waves would hide the rotation
              "rotate_at": 1000.0 if duration >= 1500 else round(duration * 0.63),
              "proxy_lag": 1.0}
    results = [simulate(s, **params) for s in SCENARIOS]
    png = out_dir / "fleet.png"
    _plot(results, params, png)
    no_cache = containers / interval
    return {"params": params, "no_cache_per_second": no_cache, "quota": QUOTA,
            "scenarios": [{k: v for k, v in r.items() if k != "per_second"} for r in results],
            "png": png.name}


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
                label="GetSecretValue calls per second")
        ax.axhline(QUOTA, color="black", linestyle="--", linewidth=1,
                   label="account quota (10,000/s)")
        ax.axhline(no_cache, color="#777777", linestyle=":", linewidth=1,
                   label=f"no cache: one call per invocation ({no_cache:,.0f}/s)")
        ax.axvline(params["rotate_at"], color="#54278f", linestyle="-.", linewidth=1,
                   label="rotation (finishSecret)")
        ax.set_yscale("log")
        ax.set_ylim(0.8, QUOTA * 3)
        ax.set_title(f"{r['name']}: steady-state peak {r['steady_peak']:,}/s, after the "
                     f"rotation {r['rotation_peak']:,}/s", fontsize=9, loc="left")
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].legend(loc="upper right", fontsize=7, ncol=2)
    axes[-1].set_xlim(0, params["duration"])
    axes[-1].set_xlabel("simulated seconds")
    fig.supylabel("GetSecretValue / s (log)", fontsize=9)
    fig.suptitle(f"{params['containers']:,} containers running the real SecretProvider (TTL "
                 f"{params['ttl']:.0f} s): cold start over {params['ramp']:.0f} s, one "
                 f"invocation per {params['interval']:.0f} s each", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    import time

    t = time.perf_counter()
    out = fleet(Path("."), containers=2000, duration=900)
    print(json.dumps(out["scenarios"], indent=1), time.perf_counter() - t)
