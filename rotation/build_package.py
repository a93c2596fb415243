#!/usr/bin/env python3
"""Build the rotation Lambda's deployment zip, byte for byte reproducibly.

    python rotation/build_package.py build [--arch arm64] [--arch x86_64] [--dist dist]
    python rotation/build_package.py lock          # refresh the pinned requirements

``make package`` runs ``build`` for both Lambda architectures and writes
``dist/dbcreds-rotation-<arch>.zip``. Each zip holds, at its root:

* ``dbcreds``, built from this source tree as a wheel (``pip wheel``, hatchling pinned by
  ``requirements-build.txt``) and installed from that wheel;
* its dependencies for the Lambda runtime, ``psycopg[binary]`` included, installed by pip from
  manylinux wheels only (``--platform manylinux_2_X_<arch> --only-binary=:all: --python-version
  3.12 --implementation cp``), every one pinned to a version and sha256 in
  ``requirements-lambda.txt`` (``--require-hashes``);
* ``dbcreds_example_app.py``, the example application handler of ``template.yaml``.

boto3 is not in the zip: the Lambda Python runtime provides it (see ``rotation/README.md`` for
why); ``--bundle-boto3`` adds the pinned ``requirements-lambda-boto3.txt`` set instead.

Reproducible means: the same source tree, lock files, Python ``zlib`` and flags give the same
bytes. Entries are sorted, every timestamp is ``SOURCE_DATE_EPOCH`` (default 1980-01-01, the
earliest a zip can hold), every file is mode 0644, there are no directory entries, no
``__pycache__`` and none of the files whose content depends on the machine or the moment of the
install (``bin/`` scripts with this interpreter's path in their shebang, and the dist-info files
``RECORD``, ``INSTALLER``, ``REQUESTED``, ``direct_url.json``).

The zip carries no ``.pyc``: Python 3.12 byte code can only be written by a 3.12 interpreter,
and a build must not depend on which one the builder happens to have.

This script needs Python >= 3.10 with pip; it uses only the standard library and ``packaging``
(from the environment, or pip's vendored copy).
"""

from __future__ import annotations

import argparse
import email.parser
import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

try:  # packaging is everywhere pip is; fall back to pip's copy on a bare interpreter
    from packaging.markers import Marker
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version
except ImportError:  # pragma: no cover - depends on the builder's environment
    from pip._vendor.packaging.markers import Marker  # type: ignore[assignment,no-redef,unused-ignore]
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[assignment,no-redef,unused-ignore]
    from pip._vendor.packaging.utils import canonicalize_name  # type: ignore[assignment,no-redef,unused-ignore]
    from pip._vendor.packaging.version import Version  # type: ignore[assignment,no-redef,unused-ignore]

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
LOCK = HERE / "requirements-lambda.txt"
BOTO3_LOCK = HERE / "requirements-lambda-boto3.txt"
BUILD_LOCK = HERE / "requirements-build.txt"
EXAMPLE_APP = HERE / "example_app" / "dbcreds_example_app.py"
CA_BUNDLE_ARCNAME = "certs/ca-bundle.pem"

#: the Python of the Lambda runtime the template deploys (``Runtime: python3.12``)
LAMBDA_PYTHON = "3.12"
#: the highest glibc the runtime has: python3.12 runs on Amazon Linux 2023 (glibc 2.34)
LAMBDA_GLIBC_MINOR = 34
#: Lambda architecture name -> (manylinux machine, ELF e_machine)
ARCHES = {"arm64": ("aarch64", 0xB7), "x86_64": ("x86_64", 0x3E)}
#: the extras of dbcreds the zip carries
EXTRAS = ("binary",)
#: the distributions the Lambda Python runtime already provides
RUNTIME_PROVIDED = frozenset({"boto3"})
#: Python versions the lock covers: the Lambda runtime's, and the ones a developer or CI
#: interpreter may have for the local import test (tests/test_package.py). Not 3.10:
#: cachetools 8 needs 3.11, and one lock must hold one version of each distribution.
LOCK_PYTHONS = ("3.11", "3.12")
#: 1980-01-01T00:00:00Z: the earliest time a zip entry can carry
ZIP_EPOCH = 315532800
#: dist-info files whose content depends on the install (paths, tool, time), not the inputs
VOLATILE_DIST_INFO = frozenset({"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"})


class BuildError(Exception):
    """The package cannot be built as asked; the message says why and what to do."""


