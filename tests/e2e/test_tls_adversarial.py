"""Adversarial servers: with dbcreds' defaults, nothing secret reaches a server it cannot verify.

Two fake PostgreSQL servers record every byte they receive (after TLS, the decrypted bytes):

* ``plaintext``: declines TLS (answers ``N`` to the SSLRequest) and asks for a cleartext
  password, as a server in the middle that wants the password would;
* ``self_signed``: accepts TLS with a self-signed certificate (a CA nobody configured), asks
  for a cleartext password and accepts anything.

Against both, the SDK (sync and asyncio pools, the default pool of ``get_connection``), the IAM
source, ``dbcreds check`` and every rotation step must send no password and no token, and fail
with an error that says what to configure. The real stack provides Secrets Manager (the
secrets' values are what must not leak).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import socket
import ssl
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import trustme

from dbcreds import (
    AsyncCredentialPool,
    CredentialPool,
    IamAuthSource,
    SecretProvider,
    UntrustedServer,
)
from dbcreds.cli import main as cli_main
from dbcreds.rotation import RotationError, run_step

_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104


class FakeServer:
    """A PostgreSQL impostor on 127.0.0.1 that records what clients send it."""

    def __init__(self, kind: str) -> None:
        assert kind in ("plaintext", "self_signed")
        self.kind = kind
        self.received = bytearray()
        self.connections = 0
        self._lock = threading.Lock()
        self._tls: ssl.SSLContext | None = None
        if kind == "self_signed":
            ca = trustme.CA()  # its certificate is given to no client
            self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ca.issue_cert("127.0.0.1", "localhost").configure_cert(self._tls)
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.host, self.port = "127.0.0.1", self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"fake-{kind}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def saw(self, *secrets: str) -> list[str]:
        """Which of *secrets* (non-empty) appear in what the server received."""
        with self._lock:
            data = bytes(self.received)
        return [s for s in secrets if s and s.encode() in data]

    # -- the protocol -----------------------------------------------------------------------
    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _read(self, sock: Any, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("client went away")
            with self._lock:
                self.received += chunk
            data += chunk
        return data

    def _handle(self, sock: Any) -> None:
        sock.settimeout(10)
        with contextlib.suppress(OSError, ConnectionError, ssl.SSLError):
            try:
                while True:  # SSLRequest / GSSENCRequest, then the StartupMessage
                    (length,) = struct.unpack("!i", self._read(sock, 4))
                    body = self._read(sock, length - 4)
                    (code,) = struct.unpack("!i", body[:4])
                    if code == _GSSENC_REQUEST:
                        sock.sendall(b"N")
                        continue
                    if code == _SSL_REQUEST:
                        if self._tls is None:
                            sock.sendall(b"N")
                            continue
                        sock.sendall(b"S")
                        sock = self._tls.wrap_socket(sock, server_side=True)
                        continue
                    break  # the StartupMessage
                sock.sendall(b"R" + struct.pack("!ii", 8, 3))  # AuthenticationCleartextPassword
                kind = self._read(sock, 1)
                (length,) = struct.unpack("!i", self._read(sock, 4))
                self._read(sock, length - 4)
                if kind == b"p":  # "accepts anything": AuthenticationOk, ReadyForQuery
                    sock.sendall(b"R" + struct.pack("!ii", 8, 0) + b"Z" + struct.pack("!i", 5)
                                 + b"I")
                    while self._read(sock, 1):
                        pass
            finally:
                sock.close()


@pytest.fixture(params=["plaintext", "self_signed"])
def impostor(request: pytest.FixtureRequest) -> Iterator[FakeServer]:
    server = FakeServer(request.param)
    yield server
    server.close()


@pytest.fixture
def defaults(aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """No TLS setting at all, as a new user has: the stack's endpoint for Secrets Manager only."""
    for name in ("DBCREDS_SSLMODE", "DBCREDS_SSLROOTCERT", "DBCREDS_ROTATION_SSLMODE",
                 "DBCREDS_ROTATION_SSLROOTCERT", "PGSSLROOTCERT", "PGSSLMODE"):
        monkeypatch.delenv(name, raising=False)


def refused(pool: CredentialPool) -> tuple[UntrustedServer, float]:
    """The error a caller of *pool* gets (the pool is closed after), and when it asked."""
    started = time.monotonic()
    try:
        with pytest.raises(UntrustedServer) as info, pool.connection():
            pass
    finally:
        pool.close()
    return info.value, started


def _fails_fast_with_what_to_configure(exc: BaseException, started: float) -> None:
    assert isinstance(exc, UntrustedServer), repr(exc)
    text = str(exc)
    assert ("DBCREDS_SSLROOTCERT" in text) or ("does not offer TLS" in text), text
    assert time.monotonic() - started < 5.0, "told at once, not after a pool timeout"


# -- the SDK --------------------------------------------------------------------------------

