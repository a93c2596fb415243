"""The extension transport (dbcreds.extension) against a local server that speaks its protocol.

`FakeExtension` is what the AWS Parameters and Secrets Lambda Extension and the Secrets Manager
Agent look like from the function: ``GET /secretsmanager/get?secretId=..&versionStage=..`` on
127.0.0.1, the ``X-Aws-Parameters-Secrets-Token`` header checked, the GetSecretValue JSON (or
the Agent's error bodies) in return. It serves from a dict, like the extension's own cache.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from dbcreds import (
    ConfigurationError,
    CredentialPool,
    SecretAccessDenied,
    SecretNotFound,
    SecretProvider,
    SecretsManagerUnavailable,
)
from dbcreds import extension as ext
from dbcreds.extension import ExtensionTransport, auto_fetcher, extension_configured
from support import Clock

TOKEN = "session-token-for-tests"
PASSWORD = "Pw-never-shown-7f3a"


def gsv(secret_id: str, doc: dict[str, Any], version: str = "v1",
        stage: str = "AWSCURRENT") -> dict[str, Any]:
    return {
        "ARN": f"arn:aws:secretsmanager:us-east-1:123456789012:secret:{secret_id}-AbCdEf",
        "Name": secret_id, "VersionId": version, "SecretString": json.dumps(doc),
        "VersionStages": [stage], "CreatedDate": 1700000000.0,
    }


def db_doc(password: str = PASSWORD, **kw: Any) -> dict[str, Any]:
    doc = {"engine": "postgres", "host": "db.example", "port": 5432, "username": "app",
           "password": password, "dbname": "app"}
    doc.update(kw)
    return doc


class FakeExtension:
    """The extension's HTTP protocol on a free 127.0.0.1 port, serving ``answers``.

    ``answers[(secret_id, stage)]`` is a GetSecretValue dict (200) or ``(status, body)``: the
    server's cache. Unknown secrets get the Agent's 400 ResourceNotFoundException; a wrong or
    missing token gets 403 "Bad Token", as the Agent answers.

    ``mode`` is how the query is read (aws_secretsmanager_agent/src/parse.rs):

    * ``"extension"``: other parameters are ignored (what the Lambda extension does with
      ``refreshNow`` is not documented: this is the dangerous case, a cached value served to
      a request that asked for a fresh one);
    * ``"agent"`` (1.1.0+): ``refreshNow`` true/1/false/0 in any case, anything else 400
      "invalid refreshNow value"; with true the answer is ``upstream[key]`` (Secrets Manager's
      value), also stored in ``answers``; another parameter: 400 "unknown parameter: NAME";
    * ``"agent-1.0"``: ``refreshNow`` too is an unknown parameter.
    """

    def __init__(self, token: str = TOKEN, mode: str = "extension") -> None:
        self.token = token
        self.mode = mode
        self.answers: dict[tuple[str, str], Any] = {}
        self.upstream: dict[tuple[str, str], Any] = {}
        self.requests: list[dict[str, Any]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                query = dict(parse_qsl(url.query))
                fake.requests.append({"path": url.path, "query": query,
                                      "token": self.headers.get(ext.TOKEN_HEADER)})
                if self.headers.get(ext.TOKEN_HEADER) != fake.token:
                    return self.reply(403, b"Bad Token")
                known = {"secretId", "versionId", "versionStage"}
                if fake.mode == "agent":
                    known.add("refreshNow")
                refresh = False
                if fake.mode != "extension":
                    for name, value in parse_qsl(url.query):
                        if name not in known:
                            return self.reply(400, f"unknown parameter: {name}".encode())
                        if name == "refreshNow":
                            if value.lower() not in ("true", "1", "false", "0"):
                                return self.reply(400, b"invalid refreshNow value")
                            refresh = value.lower() in ("true", "1")
                if url.path != "/secretsmanager/get" or "secretId" not in query:
                    return self.reply(400, b"missing parameter secretId")
                key = (query["secretId"], query.get("versionStage", "AWSCURRENT"))
                if refresh:
                    answer = fake.upstream.get(key)
                    if isinstance(answer, dict):  # an error is not cached
                        fake.answers[key] = answer
                else:
                    answer = fake.answers.get(key)
                if answer is None:
                    return self.reply(400, json.dumps({
                        "__type": "ResourceNotFoundException",
                        "message": "Secrets Manager can't find the specified secret."}).encode())
                if isinstance(answer, tuple):
                    return self.reply(*answer)
                return self.reply(200, json.dumps(answer).encode())

            def reply(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeExtension:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def hits(self) -> int:
        return sum(1 for r in self.requests if r["path"] == "/secretsmanager/get")

    def refresh_values(self) -> list[str | None]:
        """The refreshNow value of each request (None: without the parameter)."""
        return [r["query"].get("refreshNow") for r in self.requests]


class FakeSdk:
    """The provider's boto3 call, replaced: counts calls, answers from a dict."""

    def __init__(self, answers: dict[tuple[str, str], dict[str, Any]] | None = None) -> None:
        self.answers = answers or {}
        self.calls: list[tuple[str, str]] = []

    def __call__(self, secret_id: str, stage: str) -> dict[str, Any]:
        self.calls.append((secret_id, stage))
        return self.answers[(secret_id, stage)]


