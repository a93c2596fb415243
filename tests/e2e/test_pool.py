"""CredentialPool and get_connection() on PostgreSQL, directly and through PgBouncer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from dbcreds import AuthenticationFailed, CredentialPool, SecretProvider

ROUTES = ["direct", "pgbouncer"]


def endpoint(stack: Any, route: str) -> dict[str, Any]:
    server = stack.postgres if route == "direct" else stack.pgbouncer
    return {"host": server.host, "port": server.port}


@pytest.fixture
def make_pool(aws_env: None) -> Iterator[Any]:
    pools: list[CredentialPool] = []

    def make(secret_id: str, **kw: Any) -> CredentialPool:
        kw.setdefault("min_size", 2)
        kw.setdefault("max_size", 4)
        pool = CredentialPool(SecretProvider(secret_id), open=True, **kw)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.close()


def change_password_out_of_band(stack: Any, sm_client: Any, app: Any, new_password: str) -> None:
    with psycopg.connect(stack.postgres.admin_dsn, autocommit=True) as admin:
        admin.execute(
            psycopg.sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                psycopg.sql.Identifier(app.username), psycopg.sql.Literal(new_password)
            )
        )
    doc = json.loads(sm_client.get_secret_value(
        SecretId=app.secret_id, VersionStage="AWSCURRENT")["SecretString"])
    sm_client.put_secret_value(SecretId=app.secret_id,
                               SecretString=json.dumps({**doc, "password": new_password}))


def hammer(pool: CredentialPool, threads: int, requests: int) -> list[BaseException]:
    errors: list[BaseException] = []
    per_thread = requests // threads
    barrier = threading.Barrier(threads)

    def run() -> None:
        barrier.wait()
        for _ in range(per_thread):
            try:
                with pool.connection(timeout=10) as conn:
                    assert conn.execute("select 1").fetchone() == (1,)
            except BaseException as exc:
                errors.append(exc)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return errors


def test_close_is_idempotent(stack: Any, app: Any, make_pool: Any) -> None:
    pool = make_pool(app.secret_id, **endpoint(stack, "pgbouncer"))
    pool.close()
    pool.close()
    assert pool.closed


def test_connections_are_made_for_proxies(stack: Any, app: Any, make_pool: Any) -> None:
    pool = make_pool(app.secret_id, **endpoint(stack, "pgbouncer"))
    with pool.connection() as conn:
        assert conn.prepare_threshold is None
        # A statement run many times must not create a prepared statement on PgBouncer.
        for _ in range(10):
            conn.execute("select %s::int", [1])


def test_get_connection_in_a_fresh_process_configured_by_environment(
    stack: Any, app: Any
) -> None:
    env = {
        **os.environ, **stack.secrets.env(), **stack.tls_env(),
        "DBCREDS_SECRET_ID": app.secret_id,
        "DBCREDS_HOST": stack.pgbouncer.host,
        "DBCREDS_PORT": str(stack.pgbouncer.port),
    }
    code = (
        "import dbcreds\n"
        "with dbcreds.get_connection() as conn:\n"
        "    print(conn.execute('select current_user').fetchone()[0])\n"
        "with dbcreds.get_connection() as conn:\n"  # reused
        "    print(conn.info.port)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [app.username, str(stack.pgbouncer.port)]
    assert app.password not in out.stdout + out.stderr


def test_get_connection_without_secret_id_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    import dbcreds

    monkeypatch.delenv("DBCREDS_SECRET_ID", raising=False)
    dbcreds.close_default_pool()
    with pytest.raises(dbcreds.ConfigurationError, match="DBCREDS_SECRET_ID"):
        dbcreds.get_connection()


def test_pool_recovers_by_itself_once_the_secret_is_fixed(
    stack: Any, sm_client: Any, app: Any, make_pool: Any
) -> None:
    doc = json.loads(sm_client.get_secret_value(
        SecretId=app.secret_id, VersionStage="AWSCURRENT")["SecretString"])
    sm_client.put_secret_value(SecretId=app.secret_id,
                               SecretString=json.dumps({**doc, "password": "Wr0ng-pw-123"}))
    pool = make_pool(app.secret_id, min_size=1, **endpoint(stack, "pgbouncer"))
    with pytest.raises(AuthenticationFailed), pool.connection():
        pass

    # Someone puts the right password back: no restart, no new pool.
    sm_client.put_secret_value(SecretId=app.secret_id, SecretString=json.dumps(doc))
    deadline = time.monotonic() + 30
    while True:  # bounded poll on the real condition: a request that succeeds
        try:
            with pool.connection(timeout=5) as conn:
                assert conn.execute("select current_user").fetchone() == (app.username,)
            break
        except AuthenticationFailed:
            assert time.monotonic() < deadline, "the pool never recovered"
            threading.Event().wait(0.1)
    assert pool.get_stats()["auth_failed"] == 0
