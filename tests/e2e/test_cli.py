"""The ``dbcreds`` command: check, rotate (--local and on "AWS"), demo (its wiring)."""

from __future__ import annotations

import io
import json
import secrets
import subprocess
import sys
import uuid
from typing import Any

import psycopg
import pytest

from dbcreds.cli import main


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def env(rotation_env: Any) -> None:
    """The stack's endpoint and CA; default rotation settings (``rotate --local``)."""


def current(stack: Any, secret_id: str) -> dict[str, Any]:
    value = stack.sm().get_secret_value(SecretId=secret_id, VersionStage="AWSCURRENT")
    return dict(json.loads(value["SecretString"]))


# -- check -----------------------------------------------------------------------------------

def test_check_ok_directly_and_through_pgbouncer(stack: Any, app: Any, env: None) -> None:
    code, out, err = run("check", app.secret_id)
    assert code == 0, err
    assert out.startswith("OK: AWSCURRENT of") and f"as '{app.username}'" in out
    host, port = stack.address("pgbouncer")
    code, out, err = run("check", app.secret_id, "--host", host, "--port", str(port))
    assert code == 0, err
    assert f"{host}:{port}/" in out
    assert app.password not in out + err


def test_check_reports_a_refused_login_without_the_password(stack: Any, env: None) -> None:
    username = f"cli_{secrets.token_hex(4)}"
    stack.create_role(username, "Right-" + secrets.token_hex(8))
    wrong = "Wrong-" + secrets.token_hex(8)
    name = f"dbcreds-test/cli-{secrets.token_hex(6)}"
    stack.create_secret(name, stack.secret_doc(username, wrong))
    code, out, err = run("check", name)
    assert code == 1 and out == ""
    assert err.startswith("FAILED:") and "password authentication failed" in err
    assert wrong not in err


def test_check_missing_secret_and_missing_stage(app: Any, env: None) -> None:
    code, _, err = run("check", "dbcreds-test/no-such-secret")
    assert code == 1 and "ResourceNotFoundException" in err
    code, _, err = run("check", app.secret_id, "--stage", "AWSPENDING")
    assert code == 1 and "AWSPENDING" in err


def test_check_invalid_secret(stack: Any, env: None) -> None:
    name = f"dbcreds-test/cli-{secrets.token_hex(6)}"
    stack.create_secret(name, {"username": "x", "password": "Hidden-123", "engine": "mysql"})
    code, _, err = run("check", name)
    assert code == 1 and "'engine'" in err and "Hidden-123" not in err


# -- rotate --local ------------------------------------------------------------------------------

def test_rotate_local(stack: Any, app: Any, env: None) -> None:
    stack.enable_rotation(app.secret_id)
    code, out, err = run("rotate", app.secret_id, "--local")
    assert code == 0, err
    lines = out.splitlines()
    assert [line.split()[0] for line in lines[1:5]] == [
        "createSecret", "setSecret", "testSecret", "finishSecret",
    ]
    assert lines[-1].startswith("rotated: AWSCURRENT is now version")
    doc = current(stack, app.secret_id)
    assert doc["password"] != app.password and doc["password"] not in out + err
    with psycopg.connect(stack.dsn(doc["username"], doc["password"]), connect_timeout=5):
        pass


def test_rotate_local_stop_and_resume(stack: Any, app: Any, env: None) -> None:
    stack.enable_rotation(app.secret_id)
    code, out, _ = run("rotate", app.secret_id, "--local", "--stop-after", "set",
                       "--pause", "0.05")  # fmt: skip
    assert code == 0 and "stopped after setSecret" in out
    token = out.rsplit("--token ", 1)[1].split()[0]
    uuid.UUID(token)
    assert current(stack, app.secret_id)["password"] == app.password
    code, out, _ = run("rotate", app.secret_id, "--local", "--token", token)
    assert code == 0 and "rotated" in out and "AWSPENDING already logs in" in out
    code, out, _ = run("rotate", app.secret_id, "--local", "--token", token)
    assert code == 0 and "already AWSCURRENT" in out


def test_rotate_local_failure_is_reported(stack: Any, app: Any, env: None) -> None:
    code, _, err = run("rotate", app.secret_id, "--local")  # rotation not enabled
    assert code == 1 and "rotation is not enabled" in err


# -- rotate on AWS: RotateSecret ------------------------------------------------------------------

def test_rotate_calls_rotate_secret(stack: Any, app: Any, env: None) -> None:
    stack.enable_rotation(app.secret_id, lambda_arn=stack.secrets.stub_rotation_function())
    before = stack.secrets.count("RotateSecret", app.secret_id)
    code, out, err = run("rotate", app.secret_id)
    assert code == 0, err
    assert out.startswith("rotation started for arn:aws:secretsmanager:")
    assert stack.secrets.count("RotateSecret", app.secret_id) == before + 1


def test_rotate_reports_rotate_secret_errors(env: None) -> None:
    code, _, err = run("rotate", "dbcreds-test/no-such-secret")
    assert code == 1 and "RotateSecret" in err and "ResourceNotFoundException" in err


# -- usage ---------------------------------------------------------------------------------------

def test_demo_is_wired_and_checks_its_options() -> None:
    # The demo itself runs in tests/e2e/test_demo.py; here only the wiring (a usage error, fast).
    code, _, err = run("demo", "--duration", "0")
    assert code == 2 and "--duration" in err


def test_demo_without_the_repository_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    # A plain `pip install dbcreds` has no dbcreds_testing (no wheel ships it).
    monkeypatch.setitem(sys.modules, "dbcreds_testing", None)
    code, out, err = run("demo", "--duration", "5")
    assert code == 2 and not out
    assert "the demo needs a checkout of the dbcreds repository: make demo" in err


def test_check_and_rotate_do_not_import_the_test_harness() -> None:
    probe = ("import sys; from dbcreds.cli import _parser\n"
             "_parser().parse_known_args(['check', 's'])\n"
             "print(sorted(m for m in sys.modules if m.startswith('dbcreds_testing')))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True, timeout=60)
    assert done.stdout.strip() == "[]"


def test_pause_and_stop_after_need_local() -> None:
    code, _, err = run("rotate", "s", "--pause", "1")
    assert code == 2 and "--local" in err


def test_usage_errors_exit_2() -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        main(["rotate", "s", "--local", "--stop-after", "dropSecret"])
