"""Shared fixtures: one real local stack per test session (see dbcreds_testing).

- ``stack``: the session's LocalStack (PostgreSQL 15, TLS only, scram-sha-256, log_statement=all,
  PgBouncer auth_query as ``stack.pgbouncer``, the RDS Proxy stand-in as ``stack.rds_proxy``,
  moto Secrets Manager/SNS as ``stack.secrets``). Torn down at the end of the session, which
  checks that none of its processes is left.
- ``aws_env``: the process environment points botocore at the stack (no profile, no config),
  and names the stack's CA as the CA bundle (``DBCREDS_SSLROOTCERT``,
  ``DBCREDS_ROTATION_SSLROOTCERT``, ``PGSSLROOTCERT``): every login verifies the servers.
- ``sm_client``: a boto3 Secrets Manager client for the stack's endpoint.
- ``app``: a fresh role + secret (watched by the RDS Proxy stand-in) for one test.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

try:
    import dbcreds_testing  # noqa: F401
except ImportError:  # a checkout without `pip install -e .` (no wheel ships dbcreds_testing)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dbcreds_testing import App, LocalStack


@pytest.fixture(scope="session")
def dbcreds_stack_options() -> dict[str, Any]:
    """The session's stack (the pytest plugin's ``dbcreds_stack``) logs every statement."""
    return {"pg_settings": {"log_statement": "all"}}


@pytest.fixture(scope="session")
def stack(dbcreds_stack: LocalStack) -> LocalStack:
    """The plugin's stack (``dbcreds_testing.pytest_plugin``): one per session, shared with
    the plugin's own fixtures (the example app's test), checked for leftovers at the end."""
    return dbcreds_stack


@pytest.fixture
def aws_env(stack: LocalStack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """Environment for boto3 -> the stack only: every other AWS_* variable is removed."""
    for name in list(os.environ):
        if name.startswith("AWS_") or name in ("BOTO_CONFIG",):
            monkeypatch.delenv(name)
    env = stack.env()
    # TLS as an operator configures it: the stack's CA is the CA bundle of the database and of
    # the proxies (verify-full, dbcreds' default), for the SDK, the rotation and libpq itself.
    env.update(stack.tls_env(), PGSSLROOTCERT=stack.ca_file)
    for name in ("DBCREDS_SSLMODE", "DBCREDS_ROTATION_SSLMODE", "PGSSLMODE"):
        monkeypatch.delenv(name, raising=False)
    env["AWS_CONFIG_FILE"] = str(tmp_path / "no-aws-config")
    env["AWS_SHARED_CREDENTIALS_FILE"] = str(tmp_path / "no-aws-credentials")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def rotation_env(aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """``aws_env`` and the rotation function's default settings: every variable
    ``RotationSettings.from_env`` reads is removed, except the stack's CA bundle that ``aws_env``
    sets (``DBCREDS_ROTATION_SSLROOTCERT``). A test that wants a strategy, a topic, ... sets it."""
    from dbcreds.rotation.settings import ENVIRONMENT

    for name in ENVIRONMENT:
        if name not in aws_env:
            monkeypatch.delenv(name, raising=False)
    return aws_env


@pytest.fixture(scope="session")
def sm_client(stack: LocalStack) -> Any:
    """boto3 secretsmanager client of the stack's endpoint (its calls count as the client's)."""
    return stack.secrets.client("secretsmanager")


@pytest.fixture
def app(stack: LocalStack) -> Iterator[App]:
    """A fresh role with a random password and its secret (host/port of the real database)."""
    fresh = stack.new_app("app")
    yield fresh
    stack.rds_proxy.unwatch(fresh.secret_id)


@pytest.fixture
def sm(stack: LocalStack, rotation_env: Any) -> Any:
    """The stack's Secrets Manager client for the rotation tests (after ``rotation_env``)."""
    return stack.secrets.client()


@pytest.fixture
def rotating_app(stack: LocalStack, app: App, rotation_env: dict[str, str]) -> App:
    """``app`` whose secret the rotation function may rotate (``rotation_env`` applies)."""
    stack.enable_rotation(app.secret_id)
    return app
