"""End-to-end: bad input, secrets kept out of logs and errors, the failure notification."""

from __future__ import annotations

import json
import logging
import secrets
import traceback
import uuid
from typing import Any

import psycopg
import pytest

from dbcreds.errors import ConfigurationError, InvalidSecret
from dbcreds.rotation import (
    InvalidRotationEvent,
    NoWorkingCredentials,
    RotationNotEnabled,
    RotationStateError,
    RotationStep,
    TestSecretFailed,
    lambda_handler,
    run_step,
)
from dbcreds.rotation.local import rotate_locally


class Subject:
    """A role, a secret whose AWSCURRENT is *value*, and a registered rotation token."""

    def __init__(self, stack: Any, sm: Any, value: Any = None, *, enable: bool = True) -> None:
        self.stack, self.sm = stack, sm
        self.username = f"err_{secrets.token_hex(4)}"
        self.password = "Init-" + secrets.token_urlsafe(18)
        stack.create_role(self.username, self.password)
        if value is None:
            value = stack.secret_doc(self.username, self.password)
        text = value if isinstance(value, str) else json.dumps(value)
        self.secret_id = f"dbcreds-test/errors-{secrets.token_hex(6)}"
        stack.sm().create_secret(Name=self.secret_id, SecretString=text)
        if enable:
            stack.enable_rotation(self.secret_id)
        self.token = stack.secrets.register_pending(self.secret_id)
        self.verifier = self._verifier()
        self.stages = self._stages()

    def _verifier(self) -> Any:
        with self.stack.admin() as conn:
            return conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s",
                                [self.username]).fetchone()  # fmt: skip

    def _stages(self) -> dict[str, list[str]]:
        stages = self.sm.describe_secret(SecretId=self.secret_id)["VersionIdsToStages"]
        return {k: sorted(v) for k, v in stages.items()}

    def event(
        self, step: RotationStep | str = RotationStep.CREATE, **changes: Any
    ) -> dict[str, Any]:
        value = step.value if isinstance(step, RotationStep) else step
        return {"SecretId": self.secret_id, "ClientRequestToken": self.token, "Step": value,
                **changes}  # fmt: skip

    def assert_unchanged(self) -> None:
        assert self._verifier() == self.verifier, "the role's password changed"
        assert self._stages() == self.stages, "the secret's versions changed"
        with psycopg.connect(self.stack.dsn(self.username, self.password), connect_timeout=5):
            pass


# -- Done means: bad input is a clear error and the database is unchanged --------------------------

@pytest.mark.parametrize("missing", ["SecretId", "ClientRequestToken", "Step"])
def test_missing_event_key(stack: Any, sm: Any, missing: str) -> None:
    subject = Subject(stack, sm)
    event = {k: v for k, v in subject.event().items() if k != missing}
    with pytest.raises(InvalidRotationEvent, match=f"no '{missing}'"):
        lambda_handler(event, None)
    subject.assert_unchanged()


def test_unknown_step(stack: Any, sm: Any) -> None:
    subject = Subject(stack, sm)
    with pytest.raises(InvalidRotationEvent, match="unknown rotation step 'rotateSecret'"):
        lambda_handler(subject.event("rotateSecret"), None)
    subject.assert_unchanged()


@pytest.mark.parametrize("step", list(RotationStep))
def test_token_that_is_not_a_version(stack: Any, sm: Any, step: RotationStep) -> None:
    subject = Subject(stack, sm)
    stranger = str(uuid.uuid4())
    with pytest.raises(RotationStateError, match="not a version of the secret"):
        lambda_handler(subject.event(step, ClientRequestToken=stranger), None)
    subject.assert_unchanged()


def test_token_that_lost_awspending(stack: Any, sm: Any) -> None:
    subject = Subject(stack, sm)
    newer = stack.secrets.register_pending(subject.secret_id)  # a newer rotation took the label
    subject.stages = subject._stages()
    with pytest.raises(RotationStateError, match="is not AWSPENDING"):
        lambda_handler(subject.event(RotationStep.SET), None)
    subject.assert_unchanged()
    assert newer != subject.token


@pytest.mark.parametrize("step", list(RotationStep))
def test_rotation_disabled(stack: Any, sm: Any, step: RotationStep) -> None:
    subject = Subject(stack, sm, enable=False)
    with pytest.raises(RotationNotEnabled, match="rotation is not enabled"):
        lambda_handler(subject.event(step), None)
    subject.assert_unchanged()