@dataclass(frozen=True)
class Target:
    """One platform the zip is built for."""

    arch: str  # Lambda's name: arm64 or x86_64
    python: str = LAMBDA_PYTHON  # "3.12"

    @property
    def machine(self) -> str:
        return ARCHES[self.arch][0]

    @property
    def elf_machine(self) -> int:
        return ARCHES[self.arch][1]

    @property
    def abi(self) -> str:
        return "cp" + self.python.replace(".", "")

    def pip_platform_args(self) -> list[str]:
        """pip flags selecting manylinux wheels that run on the Lambda runtime's glibc.

        pip does not expand ``manylinux_2_28`` to older tags by itself, so every glibc
        level from the runtime's down to manylinux2014 (2.17) is listed, newest first.
        (``manylinux2014`` alone would pick psycopg-binary 3.2 on aarch64: 3.3 ships
        manylinux_2_28 wheels only for that machine.)
        """
        args: list[str] = []
        for minor in range(LAMBDA_GLIBC_MINOR, 16, -1):
            args += ["--platform", f"manylinux_2_{minor}_{self.machine}"]
        args += ["--platform", f"manylinux2014_{self.machine}"]
        return [
            *args,
            "--only-binary=:all:",
            "--implementation",
            "cp",
            "--python-version",
            self.python,
            "--abi",
            self.abi,
        ]

    def marker_environment(self) -> dict[str, str]:
        return {
            "implementation_name": "cpython",
            "platform_python_implementation": "CPython",
            "os_name": "posix",
            "sys_platform": "linux",
            "platform_system": "Linux",
            "platform_machine": self.machine,
            "python_version": self.python,
            "python_full_version": self.python + ".0",
        }

    def zip_name(self) -> str:
        suffix = "" if self.python == LAMBDA_PYTHON else f"-py{self.python}"
        return f"dbcreds-rotation-{self.arch}{suffix}.zip"


# -- running pip ----------------------------------------------------------------------------


