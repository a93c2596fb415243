"""SecretsManagerEndpoint: a moto server (Secrets Manager + SNS) that counts and can fail.

Real boto3 clients talk HTTP to it on a free 127.0.0.1 port. It runs moto in a child process
(see ``_motoserver.py`` for why) behind a layer that counts requests per operation and secret
and simulates outages without touching moto's stored secrets.

Only this module and ``_motoserver.py`` know the layer's ``/_dbcreds/*`` control routes; the
product (``dbcreds``) knows none of them. For the local rotation driver
(`dbcreds.rotation.local.rotate_locally`) the endpoint behaves like AWS: RotateSecret on a
secret whose rotation function is `DEFAULT_ROTATION_LAMBDA_ARN` registers the AWSPENDING
version and invokes nothing, so the driver's default registration (RotateSecret) works here.
`register_with_test_stack` registers the version without RotateSecret (and without rotation
being enabled).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, NamedTuple

from . import _motoserver, _proc

__all__ = [
    "DEFAULT_ROTATION_LAMBDA_ARN",
    "FaultKind",
    "RequestCount",
    "SecretsManagerEndpoint",
    "register_with_test_stack",
]

FaultKind = Literal["unavailable", "throttling", "internal"]
REGION = _motoserver.REGION
#: What ``enable_rotation`` records as the rotation Lambda. Nothing is ever invoked there:
#: RotateSecret only registers the AWSPENDING version (the local driver runs the steps).
DEFAULT_ROTATION_LAMBDA_ARN = _motoserver.LOCAL_ROTATION_FUNCTION
_ARN_SUFFIX = re.compile(r"-[A-Za-z0-9]{6}$")


class RequestCount(NamedTuple):
    """One row of the endpoint's request counter."""

    service: str  # "secretsmanager", "sns", ...
    operation: str  # "GetSecretValue", "Publish", ...
    secret_id: str  # as the client sent it (name or ARN); "" when the call has none
    source: str  # "client" (code under test) or "stack" (the stand-in RDS Proxy, fixtures)
    rejected: bool  # answered by a simulated fault instead of moto
    n: int


def secret_name(secret_id: str) -> str:
    """The secret name inside a (moto) Secrets Manager ARN; a name is returned as is."""
    if secret_id.startswith("arn:") and ":secret:" in secret_id:
        return _ARN_SUFFIX.sub("", secret_id.split(":secret:", 1)[1])
    return secret_id


