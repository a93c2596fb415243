"""The local "real stack" for tests, the demo and benchmarks.

- `PostgresServer`: PostgreSQL 15 with scram-sha-256 everywhere (``DBCREDS_TEST_DSN``, Docker via
  testcontainers, or the machine's binaries in a temp dir).
- `PgBouncer`: ``mode="auth_query"`` (checks the live database) or ``mode="auth_file"`` (the
  RDS Proxy stand-in: serves each watched secret's AWSCURRENT, refreshed every second).
- `SecretsManagerEndpoint`: moto over HTTP (Secrets Manager, SNS) that counts requests and can
  simulate outages.
- `LocalStack`: all of the above, plus role and secret helpers.

Importing this package imports only the standard library; psycopg, boto3 and moto are
imported when used. Run ``python -m dbcreds_testing`` for a stack to play with.
"""

from __future__ import annotations

from ._proc import wait_until
from .endpoint import DEFAULT_ROTATION_LAMBDA_ARN, FaultKind, RequestCount, SecretsManagerEndpoint
from .pgbouncer import ADMIN_USER, AUTH_USER, PgBouncer
from .postgres import (
    DockerPostgres,
    ExternalPostgres,
    LocalPostgres,
    PostgresServer,
    docker_available,
)
from .stack import App, LocalStack, Via

__all__ = [
    "ADMIN_USER",
    "AUTH_USER",
    "DEFAULT_ROTATION_LAMBDA_ARN",
    "App",
    "DockerPostgres",
    "ExternalPostgres",
    "FaultKind",
    "LocalPostgres",
    "LocalStack",
    "PgBouncer",
    "PostgresServer",
    "RequestCount",
    "SecretsManagerEndpoint",
    "Via",
    "docker_available",
    "wait_until",
]
