"""Process plumbing shared by the stack's servers: binaries, ports, waits, children, passwords.

Every server the stack starts is a direct child (``subprocess.Popen``, no daemonizing, no
``runuser`` in between), so its pid is the server's pid and we can always signal it. Three nets
make sure none outlives the test process:

- each server object stops its child in ``stop()``/``close()``;
- an ``atexit`` hook stops every child still registered here;
- on Linux each child gets a parent-death signal (``PR_SET_PDEATHSIG``), so even a test process
  killed with SIGKILL takes its servers with it. The signal fires when the *thread* that started
  the child exits: start servers from a long-lived thread (the main thread, as pytest does).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import glob
import logging
import os
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger("dbcreds_testing")

#: Unprivileged account that runs PostgreSQL and PgBouncer when we are root (both refuse root).
SERVICE_USER = "postgres"

_PR_SET_PDEATHSIG = 1
_children: dict[int, tuple[subprocess.Popen[bytes], int]] = {}
_children_lock = threading.Lock()


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def find_binary(name: str) -> str:
    """Locate a server binary: PATH, then /usr/sbin, then the newest /usr/lib/postgresql/*/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = [f"/usr/sbin/{name}", f"/usr/local/sbin/{name}"]
    candidates += sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    for path in candidates:
        if os.access(path, os.X_OK):
            return path
    raise FileNotFoundError(f"{name} not found on PATH, in /usr/sbin or /usr/lib/postgresql/*/bin")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (callers retry if a race takes it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(
    condition: Callable[[], object],
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
    abort: Callable[[], str | None] | None = None,
) -> None:
    """Poll ``condition`` until truthy; after ``timeout`` raise ``TimeoutError`` naming ``what``.

    ``abort`` is checked every round and may return a reason to give up at once (e.g. the
    server process died): waiting out the timeout would only hide the cause.
    """
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return
        if abort is not None:
            reason = abort()
            if reason:
                raise RuntimeError(f"gave up waiting for {what}: {reason}")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:.1f}s")
        time.sleep(interval)


def random_password(length: int = 32) -> str:
    """A password with letters, digits and punctuation that need quoting (but no quote/backslash
    trouble for conninfo: make_conninfo quotes properly anyway)."""
    alphabet = string.ascii_letters + string.digits + "!#%&*+,-.:;<=>?@^_~"
    return "".join(secrets.choice(alphabet) for _ in range(length))


def make_private_dir(path: Path) -> None:
    """Create ``path`` (0700) owned by the service user when we are root."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    give_to_service_user(path)


def give_to_service_user(path: Path) -> None:
    if is_root():
        shutil.chown(path, user=SERVICE_USER, group=SERVICE_USER)


def write_private_file(path: Path, text: str) -> None:
    """Write ``text`` atomically to a 0600 file readable by the service user."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    give_to_service_user(tmp)
    os.replace(tmp, path)


def _parent_death_signal(sig: int) -> Callable[[], None] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before fork, not in the child
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)

    return preexec


def spawn(
    argv: Sequence[str],
    *,
    log_path: Path,
    stop_signal: int = signal.SIGTERM,
    as_service_user: bool = True,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start a server child with stdout+stderr appended to ``log_path``; register it for cleanup.

    ``stop_signal`` is what the server treats as "shut down now" (PostgreSQL: SIGQUIT is
    immediate, SIGINT fast; PgBouncer 1.18: SIGTERM immediate); it is also the parent-death
    signal.
    """
    kwargs: dict[str, Any] = {}
    if as_service_user and is_root():
        kwargs.update(user=SERVICE_USER, group=SERVICE_USER, extra_groups=[])
    with open(log_path, "ab") as logf:  # the child keeps its own descriptor
        give_to_service_user(log_path)
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            preexec_fn=_parent_death_signal(stop_signal),
            start_new_session=True,  # a Ctrl-C in the terminal is for pytest, not for the servers
            **kwargs,
        )
    with _children_lock:
        _children[proc.pid] = (proc, stop_signal)
    return proc


def terminate(
    proc: subprocess.Popen[bytes] | None,
    *,
    sig: int | None = None,
    timeout: float = 15.0,
) -> None:
    """Signal ``proc`` (its registered stop signal unless ``sig``), wait, SIGKILL if it lingers."""
    if proc is None:
        return
    with _children_lock:
        entry = _children.pop(proc.pid, None)
    if proc.poll() is None:
        stop_sig = sig if sig is not None else (entry[1] if entry else signal.SIGTERM)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(stop_sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning(
                "pid %d ignored signal %d for %.0fs: killing it", proc.pid, stop_sig, timeout
            )
            proc.kill()
            proc.wait(5)


def live_children() -> list[int]:
    """Pids of registered children that are still running."""
    with _children_lock:
        return [pid for pid, (proc, _) in _children.items() if proc.poll() is None]


def pid_alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError, ProcessLookupError):
        if sys.platform.startswith("linux"):
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return state not in ("Z", "X")


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux /proc), e.g. PostgreSQL's backends."""
    out = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat, encoding="ascii", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if len(fields) > 1 and fields[1] == str(pid):
            out.append(int(stat.split("/")[2]))
    return out


def tail(path: Path | None, lines: int = 30) -> str:
    """Last lines of a log file, for error messages (our logs never hold passwords)."""
    if path is None or not path.exists():
        return ""
    text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join(text[-lines:])


@atexit.register
def _stop_all_children() -> None:
    with _children_lock:
        procs = list(_children.values())
    for proc, _ in procs:
        terminate(proc, timeout=5.0)


_S = TypeVar("_S", bound="Service")


class Service:
    """A server the stack starts: ``with`` starts it, and closes it even if starting failed."""

    def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _S) -> _S:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
