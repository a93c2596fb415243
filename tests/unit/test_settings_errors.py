"""Bad configuration is an error naming the variable (never its value); nothing secret reaches
an exception chain or a traceback. Pure: no stack."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from dbcreds import _env
from dbcreds import extension as ext
from dbcreds.config import Settings
from dbcreds.errors import (
    ConfigurationError,
    InvalidSecret,
    SecretsManagerUnavailable,
    raise_clean,
)
from dbcreds.extension import ExtensionTransport, auto_fetcher, extension_configured
from dbcreds.provider import SecretProvider
from dbcreds.rotation import handler, steps
from dbcreds.rotation.exceptions import RotationError, TestSecretFailed
from dbcreds.rotation.settings import RotationSettings
from dbcreds.secret import DbSecret

SDK_BASE = {"DBCREDS_SECRET_ID": "prod/app"}
TOKEN = "IQoJb3JpZ2luX2VjEXAMPLE//token+value=="
EXT_BASE = {"AWS_SESSION_TOKEN": TOKEN, "PARAMETERS_SECRETS_EXTENSION_HTTP_PORT": "2773"}


def _sdk(env: Mapping[str, str]) -> object:
    return Settings.from_env({**SDK_BASE, **env})


def _rotation(env: Mapping[str, str]) -> object:
    return RotationSettings.from_env(env)


def _extension(env: Mapping[str, str]) -> object:
    return auto_fetcher(lambda _s, _t: {}, {**EXT_BASE, **env})


PARSERS: dict[str, Callable[[Mapping[str, str]], object]] = {
    "sdk": _sdk, "rotation": _rotation, "extension": _extension,
}

# (parser, variable, bad value): each value distinctive enough that "not in the message" means
# something; "Prefer"/"ALLOW" because the message itself explains allow/prefer in lower case.
CASES = [
    # SDK: numbers
    ("sdk", "DBCREDS_SECRET_TTL", "NaN"),
    ("sdk", "DBCREDS_SECRET_TTL", "nan"),
    ("sdk", "DBCREDS_SECRET_TTL", "inf"),
    ("sdk", "DBCREDS_SECRET_TTL", "-inf"),
    ("sdk", "DBCREDS_SECRET_TTL", "-Infinity"),
    ("sdk", "DBCREDS_SECRET_TTL", "3e999"),  # finite text, infinite float
    ("sdk", "DBCREDS_SECRET_TTL", "-3.75"),
    ("sdk", "DBCREDS_SECRET_TTL", "\u0663\u0660\u0660"),  # Arabic-Indic 300
    ("sdk", "DBCREDS_SECRET_TTL", "\uff13\uff10\uff10"),  # full-width 300
    ("sdk", "DBCREDS_SECRET_TTL", "1_000"),
    ("sdk", "DBCREDS_SECRET_TTL", "300 seconds"),
    ("sdk", "DBCREDS_SECRET_TTL", "0x1f"),
    ("sdk", "DBCREDS_AUTH_RETRY_BUDGET", "-0.25"),
    ("sdk", "DBCREDS_AUTH_RETRY_BUDGET", "nan"),
    ("sdk", "DBCREDS_AUTH_RETRY_BUDGET", "\u0665"),
    ("sdk", "DBCREDS_POOL_MAX_LIFETIME", "0.000"),
    ("sdk", "DBCREDS_POOL_MAX_LIFETIME", "-60"),
    ("sdk", "DBCREDS_POOL_MAX_LIFETIME", "inf"),
    # SDK: ports and sizes
    ("sdk", "DBCREDS_PORT", "0"),
    ("sdk", "DBCREDS_PORT", "65536"),
    ("sdk", "DBCREDS_PORT", "-1"),
    ("sdk", "DBCREDS_PORT", "5432.0"),
    ("sdk", "DBCREDS_PORT", "\u0665\u0664\u0663\u0662"),
    ("sdk", "DBCREDS_PORT", "\uff15\uff14\uff13\uff12"),
    ("sdk", "DBCREDS_PORT", "5_432"),
    ("sdk", "DBCREDS_PORT", "99999999999999999999999"),
    ("sdk", "DBCREDS_PORT", "9" * 5000),  # beyond int()'s own digit limit
    ("sdk", "DBCREDS_POOL_MIN_SIZE", "1.5"),
    ("sdk", "DBCREDS_POOL_MIN_SIZE", "-2"),
    ("sdk", "DBCREDS_POOL_MIN_SIZE", "\u0663"),
    ("sdk", "DBCREDS_POOL_MAX_SIZE", "2.5"),
    ("sdk", "DBCREDS_POOL_MAX_SIZE", "1e1"),
    ("sdk", "DBCREDS_POOL_MAX_SIZE", "nan"),
    # SDK: boolean, TLS
    ("sdk", "DBCREDS_POOL_CHECK", "maybe"),
    ("sdk", "DBCREDS_POOL_CHECK", "Treu"),
    ("sdk", "DBCREDS_POOL_CHECK", "\uff11"),
    ("sdk", "DBCREDS_SSLMODE", "Prefer"),
    ("sdk", "DBCREDS_SSLMODE", "ALLOW"),
    ("sdk", "DBCREDS_SSLMODE", "verify-sometimes"),
    ("sdk", "DBCREDS_SSLMODE", "\u212aerify-full"),  # KELVIN SIGN lower-cases to "k"...
    # extension transport
    ("extension", "DBCREDS_SECRETS_TRANSPORT", "sdk-please"),
    ("extension", "PARAMETERS_SECRETS_EXTENSION_HTTP_PORT", "0"),
    ("extension", "PARAMETERS_SECRETS_EXTENSION_HTTP_PORT", "65536"),
    ("extension", "PARAMETERS_SECRETS_EXTENSION_HTTP_PORT", "-1"),
    ("extension", "PARAMETERS_SECRETS_EXTENSION_HTTP_PORT", "\uff12\uff17\uff17\uff13"),
    ("extension", "PARAMETERS_SECRETS_EXTENSION_HTTP_PORT", "port-2773"),
    ("extension", "SECRETS_MANAGER_TTL", "nan"),
    ("extension", "SECRETS_MANAGER_TTL", "-5"),
    ("extension", "SECRETS_MANAGER_TTL", "five-minutes"),
    ("extension", "AWS_SESSION_TOKEN", "tok-1\r\nX-Injected: yes"),
    ("extension", "AWS_SESSION_TOKEN", "tok-2\nsecret"),
    ("extension", "AWS_SESSION_TOKEN", "tok-\u0100-wide"),
    # rotation
    ("rotation", "PASSWORD_LENGTH", "nan"),
    ("rotation", "PASSWORD_LENGTH", "inf"),
    ("rotation", "PASSWORD_LENGTH", "32.0"),
    ("rotation", "PASSWORD_LENGTH", "\u0663\u0662"),
    ("rotation", "PASSWORD_LENGTH", "3_2"),
    ("rotation", "PASSWORD_LENGTH", "-32"),
    ("rotation", "PASSWORD_LENGTH", "4097"),
    ("rotation", "DBCREDS_ROTATION_CONNECT_TIMEOUT", "-0"),
    ("rotation", "DBCREDS_ROTATION_CONNECT_TIMEOUT", "301"),
    ("rotation", "DBCREDS_ROTATION_CONNECT_TIMEOUT", "2.5"),
    ("rotation", "DBCREDS_ROTATION_CONNECT_TIMEOUT", "\uff15"),
    ("rotation", "DBCREDS_ROTATION_SSLMODE", "Prefer"),
    ("rotation", "DBCREDS_ROTATION_SSLMODE", "ALLOW"),
    ("rotation", "DBCREDS_ROTATION_SSLMODE", "verify-sometimes"),
    ("sdk", "DBCREDS_SECRET_KEYS", "login-name"),
    ("sdk", "DBCREDS_SECRET_KEYS", "login=user"),
    ("sdk", "DBCREDS_SECRET_KEYS", "username=user,username=login"),
    ("sdk", "DBCREDS_SECRET_KEYS", "username=,password=pw"),
    ("sdk", "DBCREDS_SECRET_KEYS", "username=secretkey,password=secretkey"),
    ("rotation", "LOG_LEVEL", "chatty"),
    ("rotation", "LOG_LEVEL", "TRACE"),
    ("rotation", "ROTATION_STRATEGY", "multi-user-x"),
    ("rotation", "EXCLUDE_NUMBERS", "maybe"),
    ("rotation", "INCLUDE_SPACE", "yes please"),
]


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """*exc* and every exception reachable through __cause__ / __context__."""
    pending, seen = [exc], set()
    while pending:
        node = pending.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        pending.extend(e for e in (node.__cause__, node.__context__) if e is not None)


def _texts(exc: BaseException) -> list[str]:
    texts = ["".join(traceback.format_exception(exc))]
    for node in _chain(exc):
        texts += [str(node), repr(node), repr(node.args)]
    return texts


def assert_nowhere(value: str, exc: BaseException) -> None:
    for text in _texts(exc):
        assert value not in text


@pytest.mark.parametrize(("parser", "name", "value"), CASES,
                         ids=[f"{p}-{n}-{v[:12]!a}" for p, n, v in CASES])
def test_bad_setting_names_the_variable_not_the_value(parser: str, name: str, value: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        PARSERS[parser]({name: value})
    message = str(info.value)
    assert name in message
    assert "must be" in message or "is not" in message  # says what is allowed
    assert value not in message and value.strip() not in message
    assert info.value.__cause__ is None and info.value.__context__ is None
    if len(value.strip()) >= 5:  # shorter ones show up in a traceback's line numbers and code
        assert_nowhere(value.strip(), info.value)


def test_every_bad_value_is_refused_with_surrounding_blanks_too() -> None:
    for parser, name, value in CASES:
        with pytest.raises(ConfigurationError, match=name):
            PARSERS[parser]({name: f"  {value}\t"})


def test_good_values_parse() -> None:
    s = Settings.from_env({
        **SDK_BASE, "DBCREDS_PORT": " 6432 ", "DBCREDS_SECRET_TTL": "1e2",
        "DBCREDS_AUTH_RETRY_BUDGET": "+2.5", "DBCREDS_POOL_MAX_LIFETIME": ".5",
        "DBCREDS_POOL_MIN_SIZE": "0", "DBCREDS_POOL_MAX_SIZE": "+4", "DBCREDS_POOL_CHECK": "Off",
        "DBCREDS_SSLMODE": "VERIFY-FULL", "DBCREDS_SSLROOTCERT": " system ",
        "DBCREDS_SECRET_KEYS": " username = user, dbname=database ",
    })  # fmt: skip
    assert s.secret_keys == (("dbname", "database"), ("username", "user"))
    assert hash(s)  # settings key the process's shared sources
    assert (s.port, s.secret_ttl, s.auth_retry_budget, s.pool_max_lifetime) == (
        6432, 100.0, 2.5, 0.5)
    assert (s.pool_min_size, s.pool_max_size, s.pool_check) == (0, 4, False)
    assert (s.sslmode, s.sslrootcert) == ("verify-full", "system")
    assert isinstance(s.port, int) and isinstance(s.pool_max_size, int)
    assert s.pool_options()["sslrootcert"] == "system"  # the pools resolve it (dbcreds.tls)


def test_blank_means_unset() -> None:
    blank = {name: "  " for _, name, _ in CASES if name != "AWS_SESSION_TOKEN"}
    s = Settings.from_env({**blank, **SDK_BASE})
    assert s == Settings(secret_id="prod/app")
    r = RotationSettings.from_env(blank)
    assert r == RotationSettings(log_level="INFO")
    assert (r.sslmode, r.connect_timeout) == (None, 5)


def test_rotation_log_level_and_sslrootcert() -> None:
    r = RotationSettings.from_env({"LOG_LEVEL": "debug", "DBCREDS_ROTATION_SSLROOTCERT": "/ca"})
    assert (r.log_level, r.sslrootcert) == ("DEBUG", "/ca")
    assert RotationSettings.from_env({}).log_level == "INFO"


def test_pool_max_below_min_is_an_error() -> None:
    with pytest.raises(ConfigurationError, match="DBCREDS_POOL_MAX_SIZE"):
        Settings.from_env({**SDK_BASE, "DBCREDS_POOL_MIN_SIZE": "3", "DBCREDS_POOL_MAX_SIZE": "2"})
    assert Settings.from_env({**SDK_BASE, "DBCREDS_POOL_MIN_SIZE": "3"}).pool_max_size == 3


def test_helper_api() -> None:
    env = {"A": " 7 ", "B": "", "C": "Yes", "D": "Warning", "E": "1.25"}
    assert _env.number(env, "A", 1, integer=True, low=1, high=9) == 7
    assert _env.number(env, "B", 3, integer=True) == 3
    assert _env.number(env, "E", 0.0, above=1) == 1.25
    assert _env.number(env, "missing", None) is None
    assert _env.boolean(env, "C", False) is True
    assert _env.boolean(env, "B", None) is None
    assert _env.choice(env, "D", _env.LOG_LEVELS, "INFO") == "WARNING"
    assert _env.port(env, "A", None) == 7 and _env.port({}, "P", 2773) == 2773
    assert _env.text(env, "A") == "7" and _env.text(env, "B") is None
    with pytest.raises(ConfigurationError, match=r"^E must be an integer from 1 to 9 "):
        _env.number(env, "E", 1, integer=True, low=1, high=9)
    with pytest.raises(ConfigurationError, match=r"^A must be a finite number > 7 "):
        _env.number(env, "A", 1.0, above=7)


def test_helpers_import_nothing_heavy() -> None:
    code = ("import sys, dbcreds, dbcreds._env, dbcreds.config, dbcreds.rotation.settings\n"
            "print(sorted(m for m in ('boto3', 'botocore', 'psycopg') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "[]"


# -- secrets ----------------------------------------------------------------------------------

SECRET_PW = "pw-DEEP-sekrit-4242"
DOC = {"username": "app", "password": SECRET_PW, "host": "db.example", "dbname": "orders"}

PORT_CASES = [
    ("\u0663\u0664\u0665", "ASCII digits"),  # str.isdigit() says yes
    ("\uff15\uff14\uff13\uff12", "ASCII digits"),
    ("\u00b2", "ASCII digits"),  # SUPERSCRIPT TWO: isdigit() too
    ("+5432", "ASCII digits"),
    ("5_432", "ASCII digits"),
    (True, "boolean"),
    (False, "boolean"),
    (5432.5, "ASCII digits"),
    (5432.0, "ASCII digits"),
    (0, "out of range"),
    (65536, "out of range"),
    (-1, "out of range"),
    ("70000", "out of range"),
    ("0" * 20 + "99999", "out of range"),
    ("9" * 5000, "out of range"),
]


@pytest.mark.parametrize(("port", "reason"), PORT_CASES, ids=[repr(p)[:12] for p, _ in PORT_CASES])
def test_bad_port_in_secret(port: Any, reason: str) -> None:
    with pytest.raises(InvalidSecret) as info:
        DbSecret.from_dict({**DOC, "port": port}, secret_id="prod/app")
    assert info.value.key == "port"
    assert reason in str(info.value)
    assert SECRET_PW not in str(info.value)
    if not isinstance(port, bool):
        assert str(port) not in str(info.value).replace("prod/app", "")


def test_good_ports_in_secret() -> None:
    for port, expected in ((5432, 5432), ("6432", 6432), (" 6432 ", 6432), ("00080", 80),
                           (None, 5432), (65535, 65535), ("1", 1)):
        assert DbSecret.from_dict({**DOC, "port": port}).port == expected


@pytest.mark.parametrize("text", [
    "[" * 100_000,
    '{"password": "' + SECRET_PW + '", "x": ' + "[" * 100_000,
    '{"password": "' + SECRET_PW + '", "x": ' + '{"a": ' * 100_000,
    '{"password": "' + SECRET_PW + '"',  # plain bad JSON: the decoder quotes the document
])
def test_unreadable_json_is_invalid_secret_without_chain(text: str) -> None:
    with pytest.raises(InvalidSecret) as info:
        DbSecret.from_json(text, secret_id="prod/app")
    assert info.value.key is None and "not JSON" in str(info.value)
    assert info.value.__context__ is None and info.value.__cause__ is None
    assert_nowhere(SECRET_PW, info.value)


def test_unreadable_json_while_handling_another_error() -> None:
    try:
        try:
            raise KeyError(SECRET_PW)
        except KeyError:
            DbSecret.from_json('{"password": "' + SECRET_PW, secret_id="prod/app")
    except InvalidSecret as exc:
        assert exc.__context__ is None
        assert_nowhere(SECRET_PW, exc)
    else:
        pytest.fail("no InvalidSecret")


# -- raise_clean ------------------------------------------------------------------------------

def test_raise_from_none_keeps_the_original_raise_clean_does_not() -> None:
    def scrub_with(raiser: Callable[[BaseException], None]) -> BaseException:
        try:
            try:
                raise RuntimeError(f"login failed for password {SECRET_PW}")
            except RuntimeError:
                raiser(RotationError("login failed for password ********"))
        except RotationError as exc:
            return exc
        raise AssertionError("not raised")

    def from_none(err: BaseException) -> None:
        raise err from None

    leaky = scrub_with(from_none)
    assert leaky.__context__ is not None  # the very thing this fixes
    assert SECRET_PW in str(leaky.__context__)
    clean = scrub_with(raise_clean)
    assert clean.__context__ is None and clean.__cause__ is None and clean.__suppress_context__
    assert_nowhere(SECRET_PW, clean)


# -- the rotation handler ---------------------------------------------------------------------

STEP_TOKEN = "tok-00000000-1111-2222-3333-444444444444"
ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/app-AbCdEf"
PENDING_PW = "pw-PENDING-sekrit-9191"


class FakeSecretsManager:
    """describe_secret / get_secret_value of a secret in the middle of a rotation."""

    def describe_secret(self, SecretId: str) -> dict[str, Any]:
        return {"ARN": ARN, "RotationEnabled": True,
                "VersionIdsToStages": {"v-old": ["AWSCURRENT"], STEP_TOKEN: ["AWSPENDING"]}}

    def get_secret_value(self, SecretId: str, VersionStage: str,
                         VersionId: str | None = None) -> dict[str, Any]:
        password = PENDING_PW if VersionStage == "AWSPENDING" else SECRET_PW
        version = STEP_TOKEN if VersionStage == "AWSPENDING" else "v-old"
        return {"ARN": ARN, "VersionId": version,
                "SecretString": json.dumps({**DOC, "password": password})}


class LeakyConnection:
    """A connection whose query fails with a driver message quoting the password."""

    def __enter__(self) -> LeakyConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def execute(self, query: str) -> Any:
        raise RuntimeError(f'connection to "db.example" password={PENDING_PW} lost')


EVENT = {"SecretId": ARN, "ClientRequestToken": STEP_TOKEN, "Step": "testSecret"}
SETTINGS = RotationSettings(sslmode="disable")


def test_step_error_scrubbed_by_describe_failure_keeps_no_original(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # steps.test_secret: `raise ctx.error(..., describe_failure(exc, seen)) from None`
    monkeypatch.setattr(steps, "try_login", lambda secret, settings: (LeakyConnection(), ""))
    with pytest.raises(TestSecretFailed) as info:
        handler.run_step(EVENT, client=FakeSecretsManager(), settings=SETTINGS)
    assert "query failed" in str(info.value)
    assert info.value.__context__ is None and info.value.__cause__ is None
    assert_nowhere(PENDING_PW, info.value)


def test_error_revealing_a_password_is_replaced_without_chain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def leaky_step(ctx: steps.StepContext) -> str:
        ctx.pending()  # the password is now "seen"
        try:
            raise ValueError(f"driver said: bad password {PENDING_PW}")
        except ValueError as exc:
            raise OSError(f"wrapped: {exc}") from exc

    monkeypatch.setitem(steps.STEPS, steps.RotationStep.TEST, leaky_step)
    monkeypatch.setitem(handler.STEPS, steps.RotationStep.TEST, leaky_step)
    with pytest.raises(RotationError) as info:
        handler.run_step(EVENT, client=FakeSecretsManager(), settings=SETTINGS)
    assert "OSError: wrapped: driver said: bad password ********" in str(info.value)
    assert info.value.__context__ is None and info.value.__cause__ is None
    assert_nowhere(PENDING_PW, info.value)


def test_clean_error_keeps_its_chain_but_loses_leaky_links(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def step(ctx: steps.StepContext) -> str:
        ctx.pending()
        try:
            try:
                raise ValueError(f"bad password {PENDING_PW}")
            except ValueError:
                raise LookupError("innocent") from None
        except LookupError as exc:
            raise RotationError("step failed") from exc

    monkeypatch.setitem(handler.STEPS, steps.RotationStep.TEST, step)
    with pytest.raises(RotationError, match="step failed") as info:
        handler.run_step(EVENT, client=FakeSecretsManager(), settings=SETTINGS)
    assert isinstance(info.value.__cause__, LookupError)  # a clean cause stays
    assert info.value.__cause__.__context__ is None
    assert_nowhere(PENDING_PW, info.value)


# -- the extension token ----------------------------------------------------------------------

BAD_TOKEN = "tok-BAD\r\nX-Injected: " + "sekrit-token-77"


def test_bad_token_from_the_agent_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("agent tok\u00e9n with space\n", encoding="utf-8")
    with pytest.raises(ConfigurationError, match="AWS_TOKEN") as info:
        extension_configured({"AWS_TOKEN": f"file://{token_file}",
                              "PARAMETERS_SECRETS_EXTENSION_HTTP_PORT": "2773"})
    assert "agent" not in str(info.value)


def test_bad_token_does_not_matter_when_the_extension_is_not_used(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch
                                                                  ) -> None:
    monkeypatch.setattr(ext, "EXTENSIONS_DIR", str(tmp_path))
    assert not extension_configured({"AWS_SESSION_TOKEN": BAD_TOKEN})
    assert not extension_configured({"AWS_SESSION_TOKEN": BAD_TOKEN,
                                     "PARAMETERS_SECRETS_EXTENSION_HTTP_PORT": "2773",
                                     "DBCREDS_SECRETS_TRANSPORT": "sdk"})


def test_transport_refuses_a_bad_token() -> None:
    with pytest.raises(ConfigurationError, match="token") as info:
        ExtensionTransport(lambda _s, _t: {}, token=BAD_TOKEN)
    assert_nowhere("sekrit-token-77", info.value)


@pytest.fixture
def listener() -> Iterator[int]:
    """A port that accepts connections (the backlog) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield int(s.getsockname()[1])


