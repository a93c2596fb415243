"""RDS IAM database authentication: IamAuthSource and the pools that use it.

boto3 generates an auth token on this machine (a SigV4-presigned URL: no endpoint is called),
so the unit tests parse real tokens made with dummy credentials. PostgreSQL cannot validate
IAM tokens locally (RDS does it with its ``rds_iam`` role and AWS), so the plumbing tests set
the role's server-side password to the token itself: that proves the pool logs in with exactly
the token the source generated, renewed when the source renews it, not that AWS accepts it.

TLS: a token goes only to a verified server: ``verify-full`` (against the system trust store
by default, or the given CA bundle); ``require``, ``disable``, ``allow`` and ``prefer`` are
refused. The tests check that on the parameters the pool passes to libpq, and that libpq then
refuses the local server (whose certificate the system store does not trust) before any token
is sent. The plumbing tests reach that server with the stack's CA, verify-full, like any
client of the stack.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest

from dbcreds import AuthenticationFailed, ConfigurationError, CredentialPool
from dbcreds.aio import AsyncCredentialPool
from dbcreds.config import Settings
from dbcreds.iam import TOKEN_LIFETIME, IamAuthSource
from dbcreds.login import CredentialSource, source_for
from dbcreds.pool import build_pool
from dbcreds.tls import system_trust_file
from support import Clock

HOST = "orders.proxy-abc123.eu-west-1.rds.amazonaws.com"


@pytest.fixture
def fake_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Dummy credentials and a region for boto3; no profile, no config, no endpoint."""
    import os

    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-central-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))


def parse(token: str) -> tuple[str | None, int | None, dict[str, str]]:
    """host, port and query of a token (``host:port/?Action=connect&DBUser=...``)."""
    url = urlsplit("https://" + token)
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    return url.hostname, url.port, query


class CountingClient:
    """Wraps a real boto3 rds client: counts generations, optionally slows them down."""

    def __init__(self, delay: float = 0.0) -> None:
        import boto3

        self.real = boto3.session.Session().client("rds")
        self.meta = self.real.meta
        self.delay = delay
        self.calls = 0
        self._lock = threading.Lock()

    def generate_db_auth_token(self, **kwargs: Any) -> str:
        with self._lock:
            self.calls += 1
        time.sleep(self.delay)
        token: str = self.real.generate_db_auth_token(**kwargs)
        return token


# -- the token --------------------------------------------------------------------------------


def test_token_is_generated_for_the_right_host_port_user_and_region(fake_aws: None) -> None:
    source = IamAuthSource(HOST, 5432, "app_user", dbname="orders", region="eu-west-1")
    creds = source.get()
    host, port, query = parse(creds.password)
    assert (host, port) == (HOST, 5432)
    assert query["Action"] == "connect"
    assert query["DBUser"] == "app_user"
    assert query["X-Amz-Expires"] == str(int(TOKEN_LIFETIME))
    # <access key>/<date>/<region>/rds-db/aws4_request
    assert query["X-Amz-Credential"].split("/")[2:] == ["eu-west-1", "rds-db", "aws4_request"]
    assert query["X-Amz-Signature"]
    assert (creds.username, creds.host, creds.port, creds.dbname) == (
        "app_user", HOST, 5432, "orders"
    )
    # The region defaults to the client's (AWS_DEFAULT_REGION), as for every other AWS call.
    _, _, default_query = parse(IamAuthSource(HOST, 6543, "u").get().password)
    assert default_query["X-Amz-Credential"].split("/")[2] == "eu-central-1"


