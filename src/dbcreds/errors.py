"""Error types, and the one place that decides what an authentication failure is.

Every error names the secret (its id or ARN) and what to do; none ever carries a secret value.
This module imports nothing heavy: classification works on exception *messages*, because
psycopg raises a plain ``OperationalError`` with ``sqlstate=None`` for a failed login: no error
code tells a refused password from a database that is down, only the text does.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:  # (typing_extensions costs a cold start milliseconds: typing only)
    from typing_extensions import Self

__all__ = [
    "MASK",
    "AuthFailure",
    "AuthenticationFailed",
    "ConfigurationError",
    "DbcredsError",
    "InvalidSecret",
    "SecretAccessDenied",
    "SecretNotFound",
    "SecretsManagerUnavailable",
    "UntrustedServer",
    "classify_auth_failure",
    "classify_tls_failure",
    "is_auth_failure",
    "raise_clean",
    "scrub",
]

#: what stands in for a secret value in a text
MASK = "********"


class DbcredsError(Exception):
    """Base class of every error raised by dbcreds."""

    def again(self) -> Self:
        """A fresh copy, to raise anew to one more caller (its own traceback, no chain): a
        pool tells every waiting caller the same failure."""
        fresh = Exception.__new__(type(self))
        fresh.args = self.args
        fresh.__dict__.update(self.__dict__)
        return fresh


def raise_clean(err: BaseException) -> NoReturn:
    """Raise *err* with no ``__cause__`` and no ``__context__``, even inside an ``except`` block.

    ``raise err from None`` only hides the exception being handled: it stays reachable as
    ``err.__context__`` (with its traceback's frames), and its text may hold the very secret
    that *err* was made to leave out. Python sets ``__context__`` when *err* is raised, so it is
    cleared while *err* propagates out of here.
    """
    try:
        raise err
    finally:
        err.__cause__ = None
        err.__context__ = None
        err.__suppress_context__ = True


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """*text* with every occurrence of each non-empty string in *secrets* masked.

    For text that comes from elsewhere (a driver's error message) and may quote a password
    the caller knows of, before it goes into an error or a log line.
    """
    for value in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(value, MASK)
    return text


class ConfigurationError(DbcredsError):
    """dbcreds is not configured well enough to run (e.g. no ``DBCREDS_SECRET_ID``)."""


class SecretNotFound(DbcredsError):
    """The secret (or the requested version/stage of it) does not exist."""

    def __init__(self, secret_id: str, detail: str = "") -> None:
        self.secret_id = secret_id
        msg = f"secret {secret_id!r} was not found in Secrets Manager"
        if detail:
            msg += f" ({detail})"
        super().__init__(msg)


class InvalidSecret(DbcredsError):
    """The secret exists but its value is not a usable PostgreSQL secret.

    ``key`` names the offending key (or ``None`` for the document as a whole); the value is
    never included.
    """

    def __init__(self, secret_id: str, key: str | None, reason: str) -> None:
        self.secret_id = secret_id
        self.key = key
        self.reason = reason
        where = f"key {key!r}" if key else "value"
        super().__init__(f"secret {secret_id!r}: {where} {reason}")


class SecretAccessDenied(DbcredsError):
    """IAM (or the KMS key policy) does not let this principal read the secret."""

    def __init__(self, secret_id: str, code: str) -> None:
        self.secret_id = secret_id
        self.code = code
        super().__init__(
            f"access to secret {secret_id!r} was denied ({code}): grant "
            "secretsmanager:GetSecretValue on it (and kms:Decrypt on its key, if it has one)"
        )


class SecretsManagerUnavailable(DbcredsError):
    """Secrets Manager could not be reached, throttled us, or failed on its side."""

    def __init__(self, secret_id: str, code: str) -> None:
        self.secret_id = secret_id
        self.code = code
        super().__init__(f"Secrets Manager failed for secret {secret_id!r}: {code}")


class AuthenticationFailed(DbcredsError):
    """The database (or the proxy) rejected every credential dbcreds could find.

    Raised to callers of ``CredentialPool.connection()`` after the connect path refreshed the
    secret, tried AWSPENDING and (during a rotation) retried within its budget.
    """

    def __init__(self, secret_id: str, detail: str) -> None:
        self.secret_id = secret_id
        self.detail = detail
        super().__init__(
            f"authentication with the credentials of secret {secret_id!r} failed: {detail}. "
            "Check that the secret's password matches the database (a rotation may have "
            "failed half-way: see the rotation Lambda's log)"
        )


class UntrustedServer(ConfigurationError):
    """A login was stopped before any credential left: the server's identity could not be
    verified, or it asked for a weaker exchange than dbcreds allows (see ``dbcreds.tls``).

    Not a rotation and not a network fault: it does not heal by itself, so pools fail their
    callers at once with it. The message says what to configure; ``detail`` is libpq's reason.
    """

    def __init__(self, secret_id: str, where: str, detail: str, hint: str) -> None:
        self.secret_id = secret_id
        self.where = where
        self.detail = detail
        self.hint = hint
        super().__init__(
            f"the credentials of {secret_id!r} were not sent to {where}: {detail}. {hint}"
        )


class AuthFailure(enum.Enum):
    """Where a login was refused."""

    #: The server we talk to (PostgreSQL itself, or the proxy checking our password) refused
    #: our credentials: a different secret version may work.
    CLIENT = "client"
    #: The proxy accepted us but could not log in to the database with *its* credentials
    #: (RDS Proxy that has not yet re-read the secret, PgBouncer's server_login_retry): it
    #: heals by itself; retrying shortly is the way through.
    PROXY = "proxy"


# The texts of a refused login, as PostgreSQL, libpq, PgBouncer and RDS Proxy word them (each
# line says whose). Lower-cased; matched as substrings.
_PROXY_SIDE = (
    "server login has been failing",  # PgBouncer, server_login_retry in force
    "server login failed",  # PgBouncer forwarding the server's refusal
    "the password that was provided for the role",  # RDS Proxy -> database login refused
)
_CLIENT_SIDE = (
    "password authentication failed",  # PostgreSQL (md5/password/scram)
    "sasl authentication failed",  # PgBouncer's own SCRAM check
    "has no credentials for the role",  # RDS Proxy: user unknown to the proxy's secrets
    "no password supplied",  # libpq
    "no such user",  # PgBouncer auth_query: the role does not exist (yet)
    "pam authentication failed",
)


def classify_auth_failure(exc: BaseException) -> AuthFailure | None:
    """Return where a connection attempt's failure was an authentication refusal, else None.

    Proxy-side messages are checked first: PgBouncer's "server login failed: FATAL: password
    authentication failed ..." contains PostgreSQL's client-side text too. Then a typed
    refusal: SQLSTATE 28P01 (invalid_password) in ``exc.sqlstate``, which asyncpg's
    ``InvalidPasswordError`` carries whatever the server's message language (psycopg's
    errors have the attribute too, None for a failed login), then the client-side texts.
    """
    # Note: PgBouncer (1.18) forwards PostgreSQL's own "password authentication failed" when
    # *its* server login is refused, so behind PgBouncer a proxy-side refusal can look
    # client-side; the login policy then waits only while a rotation is visibly in progress.
    text = str(exc).lower()
    if any(m in text for m in _PROXY_SIDE):
        return AuthFailure.PROXY
    if getattr(exc, "sqlstate", None) == "28P01":  # invalid_password
        return AuthFailure.CLIENT
    if any(m in text for m in _CLIENT_SIDE):
        return AuthFailure.CLIENT
    return None


def is_auth_failure(exc: BaseException) -> bool:
    """True when *exc* says a login was refused (by the database or by a proxy)."""
    return classify_auth_failure(exc) is not None


_TRUST_HINT = (
    "Give the CA bundle that signs the server's certificate ({ca}): the RDS CA bundle for a "
    "database endpoint; 'system' (the SDK's default) serves RDS Proxy. Check that the host "
    "name is the one in the certificate"
)
# libpq's texts (lower-cased substrings) for a login it stopped to protect the credentials,
# each with what to configure.
_TLS_REFUSALS = (
    ("certificate verify failed", _TRUST_HINT),
    ("does not match host name", _TRUST_HINT),
    ("could not get server's host name from server certificate", _TRUST_HINT),
    ("root certificate file", "The CA bundle ({ca}) cannot be read: check its path and that "
     "the function ships it"),
    ("server does not support ssl", "The server does not offer TLS: dbcreds never sends "
     "credentials without it (sslmode=disable is for local development only)"),
    ("channel binding", "Without a CA (sslmode=require) dbcreds demands SCRAM with channel "
     "binding, which this server (or proxy) does not offer: configure the CA bundle that signs "
     "its certificate instead ({ca}) and use verify-full"),
    ("authentication method requirement", "The server asked for a password exchange that "
     "dbcreds refuses (a cleartext password, or no SCRAM channel binding where no CA verifies "
     "the server): it may be an impostor. A real server must use SCRAM "
     "(password_encryption=scram-sha-256, then reset the password), or be verified with the "
     "CA bundle that signs its certificate ({ca}, verify-full)"),
)


def classify_tls_failure(
    exc: BaseException, ca_setting: str = "DBCREDS_SSLROOTCERT, or sslrootcert="
) -> str | None:
    """What to configure, when *exc* is libpq stopping a login to protect its credentials
    (untrusted certificate, no TLS, a cleartext-password request, no channel binding).

    *ca_setting* names where this program's operator gives a CA bundle.
    """
    text = str(exc).lower()
    for marker, hint in _TLS_REFUSALS:
        if marker in text:
            return hint.format(ca=ca_setting)
    return None
