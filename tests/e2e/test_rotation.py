"""End-to-end rotation tests: real PostgreSQL and PgBouncer, the moto Secrets Manager endpoint.

The local database serves TLS only, with a certificate of the stack's own CA, which these tests
give the rotation as an operator gives it the RDS CA bundle (``DBCREDS_ROTATION_SSLROOTCERT``):
every login is ``verify-full``. The tests at the end show the other TLS cases: no CA (SCRAM
with channel binding), a CA that does not sign the server's certificate (a clear failure, the
database unchanged), and a secret whose ``ssl`` key asks for no TLS (ignored).
"""

from __future__ import annotations

import json
import logging
import secrets
import string
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from dbcreds.rotation import (
    NoWorkingCredentials,
    RotationStep,
    StepResult,
    lambda_handler,
    run_step,
)
from dbcreds.rotation.local import LocalRotation, register_with_rotate_secret, rotate_locally
from dbcreds.rotation.settings import DEFAULT_EXCLUDE_CHARACTERS

# -- fixtures and helpers ------------------------------------------------------------------------

class Rotatable:
    """A role and its secret, with rotation enabled on the endpoint."""

    def __init__(self, stack: Any, sm: Any, username: str, password: str, name: str) -> None:
        self.stack, self.sm = stack, sm
        self.username, self.password, self.secret_id = username, password, name

    def doc(self, stage: str = "AWSCURRENT") -> dict[str, Any] | None:
        try:
            value = self.sm.get_secret_value(SecretId=self.secret_id, VersionStage=stage)
        except self.sm.exceptions.ResourceNotFoundException:
            return None
        return dict(json.loads(value["SecretString"]))

    def stages(self) -> dict[str, list[str]]:
        described = self.sm.describe_secret(SecretId=self.secret_id)
        return {k: sorted(v) for k, v in described["VersionIdsToStages"].items() if v}

    def rotate(self, **kwargs: Any) -> LocalRotation:
        return rotate_locally(self.secret_id, client=self.sm, **kwargs)

    def step(self, step: RotationStep, token: str) -> StepResult:
        event = {"SecretId": self.secret_id, "ClientRequestToken": token, "Step": step.value}
        return run_step(event, client=self.sm)


def make_rotatable(
    stack: Any, sm: Any, username: str | None = None, **extra: Any
) -> Rotatable:
    username = username or f"rot_{secrets.token_hex(4)}"
    password = "Init-" + secrets.token_urlsafe(18)
    stack.create_role(username, password)
    name = f"dbcreds-test/rotation-{secrets.token_hex(6)}"
    stack.create_secret(name, stack.secret_doc(username, password, **extra))
    stack.enable_rotation(name)
    return Rotatable(stack, sm, username, password, name)


@pytest.fixture
def rot(stack: Any, sm: Any) -> Rotatable:
    return make_rotatable(stack, sm)


