"""`make package`: the rotation Lambda zips are byte-identical build to build, hold what the
Lambda needs and nothing machine-specific, and the unpacked copy runs a full rotation.

These tests download the pinned wheels (rotation/requirements-*.txt) from PyPI, through pip
and its cache: a few seconds once the cache is warm. The builds run once per session.

The Lambda zips target CPython 3.12 (the template's runtime) and cannot be imported by another
Python: psycopg-binary's extension modules are built per Python version. So the import and
rotation tests use a zip the same build script makes for this interpreter and machine
(``--python-version``), and a test shows that it differs from the shipped x86_64 zip only in
those extension modules (same entries, same bytes for everything else).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from support import REPO, ROTATION, build_package

pytestmark = pytest.mark.package

LOCAL_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


bp = build_package()
HOST_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}.get(
    platform.machine().lower()
)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


#: zip -> fingerprint of the build's inputs, or None when they changed during the build
BUILT_FROM: dict[Path, str | None] = {}


def inputs_fingerprint() -> str:
    """sha256 over every input of the build that lives in this repository."""
    files = [REPO / "pyproject.toml", REPO / "README.md", *sorted(ROTATION.glob("*.txt"))]
    files += [ROTATION / "build_package.py", bp.EXAMPLE_APP]
    files += sorted(
        p for p in (REPO / "src").rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(REPO).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest() if path.exists() else b"-")
    return digest.hexdigest()


def record_inputs(before: str, outputs: list[Path]) -> None:
    after = inputs_fingerprint()
    for path in outputs:
        BUILT_FROM[path] = before if before == after else None


def same_inputs(*zips: Path) -> None:
    """Skip when the zips were not built from one unchanging source tree: only possible on a
    developer machine where someone edits the tree while the tests run (never in CI)."""
    prints = {BUILT_FROM.get(z) for z in zips}
    if None in prints or len(prints) != 1:
        pytest.skip("the source tree changed while the packages were built: not the same inputs")


def make_package(dist: Path, **env_overrides: str) -> dict[str, Path]:
    """``make package`` (both architectures) into ``dist``; returns arch -> zip."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    # the Makefile's defaults, whatever this shell exports (CI may set ARCH, for one)
    skip = {"ARCH", "BUNDLE_BOTO3", "CA_BUNDLE", "SOURCE_DATE_EPOCH", "MAKEFLAGS"}
    env = {k: v for k, v in os.environ.items() if k not in skip} | env_overrides
    before = inputs_fingerprint()
    proc = subprocess.run(
        [make, "--no-print-directory", "-C", str(REPO), "package", f"DIST={dist}",
         f"PACKAGE_PYTHON={sys.executable}"],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    zips = {arch: dist / f"dbcreds-rotation-{arch}.zip" for arch in bp.ARCHES}
    for arch, path in zips.items():
        assert path.is_file(), arch
        # make prints "<sha256>  <path>  (<size> bytes)" for each zip
        assert f"{sha256(path)}  {path}" in proc.stdout
    record_inputs(before, list(zips.values()))
    return zips


@pytest.fixture(scope="session")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_package(tmp_path_factory.mktemp("dist-a"))


@pytest.fixture(scope="session")
def local_zip(packages: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The zip for this machine and this Python, built by the same script."""
    if HOST_ARCH is None:
        pytest.skip(f"no Lambda architecture for this machine ({platform.machine()})")
    if LOCAL_PYTHON == bp.LAMBDA_PYTHON:
        return packages[HOST_ARCH]  # the shipped zip itself
    if LOCAL_PYTHON not in bp.LOCK_PYTHONS:
        pytest.skip(f"the lock has no wheels for Python {LOCAL_PYTHON} ({bp.LOCK_PYTHONS})")
    dist = tmp_path_factory.mktemp("dist-local")
    before = inputs_fingerprint()
    proc = subprocess.run(
        [sys.executable, str(ROTATION / "build_package.py"), "build", "--arch", HOST_ARCH,
         "--python-version", LOCAL_PYTHON, "--dist", str(dist)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [built] = dist.glob("*.zip")
    record_inputs(before, [built])
    return built


@dataclass(frozen=True)
class Unpacked:
    code: Path  # the zip's content, as Lambda lays it out in /var/task
    runtime: Path  # boto3 and its dependencies only: the stand-in for the Lambda runtime's


@pytest.fixture(scope="session")
def unpacked(local_zip: Path, tmp_path_factory: pytest.TempPathFactory) -> Unpacked:
    code = tmp_path_factory.mktemp("task")
    assert not any(code.iterdir())
    with zipfile.ZipFile(local_zip) as zf:
        zf.extractall(code)
    return Unpacked(code, runtime_standin(tmp_path_factory.mktemp("runtime")))


def runtime_standin(dest: Path) -> Path:
    """A directory holding only boto3 and its dependencies (links into this environment).

    The Lambda Python runtime provides exactly these (boto3, botocore, s3transfer, jmespath,
    python-dateutil, six, urllib3); the zip does not carry them (rotation/README.md).
    """
    todo, seen = ["boto3"], set()
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        dist = importlib.metadata.distribution(name)
        for raw in dist.requires or []:
            req = Requirement(raw)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
        for file in dist.files or []:
            top = file.parts[0]
            if top == ".." or top == "__pycache__":
                continue
            link = dest / top
            if not link.exists():
                link.symlink_to(Path(str(dist.locate_file(top))).resolve())
    return dest


#: runs inside the subprocess: Lambda's view of the code (no site-packages, no repo)
_PROBE = r"""
import json, sys
code, runtime, report = sys.argv[1:4]
sys.path[:0] = [code]
sys.path.append(runtime)
from dbcreds.rotation import lambda_handler
if len(sys.argv) > 4:
    lambda_handler(json.loads(sys.argv[4]), None)
import boto3, dbcreds, psycopg
files = {n: getattr(m, "__file__", None) for n, m in list(sys.modules.items())}
with open(report, "w") as f:
    json.dump({"files": files, "impl": psycopg.pq.__impl__,
               "handler": lambda_handler.__module__}, f)
"""


def run_unpacked(
    unpacked: Unpacked,
    report: Path,
    event: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One "Lambda invocation": a fresh interpreter that sees the unpacked code, the runtime
    stand-in and the standard library only (-I: no PYTHON* variables, no user site; -S: no
    site-packages at all), with the unpacked code as its working directory."""
    args = [sys.executable, "-I", "-S", "-c", _PROBE, str(unpacked.code), str(unpacked.runtime),
            str(report)]  # fmt: skip
    if event is not None:
        args.append(json.dumps(event))
    base = {"PATH": os.environ.get("PATH", ""), "LANG": "C.UTF-8"}
    proc = subprocess.run(
        args, cwd=unpacked.code, env={**base, **(env or {})},
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc: dict[str, Any] = json.loads(report.read_text())
    stdlib = {Path(sysconfig.get_paths()[k]).resolve() for k in ("stdlib", "platstdlib")}
    for name, file in doc["files"].items():
        if file is None:
            continue  # builtin or namespace module
        path = Path(file)
        assert (
            path.is_relative_to(unpacked.code)
            or path.is_relative_to(unpacked.runtime)
            or any(path.resolve().is_relative_to(s) for s in stdlib)
        ), f"{name} was imported from {file}, outside the unpacked zip and the runtime"
    return doc


# -- reproducibility ---------------------------------------------------------------------------


def test_make_package_twice_gives_the_same_bytes(
    packages: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    # another directory, time zone and umask: none of them may reach the zip
    again = make_package(tmp_path_factory.mktemp("dist-b"), TZ="Asia/Tokyo")
    same_inputs(*packages.values(), *again.values())
    for arch in bp.ARCHES:
        first, second = sha256(packages[arch]), sha256(again[arch])
        print(f"\n{packages[arch].name}: {first} ({packages[arch].stat().st_size} bytes)")
        assert first == second, arch


def test_zip_entries_are_normalised(packages: dict[str, Path]) -> None:
    earliest = (1980, 1, 1, 0, 0, 0)
    for arch, path in packages.items():
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
        names = [i.filename for i in infos]
        assert names == sorted(names), arch
        assert len(set(names)) == len(names), arch
        for info in infos:
            assert not info.is_dir(), info.filename
            assert info.date_time == earliest, info.filename
            assert info.external_attr >> 16 == 0o100644, info.filename
            assert info.create_system == 3, info.filename
            assert info.compress_type == zipfile.ZIP_DEFLATED, info.filename
            assert not info.extra and not info.comment, info.filename


def test_zip_holds_nothing_machine_or_install_specific(packages: dict[str, Path]) -> None:
    volatile = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}
    markers = [str(REPO).encode(), b"dbcreds-package-", sys.prefix.encode()]
    for arch, path in packages.items():
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():
                parts = name.split("/")
                assert "__pycache__" not in parts and not name.endswith((".pyc", ".pyo")), name
                assert parts[0] != "bin", name
                assert not (parts[0].endswith(".dist-info") and parts[-1] in volatile), name
                data = zf.read(name)
                for marker in markers:
                    assert marker not in data, (arch, name, marker)


# -- content -----------------------------------------------------------------------------------


def _locked_versions() -> dict[str, str]:
    text = (ROTATION / "requirements-lambda.txt").read_text()
    return {
        canonicalize_name(m.group(1)): m.group(2)
        for m in re.finditer(r"^([A-Za-z0-9_.-]+)==(\S+)", text, flags=re.MULTILINE)
    }


def _dists(names: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for name in names:
        m = re.fullmatch(r"([^/]+)-([^-/]+)\.dist-info/METADATA", name)
        if m:
            found[canonicalize_name(m.group(1))] = m.group(2)
    return found


def test_zip_holds_dbcreds_its_locked_dependencies_and_no_boto3(
    packages: dict[str, Path],
) -> None:
    pyproject_version = re.search(
        r'^version\s*=\s*"([^"]+)"', (REPO / "pyproject.toml").read_text(), flags=re.MULTILINE
    )
    assert pyproject_version is not None
    expected = {**_locked_versions(), "dbcreds": pyproject_version.group(1)}
    for arch, path in packages.items():
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            handler = zf.read("dbcreds/rotation/__init__.py").decode()
        assert _dists(names) == expected, arch
        assert "lambda_handler" in handler
        assert "dbcreds_example_app.py" in names
        # boto3 comes from the Lambda runtime (rotation/README.md, "boto3")
        assert not any(n.split("/")[0] in ("boto3", "botocore", "s3transfer") for n in names)
        # every module of the source tree is in the zip
        for src in sorted((REPO / "src" / "dbcreds").rglob("*.py")):
            rel = src.relative_to(REPO / "src").as_posix()
            assert rel in names, (arch, rel)


def test_native_code_is_for_the_lambda_machine_and_python(packages: dict[str, Path]) -> None:
    for arch, path in packages.items():
        machine, elf_machine = bp.ARCHES[arch]
        tag = f".cpython-{bp.LAMBDA_PYTHON.replace('.', '')}-{machine}-linux-gnu.so"
        with zipfile.ZipFile(path) as zf:
            native = [n for n in zf.namelist() if re.search(r"\.so(\.|$)", n)]
            extensions = [n for n in native if n.startswith("psycopg_binary/")]
            assert extensions and all(n.endswith(tag) for n in extensions), (arch, extensions)
            for name in native:
                header = zf.read(name)[:20]
                assert header[:4] == b"\x7fELF", name
                assert int.from_bytes(header[18:20], "little") == elf_machine, (arch, name)


def test_local_test_zip_differs_from_the_shipped_one_only_in_compiled_code(
    packages: dict[str, Path], local_zip: Path
) -> None:
    assert HOST_ARCH is not None
    shipped = packages[HOST_ARCH]
    if local_zip == shipped:
        return  # this interpreter is the Lambda's Python: the tests use the shipped zip
    same_inputs(shipped, local_zip)
    local_tag = f"cpython-{LOCAL_PYTHON.replace('.', '')}"
    lambda_tag = f"cpython-{bp.LAMBDA_PYTHON.replace('.', '')}"
    with zipfile.ZipFile(shipped) as a, zipfile.ZipFile(local_zip) as b:
        assert [n.replace(local_tag, lambda_tag) for n in b.namelist()] == a.namelist()
        for info in a.infolist():
            if info.filename.endswith(".so") or info.filename.startswith("psycopg_binary"):
                continue  # psycopg-binary: built per Python version
            assert b.getinfo(info.filename).CRC == info.CRC, info.filename


# -- only the product ships -------------------------------------------------------------------

SRC = REPO / "src"
#: where the test harness and the demo once lived, and where they live now (never shipped)
HARNESS = ("dbcreds_testing/", "dbcreds/testing/", "dbcreds/demo.py")


def product_files() -> set[str]:
    """Every file of the dbcreds package on disk, as a wheel or the zip names it: whatever
    module is added to src/dbcreds is expected without editing this test."""
    return {
        p.relative_to(SRC).as_posix()
        for p in (SRC / "dbcreds").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
    }


def test_the_product_knows_nothing_of_the_test_harness() -> None:
    """No module of dbcreds imports dbcreds_testing (but the CLI's lazy demo import), and none
    knows the test endpoint's private /_dbcreds/* routes."""
    import ast

    for path in sorted((SRC / "dbcreds").rglob("*.py")):
        text = path.read_text()
        rel = path.relative_to(SRC).as_posix()
        assert "/_dbcreds/" not in text, rel
        imported = set()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module)
        harness = {m for m in imported if m.split(".")[0] == "dbcreds_testing"}
        assert harness == ({"dbcreds_testing"} if rel == "dbcreds/cli.py" else set()), rel


def test_the_wheel_holds_dbcreds_only(tmp_path: Path) -> None:
    """The wheel the zip installs (build_package.py's own build: pinned hatchling)."""
    wheel = bp.build_dbcreds_wheel(sys.executable, tmp_path, bp.ZIP_EPOCH)
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    print(f"\n{wheel.name}: {len(names)} files")
    dist_info = re.compile(r"dbcreds-[^/-]+\.dist-info/[^/]+")
    assert not [n for n in names if n.startswith(HARNESS)]
    assert not [n for n in names if not n.startswith("dbcreds/") and not dist_info.fullmatch(n)]
    assert {n for n in names if n.startswith("dbcreds/")} == product_files()


def test_zip_holds_dbcreds_without_the_harness_and_nothing_unexpected(
    packages: dict[str, Path],
) -> None:
    # import names of the pinned distributions: canonical name with "_" (true of all today;
    # a dependency whose import name differs needs an entry here)
    locked = {name.replace("-", "_") for name in _locked_versions()}
    expected_top = {"dbcreds", "dbcreds_example_app.py"} | locked
    for arch, path in packages.items():
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
        print(f"\n{path.name}: {len(names)} files, "
              f"{sum(n.startswith('dbcreds/') for n in names)} of them in dbcreds/")
        assert not [n for n in names if n.startswith(HARNESS)], arch
        assert {n for n in names if n.startswith("dbcreds/")} == product_files(), arch
        unexpected = set()
        for name in names:
            top = name.split("/")[0]
            if top.endswith(".dist-info"):
                continue  # which ones: test_zip_holds_dbcreds_its_locked_dependencies_...
            # a package, a single-module distribution, or auditwheel's vendored libraries
            stem = top.removesuffix(".libs") if "/" in name else top.removesuffix(".py")
            if top not in expected_top and stem not in expected_top:
                unexpected.add(top)
        assert not unexpected, (arch, sorted(unexpected))


def test_plain_install_says_the_demo_needs_a_checkout(unpacked: Unpacked, tmp_path: Path) -> None:
    """The unpacked zip is a plain install of the wheel: no dbcreds_testing, so no demo."""
    probe = ("import sys; sys.path[:0] = [sys.argv[1]]; sys.path.append(sys.argv[2])\n"
             "from dbcreds.cli import main\n"
             "sys.exit(main(['demo', '--duration', '5']))")
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", probe, str(unpacked.code), str(unpacked.runtime)],
        cwd=tmp_path, env={"PATH": os.environ.get("PATH", ""), "LANG": "C.UTF-8"},
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "the demo needs a checkout of the dbcreds repository: make demo" in proc.stderr
    assert "Traceback" not in proc.stderr


# -- the unpacked zip works --------------------------------------------------------------------


def test_unpacked_zip_imports_the_handler(unpacked: Unpacked, tmp_path: Path) -> None:
    doc = run_unpacked(unpacked, tmp_path / "report.json")
    files = doc["files"]
    assert doc["handler"] == "dbcreds.rotation.handler"
    assert Path(files["dbcreds"]).is_relative_to(unpacked.code)
    assert Path(files["dbcreds.rotation"]).is_relative_to(unpacked.code)
    assert Path(files["psycopg"]).is_relative_to(unpacked.code)
    assert Path(files["boto3"]).is_relative_to(unpacked.runtime)
    # psycopg runs on the compiled psycopg-binary of the zip, not a libpq of this machine
    assert doc["impl"] == "binary"
    assert Path(files["psycopg_binary.pq"]).is_relative_to(unpacked.code)


def test_unpacked_zip_rotates_against_the_local_stack(
    unpacked: Unpacked, stack: Any, aws_env: dict[str, str], app: Any, tmp_path: Path
) -> None:
    """Secrets Manager's part (register the pending version, invoke four steps) is played by
    this test; each step is one fresh interpreter running the unpacked code's lambda_handler."""
    from dbcreds_testing.endpoint import register_with_test_stack

    sm = stack.sm()
    stack.enable_rotation(app.secret_id)
    token = str(uuid.uuid4())
    register_with_test_stack(stack.secrets.url)(app.secret_id, token)
    env = dict(aws_env)  # the stack's CA as the function's CA bundle: verify-full
    for step in ("createSecret", "setSecret", "testSecret", "finishSecret"):
        event = {"SecretId": app.arn, "ClientRequestToken": token, "Step": step}
        doc = run_unpacked(unpacked, tmp_path / f"{step}.json", event, env)
        assert Path(doc["files"]["dbcreds.rotation.steps"]).is_relative_to(unpacked.code)

    stages = sm.describe_secret(SecretId=app.secret_id)["VersionIdsToStages"]
    assert "AWSCURRENT" in stages[token]
    current = json.loads(
        sm.get_secret_value(SecretId=app.secret_id, VersionStage="AWSCURRENT")["SecretString"]
    )
    assert current["username"] == app.username
    assert current["password"] != app.password
    with stack.connect(app.username, current["password"], connect_timeout=5) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (app.username,)
    with pytest.raises(Exception, match="password authentication failed"):
        stack.connect(app.username, app.password, connect_timeout=5).close()