@pytest.mark.parametrize("token", [BAD_TOKEN, "sekrit-token-77-\u0100-wide", "x\nsekrit-token-77"])
def test_http_client_errors_never_carry_the_header(listener: int, token: str) -> None:
    sdk_calls: list[str] = []
    transport = ExtensionTransport(lambda s, t: sdk_calls.append(s) or {}, port=listener,
                                   token="good-token", connect_timeout=2, read_timeout=2)
    transport._token = token  # past the constructor's check: the request itself must not leak
    with pytest.raises(ConfigurationError) as info:
        transport.get("prod/app", "AWSCURRENT")
    assert "AWS_SESSION_TOKEN" in str(info.value)
    assert info.value.__context__ is None and info.value.__cause__ is None
    assert_nowhere("sekrit-token-77", info.value)
    # ... and through the provider, which does not wrap a DbcredsError.
    with pytest.raises(ConfigurationError) as again:
        SecretProvider("prod/app", fetcher=transport).get()
    assert_nowhere("sekrit-token-77", again.value)
    assert sdk_calls == []


def test_provider_does_not_chain_what_may_quote_a_header() -> None:
    def fetch(_secret_id: str, _stage: str) -> dict[str, Any]:
        raise ValueError(f"Invalid header value b'{TOKEN}\\r\\n'")

    with pytest.raises(SecretsManagerUnavailable, match="ValueError") as info:
        SecretProvider("prod/app", fetcher=fetch, max_stale=0).get()
    assert info.value.__context__ is None and info.value.__cause__ is None
    assert_nowhere(TOKEN, info.value)


def test_provider_still_chains_a_service_answer() -> None:
    class ClientError(Exception):
        def __init__(self) -> None:
            super().__init__("ResourceNotFoundException: no such")
            self.response = {"Error": {"Code": "ResourceNotFoundException", "Message": "no such"}}

    def fetch(_secret_id: str, _stage: str) -> dict[str, Any]:
        raise ClientError()

    with pytest.raises(Exception) as info:
        SecretProvider("prod/app", fetcher=fetch).get()
    assert isinstance(info.value.__cause__, ClientError)
