"""Rotations through the extension transport, with the extension stand-in as its own process
(benchmarks/extension_stub.py): as the Secrets Manager Agent (refreshNow) and as the Lambda
extension (no refreshNow: boto3 for fresh reads).

The application's own Secrets Manager calls are counted by the stack's endpoint: every other
caller here (the stub, the rotation driver, the harness's stage checks, the RDS Proxy stand-in)
marks its requests as the stack's, so the endpoint's ``source="client"`` rows are the
application's boto3 calls and nothing else.
"""

from __future__ import annotations

import functools
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dbcreds import CredentialPool, SecretProvider
from dbcreds.extension import ExtensionTransport
from dbcreds.rotation.local import rotate_locally
from dbcreds_testing._motoserver import STACK_MARKER
from dbcreds_testing._proc import terminate
from dbcreds_testing.workload import Workload
from rotations import assert_three_rotations_served, report, rotate_three_times

STUB = Path(__file__).resolve().parents[2] / "benchmarks" / "extension_stub.py"
TOKEN = "agent-token-for-tests"


@dataclass
class Stub:
    port: int
    mode: str

    def stats(self) -> dict[str, int]:
        import json
        import urllib.request

        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{self.port}/_stats", timeout=10) as response:
            stats: dict[str, int] = json.loads(response.read())
        return stats


