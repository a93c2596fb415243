"""The stack's latency model (dbcreds_testing.latency): relays that delay connection setup and
each turn, in front of the Secrets Manager endpoint and the RDS Proxy stand-in; TLS passes
through untouched (verify-full against the stack's CA still holds)."""

from __future__ import annotations

import json
import time
from typing import Any

import psycopg
import pytest

from dbcreds_testing import App, LocalStack
from dbcreds_testing.latency import LatencyModel, LatencyRelay

MODEL = LatencyModel(secrets_connect=0.080, secrets_request=0.040, proxy_connect=0.050,
                     proxy_rtt=0.020)


def _client(url: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "secretsmanager", region_name="us-east-1", endpoint_url=url,
        aws_access_key_id="testing", aws_secret_access_key="testing",
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}))


def test_secrets_manager_pays_the_handshake_and_the_request(stack: LocalStack,
                                                             app: App) -> None:
    with stack.latency(MODEL) as slow:
        client = _client(slow.secrets_url)
        t0 = time.perf_counter()
        first = client.get_secret_value(SecretId=app.secret_id)
        t1 = time.perf_counter()
        # werkzeug (moto's server) closes every connection after its answer: each request is
        # a new connection here (AWS keeps them alive; a cold start makes one request)
        assert slow.secrets_relay.connections == 1
        before = stack.secrets.count("GetSecretValue", secret_id=app.secret_id)
    assert json.loads(first["SecretString"])["username"] == app.username
    assert t1 - t0 >= MODEL.secrets_connect + MODEL.secrets_request
    assert before >= 1  # counted by the endpoint as ever: the relay only delays


def test_the_proxy_login_pays_connect_and_round_trips_with_tls_verified(
        stack: LocalStack, app: App) -> None:
    with stack.latency(MODEL) as slow:
        host, port = slow.address("rds_proxy")
        t0 = time.perf_counter()
        with psycopg.connect(host=host, port=port, dbname=stack.dbname, user=app.username,
                             password=app.password, sslmode="verify-full",
                             sslrootcert=stack.ca_file, prepare_threshold=None) as conn:
            t1 = time.perf_counter()
            assert conn.info.pgconn.ssl_in_use
            t2 = time.perf_counter()
            assert conn.execute("select 1").fetchone() == (1,)
            t3 = time.perf_counter()
        # SSLRequest, TLS handshake, startup, SCRAM: at least 4 round trips plus the connect
        assert t1 - t0 >= MODEL.proxy_connect + 4 * MODEL.proxy_rtt
        assert t3 - t2 >= MODEL.proxy_rtt
        assert slow.proxy_relay.connections == 1


def test_the_relay_does_not_weaken_verification(stack: LocalStack, app: App,
                                                tmp_path: Any) -> None:
    other_ca = tmp_path / "other-ca.pem"
    from dbcreds_testing.tls import LocalCA

    other_ca.write_text(LocalCA(tmp_path / "other").ca_file.read_text())
    with stack.latency(LatencyModel(0, 0, 0, 0)) as slow:
        host, port = slow.address("rds_proxy")
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(host=host, port=port, dbname=stack.dbname, user=app.username,
                            password=app.password, sslmode="verify-full",
                            sslrootcert=str(other_ca), connect_timeout=5)


def test_relay_closes_cleanly_and_rejects_negative_latency() -> None:
    with pytest.raises(ValueError):
        LatencyRelay(("127.0.0.1", 1), connect=-1)
    relay = LatencyRelay(("127.0.0.1", 1)).start()
    assert relay.port
    relay.close()
    relay.close()  # idempotent
