"""The dbcreds-testing distribution (``testing/pyproject.toml``): what users install to get the
pytest plugin. Its wheel carries exactly the repository's ``src/dbcreds_testing`` and the
``pytest11`` entry point, and nothing of dbcreds itself (which stays free of a test harness)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from support import REPO


@pytest.mark.package
def test_the_wheel_holds_the_harness_and_the_plugin_entry_point(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path),
         str(REPO / "testing")],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = tmp_path.glob("dbcreds_testing-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    modules = {n for n in names if n.endswith(".py")}
    source = {f"dbcreds_testing/{p.name}" for p in (REPO / "src" / "dbcreds_testing").glob("*.py")}
    assert modules == source
    assert not [n for n in names if n.endswith(".pyc") or n.startswith("dbcreds/")]
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry).decode()
    assert "[pytest11]" in text and "dbcreds = dbcreds_testing.pytest_plugin" in text
