"""Rotation under load: failed requests and the worst request, dbcreds and its peers' usual way.

For each library and each proxy behaviour: 8 threads loop ``SELECT 1`` through a
``psycopg_pool`` pool (min 4, max 8, connections recycled every 2 s so that new logins happen
all the time, 5 s wait at most for a connection: a request that waits longer has failed)
while the real rotation handler rotates the password twice through the local driver.

* dbcreds: ``CredentialPool(SecretProvider(secret))``.
* the seed story's code: the secret fetched with boto3 when the application starts, the
  credentials static from then on.
* aws-secretsmanager-caching: the pool's ``kwargs`` callable (called for every new
  connection) reads ``SecretCache.get_secret_string`` (default refresh: 1 h).
* Powertools: the ``kwargs`` callable reads ``parameters.get_secret`` (default max_age 5 s),
  with ``VersionStage="AWSCURRENT"`` (moto 5.2 needs it after a rotation; AWS does not).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from _common import tls_env

PROXIES = {"pgbouncer (checks the live database)": "pgbouncer",
           "RDS-Proxy-like (serves AWSCURRENT, re-read ~1/s)": "rds_proxy"}
LIBRARIES = ("dbcreds", "seed (boto3 at start)", "aws-secretsmanager-caching",
             "Powertools get_secret")
POOL: dict[str, Any] = {"min_size": 4, "max_size": 8, "max_lifetime": 2.0, "timeout": 5.0}


def _creds(doc: dict[str, Any], host: str, port: int) -> dict[str, Any]:
    return {"host": host, "port": port, "dbname": doc["dbname"], "user": doc["username"],
            "password": doc["password"], "prepare_threshold": None}


def _pool(library: str, secret_id: str, host: str, port: int) -> Any:
    """The pool *library*'s users would build."""
    from psycopg_pool import ConnectionPool

    from dbcreds import CredentialPool, SecretProvider

    check = ConnectionPool.check_connection
    if library == "dbcreds":
        provider = SecretProvider(secret_id)
        pool = CredentialPool(provider, open=True, host=host, port=port, check=check, **POOL)
        return pool
    if library == "seed (boto3 at start)":
        import boto3

        response = boto3.client("secretsmanager").get_secret_value(SecretId=secret_id)
        static = _creds(json.loads(response["SecretString"]), host, port)
        return ConnectionPool(kwargs=static, check=check, **POOL)
    if library == "aws-secretsmanager-caching":
        import boto3
        from aws_secretsmanager_caching import (  # type: ignore[import-untyped]
            SecretCache,
            SecretCacheConfig,
        )

        cache = SecretCache(config=SecretCacheConfig(), client=boto3.client("secretsmanager"))

        def cached() -> dict[str, Any]:
            return _creds(json.loads(cache.get_secret_string(secret_id)), host, port)

        return ConnectionPool(kwargs=cached, check=check, **POOL)
    from aws_lambda_powertools.utilities import parameters

    def powertools() -> dict[str, Any]:
        doc = parameters.get_secret(secret_id, transform="json", VersionStage="AWSCURRENT")
        return _creds(doc, host, port)

    return ConnectionPool(kwargs=powertools, check=check, **POOL)


def rotation_under_load(stack: Any, *, rotations: int = 2, threads: int = 8,
                        pause: float = 0.5, tail: float = 8.0) -> dict[str, Any]:
    from dbcreds.rotation.local import rotate_locally
    from dbcreds_testing.workload import Workload

    os.environ.update(stack.env())
    os.environ.update(tls_env(stack))  # verify-full for dbcreds, the peers and the rotation
    rotation_client = stack.secrets.client("secretsmanager", stack=True)
    results: dict[str, dict[str, Any]] = {}
    for proxy_name, via in PROXIES.items():
        host, port = stack.address(via)
        for library in LIBRARIES:
            app = stack.new_app("bench_rot")
            stack.enable_rotation(app.secret_id)
            before = stack.secrets.count("GetSecretValue", secret_id=app.secret_id)
            pool = _pool(library, app.secret_id, host, port)

            def source(pool: Any = pool) -> Any:
                return pool.connection(timeout=POOL["timeout"])

            try:
                pool.wait(timeout=15)
                with Workload(source, threads=threads) as workload:
                    workload.wait_for_requests(50)
                    for _ in range(rotations):
                        rotate_locally(app.secret_id, client=rotation_client, pause=pause,
                                       between_steps=lambda r: workload.mark(r.step.value))
                    time.sleep(tail)  # the scenario: serving after the rotations
                    report = workload.stop()
            finally:
                pool.close(timeout=2)
                stack.rds_proxy.unwatch(app.secret_id)
            summary = report.summary()
            end = report.duration - 2.0  # still serving at the end, or not?
            served_last = sum(1 for r in report.requests if r.start >= end and r.error is None)
            results[f"{proxy_name} | {library}"] = {
                "proxy": proxy_name, "library": library,
                "requests": summary["requests"], "failed": summary["failed"],
                "max_ms": summary["max_ms"], "p99_ms": summary["p99_ms"],
                "served_last_2s": served_last,
                "errors": summary["errors"][:2],
                "GetSecretValue": stack.secrets.count("GetSecretValue",
                                                      secret_id=app.secret_id) - before,
            }
    return {"rotations": rotations, "threads": threads, "pause": pause, "tail": tail,
            "pool": POOL, "cases": results}
