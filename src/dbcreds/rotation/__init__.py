"""The rotation Lambda: ``dbcreds.rotation.lambda_handler(event, context)``.

Modules, one job each:

* `events`: the event and DescribeSecret checks; * `settings`: configuration from the
  environment; * `store`: Secrets Manager calls; * `connect`: TLS and logins;
* `password`: SCRAM-verifier password changes; * `guard`: the roles alternating-users may
  touch; * `strategies`: single-user and alternating-users;
* `steps`: createSecret/setSecret/testSecret/finishSecret;
* `operations`: JSON step log and SNS failure notice; * `handler`: the entry point;
* `local`: a driver that does what Secrets Manager's RotateSecret does, in-process.
"""

from __future__ import annotations

from .events import RotationStep
from .exceptions import (
    InvalidRotationEvent,
    NoWorkingCredentials,
    RotationError,
    RotationNotEnabled,
    RotationStateError,
    TestSecretFailed,
    UnsafeRolePair,
)
from .handler import StepResult, lambda_handler, run_step
from .local import LocalRotation, rotate_locally
from .settings import RotationSettings, Strategy

__all__ = [
    "InvalidRotationEvent",
    "LocalRotation",
    "NoWorkingCredentials",
    "RotationError",
    "RotationNotEnabled",
    "RotationSettings",
    "RotationStateError",
    "RotationStep",
    "StepResult",
    "Strategy",
    "TestSecretFailed",
    "UnsafeRolePair",
    "lambda_handler",
    "rotate_locally",
    "run_step",
]
