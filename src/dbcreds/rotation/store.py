"""The Secrets Manager calls of a rotation, for one secret.

Every call whose request or response carries a secret value runs inside ``_aws.secret_call()``
so that botocore's DEBUG log never shows it. GetSecretValue always names its VersionStage: moto
keeps answering the old version to a call without one after UpdateSecretVersionStage (and naming
the stage is right on AWS too).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._aws import ErrorKind, client_error_code, error_kind, secret_call, translate
from ..errors import InvalidSecret, SecretNotFound
from ..secret import AWSCURRENT, AWSPENDING, KEY_HOST, DbSecret
from .events import Versions

__all__ = ["SecretStore"]


class SecretStore:
    """Secrets Manager, as seen by the rotation of secret *secret_id*."""

    def __init__(self, client: Any, secret_id: str, *, seen: list[str] | None = None) -> None:
        self.client = client
        self.secret_id = secret_id
        #: every password this store has read or generated, so that error texts from other
        #: libraries can be scrubbed of them before they are logged or raised
        self.seen: list[str] = [] if seen is None else seen

    def for_secret(self, secret_id: str) -> SecretStore:
        """A store for another secret (the master secret) sharing the client and ``seen``."""
        return SecretStore(self.client, secret_id, seen=self.seen)

    def _denied(self, exc: BaseException) -> None:
        """Raise `SecretAccessDenied` when *exc* is AWS refusing us (``_aws.ERROR_CODES``)."""
        code = client_error_code(exc)
        if error_kind(code) is ErrorKind.DENIED:
            raise translate(code, self.secret_id) from None

    def describe(self) -> Versions:
        try:
            response = self.client.describe_secret(SecretId=self.secret_id)
        except Exception as exc:
            self._denied(exc)
            code = client_error_code(exc)
            if error_kind(code) is ErrorKind.NOT_FOUND:
                raise translate(code, self.secret_id) from None  # SecretNotFound
            raise
        return Versions.from_describe(response, self.secret_id)

    def get(self, stage: str, version_id: str | None = None) -> DbSecret | None:
        """The version carrying *stage* (and *version_id*, if given), parsed; None without value.

        Raises `InvalidSecret` (naming the key and the label, never a value) when the value is
        not a PostgreSQL secret.
        """
        kwargs: dict[str, str] = {"SecretId": self.secret_id, "VersionStage": stage}
        if version_id:
            kwargs["VersionId"] = version_id
        try:
            with secret_call():
                response = self.client.get_secret_value(**kwargs)
        except Exception as exc:
            self._denied(exc)
            if error_kind(client_error_code(exc)) is ErrorKind.NOT_FOUND:
                return None  # no such label, or a version registered without a value
            raise
        text = response.get("SecretString")
        if text is None:
            raise InvalidSecret(self.secret_id, None, f"of {stage} is binary, not a JSON string")
        try:
            secret = DbSecret.from_json(
                text, secret_id=self.secret_id, version_id=response.get("VersionId")
            )
        except InvalidSecret as exc:
            raise InvalidSecret(self.secret_id, exc.key, f"{exc.reason} (in {stage})") from None
        self.seen.append(secret.password)
        if secret.host is None:
            raise InvalidSecret(
                self.secret_id, KEY_HOST, f"is missing (in {stage}): the rotation function "
                "connects to the database the secret names (a secret that RDS manages itself, "
                "with only a username and a password, is rotated by RDS, not by this function)"
            )
        return secret

    def current(self) -> DbSecret:
        secret = self.get(AWSCURRENT)
        if secret is None:
            raise SecretNotFound(self.secret_id, "it has no AWSCURRENT value")
        return secret

    def random_password(self, policy: Mapping[str, Any]) -> str:
        with secret_call():
            response = self.client.get_random_password(**policy)
        password = response["RandomPassword"]
        if not isinstance(password, str) or not password:
            raise InvalidSecret(self.secret_id, None, "GetRandomPassword returned no password")
        self.seen.append(password)
        return password

    def put_pending(self, secret: DbSecret, token: str) -> bool:
        """Store *secret* as version *token* with AWSPENDING; False if a concurrent put won."""
        try:
            with secret_call():
                self.client.put_secret_value(
                    SecretId=self.secret_id,
                    ClientRequestToken=token,
                    SecretString=secret.to_json(),
                    VersionStages=[AWSPENDING],
                )
        except Exception as exc:
            self._denied(exc)
            if client_error_code(exc) == "ResourceExistsException":
                # Another invocation for the same token stored its value first: the version
                # is immutable now, and that value is the pending one. Success.
                return False
            raise
        return True

    def move_stage(
        self, stage: str, *, to_version: str | None, from_version: str | None
    ) -> None:
        kwargs: dict[str, str] = {"SecretId": self.secret_id, "VersionStage": stage}
        if to_version:
            kwargs["MoveToVersionId"] = to_version
        if from_version:
            kwargs["RemoveFromVersionId"] = from_version
        try:
            self.client.update_secret_version_stage(**kwargs)
        except Exception as exc:
            self._denied(exc)
            raise