def logs_in(stack: Any, doc: dict[str, Any] | None, via: str = "postgres") -> bool:
    if doc is None:
        return False
    try:
        with stack.connect(doc["username"], doc["password"], via=via, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.OperationalError:
        return False


def role_verifier(stack: Any, username: str) -> str | None:
    with stack.admin() as conn:
        row = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", [username])
        found = row.fetchone()
    return None if found is None else str(found[0])


def assert_follows_default_policy(password: str) -> None:
    assert len(password) == 32
    assert not set(password) & set(DEFAULT_EXCLUDE_CHARACTERS)
    # RequireEachIncludedType (GetRandomPassword's default)
    for chars in (string.ascii_lowercase, string.ascii_uppercase, string.digits,
                  string.punctuation):  # fmt: skip
        assert set(password) & set(chars)


# -- Done means: five consecutive single-user rotations --------------------------------------------

def test_five_single_user_rotations(stack: Any, rot: Rotatable) -> None:
    passwords = {rot.password}
    started = time.monotonic()
    for _ in range(5):
        run = rot.rotate()
        assert run.completed and run.registered
        assert [r.step for r in run.results] == list(RotationStep)
        current, previous = rot.doc("AWSCURRENT"), rot.doc("AWSPREVIOUS")
        assert current is not None and previous is not None
        assert current["username"] == rot.username
        assert_follows_default_policy(current["password"])
        assert current["password"] not in passwords
        passwords.add(current["password"])
        assert logs_in(stack, current)
        assert logs_in(stack, current, via="pgbouncer")
        assert not logs_in(stack, previous)
        stages = rot.stages()
        assert stages[run.token] == ["AWSCURRENT"]  # AWSPENDING taken off by finishSecret
        assert sorted(s for v in stages.values() for s in v) == ["AWSCURRENT", "AWSPREVIOUS"]
    elapsed = time.monotonic() - started
    print(f"\n5 single-user rotations: {elapsed:.2f} s")
    assert elapsed < 30


def test_extra_keys_survive_rotation(stack: Any, sm: Any) -> None:
    extra = {
        "dbClusterIdentifier": "orders-cluster",
        "masterarn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:master-AbCdEf",
        "proxy_host": "orders.proxy-abc.us-east-1.rds.amazonaws.com",
        "nested": {"list": [1, 2, {"x": None}], "flag": True},
    }
    rot = make_rotatable(stack, sm, **extra)
    before = rot.doc()
    assert before is not None
    rot.rotate()
    rot.rotate()
    after = rot.doc()
    assert after is not None and logs_in(stack, after)
    assert {k: after[k] for k in extra} == extra
    assert set(after) == set(before)
    assert {k: v for k, v in after.items() if k != "password"} == {
        k: v for k, v in before.items() if k != "password"
    }


# -- Done means: idempotent steps, crash and resume ----------------------------------------------

def _state(stack: Any, rot: Rotatable, token: str) -> tuple[Any, ...]:
    pending = rot.doc("AWSPENDING")
    return (rot.stages(), rot.doc("AWSCURRENT"), pending, logs_in(stack, rot.doc()),
            logs_in(stack, pending))  # fmt: skip


def test_each_step_twice_leaves_the_same_state(stack: Any, rot: Rotatable) -> None:
    token = stack.secrets.register_pending(rot.secret_id)
    outcomes = []
    for step in RotationStep:
        first = rot.step(step, token)
        state = _state(stack, rot, token)
        second = rot.step(step, token)
        assert _state(stack, rot, token) == state, step
        outcomes.append((first.detail, second.outcome, second.detail))
    assert outcomes == [
        ("AWSPENDING created", "success", "AWSPENDING already exists"),
        ("password changed, logged in with AWSCURRENT", "success", "AWSPENDING already logs in"),
        ("AWSPENDING logs in", "success", "AWSPENDING logs in"),
        ("AWSCURRENT moved to the token", "noop", "token is already AWSCURRENT"),
    ]
    assert rot.stages()[token] == ["AWSCURRENT"]
    assert logs_in(stack, rot.doc())


def test_completed_token_makes_every_step_a_noop(stack: Any, rot: Rotatable) -> None:
    run = rot.rotate()
    verifier = role_verifier(stack, rot.username)
    stages = rot.stages()
    for step in RotationStep:
        assert rot.step(step, run.token).outcome == "noop"
    assert rot.stages() == stages and role_verifier(stack, rot.username) == verifier
    again = rot.rotate(token=run.token)
    assert again.results == [] and not again.registered


def test_rotation_stopped_after_set_secret_resumes_with_same_token(
    stack: Any, rot: Rotatable
) -> None:
    crashed = rot.rotate(stop_after="setSecret")
    assert crashed.stopped_after is RotationStep.SET and not crashed.completed
    # The single-user window: the database has the pending password, AWSCURRENT the old one.
    assert not logs_in(stack, rot.doc("AWSCURRENT"))
    assert logs_in(stack, rot.doc("AWSPENDING"))

    resumed = rot.rotate(token=crashed.token)
    assert resumed.completed and not resumed.registered
    assert [r.detail for r in resumed.results[:2]] == [
        "AWSPENDING already exists", "AWSPENDING already logs in",
    ]
    assert rot.stages()[crashed.token] == ["AWSCURRENT"]
    assert logs_in(stack, rot.doc("AWSCURRENT"))
    assert logs_in(stack, rot.doc("AWSCURRENT"), via="pgbouncer")


def test_set_secret_falls_back_to_previous(stack: Any, rot: Rotatable) -> None:
    """AWSCURRENT was overwritten with a wrong password: setSecret logs in with AWSPREVIOUS."""
    good = rot.doc()
    assert good is not None
    stack.put_current(rot.secret_id, {**good, "password": "wrong-" + secrets.token_hex(8)})
    run = rot.rotate()
    assert run.results[1].detail == "password changed, logged in with AWSPREVIOUS"
    assert logs_in(stack, rot.doc())


# -- Done means: the plaintext never reaches the server -------------------------------------------

@pytest.fixture
def statement_log(stack: Any) -> Iterator[Callable[[], str]]:
    """log_statement=all on the server for the test; yields a reader of the log written since."""
    path = stack.postgres.log_path
    if path is None:
        pytest.skip("this PostgreSQL's log file is not readable here")
    with stack.admin() as conn:
        before = conn.execute("SHOW log_statement").fetchone()[0]
        if before != "all":
            conn.execute("ALTER SYSTEM SET log_statement = 'all'")
            conn.execute("SELECT pg_reload_conf()")
            time.sleep(0.3)
    offset = path.stat().st_size

    def read() -> str:
        with open(path, encoding="utf-8", errors="replace") as f:
            f.seek(offset)
            return f.read()

    yield read
    if before != "all":
        with stack.admin() as conn:
            conn.execute("ALTER SYSTEM RESET log_statement")
            conn.execute("SELECT pg_reload_conf()")


def test_new_passwords_never_in_server_log(
    stack: Any, rot: Rotatable, statement_log: Callable[[], str]
) -> None:
    passwords = []
    for _ in range(3):
        rot.rotate()
        doc = rot.doc()
        assert doc is not None
        passwords.append(doc["password"])
    time.sleep(0.3)  # the logging collector writes asynchronously
    log = statement_log()
    assert "ALTER ROLE" in log and "SCRAM-SHA-256$4096:" in log  # statements were logged
    for password in passwords:
        assert password not in log


# -- Done means: awkward role names ----------------------------------------------------------------

@pytest.mark.parametrize("base", [
    "UpperCase_{}", "with space {}", "it's_{}", 'say "hi" {}', "select",
])  # fmt: skip
def test_awkward_role_names_rotate(stack: Any, sm: Any, base: str) -> None:
    username = base.format(secrets.token_hex(3))
    if username == "select":
        stack.drop_role(username)
    rot = make_rotatable(stack, sm, username=username)
    try:
        for _ in range(2):
            assert rot.rotate().completed
            current = rot.doc()
            assert current is not None and current["username"] == username
            assert logs_in(stack, current)
            assert not logs_in(stack, rot.doc("AWSPREVIOUS"))
    finally:
        if username == "select":
            stack.drop_role(username)


# -- the local driver ------------------------------------------------------------------------------

def test_driver_pause_callback_and_the_rotation_window(stack: Any, rot: Rotatable) -> None:
    seen: list[tuple[RotationStep, bool, bool]] = []

    def check(result: StepResult) -> None:
        seen.append((result.step, logs_in(stack, rot.doc("AWSCURRENT")),
                     logs_in(stack, rot.doc("AWSPENDING"))))  # fmt: skip

    started = time.monotonic()
    run = rot.rotate(pause=0.2, between_steps=check)
    assert run.completed and time.monotonic() - started >= 0.6
    assert [s[0] for s in seen] == list(RotationStep)
    assert all(current or pending for _, current, pending in seen)
    assert seen[1] == (RotationStep.SET, False, True)  # the window, bridged by AWSPENDING


def test_driver_with_rotate_secret_on_a_moto_lambda_stub(stack: Any, sm: Any) -> None:
    """On a plain moto server, RotateSecret registers the version when the Lambda is a stub."""
    rot = make_rotatable(stack, sm)
    stack.enable_rotation(rot.secret_id, lambda_arn=stack.secrets.stub_rotation_function())
    before = stack.secrets.count("RotateSecret", rot.secret_id)
    run = rot.rotate(register=register_with_rotate_secret(sm))
    assert run.completed
    assert stack.secrets.count("RotateSecret", rot.secret_id) == before + 1
    assert logs_in(stack, rot.doc()) and not logs_in(stack, rot.doc("AWSPREVIOUS"))


def test_driver_default_registration_is_rotate_secret_on_the_stack(
    stack: Any, rot: Rotatable
) -> None:
    """The driver knows no private route of the stack: it calls RotateSecret, which the stack
    answers as AWS would for a function that does nothing (the driver runs the steps)."""
    before = stack.secrets.count("RotateSecret", rot.secret_id)
    run = rot.rotate()
    assert run.completed and run.registered
    assert stack.secrets.count("RotateSecret", rot.secret_id) == before + 1
    stages = rot.sm.describe_secret(SecretId=rot.secret_id)["VersionIdsToStages"]
    assert "AWSCURRENT" in stages[run.token]
    assert logs_in(stack, rot.doc()) and not logs_in(stack, rot.doc("AWSPREVIOUS"))


def test_stack_registrar_needs_no_rotate_secret(stack: Any, rot: Rotatable) -> None:
    before = stack.secrets.count("RotateSecret", rot.secret_id)
    run = rot.rotate(register=stack.secrets.registrar())
    assert run.completed
    assert stack.secrets.count("RotateSecret", rot.secret_id) == before


def test_lambda_handler_runs_the_steps_and_logs_one_json_line_each(
    stack: Any, rot: Rotatable, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dbcreds.rotation")
    token = stack.secrets.register_pending(rot.secret_id)
    arn = rot.sm.describe_secret(SecretId=rot.secret_id)["ARN"]
    for step in RotationStep:
        lambda_handler({"SecretId": rot.secret_id, "ClientRequestToken": token,
                        "Step": step.value, "Ignored": "not logged"}, None)  # fmt: skip
    lines = [json.loads(r.getMessage()) for r in caplog.records
             if r.name == "dbcreds.rotation" and r.getMessage().startswith("{")]  # fmt: skip
    assert [line["step"] for line in lines] == [s.value for s in RotationStep]
    for line in lines:
        assert line["secret_arn"] == arn and line["token"] == token
        assert line["strategy"] == "single-user" and line["outcome"] == "success"
        assert isinstance(line["duration_ms"], float)
    assert "not logged" not in caplog.text
    assert logs_in(stack, rot.doc()) and rot.stages()[token] == ["AWSCURRENT"]


# -- TLS -----------------------------------------------------------------------------------------

def test_without_a_ca_rotation_uses_scram_channel_binding(
    stack: Any, rot: Rotatable, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No DBCREDS_ROTATION_SSLROOTCERT: the database cannot be verified by a CA, so every
    login demands SCRAM with channel binding over TLS; PostgreSQL does it, the rotation works."""
    monkeypatch.delenv("DBCREDS_ROTATION_SSLROOTCERT")
    assert rot.rotate().completed
    assert logs_in(stack, rot.doc())


def test_an_untrusted_certificate_stops_the_rotation_clearly(
    stack: Any, rot: Rotatable, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """A CA bundle that does not sign the database's certificate: nothing is sent, the error
    says what to configure, the database is unchanged."""
    import trustme

    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    monkeypatch.setenv("DBCREDS_ROTATION_SSLROOTCERT", str(other))
    verifier = role_verifier(stack, rot.username)
    with pytest.raises(NoWorkingCredentials) as info:
        rot.rotate()
    text = str(info.value)
    assert "AWSCURRENT" in text and "certificate verify failed" in text
    assert "DBCREDS_SSLROOTCERT" in text or "CA bundle" in text
    assert role_verifier(stack, rot.username) == verifier  # database unchanged
    assert logs_in(stack, rot.doc())


def test_ssl_false_in_the_secret_cannot_turn_tls_off(
    stack: Any, sm: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Whoever writes the secret must not lower the TLS of the passwords the rotation sends."""
    rot = make_rotatable(stack, sm, ssl=False)
    caplog.set_level(logging.WARNING, logger="dbcreds.rotation")
    assert rot.rotate().completed
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and all("ignored" in w and "'ssl' key" in w for w in warnings)
    assert not any("TLS is disabled" in w for w in warnings)
    assert logs_in(stack, rot.doc())
