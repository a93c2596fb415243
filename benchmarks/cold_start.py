"""Cold start: a fresh process fetches the secret and runs its first query through the proxy.

Each variant is a tiny program run with ``python -c``. It takes ``t0`` on its first line
(before any import but ``time``), imports what it needs, gets the credentials its way, connects
through the RDS Proxy stand-in, runs ``SELECT 1``, and prints ``init_ms`` (t0 to the row) and
its peak RSS; the parent also times the whole process (interpreter start to exit). Variants run
interleaved (a shuffled round of every variant, repeated), after discarded warm-up rounds.

The concurrent variant: 64 threads of one fresh process, released together, each getting the
credentials and running its first query; the endpoint counts the GetSecretValue calls.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from typing import Any

from _common import STUB_TOKEN, child_env, extension_stub, median, stub_call

HEAD = "import time\nt0 = time.perf_counter()\nimport os\nE = os.environ\n"
TAIL = """
row = conn.execute("select 1").fetchone()
t1 = time.perf_counter()
assert row == (1,)
import json, resource, sys
# VmHWM: this process's peak RSS (getrusage's ru_maxrss would include the parent's, from fork)
hwm = [line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM")]
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"init_ms": (t1 - t0) * 1000, "rss_kb": int(hwm[0]),
                  "cpu_ms": (ru.ru_utime + ru.ru_stime) * 1000,
                  "sdk": "botocore" in sys.modules}))
sys.stdout.flush()
os._exit(0)
"""
CONNECT = ("conn = psycopg.connect(host=E['BENCH_HOST'], port=E['BENCH_PORT'], "
           "dbname=creds['dbname'], user=creds['username'], password=creds['password'])\n")

DBCREDS = """
import dbcreds
dbcreds.prefetch()
conn = dbcreds.get_connection().__enter__()
"""

VARIANTS: dict[str, str] = {
    # The seed story's application code: boto3 get_secret_value, then connect.
    "seed (boto3 + psycopg.connect)": """
import json
import boto3
import psycopg
client = boto3.client("secretsmanager")
secret = client.get_secret_value(SecretId=E["BENCH_SECRET_ID"])
creds = json.loads(secret["SecretString"])
""" + CONNECT,
    # The README's Lambda example with its documented prefetch call (top of the module).
    "dbcreds (boto3)": DBCREDS,
    "dbcreds (boto3, no prefetch)": """
import dbcreds
conn = dbcreds.get_connection().__enter__()
""",
    "dbcreds (extension, cold cache)": DBCREDS,
    "dbcreds (extension, warm cache)": DBCREDS,
    "aws-secretsmanager-caching + psycopg": """
import json
import boto3
import psycopg
from aws_secretsmanager_caching import SecretCache, SecretCacheConfig
cache = SecretCache(config=SecretCacheConfig(), client=boto3.client("secretsmanager"))
creds = json.loads(cache.get_secret_string(E["BENCH_SECRET_ID"]))
""" + CONNECT,
    "Powertools get_secret + psycopg": """
import psycopg
from aws_lambda_powertools.utilities import parameters
creds = parameters.get_secret(E["BENCH_SECRET_ID"], transform="json")
""" + CONNECT,
    "floor (psycopg.connect, password known)": """
import psycopg
creds = {"dbname": E["BENCH_DBNAME"], "username": E["BENCH_USER"],
         "password": E["BENCH_PASSWORD"]}
""" + CONNECT,
}
SEED = "seed (boto3 + psycopg.connect)"
FLOOR = "floor (psycopg.connect, password known)"


def _envs(stack: Any, app: Any, stub_port: int, net: Any) -> dict[str, dict[str, str]]:
    """Each variant's environment; *net*: the stack (loopback) or a `LatentStack` (latency)."""
    host, port = net.address("rds_proxy")
    base = child_env(stack, BENCH_SECRET_ID=app.secret_id, BENCH_HOST=host,
                     BENCH_PORT=str(port), BENCH_DBNAME=stack.dbname, **net.env())
    dbc = {**base, "DBCREDS_SECRET_ID": app.secret_id, "DBCREDS_HOST": host,
           "DBCREDS_PORT": str(port)}
    ext = {**dbc, "PARAMETERS_SECRETS_EXTENSION_HTTP_PORT": str(stub_port),
           "AWS_SESSION_TOKEN": STUB_TOKEN}
    envs = {name: base for name in VARIANTS}
    envs["dbcreds (boto3)"] = envs["dbcreds (boto3, no prefetch)"] = dbc
    envs["dbcreds (extension, cold cache)"] = ext
    envs["dbcreds (extension, warm cache)"] = ext
    envs[FLOOR] = {**base, "BENCH_USER": app.username, "BENCH_PASSWORD": app.password}
    return envs


