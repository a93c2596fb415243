"""Shared plumbing of the benchmarks: the stack, child environments, the extension stub."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dbcreds_testing._proc import terminate

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
STUB_TOKEN = "bench-session-token"


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def tls_env(stack: Any) -> dict[str, str]:
    """Every contender verifies the stack's servers (verify-full with the stack's CA): dbcreds
    through its own settings, the peers' plain psycopg.connect through libpq's environment.
    Same TLS work for all, as a careful user of each would configure it."""
    return {**stack.tls_env(), "PGSSLMODE": "verify-full", "PGSSLROOTCERT": stack.ca_file}


def child_env(stack: Any, **extra: str) -> dict[str, str]:
    """The environment of a benchmark child: the stack's Secrets Manager, nothing else of AWS
    or dbcreds from the parent, bytecode caches allowed (as in a deployed package)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "DBCREDS_", "PARAMETERS_SECRETS_", "POWERTOOLS_"))
           and k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH")}
    env.update(stack.env())
    env.update(tls_env(stack))
    env["AWS_CONFIG_FILE"] = "/nonexistent/aws-config"
    env["AWS_SHARED_CREDENTIALS_FILE"] = "/nonexistent/aws-credentials"
    env.update(extra)
    return env


def compile_bytecode() -> None:
    """Write the .pyc of dbcreds (an editable install under PYTHONDONTWRITEBYTECODE has none;
    a deployed Lambda package has them): every variant then imports from bytecode."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "src" / "dbcreds")],
                   check=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": ""})


@contextmanager
def extension_stub(stack: Any, tmp: Path, aws_env: dict[str, str] | None = None) -> Iterator[int]:
    """The extension stand-in (benchmarks/extension_stub.py) as a process; yields its port.
    *aws_env*: the Secrets Manager endpoint it calls (a latency relay's), else the stack's."""
    port_file = tmp / "stub.port"
    port_file.unlink(missing_ok=True)
    env = child_env(stack, STUB_TOKEN=STUB_TOKEN, **(aws_env or {}))
    proc = subprocess.Popen([sys.executable, str(HERE / "extension_stub.py"), "--port-file",
                             str(port_file)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the extension stub did not start")
            time.sleep(0.05)
        yield int(port_file.read_text())
    finally:
        terminate(proc, timeout=10)  # SIGTERM, then SIGKILL if it lingers


def stub_call(port: int, route: str) -> dict[str, Any]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{port}/{route}", timeout=10) as response:
        doc: dict[str, Any] = json.loads(response.read())
    return doc


def machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for dist in ("dbcreds", "boto3", "botocore", "psycopg", "psycopg-binary", "psycopg-pool",
                 "aws-secretsmanager-caching", "aws-lambda-powertools", "moto"):
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            versions[dist] = "-"
    pgbouncer = subprocess.run(["pgbouncer", "--version"], capture_output=True, text=True)
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "pgbouncer": (pgbouncer.stdout.strip().splitlines() or ["?"])[0],
        "versions": ", ".join(f"{k} {v}" for k, v in versions.items()),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