def _pip(python: str, args: Sequence[str], env: dict[str, str] | None = None) -> None:
    cmd = [python, "-m", "pip", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BuildError(
            f"pip failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
        )


def _pip_version(python: str) -> tuple[int, ...]:
    proc = subprocess.run(
        [python, "-m", "pip", "--version"], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise BuildError(f"{python} has no pip: {proc.stderr.strip()}")
    # "pip 26.3 from ... (python 3.11)"
    return tuple(int(p) for p in proc.stdout.split()[1].split(".")[:2] if p.isdigit())


def build_dbcreds_wheel(python: str, out_dir: Path, source_date_epoch: int) -> Path:
    """``pip wheel`` this source tree; the build backend comes from requirements-build.txt."""
    env = dict(os.environ)
    env["SOURCE_DATE_EPOCH"] = str(source_date_epoch)
    # Pin hatchling and its dependencies in pip's isolated build environment, so that the
    # wheel's metadata does not change with a hatchling release. pip >= 25.3 takes them as
    # --build-constraint (and ignores PIP_CONSTRAINT there); older pips only know
    # PIP_CONSTRAINT, which they pass on to the build environment.
    args = ["wheel", "--quiet", "--no-deps", "--wheel-dir", str(out_dir)]
    if _pip_version(python) >= (25, 3):
        args += ["--build-constraint", str(BUILD_LOCK)]
    else:
        env["PIP_CONSTRAINT"] = str(BUILD_LOCK)
    _pip(python, [*args, str(REPO)], env)
    wheels = sorted(out_dir.glob("dbcreds-*.whl"))
    if len(wheels) != 1:
        raise BuildError(f"expected one dbcreds wheel in {out_dir}, found {wheels}")
    return wheels[0]


def wheel_requirements(wheel: Path) -> list[Requirement]:
    """The ``Requires-Dist`` of a wheel, from its METADATA."""
    with zipfile.ZipFile(wheel) as zf:
        [meta] = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        message = email.parser.BytesParser().parsebytes(zf.read(meta))
    return [Requirement(value) for value in message.get_all("Requires-Dist") or []]


def runtime_requirements(
    requires: Iterable[Requirement], target: Target, *, bundle_boto3: bool
) -> list[Requirement]:
    """dbcreds' requirements on ``target`` with its ``binary`` extra, less what the runtime has."""
    env = target.marker_environment()
    chosen = []
    for req in requires:
        if req.marker is not None and not any(
            _evaluate(req.marker, {**env, "extra": extra}) for extra in ("", *EXTRAS)
        ):
            continue
        if canonicalize_name(req.name) in RUNTIME_PROVIDED and not bundle_boto3:
            continue
        chosen.append(req)
    return chosen


def _evaluate(marker: Marker, env: dict[str, str]) -> bool:
    return bool(marker.evaluate(env))


def _unmarked(req: Requirement) -> str:
    """``req`` for pip's command line, its marker (already evaluated) dropped."""
    extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
    return f"{req.name}{extras}{req.specifier}"


# -- build ----------------------------------------------------------------------------------


def install_tree(
    python: str,
    target: Target,
    wheel: Path,
    site: Path,
    *,
    bundle_boto3: bool,
) -> None:
    """pip-install the locked dependencies and the dbcreds wheel into ``site``."""
    wheel_hash = hashlib.sha256(wheel.read_bytes()).hexdigest()
    reqs = site.parent / "requirements.txt"
    lines = [f"-r {LOCK}"]
    if bundle_boto3:
        lines.append(f"-r {BOTO3_LOCK}")
    lines.append(f"dbcreds @ {wheel.resolve().as_uri()} --hash=sha256:{wheel_hash}")
    reqs.write_text("\n".join(lines) + "\n")
    _pip(
        python,
        [
            "install",
            "--quiet",
            "--no-deps",  # the lock is the complete set; nothing is resolved at build time
            "--require-hashes",
            "--no-compile",
            "--no-warn-script-location",
            "--target",
            str(site),
            *target.pip_platform_args(),
            "-r",
            str(reqs),
        ],
    )


def check_tree(site: Path, target: Target, requires: Sequence[Requirement]) -> None:
    """Fail unless every requirement is installed at an allowed version and the native
    libraries are for the target machine (a stale lock or a wrong wheel stops the build)."""
    installed: dict[str, Version] = {}
    for meta in site.glob("*.dist-info/METADATA"):
        message = email.parser.BytesParser().parsebytes(meta.read_bytes())
        installed[canonicalize_name(str(message["Name"]))] = Version(str(message["Version"]))
    for req in requires:
        version = installed.get(canonicalize_name(req.name))
        if version is None:
            raise BuildError(
                f"{req} is required by dbcreds but not in the lock: run "
                "`python rotation/build_package.py lock`"
            )
        if not req.specifier.contains(version, prereleases=True):
            raise BuildError(
                f"the lock pins {req.name}=={version}, which does not satisfy {req}: run "
                "`python rotation/build_package.py lock`"
            )
    native = [p for p in site.rglob("*.so*") if p.is_file()]
    if not native:
        raise BuildError("no native library in the tree: psycopg[binary] is missing")
    for lib in native:
        header = lib.read_bytes()[:20]
        if header[:4] != b"\x7fELF":
            continue
        machine = int.from_bytes(header[18:20], "little")
        if machine != target.elf_machine:
            raise BuildError(f"{lib.relative_to(site)} is not a {target.machine} library")
    tag = f".cpython-{target.abi[2:]}-"
    extensions = [p.name for p in native if ".cpython-" in p.name]
    if any(tag not in name for name in extensions):
        raise BuildError(f"extension modules for another Python than {target.python}: {extensions}")


def _kept(rel: PurePosixPath) -> bool:
    parts = rel.parts
    if parts[0] == "bin":  # console scripts: their shebang is this machine's interpreter
        return False
    if "__pycache__" in parts or rel.suffix in (".pyc", ".pyo"):
        return False
    return not (
        len(parts) == 2 and parts[0].endswith(".dist-info") and parts[1] in VOLATILE_DIST_INFO
    )


def package_files(site: Path) -> Iterator[tuple[str, Path]]:
    """(name in the zip, file) for every file that goes into the zip, sorted by name."""
    entries = []
    for path in site.rglob("*"):
        if path.is_dir():
            continue
        rel = PurePosixPath(path.relative_to(site).as_posix())
        if _kept(rel):
            entries.append((str(rel), path))
    yield from sorted(entries)


def write_zip(entries: Iterable[tuple[str, Path]], out: Path, source_date_epoch: int) -> None:
    """A zip whose bytes depend only on the entries' names and contents."""
    date_time = time.gmtime(max(source_date_epoch, ZIP_EPOCH))[:6]
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    with zipfile.ZipFile(partial, "w") as zf:
        for name, path in entries:
            info = zipfile.ZipInfo(name, date_time=date_time)
            info.create_system = 3  # unix, so that external_attr holds the mode
            info.external_attr = 0o100644 << 16  # regular file, rw-r--r--
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes(), compresslevel=9)
    os.replace(partial, out)


def build(
    targets: Sequence[Target],
    dist: Path,
    *,
    python: str,
    bundle_boto3: bool,
    ca_bundle: Path | None,
    source_date_epoch: int,
) -> list[Path]:
    outputs = []
    with tempfile.TemporaryDirectory(prefix="dbcreds-package-") as tmp:
        wheel = build_dbcreds_wheel(python, Path(tmp) / "wheel", source_date_epoch)
        requires = wheel_requirements(wheel)
        for target in targets:
            site = Path(tmp) / target.zip_name() / "site"
            site.mkdir(parents=True)
            install_tree(python, target, wheel, site, bundle_boto3=bundle_boto3)
            check_tree(
                site, target, runtime_requirements(requires, target, bundle_boto3=bundle_boto3)
            )
            shutil.copyfile(EXAMPLE_APP, site / EXAMPLE_APP.name)
            if ca_bundle is not None:
                (site / CA_BUNDLE_ARCNAME).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(ca_bundle, site / CA_BUNDLE_ARCNAME)
            out = dist / target.zip_name()
            write_zip(package_files(site), out, source_date_epoch)
            outputs.append(out)
    return outputs


# -- lock -----------------------------------------------------------------------------------


def resolve(python: str, target: Target, requirements: Sequence[str]) -> dict[str, tuple[str, str]]:
    """pip's resolution of ``requirements`` for ``target``: name -> (version, sha256)."""
    with tempfile.TemporaryDirectory(prefix="dbcreds-lock-") as tmp:
        report = Path(tmp) / "report.json"
        _pip(
            python,
            [
                "install",
                "--quiet",
                "--dry-run",
                "--ignore-installed",
                "--report",
                str(report),
                "--target",
                str(Path(tmp) / "unused"),
                *target.pip_platform_args(),
                *requirements,
            ],
        )
        data = json.loads(report.read_text())
    resolved: dict[str, tuple[str, str]] = {}
    for item in data["install"]:
        info = item["download_info"]
        digest = info.get("archive_info", {}).get("hashes", {}).get("sha256")
        if digest is None and info["url"].startswith("file://"):
            digest = hashlib.sha256(Path(info["url"][len("file://") :]).read_bytes()).hexdigest()
        if digest is None:
            raise BuildError(f"no sha256 for {info['url']}")
        resolved[canonicalize_name(item["metadata"]["name"])] = (
            item["metadata"]["version"],
            digest,
        )
    return resolved


def lock_lines(
    python: str, targets: Sequence[Target], requirements: Sequence[str], exclude: Iterable[str] = ()
) -> list[str]:
    """``name==version --hash=...`` lines; every target must resolve to the same versions."""
    versions: dict[str, str] | None = None
    hashes: dict[str, set[str]] = {}
    for target in targets:
        resolved = {
            k: v for k, v in resolve(python, target, requirements).items() if k not in exclude
        }
        these = {name: version for name, (version, _) in resolved.items()}
        if versions is not None and these != versions:
            raise BuildError(
                f"{target} resolves to {these}, other targets to {versions}: pin the "
                "differing requirement in pyproject.toml or drop the target"
            )
        versions = these
        for name, (_, digest) in resolved.items():
            hashes.setdefault(name, set()).add(digest)
    assert versions is not None
    lines = []
    for name in sorted(versions):
        lines.append(f"{name}=={versions[name]} \\")
        digests = sorted(hashes[name])
        for i, digest in enumerate(digests):
            lines.append(f"    --hash=sha256:{digest}" + (" \\" if i < len(digests) - 1 else ""))
    return lines


def write_lock(path: Path, purpose: str, lines: Sequence[str]) -> None:
    header = [
        "# Generated by `python rotation/build_package.py lock`; do not edit by hand.",
        *(f"# {line}" for line in purpose.splitlines()),
    ]
    path.write_text("\n".join([*header, *lines]) + "\n")


def lock(python: str) -> None:
    """Rewrite the three lock files from pyproject.toml's requirements and today's index."""
    with tempfile.TemporaryDirectory(prefix="dbcreds-lock-") as tmp:
        # the build backend first: the wheel build below already uses it if it exists
        build_req = _build_system_requires()
        build_lines = [
            f"{name}=={version}"
            for name, (version, _) in sorted(resolve(python, _host_target(), build_req).items())
        ]
        write_lock(
            BUILD_LOCK,
            "The build backend of the dbcreds wheel inside the rotation Lambda zip\n"
            "(build constraints for pip's isolated build environment).",
            build_lines,
        )
        wheel = build_dbcreds_wheel(python, Path(tmp), ZIP_EPOCH)
        requires = wheel_requirements(wheel)
    targets = [Target(arch, py) for py in LOCK_PYTHONS for arch in ARCHES]
    base = sorted(
        {
            _unmarked(r)
            for t in targets
            for r in runtime_requirements(requires, t, bundle_boto3=False)
        }
    )
    base_lines = lock_lines(python, targets, base)
    write_lock(
        LOCK,
        "Everything the rotation Lambda zip installs besides dbcreds: exact versions, and the\n"
        "sha256 of each wheel for manylinux aarch64/x86_64 and CPython "
        + ", ".join(LOCK_PYTHONS)
        + f"\n({LAMBDA_PYTHON} is the Lambda runtime; the others serve the local import test).\n"
        "boto3 is not here: the Lambda runtime provides it (rotation/README.md).",
        base_lines,
    )
    locked = {canonicalize_name(line.split("==")[0]) for line in base_lines if "==" in line}
    boto3 = sorted(
        {_unmarked(r) for r in requires if canonicalize_name(r.name) in RUNTIME_PROVIDED}
    )
    write_lock(
        BOTO3_LOCK,
        "boto3 and its dependencies, added to the zip by `--bundle-boto3` (BUNDLE_BOTO3=1).",
        lock_lines(python, targets, boto3, exclude=locked),
    )


def _build_system_requires() -> list[str]:
    try:
        tomllib = importlib.import_module("tomllib")
    except ImportError:  # Python 3.10
        raise BuildError("`lock` needs Python >= 3.11 (tomllib)") from None
    text = (REPO / "pyproject.toml").read_text()
    return [str(r) for r in tomllib.loads(text)["build-system"]["requires"]]


def _host_target() -> Target:
    import platform

    machine = platform.machine()
    arch = "arm64" if machine in ("aarch64", "arm64") else "x86_64"
    return Target(arch, f"{sys.version_info.major}.{sys.version_info.minor}")


# -- command line ---------------------------------------------------------------------------


def _source_date_epoch() -> int:
    raw = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not raw:
        return ZIP_EPOCH
    try:
        return int(raw)
    except ValueError:
        raise BuildError(f"SOURCE_DATE_EPOCH must be an integer, got {raw!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build dist/dbcreds-rotation-<arch>.zip")
    b.add_argument(
        "--arch",
        action="append",
        choices=sorted(ARCHES),
        help="Lambda architecture (repeatable; default: both)",
    )
    b.add_argument(
        "--python-version",
        default=LAMBDA_PYTHON,
        help=f"CPython version of the wheels (default {LAMBDA_PYTHON}, the template's runtime; "
        "another version adds -py<version> to the zip name)",
    )
    b.add_argument("--dist", type=Path, default=REPO / "dist", help="output directory")
    b.add_argument(
        "--bundle-boto3",
        action="store_true",
        help="put boto3 (requirements-lambda-boto3.txt) in the zip instead of using the runtime's",
    )
    b.add_argument(
        "--ca-bundle",
        type=Path,
        help=f"a PEM file to ship as {CA_BUNDLE_ARCNAME} (e.g. the RDS global bundle, for "
        "DBCREDS_ROTATION_SSLMODE=verify-full)",
    )
    sub.add_parser("lock", help="re-resolve and rewrite the requirements-*.txt lock files")
    args = parser.parse_args(argv)
    python = sys.executable
    try:
        if args.command == "lock":
            lock(python)
            for path in (LOCK, BOTO3_LOCK, BUILD_LOCK):
                print(f"wrote {path.relative_to(REPO)}")
            return 0
        targets = [Target(arch, args.python_version) for arch in (args.arch or sorted(ARCHES))]
        outputs = build(
            targets,
            args.dist,
            python=python,
            bundle_boto3=args.bundle_boto3,
            ca_bundle=args.ca_bundle,
            source_date_epoch=_source_date_epoch(),
        )
    except BuildError as exc:
        print(f"build_package: {exc}", file=sys.stderr)
        return 1
    for out in outputs:
        digest = hashlib.sha256(out.read_bytes()).hexdigest()
        print(f"{digest}  {out}  ({out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
