"""The rotation event and the version checks every step starts with. Pure logic, no I/O.

Secrets Manager invokes the function with ``{"SecretId", "ClientRequestToken", "Step"}``. Any
other key is ignored and never logged. `check_versions` applies DescribeSecret's answer:

* rotation must be enabled on the secret;
* the token must be a version of the secret;
* a token that is already AWSCURRENT has nothing left to do (a retried finishSecret, or a
  duplicate invocation after success): every step is a no-op;
* otherwise the token must carry AWSPENDING (Secrets Manager's RotateSecret put it there).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..secret import AWSCURRENT, AWSPENDING, AWSPREVIOUS
from .exceptions import InvalidRotationEvent, RotationNotEnabled, RotationStateError

__all__ = [
    "AWSCURRENT",
    "AWSPENDING",
    "AWSPREVIOUS",
    "RotationEvent",
    "RotationStep",
    "Versions",
    "check_versions",
]

# The staging labels are defined in dbcreds.secret; re-exported here for compatibility.


class RotationStep(str, enum.Enum):
    """The four steps, in the order Secrets Manager runs them."""

    CREATE = "createSecret"
    SET = "setSecret"
    TEST = "testSecret"
    FINISH = "finishSecret"

    @classmethod
    def parse(cls, value: str) -> RotationStep:
        """``createSecret`` or ``create`` (any case) -> `RotationStep.CREATE`, etc."""
        text = value.strip().lower()
        for step in cls:
            if text in (step.value.lower(), step.value.lower().removesuffix("secret")):
                return step
        raise ValueError(f"{value!r} is not a rotation step")


_REQUIRED = ("SecretId", "ClientRequestToken", "Step")


@dataclass(frozen=True)
class RotationEvent:
    secret_id: str
    token: str
    step: RotationStep

    @classmethod
    def parse(cls, event: Any) -> RotationEvent:
        """Validate a Lambda event. Only the three rotation keys are read."""
        if not isinstance(event, Mapping):
            raise InvalidRotationEvent(
                f"the rotation event must be a JSON object with {', '.join(_REQUIRED)}, "
                f"not {type(event).__name__}"
            )
        values: dict[str, str] = {}
        for key in _REQUIRED:
            value = event.get(key)
            if value is None:
                raise InvalidRotationEvent(
                    f"the rotation event has no {key!r}: Secrets Manager sends "
                    f"{', '.join(_REQUIRED)}; invoke the function through RotateSecret",
                    secret_id=values.get("SecretId", ""),
                )
            if not isinstance(value, str) or not value.strip():
                raise InvalidRotationEvent(
                    f"the rotation event's {key!r} must be a non-empty string",
                    secret_id=values.get("SecretId", ""),
                )
            values[key] = value
        step_names = ", ".join(s.value for s in RotationStep)
        if values["Step"] not in {s.value for s in RotationStep}:
            shown = values["Step"][:40]
            raise InvalidRotationEvent(
                f"unknown rotation step {shown!r} for secret {values['SecretId']!r}: "
                f"expected one of {step_names}",
                secret_id=values["SecretId"],
            )
        return cls(values["SecretId"], values["ClientRequestToken"], RotationStep(values["Step"]))


@dataclass(frozen=True)
class Versions:
    """What DescribeSecret says about a secret's versions."""

    arn: str
    name: str
    rotation_enabled: bool
    stages: Mapping[str, tuple[str, ...]]  # version id -> its staging labels

    @classmethod
    def from_describe(cls, response: Mapping[str, Any], secret_id: str) -> Versions:
        raw = response.get("VersionIdsToStages") or {}
        return cls(
            arn=str(response.get("ARN") or secret_id),
            name=str(response.get("Name") or secret_id),
            rotation_enabled=bool(response.get("RotationEnabled")),
            stages={str(v): tuple(s) for v, s in raw.items()},
        )

    def version_of(self, stage: str) -> str | None:
        """The version id that carries *stage*, if any."""
        for version, stages in self.stages.items():
            if stage in stages:
                return version
        return None

    def has(self, version: str, stage: str) -> bool:
        return stage in self.stages.get(version, ())


def check_versions(versions: Versions, event: RotationEvent) -> bool:
    """Raise unless the step may run; return True when the token is already AWSCURRENT (no-op)."""
    where = f"{event.step.value} for secret {versions.arn!r}"
    if not versions.rotation_enabled:
        raise RotationNotEnabled(
            f"{where}: rotation is not enabled on the secret; enable it (RotateSecret with a "
            "rotation function and schedule) before rotating",
            secret_id=versions.arn,
            step=event.step.value,
        )
    if event.token not in versions.stages:
        raise RotationStateError(
            f"{where}: ClientRequestToken {event.token!r} is not a version of the secret; "
            "start the rotation with RotateSecret",
            secret_id=versions.arn,
            step=event.step.value,
        )
    if versions.has(event.token, AWSCURRENT):
        return True
    if not versions.has(event.token, AWSPENDING):
        raise RotationStateError(
            f"{where}: version {event.token!r} is not AWSPENDING (it has "
            f"{list(versions.stages[event.token]) or 'no labels'}); a newer rotation may have "
            "replaced it: start the rotation again with RotateSecret",
            secret_id=versions.arn,
            step=event.step.value,
        )
    return False
