"""ENGINE "dbcreds.django" on the real stack: Django's ORM through three rotations (both proxy
behaviours, CONN_MAX_AGE and Django's pool), fast failure, migrate and the test runner.

Django is configured once per process, so each scenario runs the small project
``tests/e2e/django_app`` in a subprocess (settings from DJAPP_* variables): this process
drives the rotations while the subprocess's workloads run (``manage.py workload`` talks on
stdin/stdout), or times one query (``manage.py probe``). Each test's role gets a schema of its
own (PostgreSQL's default search_path starts with ``"$user"``), so migrations never meet
another test's tables.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql

from dbcreds_testing.workload import Mark, Request, WorkloadReport
from rotations import (
    PROXIES,
    assert_three_rotations_served,
    assert_usual_way_broke,
    report,
    rotate_three_times,
)

APP_DIR = Path(__file__).parent / "django_app"
MODES = ["max_age", "pool"]


def own_schema(stack: Any, username: str) -> None:
    with stack.admin() as conn:
        name = sql.Identifier(username)
        conn.execute(sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(name, name))


def django_env(stack: Any, app: Any, server: Any, mode: str, **extra: str) -> dict[str, str]:
    """The subprocess's environment: the test's (``aws_env``: the stack's Secrets Manager, its
    CA as DBCREDS_SSLROOTCERT) and the project's settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJAPP_", "DBCREDS_"))}
    env.update(
        DBCREDS_SSLROOTCERT=stack.ca_file,
        DJANGO_SETTINGS_MODULE="dbapp.settings",
        DJAPP_MODE=mode,
        DJAPP_SECRET_ID=app.secret_id,
        DJAPP_HOST=server.host,
        DJAPP_PORT=str(server.port),
        DJAPP_NAME=stack.dbname,
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def manage(
    env: dict[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=APP_DIR, env=env, capture_output=True,
        text=True, timeout=timeout, check=False,
    )


def probe(env: dict[str, str], times: int = 1) -> dict[str, Any]:
    out = manage(env, "probe", "--times", str(times))
    assert out.returncode == 0, out.stderr[-3000:]
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@pytest.fixture
def django_app(stack: Any, rotating_app: Any, aws_env: dict[str, str]) -> Any:
    own_schema(stack, rotating_app.username)
    return rotating_app


def migrate(env: dict[str, str], database: str = "default") -> None:
    out = manage(env, "migrate", "--database", database, "--no-input")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Applying dbapp.0001_initial... OK" in out.stdout, out.stdout


@pytest.mark.parametrize("route", list(PROXIES))
def test_migrate_and_query(stack: Any, django_app: Any, route: str) -> None:
    env = django_env(stack, django_app, getattr(stack, PROXIES[route]), "max_age")
    migrate(env)
    result = probe(env)
    assert result["results"][0]["error"] is None, result
    with stack.admin() as conn:
        found = conn.execute(
            "select table_schema from information_schema.tables where table_name = 'dbapp_item'"
            " and table_schema = %s", [django_app.username],
        ).fetchall()
    assert found == [(django_app.username,)]


class DjangoWorkloads:
    """``manage.py workload`` running: the dbcreds alias and the usual way, 8 threads each.
    Marks go to both timelines (``rotate_three_times`` calls ``mark``)."""

    def __init__(self, env: dict[str, str], stderr: Path) -> None:
        self._stderr = stderr.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "workload"], cwd=APP_DIR, env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout
        ready = self.stdout.readline()  # the workloads served requests (or the command died)
        assert ready.strip() == "READY", (ready, stderr.read_text()[-3000:])

    def mark(self, label: str) -> None:
        self.stdin.write(f"mark {label}\n")
        self.stdin.flush()

    def stop(self) -> dict[str, WorkloadReport]:
        self.stdin.write("stop\n")
        self.stdin.flush()
        line = self.stdout.readline()
        self.proc.wait(timeout=120)
        assert line.startswith("REPORT "), line
        return {alias: as_report(doc) for alias, doc in json.loads(line[7:]).items()}

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._stderr.close()


def as_report(doc: dict[str, Any]) -> WorkloadReport:
    return WorkloadReport(
        [Request(**r) for r in doc["requests"]], [Mark(**m) for m in doc["marks"]],
        doc["duration"],
    )


@pytest.mark.load
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("route", list(PROXIES))
def test_three_rotations_under_load_zero_failures(
    stack: Any, django_app: Any, sm_client: Any, tmp_path: Path, route: str, mode: str
) -> None:
    """8 threads of ORM queries through ENGINE dbcreds.django, connections renewed every 2 s
    (CONN_MAX_AGE=2 with close_old_connections() around each request, or Django's pool with
    max_lifetime 2 s), and beside them Django's own backend with the password read once.

    CONN_HEALTH_CHECKS is on for both, as ``check`` is in the psycopg_pool load tests: behind
    a proxy, an established session's query fails while the proxy cannot open a server
    connection (between setSecret and its refresh; the stand-in closes its server connections
    at each RELOAD, so it needs new ones then). Django's health check (or the pool's ``check``)
    meets that first and replaces the connection, through the login policy, which waits it out.
    """
    env = django_env(stack, django_app, getattr(stack, PROXIES[route]), mode,
                     DJAPP_USUAL="1", DJAPP_MAX_AGE="2", DJAPP_HEALTH_CHECKS="1")
    migrate(env)
    workloads = DjangoWorkloads(env, tmp_path / "workload.stderr")
    try:
        logins_ok = rotate_three_times(stack, django_app, sm_client, [workloads])
        results = workloads.stop()
    finally:
        workloads.close()
    report(f"django {mode} {route} dbcreds", results["default"])
    for failure in results["default"].failures[:10]:  # diagnostics, against the marks above
        print(f"  failed at {failure.start:.2f} after {failure.seconds:.2f}s: {failure.error}")
    if results["default"].failures:
        print(f"  marks: {[(round(m.at, 2), m.label) for m in results['default'].marks]}")
    report(f"django {mode} {route} usual way", results["usual"])
    assert_three_rotations_served(stack, django_app, results["default"], logins_ok)
    assert_usual_way_broke(results["usual"])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("route", ["direct", "pgbouncer-auth_query"])
def test_wrong_secret_fails_fast_with_authentication_failed(
    stack: Any, django_app: Any, route: str, mode: str
) -> None:
    """A secret whose password is wrong: the ORM query gets dbcreds.AuthenticationFailed
    (not wrapped by Django, nothing chained) within 2 s, though Django's pool waits 30 s."""
    server = stack.postgres if route == "direct" else stack.pgbouncer
    env = django_env(stack, django_app, server, mode, DJAPP_POOL_TIMEOUT="30")
    migrate(env)
    wrong = "Wr0ng-" + django_app.password[:10]
    stack.put_current(django_app.secret_id, stack.secret_doc(django_app.username, wrong))
    result = probe(env, times=3)
    first, *later = result["results"]
    print(f"\n[django {mode} {route}] AuthenticationFailed after {first['seconds'] * 1000:.0f} ms")
    assert first["error"] == "AuthenticationFailed", result
    assert first["error_module"] == "dbcreds.errors"  # Django did not wrap it
    assert len(first["texts"]) == 1  # no chain: the driver's error holds the parameters
    assert first["seconds"] < 2.0, first
    assert all(r["error"] == "AuthenticationFailed" and r["seconds"] < 2.0 for r in later)
    if mode == "pool":
        assert result["pool_class"] == "CredentialPool"
        assert result["pool_stats"]["auth_failed"] == 1
    text = json.dumps(result)
    assert wrong not in text and django_app.password not in text


@pytest.mark.parametrize("mode", MODES)
def test_what_dbcreds_returns_shows_no_password(stack: Any, django_app: Any, mode: str) -> None:
    env = django_env(stack, django_app, stack.pgbouncer, mode)
    migrate(env)
    result = probe(env)
    assert result["results"][0]["error"] is None, result
    reprs = result["reprs"]
    assert "DatabaseWrapper" in reprs[0], reprs
    assert f"user={django_app.username}" in reprs[1], reprs  # the connection
    assert ("CredentialPool" in reprs[2]) == (mode == "pool"), reprs
    assert django_app.password not in json.dumps(result)


@pytest.mark.parametrize("route", ["direct", *PROXIES])
def test_the_test_runner_creates_and_drops_its_database(
    stack: Any, django_app: Any, route: str
) -> None:
    """``manage.py test``: Django's test runner creates test_<NAME> (the role needs
    CREATEDB), migrates it and runs dbapp/tests.py in it. Directly it drops it at the end.

    Through a proxy the runner gets ``--keepdb``: the proxy serves the new database (it is
    created, migrated and tested through it), but it keeps its own server connection to it
    after the runner closes its connection, so Django's ``DROP DATABASE`` fails ("being
    accessed by other users"); RDS Proxy holds its database connections the same way. The
    test drops it afterwards as the admin (WITH (FORCE))."""
    name = sql.Identifier(django_app.username)
    with stack.admin() as conn:
        conn.execute(sql.SQL("ALTER ROLE {} CREATEDB").format(name))
    server = stack.postgres if route == "direct" else getattr(stack, PROXIES[route])
    test_db = f"test_{django_app.username}"
    env = django_env(stack, django_app, server, "max_age", DJAPP_TEST_NAME=test_db)
    keep = [] if route == "direct" else ["--keepdb"]
    with stack.admin() as conn:
        assert not conn.execute("select 1 from pg_database where datname = %s",
                                [test_db]).fetchall()
    try:
        out = manage(env, "test", "dbapp", "--no-input", "-v", "2", *keep)
        assert out.returncode == 0, out.stderr[-3000:]
        assert "Ran 1 test" in out.stderr and "\nOK" in out.stderr, out.stderr[-3000:]
        # With --keepdb Django says "Using existing" whether or not it had to create it; it
        # did not exist before (a fresh role's name), and it does now.
        said = "Creating" if route == "direct" else "Using existing"
        assert f"{said} test database for alias 'default' ('{test_db}')" in out.stderr
        with stack.admin() as conn:
            left = conn.execute("select 1 from pg_database where datname = %s",
                                [test_db]).fetchall()
        assert left == ([] if route == "direct" else [(1,)])
    finally:
        with stack.admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(test_db)))


