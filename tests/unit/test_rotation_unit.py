"""Pure-logic tests of the rotation package: events, settings, TLS policy, names, operations."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from dbcreds.errors import ConfigurationError, InvalidSecret
from dbcreds.rotation import (
    InvalidRotationEvent,
    RotationNotEnabled,
    RotationSettings,
    RotationStateError,
    RotationStep,
    Strategy,
)
from dbcreds.rotation.connect import tls_policy
from dbcreds.rotation.events import RotationEvent, Versions, check_versions
from dbcreds.rotation.exceptions import NoWorkingCredentials, RotationError, scrub
from dbcreds.rotation.guard import name_violations, pg_truncate
from dbcreds.rotation.local import is_aws_endpoint
from dbcreds.rotation.operations import log_step, notify_failure
from dbcreds.rotation.steps import _PROVEN_MAX, _proven, _remember_proven, _was_proven
from dbcreds.rotation.strategies import MAX_ROLE_NAME_BYTES, alternate_username
from dbcreds.secret import DbSecret

TOKEN = "11111111-2222-3333-4444-555555555555"
EVENT = {"SecretId": "arn:aws:secretsmanager:r:1:secret:s-AbCdEf", "ClientRequestToken": TOKEN,
         "Step": "createSecret"}  # fmt: skip


# -- events -----------------------------------------------------------------------------------

def test_event_parses_and_ignores_other_keys() -> None:
    ev = RotationEvent.parse({**EVENT, "Step": "finishSecret", "Extra": "whatever"})
    assert ev == RotationEvent(EVENT["SecretId"], TOKEN, RotationStep.FINISH)


@pytest.mark.parametrize("key", ["SecretId", "ClientRequestToken", "Step"])
def test_event_missing_key_is_a_clear_error(key: str) -> None:
    event = {k: v for k, v in EVENT.items() if k != key}
    with pytest.raises(InvalidRotationEvent, match=key):
        RotationEvent.parse(event)


@pytest.mark.parametrize("value", [42, "", "  ", ["x"]])
def test_event_key_must_be_a_non_empty_string(value: Any) -> None:
    with pytest.raises(InvalidRotationEvent, match="non-empty string"):
        RotationEvent.parse({**EVENT, "ClientRequestToken": value})


def test_event_unknown_step_names_the_valid_ones() -> None:
    with pytest.raises(InvalidRotationEvent) as info:
        RotationEvent.parse({**EVENT, "Step": "dropDatabase"})
    text = str(info.value)
    assert "dropDatabase" in text and "createSecret" in text and "finishSecret" in text


def test_event_not_an_object() -> None:
    with pytest.raises(InvalidRotationEvent, match="JSON object"):
        RotationEvent.parse(["SecretId"])


def test_step_parse_short_names() -> None:
    assert RotationStep.parse("set") is RotationStep.SET
    assert RotationStep.parse("testSecret") is RotationStep.TEST
    with pytest.raises(ValueError):
        RotationStep.parse("reset")


def _versions(stages: dict[str, list[str]], enabled: bool = True) -> Versions:
    return Versions.from_describe(
        {"ARN": "arn:x", "Name": "x", "RotationEnabled": enabled, "VersionIdsToStages": stages},
        "x",
    )


def test_versions_checks() -> None:
    ev = RotationEvent.parse(EVENT)
    assert check_versions(_versions({"old": ["AWSCURRENT"], TOKEN: ["AWSPENDING"]}), ev) is False
    assert check_versions(_versions({TOKEN: ["AWSCURRENT", "AWSPENDING"]}), ev) is True
    with pytest.raises(RotationNotEnabled, match="not enabled"):
        check_versions(_versions({TOKEN: ["AWSPENDING"]}, enabled=False), ev)
    with pytest.raises(RotationStateError, match="not a version"):
        check_versions(_versions({"old": ["AWSCURRENT"]}), ev)
    with pytest.raises(RotationStateError, match="not AWSPENDING"):
        check_versions(_versions({"old": ["AWSCURRENT"], TOKEN: ["AWSPREVIOUS"]}), ev)


# -- settings ---------------------------------------------------------------------------------

def test_settings_defaults() -> None:
    s = RotationSettings.from_env({})
    assert s.strategy is Strategy.SINGLE_USER
    assert s.password_policy == {"PasswordLength": 32, "ExcludeCharacters": ":/@\"'\\"}
    assert s.sslmode is None and s.failure_topic_arn is None


def test_settings_password_switches() -> None:
    s = RotationSettings.from_env({
        "ROTATION_STRATEGY": "Alternating-Users", "PASSWORD_LENGTH": "20",
        "EXCLUDE_CHARACTERS": "abc", "EXCLUDE_NUMBERS": "true", "EXCLUDE_PUNCTUATION": "yes",
        "EXCLUDE_UPPERCASE": "0", "EXCLUDE_LOWERCASE": "false", "INCLUDE_SPACE": "1",
        "REQUIRE_EACH_INCLUDED_TYPE": "off", "ROTATION_FAILURE_TOPIC_ARN": "arn:sns:t",
        "DBCREDS_ROTATION_SSLMODE": "Verify-Full", "DBCREDS_ROTATION_SSLROOTCERT": "/ca.pem",
    })  # fmt: skip
    assert s.strategy is Strategy.ALTERNATING_USERS
    assert s.password_policy == {
        "PasswordLength": 20, "ExcludeCharacters": "abc", "ExcludeNumbers": True,
        "ExcludePunctuation": True, "ExcludeUppercase": False, "ExcludeLowercase": False,
        "IncludeSpace": True, "RequireEachIncludedType": False,
    }  # fmt: skip
    assert (s.sslmode, s.sslrootcert) == ("verify-full", "/ca.pem")
    assert s.failure_topic_arn == "arn:sns:t"
    empty = RotationSettings.from_env({"EXCLUDE_CHARACTERS": ""})
    assert "ExcludeCharacters" not in empty.password_policy


@pytest.mark.parametrize(("name", "value"), [
    ("ROTATION_STRATEGY", "multi-user"), ("PASSWORD_LENGTH", "x"), ("PASSWORD_LENGTH", "0"),
    ("PASSWORD_LENGTH", "5000"), ("INCLUDE_SPACE", "maybe"), ("DBCREDS_ROTATION_SSLMODE", "prefer"),
    ("DBCREDS_ROTATION_SSLMODE", "allow"), ("LOG_LEVEL", "verbose"),
])  # fmt: skip
def test_settings_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=name):
        RotationSettings.from_env({name: value})


# -- TLS --------------------------------------------------------------------------------------

def _secret(**extra: Any) -> DbSecret:
    return DbSecret(username="u", password="pw-SECRET", host="db", secret_id="s", extra=extra)


def test_tls_default_is_channel_binding_without_a_ca_and_verify_full_with_one() -> None:
    policy = tls_policy(_secret(), RotationSettings())
    assert (policy.sslmode, policy.source) == ("require", "default without a CA")
    assert policy.params == {
        "sslmode": "require", "channel_binding": "require", "require_auth": "scram-sha-256",
        "gssencmode": "disable",
    }  # fmt: skip
    with_ca = tls_policy(_secret(), RotationSettings(sslrootcert="/ca.pem"))
    assert with_ca.params == {
        "sslmode": "verify-full", "sslrootcert": "/ca.pem", "require_auth": "scram-sha-256,md5",
        "gssencmode": "disable",
    }  # fmt: skip
    assert with_ca.verified and with_ca.downgrade is None


def test_the_secret_may_strengthen_tls_never_weaken_it() -> None:
    for weaker in (False, "false", "disable"):
        assert tls_policy(_secret(ssl=weaker), RotationSettings()).sslmode == "require"
        ca = RotationSettings(sslrootcert="c")
        assert tls_policy(_secret(ssl=weaker), ca).sslmode == "verify-full"
    assert tls_policy(_secret(ssl=True), RotationSettings(sslrootcert="c")).sslmode == "verify-full"
    assert tls_policy(_secret(ssl="require"), RotationSettings()).sslmode == "require"
    with pytest.raises(ConfigurationError, match="DBCREDS_ROTATION_SSLROOTCERT"):
        tls_policy(_secret(ssl="verify-full"), RotationSettings())  # stronger, but no CA
    env = tls_policy(_secret(ssl=False), RotationSettings(sslmode="require"))
    assert (env.sslmode, env.source) == ("require", "DBCREDS_ROTATION_SSLMODE")
    off = tls_policy(_secret(), RotationSettings(sslmode="disable"))
    assert off.params == {"sslmode": "disable", "require_auth": "scram-sha-256",
                          "gssencmode": "disable"}
    assert off.downgrade is not None and "DBCREDS_ROTATION_SSLMODE" in off.downgrade


def test_tls_bad_configuration() -> None:
    with pytest.raises(ConfigurationError, match="DBCREDS_ROTATION_SSLROOTCERT"):
        tls_policy(_secret(), RotationSettings(sslmode="verify-full"))
    with pytest.raises(InvalidSecret, match="'ssl'"):
        tls_policy(_secret(ssl="prefer"), RotationSettings())


# -- names ------------------------------------------------------------------------------------

def test_alternate_username_pairs() -> None:
    assert alternate_username("app") == "app_clone"
    assert alternate_username("app_clone") == "app"
    assert alternate_username('We "quote" it') == 'We "quote" it_clone'
    assert alternate_username("_clone") == "_clone_clone"


def test_alternate_username_respects_63_bytes() -> None:
    fits = "a" * (MAX_ROLE_NAME_BYTES - len("_clone"))
    assert alternate_username(fits) == fits + "_clone"
    with pytest.raises(RotationError, match="63-byte"):
        alternate_username(fits + "a")
    # bytes, not characters: 29 two-byte characters + "_clone" is 64 bytes
    with pytest.raises(RotationError, match="63-byte"):
        alternate_username("é" * 29)


@pytest.mark.parametrize(("current", "pending", "master", "rules"), [
    ("app", "app_clone", "postgres", []),
    ("app_clone", "app", "postgres", []),
    ("app", "app_clone", None, []),
    ("PG_app", "PG_app_clone", None, []),  # pg_ is reserved as written, case and all
    ("a" * 57, "a" * 57 + "_clone", None, []),  # exactly 63 bytes
    # the master's own name, either side of the pair
    ("postgres", "postgres_clone", "postgres", ["master-user"]),
    ("postgres_clone", "postgres", "postgres", ["master-user"]),
    ("m", "m_clone", "m_clone", ["master-user"]),
    # ... also once PostgreSQL truncates the master's name to 63 bytes
    ("m" * 63, "m" * 63 + "_clone", "m" * 63 + "zzz",
     ["master-user", "master-user", "too-long", "truncation-collision"]),
    # predefined roles
    ("pg_read_all_data", "pg_read_all_data_clone", None, ["reserved-prefix"] * 2),
    ("pg_monitor_clone", "pg_monitor", "postgres", ["reserved-prefix"] * 2),
    # too long, in UTF-8 bytes
    ("a" * 58, "a" * 58 + "_clone", None, ["too-long"]),
    ("é" * 29, "é" * 29 + "_clone", None, ["too-long"]),
    ("t" * 60, "t" * 60 + "_clone", None, ["too-long"]),
    # pairs that are one role once truncated
    ("x" * 80 + "_clone", "x" * 80, None, ["too-long", "too-long", "truncation-collision"]),
    ("v" * 63 + "_clone", "v" * 63, None, ["too-long", "truncation-collision"]),
    ("postgres", "postgres", None, ["truncation-collision"]),
])  # fmt: skip
def test_name_rules(current: str, pending: str, master: str | None, rules: list[str]) -> None:
    found = name_violations(current, pending, master)
    assert [v.split(":", 1)[0] for v in found] == rules
    for violation in found:  # each names a role of the pair
        assert repr(current) in violation or repr(pending) in violation


def test_pg_truncate_cuts_bytes_at_a_character_boundary() -> None:
    assert pg_truncate("a" * 63) == "a" * 63
    assert pg_truncate("a" * 64) == "a" * 63
    assert pg_truncate("é" * 32) == "é" * 31  # 64 bytes -> 62: no half character
    assert pg_truncate("a" + "é" * 31) == "a" + "é" * 31  # exactly 63 bytes


@pytest.mark.parametrize("username", ["pg_monitor", "pg_monitor_clone", "a" * 58])
def test_alternate_username_refuses_unsafe_names(username: str) -> None:
    with pytest.raises(RotationError, match="refuses the role pair"):
        alternate_username(username, secret_id="s")


def test_finish_memo_is_bounded_and_holds_only_ids() -> None:
    saved = dict(_proven)
    try:
        for i in range(_PROVEN_MAX + 10):
            _remember_proven("arn:s", f"token-{i}")
        assert len(_proven) == _PROVEN_MAX
        assert not _was_proven("arn:s", "token-0")  # the oldest went first
        assert _was_proven("arn:s", f"token-{_PROVEN_MAX + 9}")
        assert not _was_proven("arn:other", f"token-{_PROVEN_MAX + 9}")  # keyed by secret too
        assert all(isinstance(k, tuple) and len(k) == 2 for k in _proven)
        assert all(v is None for v in _proven.values())
    finally:
        _proven.clear()
        _proven.update(saved)


def test_secret_name_of_arn() -> None:
    from dbcreds_testing.endpoint import secret_name

    assert secret_name("arn:aws:secretsmanager:us-east-1:1:secret:dbcreds-test/app-AbC123") == (
        "dbcreds-test/app"
    )
    assert secret_name("plain/name") == "plain/name"


def test_is_aws_endpoint() -> None:
    assert is_aws_endpoint(None)
    assert is_aws_endpoint("https://secretsmanager.eu-west-1.amazonaws.com")
    assert not is_aws_endpoint("http://127.0.0.1:5000")


# -- errors and operations ------------------------------------------------------------------

def test_scrub_masks_longest_first() -> None:
    assert scrub("a pw and pwx", ["pw", "pwx", None, ""]) == "a ******** and ********"


def test_no_working_credentials_lists_attempts() -> None:
    exc = NoWorkingCredentials(secret_id="s", step="setSecret", target="db:5432/app as 'u'",
                               attempts=[("AWSCURRENT", "password authentication failed"),
                                         ("AWSPREVIOUS", "no such version")])  # fmt: skip
    text = str(exc)
    assert "AWSCURRENT: password authentication failed" in text
    assert "AWSPREVIOUS: no such version" in text
    assert exc.attempts[0][0] == "AWSCURRENT"


def test_log_step_is_one_json_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dbcreds.rotation")
    log_step({"step": "setSecret", "outcome": "success", "duration_ms": 1.5})
    log_step({"step": "setSecret", "outcome": "failure"})
    ok, failed = caplog.records
    assert json.loads(ok.getMessage())["outcome"] == "success" and ok.levelno == logging.INFO
    assert failed.levelno == logging.ERROR


class _FakeSns:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[dict[str, Any]] = []
        self.fail = fail

    def publish(self, **kwargs: Any) -> dict[str, Any]:
        if self.fail:
            raise OSError("network down")
        self.calls.append(kwargs)
        return {"MessageId": "1"}


def test_notify_failure_message() -> None:
    sns = _FakeSns()
    record = {"secret_arn": "arn:aws:secretsmanager:r:1:secret:ünïcode-AbCdEf",
              "step": "testSecret", "outcome": "failure", "error": "boom"}  # fmt: skip
    assert notify_failure("arn:sns:topic", record, lambda: sns)
    (call,) = sns.calls
    assert call["TopicArn"] == "arn:sns:topic"
    assert call["Subject"].isascii() and len(call["Subject"]) <= 100
    assert "testSecret" in call["Subject"]
    message = json.loads(call["Message"])
    assert message["error"] == "boom" and "what_to_do" in message


def test_notify_failure_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    assert not notify_failure("arn:sns:topic", {"step": "x"}, lambda: _FakeSns(fail=True))
    assert "could not publish" in caplog.text


# -- store and handler details that moto cannot show ----------------------------------------

class _Exists(Exception):
    response = {"Error": {"Code": "ResourceExistsException", "Message": "token in use"}}  # noqa: RUF012


class _RacingClient:
    """PutSecretValue as AWS answers the loser of two concurrent createSecret invocations."""

    def put_secret_value(self, **kwargs: Any) -> dict[str, Any]:
        raise _Exists("You can't use ClientRequestToken ... already in use")


def test_concurrent_duplicate_put_is_success() -> None:
    from dbcreds.rotation.store import SecretStore

    store = SecretStore(_RacingClient(), "s")
    assert store.put_pending(_secret(), TOKEN) is False


def test_an_error_that_shows_a_password_is_replaced() -> None:
    from dbcreds.rotation.handler import _sanitized

    leaky = ValueError("Invalid type for parameter SecretString, value: pw-SECRET")
    safe = _sanitized(leaky, ["pw-SECRET"], {"secret_arn": "arn:s", "step": "createSecret"})
    assert isinstance(safe, RotationError) and "pw-SECRET" not in str(safe)
    assert "ValueError" in str(safe) and safe.step == "createSecret"
    harmless = ValueError("nothing secret")
    assert _sanitized(harmless, ["pw-SECRET"], {}) is harmless
