"""LocalStack: PostgreSQL + PgBouncer (auth_query) + RDS Proxy stand-in + Secrets Manager.

One object that tests, the demo and the benchmarks start once and share::

    with LocalStack() as stack:
        app = stack.new_app("orders")           # role + secret (host/port of the real database)
        os.environ.update(stack.env())          # boto3 -> the stack's Secrets Manager endpoint
        conn = stack.connect(app.username, app.password, via="rds_proxy")

``close()`` (also on ``__exit__`` and, as a safety net, at interpreter exit) stops every
process it started and removes its temp dirs (set ``DBCREDS_TEST_KEEP=1`` to keep them).
"""

from __future__ import annotations

import atexit
import json
import secrets
import tempfile
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from dbcreds._aws import secret_call

from . import _proc, roles
from .endpoint import SecretsManagerEndpoint
from .pgbouncer import PgBouncer
from .postgres import PostgresServer
from .tls import LocalCA

if TYPE_CHECKING:
    import psycopg

    from dbcreds.rotation.events import RotationStep

__all__ = ["App", "LocalStack", "RdsRotation", "RdsRotationStep", "Via"]

Via = Literal["postgres", "pgbouncer", "rds_proxy"]


class App(NamedTuple):
    """A fresh application identity: a role and the secret that holds its credentials."""

    secret_id: str  # the secret's name (use it, or ``arn``, as DBCREDS_SECRET_ID)
    username: str
    password: str  # the AWSCURRENT password at creation; never print it
    arn: str

    def __repr__(self) -> str:
        return f"App(secret_id={self.secret_id!r}, username={self.username!r}, password='***')"


