"""Run every benchmark on one local stack and write benchmarks/README.md (and results.json).

    make bench                       # = .venv/bin/python benchmarks/run.py
    python benchmarks/run.py --quick # fewer runs, a smaller fleet (a smoke test of the harness)
    python benchmarks/run.py --only cold,warm,integrations,concurrent,rotation,fleet

A run with --only keeps the other sections of the last results.json, each with its date.

Never prints a password.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import HERE, compile_bytecode, machine, tls_env

ALL = ("cold", "warm", "integrations", "concurrent", "rotation", "fleet")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs (harness smoke test)")
    parser.add_argument("--only", default=",".join(ALL), help="comma-separated subset")
    parser.add_argument("--runs", type=int, default=None, help="cold-start runs per variant")
    parser.add_argument("--output", type=Path, default=HERE, help="where README.md goes")
    opts = parser.parse_args(argv)
    only = [x.strip() for x in opts.only.split(",") if x.strip()]
    unknown = set(only) - set(ALL)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)  # the peers' failing logins

    from cold_start import cold_start, concurrent_cold_start
    from dbcreds_testing import LocalStack
    from fleet import fleet
    from rotation_load import rotation_under_load
    from warm_path import warm_path

    compile_bytecode()
    results: dict[str, Any] = {"machine": machine(), "quick": opts.quick,
                               "command": "make bench" + (" BENCH_ARGS=" + " ".join(argv or [])
                                                          if argv else "")}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dbcreds-bench-") as tmp, LocalStack() as stack:
        # This process's own clients (warm path, rotation under load): the stack only.
        for name in [n for n in os.environ if n.startswith(("AWS_", "DBCREDS_"))]:
            del os.environ[name]
        os.environ.update(stack.env())
        os.environ.update(tls_env(stack))  # verify-full with the stack's CA, for every contender
        os.environ["AWS_CONFIG_FILE"] = os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
        if "cold" in only:
            runs = opts.runs or (3 if opts.quick else 30)
            step("cold start", runs)
            results["cold"] = cold_start(stack, Path(tmp), runs=runs,
                                         warmup=1 if opts.quick else 2)
        if "warm" in only:
            step("warm path")
            results["warm"] = warm_path(stack, blocks=4 if opts.quick else 20)
        if "integrations" in only:
            from integrations import integrations

            step("warm path of each integration")
            results["integrations"] = integrations(stack, blocks=2 if opts.quick else 10)
        if "concurrent" in only:
            step("concurrent cold start")
            results["concurrent"] = concurrent_cold_start(stack, runs=1 if opts.quick else 3)
        if "rotation" in only:
            step("rotation under load")
            results["rotation"] = rotation_under_load(stack, rotations=1 if opts.quick else 2)
    if "fleet" in only:
        step("fleet simulation")
        results["fleet"] = fleet(opts.output, containers=1000 if opts.quick else 10_000,
                                 duration=900 if opts.quick else 1500)
    results["elapsed_s"] = round(time.monotonic() - started)
    stamp = {"date": results["machine"]["date"], "command": results["command"]}
    for name in ALL:
        if name in results:
            results[name]["measured"] = stamp
    previous = opts.output / "results.json"
    if set(only) != set(ALL) and previous.exists():
        # A partial run (--only) keeps the sections it did not run, each with its own date.
        kept = json.loads(previous.read_text())
        for name in ALL:
            if name not in results and name in kept:
                kept[name].setdefault("measured", {"date": kept["machine"]["date"],
                                                   "command": kept["command"]})
                results[name] = kept[name]
    opts.output.mkdir(parents=True, exist_ok=True)
    (opts.output / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (opts.output / "README.md").write_text(render(results))
    print(f"wrote {opts.output / 'README.md'} in {results['elapsed_s']} s", flush=True)
    return 0


def step(name: str, runs: int | None = None) -> None:
    extra = f" ({runs} runs per variant)" if runs else ""
    print(f"[{time.strftime('%H:%M:%S')}] {name}{extra} ...", flush=True)


# -- README ------------------------------------------------------------------------------------

def render(r: dict[str, Any]) -> str:
    m = r["machine"]
    out = [
        "# Benchmarks",
        "",
        f"Produced by `{r['command']}` (`benchmarks/run.py`) on {m['date']}"
        + (" — **quick mode: smoke-test figures, not results**" if r["quick"] else "") + ".",
        "",
        f"* machine: {m['nproc']} CPUs ({m['cpu']}), {m['platform']}, load average at the "
        f"end {m['load']}",
        f"* Python {m['python']}; {m['versions']}; {m['pgbouncer']}",
        "* stack: `dbcreds_testing.LocalStack` on 127.0.0.1 — PostgreSQL 15 (scram-sha-256), "
        "PgBouncer twice (auth_query: checks the live database; auth_file: the RDS Proxy "
        "stand-in that serves the AWSCURRENT password, re-read about every second), "
        "Secrets Manager = moto's server over HTTP, counting requests per operation and secret. "
        "Every server serves TLS from the stack's own CA and every contender verifies it "
        "(verify-full: dbcreds through DBCREDS_SSLROOTCERT, the others through libpq's "
        "PGSSLMODE/PGSSLROOTCERT), so all pay the same handshakes.",
        "* The machine is shared (other test suites may run beside the benchmark): medians of "
        "interleaved runs, minima alongside where noise matters.",
        "",
    ]
    sections = {
        "cold": cold_section, "warm": warm_section, "integrations": integrations_section,
        "concurrent": concurrent_section, "rotation": rotation_section, "fleet": fleet_section,
    }
    for name, section in sections.items():
        if name in r:
            lines = section(r[name])
            measured = r[name].get("measured")
            if measured is not None:  # each section says when and how it was measured
                lines[1:1] = ["", f"*Measured {measured['date']} by `{measured['command']}`.*"]
            out += lines
    out += [f"The last run (`{r['command']}`) took {r['elapsed_s']} s. "
            "Raw figures: `results.json`.", ""]
    return "\n".join(out)


def _ms(x: float) -> str:
    return f"{x:,.1f}"


SEED = "seed (boto3 + psycopg.connect)"
FLOOR = "floor (psycopg.connect, password known)"
VARIANT_TEXT = {
    SEED: "the seed story's application code: `boto3.client('secretsmanager')`, "
          "`get_secret_value`, `json.loads`, `psycopg.connect`",
    "dbcreds (boto3)": "the README's Lambda example with its documented prefetch: "
                       "`import dbcreds; dbcreds.prefetch()`, then `dbcreds.get_connection()` "
                       "(Secrets Manager through boto3)",
    "dbcreds (boto3, no prefetch)": "the same without `dbcreds.prefetch()`: "
                                    "`import dbcreds; dbcreds.get_connection()`",
    "dbcreds (extension, cold cache)": "the README example with `prefetch()`, secrets through "
                                       "the extension (`benchmarks/extension_stub.py`, a separate "
                                       "process), its cache emptied before the run: its first "
                                       "answer calls Secrets Manager (through the same latency "
                                       "relay under the model)",
    "dbcreds (extension, warm cache)": "the same, the secret already in the extension's cache",
    "aws-secretsmanager-caching + psycopg": "`SecretCache(...).get_secret_string`, then "
                                            "`psycopg.connect`",
    "Powertools get_secret + psycopg": "`parameters.get_secret(..., transform='json')`, then "
                                       "`psycopg.connect`",
    FLOOR: "`psycopg.connect` with the password given (no secret fetched at all)",
}


def _verdict(value: float, target: float) -> str:
    return "**met**" if value <= target else "**missed**"


def _cold_table(v: dict[str, Any]) -> list[str]:
    lines = [
        "| variant | init median (ms) | init min (ms) | process median (ms) | process CPU (ms) "
        "| peak RSS (MB) | init vs seed | init vs floor | AWS SDK imported |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: |",
    ]
    for name, row in v.items():
        lines.append(
            f"| {name} | {_ms(row['init_ms'])} | {_ms(min(row['init_ms_all']))} | "
            f"{_ms(row['process_ms'])} | {_ms(row['cpu_ms'])} | {row['rss_mb']:.1f} | "
            f"{row['vs_seed']:.2f}x | {row['vs_floor']:.2f}x | "
            f"{'yes' if row['sdk_imported'] else 'no'} |")
    return lines


def cold_section(c: dict[str, Any]) -> list[str]:
    if "loopback" not in c:  # results.json from before the latency model
        c = {**c, "loopback": {"variants": c["variants"]}}
    loop = c["loopback"]["variants"]
    lat = c.get("latency", {}).get("variants")
    model = c.get("latency", {}).get("model_ms", {})
    cal = c.get("calibration", {})
    lines = [
        "## 1. Cold start",
        "",
        "A fresh `python -c` process takes `t0` on its first line, imports what it needs, gets "
        "the credentials its way, connects through the RDS Proxy stand-in and runs `SELECT 1`. "
        "**init** = `t0` to the row (the Lambda init + first query); **process** = the whole "
        "process as timed by the parent (interpreter start to exit, `os._exit` right after the "
        "row); **process CPU** = the child's user + system CPU time (much less sensitive than "
        "wall time to whatever else runs on the machine). Peak RSS = the child's `VmHWM`. "
        f"{c['runs']} runs per variant after {c['warmup']} discarded warm-up round(s), variants "
        "interleaved in a shuffled order each round; bytecode compiled beforehand for every "
        "package (as in a deployed Lambda package). *AWS SDK imported* = botocore in "
        "`sys.modules` at the end. The same variants run twice, each run interleaved on its "
        "own: **on loopback** (a Secrets Manager call costs about a millisecond, a login a few) "
        "and **under the latency model** (below). The variants:",
        "",
    ]
    lines += [f"* **{name}**: {text}." for name, text in VARIANT_TEXT.items() if name in loop]
    lines += [
        "",
        "### 1a. On loopback",
        "",
        *_cold_table(loop),
        "",
    ]
    if lat is not None:
        lines += [
            "### 1b. Under the latency model",
            "",
            "`dbcreds_testing.latency`: TCP relays (threads, `time.sleep` to each chunk's "
            "deadline) in front of the stack's Secrets Manager endpoint and its RDS Proxy "
            "stand-in; the bytes pass untouched (TLS to the proxy stays end to end, "
            "verify-full). Per new connection to Secrets Manager "
            f"**{model.get('secrets_connect', 0):g} ms** (DNS + TCP + the TLS handshake's round "
            "trips: the endpoint is HTTPS on AWS, HTTP here), per request "
            f"**{model.get('secrets_request', 0):g} ms** (round trip + the service's time); per "
            f"new TCP connection to the proxy **{model.get('proxy_connect', 0):g} ms**, per round "
            f"trip **{model.get('proxy_rtt', 0):g} ms** (half each way; a login through the "
            "proxy is about 6 round trips: SSLRequest, TLS 1.3, startup, SCRAM, then the "
            "query). Where the defaults come from:",
            "",
            "* DNS 7.3 ms and TCP 0.7 ms for a Lambda function's first request to a regional AWS "
            "endpoint (measured in Lambda by an AWS solutions architect: "
            "https://shinyaz.com/en/til/2026/03/31/aws-sdk-rust-lazy-tls-connection and "
            "https://shinyaz.com/en/blog/2026/03/31/lambda-rust-tls-latency-breakdown); the TLS "
            "handshake there took 745 ms at 128 MB, almost all of it CPU (crypto on a fraction "
            "of a vCPU), which is client CPU work, not a network wait, so the model keeps only "
            "its round trips (~1-2 ms). Hence 10 ms per new connection. The same post's first "
            "invocation after warming the connection, 21 ms for a whole request, bounds the "
            "15 ms per request (round trip + service time, KMS decryption included). Anecdotes "
            "of a first GetSecretValue of up to a second in Lambda "
            "(https://www.garudax.id/pulse/"
            "aws-lambda-functions-secrets-manager-performance-nalin-jayasuriya) "
            "are far above this model: it is deliberately conservative.",
            "* Round trips inside a region: 0.25 ms (best pair) to 3.4 ms (worst pair) between "
            "availability zones, best of 50 pings "
            "(https://xkyle.com/Measuring-AWS-Region-and-AZ-Latency); same-region cross-AZ RTT "
            "about 0.3-1.5 ms (https://duckkit.dev/glossary/cross-az-latency); 0.5 vs 1.5 ms "
            "quoted by FlashGrid's measurements "
            "(https://www.flashgrid.io/news/latencies-between-aws-availability-zones-"
            "what-are-they-and-how-to-minimize-them/). "
            "Hence 1 ms per round trip to RDS Proxy (an AZ of its own or not) and 2 ms for a "
            "new TCP connection (its handshake plus the proxy's accept).",
            "",
        ]
        if cal:
            lines += [
                "What the relays actually add on this machine (a child process, medians of "
                f"{cal['n']} each, fresh connections): a boto3 GetSecretValue "
                f"{cal['loopback']['sm_ms']:.1f} ms on loopback vs {cal['latency']['sm_ms']:.1f} "
                f"ms through the relay; a psycopg login through the proxy "
                f"{cal['loopback']['login_ms']:.1f} vs {cal['latency']['login_ms']:.1f} ms; "
                f"`SELECT 1` {cal['loopback']['query_ms']:.2f} vs "
                f"{cal['latency']['query_ms']:.2f} ms.",
                "",
            ]
        lines += [*_cold_table(lat), ""]
    what_if = c.get("what_if")
    if what_if is not None:
        wm = what_if["model_ms"]
        wv = what_if["variants"]
        lines += [
            "### 1c. What if the first GetSecretValue were slower",
            "",
            "Not a published figure: the same run with a first GetSecretValue of "
            f"{wm['secrets_connect'] + wm['secrets_request']:g} ms "
            f"({wm['secrets_connect']:g} ms per new connection + {wm['secrets_request']:g} ms "
            "per request; a NAT gateway, a KMS key's first decryption, ...), the proxy as "
            "above; the seed, dbcreds with and without prefetch and the floor, interleaved.",
            "",
            *_cold_table(wv),
            "",
            f"dbcreds with boto3 vs the seed's code: **{wv['dbcreds (boto3)']['vs_seed']:.3f}x** "
            f"with prefetch, {wv['dbcreds (boto3, no prefetch)']['vs_seed']:.3f}x without: "
            "prefetch hides the fetch's wait up to the CPU work that follows it (here psycopg's "
            "and psycopg_pool's imports).",
            "",
        ]
    boto = loop["dbcreds (boto3)"]
    lines += ["Goals (init medians, each against its own interleaved run, sections 1a and 1b):",
              ""]
    if lat is not None:
        lb = lat["dbcreds (boto3)"]
        lines.append(
            f"* dbcreds with boto3 vs the seed's code under the latency model: "
            f"**{lb['vs_seed']:.3f}x** (goal <= 0.90x: {_verdict(lb['vs_seed'], 0.90)}); "
            f"{lb['init_ms']:.0f} ms vs {lat[SEED]['init_ms']:.0f} ms; without prefetch "
            f"{lat['dbcreds (boto3, no prefetch)']['vs_seed']:.3f}x.")
        gain = lat["dbcreds (boto3, no prefetch)"]["init_ms"] - lb["init_ms"]
        lines.append(
            f"  What `prefetch()` saved under the model: {gain:.0f} ms of init (median without "
            "it minus median with it), against the fetch's added wait of "
            + (f"{cal['latency']['sm_ms'] - cal['loopback']['sm_ms']:.0f} ms (calibration "
               "above)" if cal else "the model's connect + request")
            + f"; process CPU {lb['cpu_ms'] / lat[SEED]['cpu_ms']:.2f}x the seed's (CPU time "
            "is what no overlap can save).")
    lines.append(
        f"* dbcreds with boto3 vs the seed's code on loopback: **{boto['vs_seed']:.3f}x** "
        f"(goal <= 1.00x: {_verdict(boto['vs_seed'], 1.00)}); {boto['init_ms']:.0f} ms vs "
        f"{loop[SEED]['init_ms']:.0f} ms; without prefetch "
        f"{loop['dbcreds (boto3, no prefetch)']['vs_seed']:.3f}x; process CPU "
        f"{boto['cpu_ms'] / loop[SEED]['cpu_ms']:.2f}x the seed's.")
    for label, v in (("on loopback", loop), ("under the latency model", lat)):
        if v is None:
            continue
        warm = v["dbcreds (extension, warm cache)"]["vs_floor"]
        cold = v["dbcreds (extension, cold cache)"]["vs_floor"]
        lines.append(
            f"* the extension transport vs the floor {label}: **{warm:.3f}x** with its cache "
            f"warm, **{cold:.3f}x** cold (goal <= 1.10x: {_verdict(warm, 1.10)} warm, "
            f"{_verdict(cold, 1.10)} cold); floor {v[FLOOR]['init_ms']:.0f} ms.")
    if c.get("load"):
        lines += ["", f"Load average (1, 5, 15 min) at the start of the cold-start runs "
                  f"{c['load']['start']}, at the end {c['load']['end']} (2 CPUs, shared with "
                  "other engineers' work): interleaving keeps the ratios comparable, not the "
                  "absolute times."]
    lines += [
        "",
        "How dbcreds overlaps its waits: `dbcreds.prefetch()` makes the boto3 client in the "
        "caller's thread (botocore's import and client creation are CPU work that the request "
        "needs first), then a daemon thread sends GetSecretValue and builds the default pool, "
        "whose worker opens the first connection with the usual login policy, while the "
        "caller's thread goes on importing (psycopg, psycopg_pool, the application's own "
        "modules). The first `get_connection()` joins that thread. Only waits overlap: the "
        "imports and the client creation are CPU-bound Python under one GIL, so the gain is "
        "bounded by the network waits of the fetch (the login through the proxy, which needs "
        "psycopg imported and the secret in hand, overlaps only with what the application "
        "still imports after `prefetch()`; in this benchmark nothing). The seed's code pays "
        "every wait in sequence. What sits between dbcreds and the seed's code on loopback "
        "(the same botocore work, plus psycopg_pool, dbcreds' own modules and the pool's "
        "threads: a few percent of CPU) is unchanged, and is why the 0.90x goal needs waits "
        "that are at least ~10 % of the seed's cold start plus that overhead: under this "
        "conservative model the seed's waits are about "
        f"{_wait_share(c):.0f} ms of its init"
        + (f" ({_wait_share(c) / lat[SEED]['init_ms']:.1%}), so even hiding every one of them "
           "(the login's too) would leave dbcreds with boto3 at about "
           f"{_best_case(c):.2f}x the seed's init (its other work times its CPU ratio)"
           if lat is not None else "")
        + ". The model's waits are an order of magnitude below the first-call latencies some "
        "Lambda users report (up to a second): the larger the real waits, the more prefetch "
        "hides, up to all of the fetch's.",
        "",
        "Per-run init times (ms):",
        "",
    ]
    runs_by_label = (("loopback", loop), ("latency", lat),
                     ("what-if", (what_if or {}).get("variants")))
    for label, v in runs_by_label:
        if v is None:
            continue
        for name, row in v.items():
            lines.append(f"* {label}, {name}: {', '.join(str(x) for x in row['init_ms_all'])}")
    lines.append("")
    return lines


def _best_case(c: dict[str, Any]) -> float:
    """dbcreds (boto3) / seed if every added wait were hidden: the seed's init without its
    waits, times dbcreds' CPU ratio, over the seed's init (under the model)."""
    lat = c["latency"]["variants"]
    seed = lat[SEED]
    cpu_ratio = lat["dbcreds (boto3)"]["cpu_ms"] / seed["cpu_ms"]
    return float((seed["init_ms"] - _wait_share(c)) * cpu_ratio / seed["init_ms"])


def _wait_share(c: dict[str, Any]) -> float:
    """What the model adds to the seed's sequence (fetch, login, query), from the relays'
    calibration, in ms."""
    cal = c.get("calibration")
    if not cal:
        return float("nan")
    return float(sum(cal["latency"][k] - cal["loopback"][k]
                     for k in ("sm_ms", "login_ms", "query_ms")))


def warm_section(w: dict[str, Any]) -> list[str]:
    lines = [
        "## 2. Warm path",
        "",
        "One request = a connection from a warm pool (one connection, through the RDS Proxy "
        "stand-in) + `SELECT 1` + giving it back, timed one by one in this process; "
        f"{w['blocks']} interleaved blocks of {w['per_block']} requests per variant.",
        "",
        "| variant | median (µs) | p99 (µs) | vs raw psycopg_pool | vs raw + same check |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, row in w["variants"].items():
        lines.append(f"| {name} | {row['median_us']:,.0f} | {row['p99_us']:,.0f} | "
                     f"{row['vs_raw']:.2f}x | {row['vs_raw_check']:.2f}x |")
    lines += ["", "`DBCREDS_POOL_CHECK=1` (the default) costs one extra round trip per request "
              "(psycopg_pool's `check_connection`): worth it in Lambda, where a frozen "
              "container's connection may have been closed by the proxy.", ""]
    return lines


def integrations_section(g: dict[str, Any]) -> list[str]:
    lines = [
        "## 2b. Warm path of each integration",
        "",
        "One request through the library's own API (a SQLAlchemy `Session`/`AsyncSession` "
        "query, a Django cursor on a persistent connection, an asyncpg pool's `fetchval`, a "
        "psycopg2 pool's getconn/cursor/putconn) with one warm connection through the RDS Proxy "
        "stand-in: dbcreds' integration vs the same library with static credentials (the "
        "password read once at start), both verify-full. Timed one by one in this process, "
        f"{g['blocks']} interleaved blocks of {g['per_block']} requests per variant "
        "(`benchmarks/integrations.py`).",
        "",
        "| integration | dbcreds median (µs) | static median (µs) | dbcreds / static |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, row in g["integrations"].items():
        lines.append(f"| {name} | {row['dbcreds_median_us']:,.0f} | "
                     f"{row['static_median_us']:,.0f} | {row['ratio']:.2f}x |")
    lines += ["", "The warm path never logs in: what a ratio above 1.00x shows is what the "
              "integration adds to a request that does not need a new connection.", ""]
    return lines


def concurrent_section(c: dict[str, Any]) -> list[str]:
    lines = [
        "## 3. Concurrent cold start",
        "",
        f"{c['threads']} threads of one fresh process, released together by a barrier, each "
        "getting the credentials and running its first query (through PgBouncer); the "
        f"endpoint counts the calls. Median of {c['runs']} run(s).",
        "",
        "| library | GetSecretValue | DescribeSecret | failed | wall (ms) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, row in c["variants"].items():
        lines.append(f"| {name} | {row['GetSecretValue']:.0f} | {row['DescribeSecret']:.0f} | "
                     f"{row['failed']} | {row['wall_ms']:,.0f} |")
    lines += [
        "",
        "dbcreds: one fetch for all (single flight), one pool. aws-secretsmanager-caching: one "
        "DescribeSecret + one GetSecretValue (its refresh is locked). Powertools' `get_secret` "
        "creates its default provider with a check-then-set and no lock, so threads arriving "
        "together each build a boto3 session and client (the long wall time) and each miss "
        "the cache. The seed's code has no cache at all.",
        "",
    ]
    return lines


def rotation_section(rot: dict[str, Any]) -> list[str]:
    pool = rot["pool"]
    lines = [
        "## 4. Rotation under load",
        "",
        f"{rot['threads']} threads loop `SELECT 1` through a psycopg_pool pool (min "
        f"{pool['min_size']}, max {pool['max_size']}, connections recycled every "
        f"{pool['max_lifetime']:g} s, a request waits {pool['timeout']:g} s at most for a "
        f"connection) while the real rotation handler rotates the password {rot['rotations']} "
        f"times (local driver, {rot['pause']} s between steps), then {rot['tail']:g} s more. "
        "Each library is used the way its users typically do: dbcreds' `CredentialPool`; the "
        "seed's code fetches the secret once at start; aws-secretsmanager-caching and "
        "Powertools are read by the pool's `kwargs` callable at every new connection "
        "(Powertools with `VersionStage=AWSCURRENT`: moto 5.2 keeps serving the old version "
        "without it; AWS does not).",
        "",
        "| proxy | library | requests | failed | worst request (ms) | served in the last 2 s | "
        "GetSecretValue | first error |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in rot["cases"].values():
        error = (row["errors"][0][:90] if row["errors"] else "").replace("|", "/")
        lines.append(f"| {row['proxy']} | {row['library']} | {row['requests']:,} | "
                     f"{row['failed']:,} | {row['max_ms']:,.0f} | {row['served_last_2s']:,} | "
                     f"{row['GetSecretValue']} | "
                     f"{error} |")
    stuck = sorted({row["library"] for row in rot["cases"].values()
                    if row["library"] != "dbcreds" and row["served_last_2s"] == 0})
    serving = sorted({row["library"] for row in rot["cases"].values()
                      if row["library"] != "dbcreds" and row["served_last_2s"] > 0})
    lines += [
        "",
        "A failed request is one that raised (here: psycopg_pool's `PoolTimeout` after 5 s, "
        "its pool unable to make a new connection with the credentials it has). Once its "
        "connections are recycled after the rotation, a peer's pool stops serving: each "
        "thread waits 5 s, fails, and waits again, which is also why the peers serve far "
        "fewer requests. *Served in the last 2 s* tells whether a pool was serving again at "
        "the end of the run: "
        + (f"not so for {', '.join(stuck)} (with at least one proxy). " if stuck else "")
        + (f"{', '.join(serving)} had recovered with at least one proxy. " if serving else "")
        + "A peer's credentials are only as fresh as its cache (the seed's never change, "
        "aws-secretsmanager-caching refreshes after an hour, Powertools after 5 s), and "
        "psycopg_pool retries failed logins with an exponential backoff, so a pool can stay "
        "down well after its cache caught up. dbcreds' connect path refreshes the secret on "
        "the refusal itself, tries AWSPENDING during the rotation window and briefly retries "
        "while the proxy catches up; its worst request is the one that waited for that.",
        "",
    ]
    return lines


def fleet_section(f: dict[str, Any]) -> list[str]:
    p = f["params"]
    m = f["model"]
    quota = f["quota"]
    lines = [
        "## 5. Fleet simulation",
        "",
        f"{p['containers']:,} Lambda containers on a simulated clock, each running the real "
        f"`SecretProvider` (TTL {p['ttl']:.0f} s) with an injected clock and fetcher "
        "(`benchmarks/fleet.py`): cold starts spread over "
        f"{p['ramp']:.0f} s, one invocation per container every {p['interval']:.0f} s, each "
        "calling `provider.get()`; one connection per container, closed after an exponential "
        f"lifetime (mean {p['conn_life']:.0f} s); rotation at t = {p['rotate_at']:.0f} s, the "
        f"proxy refusing the old password {p['proxy_lag']:.0f} s later, a refused login "
        "calling `provider.refresh(stale=...)` and, while the proxy still refuses, waiting and "
        "trying again as dbcreds' login policy does. Every GetSecretValue answer takes "
        f"{m['latency_s'] * 1000:.0f} ms. GetSecretValue calls per second (every attempt), "
        f"against the account quota of {quota:,}/s; without a cache (one call per invocation) "
        f"it would be {f['no_cache_per_second']:,.0f}/s all the time.",
        "",
        "| scenario | peak during cold start | steady-state peak | steady-state mean | "
        "peak in the 300 s after the rotation | logins refused after the rotation | total calls |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in f["scenarios"]:
        lines.append(f"| {s['name']} | {s['ramp_peak']:,}/s | {s['steady_peak']:,}/s | "
                     f"{s['steady_mean']:,.1f}/s | {s['rotation_peak']:,}/s | "
                     f"{s['refused_logins']:,} | {s['total']:,} |")
    lines += [
        "",
        "Reading it: the cold start itself is one call per container (1,000/s over the 10 s "
        "ramp here; 10,000 containers starting in the same second are 10,000/s, the "
        "whole quota — no cache can help with the first fetch, only a slower ramp or the "
        "extension's per-container cache, which also calls once). Without jitter every later "
        "TTL refresh repeats the ramp's shape; the default 10 % jitter spreads each wave over "
        "30 s and flattens it further every cycle. After a rotation, refused logins refresh "
        "one container at a time (one call each, single flight); only a proxy that drops "
        "every connection at once makes the whole fleet refresh within one invocation "
        "interval — still one call per container, bounded by the no-cache rate.",
        "",
        "### Under throttling",
        "",
        "The same simulation also models the account's GetSecretValue quota and botocore's "
        "retries (every row above ran with them; none was throttled):",
        "",
        f"* **Quota**: a token bucket refilled at {quota:,} tokens/s holding at most "
        f"{f['burst']:,} (full at t = 0); a call that finds no token is answered "
        "`ThrottlingException`. AWS's Secrets Manager quotas page gives GetSecretValue one "
        "figure, 10,000 requests per second per account and Region, and no separate burst; "
        "where AWS documents its API throttling as a token bucket (EC2, ECS, RDS), the "
        "bucket's capacity is the burst (the most requests in any one second) and its refill "
        "rate the sustained rate, so one figure for both is a bucket of 10,000 refilled at "
        "10,000/s. The stress rows use a bucket ten times shallower, in case AWS's is.",
        f"* **botocore's retries** as dbcreds configures them (`_aws.new_client`: standard "
        f"mode, `total_max_attempts={m['max_attempts']}`) and as botocore implements them "
        "(`botocore/retries/standard.py`, `quota.py`): a throttled attempt n is retried after "
        f"`random() * min({m['throttling_backoff_base_s']:.0f} s * 2 ** (n - 1), "
        f"{m['max_backoff_s']:.0f} s)` (full jitter, base 1 s for throttling errors, 50 ms "
        f"for others), while the client's retry quota ({m['retry_quota']}, "
        f"{m['throttling_retry_cost']} per throttled retry) lasts; when every attempt is "
        "throttled the provider sees `SecretsManagerUnavailable`, and serves its cached "
        "value if it has one (stale-if-error) or raises.",
        "* **Outcomes**: a *failed cold start* is a container whose first `provider.get()` "
        "raised (nothing cached to serve); a *failed request* is an invocation whose `get()` "
        "raised, or whose login was still refused at the end of the login policy's "
        f"{m['login_budget_s']:.0f} s budget.",
        "",
        "| scenario | cold-start ramp | bucket | attempts | peak calls (÷ quota) | "
        "steady-state peak (÷ mean) | throttled answers | calls failed after every attempt | "
        "stale values served | cold start p99 / max | failed cold starts | failed requests |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in f["throttled"]:
        ratio = s["steady_peak"] / s["steady_mean"] if s["steady_mean"] else 0.0
        lines.append(
            f"| {s['name']} | {s['ramp']:g} s | {s['burst']:,} | {s['attempts']} | "
            f"{s['peak']:,}/s ({s['peak'] / quota:.2f}) | {s['steady_peak']:,}/s "
            f"({ratio:.0f}x) | {s['throttled']:,} | {s['exhausted_calls']:,} | "
            f"{s['stale_served']:,} | {s['cold_start_p99'] * 1000:,.0f} / "
            f"{s['cold_start_max'] * 1000:,.0f} ms | **{s['failed_cold_starts']:,}** | "
            f"**{s['failed_requests']:,}** |")
    by_name = {s["name"]: s for s in f["throttled"]}
    goal = [s for s in f["throttled"] if not s["name"].startswith("stress")]
    failed = sum(s["failed_cold_starts"] + s["failed_requests"] for s in goal)
    burst = by_name.get("burst within 1 s, jitter 10% (default)")
    nj = by_name.get("burst: 10,000 containers within 1 s, no jitter")
    steady = {s["jitter"]: s["steady_peak"] for s in f["throttled"]
              if s["name"].startswith("burst") and not s["drop_all_at_rotation"]}
    drop_peak = max((s["rotation_peak"] for s in f["throttled"]
                     if s["ramp"] < p["ramp"] and s["drop_all_at_rotation"]), default=0)
    stress = next(s for s in f["throttled"] if s["name"].startswith("stress:"))
    stress4 = next(s for s in f["throttled"] if s["name"].startswith("stress,"))
    if burst and nj:
        lines += [
            "",
            "Reading it, against the goals (a 10,000-container burst within one second and a "
            "proxy that drops every connection at a rotation both end with 0 failed cold "
            "starts and 0 failed requests): "
            + ("**met**" if failed == 0 else f"**not met** ({failed:,} failures)")
            + f" with today's code and settings. The burst's peak is "
            f"{burst['peak'] / quota:.2f} x the quota: 10,000 calls spread over one second "
            "fit a bucket refilled at 10,000/s, so "
            + (f"{burst['throttled']:,} calls were throttled" if burst["throttled"]
               else "nothing is throttled")
            + ", but there is no "
            "margin — anything else in the account calling GetSecretValue in that second "
            "(another function, a second secret) is throttled with it. Containers started "
            "within one second also invoke in step (one invocation every "
            f"{p['interval']:.0f} s each, all in the same second), so a proxy that drops "
            "every connection makes all 10,000 refresh within one second: again "
            f"{drop_peak / quota:.2f} x the quota. Without jitter each TTL refresh repeats "
            "the burst "
            f"({nj['steady_peak']:,}/s, {nj['steady_peak'] / quota:.2f} x the quota, "
            f"{nj['steady_peak'] / nj['steady_mean']:.0f} x the mean); throttled refreshes "
            "would still fail no request (the cached value is served, stale-if-error) but "
            "they take the quota that new containers need for their first fetch.",
            "",
            "The stress rows show where the margin ends: 10,000 containers within 0.1 s "
            "(100,000 calls/s attempted) against a bucket of 1,000. botocore's three attempts "
            f"(waits of up to 1 s, then 2 s) carry {stress['calls'] - stress['exhausted_calls']:,}"
            f" of {stress['calls']:,} calls through ({stress['throttled']:,} throttled answers);"
            f" {stress['failed_cold_starts']:,} containers were throttled three times on their "
            "first fetch and failed their cold start (nothing to serve yet). A fourth attempt "
            "(a client setting: `SecretProvider(client=new_client("
            "\"secretsmanager\", retries={\"mode\": \"standard\", "
            "\"total_max_attempts\": 4}))`) leaves "
            f"{stress4['failed_cold_starts']:,} failed cold starts and "
            f"{stress4['failed_requests']:,} failed requests. dbcreds' own default stays at "
            "3: the goals are met without it, and every extra attempt adds load to a "
            "throttled account and up to 4 s more to a call that fails on a real outage.",
            "",
            "**Default jitter.** The TTL-refresh wave after a one-second burst (steady-state "
            "peak, same run): "
            + ", ".join(f"{steady[j]:,}/s at {j:.0%}" for j in sorted(steady))
            + ". Jitter j shortens the mean TTL to ttl x (1 - j/2), i.e. +"
            + ", +".join(f"{(1 / (1 - j / 2) - 1):.1%} calls at {j:.0%}"
                         for j in sorted(steady) if j)
            + " in the long run (the 1,500 s runs are too short to show it in the mean). "
            "10 % is kept as the default: it is the step that matters (the worst refresh wave "
            f"goes from {steady.get(0.0, 0) / quota:.0%} of the quota to "
            f"{steady.get(0.1, 0) / quota:.0%}, leaving the rest to cold starts, for 5 % more "
            "calls); 20 % halves the wave again for twice the extra calls, a trade worth "
            "making only for fleets that start thousands of containers in the same second "
            "with a quota shared with other heavy users (`jitter=` on `SecretProvider`).",
        ]
    lines += [
        "",
        f"How it was measured: `benchmarks/run.py --only fleet`, all "
        f"{len(f['throttled'])} runs (the first three rows of both tables are the same "
        f"runs) in {f.get('elapsed_s', '?')} s on the machine above, seeded and "
        "deterministic. Every invocation that can do anything calls the real provider; an "
        "invocation that is provably a cache hit (connection open, less than ttl x (1 - "
        "jitter) after the container's last fetch) is counted but not run.",
        "",
        f"![GetSecretValue per second]({f['png']})",
        "",
    ]
    return lines


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
