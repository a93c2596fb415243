"""A local rotation driver: what Secrets Manager does when it rotates, run in this process.

Secrets Manager's RotateSecret registers an AWSPENDING version id with no value, then invokes
the function four times: createSecret, setSecret, testSecret, finishSecret. `rotate_locally`
does the same with `handler.run_step`, so the steps run exactly as in the Lambda (same checks,
same log lines, same failure notification). It can pause between steps, call back after each
step (to watch logins during the rotation window) and stop after a chosen step (a simulated
crash; run it again with the same token to resume, as Secrets Manager's retry would).

Registering a version without a value is something only RotateSecret can do, and on AWS
RotateSecret also invokes the deployed rotation function. So the default registration:

* on a non-AWS endpoint (e.g. a moto server whose rotation Lambda is a stub, moto's
  ``lambda.use_docker=false``), calls RotateSecret with the secret's RotationLambdaARN;
* on AWS, refuses: use ``dbcreds rotate SECRET`` (RotateSecret) there.

Pass ``register=`` (a `Registrar`) to do it another way.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from ..secret import AWSCURRENT
from .events import RotationStep
from .exceptions import RotationError, RotationNotEnabled
from .handler import StepResult, default_client, run_step
from .settings import RotationSettings

__all__ = [
    "LocalRotation",
    "Registrar",
    "is_aws_endpoint",
    "register_with_rotate_secret",
    "rotate_locally",
]

#: register(secret_id, token): make *token* an AWSPENDING version of the secret with no value.
Registrar = Callable[[str, str], None]


@dataclass
class LocalRotation:
    """What `rotate_locally` did."""

    secret_id: str
    token: str
    registered: bool  # False when the token was already a version (a resumed rotation)
    results: list[StepResult] = field(default_factory=list)
    stopped_after: RotationStep | None = None

    @property
    def completed(self) -> bool:
        return self.stopped_after is None and any(
            r.step is RotationStep.FINISH for r in self.results
        )

    @property
    def duration(self) -> float:
        return sum(r.duration for r in self.results)


def is_aws_endpoint(url: str | None) -> bool:
    """True for Amazon's own endpoints (or no endpoint override, which means AWS)."""
    if not url:
        return True
    host = (urlparse(url).hostname or "").lower()
    return host.endswith((".amazonaws.com", ".amazonaws.com.cn", ".api.aws"))


def register_with_rotate_secret(client: Any) -> Registrar:
    """Registrar that calls RotateSecret (for an endpoint whose rotation Lambda is a stub)."""

    def register(secret_id: str, token: str) -> None:
        lambda_arn = client.describe_secret(SecretId=secret_id).get("RotationLambdaARN")
        if not lambda_arn:
            raise RotationNotEnabled(
                f"secret {secret_id!r} has no rotation function configured: enable rotation "
                "first",
                secret_id=secret_id,
            )
        # RotationLambdaARN must be passed again: moto forgets it otherwise.
        client.rotate_secret(
            SecretId=secret_id,
            ClientRequestToken=token,
            RotationLambdaARN=lambda_arn,
            RotateImmediately=True,
        )

    return register


def _default_registrar(client: Any) -> Registrar:
    url = getattr(getattr(client, "meta", None), "endpoint_url", None)
    if is_aws_endpoint(url):
        raise RotationError(
            "a local rotation cannot start on AWS: only RotateSecret can register the pending "
            "version, and on AWS it invokes the deployed rotation function. Use "
            "`dbcreds rotate SECRET` (without --local), or pass register= to rotate_locally"
        )
    return register_with_rotate_secret(client)


def rotate_locally(
    secret_id: str,
    *,
    client: Any = None,
    sns_client: Any = None,
    settings: RotationSettings | None = None,
    token: str | None = None,
    pause: float = 0.0,
    stop_after: RotationStep | str | None = None,
    between_steps: Callable[[StepResult], None] | None = None,
    register: Registrar | None = None,
) -> LocalRotation:
    """Rotate *secret_id* the way Secrets Manager would, running the steps in this process.

    :param client: boto3 ``secretsmanager`` client (default: the handler's, from the env).
    :param token: the ClientRequestToken; a new UUID by default. A token that already is a
        version of the secret is not registered again: the rotation resumes with it.
    :param pause: seconds to sleep between two steps.
    :param stop_after: stop after this step (``"setSecret"``, ``"set"``, `RotationStep.SET`).
    :param between_steps: called with each step's `StepResult` right after the step.
    :param register: how to register the pending version (see the module docstring).
    :raises: whatever the failing step raised (after its log line and SNS notification).
    """
    client = client if client is not None else default_client("secretsmanager")
    stop = RotationStep.parse(stop_after) if isinstance(stop_after, str) else stop_after
    token = token or str(uuid.uuid4())

    describe = client.describe_secret(SecretId=secret_id)
    if not describe.get("RotationEnabled"):
        raise RotationNotEnabled(
            f"secret {secret_id!r}: rotation is not enabled; enable it (a rotation function "
            "and a schedule) before rotating",
            secret_id=secret_id,
        )
    stages = describe.get("VersionIdsToStages") or {}
    registered = token not in stages
    if registered:
        (register or _default_registrar(client))(secret_id, token)
    run = LocalRotation(secret_id=str(describe.get("ARN") or secret_id), token=token,
                        registered=registered)
    if AWSCURRENT in stages.get(token, ()):
        return run  # nothing to do: that rotation completed
    steps = list(RotationStep)
    for i, step in enumerate(steps):
        event = {"SecretId": secret_id, "ClientRequestToken": token, "Step": step.value}
        result = run_step(event, client=client, sns_client=sns_client, settings=settings)
        run.results.append(result)
        if between_steps is not None:
            between_steps(result)
        if step is stop and step is not steps[-1]:
            run.stopped_after = step
            break
        if pause > 0 and i < len(steps) - 1:
            time.sleep(pause)
    return run