def _bad_current(stack: Any, username: str, password: str, kind: str) -> Any:
    good = stack.secret_doc(username, password)
    return {
        "not JSON": f"username={username} password={password}",
        "a JSON array": json.dumps([good]),
        "no password": {k: v for k, v in good.items() if k != "password"},
        "no host": {k: v for k, v in good.items() if k != "host"},
        "no username": {k: v for k, v in good.items() if k != "username"},
        "another engine": {**good, "engine": "mysql"},
        "a non-numeric port": {**good, "port": "fivefourthreetwo"},
    }[kind]


@pytest.mark.parametrize("kind", [
    "not JSON", "a JSON array", "no password", "no host", "no username", "another engine",
    "a non-numeric port",
])  # fmt: skip
def test_bad_awscurrent(stack: Any, sm: Any, kind: str) -> None:
    probe = Subject(stack, sm)  # a role whose password we know, to build the bad value
    subject = Subject(stack, sm, _bad_current(stack, probe.username, probe.password, kind))
    subject.username, subject.password, subject.verifier = (
        probe.username, probe.password, probe.verifier,
    )
    expected_key = {"no password": "password", "no host": "host", "no username": "username",
                    "another engine": "engine", "a non-numeric port": "port"}.get(kind)  # fmt: skip
    with pytest.raises(InvalidSecret) as info:
        lambda_handler(subject.event(RotationStep.CREATE), None)
    assert info.value.key == expected_key
    assert "AWSCURRENT" in str(info.value)
    assert probe.password not in "".join(traceback.format_exception(info.value))
    # setSecret too refuses before touching the database, even with a valid AWSPENDING.
    sm.put_secret_value(
        SecretId=subject.secret_id, ClientRequestToken=subject.token,
        SecretString=json.dumps(stack.secret_doc(probe.username, "Other-" + secrets.token_hex(8))),
        VersionStages=["AWSPENDING"],
    )  # fmt: skip
    subject.stages = subject._stages()
    with pytest.raises(InvalidSecret):
        lambda_handler(subject.event(RotationStep.SET), None)
    subject.assert_unchanged()


# -- Done means: no password in any log record or error, at DEBUG ----------------------------------

def _all_passwords(sm: Any, secret_id: str) -> set[str]:
    found = set()
    listed = sm.list_secret_version_ids(SecretId=secret_id, IncludeDeprecated=True)
    for version in listed["Versions"]:
        try:
            value = sm.get_secret_value(SecretId=secret_id, VersionId=version["VersionId"])
        except sm.exceptions.ResourceNotFoundException:
            continue
        try:
            found.add(json.loads(value["SecretString"])["password"])
        except (ValueError, KeyError, TypeError):
            pass
    return found


def _record_texts(record: logging.LogRecord) -> list[str]:
    texts = [record.getMessage(), str(record.msg), repr(record.args)]
    if record.exc_info and record.exc_info[1] is not None:
        texts.append("".join(traceback.format_exception(record.exc_info[1])))
    if record.exc_text:
        texts.append(record.exc_text)
    return texts


def test_no_password_in_logs_or_errors_at_debug(
    stack: Any, sm: Any, caplog: pytest.LogCaptureFixture
) -> None:
    good = Subject(stack, sm)
    wrong = Subject(stack, sm)  # AWSCURRENT and AWSPREVIOUS: passwords the database rejects
    for _ in range(2):
        stack.put_current(wrong.secret_id,
                          stack.secret_doc(wrong.username, "Wrong-" + secrets.token_hex(12)))
    failing_test = Subject(stack, sm)  # testSecret without setSecret
    errors: list[BaseException] = []

    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="dbcreds")
    caplog.set_level(logging.DEBUG, logger="botocore")
    for _ in range(2):
        rotate_locally(good.secret_id, client=sm)
    for event in (wrong.event(RotationStep.CREATE), wrong.event(RotationStep.SET),
                  failing_test.event(RotationStep.CREATE), failing_test.event(RotationStep.TEST)):
        try:
            run_step(event, client=sm)
        except Exception as exc:
            errors.append(exc)
    caplog.set_level(logging.WARNING)  # our own look-ups below must not be captured

    assert [type(e) for e in errors] == [NoWorkingCredentials, TestSecretFailed]
    tried = str(errors[0])
    assert "AWSCURRENT: " in tried and "AWSPREVIOUS: " in tried
    assert tried.count("password authentication failed") == 2
    assert any(r.name.startswith("botocore") for r in caplog.records)  # DEBUG was on
    passwords = {good.password, wrong.password, failing_test.password}
    for subject in (good, wrong, failing_test):
        passwords |= _all_passwords(sm, subject.secret_id)
    assert len(passwords) >= 7
    texts = [t for r in caplog.records for t in _record_texts(r)]
    texts += [t for e in errors for t in (str(e), repr(e),
                                          "".join(traceback.format_exception(e)))]  # fmt: skip
    for password in passwords:
        for text in texts:
            assert password not in text


