"""The TLS policy (``dbcreds.tls``): a table of what each configuration does, the system trust
store, and the policy end to end against the local stack (which serves TLS with its own CA)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dbcreds import ConfigurationError, CredentialPool, SecretProvider, UntrustedServer, tls
from dbcreds.tls import login_tls, system_trust_file

# -- the policy, as a table -------------------------------------------------------------------

PASSWORD_VERIFIED = {"require_auth": "scram-sha-256,md5"}
CHANNEL_BINDING = {"sslmode": "require", "channel_binding": "require",
                   "require_auth": "scram-sha-256"}


@pytest.mark.parametrize(("sslmode", "root", "token", "default", "expected"), [
    # nothing configured: verify-full against the system store (SDK) ...
    (None, None, False, "system", {"sslmode": "verify-full", "sslrootcert": "SYSTEM",
                                   **PASSWORD_VERIFIED}),
    (None, None, True, "system", {"sslmode": "verify-full", "sslrootcert": "SYSTEM"}),
    # ... or, with no default trust (the rotation), SCRAM channel binding
    (None, None, False, None, CHANNEL_BINDING),
    (None, "/ca.pem", False, None, {"sslmode": "verify-full", "sslrootcert": "/ca.pem",
                                    **PASSWORD_VERIFIED}),
    # verify-ca: no host name check, so SCRAM channel binding as well, and a logged downgrade
    ("verify-ca", "/ca.pem", False, None, {"sslmode": "verify-ca", "sslrootcert": "/ca.pem",
                                           "channel_binding": "require",
                                           "require_auth": "scram-sha-256"}),
    ("Verify-Full", "system", False, None, {"sslmode": "verify-full", "sslrootcert": "SYSTEM",
                                            **PASSWORD_VERIFIED}),
    ("require", "/ca.pem", False, "system", CHANNEL_BINDING),
    ("disable", None, False, "system", {"sslmode": "disable", "require_auth": "scram-sha-256"}),
])  # fmt: skip
def test_policy_table(
    sslmode: str | None, root: str | None, token: bool, default: Any, expected: dict[str, str]
) -> None:
    policy = login_tls(sslmode=sslmode, sslrootcert=root, token=token, default_trust=default)
    expected = {k: system_trust_file() if v == "SYSTEM" else v for k, v in expected.items()}
    assert dict(policy.params) == {**expected, "gssencmode": "disable"}
    assert policy.verified == expected["sslmode"].startswith("verify")
    assert (policy.downgrade is not None) == (expected["sslmode"] in ("disable", "verify-ca"))


@pytest.fixture(autouse=True)
def _no_libpq_ca(monkeypatch: pytest.MonkeyPatch) -> None:
    """PGSSLROOTCERT counts as a configured CA: these tests set what they mean explicitly."""
    monkeypatch.delenv("PGSSLROOTCERT", raising=False)


def test_pgsslrootcert_is_a_configured_ca(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGSSLROOTCERT", "/etc/rds/global-bundle.pem")
    policy = login_tls(sslmode=None, sslrootcert=None, default_trust=None)
    assert (policy.sslmode, policy.params["sslrootcert"]) == (
        "verify-full", "/etc/rds/global-bundle.pem")


@pytest.mark.parametrize(("sslmode", "root", "token", "default", "match"), [
    ("prefer", None, False, "system", "allow and prefer"),
    ("allow", None, False, "system", "allow and prefer"),
    ("verify-everything", None, False, "system", "sslmode must be one of"),
    ("require", None, True, "system", "verified server"),
    ("disable", None, True, "system", "verified server"),
    (None, None, True, None, "verified server"),
    ("verify-full", None, False, None, "needs a CA bundle"),
    ("verify-ca", "/ca.pem", True, None, "needs verify-full"),
    ("verify-ca", None, False, "system", "any holder of any public certificate"),
    ("verify-ca", "system", False, None, "any holder of any public certificate"),
])  # fmt: skip
def test_policy_refusals(
    sslmode: str | None, root: str | None, token: bool, default: Any, match: str
) -> None:
    with pytest.raises(ConfigurationError, match=match):
        login_tls(sslmode=sslmode, sslrootcert=root, token=token, default_trust=default)


# -- "system" ---------------------------------------------------------------------------------

def test_system_trust_store_resolution(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = tmp_path / "roots.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    assert system_trust_file({"SSL_CERT_FILE": str(bundle)}) == str(bundle)
    with pytest.raises(ConfigurationError, match="SSL_CERT_FILE"):
        system_trust_file({"SSL_CERT_FILE": str(tmp_path / "missing.pem")})
    monkeypatch.setattr(tls, "_SYSTEM_BUNDLES", (str(bundle),))
    assert system_trust_file({}) == str(bundle)
    monkeypatch.setattr(tls, "_SYSTEM_BUNDLES", (str(tmp_path / "none.pem"),))
    found = system_trust_file({})  # certifi's bundle, else botocore's
    assert found.endswith("cacert.pem") and Path(found).is_file()
    monkeypatch.setattr(tls, "_mozilla_bundles", lambda: [str(tmp_path / "none.pem")])
    with pytest.raises(ConfigurationError, match="DBCREDS_SSLROOTCERT"):
        system_trust_file({})


def test_psycopg_binary_openssl_finds_no_system_roots_by_itself(tmp_path: Path) -> None:
    """Why dbcreds resolves "system" itself: libpq's ``sslrootcert=system`` with the OpenSSL
    bundled in psycopg[binary] looks in its build's directory. If this fails, a psycopg release
    changed that (and the README's Security model should say so)."""
    if psycopg.pq.__impl__ != "binary":
        pytest.skip("psycopg[binary] is not the implementation in use")
    libs = Path(psycopg.__file__).parent.parent / "psycopg_binary.libs"
    crypto = next(libs.glob("libcrypto-*.so*"), None)
    if crypto is None:
        pytest.skip("no bundled libcrypto")
    assert b'OPENSSLDIR: "/usr/lib/psycopg-openssl"' in crypto.read_bytes()
    assert not Path("/usr/lib/psycopg-openssl/cert.pem").exists()


def test_a_pool_refuses_an_old_libpq(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psycopg.pq, "version", lambda: 150008)
    with pytest.raises(ConfigurationError, match="libpq 16"):
        CredentialPool(SecretProvider("prod/app"), open=False)
    with pytest.raises(ConfigurationError, match="libpq 16"):  # the rotation and check too
        login_tls(sslmode=None, sslrootcert="/ca.pem", default_trust=None)


@pytest.mark.parametrize("host", ["/var/run/postgresql", "@abstract", "", "db.example,/tmp"])
def test_unix_sockets_are_refused(host: str) -> None:
    """libpq never uses TLS on a socket: whoever can create the socket file would get the
    login. The secret's host, DBCREDS_HOST and every entry of a host list are checked."""
    policy = login_tls(sslmode=None, sslrootcert="/ca.pem")
    with pytest.raises(ConfigurationError, match="Unix-domain socket"):
        tls.check_hosts({"host": host}, policy)
    tls.check_hosts({"host": "db.example.com,10.0.0.1"}, policy)  # TCP hosts are fine
    off = login_tls(sslmode="disable", sslrootcert=None)
    tls.check_hosts({"host": host}, off)  # explicit and logged: a local socket in development


def test_a_pool_fails_fast_on_a_socket_host(aws_env: dict[str, str], app: Any) -> None:
    pool = CredentialPool(SecretProvider(app.secret_id), open=True, host="/tmp", min_size=1,
                          max_size=1, timeout=15)
    try:
        with pytest.raises(UntrustedServer, match="Unix-domain socket"), pool.connection():
            pass
    finally:
        pool.close()


# -- against the stack ------------------------------------------------------------------------

def test_default_pool_verifies_the_stack_and_uses_tls(
    stack: Any, app: Any, aws_env: dict[str, str]
) -> None:
    pool = CredentialPool(SecretProvider(app.secret_id), open=True, sslrootcert=stack.ca_file,
                          min_size=1, max_size=1)
    try:
        assert pool.credentials.tls.describe() == f"verify-full (CA {stack.ca_file})"
        with pool.connection(timeout=15) as conn:
            row = conn.execute(
                "select ssl from pg_stat_ssl where pid = pg_backend_pid()").fetchone()
            assert row == (True,)
            assert conn.pgconn.ssl_in_use
    finally:
        pool.close()


def test_require_means_channel_binding_direct_not_through_pgbouncer(
    stack: Any, app: Any, aws_env: dict[str, str]
) -> None:
    """PostgreSQL does SCRAM-SHA-256-PLUS; PgBouncer (the proxy stand-in) does not, so there
    the login is stopped before the password leaves, with a clear error."""
    direct = CredentialPool(SecretProvider(app.secret_id), open=True, sslmode="require",
                            min_size=1, max_size=1)
    bounced = CredentialPool(SecretProvider(app.secret_id), open=True, sslmode="require",
                             host=stack.pgbouncer.host, port=stack.pgbouncer.port,
                             min_size=1, max_size=1, timeout=15)
    try:
        with direct.connection(timeout=15) as conn:
            assert conn.execute("select current_user").fetchone() == (app.username,)
        with pytest.raises(UntrustedServer, match="channel binding"), bounced.connection():
            pass
    finally:
        direct.close()
        bounced.close()


def test_disable_is_a_warning_at_every_pool_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="dbcreds.pool")
    for _ in range(2):
        CredentialPool(SecretProvider("prod/app"), sslmode="disable", open=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all("TLS is disabled" in w for w in warnings)


def test_libpq_environment_cannot_downgrade(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PGSSLMODE", "disable")
    pool = CredentialPool(SecretProvider("prod/app"), open=False)
    assert pool.credentials.tls.sslmode == "verify-full"


def test_conninfo_and_kwargs_cannot_smuggle_a_weak_mode() -> None:
    for options in ({"conninfo": "sslmode=prefer"}, {"kwargs": {"sslmode": "allow"}}):
        with pytest.raises(ConfigurationError, match="allow and prefer"):
            CredentialPool(SecretProvider("prod/app"), open=False, **options)


# -- a driver without libpq (asyncpg) -------------------------------------------------------


@pytest.mark.parametrize(("sslmode", "root"), [
    ("require", None), ("verify-ca", "/ca.pem"), (None, None),
])  # fmt: skip
def test_a_driver_without_libpq_gets_a_verified_server_or_nothing(
    sslmode: str | None, root: str | None
) -> None:
    """asyncpg can neither demand channel binding nor refuse a cleartext-password request:
    without a verified server (here also the rotation-like default with no trust) it gets no
    password."""
    with pytest.raises(ConfigurationError, match="asyncpg can neither"):
        login_tls(sslmode=sslmode, sslrootcert=root, default_trust=None, client=tls.ASYNCPG)


def test_a_driver_without_libpq_verify_full_and_its_ssl_context(stack: Any) -> None:
    policy = login_tls(sslmode=None, sslrootcert=stack.ca_file, client=tls.ASYNCPG)
    assert dict(policy.params) == {"sslmode": "verify-full", "sslrootcert": stack.ca_file,
                                   "gssencmode": "disable"}  # no require_auth: not libpq
    context = tls.ssl_context(policy)
    assert context is not None and context.check_hostname
    assert context.verify_mode.name == "CERT_REQUIRED"
    off = login_tls(sslmode="disable", sslrootcert=None, client=tls.ASYNCPG)
    assert tls.ssl_context(off) is None
    assert off.downgrade is not None and "in clear" in off.downgrade


def test_an_old_libpq_of_another_driver_is_refused() -> None:
    old = tls.TlsClient("psycopg2", lambda: 150004)
    with pytest.raises(ConfigurationError, match="psycopg2 uses libpq 150004"):
        login_tls(sslmode=None, sslrootcert=None, client=old)