class SecretsManagerEndpoint(_proc.Service):
    """moto (Secrets Manager, SNS, ...) over HTTP, with request counts and fault injection.

    >>> sm = SecretsManagerEndpoint(); sm.start()
    >>> with sm.outage("unavailable"):      # every secretsmanager call: HTTP 503
    ...     ...
    >>> sm.count("GetSecretValue", secret_id="app/db")   # requests by code under test
    """

    region = REGION

    def __init__(self, *, workdir: Path | None = None) -> None:
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="dbcreds-sm-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "moto.log"
        self.host = "127.0.0.1"
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"<SecretsManagerEndpoint {self.url}>"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        if self.is_running():
            return
        port_file = self.workdir / "moto.port"
        port_file.unlink(missing_ok=True)
        argv = [
            sys.executable,
            _motoserver.__file__,
            "--host",
            self.host,
            "--port-file",
            str(port_file),
        ]
        self._proc = _proc.spawn(
            argv, log_path=self.log_path, stop_signal=signal.SIGTERM, as_service_user=False
        )
        _proc.wait_until(
            port_file.exists, timeout=60, what="moto server to bind a port", abort=self._died
        )
        self.port = int(port_file.read_text(encoding="ascii"))
        _proc.wait_until(self._answers, timeout=30, what="moto server to answer", abort=self._died)

    def _died(self) -> str | None:
        if self._proc is not None and self._proc.poll() is not None:
            return f"moto server exited with {self._proc.returncode}:\n{_proc.tail(self.log_path)}"
        return None

    def _answers(self) -> bool:
        try:
            self._control("counts", None)
            return True
        except OSError:
            return False

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def pids(self) -> list[int]:
        return [self._proc.pid] if self.is_running() and self._proc else []

    def stop(self) -> None:
        """Stop the server (moto's state is lost: this is for the end of a run)."""
        _proc.terminate(self._proc, timeout=10)
        self._proc = None

    def close(self) -> None:
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- clients -----------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """Environment that points botocore (any service) at this endpoint with dummy keys."""
        return {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ENDPOINT_URL_SECRETS_MANAGER": self.url,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self, service: str = "secretsmanager", *, stack: bool = False, **config: Any) -> Any:
        """A boto3 client for ``service`` on this endpoint, independent of the process env.

        ``stack=True`` marks its requests as the stack's own (not counted by default by
        ``count``), with one attempt and short timeouts; ``config`` goes to botocore's Config.
        """
        import boto3
        from botocore.config import Config

        # botocore: "max_attempts" counts RETRIES, "total_max_attempts" counts attempts.
        settings: dict[str, Any] = {
            "retries": {"mode": "standard", "total_max_attempts": 1 if stack else 3},
            "connect_timeout": 2,
            "read_timeout": 5 if stack else 10,
        }
        if stack:
            settings["user_agent_extra"] = _motoserver.STACK_MARKER
        settings.update(config)
        return boto3.session.Session().client(
            service,  # type: ignore[call-overload]
            region_name=self.region,
            endpoint_url=self.url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",  # noqa: S106 (moto's dummy key)
            config=Config(**settings),
        )

    # -- request counts ----------------------------------------------------------------------
    def counts(self) -> list[RequestCount]:
        """Every counter row since start or the last ``reset_counts()``."""
        rows = self._control("counts", None)["counts"]
        return [RequestCount(*row) for row in rows]

    def count(
        self,
        operation: str,
        secret_id: str | None = None,
        *,
        service: str | None = None,
        source: str | None = "client",
        rejected: bool | None = None,
    ) -> int:
        """Requests for ``operation`` (e.g. "GetSecretValue", "Publish") that reached us.

        ``secret_id`` matches by secret name, whether either side used a name or an ARN.
        ``source="client"`` (default) leaves out the stack's own traffic (the stand-in RDS
        Proxy's refreshes, fixtures); ``None`` counts everything. ``rejected`` filters on whether
        a simulated fault answered (``None``: both).
        """
        want = secret_name(secret_id) if secret_id is not None else None
        total = 0
        for row in self.counts():
            if row.operation != operation:
                continue
            if service is not None and row.service != service:
                continue
            if source is not None and row.source != source:
                continue
            if rejected is not None and row.rejected != rejected:
                continue
            if want is not None and secret_name(row.secret_id) != want:
                continue
            total += row.n
        return total

    def reset_counts(self) -> None:
        self._control("reset", {})

    # -- faults ------------------------------------------------------------------------------
    def set_fault(
        self,
        kind: FaultKind | None,
        *,
        operations: Iterable[str] | None = None,
        latency: float = 0.0,
    ) -> None:
        """Answer Secrets Manager calls with a fault until ``clear_fault()``.

        ``unavailable``: HTTP 503 ``ServiceUnavailable``; ``throttling``: HTTP 400
        ``ThrottlingException``; ``internal``: HTTP 500 ``InternalServiceError``. Both
        ``unavailable`` and ``throttling`` are retried by botocore's standard mode.
        ``operations`` limits the fault to some operations; ``latency`` delays every Secrets
        Manager request (also with ``kind=None``). moto's stored state is untouched.
        """
        self._control(
            "fault",
            {
                "kind": kind,
                "operations": sorted(operations) if operations else None,
                "latency": latency,
            },
        )

    def clear_fault(self) -> None:
        self.set_fault(None)

    @contextlib.contextmanager
    def outage(
        self, kind: FaultKind = "unavailable", *, operations: Iterable[str] | None = None
    ) -> Iterator[None]:
        """While inside, Secrets Manager answers with ``kind`` (see ``set_fault``)."""
        self.set_fault(kind, operations=operations)
        try:
            yield
        finally:
            self.clear_fault()

    def throttling(
        self, *, operations: Iterable[str] | None = None
    ) -> contextlib.AbstractContextManager[None]:
        """While inside, Secrets Manager answers 400 ``ThrottlingException``."""
        return self.outage("throttling", operations=operations)

    def stub_rotation_function(self) -> str:
        """Create a do-nothing Lambda in moto (``lambda.use_docker=false``); returns its ARN.

        For code paths that call RotateSecret with a RotationLambdaARN on a plain moto server.
        """
        import io
        import secrets
        import zipfile

        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        request = urllib.request.Request(  # noqa: S310 (our own http://127.0.0.1 endpoint)
            f"{self.url}/moto-api/config",
            data=json.dumps({"lambda": {"use_docker": False}}).encode(), method="POST",
        )
        opener.open(request, timeout=10).close()
        trust = {"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
            "Action": "sts:AssumeRole"}]}
        name = f"rotation-stub-{secrets.token_hex(4)}"
        role = self.client("iam", stack=True).create_role(
            RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))
        code = io.BytesIO()
        with zipfile.ZipFile(code, "w") as z:
            z.writestr("stub.py", "def handler(event, context):\n    return None\n")
        function = self.client("lambda", stack=True).create_function(
            FunctionName=name, Runtime="python3.12", Role=role["Role"]["Arn"],
            Handler="stub.handler", Code={"ZipFile": code.getvalue()},
        )
        return str(function["FunctionArn"])

    # -- rotation metadata (no Lambda is ever invoked) ----------------------------------------
    def enable_rotation(
        self, secret_id: str, *, lambda_arn: str = DEFAULT_ROTATION_LAMBDA_ARN, days: int = 90
    ) -> None:
        """Make DescribeSecret show RotationEnabled=True, the Lambda ARN and the schedule.

        Done directly in moto's backend: moto's RotateSecret would invoke the Lambda (or, with no
        Lambda, move AWSCURRENT to a version without a value).
        """
        self._control(
            "rotation",
            {"secret_id": secret_id, "enable": True, "lambda_arn": lambda_arn, "days": days},
        )

    def register_pending(self, secret_id: str, token: str | None = None) -> str:
        """What AWS's RotateSecret does before invoking createSecret: an AWSPENDING version id
        with no value (AWSPENDING moved off any other version). Returns the token."""
        return _register_pending(self.url, secret_id, token)

    def registrar(self) -> Callable[[str, str], None]:
        """A `dbcreds.rotation.local.Registrar` for this endpoint (`register_pending`)."""
        return register_with_test_stack(self.url)

    # -- plumbing ------------------------------------------------------------------------------
    def _control(self, route: str, body: dict[str, Any] | None) -> dict[str, Any]:
        return _control(self.url, route, body)


def register_with_test_stack(endpoint_url: str) -> Callable[[str, str], None]:
    """A `dbcreds.rotation.local.Registrar` for the endpoint at ``endpoint_url``: registers the
    AWSPENDING version directly in moto's backend (no RotateSecret, nothing invoked)."""

    def register(secret_id: str, token: str) -> None:
        _register_pending(endpoint_url, secret_id, token)

    return register


def _register_pending(url: str, secret_id: str, token: str | None) -> str:
    body = {"secret_id": secret_name(secret_id), "pending": True, "token": token}
    return str(_control(url, "rotation", body)["VersionId"])


def _control(url: str, route: str, body: dict[str, Any] | None) -> dict[str, Any]:
    """One request to the layer's ``/_dbcreds/<route>`` (GET without a body, else POST)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(  # noqa: S310 (our own http://127.0.0.1 endpoint)
        f"{url.rstrip('/')}/_dbcreds/{route}", data=data, method="POST" if data else "GET",
        headers={"Content-Type": "application/json"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=10) as response:
            doc: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise RuntimeError(
            f"moto control {route}: {exc.read().decode(errors='replace')}"
        ) from exc
    return doc
