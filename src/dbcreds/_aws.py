"""boto3 clients for dbcreds, and the guard that keeps secret values out of botocore's logs.

botocore's DEBUG logging writes request and response bodies (``Response body: b'{"SecretString":
...'``, the PutSecretValue request params, ...). A user who turns DEBUG on to chase a network
problem must not find a password in the log. While dbcreds calls an API that carries a secret
value, `secret_call()` marks the thread's context; a filter on the botocore/urllib3 loggers
replaces the text of their below-INFO records made in that context. Records made outside our
calls, and records at INFO and above, are left alone.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["WITHHELD", "client_error_code", "new_client", "secret_call"]

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


def new_client(service: str = "secretsmanager", **config: Any) -> Any:
    """A boto3 client with Lambda-friendly timeouts and botocore's standard retry mode.

    Region and endpoint come from botocore's own settings (``AWS_DEFAULT_REGION``, set by Lambda,
    ``AWS_ENDPOINT_URL_SECRETS_MANAGER``, ...). Throttling and 5xx answers are retried by
    botocore ("standard" mode: exponential backoff with jitter).
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