def test_token_never_shows_in_reprs_or_botocore_debug_logs(
    fake_aws: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    source = IamAuthSource(HOST, 5432, "app_user", region="eu-west-1")
    creds = source.get()
    signature = parse(creds.password)[2]["X-Amz-Signature"]
    texts = [repr(source), repr(creds), str(creds), str(source.get_stats())] + [
        r.getMessage() for r in caplog.records
    ]
    assert not [t for t in texts if signature in t or creds.password in t]


def test_token_is_cached_and_renewed_before_it_expires(fake_aws: None) -> None:
    clock = Clock()
    source = IamAuthSource(HOST, 5432, "app_user", region="eu-west-1", renew_after=600,
                           clock=clock)
    first = source.get()
    clock.now += 599
    assert source.get() is first  # cached for most of its 15-minute life
    clock.now += 1  # 10 minutes old: 5 minutes before it expires, a new one
    second = source.get()
    assert second is not first and second.version_id != first.version_id
    assert source.get() is second
    stats = source.get_stats()
    assert (stats["tokens"], stats["renewals"], stats["cache_hits"]) == (2, 1, 2)
    with pytest.raises(ValueError, match="renew_after"):
        IamAuthSource(HOST, 5432, "u", renew_after=TOKEN_LIFETIME)  # would use expired tokens
    source.invalidate()
    assert source.get() is not second  # SnapStart: nothing cached survives


def test_generation_and_refresh_are_single_flight(fake_aws: None) -> None:
    client = CountingClient(delay=0.05)
    source = IamAuthSource(HOST, 5432, "app_user", client=client)
    got: list[Any] = []
    barrier = threading.Barrier(16)

    def cold_get() -> None:
        barrier.wait()
        got.append(source.get())

    threads = [threading.Thread(target=cold_get) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert client.calls == 1 and len({id(s) for s in got}) == 1

    # 16 connections refused together ask for one new token, not 16.
    refused = got[0]

    def refresh() -> None:
        barrier.wait()
        got.append(source.refresh(stale=refused))

    threads = [threading.Thread(target=refresh) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert client.calls == 2
    assert len({id(s) for s in got[16:]}) == 1 and got[16] is not refused


def test_no_region_is_a_clear_configuration_error(
    fake_aws: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    with pytest.raises(ConfigurationError, match="AWS_DEFAULT_REGION"):
        IamAuthSource(HOST, 5432, "u").get()


def test_iam_source_is_a_credential_source(fake_aws: None) -> None:
    source: CredentialSource = IamAuthSource(HOST, 5432, "u")
    assert source.get_pending() is None
    assert source.changed_recently(60) is False
    assert source.secret_id == f"iam:u@{HOST}:5432"


# -- TLS is forced ----------------------------------------------------------------------------


def test_pool_verifies_the_server_by_default(
    fake_aws: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PGSSLROOTCERT", raising=False)
    source = IamAuthSource(HOST, 5432, "app_user")
    pool = CredentialPool(source, open=False)
    _, params = pool.credentials.params("", dict(pool.kwargs or {}), source.get())
    assert params["sslmode"] == "verify-full"
    assert params["sslrootcert"] == system_trust_file()  # RDS Proxy: a public CA
    assert "require_auth" not in params  # the token is a cleartext password, to a verified peer
    assert (params["host"], params["port"], params["user"]) == (HOST, 5432, "app_user")
    # A CA bundle of the operator's (a database endpoint: the RDS CA bundle) is used.
    strict = CredentialPool(source, sslrootcert="/opt/rds-global-bundle.pem", open=False)
    _, params = strict.credentials.params("", dict(strict.kwargs or {}), source.get())
    assert (params["sslmode"], params["sslrootcert"]) == (
        "verify-full", "/opt/rds-global-bundle.pem"
    )


@pytest.mark.parametrize("how", ["sslmode", "kwargs", "conninfo"])
@pytest.mark.parametrize("mode", ["disable", "require", "allow", "prefer"])
def test_pool_refuses_a_mode_that_may_send_the_token_to_an_unverified_server(
    fake_aws: None, mode: str, how: str
) -> None:
    source = IamAuthSource(HOST, 5432, "app_user")
    options: dict[str, Any] = {
        "sslmode": {"sslmode": mode},
        "kwargs": {"kwargs": {"sslmode": mode}},
        "conninfo": {"conninfo": f"sslmode={mode}"},
    }[how]
    refused = "verified server|allow and prefer"
    with pytest.raises(ConfigurationError, match=refused):
        CredentialPool(source, open=False, **options)
    with pytest.raises(ConfigurationError, match=refused):
        AsyncCredentialPool(source, **options)


def test_pool_refuses_an_endpoint_the_token_is_not_signed_for(fake_aws: None) -> None:
    source = IamAuthSource(HOST, 5432, "app_user")
    with pytest.raises(ConfigurationError, match="signed for"):
        CredentialPool(source, host="db.internal.example", open=False)


def test_verification_reaches_libpq(
    stack: Any, app: Any, fake_aws: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The local server's certificate is signed by the stack's CA, which the system trust
    store does not hold: libpq gives up before it sends any token."""
    monkeypatch.delenv("PGSSLROOTCERT", raising=False)
    source = IamAuthSource(stack.postgres.host, stack.postgres.port, app.username,
                           dbname=stack.dbname)
    pool = CredentialPool(source, open=False)
    info, params = pool.credentials.params("", dict(pool.kwargs or {}), source.get())
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        psycopg.connect(info, connect_timeout=5, **params).close()


# -- the pool uses the token (plumbing: server-side password = token) -------------------------


def _new_second_token(source: IamAuthSource, old: str) -> str:
    """Renew until the token differs (tokens are signed per second: two made within the
    same second are equal). Bounded: ~1 s."""
    deadline = time.monotonic() + 3.0
    token = source.refresh().password
    while token == old and time.monotonic() < deadline:
        time.sleep(0.05)
        token = source.refresh().password
    assert token != old
    return token


def test_pool_logs_in_with_the_token_and_renews_it(
    stack: Any, app: Any, aws_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """Plumbing only: the role's password is set to the token (see the module docstring); the
    server is verified with the stack's CA (``aws_env``), verify-full."""
    caplog.set_level(logging.DEBUG)
    clock = Clock()
    source = IamAuthSource(
        stack.postgres.host, stack.postgres.port, app.username, dbname=stack.dbname,
        renew_after=600, clock=clock,
    )
    token = source.get().password
    stack.set_password(app.username, token)
    pool = CredentialPool(source, open=True, min_size=1, max_size=2, timeout=10)
    try:
        with pool.connection() as conn:
            assert conn.execute("select current_user").fetchone() == (app.username,)
        assert source.get_stats()["tokens"] == 1

        # Ten minutes later the source renews the token; the database accepts only the new
        # one now, and the pool's new connections log in with it.
        clock.now += 600
        renewed = source.get().password  # renewed by age
        assert source.get_stats()["renewals"] == 1
        if renewed == token:  # made within the same second as the first one
            renewed = _new_second_token(source, token)
        stack.set_password(app.username, renewed)
        pool.drain()
        for _ in range(5):
            with pool.connection() as conn:
                assert conn.execute("select current_user").fetchone() == (app.username,)

        # A token the database refuses: a fresh one is tried, then a fast, clear failure.
        stack.set_password(app.username, "not-" + renewed[:20])
        pool.drain()
        t0 = time.monotonic()
        with pytest.raises(AuthenticationFailed) as info, pool.connection():
            pass
        assert time.monotonic() - t0 < 3.0
        assert source.secret_id in str(info.value)
    finally:
        pool.close()
    texts = [str(info.value), repr(info.value), repr(pool)] + [
        r.getMessage() + (r.exc_text or "") for r in caplog.records
    ]
    assert not [t for t in texts if token in t or renewed in t]


def test_async_pool_logs_in_with_the_token(
    stack: Any, app: Any, aws_env: dict[str, str]
) -> None:
    """Plumbing only, as above, through AsyncCredentialPool."""
    source = IamAuthSource(
        stack.postgres.host, stack.postgres.port, app.username, dbname=stack.dbname,
    )
    stack.set_password(app.username, source.get().password)

    async def scenario() -> Any:
        async with AsyncCredentialPool(source, min_size=1, max_size=2, timeout=10) as pool:
            async with pool.connection() as conn:
                return await (await conn.execute("select current_user")).fetchone()

    assert asyncio.run(asyncio.wait_for(scenario(), 30)) == (app.username,)


# -- configuration by environment --------------------------------------------------------------


def test_settings_build_an_iam_pool_from_the_environment(fake_aws: None) -> None:
    env = {"DBCREDS_IAM_USER": "app_user", "DBCREDS_HOST": HOST, "DBCREDS_DBNAME": "orders",
           "DBCREDS_SSLMODE": "verify-full"}
    settings = Settings.from_env(env)
    source = source_for(settings)
    assert isinstance(source, IamAuthSource)
    assert (source.host, source.port, source.username, source.dbname) == (
        HOST, 5432, "app_user", "orders"
    )
    built = CredentialPool(source, open=False, **settings.pool_options())
    _, params = built.credentials.params("", dict(built.kwargs or {}), source.get())
    assert params["sslmode"] == "verify-full"

    with pytest.raises(ConfigurationError, match="DBCREDS_HOST"):
        Settings.from_env({"DBCREDS_IAM_USER": "app_user"})
    with pytest.raises(ConfigurationError, match="both set"):
        Settings.from_env({**env, "DBCREDS_SECRET_ID": "prod/app"})
    with pytest.raises(ConfigurationError, match="DBCREDS_SSLMODE"):
        Settings.from_env({**env, "DBCREDS_SSLMODE": "prefer"})
    for weak in ("require", "disable"):
        with pytest.raises(ConfigurationError, match="verified server"):
            build_pool(Settings.from_env({**env, "DBCREDS_SSLMODE": weak}))
