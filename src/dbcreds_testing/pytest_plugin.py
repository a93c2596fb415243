"""pytest plugin: prove in your own CI that your application survives a secret rotation.

Installed with the ``dbcreds-testing`` distribution (``pip install dbcreds-testing``; its
``pytest11`` entry point loads this module), or named explicitly (``-p
dbcreds_testing.pytest_plugin``). It needs the machine's PostgreSQL server binaries (``initdb``,
``pg_ctl``; PostgreSQL 14 or later) and ``pgbouncer`` on the PATH (Debian: ``apt-get install
postgresql pgbouncer``), or ``DBCREDS_TEST_DSN`` naming a PostgreSQL to use; run as root,
the binaries are run as the ``postgres`` user.

Fixtures:

``dbcreds_stack`` (session)
    A `LocalStack`, started once per test session: PostgreSQL (TLS from its own CA,
    scram-sha-256), PgBouncer checking the live database, an RDS Proxy stand-in (PgBouncer
    serving each watched secret's AWSCURRENT, as RDS Proxy does), and Secrets Manager (moto's
    server over HTTP). Torn down at the end; no process is left.

``dbcreds_app`` (function)
    A fresh database role and its secret, with the process environment set as a Lambda
    function's would be: ``DBCREDS_SECRET_ID``, ``DBCREDS_HOST``/``_PORT``/``_DBNAME`` pointing
    at the RDS Proxy stand-in (``@pytest.mark.dbcreds(via="pgbouncer")`` or ``"postgres"`` for
    the other routes), ``DBCREDS_SSLROOTCERT`` (the stack's CA: verify-full, as in
    production), botocore pointed at the stack's Secrets Manager with dummy credentials. So
    ``dbcreds.get_connection()`` in the code under test just works. ``dbcreds_app.rotate()``
    rotates the secret with dbcreds' own rotation handler (the four steps, single user),
    then waits until the proxy stand-in serves the new password; ``pause=`` seconds between
    steps leave the rotation window open while your code runs. The default pools of
    ``get_connection()``/``get_async_connection()`` are closed after the test.

Example (``examples/lambda_app/test_app.py`` in the dbcreds repository runs in its CI)::

    def test_orders_survive_a_rotation(dbcreds_app):
        import app  # your Lambda handler module, which uses dbcreds.get_connection()

        app.handler({"customer": "c1"}, None)
        dbcreds_app.rotate(pause=0.5)
        assert app.handler({"customer": "c1"}, None) == {"orders": 0}

This module imports only pytest at load time: a session that uses none of its fixtures
starts nothing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import pytest

if TYPE_CHECKING:
    from dbcreds.rotation.handler import StepResult
    from dbcreds.rotation.local import LocalRotation

    from .stack import LocalStack, Via

__all__ = ["DbcredsApp", "dbcreds_app", "dbcreds_stack", "dbcreds_stack_options"]

_ROUTES = ("rds_proxy", "pgbouncer", "postgres")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "dbcreds(via): the route of dbcreds_app's DBCREDS_HOST: rds_proxy (default), "
        "pgbouncer or postgres",
    )


@pytest.fixture(scope="session")
def dbcreds_stack_options() -> dict[str, Any]:
    """Keyword arguments of the session's `LocalStack` (override it in a conftest.py, e.g.
    ``{"pg_settings": {"log_statement": "all"}}``)."""
    return {}


@pytest.fixture(scope="session")
def dbcreds_stack(dbcreds_stack_options: dict[str, Any]) -> Iterator[LocalStack]:
    """The local stack of this test session (see the module docstring)."""
    from ._proc import pid_alive
    from .stack import LocalStack

    with LocalStack(**dbcreds_stack_options) as stack:
        pids = stack.pids()
        yield stack
        pids += stack.pids()
    left = sorted({pid for pid in pids if pid_alive(pid)})
    assert not left, f"processes of the dbcreds test stack still running: {left}"


@dataclass
class DbcredsApp:
    """What `dbcreds_app` gives a test: the role, its secret and the environment set."""

    stack: LocalStack
    secret_id: str
    username: str
    via: str
    env: dict[str, str] = field(repr=False)
    rotations: int = 0

    def rotate(
        self, *, pause: float = 0.0,
        between_steps: Callable[[StepResult], None] | None = None,
    ) -> LocalRotation:
        """Rotate the secret (dbcreds' rotation handler, single user: createSecret,
        setSecret, testSecret, finishSecret), *pause* seconds between steps; return once the
        proxy stand-in serves the new password. Raises if the rotation failed."""
        from dbcreds.rotation.local import rotate_locally

        rotation = rotate_locally(self.secret_id, pause=pause, between_steps=between_steps)
        if not rotation.completed:
            raise AssertionError(f"the rotation of {self.secret_id!r} did not complete")
        self.stack.rds_proxy.wait_applied(self.secret_id, rotation.token, timeout=15)
        self.rotations += 1
        return rotation


def _route(request: pytest.FixtureRequest) -> str:
    marker = request.node.get_closest_marker("dbcreds")
    via = str(marker.kwargs.get("via", "rds_proxy")) if marker else "rds_proxy"
    if via not in _ROUTES:
        raise pytest.UsageError(f"@pytest.mark.dbcreds(via=...) must be one of {_ROUTES}")
    return via


@pytest.fixture
def dbcreds_app(
    dbcreds_stack: LocalStack, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
) -> Iterator[DbcredsApp]:
    """A fresh role and secret, the environment of a Lambda using them (module docstring)."""
    stack = dbcreds_stack
    via = _route(request)
    app = stack.new_app("app")
    stack.enable_rotation(app.secret_id)
    host, port = stack.address(cast("Via", via))
    for name in list(os.environ):
        if name.startswith(("AWS_", "DBCREDS_", "PARAMETERS_SECRETS_")) or name in (
            "PGSSLMODE", "PGSSLROOTCERT", "BOTO_CONFIG"
        ):
            monkeypatch.delenv(name)
    env = {
        **stack.env(),
        **stack.tls_env(),
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "DBCREDS_SECRET_ID": app.secret_id,
        "DBCREDS_HOST": host,
        "DBCREDS_PORT": str(port),
        "DBCREDS_DBNAME": stack.dbname,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    handle = DbcredsApp(stack, app.secret_id, app.username, via, env)
    try:
        yield handle
    finally:
        _close_defaults()
        stack.rds_proxy.unwatch(app.secret_id)


def _close_defaults() -> None:
    """Close every process-wide default a test's code opened (the default pools of
    ``get_connection()``, ``get_async_connection()``, ``dbcreds.psycopg2``, the SQLAlchemy
    engines' and Django's: they hold this test's secret): the registry SnapStart uses."""
    from dbcreds._registry import registered_defaults

    for default in registered_defaults():
        with contextlib.suppress(Exception):
            default.close()
