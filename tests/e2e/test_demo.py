"""``dbcreds demo``: a short run in a fresh process, as ``make demo`` runs it (bounded: ~15 s)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.load

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("proxy", ["rds-proxy", "pgbouncer"])
def test_short_demo_passes_and_writes_its_report(tmp_path: Path, proxy: str) -> None:
    out = tmp_path / "demo-output"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "DBCREDS_", "PARAMETERS_SECRETS_"))}
    env["COLUMNS"] = "120"
    done = subprocess.run(
        [sys.executable, "-m", "dbcreds.cli", "demo", "--duration", "4", "--threads", "4",
         "--rotations", "1", "--proxy", proxy, "--output", str(out)],
        env=env, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    report = json.loads((out / "report.json").read_text())
    assert report["proxy"] == proxy
    assert report["failed"] == 0 and report["errors"] == []
    assert report["requests"] > 100
    assert report["rotations"] == report["rotations_requested"] == 1
    assert 1 <= report["GetSecretValue"] <= 10  # a cache, not a call per request
    assert 0 < report["p50_ms"] <= report["p99_ms"] <= report["max_ms"]
    assert 0 < report["max_after_warmup_ms"] <= report["max_ms"]

    text = done.stdout
    for figure in ("requests", "failed requests", "rotations", "GetSecretValue calls",
                   "latency p50", "latency p99", "latency max", "PASS"):
        assert figure in text, figure
    for step in ("createSecret", "setSecret", "testSecret", "finishSecret"):
        assert f"rotation 1: {step} success" in text
    assert f"{report['requests']:,}" in text

    png = (out / "timeline.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000


def test_demo_usage_errors_exit_2() -> None:
    done = subprocess.run([sys.executable, "-m", "dbcreds_testing.demo", "--threads", "0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--threads" in done.stderr
