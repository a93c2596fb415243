"""DbSecret parsing and validation (pure logic)."""

from __future__ import annotations

import json

import pytest

from dbcreds import DbSecret, InvalidSecret
from dbcreds.secret import check_key_map

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


def test_rds_managed_secret_two_keys() -> None:
    """A secret RDS manages (manage_master_user_password) holds only username and password:
    parsed with no host (configuration supplies it), written back without inventing one."""
    secret = parse({"username": "postgres", "password": PASSWORD})
    assert secret.host is None
    assert (secret.port, secret.dbname) == (5432, "postgres")
    assert "host" not in secret.connect_kwargs()
    assert "host" not in secret.to_dict()
    assert PASSWORD not in repr(secret)


def test_missing_password_says_the_secret_must_hold_it() -> None:
    with pytest.raises(InvalidSecret) as info:
        parse({"username": "app"})
    assert "the secret itself must hold the password" in str(info.value)


def test_key_mapping_reads_other_key_names() -> None:
    doc = {"user": "app", "pass": PASSWORD, "hostname": "db.example", "db_port": "6432",
           "database": "orders", "note": "kept"}
    keys = check_key_map({"username": "user", "password": "pass", "host": "hostname",
                          "port": "db_port", "dbname": "database"})
    secret = DbSecret.from_json(json.dumps(doc), secret_id="s", keys=keys)
    assert (secret.username, secret.password, secret.host, secret.port, secret.dbname) == (
        "app", PASSWORD, "db.example", 6432, "orders")
    assert secret.extra == {"note": "kept"}


def test_key_mapping_names_the_mapped_key_when_missing() -> None:
    with pytest.raises(InvalidSecret) as info:
        DbSecret.from_json(json.dumps({"username": "app"}), secret_id="s",
                           keys={"password": "pass"})
    assert info.value.key == "pass"
    assert "key mapping's name for password" in str(info.value)


@pytest.mark.parametrize(
    ("mapping", "problem"),
    [
        ({"user": "login"}, "not a secret field"),
        ({"username": ""}, "non-empty"),
        ({"username": "password"}, "two fields"),
        ({"username": "login", "password": "login"}, "two fields"),
    ],
)
def test_key_mapping_is_checked(mapping: dict[str, str], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        check_key_map(mapping)