class LocalStack:
    """Starts and owns the whole local stack; see the module docstring."""

    def __init__(
        self,
        *,
        pg_settings: Mapping[str, str] | None = None,
        dbname: str = "app",
        refresh_interval: float = 1.0,
        server_login_retry: float = 0.5,
    ) -> None:
        self.dbname = dbname
        self.workdir = Path(tempfile.mkdtemp(prefix="dbcreds-stack-"))
        _proc.give_to_service_user(self.workdir)  # the bouncers' dirs live inside
        self.ca = LocalCA(self.workdir / "tls")
        self.postgres = PostgresServer.select(pg_settings, tls=self.ca)
        self.secrets = SecretsManagerEndpoint(workdir=self.workdir / "moto")
        self.pgbouncer = PgBouncer(
            self.postgres,
            mode="auth_query",
            name="pgbouncer",
            server_login_retry=server_login_retry,
            workdir=self.workdir / "pgbouncer",
        )
        self.rds_proxy = PgBouncer(
            self.postgres,
            mode="auth_file",
            secrets=self.secrets,
            name="rds-proxy",
            refresh_interval=refresh_interval,
            server_login_retry=server_login_retry,
            workdir=self.workdir / "rds-proxy",
        )
        self._sm: Any = None
        self._started = False

    def __repr__(self) -> str:
        return (
            f"<LocalStack postgres={self.postgres.host}:{self.postgres.port} "
            f"pgbouncer={self.pgbouncer.port} rds_proxy={self.rds_proxy.port} "
            f"secrets={self.secrets.url}>"
        )

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> LocalStack:
        if self._started:
            return self
        self._started = True
        atexit.register(self.close)
        try:
            self.secrets.start()
            self.postgres.start()
            self._create_database()
            self.pgbouncer.start()
            self.rds_proxy.start()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop everything (idempotent); remove the temp dirs unless DBCREDS_TEST_KEEP is set."""
        atexit.unregister(self.close)
        for part in (self.rds_proxy, self.pgbouncer, self.secrets, self.postgres):
            try:
                part.close()
            except Exception:
                _proc.log.exception("closing %r failed", part)
        self._started = False
        if not _proc_keep():
            import shutil

            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def pids(self) -> list[int]:
        """Pids of every process of ours still running (PostgreSQL with its backends)."""
        return [
            *self.postgres.pids(),
            *self.pgbouncer.pids(),
            *self.rds_proxy.pids(),
            *self.secrets.pids(),
        ]

    def _create_database(self) -> None:
        from psycopg import sql

        with self.postgres.connect_admin() as conn:
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [self.dbname])
            if found.fetchone() is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.dbname)))

    # -- environment and endpoints -------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """What a process needs to use the stack's Secrets Manager (see SecretsManagerEndpoint)."""
        return self.secrets.env()

    @property
    def ca_file(self) -> str:
        """The CA bundle that signs every server of the stack (PostgreSQL and both bouncers)."""
        ca = self.postgres.ca_file
        if ca is None:
            raise RuntimeError("the stack's PostgreSQL serves no TLS (DBCREDS_TEST_SSLROOTCERT?)")
        return ca

    def tls_env(self) -> dict[str, str]:
        """What the SDK and the rotation function need to verify the stack's servers: the CA
        bundle, as an operator gives the RDS CA bundle (verify-full, the default)."""
        return {"DBCREDS_SSLROOTCERT": self.ca_file, "DBCREDS_ROTATION_SSLROOTCERT": self.ca_file}

    def endpoints(self) -> dict[str, dict[str, Any]]:
        """host/port of each server (no passwords), e.g. for the demo's banner."""
        return {
            "postgres": {
                "host": self.postgres.host,
                "port": self.postgres.port,
                "dbname": self.dbname,
                "kind": self.postgres.kind,
            },
            "pgbouncer": {
                "host": self.pgbouncer.host,
                "port": self.pgbouncer.port,
                "mode": "auth_query",
            },
            "rds_proxy": {
                "host": self.rds_proxy.host,
                "port": self.rds_proxy.port,
                "mode": "auth_file",
            },
            "secrets_manager": {"url": self.secrets.url, "region": self.secrets.region},
        }

    def latency(self, model: Any = None) -> Any:
        """``with stack.latency() as slow:`` the Secrets Manager endpoint and the RDS Proxy
        stand-in behind latency relays (`dbcreds_testing.latency`; *model*: a `LatencyModel`,
        its defaults when None). The stack itself is unchanged."""
        from .latency import latent

        return latent(self, model)

    def address(self, via: Via = "postgres") -> tuple[str, int]:
        if via == "postgres":
            return self.postgres.host, self.postgres.port
        bouncer = self.pgbouncer if via == "pgbouncer" else self.rds_proxy
        return bouncer.host, bouncer.port

    def dsn(self, username: str, password: str | None, *, via: Via = "postgres") -> str:
        """Conninfo for ``username`` to the stack database, directly or through a bouncer."""
        if via == "postgres":
            return self.postgres.dsn(username, password, self.dbname)
        bouncer = self.pgbouncer if via == "pgbouncer" else self.rds_proxy
        return bouncer.dsn(username, password, self.dbname)

    def connect(
        self, username: str, password: str | None, *, via: Via = "postgres", **kwargs: Any
    ) -> psycopg.Connection[Any]:
        """A psycopg connection; through a bouncer, with ``prepare_threshold=None``
        (transaction pooling breaks prepared statements, as RDS Proxy pins on them)."""
        import psycopg

        if via != "postgres":
            kwargs.setdefault("prepare_threshold", None)
        return psycopg.connect(self.dsn(username, password, via=via), **kwargs)

    # -- roles and secrets ---------------------------------------------------------------------
    def admin(self) -> psycopg.Connection[Any]:
        """Autocommit superuser connection to the stack database."""
        return self.postgres.connect_admin(self.dbname)

    def create_role(
        self,
        username: str,
        password: str,
        *,
        grants: Iterable[str] = ("USAGE", "CREATE"),
        createrole: bool = False,
    ) -> None:
        """A LOGIN role with ``grants`` on schema public (name quoted, password as a verifier)."""
        with self.admin() as conn:
            roles.create_role(conn, username, password, grants=grants, createrole=createrole)

    def set_password(self, username: str, password: str) -> None:
        """Change a role's password in the database (what rotation's setSecret does)."""
        with self.admin() as conn:
            roles.set_password(conn, username, password)

    def drop_role(self, username: str) -> None:
        with self.admin() as conn:
            roles.drop_role(conn, username)

    def secret_doc(self, username: str, password: str, **overrides: Any) -> dict[str, Any]:
        """The RDS secret JSON (rotation-compatible) for the real database."""
        doc: dict[str, Any] = {
            "engine": "postgres",
            "host": self.postgres.host,
            "port": self.postgres.port,
            "username": username,
            "password": password,
            "dbname": self.dbname,
        }
        doc.update(overrides)
        return doc

    def sm(self) -> Any:
        """The stack's own Secrets Manager client (requests not counted as the client's)."""
        if self._sm is None:
            self._sm = self.secrets.client("secretsmanager", stack=True)
        return self._sm

    def create_secret(self, name: str, doc: Mapping[str, Any]) -> str:
        """Create a secret holding ``doc`` as JSON; returns its ARN."""
        with secret_call():
            resp = self.sm().create_secret(Name=name, SecretString=json.dumps(dict(doc)))
        return str(resp["ARN"])

    def put_current(self, secret_id: str, doc: Mapping[str, Any]) -> str:
        """Store ``doc`` as a new AWSCURRENT version (the old one becomes AWSPREVIOUS)."""
        with secret_call():
            resp = self.sm().put_secret_value(
                SecretId=secret_id, SecretString=json.dumps(dict(doc)),
                VersionStages=["AWSCURRENT"],
            )
        return str(resp["VersionId"])

    def enable_rotation(self, secret_id: str, **kwargs: Any) -> None:
        """DescribeSecret shows RotationEnabled=True; see SecretsManagerEndpoint.enable_rotation."""
        self.secrets.enable_rotation(secret_id, **kwargs)

    def rotate_like_rds(
        self,
        secret_id: str,
        *,
        pause: float = 0.0,
        between_steps: Callable[[RdsRotationStep], None] | None = None,
    ) -> RdsRotation:
        """Rotate a secret the way RDS rotates one it manages (single user, the two-key format
        kept): AWSPENDING gets ``username`` and a new ``password`` (createSecret), the role's
        password changes in the database (setSecret), the new one is checked (testSecret),
        AWSCURRENT moves to it (finishSecret). *pause* seconds between steps (the rotation
        window applications must live through); *between_steps* is called after each step.
        """
        import time

        from dbcreds.rotation.events import RotationStep

        sm = self.sm()
        with secret_call():
            current = sm.get_secret_value(SecretId=secret_id, VersionStage="AWSCURRENT")
        username = json.loads(current["SecretString"])["username"]
        token = str(uuid.uuid4())
        password = _proc.random_password()
        rotation = RdsRotation(secret_id, token)

        def create() -> None:
            with secret_call():
                sm.put_secret_value(
                    SecretId=secret_id, ClientRequestToken=token, VersionStages=["AWSPENDING"],
                    SecretString=json.dumps({"username": username, "password": password}),
                )

        def test() -> None:
            with self.connect(username, password):
                pass

        def finish() -> None:
            with secret_call():
                sm.update_secret_version_stage(
                    SecretId=secret_id, VersionStage="AWSCURRENT", MoveToVersionId=token,
                    RemoveFromVersionId=current["VersionId"],
                )
                sm.update_secret_version_stage(
                    SecretId=secret_id, VersionStage="AWSPENDING", RemoveFromVersionId=token,
                )

        steps = (
            (RotationStep.CREATE, create),
            (RotationStep.SET, lambda: self.set_password(username, password)),
            (RotationStep.TEST, test),
            (RotationStep.FINISH, finish),
        )
        for i, (step, run) in enumerate(steps):
            if i and pause:
                time.sleep(pause)  # the rotation window: the scenario, not synchronisation
            run()
            if between_steps is not None:
                between_steps(RdsRotationStep(step))
        rotation.completed = True
        return rotation

    def new_app(
        self,
        prefix: str = "app",
        *,
        watch: bool = True,
        grants: Iterable[str] = ("USAGE", "CREATE"),
        rds_managed: bool = False,
    ) -> App:
        """A fresh role with a random password and a fresh secret for it.

        ``watch=True`` adds the secret to the RDS Proxy stand-in (as attaching a secret to an RDS
        Proxy would); undo with ``stack.rds_proxy.unwatch(app.secret_id)``.
        ``rds_managed=True``: the secret has the format of one that RDS manages
        (``manage_master_user_password``): only ``username`` and ``password``; rotate it with
        `rotate_like_rds`.
        """
        username = f"{prefix}_{secrets.token_hex(4)}"
        password = _proc.random_password()
        self.create_role(username, password, grants=grants)
        name = f"dbcreds-test/{username}"
        doc = ({"username": username, "password": password} if rds_managed
               else self.secret_doc(username, password))
        arn = self.create_secret(name, doc)
        if watch:
            self.rds_proxy.watch(name)
        return App(name, username, password, arn)


@dataclass(frozen=True)
class RdsRotationStep:
    """One step of `LocalStack.rotate_like_rds` (``step`` as in a `RotationStep` event)."""

    step: RotationStep


@dataclass
class RdsRotation:
    """What `LocalStack.rotate_like_rds` did (shaped like ``rotation.local.LocalRotation``)."""

    secret_id: str
    token: str
    completed: bool = False


def _proc_keep() -> bool:
    import os

    return bool(os.environ.get("DBCREDS_TEST_KEEP"))
