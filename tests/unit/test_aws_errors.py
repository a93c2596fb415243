"""One table turns AWS errors into dbcreds' errors (``dbcreds._aws``), for every path that reads
a secret: the SDK (`SecretProvider`), the Lambda extension and the rotation's `SecretStore`."""

from __future__ import annotations

from typing import Any

import pytest

import dbcreds.extension
import dbcreds.provider
import dbcreds.rotation.store
from dbcreds import _aws
from dbcreds._aws import ERROR_CODES, ErrorKind, error_kind, translate, translate_exception
from dbcreds.errors import SecretAccessDenied, SecretNotFound, SecretsManagerUnavailable
from dbcreds.extension import ExtensionTransport
from dbcreds.provider import SecretProvider
from dbcreds.rotation.store import SecretStore

EXPECTED = {ErrorKind.DENIED: SecretAccessDenied, ErrorKind.NOT_FOUND: SecretNotFound,
            ErrorKind.GONE: SecretNotFound}
UNKNOWN = ("ThrottlingException", "InternalServiceError", "LimitExceededException", "Nope")


class ClientError(Exception):
    """botocore's ClientError, as dbcreds sees it (``response["Error"]["Code"]``)."""

    def __init__(self, code: str) -> None:
        super().__init__(f"An error occurred ({code}) ... secret-ish text")
        self.response = {"Error": {"Code": code, "Message": "secret-ish text"}}


class FailingClient:
    def __init__(self, code: str) -> None:
        self.code = code

    def get_secret_value(self, **_: Any) -> Any:
        raise ClientError(self.code)

    describe_secret = get_secret_value


def test_the_table_knows_every_code_the_three_paths_knew() -> None:
    denied = {"AccessDeniedException", "AccessDenied", "UnrecognizedClientException",
              "InvalidClientTokenId", "ExpiredTokenException", "DecryptionFailure",
              "KMSAccessDeniedException", "InvalidSignatureException"}
    assert {c for c, k in ERROR_CODES.items() if k is ErrorKind.DENIED} == denied
    assert error_kind("ResourceNotFoundException") is ErrorKind.NOT_FOUND
    assert error_kind("InvalidRequestException") is ErrorKind.GONE
    assert error_kind(None) is error_kind("") is error_kind("ThrottlingException") is None


def test_no_module_keeps_a_table_of_its_own() -> None:
    for module in (dbcreds.provider, dbcreds.extension, dbcreds.rotation.store):
        for name in ("_DENIED", "_NOT_FOUND", "_GONE"):
            assert not hasattr(module, name), f"{module.__name__}.{name}"


@pytest.mark.parametrize("code", sorted(ERROR_CODES))
def test_every_code_of_the_table(code: str) -> None:
    kind = ERROR_CODES[code]
    error = translate(code, "app/db")
    assert type(error) is EXPECTED[kind]
    assert "app/db" in str(error)
    if kind is ErrorKind.DENIED:
        assert isinstance(error, SecretAccessDenied) and error.code == code
        assert "secretsmanager:GetSecretValue" in str(error)
    elif kind is ErrorKind.GONE:
        assert f"{code}: it may be scheduled for deletion" in str(error)
    else:
        assert str(error) == "secret 'app/db' was not found in Secrets Manager"
    # The same code, from the extension's error body, whatever its HTTP status.
    assert type(translate(code, "app/db", http_status=400)) is EXPECTED[kind]
    # ... and through each path that reads a secret.
    with pytest.raises(EXPECTED[kind]) as info:
        SecretProvider("app/db", client=FailingClient(code), max_stale=0).get()
    assert type(info.value) is type(error) and str(info.value) == str(error)


@pytest.mark.parametrize("code", UNKNOWN)
def test_any_other_code_is_unavailable(code: str) -> None:
    error = translate(code, "app/db")
    assert isinstance(error, SecretsManagerUnavailable) and error.code == code
    error = translate(code, "app/db", http_status=500)
    assert isinstance(error, SecretsManagerUnavailable)
    assert error.code == f"{code} (secrets extension, HTTP 500)"


def test_not_found_names_the_stage_other_than_awscurrent() -> None:
    assert "no AWSPENDING value" in str(translate("ResourceNotFoundException", "s", "AWSPENDING"))
    assert "(" not in str(translate("ResourceNotFoundException", "s", "AWSCURRENT"))


@pytest.mark.parametrize(
    ("status", "error", "text"),
    [
        (404, SecretNotFound, "was not found"),
        (401, SecretAccessDenied, "X-Aws-Parameters-Secrets-Token header (HTTP 401)"),
        (403, SecretAccessDenied, "X-Aws-Parameters-Secrets-Token header (HTTP 403)"),
        (429, SecretsManagerUnavailable, "secrets extension answered HTTP 429"),
        (500, SecretsManagerUnavailable, "secrets extension answered HTTP 500"),
        (503, SecretsManagerUnavailable, "secrets extension answered HTTP 503"),
    ],
)
def test_http_statuses_without_a_code(status: int, error: type[Exception], text: str) -> None:
    translated = translate(None, "s", http_status=status)
    assert type(translated) is error and text in str(translated)
    assert type(ExtensionTransport._error("s", "AWSCURRENT", status, b"not json")) is error


def test_transport_errors_name_the_type_and_endpoint_only() -> None:
    class EndpointConnectionError(Exception):
        def __init__(self) -> None:
            super().__init__("X-Amz-Security-Token: very-secret-token")
            self.kwargs = {"endpoint_url": "https://secretsmanager.eu-west-1.amazonaws.com"}

    error = translate_exception(EndpointConnectionError(), "s")
    assert isinstance(error, SecretsManagerUnavailable)
    assert error.code == ("EndpointConnectionError "
                          "(https://secretsmanager.eu-west-1.amazonaws.com)")
    assert "very-secret-token" not in str(error)
    assert translate(None, "s").code == "no error code"  # type: ignore[attr-defined]


@pytest.mark.parametrize("code", sorted(ERROR_CODES) + list(UNKNOWN))
def test_the_rotation_store_follows_the_table(code: str) -> None:
    """The rotation raises denied codes as SecretAccessDenied, says a missing label is None
    (describe: SecretNotFound), and lets every other error through as it came."""
    kind = error_kind(code)
    store = SecretStore(FailingClient(code), "rot/db")
    if kind is ErrorKind.DENIED:
        with pytest.raises(SecretAccessDenied) as denied:
            store.get("AWSCURRENT")
        assert denied.value.code == code and denied.value.__cause__ is None
        with pytest.raises(SecretAccessDenied):
            store.describe()
    elif kind is ErrorKind.NOT_FOUND:
        assert store.get("AWSPENDING") is None
        with pytest.raises(SecretNotFound, match="'rot/db' was not found"):
            store.describe()
    else:
        with pytest.raises(ClientError):
            store.get("AWSCURRENT")
        with pytest.raises(ClientError):
            store.describe()


def test_the_extension_token_header_is_the_one_the_transport_sends() -> None:
    assert dbcreds.extension.TOKEN_HEADER == _aws.EXTENSION_TOKEN_HEADER