@pytest.mark.parametrize("sslmode", [None, "require", "verify-ca"])
def test_sync_pool_sends_nothing_secret(
    impostor: FakeServer, stack: Any, app: Any, defaults: None, sslmode: str | None
) -> None:
    """The default (verify-full), ``require`` (SCRAM channel binding) and ``verify-ca`` (with
    a CA bundle of its own: the stack's, which did not sign the impostor's certificate)."""
    pool = CredentialPool(SecretProvider(app.secret_id), open=True, host=impostor.host,
                          port=impostor.port, sslmode=sslmode, min_size=1, max_size=1,
                          timeout=20,
                          sslrootcert=stack.ca_file if sslmode == "verify-ca" else None)
    error, started = refused(pool)
    _fails_fast_with_what_to_configure(error, started)
    assert impostor.connections >= 1  # it was asked, and told nothing
    assert impostor.saw(app.password) == []
    assert app.password not in str(error) + repr(error)


def test_default_pool_of_get_connection_sends_nothing_secret(
    impostor: FakeServer, app: Any, defaults: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dbcreds

    monkeypatch.setenv("DBCREDS_SECRET_ID", app.secret_id)
    monkeypatch.setenv("DBCREDS_HOST", impostor.host)
    monkeypatch.setenv("DBCREDS_PORT", str(impostor.port))
    started = time.monotonic()
    try:
        with pytest.raises(UntrustedServer) as info, dbcreds.get_connection(timeout=20):
            pass
    finally:
        dbcreds.close_default_pool()
    _fails_fast_with_what_to_configure(info.value, started)
    assert impostor.saw(app.password) == []


def test_async_pool_sends_nothing_secret(
    impostor: FakeServer, app: Any, defaults: None
) -> None:
    async def scenario() -> BaseException:
        async with AsyncCredentialPool(SecretProvider(app.secret_id), host=impostor.host,
                                       port=impostor.port, min_size=1, max_size=1,
                                       timeout=20) as pool:
            with pytest.raises(UntrustedServer) as info:
                async with pool.connection():
                    pass
            return info.value

    started = time.monotonic()
    error = asyncio.run(asyncio.wait_for(scenario(), 30))
    _fails_fast_with_what_to_configure(error, started)
    assert impostor.saw(app.password) == []


def test_iam_source_sends_no_token(
    impostor: FakeServer, aws_env: dict[str, str], defaults: None
) -> None:
    source = IamAuthSource(impostor.host, impostor.port, "app_user", region="eu-west-1")
    token = source.get().password
    assert token.startswith(f"{impostor.host}:{impostor.port}/")
    pool = CredentialPool(source, open=True, min_size=1, max_size=1, timeout=20)
    _fails_fast_with_what_to_configure(*refused(pool))
    sent = [source.get().password, token]
    assert impostor.saw(*sent) == [] and impostor.saw("X-Amz-Signature") == []


def test_dbcreds_check_sends_nothing_secret(
    impostor: FakeServer, app: Any, defaults: None
) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = cli_main(["check", app.secret_id, "--host", impostor.host, "--port",
                     str(impostor.port), "--timeout", "5"], out=out, err=err)
    assert code == 1
    text = err.getvalue()
    assert "was not sent" in text and ("--sslrootcert" in text or "DBCREDS_SSLROOTCERT" in text
                                       or "does not offer TLS" in text), text
    assert impostor.saw(app.password) == []
    assert app.password not in out.getvalue() + text


# -- the rotation ---------------------------------------------------------------------------

@pytest.mark.parametrize("ca", ["no CA", "the stack's CA"])
def test_no_rotation_step_sends_a_password(
    impostor: FakeServer, stack: Any, defaults: None, monkeypatch: pytest.MonkeyPatch, ca: str
) -> None:
    """A secret that points at the impostor: createSecret works (no database), every step that
    logs in sends nothing secret, and AWSCURRENT is not moved."""
    if ca != "no CA":
        monkeypatch.setenv("DBCREDS_ROTATION_SSLROOTCERT", stack.ca_file)
    password = "Current-" + uuid.uuid4().hex
    name = f"dbcreds-test/impostor-{uuid.uuid4().hex[:8]}"
    arn = stack.create_secret(name, {"engine": "postgres", "host": impostor.host,
                                     "port": impostor.port, "username": "victim",
                                     "password": password, "dbname": "app"})
    stack.enable_rotation(name)
    token = str(uuid.uuid4())
    from dbcreds_testing.endpoint import register_with_test_stack

    register_with_test_stack(stack.secrets.url)(name, token)
    sm = stack.sm()
    event = {"SecretId": arn, "ClientRequestToken": token}
    run_step({**event, "Step": "createSecret"}, client=sm)
    pending = json.loads(sm.get_secret_value(SecretId=name, VersionStage="AWSPENDING")
                         ["SecretString"])["password"]
    errors = []
    for step in ("setSecret", "testSecret", "finishSecret"):
        with pytest.raises(RotationError) as info:
            run_step({**event, "Step": step}, client=sm)
        errors.append(str(info.value))
    assert impostor.connections >= 1
    assert impostor.saw(password, pending) == []
    assert not [e for e in errors if password in e or pending in e]
    what = "DBCREDS_ROTATION_SSLROOTCERT" if ca != "no CA" else "SCRAM"
    assert what in errors[0] or "does not offer TLS" in errors[0], errors[0]
    stages = sm.describe_secret(SecretId=name)["VersionIdsToStages"]
    assert "AWSCURRENT" not in stages[token]
