"""Operations: one structured JSON log line per step, and an SNS notification on failure.

The seed's "future work" (notification on rotation failure) made part of the function. The log
line and the notification carry the secret's ARN, the step, the token (a version id, not a
secret), the strategy, the duration and the outcome; an error's text is scrubbed of every
password the step saw. Neither ever contains a secret value.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from .._aws import client_error_code

__all__ = ["log_step", "notify_failure"]

logger = logging.getLogger("dbcreds.rotation")


def log_step(record: Mapping[str, Any]) -> None:
    """Write *record* as one JSON line (ERROR level when the step failed, else INFO)."""
    level = logging.ERROR if record.get("outcome") == "failure" else logging.INFO
    logger.log(level, "%s", json.dumps(dict(record), sort_keys=True, default=str))


def notify_failure(
    topic_arn: str, record: Mapping[str, Any], sns_client: Callable[[], Any]
) -> bool:
    """Publish the failure *record* to *topic_arn*. Never raises: the step's own error matters.

    Returns whether the message was accepted.
    """
    step = str(record.get("step") or "?")
    arn = str(record.get("secret_arn") or "?")
    name = arn.rsplit(":", 1)[-1]
    subject = f"dbcreds rotation failed: {step} {name}"
    subject = "".join(c if 32 <= ord(c) < 127 else "?" for c in subject)[:100]
    message = {
        **record,
        "what_to_do": (
            "Secrets Manager retries the step; if it keeps failing, read the rotation "
            "function's log for this token. AWSCURRENT is unchanged until finishSecret "
            "succeeds."
        ),
    }
    try:
        sns_client().publish(
            TopicArn=topic_arn,
            Subject=subject,
            Message=json.dumps(message, sort_keys=True, default=str),
        )
    except Exception as exc:
        logger.error(
            "could not publish the rotation failure of %s to %s: %s",
            arn, topic_arn, client_error_code(exc) or type(exc).__name__,
        )
        return False
    return True