@pytest.fixture
def fake() -> Iterator[FakeExtension]:
    with FakeExtension() as server:
        yield server


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- selection --------------------------------------------------------------------------------

@pytest.fixture
def no_layer(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    empty = tmp_path / "extensions"
    empty.mkdir()
    monkeypatch.setattr(ext, "EXTENSIONS_DIR", str(empty))
    return empty


def test_selection_rule(no_layer: Path, tmp_path: Path) -> None:
    token = {"AWS_SESSION_TOKEN": TOKEN}
    port = {"PARAMETERS_SECRETS_EXTENSION_HTTP_PORT": "2773"}
    assert not extension_configured({})
    assert not extension_configured(token)  # nothing says an extension is there
    assert extension_configured({**token, **port})
    assert not extension_configured(port)  # no token: the extension would refuse us
    assert not extension_configured({**token, **port, "DBCREDS_SECRETS_TRANSPORT": "sdk"})
    assert extension_configured({**token, "DBCREDS_SECRETS_TRANSPORT": "extension"})
    with pytest.raises(ConfigurationError, match="DBCREDS_SECRETS_TRANSPORT"):
        extension_configured({**token, **port, "DBCREDS_SECRETS_TRANSPORT": "bogus"})
    # The layer's executable in /opt/extensions is enough (the port then defaults to 2773).
    (no_layer / "AWSParametersAndSecretsLambdaExtension").write_text("")
    assert extension_configured(token)
    # The Agent's token: AWS_TOKEN, possibly file://.
    token_file = tmp_path / "token"
    token_file.write_text("agent-token\n")
    assert extension_configured({"AWS_TOKEN": f"file://{token_file}", **port})
    assert not extension_configured({"AWS_TOKEN": f"file://{tmp_path / 'missing'}", **port})


def test_auto_fetcher_picks_the_transport(no_layer: Path) -> None:
    sdk = FakeSdk()
    assert auto_fetcher(sdk, {}) is sdk
    transport = auto_fetcher(sdk, {"AWS_SESSION_TOKEN": TOKEN,
                                   "PARAMETERS_SECRETS_EXTENSION_HTTP_PORT": "4321",
                                   "SECRETS_MANAGER_TTL": "60"})
    assert isinstance(transport, ExtensionTransport)
    assert (transport.port, transport.cache_ttl, transport.sdk) == (4321, 60.0, sdk)
    assert TOKEN not in repr(transport)
    default = auto_fetcher(sdk, {"AWS_SESSION_TOKEN": TOKEN,
                                 "DBCREDS_SECRETS_TRANSPORT": "extension"})
    assert isinstance(default, ExtensionTransport) and default.port == ext.DEFAULT_PORT


def test_agent_setting(no_layer: Path, tmp_path: Path) -> None:
    """DBCREDS_SECRETS_AGENT: auto (ask the server), yes (refreshNow; the Agent's token order),
    no; anything else is an error naming the variable, never the value."""
    sdk = FakeSdk()
    base = {"AWS_SESSION_TOKEN": TOKEN, "DBCREDS_SECRETS_TRANSPORT": "extension"}
    for value, expected in (("", None), ("auto", None), ("YES", True), ("no", False)):
        transport = auto_fetcher(sdk, {**base, "DBCREDS_SECRETS_AGENT": value})
        assert isinstance(transport, ExtensionTransport)
        assert transport.refresh_now is expected
    with pytest.raises(ConfigurationError, match="DBCREDS_SECRETS_AGENT") as info:
        auto_fetcher(sdk, {**base, "DBCREDS_SECRETS_AGENT": PASSWORD})
    assert PASSWORD not in str(info.value)
    # The Agent reads AWS_TOKEN first (then AWS_SESSION_TOKEN, AWS_CONTAINER_AUTHORIZATION_TOKEN):
    # with "yes" so do we; otherwise the Lambda extension's AWS_SESSION_TOKEN comes first.
    token_file = tmp_path / "token"
    token_file.write_text("agent-token\n")
    both = {**base, "AWS_TOKEN": f"file://{token_file}"}
    assert ext._token(both) == TOKEN
    assert ext._token({**both, "DBCREDS_SECRETS_AGENT": "yes"}, agent=True) == "agent-token"
    container = {"AWS_CONTAINER_AUTHORIZATION_TOKEN": "container-token",
                 "DBCREDS_SECRETS_TRANSPORT": "extension"}
    assert not extension_configured(container)
    assert extension_configured({**container, "DBCREDS_SECRETS_AGENT": "yes"})


def test_provider_asks_for_the_transport_only_without_client_or_fetcher(
    monkeypatch: pytest.MonkeyPatch, fake: FakeExtension, no_layer: Path
) -> None:
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    monkeypatch.setenv("PARAMETERS_SECRETS_EXTENSION_HTTP_PORT", str(fake.port))
    fake.answers[("app/db", "AWSCURRENT")] = gsv("app/db", db_doc())
    assert SecretProvider("app/db").get().password == PASSWORD
    assert fake.hits() == 1
    sdk = FakeSdk({("app/db", "AWSCURRENT"): gsv("app/db", db_doc(), version="sdk")})
    assert SecretProvider("app/db", fetcher=sdk).get().version_id == "sdk"
    assert fake.hits() == 1


# -- the protocol -------------------------------------------------------------------------------

def test_token_header_path_and_stages(fake: FakeExtension) -> None:
    secret_id = "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/app db+x-AbCdEf"
    fake.answers[(secret_id, "AWSCURRENT")] = gsv(secret_id, db_doc(), "v1")
    fake.answers[(secret_id, "AWSPREVIOUS")] = gsv(secret_id, db_doc("old"), "v0", "AWSPREVIOUS")
    transport = ExtensionTransport(FakeSdk(), port=fake.port, token=TOKEN)
    assert transport.get(secret_id, "AWSCURRENT")["VersionId"] == "v1"
    assert transport.get(secret_id, "AWSPREVIOUS")["VersionId"] == "v0"
    first, second = fake.requests
    assert first["path"] == "/secretsmanager/get"
    assert first["token"] == TOKEN
    assert first["query"] == {"secretId": secret_id, "versionStage": "AWSCURRENT"}
    assert second["query"]["versionStage"] == "AWSPREVIOUS"

    provider = SecretProvider(secret_id, fetcher=transport)
    secret = provider.get()
    assert (secret.username, secret.version_id) == ("app", "v1")
    assert transport.get_stats() == {"extension": 1, "refreshed": 0, "sdk": 0,
                                      "unreachable": 0}


def test_wrong_token_is_access_denied(fake: FakeExtension) -> None:
    fake.answers[("s", "AWSCURRENT")] = gsv("s", db_doc())
    transport = ExtensionTransport(FakeSdk(), port=fake.port, token="not-the-token")
    with pytest.raises(SecretAccessDenied) as info:
        SecretProvider("s", fetcher=transport, max_stale=0).get()
    assert "X-Aws-Parameters-Secrets-Token" in str(info.value)
    assert "not-the-token" not in str(info.value)


@pytest.mark.parametrize(
    ("answer", "error", "text"),
    [
        ((400, b'{"__type":"ResourceNotFoundException","message":"not found"}'),
         SecretNotFound, "was not found"),
        ((404, b"Not found"), SecretNotFound, "was not found"),
        ((400, b'{"__type":"InvalidRequestException","message":"marked for deletion"}'),
         SecretNotFound, "scheduled for deletion"),
        ((400, b'{"__type":"AccessDeniedException","message":"no"}'),
         SecretAccessDenied, "AccessDeniedException"),
        ((400, b'{"__type":"DecryptionFailure","message":"kms"}'),
         SecretAccessDenied, "DecryptionFailure"),
        ((400, b'{"__type":"ThrottlingException","message":"slow down"}'),
         SecretsManagerUnavailable, "ThrottlingException"),
        ((429, b"Connection limit exceeded"), SecretsManagerUnavailable, "HTTP 429"),
        ((500, b'{"__type":"InternalFailure"}'), SecretsManagerUnavailable, "InternalFailure"),
        ((502, b'{"__type":"ConnectionError", "message":"Read Error"}'),
         SecretsManagerUnavailable, "ConnectionError"),
        ((504, b'{"__type":"TimeoutError", "message":"Timeout"}'),
         SecretsManagerUnavailable, "TimeoutError"),
        ((503, b"Serving not enabled."), SecretsManagerUnavailable, "HTTP 503"),
        ((200, f"not json {PASSWORD}".encode()), SecretsManagerUnavailable, "JSON"),
    ],
)
def test_errors_are_typed_and_never_carry_the_body(
    fake: FakeExtension, answer: tuple[int, bytes], error: type[Exception], text: str
) -> None:
    fake.answers[("s", "AWSCURRENT")] = answer
    sdk = FakeSdk()
    provider = SecretProvider("s", fetcher=ExtensionTransport(sdk, port=fake.port, token=TOKEN),
                              max_stale=0)
    with pytest.raises(error) as info:
        provider.get()
    assert text in str(info.value)
    assert PASSWORD not in str(info.value) and info.value.__cause__ is None
    assert sdk.calls == []  # the extension answered: no fallback


def test_no_pending_value_is_none_not_an_error(fake: FakeExtension) -> None:
    fake.answers[("s", "AWSCURRENT")] = gsv("s", db_doc())
    transport = ExtensionTransport(FakeSdk(), port=fake.port, token=TOKEN)
    with pytest.raises(SecretNotFound, match="no AWSPENDING value"):
        transport.get("s", "AWSPENDING")


# -- falling back --------------------------------------------------------------------------------

def test_falls_back_to_the_sdk_when_nothing_answers_and_stays_there_a_while(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    sdk = FakeSdk({("s", "AWSCURRENT"): gsv("s", db_doc(), "from-sdk")})
    transport = ExtensionTransport(sdk, port=closed_port(), token=TOKEN, retry_after=60,
                                   clock=clock)
    with caplog.at_level("WARNING", logger="dbcreds.extension"):
        assert transport("s", "AWSCURRENT")["VersionId"] == "from-sdk"
    assert "did not answer" in caplog.text and TOKEN not in caplog.text
    assert transport.get_stats() == {"extension": 0, "refreshed": 0, "sdk": 1,
                                      "unreachable": 1}
    clock.now += 30
    transport("s", "AWSCURRENT")  # within retry_after: the SDK, without trying the extension
    assert transport.get_stats() == {"extension": 0, "refreshed": 0, "sdk": 2,
                                      "unreachable": 1}
    clock.now += 31
    transport("s", "AWSCURRENT")  # tried again: still nobody there
    assert transport.get_stats() == {"extension": 0, "refreshed": 0, "sdk": 3,
                                      "unreachable": 2}


def test_falls_back_when_the_extension_hangs() -> None:
    with socket.socket() as listener:  # accepts (the kernel does) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        sdk = FakeSdk({("s", "AWSCURRENT"): gsv("s", db_doc(), "from-sdk")})
        transport = ExtensionTransport(sdk, port=listener.getsockname()[1], token=TOKEN,
                                       read_timeout=0.3)
        assert transport("s", "AWSCURRENT")["VersionId"] == "from-sdk"
        assert transport.get_stats()["unreachable"] == 1


def test_forced_refresh_and_pending_bypass_the_extension_cache(fake: FakeExtension) -> None:
    """A refused login means the value the extension caches is stale: the provider's forced
    refresh, and AWSPENDING, are read from Secrets Manager (the SDK) when the server does not
    honour refreshNow (here it ignores the parameter, and answers the probe with its cached
    value); the extension is used again once its own cache has expired."""
    clock = Clock()
    fake.answers[("s", "AWSCURRENT")] = gsv("s", db_doc("old"), "v1")  # the extension's copy
    sdk = FakeSdk({("s", "AWSCURRENT"): gsv("s", db_doc("new"), "v2"),
                   ("s", "AWSPENDING"): gsv("s", db_doc("next"), "v3", "AWSPENDING")})
    transport = ExtensionTransport(sdk, port=fake.port, token=TOKEN, cache_ttl=300,
                                   clock=clock)
    provider = SecretProvider("s", fetcher=transport, ttl=10, jitter=0, clock=clock)
    old = provider.get()
    assert old.version_id == "v1" and fake.hits() == 1
    assert transport.refresh_now is None  # not asked yet: no rotation so far
    assert provider.refresh(stale=old).version_id == "v2"
    assert sdk.calls == [("s", "AWSCURRENT")]
    # Asked once, with a value no server that honours refreshNow accepts; its 200 means "no".
    assert fake.refresh_values() == [None, ext.PROBE_VALUE]
    assert transport.refresh_now is False
    assert provider.get_pending(stale=old) is not None
    assert provider.get_pending() is not None  # cached by the provider
    assert sdk.calls[-1] == ("s", "AWSPENDING") and fake.hits() == 2
    clock.now += 11  # the provider's TTL: still inside the extension's, which holds v1
    assert provider.get().version_id == "v2"
    assert fake.hits() == 2
    clock.now += 300  # the extension has refetched by now
    fake.answers[("s", "AWSCURRENT")] = gsv("s", db_doc("new"), "v2")
    assert provider.get().version_id == "v2"
    assert fake.hits() == 3 and fake.refresh_values()[2] is None


# -- refreshNow (the Secrets Manager Agent) -------------------------------------------------------

@pytest.fixture
def agent() -> Iterator[FakeExtension]:
    with FakeExtension(mode="agent") as server:
        yield server


def test_agent_serves_forced_refresh_and_pending_with_refresh_now(agent: FakeExtension) -> None:
    """The Agent: the forced refresh and AWSPENDING are its answers with refreshNow=true
    (Secrets Manager's value, which it also caches): no SDK call; its cache is fresh after."""
    clock = Clock()
    agent.answers[("s", "AWSCURRENT")] = gsv("s", db_doc("old"), "v1")  # the Agent's copy
    agent.upstream[("s", "AWSCURRENT")] = gsv("s", db_doc("new"), "v2")  # Secrets Manager's
    agent.upstream[("s", "AWSPENDING")] = gsv("s", db_doc("next"), "v3", "AWSPENDING")
    sdk = FakeSdk()
    transport = ExtensionTransport(sdk, port=agent.port, token=TOKEN, cache_ttl=300,
                                   clock=clock)
    provider = SecretProvider("s", fetcher=transport, ttl=10, jitter=0, clock=clock)
    old = provider.get()
    assert old.version_id == "v1"
    assert provider.refresh(stale=old).version_id == "v2"
    assert transport.refresh_now is True
    pending = provider.get_pending(stale=old)
    assert pending is not None and pending.version_id == "v3"
    assert sdk.calls == []
    assert agent.refresh_values() == [None, ext.PROBE_VALUE, "true", "true"]
    assert [r["query"]["versionStage"] for r in agent.requests] == [
        "AWSCURRENT", "AWSCURRENT", "AWSCURRENT", "AWSPENDING"]
    assert transport.get_stats() == {"extension": 3, "refreshed": 2, "sdk": 0, "unreachable": 0}
    clock.now += 11  # the provider's TTL: the Agent's cache, refreshed by refreshNow, serves
    assert provider.get().version_id == "v2"
    assert agent.refresh_values()[-1] is None and sdk.calls == []
    # A second rotation: no second probe.
    agent.upstream[("s", "AWSCURRENT")] = gsv("s", db_doc("next"), "v3")
    assert provider.refresh(stale=provider.get()).version_id == "v3"
    assert agent.refresh_values().count(ext.PROBE_VALUE) == 1


@pytest.mark.parametrize(
    ("mode", "token", "answer", "refresh_now"),
    [
        ("agent", TOKEN, None, True),  # 400 "invalid refreshNow value": it parses refreshNow
        ("agent-1.0", TOKEN, None, False),  # 400 "unknown parameter: refreshNow"
        ("extension", TOKEN, None, False),  # 200: the parameter was ignored
        ("agent", "not-the-token", None, None),  # 403: says nothing, asked again next time
        ("agent", TOKEN, (503, b"Serving not enabled."), None),
        ("agent", TOKEN, (429, b"Connection limit exceeded"), None),
    ],
)
def test_the_probe_decides_only_on_a_clear_answer(
    mode: str, token: str, answer: tuple[int, bytes] | None, refresh_now: bool | None
) -> None:
    with FakeExtension(mode=mode) as server:
        if answer is not None:  # the server answers this to everything
            server.mode = "extension"
            server.answers[("s", "AWSCURRENT")] = answer
        else:
            server.answers[("s", "AWSCURRENT")] = gsv("s", db_doc(), "v1")
        server.upstream[("s", "AWSCURRENT")] = gsv("s", db_doc("new"), "v2")
        sdk = FakeSdk({("s", "AWSCURRENT"): gsv("s", db_doc("new"), "v2")})
        transport = ExtensionTransport(sdk, port=server.port, token=token)
        assert transport.probe("s") is refresh_now
        assert transport.fetch_fresh("s", "AWSCURRENT")["VersionId"] == "v2"
        assert transport.refresh_now is refresh_now
        assert len(sdk.calls) == (0 if refresh_now else 1)
        if refresh_now is None:  # asked again at the next fresh read
            transport.fetch_fresh("s", "AWSCURRENT")
            assert server.refresh_values().count(ext.PROBE_VALUE) == 3


def test_an_agent_that_refuses_refresh_now_gets_the_sdk(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """DBCREDS_SECRETS_AGENT=yes in front of an Agent before 1.1.0: the refused parameter
    (400 unknown parameter) sends fresh reads to the SDK, for good, with a warning."""
    with FakeExtension(mode="agent-1.0") as old_agent:
        old_agent.answers[("s", "AWSCURRENT")] = gsv("s", db_doc(), "v1")
        sdk = FakeSdk({("s", "AWSCURRENT"): gsv("s", db_doc("new"), "v2"),
                       ("s", "AWSPENDING"): gsv("s", db_doc("next"), "v3", "AWSPENDING")})
        transport = ExtensionTransport(sdk, port=old_agent.port, token=TOKEN, refresh_now=True)
        with caplog.at_level("WARNING", logger="dbcreds.extension"):
            assert transport.fetch_fresh("s", "AWSCURRENT")["VersionId"] == "v2"
        assert "refused refreshNow" in caplog.text
        assert transport.refresh_now is False
        assert transport("s", "AWSPENDING")["VersionId"] == "v3"
        assert old_agent.refresh_values() == ["true"]  # never asked again, never probed
        assert sdk.calls == [("s", "AWSCURRENT"), ("s", "AWSPENDING")]


def test_refresh_now_off_never_sends_it(agent: FakeExtension) -> None:
    agent.answers[("s", "AWSCURRENT")] = gsv("s", db_doc(), "v1")
    sdk = FakeSdk({("s", "AWSCURRENT"): gsv("s", db_doc("new"), "v2")})
    transport = ExtensionTransport(sdk, port=agent.port, token=TOKEN, refresh_now=False)
    assert transport.fetch_fresh("s", "AWSCURRENT")["VersionId"] == "v2"
    assert agent.requests == [] and sdk.calls == [("s", "AWSCURRENT")]


def test_refresh_now_errors_are_typed_and_never_the_cached_value(agent: FakeExtension) -> None:
    """No AWSPENDING is the Agent's ResourceNotFoundException (no rotation: None); Secrets
    Manager failing behind the Agent is an error, not the Agent's older copy, not the SDK."""
    agent.answers[("s", "AWSCURRENT")] = gsv("s", db_doc(), "v1")
    sdk = FakeSdk()
    transport = ExtensionTransport(sdk, port=agent.port, token=TOKEN, refresh_now=True)
    provider = SecretProvider("s", fetcher=transport, max_stale=0)
    old = provider.get()
    assert provider.get_pending(stale=old) is None
    agent.upstream[("s", "AWSCURRENT")] = (502, json.dumps(
        {"__type": "ConnectionError", "message": f"Read Error {PASSWORD}"}).encode())
    with pytest.raises(SecretsManagerUnavailable) as info:
        provider.refresh(stale=old)
    assert "ConnectionError" in str(info.value) and PASSWORD not in str(info.value)
    assert sdk.calls == [] and transport.refresh_now is True


def test_refresh_now_when_nothing_answers_falls_back() -> None:
    sdk = FakeSdk({("s", "AWSPENDING"): gsv("s", db_doc("next"), "v3", "AWSPENDING")})
    transport = ExtensionTransport(sdk, port=closed_port(), token=TOKEN)
    assert transport("s", "AWSPENDING")["VersionId"] == "v3"
    assert transport.refresh_now is None  # nobody to ask: asked again later
    assert transport.get_stats() == {"extension": 0, "refreshed": 0, "sdk": 1, "unreachable": 1}


# -- end to end on the local stack -------------------------------------------------------------

def serve_app_secret(fake: FakeExtension, sm_client: Any, secret_id: str) -> None:
    response = sm_client.get_secret_value(SecretId=secret_id, VersionStage="AWSCURRENT")
    fake.answers[(secret_id, "AWSCURRENT")] = {
        k: response[k] for k in ("ARN", "Name", "VersionId", "SecretString", "VersionStages")}


def test_pool_through_the_extension_and_fallback_to_boto3(
    stack: Any, app: Any, aws_env: dict[str, str], sm_client: Any, fake: FakeExtension,
    monkeypatch: pytest.MonkeyPatch, no_layer: Path,
) -> None:
    serve_app_secret(fake, sm_client, app.secret_id)
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    monkeypatch.setenv("PARAMETERS_SECRETS_EXTENSION_HTTP_PORT", str(fake.port))
    before = stack.secrets.count("GetSecretValue", secret_id=app.secret_id)
    pool = CredentialPool(SecretProvider(app.secret_id), open=True, host=stack.pgbouncer.host,
                          port=stack.pgbouncer.port, min_size=1, max_size=1)
    try:
        with pool.connection(timeout=15) as conn:
            assert conn.execute("select current_user").fetchone() == (app.username,)
    finally:
        pool.close()
    assert fake.hits() == 1
    assert stack.secrets.count("GetSecretValue", secret_id=app.secret_id) == before

    # Nothing on the port: boto3 (the stack's Secrets Manager endpoint) serves instead.
    monkeypatch.setenv("PARAMETERS_SECRETS_EXTENSION_HTTP_PORT", str(closed_port()))
    provider = SecretProvider(app.secret_id)
    assert provider.get().username == app.username
    assert stack.secrets.count("GetSecretValue", secret_id=app.secret_id) == before + 1


CHILD = """
import sys, time
import dbcreds
with dbcreds.get_connection(timeout=15) as conn:
    user = conn.execute("select current_user").fetchone()[0]
print(user, "boto3" in sys.modules, "botocore" in sys.modules)
"""


def test_boto3_is_never_imported_when_the_extension_works(
    stack: Any, app: Any, sm_client: Any, fake: FakeExtension, tmp_path: Path
) -> None:
    serve_app_secret(fake, sm_client, app.secret_id)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DBCREDS_"))}
    env.update({
        "AWS_SESSION_TOKEN": TOKEN,
        "PARAMETERS_SECRETS_EXTENSION_HTTP_PORT": str(fake.port),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "DBCREDS_SECRET_ID": app.secret_id,
        "DBCREDS_HOST": stack.pgbouncer.host,
        "DBCREDS_PORT": str(stack.pgbouncer.port),
        **stack.tls_env(),
    })
    done = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [app.username, "False", "False"]
    assert app.password not in done.stdout + done.stderr
    assert fake.hits() == 1
