"""The staging labels and the secret's key names live in dbcreds.secret, and only there."""

from __future__ import annotations

import dbcreds.provider
import dbcreds.rotation.events
from dbcreds import secret
from dbcreds.secret import DbSecret


def test_the_labels_are_defined_once_and_reexported() -> None:
    assert secret.STAGES == ("AWSCURRENT", "AWSPENDING", "AWSPREVIOUS")
    for name in ("AWSCURRENT", "AWSPENDING", "AWSPREVIOUS"):
        value = getattr(secret, name)
        assert value == name
        assert getattr(dbcreds.provider, name) is value  # the old places still work
        assert getattr(dbcreds.rotation.events, name) is value


def test_from_dict_and_to_dict_use_the_key_names() -> None:
    doc = {
        secret.KEY_ENGINE: "postgres", secret.KEY_HOST: "db.example", secret.KEY_PORT: 6432,
        secret.KEY_USERNAME: "app", secret.KEY_PASSWORD: "pw", secret.KEY_DBNAME: "app_db",
        secret.KEY_MASTERARN: "arn:aws:secretsmanager:eu-west-1:1:secret:master",
        secret.KEY_SSL: True,
    }
    parsed = DbSecret.from_dict(doc)
    assert set(parsed.extra) == {secret.KEY_MASTERARN, secret.KEY_SSL}
    assert parsed.to_dict() == doc
