"""PgBouncer in front of the test PostgreSQL, in two behaviours.

``mode="auth_query"`` — a proxy that checks the LIVE database. PgBouncer logs in as
``auth_user`` and runs ``auth_query``, which calls the SECURITY DEFINER function
``pgbouncer.get_auth(text)`` (reads ``pg_shadow``; installed by ``start()`` in every database
and in ``template1``). Clients authenticate with SCRAM against the role's current verifier;
PgBouncer then logs into PostgreSQL reusing the client's SCRAM keys. A password change is seen
at the next login: AWSPENDING works as soon as setSecret ran.

``mode="auth_file"`` — behaves like RDS Proxy. The auth_file holds, for each watched secret,
the username and PLAINTEXT password of the secret's AWSCURRENT version, re-read from Secrets
Manager by a background thread about every ``refresh_interval`` seconds and applied with the
admin console's RELOAD when it changed. So it accepts the old password until it refreshes,
rejects AWSPENDING, and its own server logins fail after the database password changed until
it refreshes.

What a psycopg client sees (PgBouncer 1.18.0, observed here; pinned by tests/e2e/test_stack.py).
``str(exc)`` of the ``psycopg.OperationalError``, ``sqlstate`` None unless noted::

    wrong client password, either mode (PgBouncer's own SCRAM check):
        connection failed: connection to server at "127.0.0.1", port N failed:
        FATAL:  SASL authentication failed
    user unknown, auth_query mode (auth_query returned no row):
        ... FATAL:  no such user
    user unknown / secret not watched, auth_file mode:
        ... FATAL:  SASL authentication failed
    auth_file mode, PostgreSQL refuses the proxy's own (stale) password: PgBouncer forwards
    the server's message verbatim (no "server login failed" prefix); later clients of the
    same pool wait out server_login_retry and then get the same text:
        ... FATAL:  password authentication failed for user "<user>"
    PostgreSQL down (stopped / restarting), auth_query mode: the login itself needs a server
    (to run auth_query), so connect() fails; the first client after query_wait_timeout with
        ... FATAL:  query_wait_timeout
    and, for server_login_retry after each failed server login, the next ones at once with
        ... FATAL:  server login has been failing, try again later (server_login_retry)
    PostgreSQL down, auth_file mode, for a pool that has served before: connect() SUCCEEDS
    (PgBouncer answers the login from its cached server parameters) and the first query
    fails with psycopg.errors.ProtocolViolation, sqlstate 08P01, no "connection failed"
    prefix: "query_wait_timeout" (after query_wait_timeout), then
    "server login has been failing, try again later (server_login_retry)". A pool that never
    had a server connection makes connect() wait up to query_wait_timeout / connect_timeout.

For comparison, PostgreSQL itself says ``FATAL:  password authentication failed for user
"<user>"`` for a wrong password and for an unknown user alike.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from dbcreds._aws import secret_call

from . import _proc

if TYPE_CHECKING:
    import psycopg

    from .endpoint import SecretsManagerEndpoint
    from .postgres import PostgresServer

__all__ = ["ADMIN_USER", "AUTH_USER", "Mode", "PgBouncer"]

log = logging.getLogger("dbcreds_testing.pgbouncer")

Mode = Literal["auth_query", "auth_file"]
#: Role PgBouncer uses to run auth_query (created by the stack, no privileges but the function).
AUTH_USER = "dbcreds_pgbouncer_auth"
#: PgBouncer admin-console user (exists only in PgBouncer's auth_file, not in PostgreSQL).
ADMIN_USER = "dbcreds_pgbouncer_admin"

_AUTH_QUERY_SQL = """
CREATE SCHEMA IF NOT EXISTS pgbouncer;
CREATE OR REPLACE FUNCTION pgbouncer.get_auth(p_usename text)
RETURNS TABLE (usename name, passwd text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog AS
$$ SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = p_usename $$;
REVOKE ALL ON FUNCTION pgbouncer.get_auth(text) FROM PUBLIC;
"""


class _Entry(NamedTuple):
    username: str
    password: str
    version_id: str


class PgBouncer(_proc.Service):
    """One PgBouncer process on a free 127.0.0.1 port (see the module docstring for modes)."""

    def __init__(
        self,
        postgres: PostgresServer,
        *,
        mode: Mode = "auth_query",
        secrets: SecretsManagerEndpoint | None = None,
        refresh_interval: float = 1.0,
        server_login_retry: float = 0.5,
        query_wait_timeout: float = 20.0,
        settings: Mapping[str, str] | None = None,
        workdir: Path | None = None,
        name: str | None = None,
    ) -> None:
        if mode not in ("auth_query", "auth_file"):
            raise ValueError(f"mode must be 'auth_query' or 'auth_file', not {mode!r}")
        if mode == "auth_file" and secrets is None:
            raise ValueError("mode='auth_file' reads Secrets Manager: pass secrets=")
        self.postgres = postgres
        self.mode: Mode = mode
        self.secrets = secrets
        self.refresh_interval = refresh_interval
        self.name = name or f"pgbouncer-{mode}"
        self.settings = {
            "pool_mode": "transaction",
            "max_client_conn": "1000",
            "default_pool_size": "20",
            # After a failed server login PgBouncer refuses new clients of that pool for this
            # long ("server login has been failing"); 1.18 accepts fractions of a second.
            "server_login_retry": str(server_login_retry),
            # How long a client waits for a server connection, login included (RDS Proxy's
            # ConnectionBorrowTimeout is 120 s; tests want a bounded wait).
            "query_wait_timeout": str(query_wait_timeout),
            "ignore_startup_parameters": "extra_float_digits",
            # Idle server connections close after 30 s: a warmed pool (`warm`) lives through
            # a test's rotations and is gone before it holds the database's connections.
            "server_idle_timeout": "30",
            "log_connections": "1",
            "log_disconnections": "1",
            **(settings or {}),
        }
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=f"dbcreds-{self.name}-"))
        _proc.make_private_dir(self.workdir)
        self.log_path = self.workdir / "pgbouncer.log"
        self.config_path = self.workdir / "pgbouncer.ini"
        self.auth_file = self.workdir / "userlist.txt"
        self.host = "127.0.0.1"
        self.port = 0
        self._admin_password = _proc.random_password()
        self._auth_password = _proc.random_password()
        self._proc: subprocess.Popen[bytes] | None = None
        # auth_file mode: watched secret -> what the auth_file holds for it.
        self._watched: dict[str, _Entry | None] = {}
        self._lock = threading.RLock()  # guards _watched and _holds (never held during I/O)
        self._apply_lock = threading.Lock()  # one refresh / auth_file rewrite at a time
        self._holds = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: Any = None
        self.last_refresh_error: str | None = None
        self.reloads = 0

    def __repr__(self) -> str:
        return f"<PgBouncer {self.mode} {self.host}:{self.port}>"

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        if self.is_running():
            return
        if self.mode == "auth_query":
            self.install_auth_query()
        self._write_auth_file()
        fixed_port = self.port != 0
        for attempt in range(3):
            if not fixed_port:
                self.port = _proc.free_port()
            self._write_config()
            argv = [_proc.find_binary("pgbouncer"), str(self.config_path)]
            self._proc = _proc.spawn(argv, log_path=self.log_path, stop_signal=signal.SIGTERM)
            try:
                _proc.wait_until(
                    self._admin_answers,
                    timeout=20,
                    what=f"{self.name} on port {self.port}",
                    abort=self._died,
                )
                break
            except RuntimeError:
                busy = "Address already in use" in _proc.tail(self.log_path, 10)
                if not busy or attempt == 2:
                    raise
                if fixed_port:
                    _proc.wait_until(
                        lambda: not _proc.port_open(self.host, self.port),
                        timeout=10,
                        what="old PgBouncer port to free up",
                    )
        if self.mode == "auth_file":
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._refresh_loop, name=f"{self.name}-refresh", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """Stop the refresh thread and the process (SIGTERM: PgBouncer's immediate shutdown)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
            self._thread = None
        _proc.terminate(self._proc, timeout=10)
        self._proc = None

    def restart(self) -> None:
        """Stop and start again on the same port (watched secrets are kept)."""
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        if self._own_workdir and not _keep():
            shutil.rmtree(self.workdir, ignore_errors=True)

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def pids(self) -> list[int]:
        return [self._proc.pid] if self._proc is not None and self.is_running() else []

    def _died(self) -> str | None:
        if self._proc is not None and self._proc.poll() is not None:
            return f"pgbouncer exited with {self._proc.returncode}:\n{_proc.tail(self.log_path)}"
        return None

    # -- connecting ----------------------------------------------------------------------------
    def dsn(self, user: str, password: str | None, dbname: str = "postgres", **extra: Any) -> str:
        """A conninfo string for a client of this PgBouncer."""
        from psycopg.conninfo import make_conninfo

        params: dict[str, Any] = {"host": self.host, "port": self.port, "user": user}
        params.update(dbname=dbname, password=password, connect_timeout=5)
        params.update(self.postgres.client_tls)  # the same certificate as the database's
        params.update(extra)
        return make_conninfo("", **{k: v for k, v in params.items() if v is not None})

    def admin(self) -> psycopg.Connection[Any]:
        """A connection to the admin console (``SHOW POOLS``, ``RELOAD``, ...; simple protocol)."""
        import psycopg

        return psycopg.connect(
            self.dsn(ADMIN_USER, self._admin_password, "pgbouncer"), autocommit=True
        )

    def _admin_answers(self) -> bool:
        import psycopg

        try:
            with self.admin() as conn:
                conn.execute("SHOW VERSION")
            return True
        except psycopg.Error:
            return False

    def reload(self) -> None:
        """Apply the config and auth_file now (admin RELOAD; SIGHUP if the console fails)."""
        if not self.is_running():
            return
        import psycopg

        try:
            with self.admin() as conn:
                conn.execute("RELOAD")
        except psycopg.Error:
            assert self._proc is not None
            self._proc.send_signal(signal.SIGHUP)
        self.reloads += 1

    def close_server_connections(self, timeout: float = 10.0) -> None:
        """Close every pooled server connection (admin RECONNECT) and wait until none is left.

        After this, the next client makes PgBouncer log into PostgreSQL again: the way to make
        "the proxy's own login fails" deterministic instead of hidden by a pooled connection.
        """
        with self.admin() as conn:
            conn.execute("RECONNECT")
            _proc.wait_until(
                lambda: not conn.execute("SHOW SERVERS").fetchall(),
                timeout=timeout,
                interval=0.1,
                what=f"{self.name} to close its server connections",
            )

    # -- files -------------------------------------------------------------------------------
    def _write_config(self) -> None:
        pg = self.postgres
        lines = [
            "[databases]",
            f"* = host={pg.host} port={pg.port}",
            "",
            "[pgbouncer]",
            f"listen_addr = {self.host}",
            f"listen_port = {self.port}",
            "unix_socket_dir =",
            "logfile =",
            "auth_type = scram-sha-256",
            f"auth_file = {self.auth_file}",
            f"admin_users = {ADMIN_USER}",
        ]
        if self.mode == "auth_query":
            lines += [
                f"auth_user = {AUTH_USER}",
                "auth_query = SELECT usename, passwd FROM pgbouncer.get_auth($1)",
            ]
        tls = self.postgres.tls
        if tls is not None:  # clients must use TLS; the server connections verify PostgreSQL
            lines += [
                "client_tls_sslmode = require",
                f"client_tls_cert_file = {tls.cert_file}",
                f"client_tls_key_file = {tls.key_file}",
                "server_tls_sslmode = verify-full",
                f"server_tls_ca_file = {tls.ca_file}",
            ]
        lines += [f"{key} = {value}" for key, value in self.settings.items()]
        _proc.write_private_file(self.config_path, "\n".join(lines) + "\n")

    def _write_auth_file(self, changed: Mapping[str, _Entry] | None = None) -> None:
        users = {ADMIN_USER: self._admin_password}
        if self.mode == "auth_query":
            users[AUTH_USER] = self._auth_password
        with self._lock:
            entries = {**self._watched, **{k: v for k, v in (changed or {}).items()
                                           if k in self._watched}}
        for entry in entries.values():
            if entry is not None:
                users[entry.username] = entry.password

        def quote(s: str) -> str:
            return '"' + s.replace('"', '""') + '"'

        text = "".join(f"{quote(u)} {quote(p)}\n" for u, p in users.items())
        _proc.write_private_file(self.auth_file, text)

    # -- auth_query mode -----------------------------------------------------------------------
    def install_auth_query(self) -> None:
        """Create/refresh the auth_user role and ``pgbouncer.get_auth`` in every database.

        Idempotent. Databases created later from template1 inherit the function.
        """
        from psycopg import sql

        from .roles import set_password

        with self.postgres.connect_admin() as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [AUTH_USER])
            if exists.fetchone() is None:
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(AUTH_USER)))
            set_password(conn, AUTH_USER, self._auth_password)
            dbnames = [
                row[0]
                for row in conn.execute(
                    "SELECT datname FROM pg_database WHERE datallowconn ORDER BY datname"
                )
            ]
        for dbname in dbnames:
            with self.postgres.connect_admin(dbname) as conn:
                conn.execute(_AUTH_QUERY_SQL)
                role = sql.Identifier(AUTH_USER)
                conn.execute(sql.SQL("GRANT USAGE ON SCHEMA pgbouncer TO {}").format(role))
                conn.execute(
                    sql.SQL("GRANT EXECUTE ON FUNCTION pgbouncer.get_auth(text) TO {}").format(role)
                )

    # -- auth_file mode ------------------------------------------------------------------------
    def watch(self, secret_id: str) -> None:
        """Serve the user of ``secret_id`` (its AWSCURRENT password), like adding a secret to
        an RDS Proxy. Returns once the auth_file holds it."""
        self._require_auth_file()
        with self._lock:
            self._watched.setdefault(secret_id, None)
        self.refresh()
        if self.applied_version(secret_id) is None:
            raise RuntimeError(
                f"{self.name}: could not read secret {secret_id!r}: {self.last_refresh_error}"
            )

    def unwatch(self, secret_id: str) -> None:
        with self._apply_lock:
            with self._lock:
                entry = self._watched.pop(secret_id, None)
            if entry is not None:
                self._write_auth_file()
                self.reload()

    def applied_version(self, secret_id: str) -> str | None:
        """VersionId of ``secret_id`` that the auth_file holds now (None: not yet read)."""
        with self._lock:
            entry = self._watched.get(secret_id)
        return entry.version_id if entry is not None else None

    def wait_applied(self, secret_id: str, version_id: str, timeout: float = 10.0) -> None:
        """Block until the refresh thread applied ``version_id`` of ``secret_id``."""
        _proc.wait_until(
            lambda: self.applied_version(secret_id) == version_id,
            timeout=timeout,
            what=f"{self.name} to apply version {version_id} of {secret_id!r}",
        )

    def warm(self, user: str, password: str, dbname: str, connections: int) -> None:
        """Make this PgBouncer hold *connections* server connections of (*user*, *dbname*):
        that many clients each open a transaction (in transaction mode each then holds a
        server connection), all at once, then let go. The server connections stay in the pool.

        RDS Proxy keeps its database connections when the secret changes and lets a client
        wait for one (ConnectionBorrowTimeout) while it cannot open new ones; PgBouncer
        closes the servers of a user whose password its RELOAD changed, and refuses clients
        at once while its server logins fail (server_login_retry). A warm pool before a
        rotation's window is how the stand-in keeps the first of RDS Proxy's behaviours: a
        test warms it once the proxy applied a rotation, before the next one starts.
        """
        import psycopg

        dsn = self.dsn(user, password, dbname)
        inside = threading.Barrier(connections + 1, timeout=15)
        errors: list[BaseException] = []

        def hold() -> None:
            try:
                with psycopg.connect(dsn, prepare_threshold=None) as conn:
                    conn.execute("select 1")  # in a transaction: the server stays assigned
                    inside.wait()  # every client holds its own server connection
                    inside.wait()
            except BaseException as exc:
                errors.append(exc)
                inside.abort()

        threads = [threading.Thread(target=hold, daemon=True) for _ in range(connections)]
        for t in threads:
            t.start()
        try:
            inside.wait()
            inside.wait()
        except threading.BrokenBarrierError:
            pass
        for t in threads:
            t.join(15)
        if errors:
            raise RuntimeError(f"{self.name}: warming the pool failed: "
                               f"{type(errors[0]).__name__}: {_safe(errors[0])}")

    @contextlib.contextmanager
    def hold_refresh(self) -> Iterator[None]:
        """Inside, the background thread does not refresh (a proxy that has not yet noticed)."""
        with self._lock:
            self._holds += 1
        try:
            yield
        finally:
            with self._lock:
                self._holds -= 1

    def refresh(self) -> bool:
        """Re-read every watched secret's AWSCURRENT now; rewrite + RELOAD if any changed.

        Returns whether something changed. A failing read (endpoint outage) keeps the last
        known password, as RDS Proxy does, and is kept in ``last_refresh_error``.
        """
        self._require_auth_file()
        with self._apply_lock:
            return self._refresh()

    def _refresh(self) -> bool:
        with self._lock:
            watched = dict(self._watched)
        if not watched:
            return False
        if self._client is None:
            assert self.secrets is not None
            self._client = self.secrets.client("secretsmanager", stack=True)
        changed: dict[str, _Entry] = {}
        error = None
        for secret_id, old in watched.items():
            try:
                # VersionStage explicitly: moto 5.2 keeps serving the old version without it.
                # secret_call: keep the value out of botocore's DEBUG records, as dbcreds does.
                with secret_call():
                    resp = self._client.get_secret_value(
                        SecretId=secret_id, VersionStage="AWSCURRENT"
                    )
                doc = json.loads(resp["SecretString"])
                entry = _Entry(str(doc["username"]), str(doc["password"]), resp["VersionId"])
            except Exception as exc:  # the proxy keeps going on its last known credentials
                error = f"{secret_id}: {type(exc).__name__}: {_safe(exc)}"
                continue
            if entry != old:
                changed[secret_id] = entry
        self.last_refresh_error = error
        if not changed:
            return False
        # The auth_file and PgBouncer first; `applied_version` (wait_applied) changes last, so
        # whoever waited for it logs in with the new password and is served.
        self._write_auth_file(changed)
        self.reload()
        with self._lock:
            for secret_id, entry in changed.items():
                if secret_id in self._watched:
                    self._watched[secret_id] = entry
        log.debug("%s applied %d changed secret(s)", self.name, len(changed))
        return True

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.refresh_interval):
            with self._lock:
                held = self._holds > 0
            if held:
                continue
            try:
                self.refresh()
            except Exception:  # never let the thread die: it is the proxy's only way to learn
                log.exception("%s: refresh failed", self.name)

    def _require_auth_file(self) -> None:
        if self.mode != "auth_file":
            raise RuntimeError("watch/refresh belong to mode='auth_file' (the RDS Proxy stand-in)")


def _safe(exc: BaseException) -> str:
    """An exception's first line, cut short (botocore errors carry no secret values)."""
    return str(exc).splitlines()[0][:200] if str(exc) else ""


def _keep() -> bool:
    import os

    return bool(os.environ.get("DBCREDS_TEST_KEEP"))
