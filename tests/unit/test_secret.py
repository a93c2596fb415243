"""DbSecret parsing and validation (pure logic)."""

from __future__ import annotations

import json

import pytest

from dbcreds import DbSecret, InvalidSecret

PASSWORD = "pa55-Secret-value"  # a value that must never be echoed
BASE = {
    "engine": "postgres", "host": "db.example", "port": 5432, "username": "app",
    "password": PASSWORD, "dbname": "orders",
}


def parse(doc: object) -> DbSecret:
    return DbSecret.from_json(json.dumps(doc), secret_id="prod/app", version_id="v1")


def test_parses_rds_secret_and_keeps_extra_keys() -> None:
    secret = parse({**BASE, "masterarn": "arn:aws:secretsmanager:x", "ssl": "require"})
    assert (secret.username, secret.password, secret.host, secret.port, secret.dbname) == (
        "app", PASSWORD, "db.example", 5432, "orders",
    )
    assert secret.version_id == "v1"
    assert secret.extra == {"masterarn": "arn:aws:secretsmanager:x", "ssl": "require"}
    assert json.loads(secret.to_json()) == {**BASE, "masterarn": "arn:aws:secretsmanager:x",
                                            "ssl": "require"}


def test_port_as_numeric_string_and_dbname_default() -> None:
    doc = {k: v for k, v in BASE.items() if k != "dbname"}
    secret = parse({**doc, "port": "6432"})
    assert secret.port == 6432
    assert secret.dbname == "postgres"


@pytest.mark.parametrize(
    ("doc", "key", "reason"),
    [
        ({k: v for k, v in BASE.items() if k != "username"}, "username", "missing"),
        ({k: v for k, v in BASE.items() if k != "password"}, "password", "missing"),
        ({k: v for k, v in BASE.items() if k != "host"}, "host", "missing"),
        ({**BASE, "port": "abc"}, "port", "integer"),
        ({**BASE, "port": 70000}, "port", "range"),
        ({**BASE, "port": True}, "port", "boolean"),
        ({**BASE, "password": ""}, "password", "empty"),
        ({**BASE, "password": 12345678}, "password", "string"),
        ({**BASE, "engine": "mysql"}, "engine", "PostgreSQL"),
        ([BASE], None, "array"),
        ("just a string", None, "string"),
    ],
)
def test_invalid_secret_names_key_never_value(doc: object, key: str | None, reason: str) -> None:
    with pytest.raises(InvalidSecret) as info:
        parse(doc)
    err = info.value
    assert err.key == key
    assert err.secret_id == "prod/app"
    assert reason in str(err)
    assert PASSWORD not in str(err) and "abc" not in str(err).replace("'", "")


def test_not_json_does_not_echo_or_chain_the_document() -> None:
    with pytest.raises(InvalidSecret) as info:
        DbSecret.from_json('{"password": "' + PASSWORD + '"', secret_id="prod/app")
    assert "not JSON" in str(info.value)
    assert PASSWORD not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_repr_and_str_mask_the_password() -> None:
    secret = parse(BASE)
    for text in (repr(secret), str(secret), f"{secret}", repr([secret])):
        assert PASSWORD not in text
        assert "********" in text
    assert PASSWORD not in repr(secret.with_changes(username="other"))


def test_same_login() -> None:
    a = parse(BASE)
    assert a.same_login(parse(BASE).with_changes(version_id="v2"))
    assert not a.same_login(a.with_changes(password="other"))
    assert not a.same_login(None)
