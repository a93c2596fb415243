"""Lambda SnapStart: no cached secret and no pooled connection survives a snapshot restore.

The Lambda runtime's ``snapshot_restore_py`` does not exist here: a fake one is put in
``sys.modules``; it records the hooks dbcreds registers and runs them as the runtime would
(before-snapshot hooks in reverse order of registration, after-restore hooks in order).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest

import dbcreds
import dbcreds.pool as pool_module
from dbcreds import SecretProvider, snapstart


class FakeRuntime(ModuleType):
    """Stands in for the Lambda runtime's snapshot_restore_py."""

    def __init__(self) -> None:
        super().__init__("snapshot_restore_py")
        self.before: list[Callable[[], None]] = []
        self.after: list[Callable[[], None]] = []

    def register_before_snapshot(self, func: Callable[..., Any], *a: Any, **kw: Any) -> Any:
        self.before.append(lambda: func(*a, **kw))
        return func

    def register_after_restore(self, func: Callable[..., Any], *a: Any, **kw: Any) -> Any:
        self.after.append(lambda: func(*a, **kw))
        return func

    def snapshot(self) -> None:
        for hook in reversed(self.before):
            hook()

    def restore(self) -> None:
        for hook in self.after:
            hook()


@pytest.fixture
def runtime(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeRuntime]:
    fake = FakeRuntime()
    monkeypatch.setitem(sys.modules, "snapshot_restore_py", fake)
    monkeypatch.setenv("AWS_LAMBDA_INITIALIZATION_TYPE", "snap-start")
    yield fake


@pytest.fixture
def lambda_env(stack: Any, app: Any, aws_env: dict[str, str],
               monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """get_connection()'s environment, straight to PostgreSQL (one backend per connection)."""
    monkeypatch.setenv("DBCREDS_SECRET_ID", app.secret_id)
    monkeypatch.setenv("DBCREDS_HOST", stack.postgres.host)
    monkeypatch.setenv("DBCREDS_PORT", str(stack.postgres.port))
    dbcreds.close_default_pool()
    yield app
    dbcreds.close_default_pool()
    from dbcreds import aio

    aio._close_default_outside_loop()


def fetches(stack: Any, app: Any) -> int:
    return int(stack.secrets.count("GetSecretValue", secret_id=app.secret_id))


def backend_pid() -> int:
    with dbcreds.get_connection() as conn:
        row = conn.execute("select pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


def test_install_does_nothing_outside_snapstart(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeRuntime()
    monkeypatch.setitem(sys.modules, "snapshot_restore_py", fake)
    monkeypatch.delenv("AWS_LAMBDA_INITIALIZATION_TYPE", raising=False)
    assert snapstart.install() is False
    monkeypatch.setenv("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand")
    assert snapstart.install() is False
    assert fake.before == fake.after == []
    # Under SnapStart without the runtime's module (not in a Lambda runtime): a warning.
    monkeypatch.setenv("AWS_LAMBDA_INITIALIZATION_TYPE", "snap-start")
    monkeypatch.setitem(sys.modules, "snapshot_restore_py", None)  # import fails
    assert snapstart.install() is False
    assert "snapshot_restore_py" in caplog.text


def test_hooks_are_registered_once(runtime: FakeRuntime) -> None:
    for _ in range(3):
        assert snapstart.install() is True
    snapstart.register(SecretProvider("some/secret"))
    assert len(runtime.before) == len(runtime.after) == 1


def test_snapshot_and_restore_renew_the_cache_and_the_default_pool(
    stack: Any, lambda_env: Any, runtime: FakeRuntime
) -> None:
    app = lambda_env
    # Init phase: the function warms dbcreds up (as a module-scope call would).
    pid_before = backend_pid()
    pool_before = pool_module.default_pool()
    assert len(runtime.before) == 1, "the default pool installs the hooks under SnapStart"
    mine = snapstart.register(SecretProvider(app.secret_id))
    mine.get()
    fetched = fetches(stack, app)

    runtime.snapshot()
    assert pool_before.closed  # no connection in the snapshot
    assert pool_module._default is None
    assert pool_before.provider.version_id is None  # no secret in the snapshot
    assert mine.version_id is None

    runtime.restore()
    # The default pool is rebuilt (connecting in its background threads): a new pool, a
    # new backend, and the secret fetched again from Secrets Manager.
    pool_after = pool_module._default
    assert pool_after is not None and pool_after is not pool_before
    pid_after = backend_pid()
    assert pid_after != pid_before
    assert fetches(stack, app) > fetched
    again = fetches(stack, app)
    assert mine.get().username == app.username  # the registered provider fetches again
    assert fetches(stack, app) == again + 1


def test_snapshot_and_restore_renew_the_default_async_pool(
    stack: Any, lambda_env: Any, runtime: FakeRuntime
) -> None:
    app = lambda_env

    async def invocation() -> tuple[int, object]:
        from dbcreds.aio import default_async_pool

        async with dbcreds.get_async_connection() as conn:
            row = await (await conn.execute("select pg_backend_pid()")).fetchone()
        assert row is not None
        # the pool itself, not its id(): a collected pool's id may be reused by the next one
        return int(row[0]), await default_async_pool()

    loop = asyncio.new_event_loop()  # one loop for the life of the function
    try:
        pid_before, pool_before = loop.run_until_complete(invocation())
        fetched = fetches(stack, app)
        runtime.snapshot()  # the loop is idle between invocations: the pool closes on it
        from dbcreds import aio

        assert aio._default is None
        runtime.restore()
        pid_after, pool_after = loop.run_until_complete(invocation())
        assert pool_after is not pool_before and pid_after != pid_before
        assert fetches(stack, app) == fetched + 1
        loop.run_until_complete(dbcreds.close_default_async_pool())
    finally:
        loop.close()


def test_iam_tokens_do_not_survive_a_snapshot(
    runtime: FakeRuntime, monkeypatch: pytest.MonkeyPatch, tmp_path: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from dbcreds.iam import IamAuthSource

    for name, value in {
        "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
    }.items():
        monkeypatch.setenv(name, value)
    source = snapstart.register(IamAuthSource("db.example", 5432, "app_user"))
    first = source.get()
    caplog.set_level(logging.INFO, logger="dbcreds.snapstart")
    runtime.snapshot()
    assert source.get_stats()["token_age"] is None  # nothing cached in the snapshot
    runtime.restore()
    assert source.get() is not first and source.get_stats()["tokens"] == 2
    assert first.password not in caplog.text