@pytest.fixture
def start_stub(aws_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[[str], Stub]]:
    """Start the stand-in (``extension`` or ``agent`` mode) on the stack's Secrets Manager, its
    calls marked as the stack's; its cache keeps values 300 s (the real default)."""
    procs: list[subprocess.Popen[str]] = []

    def start(mode: str) -> Stub:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DBCREDS_")}
        env.update(STUB_TOKEN=TOKEN, STUB_USER_AGENT_EXTRA=STACK_MARKER,
                   SECRETS_MANAGER_TTL="300")
        proc = subprocess.Popen(
            [sys.executable, str(STUB), "--mode", mode, "--port-file",
             str(tmp_path / f"{mode}.port")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        procs.append(proc)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)  # the port, once it listens
        line = proc.stdout.readline() if ready else ""
        assert line.strip().isdigit(), f"the extension stub did not start ({mode})"
        return Stub(int(line), mode)

    yield start
    for proc in procs:
        terminate(proc, timeout=10)  # SIGTERM, then SIGKILL if it lingers


def app_boto3_calls(stack: Any) -> int:
    """Every Secrets Manager request the application's process made (boto3), any operation."""
    return sum(row.n for row in stack.secrets.counts()
               if row.service == "secretsmanager" and row.source == "client")


def use_stub(monkeypatch: pytest.MonkeyPatch, stub: Stub) -> None:
    """The application's settings: the transport is the stand-in on its port. The Agent's
    token is AWS_TOKEN; the Lambda extension's AWS_SESSION_TOKEN."""
    monkeypatch.setenv("DBCREDS_SECRETS_TRANSPORT", "extension")
    monkeypatch.setenv("PARAMETERS_SECRETS_EXTENSION_HTTP_PORT", str(stub.port))
    monkeypatch.delenv("DBCREDS_SECRETS_AGENT", raising=False)
    monkeypatch.setenv("AWS_TOKEN" if stub.mode == "agent" else "AWS_SESSION_TOKEN", TOKEN)


pytestmark = pytest.mark.load


@pytest.mark.parametrize("mode", ["agent", "extension"])
def test_three_rotations_under_load_through_the_stub(
    stack: Any, rotating_app: Any, start_stub: Callable[[str], Stub],
    monkeypatch: pytest.MonkeyPatch, mode: str,
) -> None:
    """Agent: 0 failed requests and 0 boto3 calls by the application (forced refreshes and
    AWSPENDING come from the Agent with refreshNow). Lambda extension: 0 failed requests
    too, its fresh reads made through boto3 (the fallback)."""
    app = rotating_app
    stub = start_stub(mode)
    use_stub(monkeypatch, stub)
    # The rotation's and the harness's calls, marked as the stack's (not the app's), with the
    # retries and timeouts of an ordinary client.
    stack_client = stack.secrets.client(
        stack=True, retries={"mode": "standard", "total_max_attempts": 3}, read_timeout=10)
    before = app_boto3_calls(stack)
    provider = SecretProvider(app.secret_id)
    pool = CredentialPool(provider, open=True, host=stack.pgbouncer.host,
                          port=stack.pgbouncer.port, min_size=4, max_size=8, max_lifetime=2.0,
                          check=CredentialPool.check_connection)
    try:
        pool.wait(timeout=15)
        with Workload(pool.connection, threads=8) as workload:
            assert workload.wait_for_requests(50)
            logins_ok = rotate_three_times(
                stack, app, stack_client, [workload],
                rotate=functools.partial(rotate_locally, client=stack_client))
            result = workload.stop()
    finally:
        pool.close()
    boto3_calls = app_boto3_calls(stack) - before
    transport = provider._fetcher  # what auto_fetcher chose (private: read for the figures)
    assert isinstance(transport, ExtensionTransport)
    stats, served = transport.get_stats(), stub.stats()
    report(f"{mode}-stub", result, provider)
    print(f"  [{mode}] app boto3 calls: {boto3_calls}; transport: {stats}; stub: {served}")
    assert_three_rotations_served(stack, app, result, logins_ok)
    if mode == "agent":
        assert boto3_calls == 0
        assert stats["sdk"] == 0 and stats["refreshed"] >= 3  # >= 1 forced refresh a rotation
        assert transport.refresh_now is True
        assert served["refreshes"] == stats["refreshed"]
        assert provider._client is None  # no boto3 client was even created
    else:
        assert transport.refresh_now is False  # the probe's 200: refreshNow was ignored
        assert stats["refreshed"] == 0 and served["refreshes"] == 0
        assert boto3_calls == stats["sdk"] >= 3  # every fresh read: boto3, counted both sides


CHILD = """
import sys, time
import dbcreds
from dbcreds.extension import ExtensionTransport
provider = dbcreds.SecretProvider(sys.argv[1])
old = provider.get()
t0 = time.perf_counter()
provider.refresh()  # the first: the probe (and, for the SDK, its import and client)
first = (time.perf_counter() - t0) * 1000
times = []
for _ in range(20):
    t0 = time.perf_counter()
    fresh = provider.refresh()
    times.append((time.perf_counter() - t0) * 1000)
stats = provider._fetcher.get_stats()
print(fresh.version_id == old.version_id, stats["sdk"], stats["refreshed"],
      "boto3" in sys.modules, "botocore" in sys.modules, f"{first:.1f}",
      f"{sorted(times)[10]:.2f}")
"""


@pytest.mark.parametrize("mode", ["agent", "extension"])
def test_forced_refresh_in_a_fresh_process(
    stack: Any, app: Any, start_stub: Callable[[str], Stub], aws_env: dict[str, str],
    tmp_path: Path, mode: str,
) -> None:
    """In a process of its own: through the Agent, 21 forced refreshes never import boto3 (nor
    botocore, which dbcreds' SDK path uses); through the Lambda extension they are SDK calls.
    Prints the first one's latency and the median of the next 20."""
    stub = start_stub(mode)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DBCREDS_", "AWS_SESSION_TOKEN", "AWS_TOKEN"))}
    env.update({
        "DBCREDS_SECRETS_TRANSPORT": "extension",
        "PARAMETERS_SECRETS_EXTENSION_HTTP_PORT": str(stub.port),
        ("AWS_TOKEN" if mode == "agent" else "AWS_SESSION_TOKEN"): TOKEN,
    })
    before = app_boto3_calls(stack)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", CHILD, app.secret_id], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    same, sdk, refreshed, boto3, botocore, first, median = done.stdout.split()
    print(f"\n[{mode}] forced refresh: first {first} ms, then median {median} ms (20); "
          f"botocore imported: {botocore}; "
          f"whole child {time.monotonic() - started:.1f} s")
    assert same == "True"
    if mode == "agent":
        assert (sdk, refreshed, boto3, botocore) == ("0", "21", "False", "False")
        assert app_boto3_calls(stack) == before
    else:
        assert (sdk, refreshed, botocore) == ("21", "0", "True")  # dbcreds' SDK: botocore
        assert app_boto3_calls(stack) - before == 21
    assert app.password not in done.stdout + done.stderr