def _run_once(code: str, env: dict[str, str]) -> dict[str, Any]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", HEAD + code + TAIL], env=env,
                          capture_output=True, text=True, timeout=120)
    wall = (time.perf_counter() - started) * 1000
    if done.returncode != 0:
        raise RuntimeError(f"cold-start child failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_ms"] = wall
    return result


def cold_start(stack: Any, tmp: Any, runs: int = 12, warmup: int = 2) -> dict[str, Any]:
    """The interleaved variants twice: on loopback, then under the latency model."""
    from dbcreds_testing.latency import LatencyModel

    app = stack.new_app("bench_cold")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    out: dict[str, Any] = {"runs": runs, "warmup": warmup}
    out["loopback"] = _cold_run(stack, app, tmp, stack, runs, warmup)
    model = LatencyModel()
    with stack.latency(model) as slow:
        out["latency"] = _cold_run(stack, app, tmp, slow, runs, warmup)
        out["latency"]["model_ms"] = model.as_ms()
        out["calibration"] = {"n": 11, "loopback": _calibrate(stack, app, stack, 11),
                              "latency": _calibrate(stack, app, slow, 11)}
    # What-if (not a published figure): a first GetSecretValue of 120 ms (NAT gateway, a
    # cold KMS key, ...), the proxy as in the model; the seed, dbcreds with and without
    # prefetch and the floor only.
    slower = LatencyModel(secrets_connect=0.060, secrets_request=0.060)
    with stack.latency(slower) as slow:
        out["what_if"] = _cold_run(stack, app, tmp, slow, runs, warmup, only=WHAT_IF)
        out["what_if"]["model_ms"] = slower.as_ms()
    out["load"] = {"start": load, "end": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    stack.rds_proxy.unwatch(app.secret_id)
    return out


CALIBRATE = """
import json, os, statistics, sys, time
import boto3, psycopg
E = os.environ
sm, login, query = [], [], []
for _ in range(int(E["BENCH_N"])):
    client = boto3.session.Session().client("secretsmanager")
    t0 = time.perf_counter()
    client.get_secret_value(SecretId=E["BENCH_SECRET_ID"], VersionStage="AWSCURRENT")
    sm.append((time.perf_counter() - t0) * 1000)
    client.close()
    t0 = time.perf_counter()
    conn = psycopg.connect(host=E["BENCH_HOST"], port=E["BENCH_PORT"], dbname=E["BENCH_DBNAME"],
                           user=E["BENCH_USER"], password=E["BENCH_PASSWORD"])
    t1 = time.perf_counter()
    conn.execute("select 1").fetchone()
    t2 = time.perf_counter()
    conn.close()
    login.append((t1 - t0) * 1000)
    query.append((t2 - t1) * 1000)
m = statistics.median
print(json.dumps({"sm_ms": m(sm), "login_ms": m(login), "query_ms": m(query)}))
"""


def _calibrate(stack: Any, app: Any, net: Any, n: int) -> dict[str, float]:
    """What one fetch (boto3, a fresh client), one login through the proxy (verify-full) and
    one query cost through *net*: medians of *n* in a child process (as the variants run),
    i.e. the latency the relays actually add on this machine."""
    host, port = net.address("rds_proxy")
    env = child_env(stack, BENCH_SECRET_ID=app.secret_id, BENCH_HOST=host, BENCH_PORT=str(port),
                    BENCH_DBNAME=stack.dbname, BENCH_USER=app.username,
                    BENCH_PASSWORD=app.password, BENCH_N=str(n), **net.env())
    done = subprocess.run([sys.executable, "-c", CALIBRATE], env=env, capture_output=True,
                          text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"calibration failed: {done.stderr[-2000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


WHAT_IF = (SEED, "dbcreds (boto3)", "dbcreds (boto3, no prefetch)", FLOOR)


def _cold_run(stack: Any, app: Any, tmp: Any, net: Any, runs: int, warmup: int,
              only: tuple[str, ...] | None = None) -> dict[str, Any]:
    names = [name for name in VARIANTS if only is None or name in only]
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    with extension_stub(stack, tmp, net.env()) as stub_port:
        envs = _envs(stack, app, stub_port, net)
        for round_no in range(warmup + runs):
            order = list(names)
            random.shuffle(order)
            for name in order:
                if name == "dbcreds (extension, cold cache)":
                    stub_call(stub_port, "_reset")
                elif name == "dbcreds (extension, warm cache)":
                    stub_call(stub_port, "_reset")
                    _prime(stub_port, app.secret_id)
                result = _run_once(VARIANTS[name], envs[name])
                if round_no >= warmup:
                    samples[name].append(result)
    table: dict[str, dict[str, Any]] = {}
    for name, rows in samples.items():
        table[name] = {
            "init_ms": median([r["init_ms"] for r in rows]),
            "process_ms": median([r["process_ms"] for r in rows]),
            "rss_mb": median([r["rss_kb"] for r in rows]) / 1024,
            "cpu_ms": median([r["cpu_ms"] for r in rows]),
            "sdk_imported": any(r["sdk"] for r in rows),
            "runs": len(rows),
            "init_ms_all": [round(r["init_ms"], 1) for r in rows],
        }
    for row in table.values():
        row["vs_seed"] = row["init_ms"] / table[SEED]["init_ms"]
        row["vs_floor"] = row["init_ms"] / table[FLOOR]["init_ms"]
        row["process_vs_seed"] = row["process_ms"] / table[SEED]["process_ms"]
        row["process_vs_floor"] = row["process_ms"] / table[FLOOR]["process_ms"]
    return {"variants": table}


def _prime(port: int, secret_id: str) -> None:
    import urllib.request
    from urllib.parse import quote

    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/secretsmanager/get?secretId={quote(secret_id, safe='')}"
        "&versionStage=AWSCURRENT", headers={"X-Aws-Parameters-Secrets-Token": STUB_TOKEN})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as response:
        response.read()


# -- 64 threads of one fresh process ----------------------------------------------------------

CONCURRENT_HEAD = """
import os, sys, threading, time, json
E = os.environ
N = int(E["BENCH_THREADS"])
barrier = threading.Barrier(N)
errors = []
"""
CONCURRENT_TAIL = """
def run():
    barrier.wait()
    try:
        one()
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
t0 = time.perf_counter()
threads = [threading.Thread(target=run) for _ in range(N)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps({"wall_ms": (time.perf_counter() - t0) * 1000, "errors": errors[:3],
                  "failed": len(errors)}))
sys.stdout.flush()
os._exit(0)
"""
PEER_CONNECT = """
    conn = psycopg.connect(host=E['BENCH_HOST'], port=E['BENCH_PORT'], dbname=creds['dbname'],
                           user=creds['username'], password=creds['password'],
                           autocommit=True)  # no open transaction pinning a server connection
    conn.execute("select 1").fetchone()
    conns.append(conn)
"""
CONCURRENT: dict[str, str] = {
    "dbcreds": """
import dbcreds
def one():
    with dbcreds.get_connection(timeout=30) as conn:
        conn.execute("select 1").fetchone()
""",
    "seed (boto3 per thread)": """
import json, boto3, psycopg
conns = []
client = boto3.client("secretsmanager")
def one():
    creds = json.loads(client.get_secret_value(SecretId=E["BENCH_SECRET_ID"])["SecretString"])
""" + PEER_CONNECT,
    "aws-secretsmanager-caching": """
import json, boto3, psycopg
from aws_secretsmanager_caching import SecretCache, SecretCacheConfig
conns = []
cache = SecretCache(config=SecretCacheConfig(), client=boto3.client("secretsmanager"))
def one():
    creds = json.loads(cache.get_secret_string(E["BENCH_SECRET_ID"]))
""" + PEER_CONNECT,
    "Powertools get_secret": """
import psycopg
from aws_lambda_powertools.utilities import parameters
conns = []
def one():
    creds = parameters.get_secret(E["BENCH_SECRET_ID"], transform="json")
""" + PEER_CONNECT,
}


def concurrent_cold_start(stack: Any, threads: int = 64, runs: int = 3) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, code in CONCURRENT.items():
        calls, describe, walls, failed = [], [], [], []
        for _ in range(runs):
            app = stack.new_app("bench_conc", watch=False)
            host, port = stack.address("pgbouncer")
            env = child_env(stack, BENCH_SECRET_ID=app.secret_id, BENCH_HOST=host,
                            BENCH_PORT=str(port), BENCH_THREADS=str(threads),
                            DBCREDS_SECRET_ID=app.secret_id, DBCREDS_HOST=host,
                            DBCREDS_PORT=str(port), DBCREDS_POOL_MAX_SIZE=str(threads))
            done = subprocess.run([sys.executable, "-c", CONCURRENT_HEAD + code
                                   + CONCURRENT_TAIL], env=env, capture_output=True, text=True,
                                  timeout=180)
            if done.returncode != 0:
                raise RuntimeError(f"{name}: {done.stderr[-2000:]}")
            doc = json.loads(done.stdout.strip().splitlines()[-1])
            calls.append(stack.secrets.count("GetSecretValue", secret_id=app.secret_id))
            describe.append(stack.secrets.count("DescribeSecret", secret_id=app.secret_id))
            walls.append(doc["wall_ms"])
            failed.append(doc["failed"])
        results[name] = {"GetSecretValue": median(calls), "DescribeSecret": median(describe),
                         "wall_ms": median(walls), "failed": max(failed),
                         "GetSecretValue_all": calls}
    return {"threads": threads, "runs": runs, "variants": results}
