"""boto3 clients for dbcreds, the guard that keeps secret values out of botocore's logs, and
the one table that turns AWS's errors into dbcreds' typed errors (`translate`).

botocore's DEBUG logging writes request and response bodies (``Response body: b'{"SecretString":
...'``, the PutSecretValue request params, ...). A user who turns DEBUG on to chase a network
problem must not find a password in the log. While dbcreds calls an API that carries a secret
value, `secret_call()` marks the thread's context; a filter on the botocore/urllib3 loggers
replaces the text of their below-INFO records made in that context. Records made outside our
calls, and records at INFO and above, are left alone.
"""

from __future__ import annotations

import contextvars
import enum
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any

from ._version import __version__
from .errors import DbcredsError, SecretAccessDenied, SecretNotFound, SecretsManagerUnavailable
from .secret import AWSCURRENT

__all__ = [
    "ERROR_CODES",
    "EXTENSION_TOKEN_HEADER",
    "USER_AGENT",
    "WITHHELD",
    "ErrorKind",
    "client_error_code",
    "error_kind",
    "new_client",
    "secret_call",
    "translate",
    "translate_exception",
]

WITHHELD = "[botocore debug record withheld by dbcreds: it may carry secret material]"
_LOGGER_PREFIXES = ("botocore", "boto3", "urllib3", "s3transfer", "awscrt")

_in_secret_call: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "dbcreds_in_secret_call", default=False
)


class _WithholdSecretRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.INFO and _in_secret_call.get():
            record.msg = WITHHELD
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


_FILTER = _WithholdSecretRecords()
_seen_loggers = 0


def _install_filter() -> None:
    """Attach the filter to every AWS-SDK logger that exists now (idempotent, cheap)."""
    global _seen_loggers
    registry = logging.root.manager.loggerDict
    if len(registry) == _seen_loggers:
        return
    for name in list(registry):
        if name.startswith(_LOGGER_PREFIXES):
            logger = logging.getLogger(name)
            if _FILTER not in logger.filters:
                logger.addFilter(_FILTER)
    _seen_loggers = len(registry)


@contextmanager
def secret_call() -> Iterator[None]:
    """Context for an AWS call whose request or response carries a secret value."""
    _install_filter()
    token = _in_secret_call.set(True)
    try:
        yield
    finally:
        _in_secret_call.reset(token)
        # Modules imported during the call (first use of a client) made new loggers.
        _install_filter()


#: what every AWS call dbcreds makes adds to botocore's user agent
USER_AGENT = f"dbcreds/{__version__}"


def new_client(service: str = "secretsmanager", **config: Any) -> Any:
    """A boto3 client with Lambda-friendly timeouts and botocore's standard retry mode.

    Region and endpoint come from botocore's own settings (``AWS_DEFAULT_REGION``, set by Lambda,
    ``AWS_ENDPOINT_URL_SECRETS_MANAGER``, ...). Throttling and 5xx answers are retried by
    botocore ("standard" mode: exponential backoff with jitter). Its user agent ends with
    `USER_AGENT` (``dbcreds/<version>``), after any ``user_agent_extra`` given.
    """
    # Deferred (cold start is a product feature), and botocore's own session: boto3's
    # Session adds its resource layer and s3transfer, CPU a client does not use (about 8 ms
    # of a cold start, measured with benchmarks/cold_start.py). boto3.client() returns this
    # very botocore client.
    import botocore.session
    from botocore.config import Config

    settings: dict[str, Any] = {
        # total_max_attempts counts the first call (botocore's max_attempts counts retries).
        "retries": {"mode": "standard", "total_max_attempts": 3},
        "connect_timeout": 2,
        "read_timeout": 5,
    }
    settings.update(config)
    # Every call dbcreds makes says so in its user agent (CloudTrail's userAgent, support).
    settings["user_agent_extra"] = " ".join(
        filter(None, (config.get("user_agent_extra"), USER_AGENT))
    )
    make: Any = botocore.session.get_session().create_client  # Any: service name is runtime
    with secret_call():
        return make(service, config=Config(**settings))


