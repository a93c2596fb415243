"""Which connection failures are refused logins (client- or proxy-side) and which are libpq
protecting the credentials: every message text dbcreds knows, as the servers write it."""

from __future__ import annotations

import pytest

from dbcreds.errors import AuthFailure, classify_auth_failure, classify_tls_failure, is_auth_failure

PREFIX = 'connection failed: connection to server at "10.0.3.17", port 5432 failed: '


@pytest.mark.parametrize(("message", "expected"), [
    # PostgreSQL itself (md5, password, scram): our credentials
    ('FATAL:  password authentication failed for user "app"', AuthFailure.CLIENT),
    ('FATAL:  PAM authentication failed for user "app"', AuthFailure.CLIENT),
    # libpq: no password to send
    ("fe_sendauth: no password supplied", AuthFailure.CLIENT),
    # PgBouncer's own check of our password (either auth mode), an unknown user (auth_query)
    ("FATAL:  SASL authentication failed", AuthFailure.CLIENT),
    ("FATAL:  no such user", AuthFailure.CLIENT),
    # PgBouncer's own login to the database is failing: heals by itself
    ("FATAL:  server login has been failing, try again later (server_login_retry)",
     AuthFailure.PROXY),
    ('ERROR:  server login failed: FATAL:  password authentication failed for user "app"',
     AuthFailure.PROXY),  # quotes PostgreSQL's client-side text: proxy-side wins
    # RDS Proxy: the proxy could not log in to the database with its secret (heals when it
    # re-reads the secret), or it holds no secret for the role (our side)
    ("FATAL:  The password that was provided for the role app is wrong.", AuthFailure.PROXY),
    ("FATAL:  This RDS Proxy has no credentials for the role app. Check the credentials for "
     "this role and try again.", AuthFailure.CLIENT),
    # not refusals
    ("FATAL:  the database system is starting up", None),
    ("FATAL:  query_wait_timeout", None),
    ("could not translate host name \"db\" to address", None),
    ("SSL error: certificate verify failed", None),
])  # fmt: skip
def test_classify_auth_failure(message: str, expected: AuthFailure | None) -> None:
    for text in (message, PREFIX + message, (PREFIX + message).upper()):
        assert classify_auth_failure(Exception(text)) is expected, text
        assert is_auth_failure(Exception(text)) is (expected is not None)


@pytest.mark.parametrize(("message", "says"), [
    ("SSL error: certificate verify failed", "CA bundle"),
    ('server certificate for "db.example" does not match host name "10.0.3.17"', "CA bundle"),
    ('could not read root certificate file "/var/task/ca.pem": No such file or directory',
     "cannot be read"),
    ("server does not support SSL, but SSL was required", "does not offer TLS"),
    ("channel binding is required, but server did not offer an authentication method that "
     "supports channel binding", "channel binding"),
    ('authentication method requirement "scram-sha-256" failed: server requested a cleartext '
     "password", "impostor"),
])  # fmt: skip
def test_classify_tls_failure(message: str, says: str) -> None:
    hint = classify_tls_failure(Exception(PREFIX + message), "THE-CA-SETTING")
    assert hint is not None and says in hint
    if says == "CA bundle":
        assert "THE-CA-SETTING" in hint
    assert classify_auth_failure(Exception(PREFIX + message)) is None


def test_a_refused_login_is_not_a_tls_failure() -> None:
    assert classify_tls_failure(Exception('password authentication failed for user "app"')) is None


class _Typed(Exception):
    """A driver error with a SQLSTATE (asyncpg's carry one; psycopg's login errors have None)."""

    def __init__(self, text: str, sqlstate: str | None) -> None:
        super().__init__(text)
        self.sqlstate = sqlstate


@pytest.mark.parametrize(("message", "sqlstate", "expected"), [
    # SQLSTATE 28P01 (invalid_password): a refusal whatever the server's language
    ('FATAL:  Passwort-Authentifizierung für Benutzer »app« fehlgeschlagen', "28P01",
     AuthFailure.CLIENT),
    ('password authentication failed for user "app"', "28P01", AuthFailure.CLIENT),
    # a proxy quoting the server's refusal: proxy-side still wins
    ('server login failed: FATAL:  password authentication failed for user "app"', "28P01",
     AuthFailure.PROXY),
    ("server login has been failing, try again later (server_login_retry)", "08P01",
     AuthFailure.PROXY),
    # other SQLSTATEs of class 28 are not a refused password; None: the texts decide
    ('no pg_hba.conf entry for host "10.0.0.1", user "app"', "28000", None),
    ("SASL authentication failed", "08P01", AuthFailure.CLIENT),
    ('FATAL:  password authentication failed for user "app"', None, AuthFailure.CLIENT),
])  # fmt: skip
def test_a_typed_refusal_counts(message: str, sqlstate: str | None,
                                expected: AuthFailure | None) -> None:
    assert classify_auth_failure(_Typed(message, sqlstate)) is expected


def test_asyncpg_invalid_password_error_is_a_client_side_refusal() -> None:
    asyncpg_exceptions = pytest.importorskip("asyncpg.exceptions")
    exc = asyncpg_exceptions.InvalidPasswordError("Passwort-Authentifizierung fehlgeschlagen")
    assert exc.sqlstate == "28P01"
    assert classify_auth_failure(exc) is AuthFailure.CLIENT
