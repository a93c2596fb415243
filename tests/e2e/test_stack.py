"""The local stack itself: scram everywhere, both bouncers, the endpoint, restarts, cleanup."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from botocore.exceptions import ClientError

from dbcreds.errors import is_auth_failure
from dbcreds_testing import App, LocalStack, wait_until
from dbcreds_testing._proc import pid_alive

VIAS = ["postgres", "pgbouncer", "rds_proxy"]


def connect_error(stack: LocalStack, user: str, password: str, via: Any) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as info:
        stack.connect(user, password, via=via).close()
    return info.value


def eventually(condition: Callable[[], bool], timeout: float, what: str) -> None:
    wait_until(condition, timeout=timeout, interval=0.1, what=what)


def can_login(stack: LocalStack, user: str, password: str, via: Any) -> bool:
    try:
        with stack.connect(user, password, via=via) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.OperationalError:
        return False


# -- scram-sha-256 everywhere ------------------------------------------------------------------


def test_server_enforces_scram(stack: LocalStack, app: App) -> None:
    with stack.admin() as conn:
        assert conn.execute("SHOW password_encryption").fetchone() == ("scram-sha-256",)
        methods = conn.execute(
            "SELECT DISTINCT auth_method FROM pg_hba_file_rules WHERE error IS NULL"
        ).fetchall()
        assert methods == [("scram-sha-256",)]
        verifier = conn.execute(
            "SELECT rolpassword FROM pg_authid WHERE rolname = %s", [app.username]
        ).fetchone()
    assert verifier is not None and verifier[0].startswith("SCRAM-SHA-256$")


@pytest.mark.parametrize("via", VIAS)
def test_right_password_works(stack: LocalStack, app: App, via: str) -> None:
    with stack.connect(app.username, app.password, via=via) as conn:  # type: ignore[arg-type]
        assert conn.execute("SELECT current_user").fetchone() == (app.username,)


@pytest.mark.parametrize(
    ("via", "text"),
    [
        ("postgres", "password authentication failed for user"),
        ("pgbouncer", "SASL authentication failed"),
        ("rds_proxy", "SASL authentication failed"),
    ],
)
def test_wrong_password_fails(stack: LocalStack, app: App, via: str, text: str) -> None:
    err = connect_error(stack, app.username, app.password + "x", via)
    assert text in str(err)
    assert is_auth_failure(err)


def test_unknown_user_texts(stack: LocalStack) -> None:
    """What each server says to a user it does not know (pinned: the classifier relies on it)."""
    assert "password authentication failed" in str(connect_error(stack, "nobody", "x", "postgres"))
    assert "no such user" in str(connect_error(stack, "nobody", "x", "pgbouncer"))
    assert "SASL authentication failed" in str(connect_error(stack, "nobody", "x", "rds_proxy"))


def test_awkward_role_names_are_quoted(stack: LocalStack) -> None:
    name = 'Select "Weird" User'
    password = "pa ss'wo\"rd\\"
    stack.create_role(name, password)
    try:
        arn = stack.create_secret("dbcreds-test/weird", stack.secret_doc(name, password))
        stack.rds_proxy.watch(arn)
        for via in VIAS:
            with stack.connect(name, password, via=via) as conn:  # type: ignore[arg-type]
                assert conn.execute("SELECT current_user").fetchone() == (name,)
        stack.rds_proxy.unwatch(arn)
    finally:
        stack.drop_role(name)


def test_passwords_never_reach_the_server_log(stack: LocalStack, app: App) -> None:
    stack.set_password(app.username, "Fresh-Password-Marker-1")
    log_path = stack.postgres.log_path
    if log_path is None:
        pytest.skip("server log not readable (DBCREDS_TEST_DSN)")
    text = log_path.read_text(errors="replace")
    assert "ALTER ROLE" in text  # log_statement=all is on
    assert app.password not in text
    assert "Fresh-Password-Marker-1" not in text


# -- the two bouncers --------------------------------------------------------------------------


def test_auth_query_bouncer_checks_the_live_database(stack: LocalStack, app: App) -> None:
    stack.set_password(app.username, "new-" + app.password)
    assert can_login(stack, app.username, "new-" + app.password, "pgbouncer")
    err = connect_error(stack, app.username, app.password, "pgbouncer")
    assert "SASL authentication failed" in str(err)


def test_rds_proxy_serves_awscurrent_only(stack: LocalStack, app: App, sm_client: Any) -> None:
    proxy = stack.rds_proxy
    new_password = "rotated-" + app.password
    with proxy.hold_refresh():
        # setSecret's moment: the database has the AWSPENDING password, AWSCURRENT the old one.
        token = stack.secrets.register_pending(app.secret_id)
        sm_client.put_secret_value(
            SecretId=app.secret_id,
            ClientRequestToken=token,
            VersionStages=["AWSPENDING"],
            SecretString=json.dumps(stack.secret_doc(app.username, new_password)),
        )
        proxy.close_server_connections()
        stack.set_password(app.username, new_password)
        # AWSPENDING is rejected by the proxy itself ...
        err = connect_error(stack, app.username, new_password, "rds_proxy")
        assert "SASL authentication failed" in str(err)
        # ... the old password passes the proxy, whose own server login then fails.
        err = connect_error(stack, app.username, app.password, "rds_proxy")
        assert 'password authentication failed for user "' in str(err)
        assert is_auth_failure(err)
        # finishSecret: AWSCURRENT moves to the new version.
        current = sm_client.describe_secret(SecretId=app.secret_id)["VersionIdsToStages"]
        old_version = next(v for v, stages in current.items() if "AWSCURRENT" in stages)
        sm_client.update_secret_version_stage(
            SecretId=app.secret_id,
            VersionStage="AWSCURRENT",
            MoveToVersionId=token,
            RemoveFromVersionId=old_version,
        )
        time.sleep(2 * proxy.refresh_interval)  # held: nothing may change
        assert proxy.applied_version(app.secret_id) == old_version
    proxy.wait_applied(app.secret_id, token, timeout=10)
    eventually(
        lambda: can_login(stack, app.username, new_password, "rds_proxy"),
        timeout=5,
        what="the RDS Proxy stand-in to accept the new AWSCURRENT",
    )
    assert "SASL authentication failed" in str(
        connect_error(stack, app.username, app.password, "rds_proxy")
    )


def test_rds_proxy_follows_new_awscurrent_by_itself(stack: LocalStack, app: App) -> None:
    new_password = "next-" + app.password
    stack.set_password(app.username, new_password)
    started = time.monotonic()
    stack.put_current(app.secret_id, stack.secret_doc(app.username, new_password))
    eventually(
        lambda: can_login(stack, app.username, new_password, "rds_proxy"),
        timeout=5,
        what="the RDS Proxy stand-in to pick up the new AWSCURRENT",
    )
    assert time.monotonic() - started < 5


def test_rds_proxy_keeps_last_password_through_an_outage(stack: LocalStack, app: App) -> None:
    with stack.secrets.outage():
        time.sleep(2 * stack.rds_proxy.refresh_interval)
        assert stack.rds_proxy.last_refresh_error is not None
        assert can_login(stack, app.username, app.password, "rds_proxy")
    eventually(lambda: stack.rds_proxy.last_refresh_error is None, 5, "proxy refresh to recover")


# -- the Secrets Manager endpoint --------------------------------------------------------------


def test_endpoint_counts_per_operation_and_secret(
    stack: LocalStack, app: App, aws_env: dict[str, str]
) -> None:
    import boto3

    client = boto3.client("secretsmanager")  # configured by aws_env alone
    stack.secrets.reset_counts()
    client.get_secret_value(SecretId=app.secret_id, VersionStage="AWSCURRENT")
    assert stack.secrets.count("GetSecretValue", secret_id=app.secret_id) == 1
    assert stack.secrets.count("GetSecretValue", secret_id=app.arn) == 1
    assert stack.secrets.count("DescribeSecret") == 0
    # The stand-in proxy's refreshes are there, but not counted as the client's.
    eventually(
        lambda: stack.secrets.count("GetSecretValue", app.secret_id, source="stack") > 0,
        5,
        "a proxy refresh",
    )
    assert stack.secrets.count("GetSecretValue", secret_id=app.secret_id) == 1
    stack.secrets.reset_counts()
    assert stack.secrets.count("GetSecretValue", secret_id=app.secret_id) == 0

    sns = boto3.client("sns")
    topic = sns.create_topic(Name="rotation-failures")["TopicArn"]
    sns.publish(TopicArn=topic, Message="rotation failed")
    assert stack.secrets.count("Publish") == 1
    assert stack.secrets.count("Publish", service="sns") == 1


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [("unavailable", 503, "ServiceUnavailable"), ("throttling", 400, "ThrottlingException")],
)
def test_endpoint_outage_keeps_state(
    stack: LocalStack, app: App, kind: Any, status: int, code: str
) -> None:
    client = stack.secrets.client(
        "secretsmanager", retries={"mode": "standard", "total_max_attempts": 1}
    )
    stack.secrets.reset_counts()
    with stack.secrets.outage(kind):
        with pytest.raises(ClientError) as info:
            client.get_secret_value(SecretId=app.secret_id, VersionStage="AWSCURRENT")
        assert info.value.response["Error"]["Code"] == code
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    value = client.get_secret_value(SecretId=app.secret_id, VersionStage="AWSCURRENT")
    assert json.loads(value["SecretString"])["username"] == app.username
    assert stack.secrets.count("GetSecretValue", app.secret_id, rejected=True) == 1
    assert stack.secrets.count("GetSecretValue", app.secret_id) == 2


def test_outage_can_target_operations(stack: LocalStack, app: App, sm_client: Any) -> None:
    with stack.secrets.outage("unavailable", operations=["PutSecretValue"]):
        sm_client.get_secret_value(SecretId=app.secret_id, VersionStage="AWSCURRENT")
        with pytest.raises(ClientError):
            sm_client.put_secret_value(SecretId=app.secret_id, SecretString="{}")


def test_rotation_metadata_without_a_lambda(stack: LocalStack, app: App, sm_client: Any) -> None:
    stack.enable_rotation(app.secret_id, days=90)
    described = sm_client.describe_secret(SecretId=app.secret_id)
    assert described["RotationEnabled"] is True
    assert described["RotationLambdaARN"].startswith("arn:aws:lambda:")
    assert described["RotationRules"]["AutomaticallyAfterDays"] == 90
    token = stack.secrets.register_pending(app.secret_id)
    stages = sm_client.describe_secret(SecretId=app.secret_id)["VersionIdsToStages"]
    assert stages[token] == ["AWSPENDING"]
    with pytest.raises(ClientError) as info:  # like AWS: the pending version has no value yet
        sm_client.get_secret_value(SecretId=app.secret_id, VersionStage="AWSPENDING")
    assert info.value.response["Error"]["Code"] == "ResourceNotFoundException"


# -- restarts ------------------------------------------------------------------------------------


def test_postgres_restart_keeps_data_and_port(stack: LocalStack, app: App) -> None:
    if not stack.postgres.supports_restart:
        pytest.skip("the DBCREDS_TEST_DSN server is not ours to restart")
    port = stack.postgres.port
    with stack.connect(app.username, app.password) as conn:
        conn.execute("CREATE TABLE survives_restart (n int)")
        conn.execute("INSERT INTO survives_restart VALUES (42)")
        conn.commit()
    held = stack.connect(app.username, app.password, autocommit=True)
    stack.postgres.restart()
    assert stack.postgres.port == port
    with pytest.raises(psycopg.OperationalError):
        held.execute("SELECT 1")
    held.close()
    with stack.connect(app.username, app.password) as conn:
        assert conn.execute("SELECT n FROM survives_restart").fetchone() == (42,)
    for via in ("pgbouncer", "rds_proxy"):  # bouncers heal after server_login_retry
        eventually(lambda v=via: can_login(stack, app.username, app.password, v), 10, via)  # type: ignore[misc]


@pytest.mark.parametrize("which", ["pgbouncer", "rds_proxy"])
def test_pgbouncer_restart(stack: LocalStack, app: App, which: str) -> None:
    bouncer = getattr(stack, which)
    port, pid = bouncer.port, bouncer.pids()[0]
    bouncer.restart()
    assert bouncer.port == port
    assert bouncer.pids() and bouncer.pids()[0] != pid and not pid_alive(pid)
    assert can_login(stack, app.username, app.password, which)
    if which == "rds_proxy":  # its refresh thread runs again
        new_password = "after-restart-" + app.password
        stack.set_password(app.username, new_password)
        stack.put_current(app.secret_id, stack.secret_doc(app.username, new_password))
        eventually(lambda: can_login(stack, app.username, new_password, which), 5, "refresh")


# -- nothing left behind -----------------------------------------------------------------------


def _start_cli_stack() -> tuple[subprocess.Popen[str], dict[str, Any]]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.Popen(
        [sys.executable, "-m", "dbcreds_testing", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # bounded: the stack's own start-up waits are bounded
    if not line:
        proc.wait(10)
        pytest.fail(f"python -m dbcreds_testing exited with {proc.returncode}")
    info = json.loads(line)
    assert info["pids"] and all(pid_alive(p) for p in info["pids"])
    assert "password" not in line.lower()
    return proc, info


def test_cli_stack_leaves_nothing_behind_on_sigterm() -> None:
    proc, info = _start_cli_stack()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    assert [p for p in info["pids"] if pid_alive(p)] == []
    assert [d for d in info["workdirs"] if os.path.exists(d)] == []


def test_servers_die_with_a_killed_parent() -> None:
    proc, info = _start_cli_stack()
    proc.kill()  # no cleanup code runs: the parent-death signal must do it
    proc.wait(10)
    try:
        eventually(lambda: not any(pid_alive(p) for p in info["pids"]), 30, "servers to exit")
    finally:
        for d in info["workdirs"]:
            shutil.rmtree(d, ignore_errors=True)