def client_error_code(exc: BaseException) -> str | None:
    """The AWS error code of a botocore ClientError, without importing botocore."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        return str(code) if code else None
    return None



# -- AWS errors, as dbcreds' typed errors -----------------------------------------------------

class ErrorKind(enum.Enum):
    """What an AWS error code says about the secret that was asked for."""

    #: IAM or the KMS key policy refuses this principal, or its credentials are not valid
    DENIED = "denied"
    #: the secret, or the version / staging label asked for, does not exist
    NOT_FOUND = "not found"
    #: the secret cannot be read now (e.g. it is scheduled for deletion)
    GONE = "gone"


#: AWS error code -> what it means. Any other code (throttling, internal failures, ...) means
#: Secrets Manager is unavailable. The codes come from botocore's ClientError (``Error.Code``)
#: or from the ``__type`` of the Lambda extension's / Secrets Manager Agent's error body.
ERROR_CODES: Mapping[str, ErrorKind] = MappingProxyType({
    "AccessDeniedException": ErrorKind.DENIED,
    "AccessDenied": ErrorKind.DENIED,
    "UnrecognizedClientException": ErrorKind.DENIED,
    "InvalidClientTokenId": ErrorKind.DENIED,
    "ExpiredTokenException": ErrorKind.DENIED,
    "InvalidSignatureException": ErrorKind.DENIED,
    "DecryptionFailure": ErrorKind.DENIED,  # KMS refused to decrypt the secret for us
    "KMSAccessDeniedException": ErrorKind.DENIED,
    "ResourceNotFoundException": ErrorKind.NOT_FOUND,
    "InvalidRequestException": ErrorKind.GONE,
})

#: The header the Lambda extension and the Secrets Manager Agent want their token in.
EXTENSION_TOKEN_HEADER = "X-Aws-Parameters-Secrets-Token"  # noqa: S105 (a header name)


def error_kind(code: str | None) -> ErrorKind | None:
    """What AWS error *code* means (`ERROR_CODES`); None for any other code, and for None."""
    return ERROR_CODES.get(code) if code else None


def translate(
    code: str | None,
    secret_id: str,
    stage: str = AWSCURRENT,
    *,
    http_status: int | None = None,
    detail: str | None = None,
) -> DbcredsError:
    """The dbcreds error for AWS error *code* met reading *stage* of *secret_id*.

    * a denied code (`ERROR_CODES`) -> `SecretAccessDenied` naming the code;
    * ``ResourceNotFoundException`` -> `SecretNotFound` (for another stage than AWSCURRENT:
      "no AWSPENDING value"); ``InvalidRequestException`` -> `SecretNotFound` ("it may be
      scheduled for deletion");
    * any other code -> `SecretsManagerUnavailable` naming the code.

    *http_status* is the HTTP status of the Lambda extension's / Secrets Manager Agent's answer
    (the only callers that see one): without a code, 404 is `SecretNotFound`, 401 and 403 are
    `SecretAccessDenied` (the extension refused our token), anything else
    `SecretsManagerUnavailable` naming the status. Without a code or a status (a transport
    error), *detail* says what failed. Never anything of a response body but its code.
    """
    kind = error_kind(code)
    if kind is ErrorKind.NOT_FOUND or (code is None and http_status == 404):
        return SecretNotFound(secret_id, "" if stage == AWSCURRENT else f"no {stage} value")
    if kind is ErrorKind.GONE:
        return SecretNotFound(secret_id, f"{code}: it may be scheduled for deletion")
    if kind is ErrorKind.DENIED:
        assert code is not None
        return SecretAccessDenied(secret_id, code)
    if http_status is None:
        return SecretsManagerUnavailable(secret_id, code or detail or "no error code")
    if code is None and http_status in (401, 403):
        return SecretAccessDenied(
            secret_id, f"the secrets extension refused the {EXTENSION_TOKEN_HEADER} header "
            f"(HTTP {http_status}): it must be AWS_SESSION_TOKEN (or the Agent's AWS_TOKEN)")
    return SecretsManagerUnavailable(
        secret_id, f"{code} (secrets extension, HTTP {http_status})" if code
        else f"secrets extension answered HTTP {http_status}")


def translate_exception(
    exc: BaseException, secret_id: str, stage: str = AWSCURRENT
) -> DbcredsError:
    """`translate` for what a botocore client call raised: its AWS error code, or, for a
    transport error (EndpointConnectionError, a timeout: no code), its type and endpoint. Never
    its text: a transport error may quote a request header (the session token)."""
    code = client_error_code(exc)
    if code is not None:
        return translate(code, secret_id, stage)
    where = getattr(exc, "kwargs", None)
    endpoint = where.get("endpoint_url") if isinstance(where, dict) else None
    detail = type(exc).__name__ + (f" ({endpoint})" if isinstance(endpoint, str) else "")
    return translate(None, secret_id, stage, detail=detail)
