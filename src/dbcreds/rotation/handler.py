"""The rotation Lambda's entry point: ``dbcreds.rotation.lambda_handler(event, context)``.

Each invocation: validate the event (`events`), DescribeSecret and check the versions, run the
step (`steps`) with the strategy chosen by ``ROTATION_STRATEGY``, write one JSON log line
(`operations`). On failure: the same log line with the error, an SNS notification when
``ROTATION_FAILURE_TOPIC_ARN`` is set, then the error is re-raised so that Secrets Manager
retries the step. An error whose text contains a password the step saw is replaced by a
`RotationError` with the text scrubbed.

Clients are created lazily at module scope and reused across invocations (Lambda convention).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .. import _env
from .._aws import new_client
from ..errors import ConfigurationError, raise_clean
from .events import RotationEvent, RotationStep, check_versions
from .exceptions import RotationError, scrub
from .operations import log_step, notify_failure
from .settings import RotationSettings
from .steps import STEPS, StepContext, finish_leftover
from .store import SecretStore
from .strategies import strategy_for

__all__ = ["StepResult", "default_client", "lambda_handler", "run_step"]

logger = logging.getLogger("dbcreds.rotation")

_clients: dict[tuple[str, ...], Any] = {}
_clients_lock = threading.Lock()


def default_client(service: str) -> Any:
    """A client per service (and per endpoint/region configuration), created on first use."""
    env_name = "AWS_ENDPOINT_URL_" + service.upper().replace("-", "_").replace(" ", "_")
    key = (
        service,
        os.environ.get(env_name, ""),
        os.environ.get("AWS_ENDPOINT_URL", ""),
        os.environ.get("AWS_REGION", os.environ.get("AWS_DEFAULT_REGION", "")),
    )
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = new_client(service)
        return client


@dataclass(frozen=True)
class StepResult:
    secret_arn: str
    step: RotationStep
    token: str
    outcome: str  # "success" or "noop"
    detail: str
    duration: float


def _text(event: Any, key: str) -> str | None:
    """A rotation key of a possibly malformed event, for the log line (other keys never)."""
    value = event.get(key) if isinstance(event, Mapping) else None
    return value[:200] if isinstance(value, str) else None


def run_step(
    event: Mapping[str, Any],
    *,
    client: Any = None,
    sns_client: Any = None,
    settings: RotationSettings | None = None,
    request_id: str | None = None,
) -> StepResult:
    """Run one rotation step as the Lambda does; the local driver and tests call this.

    :param client: a boto3 ``secretsmanager`` client (default: the module's, created lazily).
    :param sns_client: a boto3 ``sns`` client for the failure notification (default: lazily).
    :param settings: default `RotationSettings.from_env()`.
    """
    started = time.monotonic()
    record: dict[str, Any] = {
        "message": "rotation step",
        "secret_arn": _text(event, "SecretId"),
        "step": _text(event, "Step"),
        "token": _text(event, "ClientRequestToken"),
        "strategy": None,
    }
    if request_id:
        record["request_id"] = request_id
    store: SecretStore | None = None
    try:
        settings = settings or RotationSettings.from_env()
        record["strategy"] = settings.strategy.value
        parsed = RotationEvent.parse(event)
        store = SecretStore(client if client is not None else default_client("secretsmanager"),
                            parsed.secret_id)
        versions = store.describe()
        record["secret_arn"] = versions.arn
        ctx = StepContext(parsed, versions, store, settings, strategy_for(settings.strategy))
        if check_versions(versions, parsed):
            outcome = "noop"
            detail = finish_leftover(ctx) or "token is already AWSCURRENT"
        else:
            outcome, detail = "success", STEPS[parsed.step](ctx)
    except BaseException as exc:
        seen = store.seen if store is not None else []
        safe = _sanitized(exc, seen, record)
        duration = time.monotonic() - started
        record.update(
            outcome="failure",
            duration_ms=round(duration * 1000, 1),
            error_type=type(safe).__name__,
            error=scrub(str(safe), seen),
        )
        log_step(record)
        topic = settings.failure_topic_arn if settings else _topic_from_env()
        if topic and isinstance(exc, Exception):
            notify_failure(topic, record, _sns(sns_client))
        _cut_chain(safe, seen)
        if safe is exc:
            raise
        raise_clean(safe)  # not `from None`: that keeps *exc*, unscrubbed, as __context__
    duration = time.monotonic() - started
    record.update(outcome=outcome, detail=detail, duration_ms=round(duration * 1000, 1))
    log_step(record)
    return StepResult(versions.arn, parsed.step, parsed.token, outcome, detail, duration)


def _topic_from_env() -> str | None:
    # Settings themselves failed to parse: the topic variable is still worth a try.
    return _env.text(os.environ, "ROTATION_FAILURE_TOPIC_ARN")


def _sns(sns_client: Any) -> Callable[[], Any]:
    return (lambda: sns_client) if sns_client is not None else (lambda: default_client("sns"))


def _sanitized(exc: BaseException, seen: list[str], record: Mapping[str, Any]) -> BaseException:
    """*exc*, or a RotationError with scrubbed text if *exc*'s text reveals a password."""
    if not _reveals(exc, seen):
        return exc
    return RotationError(
        f"{type(exc).__name__}: {scrub(str(exc), seen)}",
        secret_id=str(record.get("secret_arn") or ""),
        step=str(record.get("step") or ""),
    )


def _reveals(exc: BaseException, seen: list[str]) -> bool:
    try:
        text = str(exc)
    except Exception:  # a broken __str__: nothing to show, nothing to reveal
        return False
    return any(p and p in text for p in seen)


def _cut_chain(exc: BaseException, seen: list[str]) -> None:
    """Cut the links of *exc*'s ``__cause__``/``__context__`` chain that could show a password.

    A context that was suppressed (``raise ... from None`` after `describe_failure` scrubbed
    the driver's text into the new error) is dropped: it is the unscrubbed original. So is any
    cause or context whose text contains a password the step saw.
    """
    pending, visited = [exc], set()
    while pending:
        node = pending.pop()
        if id(node) in visited:
            continue
        visited.add(id(node))
        if node.__suppress_context__:
            node.__context__ = None
        cause, context = node.__cause__, node.__context__
        if cause is not None and _reveals(cause, seen):
            node.__cause__ = cause = None
            node.__suppress_context__ = True
        if context is not None and _reveals(context, seen):
            node.__context__ = context = None
        pending.extend(e for e in (cause, context) if e is not None)


def lambda_handler(event: Mapping[str, Any], context: Any) -> None:
    """The rotation function's handler, as configured in the Lambda (``Handler``).

    Bad settings (``LOG_LEVEL`` included) fail the way a step does: the JSON log line (the
    logger at INFO), the SNS notice when ``ROTATION_FAILURE_TOPIC_ARN`` is set, then the
    `ConfigurationError` is raised.
    """
    settings: RotationSettings | None
    try:
        settings = RotationSettings.from_env()
    except ConfigurationError:
        settings = None  # run_step parses them again, and reports the failure as a step's
    if logger.level == logging.NOTSET:
        # Lambda's root logger drops INFO by default; the step log line must get out.
        logger.setLevel(settings.log_level if settings is not None else logging.INFO)
    run_step(event, settings=settings, request_id=getattr(context, "aws_request_id", None))
