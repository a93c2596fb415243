"""SecretProvider against the Secrets Manager endpoint (moto's server over HTTP)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import uuid
from typing import Any

import pytest

from dbcreds import (
    InvalidSecret,
    SecretAccessDenied,
    SecretNotFound,
    SecretProvider,
    SecretsManagerUnavailable,
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def in_threads(n: int, fn: Any) -> list[Any]:
    """Run fn in n threads released together; return results (re-raising the first error)."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = fn()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def test_32_threads_on_a_cold_cache_cause_one_call_and_one_more_after_ttl(
    stack: Any, aws_env: None, app: Any
) -> None:
    clock = Clock()
    provider = SecretProvider(app.secret_id, ttl=60, clock=clock)
    before = stack.secrets.count("GetSecretValue", secret_id=app.secret_id)

    secrets = in_threads(32, provider.get)
    assert stack.secrets.count("GetSecretValue", secret_id=app.secret_id) - before == 1
    assert {s.password for s in secrets} == {app.password}
    assert provider.version_id is not None

    clock.now += 61  # past the TTL (jitter only shortens it)
    in_threads(32, provider.get)
    assert stack.secrets.count("GetSecretValue", secret_id=app.secret_id) - before == 2


def test_refresh_forces_a_fetch_and_sees_a_new_version(
    stack: Any, aws_env: None, app: Any, sm_client: Any
) -> None:
    provider = SecretProvider(app.secret_id)
    first = provider.get()
    doc = json.loads(sm_client.get_secret_value(SecretId=app.secret_id,
                                                VersionStage="AWSCURRENT")["SecretString"])
    sm_client.put_secret_value(SecretId=app.secret_id, SecretString=json.dumps({**doc, "x": 1}))
    assert provider.get() is first  # cached
    fresh = provider.refresh()
    assert fresh.version_id != first.version_id and fresh.extra["x"] == 1
    assert provider.version_id == fresh.version_id


def test_pending_is_none_without_rotation(aws_env: None, app: Any) -> None:
    assert SecretProvider(app.secret_id).get_pending() is None


def test_missing_secret_is_typed(aws_env: None) -> None:
    with pytest.raises(SecretNotFound) as info:
        SecretProvider(f"nope-{uuid.uuid4().hex}").get()
    assert "nope-" in str(info.value)


VALID = {"engine": "postgres", "host": "127.0.0.1", "port": 5432, "username": "u",
         "password": "Very-Secret-Pw-123"}


@pytest.mark.parametrize(
    ("value", "key"),
    [
        ("this is { not json", None),
        (json.dumps([VALID]), None),
        (json.dumps({k: v for k, v in VALID.items() if k != "username"}), "username"),
        (json.dumps({k: v for k, v in VALID.items() if k != "password"}), "password"),
        (json.dumps({**VALID, "port": "abc"}), "port"),
        (json.dumps({**VALID, "password": ""}), "password"),
        (json.dumps({**VALID, "password": ["Very-Secret-Pw-123"]}), "password"),
        (b"Very-Secret-Pw-123", None),  # binary-only secret
    ],
    ids=["not-json", "json-array", "no-username", "no-password", "port-abc",
         "empty-password", "non-string-password", "binary-only"],
)
def test_bad_secret_values_are_typed_and_never_echoed(
    aws_env: None, sm_client: Any, value: str | bytes, key: str | None
) -> None:
    name = f"bad-{uuid.uuid4().hex[:8]}"
    if isinstance(value, bytes):
        sm_client.create_secret(Name=name, SecretBinary=value)
    else:
        sm_client.create_secret(Name=name, SecretString=value)
    with pytest.raises(InvalidSecret) as info:
        SecretProvider(name).get()
    assert info.value.key == key
    assert name in str(info.value)
    for text in (str(info.value), repr(info.value)):
        assert "Very-Secret-Pw-123" not in text and "abc" not in text.replace("'", " ")


def test_outage_without_cache_is_typed_with_the_aws_code(
    stack: Any, aws_env: None, app: Any
) -> None:
    with stack.secrets.outage(), pytest.raises(SecretsManagerUnavailable) as info:
        SecretProvider(app.secret_id).get()
    assert info.value.code and app.password not in str(info.value)


def test_access_denied_is_typed() -> None:
    class Denied(Exception):
        def __init__(self) -> None:
            self.response = {"Error": {"Code": "AccessDeniedException", "Message": "nope"}}

    class Client:
        def get_secret_value(self, **_: Any) -> Any:
            raise Denied()

    with pytest.raises(SecretAccessDenied) as info:
        SecretProvider("app", client=Client()).get()
    assert info.value.code == "AccessDeniedException"


def test_debug_logging_never_shows_the_password(
    stack: Any, aws_env: None, app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from dbcreds._aws import WITHHELD

    caplog.set_level(logging.DEBUG)
    provider = SecretProvider(app.secret_id)
    provider.get()
    provider.refresh()
    with stack.secrets.outage(), pytest.raises(SecretsManagerUnavailable):
        SecretProvider(app.secret_id).get()
    messages = [r.getMessage() + (r.exc_text or "") for r in caplog.records]
    assert any(WITHHELD in m for m in messages), "botocore debug records were expected"
    assert not [m for m in messages if app.password in m]


def test_import_dbcreds_imports_neither_boto3_nor_psycopg() -> None:
    code = (
        "import sys, dbcreds\n"
        "heavy = ('boto3', 'botocore', 'psycopg', 'psycopg_pool')\n"
        "print(','.join(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
