"""End-to-end: the alternating-users strategy (``ROTATION_STRATEGY=alternating-users``).

The master secret (named by the app secret's ``masterarn`` key) is a CREATEROLE user, as an RDS
master user is (not a superuser).
"""

from __future__ import annotations

import json
import logging
import secrets
import traceback
from typing import Any, NamedTuple

import psycopg
import pytest
from psycopg import sql

from dbcreds.rotation import RotationError, RotationStep, run_step
from dbcreds.rotation.local import LocalRotation, rotate_locally


@pytest.fixture
def sm(stack: Any, rotation_env: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("ROTATION_STRATEGY", "alternating-users")
    return stack.secrets.client()


class Pair(NamedTuple):
    secret_id: str
    username: str
    table: str
    master_id: str | None


def make_pair(stack: Any, username: str | None = None, *, master: bool = True) -> Pair:
    username = username or f"alt_{secrets.token_hex(4)}"
    password = "Init-" + secrets.token_urlsafe(18)
    stack.create_role(username, password)
    table = f"granted_{secrets.token_hex(4)}"
    extra: dict[str, Any] = {}
    with stack.admin() as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (n int)").format(sql.Identifier(table)))
        conn.execute(sql.SQL("INSERT INTO {} VALUES (42)").format(sql.Identifier(table)))
        conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(
            sql.Identifier(table), sql.Identifier(username)))  # fmt: skip
    if master:
        master_user = f"master_{secrets.token_hex(4)}"
        master_password = "Master-" + secrets.token_urlsafe(18)
        stack.create_role(master_user, master_password, createrole=True)
        with stack.admin() as conn:  # what PostgreSQL 16+ asks of a CREATEROLE user
            conn.execute(sql.SQL("GRANT {} TO {} WITH ADMIN OPTION").format(
                sql.Identifier(username), sql.Identifier(master_user)))  # fmt: skip
        extra["masterarn"] = stack.create_secret(
            f"dbcreds-test/master-{secrets.token_hex(6)}",
            stack.secret_doc(master_user, master_password),
        )
    name = f"dbcreds-test/alternating-{secrets.token_hex(6)}"
    stack.create_secret(name, stack.secret_doc(username, password, **extra))
    stack.enable_rotation(name)
    return Pair(name, username, table, extra.get("masterarn"))


def doc(sm: Any, secret_id: str, stage: str) -> dict[str, Any]:
    value = sm.get_secret_value(SecretId=secret_id, VersionStage=stage)
    return dict(json.loads(value["SecretString"]))


def connect(stack: Any, d: dict[str, Any], via: str = "postgres") -> psycopg.Connection[Any]:
    return stack.connect(d["username"], d["password"], via=via, connect_timeout=5)  # type: ignore[no-any-return]


def logs_in(stack: Any, d: dict[str, Any], via: str = "postgres") -> bool:
    try:
        with connect(stack, d, via) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.OperationalError:
        return False


def rotate(sm: Any, secret_id: str, **kwargs: Any) -> LocalRotation:
    return rotate_locally(secret_id, client=sm, **kwargs)


