"""A real PostgreSQL 15 with scram-sha-256 everywhere, for tests, the demo and benchmarks.

``PostgresServer.select()`` picks where it comes from:

1. ``DBCREDS_TEST_DSN`` set: that existing server (a superuser conninfo); never started,
   stopped or restarted by us.
2. A reachable Docker engine: testcontainers' ``PostgresContainer("postgres:15")`` initialised
   with ``--auth=scram-sha-256``.
3. Otherwise (the development and CI machines): the machine's binaries (``initdb``,
   ``postgres``), a throw-away cluster in a temp dir on a free 127.0.0.1 port, run as the
   ``postgres`` account when we are root (PostgreSQL refuses to run as root).

TLS: given a `LocalCA`, the server we start serves its certificate and accepts TLS connections
only (``hostssl`` lines in pg_hba.conf), and every client connection made through `dsn()`
verifies it (``sslmode=verify-full``). An external server (``DBCREDS_TEST_DSN``) must serve TLS
too: ``DBCREDS_TEST_SSLROOTCERT`` names the CA bundle that signs its certificate.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _proc

if TYPE_CHECKING:
    import psycopg

    from .tls import LocalCA

__all__ = [
    "DockerPostgres",
    "ExternalPostgres",
    "LocalPostgres",
    "PostgresServer",
    "docker_available",
]

#: Settings every local cluster gets (before the caller's). Durability is traded for speed:
#: the cluster is thrown away after the run.
BASE_SETTINGS: dict[str, str] = {
    "listen_addresses": "127.0.0.1",
    "unix_socket_directories": "",
    "password_encryption": "scram-sha-256",
    "max_connections": "200",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "log_line_prefix": "%m [%p] %q%u@%d ",
}


def docker_available(timeout: float = 3.0) -> bool:
    """True when a Docker engine answers ``docker info`` within ``timeout`` seconds."""
    docker = shutil.which("docker")
    host = os.environ.get("DOCKER_HOST", "")
    if docker is None or not (host or os.path.exists("/var/run/docker.sock")):
        return False
    try:
        done = subprocess.run([docker, "info"], capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


class PostgresServer(_proc.Service):
    """What the stack needs from a PostgreSQL server, whichever kind it is.

    ``host``/``port`` are where clients (and the bouncers) connect; ``admin_dsn`` is a
    superuser conninfo (it holds the superuser password: don't log it). ``log_path`` is the
    server log (``None`` when the server is not ours to read).
    """

    kind = "abstract"
    #: False for a server we did not start (``DBCREDS_TEST_DSN``): tests that restart skip.
    supports_restart = True

    def __init__(self, tls: LocalCA | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = 0
        self.admin_user = "postgres"
        self._admin_password = _proc.random_password()
        self._log_path: Path | None = None
        self.tls = tls
        #: libpq parameters with which clients verify this server (empty: no TLS)
        self.client_tls: dict[str, str] = tls.client_params() if tls is not None else {}

    @staticmethod
    def select(
        settings: Mapping[str, str] | None = None, *, tls: LocalCA | None = None
    ) -> PostgresServer:
        """The server the environment asks for (see the module docstring); not started yet."""
        dsn = os.environ.get("DBCREDS_TEST_DSN")
        if dsn:
            return ExternalPostgres(dsn)
        if docker_available():
            return DockerPostgres(settings, tls=tls)
        return LocalPostgres(settings, tls=tls)

    @property
    def ca_file(self) -> str | None:
        """The CA bundle that signs this server's certificate (None: the server has no TLS)."""
        return self.client_tls.get("sslrootcert")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.host}:{self.port}>"

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    @property
    def admin_dsn(self) -> str:
        return self.dsn(self.admin_user, self._admin_password, "postgres")

    def dsn(self, user: str, password: str | None, dbname: str = "postgres", **extra: Any) -> str:
        """A conninfo string for this server (quoting handled by psycopg)."""
        from psycopg.conninfo import make_conninfo

        params: dict[str, Any] = {"host": self.host, "port": self.port, "user": user}
        params.update(dbname=dbname, password=password, connect_timeout=5, **self.client_tls)
        params.update(extra)
        return make_conninfo("", **{k: v for k, v in params.items() if v is not None})

    def connect_admin(self, dbname: str | None = None) -> psycopg.Connection[Any]:
        """An autocommit superuser connection (to ``dbname``, default ``postgres``)."""
        import psycopg

        dsn = self.admin_dsn
        if dbname:
            from psycopg.conninfo import make_conninfo

            dsn = make_conninfo(dsn, dbname=dbname)
        return psycopg.connect(dsn, autocommit=True)

    def accepts_connections(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.admin_dsn, connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def wait_ready(self, timeout: float = 60.0) -> None:
        _proc.wait_until(
            self.accepts_connections,
            timeout=timeout,
            what=f"PostgreSQL on {self.host}:{self.port} accepting connections",
            interval=0.1,
            abort=self._died,
        )

    def _died(self) -> str | None:
        return None

    def pids(self) -> list[int]:
        """Pids of our server processes (postmaster and backends); empty when not ours."""
        return []

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def restart(self) -> None:
        """Stop and start again: same data, same port."""
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()


class LocalPostgres(PostgresServer):
    """A throw-away cluster from the machine's PostgreSQL binaries."""

    kind = "local"

    def __init__(
        self,
        settings: Mapping[str, str] | None = None,
        *,
        workdir: Path | None = None,
        tls: LocalCA | None = None,
    ) -> None:
        super().__init__(tls)
        tls_settings = {}
        if tls is not None:
            tls_settings = {
                "ssl": "on",
                "ssl_cert_file": str(tls.cert_file),
                "ssl_key_file": str(tls.key_file),
            }
        self.settings = {**BASE_SETTINGS, **tls_settings, **(settings or {})}
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="dbcreds-pg-"))
        _proc.make_private_dir(self.workdir)
        self.datadir = self.workdir / "data"
        self._log_path = self.workdir / "postgresql.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def _initdb(self) -> None:
        pwfile = self.workdir / "pwfile"
        _proc.write_private_file(pwfile, self._admin_password + "\n")
        argv = [
            _proc.find_binary("initdb"),
            "-D",
            str(self.datadir),
            "-U",
            self.admin_user,
            f"--pwfile={pwfile}",
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ]
        kwargs: dict[str, Any] = {}
        if _proc.is_root():
            kwargs.update(user=_proc.SERVICE_USER, group=_proc.SERVICE_USER, extra_groups=[])
        try:
            with open(self.workdir / "initdb.log", "wb") as out:
                done = subprocess.run(
                    argv, stdout=out, stderr=subprocess.STDOUT, timeout=120, check=False, **kwargs
                )
        finally:
            pwfile.unlink(missing_ok=True)
        if done.returncode != 0:
            raise RuntimeError(
                f"initdb failed ({done.returncode}):\n{_proc.tail(self.workdir / 'initdb.log')}"
            )
        if self.tls is not None:  # TLS connections only, SCRAM only
            _proc.write_private_file(
                self.datadir / "pg_hba.conf",
                "hostssl all all 127.0.0.1/32 scram-sha-256\n"
                "hostssl all all ::1/128 scram-sha-256\n",
            )

    def _died(self) -> str | None:
        if self._proc is not None and self._proc.poll() is not None:
            return f"postgres exited with {self._proc.returncode}:\n{_proc.tail(self._log_path)}"
        return None

    def start(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        if not (self.datadir / "PG_VERSION").exists():
            self._initdb()
        fixed_port = self.port != 0
        for attempt in range(3):
            if not fixed_port:
                self.port = _proc.free_port()
            argv = [_proc.find_binary("postgres"), "-D", str(self.datadir), "-p", str(self.port)]
            for key, value in self.settings.items():
                argv += ["-c", f"{key}={value}"]
            assert self._log_path is not None
            # SIGQUIT is PostgreSQL's immediate shutdown: the right parent-death signal.
            self._proc = _proc.spawn(argv, log_path=self._log_path, stop_signal=signal.SIGQUIT)
            try:
                self.wait_ready()
                return
            except RuntimeError:
                busy = "Address already in use" in _proc.tail(self._log_path, 10)
                if not busy or attempt == 2:
                    raise
                if fixed_port:  # a restart: the old port will free up shortly
                    _proc.wait_until(
                        lambda: not _proc.port_open(self.host, self.port),
                        timeout=10,
                        what="old PostgreSQL port to free up",
                    )

    def stop(self) -> None:
        # SIGINT = fast shutdown: disconnect clients, checkpoint, exit.
        _proc.terminate(self._proc, sig=signal.SIGINT, timeout=30)
        self._proc = None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def pids(self) -> list[int]:
        if not self.is_running():
            return []
        assert self._proc is not None
        return [self._proc.pid, *_proc.child_pids(self._proc.pid)]

    def close(self) -> None:
        self.stop()
        if self._own_workdir and not os.environ.get("DBCREDS_TEST_KEEP"):
            shutil.rmtree(self.workdir, ignore_errors=True)


class DockerPostgres(PostgresServer):
    """testcontainers' postgres:15, initialised for scram-sha-256 (used where Docker runs)."""

    kind = "docker"

    def __init__(
        self, settings: Mapping[str, str] | None = None, *, tls: LocalCA | None = None
    ) -> None:
        super().__init__(tls)
        self.settings = {"password_encryption": "scram-sha-256", **(settings or {})}
        if tls is not None:  # the CA's directory is mounted at /tls (not run here: no Docker)
            self.settings.update(
                ssl="on", ssl_cert_file="/tls/server.crt", ssl_key_file="/tls/server.key"
            )
        self._container: Any = None
        self._log_file = Path(tempfile.mkdtemp(prefix="dbcreds-pg-")) / "postgresql.log"

    @property
    def log_path(self) -> Path | None:
        if self._container is not None:  # snapshot of `docker logs`
            out, err = self._container.get_logs()
            self._log_file.write_bytes(out + err)
        return self._log_file

    def _refresh_address(self) -> None:
        self.host = self._container.get_container_host_ip()
        self.port = int(self._container.get_exposed_port(5432))

    def start(self) -> None:
        if self._container is None:
            try:
                from testcontainers.community.postgres import PostgresContainer
            except ImportError:  # testcontainers < 4.14
                from testcontainers.postgres import PostgresContainer

            container = PostgresContainer(
                "postgres:15",
                username=self.admin_user,
                password=self._admin_password,
                dbname="postgres",
            )
            container.with_env("POSTGRES_HOST_AUTH_METHOD", "scram-sha-256")
            container.with_env("POSTGRES_INITDB_ARGS", "--auth=scram-sha-256")
            if self.tls is not None:
                container.with_volume_mapping(str(self.tls.workdir), "/tls", "ro")
            args = " ".join(f"-c {k}={v}" for k, v in self.settings.items())
            container.with_command(f"postgres {args}")
            container.start()
            self._container = container
        else:
            self._container.get_wrapped_container().start()
        self._refresh_address()
        self.wait_ready()

    def stop(self) -> None:
        if self._container is not None:
            self._container.get_wrapped_container().stop()

    def restart(self) -> None:
        """Restart the container (same volume; Docker may map a new host port: re-read)."""
        self._container.get_wrapped_container().restart()
        self._refresh_address()
        self.wait_ready()

    def close(self) -> None:
        if self._container is not None:
            with contextlib.suppress(Exception):
                self._container.stop()
            self._container = None
        shutil.rmtree(self._log_file.parent, ignore_errors=True)


class ExternalPostgres(PostgresServer):
    """An existing server named by a superuser DSN (``DBCREDS_TEST_DSN``); never restarted."""

    kind = "external"
    supports_restart = False

    def __init__(self, dsn: str) -> None:
        from psycopg.conninfo import conninfo_to_dict

        super().__init__()
        params = conninfo_to_dict(dsn)
        root = os.environ.get("DBCREDS_TEST_SSLROOTCERT", "").strip()
        if root:
            self.client_tls = {"sslmode": "verify-full", "sslrootcert": root}
        self._dsn = dsn
        self.host = str(params.get("host") or "127.0.0.1")
        self.port = int(params.get("port") or 5432)
        self.admin_user = str(params.get("user") or "postgres")
        self._admin_password = str(params.get("password") or "")

    @property
    def admin_dsn(self) -> str:
        from psycopg.conninfo import make_conninfo

        return make_conninfo(self._dsn, **self.client_tls)

    def start(self) -> None:
        self.wait_ready(timeout=10)

    def stop(self) -> None:
        pass

    def restart(self) -> None:
        raise RuntimeError("the DBCREDS_TEST_DSN server is not ours to restart")