# -- Done means: a failed testSecret notifies SNS once, then re-raises -----------------------------

def _failure_topic(stack: Any) -> tuple[str, Any, str]:
    """An SNS topic with an SQS queue subscribed: (topic ARN, sqs client, queue URL)."""
    sns, sqs = stack.secrets.client("sns"), stack.secrets.client("sqs")
    topic = sns.create_topic(Name=f"rotation-failures-{secrets.token_hex(4)}")["TopicArn"]
    queue = sqs.create_queue(QueueName=f"rotation-failures-{secrets.token_hex(4)}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]  # fmt: skip
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn,
                  Attributes={"RawMessageDelivery": "true"})  # fmt: skip
    return topic, sqs, queue


def test_failed_test_secret_publishes_one_notification(
    stack: Any, sm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic, sqs, queue = _failure_topic(stack)
    monkeypatch.setenv("ROTATION_FAILURE_TOPIC_ARN", topic)
    subject = Subject(stack, sm)
    lambda_handler(subject.event(RotationStep.CREATE), None)
    value = sm.get_secret_value(SecretId=subject.secret_id, VersionStage="AWSPENDING")
    pending = json.loads(value["SecretString"])
    published = stack.secrets.count("Publish", service="sns")

    with pytest.raises(TestSecretFailed, match="AWSPENDING does not log in"):
        lambda_handler(subject.event(RotationStep.TEST), None)

    assert stack.secrets.count("Publish", service="sns") == published + 1
    messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10,
                                   WaitTimeSeconds=1)["Messages"]  # fmt: skip
    assert len(messages) == 1
    body = messages[0]["Body"]
    notice = json.loads(body)
    assert notice["step"] == "testSecret" and notice["outcome"] == "failure"
    assert notice["token"] == subject.token and notice["error_type"] == "TestSecretFailed"
    assert notice["secret_arn"] == sm.describe_secret(SecretId=subject.secret_id)["ARN"]
    assert pending["password"] not in body and subject.password not in body
    # AWSCURRENT untouched: the rotation stops, the application keeps working.
    assert subject._stages() == {**subject.stages}


def test_bad_log_level_fails_like_a_step_log_line_and_notice(
    stack: Any, sm: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    topic, sqs, queue = _failure_topic(stack)
    monkeypatch.setenv("ROTATION_FAILURE_TOPIC_ARN", topic)
    monkeypatch.setenv("LOG_LEVEL", "Chatty-Level")
    rotation_logger = logging.getLogger("dbcreds.rotation")
    monkeypatch.setattr(rotation_logger, "level", logging.NOTSET)  # a fresh Lambda container
    secret_id = f"dbcreds-test/log-level-{secrets.token_hex(4)}"
    token = str(uuid.uuid4())
    published = stack.secrets.count("Publish", service="sns")

    with pytest.raises(ConfigurationError, match="LOG_LEVEL") as info:
        lambda_handler({"SecretId": secret_id, "ClientRequestToken": token,
                        "Step": "createSecret"}, None)  # fmt: skip

    assert "Chatty-Level" not in str(info.value)
    assert "DEBUG, INFO, WARNING, ERROR, CRITICAL" in str(info.value)
    assert rotation_logger.level == logging.INFO  # the default, usable for the next line
    lines = [json.loads(r.getMessage()) for r in caplog.records
             if r.name == "dbcreds.rotation" and r.levelno == logging.ERROR]
    assert [(line["outcome"], line["error_type"], line["step"], line["token"])
            for line in lines] == [("failure", "ConfigurationError", "createSecret", token)]
    assert "LOG_LEVEL" in lines[0]["error"]
    assert stack.secrets.count("Publish", service="sns") == published + 1
    messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10,
                                   WaitTimeSeconds=1)["Messages"]  # fmt: skip
    assert len(messages) == 1
    notice = json.loads(messages[0]["Body"])
    assert (notice["secret_arn"], notice["error_type"]) == (secret_id, "ConfigurationError")
    assert "Chatty-Level" not in messages[0]["Body"]


def test_notification_failure_does_not_hide_the_step_error(
    stack: Any, sm: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("ROTATION_FAILURE_TOPIC_ARN",
                       "arn:aws:sns:us-east-1:123456789012:no-such-topic")  # fmt: skip
    subject = Subject(stack, sm)
    lambda_handler(subject.event(RotationStep.CREATE), None)
    with pytest.raises(TestSecretFailed):
        lambda_handler(subject.event(RotationStep.TEST), None)
    assert "could not publish the rotation failure" in caplog.text