def test_three_alternating_rotations(stack: Any, sm: Any) -> None:
    pair = make_pair(stack)
    clone = pair.username + "_clone"
    older: list[dict[str, Any]] = [doc(sm, pair.secret_id, "AWSCURRENT")]
    for i, expected_user in enumerate([clone, pair.username, clone]):
        run = rotate(sm, pair.secret_id)
        assert run.completed
        current = doc(sm, pair.secret_id, "AWSCURRENT")
        previous = doc(sm, pair.secret_id, "AWSPREVIOUS")
        assert current["username"] == expected_user
        assert previous == older[-1]
        assert current["masterarn"] == previous["masterarn"]
        assert logs_in(stack, current) and logs_in(stack, current, via="pgbouncer")
        assert logs_in(stack, previous)  # AWSPREVIOUS keeps working until the next rotation
        if len(older) >= 2:
            assert not logs_in(stack, older[-2])  # ... and not after it
        with connect(stack, current) as conn:
            row = conn.execute(sql.SQL("SELECT n, current_user FROM {}").format(
                sql.Identifier(pair.table))).fetchone()  # fmt: skip
        assert row == (42, expected_user)  # the clone reads a table granted to the original
        if i == 0:
            assert run.results[1].detail == (
                f"role {clone!r} created as a member of {pair.username!r}"
            )
        else:
            assert "changed with the master secret" in run.results[1].detail
        older.append(current)
    with stack.admin() as conn:
        row = conn.execute(
            "SELECT rolcanlogin, pg_has_role(%s, %s, 'USAGE') FROM pg_roles WHERE rolname = %s",
            [clone, pair.username, clone],
        ).fetchone()
    assert row == (True, True)


def test_alternating_steps_are_idempotent_and_resume(stack: Any, sm: Any) -> None:
    pair = make_pair(stack)
    crashed = rotate(sm, pair.secret_id, stop_after=RotationStep.SET)
    event = {"SecretId": pair.secret_id, "ClientRequestToken": crashed.token,
             "Step": "setSecret"}  # fmt: skip
    assert run_step(event, client=sm).detail == "AWSPENDING already logs in"
    resumed = rotate(sm, pair.secret_id, token=crashed.token)
    assert resumed.completed and not resumed.registered
    assert doc(sm, pair.secret_id, "AWSCURRENT")["username"] == pair.username + "_clone"


def test_too_long_username_is_refused_before_anything_changes(stack: Any, sm: Any) -> None:
    pair = make_pair(stack, "l" * 50 + secrets.token_hex(4), master=False)
    with pytest.raises(RotationError, match="63-byte"):
        rotate(sm, pair.secret_id)
    described = sm.describe_secret(SecretId=pair.secret_id)["VersionIdsToStages"]
    pending = [v for v, s in described.items() if "AWSPENDING" in s]
    with pytest.raises(sm.exceptions.ResourceNotFoundException):  # no value was stored
        sm.get_secret_value(SecretId=pair.secret_id, VersionId=pending[0],
                            VersionStage="AWSPENDING")  # fmt: skip


def test_missing_masterarn_is_a_clear_error(stack: Any, sm: Any) -> None:
    pair = make_pair(stack, master=False)
    with pytest.raises(RotationError, match="masterarn") as info:
        rotate(sm, pair.secret_id)
    assert info.value.step == "setSecret"
    with stack.admin() as conn:
        found = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s",
                             [pair.username + "_clone"]).fetchone()  # fmt: skip
    assert found is None
    assert logs_in(stack, doc(sm, pair.secret_id, "AWSCURRENT"))


def test_no_password_in_debug_logs(
    stack: Any, sm: Any, caplog: pytest.LogCaptureFixture
) -> None:
    pair = make_pair(stack)
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="dbcreds")
    caplog.set_level(logging.DEBUG, logger="botocore")
    for _ in range(2):
        rotate(sm, pair.secret_id)
    caplog.set_level(logging.WARNING)
    assert pair.master_id is not None
    passwords = {doc(sm, pair.master_id, "AWSCURRENT")["password"]}
    listed = sm.list_secret_version_ids(SecretId=pair.secret_id)["Versions"]
    for version in listed:
        value = sm.get_secret_value(SecretId=pair.secret_id, VersionId=version["VersionId"])
        passwords.add(json.loads(value["SecretString"])["password"])
    assert len(passwords) == 4
    assert any(r.name.startswith("botocore") for r in caplog.records)
    for record in caplog.records:
        text = record.getMessage() + repr(record.args) + (record.exc_text or "")
        if record.exc_info and record.exc_info[1] is not None:
            text += "".join(traceback.format_exception(record.exc_info[1]))
        for password in passwords:
            assert password not in text