def contract(env: dict[str, str]) -> dict[str, Any]:
    out = manage(env, "contract")
    assert out.returncode == 0, out.stderr[-3000:]
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("max_age", ["0", "60"])
def test_conn_max_age_and_isolation_level_keep_their_meaning(
    stack: Any, django_app: Any, max_age: str
) -> None:
    """CONN_MAX_AGE: 0 makes a connection per request, 60 keeps one across requests;
    OPTIONS["isolation_level"] still applies (4: SERIALIZABLE)."""
    env = django_env(stack, django_app, stack.pgbouncer, "max_age", DJAPP_MAX_AGE=max_age,
                     DJAPP_ISOLATION="4")
    migrate(env)
    result = contract(env)
    assert result["isolation"] == "serializable"
    assert result["count"] == 3
    expected = 3 if max_age == "0" else 1
    assert result["distinct_connections"] == expected, result
    assert result["connection_created"] == expected, result
    assert result["pool"] is None


@pytest.mark.parametrize("health_checks", ["0", "1"])
def test_djangos_pool_options_keep_their_meaning(
    stack: Any, django_app: Any, health_checks: str
) -> None:
    """OPTIONS["pool"] (min_size 2, max_size 8, max_lifetime, timeout) configures the
    CredentialPool; CONN_HEALTH_CHECKS gives it psycopg_pool's check; Django's configure
    runs; connections go back to the pool after each request."""
    env = django_env(stack, django_app, stack.rds_proxy, "pool", DJAPP_MAX_AGE="30",
                     DJAPP_POOL_TIMEOUT="12", DJAPP_HEALTH_CHECKS=health_checks,
                     DJAPP_ISOLATION="4")
    migrate(env)
    result = contract(env)
    pool = result["pool"]
    assert pool["class"] == "CredentialPool"
    assert (pool["min_size"], pool["max_size"], pool["max_lifetime"], pool["timeout"]) == (
        2, 8, 30.0, 12.0)
    assert pool["check"] is (health_checks == "1") and pool["configure"] is True
    assert pool["stats"]["requests_num"] >= 3 and pool["stats"]["auth_failed"] == 0
    assert result["isolation"] == "serializable" and result["count"] == 3
