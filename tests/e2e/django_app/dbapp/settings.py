"""Settings from the environment (set by tests/e2e/test_django.py):

DJAPP_MODE          ``max_age`` (CONN_MAX_AGE=DJAPP_MAX_AGE, default 2) or ``pool``
                    (OPTIONS["pool"] with max_lifetime DJAPP_MAX_AGE)
DJAPP_SECRET_ID     the secret, named in OPTIONS (else dbcreds reads DBCREDS_*)
DJAPP_HOST/_PORT/_NAME   the endpoint (the proxy): Django's HOST/PORT/NAME
DJAPP_TEST_NAME     the test runner's database name
DJAPP_USUAL         1: a second alias "usual", Django's own backend with USER/PASSWORD read
                    from the secret once, at start (the usual way)
DJAPP_POOL_TIMEOUT  the pool's timeout (default 30)
"""

import json
import os

import boto3

SECRET_KEY = "dbcreds-tests-only"  # a test project, never deployed
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
INSTALLED_APPS = ["dbapp"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

MODE = os.environ.get("DJAPP_MODE", "max_age")
MAX_AGE = float(os.environ.get("DJAPP_MAX_AGE", "2"))
POOL_TIMEOUT = float(os.environ.get("DJAPP_POOL_TIMEOUT", "30"))


def _database(engine: str, options: dict, **extra: object) -> dict:
    db = {
        "ENGINE": engine,
        "HOST": os.environ.get("DJAPP_HOST", ""),
        "PORT": os.environ.get("DJAPP_PORT", ""),
        "NAME": os.environ.get("DJAPP_NAME", ""),
        "OPTIONS": dict(options),
        "CONN_MAX_AGE": 0,
        "CONN_HEALTH_CHECKS": os.environ.get("DJAPP_HEALTH_CHECKS") == "1",
        **extra,
    }
    if os.environ.get("DJAPP_TEST_NAME"):
        db["TEST"] = {"NAME": os.environ["DJAPP_TEST_NAME"]}
    if MODE == "pool":
        db["OPTIONS"]["pool"] = {
            "min_size": 2, "max_size": 8, "max_lifetime": MAX_AGE, "timeout": POOL_TIMEOUT,
        }
    else:
        db["CONN_MAX_AGE"] = MAX_AGE
    return db


_options: dict = {}
if os.environ.get("DJAPP_SECRET_ID"):
    _options["secret_id"] = os.environ["DJAPP_SECRET_ID"]
if os.environ.get("DJAPP_ISOLATION"):
    _options["isolation_level"] = int(os.environ["DJAPP_ISOLATION"])

DATABASES = {"default": _database("dbcreds.django", _options)}

if os.environ.get("DJAPP_USUAL") == "1":
    # The usual way: the password read from the secret once, when the settings load.
    _doc = json.loads(
        boto3.client("secretsmanager").get_secret_value(
            SecretId=os.environ["DJAPP_SECRET_ID"]
        )["SecretString"]
    )
    DATABASES["usual"] = _database(
        "django.db.backends.postgresql",
        {"sslmode": "verify-full", "sslrootcert": os.environ["DBCREDS_SSLROOTCERT"]},
        USER=_doc["username"],
        PASSWORD=_doc["password"],
    )
    if MODE == "pool":  # failing logins: bounded waits (PoolTimeout) keep the run bounded
        DATABASES["usual"]["OPTIONS"]["pool"]["timeout"] = 2.0
