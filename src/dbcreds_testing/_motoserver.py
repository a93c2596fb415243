"""Child process: moto's server app behind a thin WSGI layer that counts and breaks requests.

Run by path (``python _motoserver.py --port-file F``): it needs moto and werkzeug, not dbcreds.
It runs in its own process so that the test process's ``mock_aws`` (which resets moto's
in-process backends and patches botocore) can neither wipe nor intercept the stack's state, and
so that a benchmark's threads do not share a GIL with the endpoint.

The layer in front of moto:

- counts every request by (service, operation, SecretId, source, rejected). The operation is
  the ``X-Amz-Target`` suffix for JSON protocols (``secretsmanager.GetSecretValue``) and the
  ``Action`` parameter for query protocols (SNS ``Publish``); ``source`` is ``stack`` when the
  User-Agent carries the stack's marker (the stand-in RDS Proxy, fixtures), else ``client``;
- answers every Secrets Manager request with an error while a fault is set (moto's stored state
  is untouched), optionally only for some operations, and can add latency;
- offers ``/_dbcreds/*`` control routes: ``GET counts``, ``POST reset``, ``POST fault``,
  ``POST rotation`` (mark rotation enabled / register an AWSPENDING version without invoking
  any Lambda), ``POST shutdown``;
- answers Secrets Manager's RotateSecret itself for a secret whose rotation function is
  ``LOCAL_ROTATION_FUNCTION``: like AWS, it registers the AWSPENDING version (no value) and
  returns; unlike AWS it invokes nothing, the local rotation driver runs the steps. (moto would
  look the function up in its Lambda backend and fail.) Other RotateSecret calls go to moto.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

STACK_MARKER = "dbcreds-testing-stack"
ACCOUNT_ID = "123456789012"
REGION = "us-east-1"
#: the rotation function of the stack's secrets: no such Lambda, RotateSecret invokes nothing
LOCAL_ROTATION_FUNCTION = f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:dbcreds-rotation"

#: fault kind -> (HTTP status, AWS error code)
FAULTS: dict[str, tuple[int, str]] = {
    "unavailable": (503, "ServiceUnavailable"),
    "throttling": (400, "ThrottlingException"),
    "internal": (500, "InternalServiceError"),
}
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/([^/]+)/([^/]+)/aws4_request")

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class Layer:
    def __init__(self, inner: WsgiApp) -> None:
        self.inner = inner
        self.lock = threading.Lock()
        self.counts: Counter[tuple[str, str, str, str, bool]] = Counter()
        self.fault: str | None = None
        self.fault_operations: frozenset[str] | None = None
        self.latency = 0.0
        self.shutdown: Callable[[], None] = lambda: None

    # -- WSGI ------------------------------------------------------------------------------
    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith("/_dbcreds/"):
            return self.control(path[len("/_dbcreds/") :], environ, start_response)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        service, operation, secret_id = _identify(environ, body)
        source = "stack" if STACK_MARKER in environ.get("HTTP_USER_AGENT", "") else "client"
        with self.lock:
            fault, ops, latency = self.fault, self.fault_operations, self.latency
            rejected = (
                fault is not None
                and service == "secretsmanager"
                and (ops is None or operation in ops)
            )
            self.counts[(service, operation, secret_id, source, rejected)] += 1
        if latency and service == "secretsmanager":
            time.sleep(latency)
        if rejected:
            assert fault is not None
            status, code = FAULTS[fault]
            return _json(
                start_response,
                status,
                {
                    "__type": code,
                    "message": f"{code}: simulated by dbcreds_testing for {operation}",
                },
            )
        if service == "secretsmanager" and operation == "RotateSecret":
            answer = _rotate_secret(environ, body)
            if answer is not None:
                return _json(start_response, 200, answer)
        return self.inner(environ, start_response)

    # -- control routes ----------------------------------------------------------------------
    def control(
        self, route: str, environ: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        raw = environ["wsgi.input"].read(length) if length else b""
        args: dict[str, Any] = json.loads(raw) if raw else {}
        try:
            if route == "counts":
                with self.lock:
                    rows = [[*key, n] for key, n in self.counts.items()]
                return _json(start_response, 200, {"counts": rows})
            if route == "reset":
                with self.lock:
                    self.counts.clear()
                return _json(start_response, 200, {})
            if route == "fault":
                kind = args.get("kind")
                if kind is not None and kind not in FAULTS:
                    return _json(start_response, 400, {"error": f"unknown fault {kind!r}"})
                ops = args.get("operations")
                with self.lock:
                    self.fault = kind
                    self.fault_operations = frozenset(ops) if ops else None
                    self.latency = float(args.get("latency") or 0.0)
                return _json(start_response, 200, {})
            if route == "rotation":
                return _json(start_response, 200, _rotation(args))
            if route == "shutdown":
                threading.Thread(target=self.shutdown, daemon=True).start()
                return _json(start_response, 200, {})
        except KeyError as exc:
            return _json(start_response, 404, {"error": f"not found: {exc}"})
        return _json(start_response, 404, {"error": f"no route {route!r}"})


def _identify(environ: dict[str, Any], body: bytes) -> tuple[str, str, str]:
    """(service, operation, SecretId or "") of an AWS request."""
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    if target:
        prefix, _, operation = target.partition(".")
        service = prefix.lower()
        secret_id = ""
        try:
            doc = json.loads(body or b"{}")
            if isinstance(doc, dict):
                secret_id = str(doc.get("SecretId") or doc.get("Name") or "")
        except ValueError:
            pass
        return service, operation, secret_id
    params = parse_qs(environ.get("QUERY_STRING", ""))
    if body and "x-www-form-urlencoded" in environ.get("CONTENT_TYPE", ""):
        params.update(parse_qs(body.decode("utf-8", "replace")))
    match = _SCOPE.search(environ.get("HTTP_AUTHORIZATION", ""))
    service = match.group(2) if match else ""
    operation = params.get("Action", [""])[0]
    return service, operation, ""


def _rotate_secret(environ: dict[str, Any], body: bytes) -> dict[str, Any] | None:
    """RotateSecret for a secret rotated by ``LOCAL_ROTATION_FUNCTION`` (None: moto's turn)."""
    from moto.secretsmanager.models import secretsmanager_backends

    try:
        doc = json.loads(body or b"{}")
    except ValueError:
        return None
    match = _SCOPE.search(environ.get("HTTP_AUTHORIZATION", ""))
    region = match.group(1) if match else REGION
    secret_id = str(doc.get("SecretId") or "")
    secret: Any = secretsmanager_backends[ACCOUNT_ID][region].secrets.get(secret_id)
    if secret is None:
        return None  # moto answers ResourceNotFoundException
    function = doc.get("RotationLambdaARN") or secret.rotation_lambda_arn
    if function != LOCAL_ROTATION_FUNCTION:
        return None
    out = _rotation({"secret_id": secret.name, "region": region, "pending": True,
                     "token": doc.get("ClientRequestToken")})
    secret.rotation_lambda_arn = function
    return out


def _rotation(args: dict[str, Any]) -> dict[str, Any]:
    """Set rotation metadata on a secret directly in moto's backend (no Lambda is invoked).

    moto's RotateSecret either invokes the Lambda (which needs it registered in moto and,
    by default, Docker) or, without a Lambda ARN, makes a version AWSCURRENT at once. A local
    rotation driver needs neither: it needs DescribeSecret to say RotationEnabled and, like
    AWS's RotateSecret, an AWSPENDING version id with no value before createSecret runs.
    """
    from moto.secretsmanager.models import secretsmanager_backends

    backend = secretsmanager_backends[ACCOUNT_ID][args.get("region") or REGION]
    secret: Any = backend.secrets[args["secret_id"]]
    out: dict[str, Any] = {"ARN": secret.arn, "Name": secret.name}
    if args.get("enable"):
        days = int(args.get("days") or 90)
        secret.rotation_requested = True
        secret.rotation_enabled = True
        secret.rotation_lambda_arn = args.get("lambda_arn") or ""
        secret.auto_rotate_after_days = days
        secret.next_rotation_date = int(time.time()) + days * 86400
    if args.get("pending"):
        token = args.get("token") or str(uuid.uuid4())
        secret.remove_version_stages_from_old_versions(["AWSPENDING"])
        secret.versions[token] = {
            "createdate": int(time.time()),
            "version_id": token,
            "version_stages": ["AWSPENDING"],
        }
        secret.rotation_requested = True
        secret.last_rotation_date = int(time.time())
        out["VersionId"] = token
    return out


def _json(start_response: StartResponse, status: int, doc: dict[str, Any]) -> list[bytes]:
    data = json.dumps(doc).encode()
    start_response(
        f"{status} {_REASONS.get(status, 'Error')}",
        [
            ("Content-Type", "application/x-amz-json-1.1"),
            ("Content-Length", str(len(data))),
            ("x-amzn-RequestId", str(uuid.uuid4())),
        ],
    )
    return [data]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", required=True)
    opts = parser.parse_args()

    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    layer = Layer(DomainDispatcherApplication(create_backend_app))
    server = make_server(
        opts.host, opts.port, layer, threaded=True, request_handler=MotoRequestHandler
    )
    layer.shutdown = server.shutdown
    tmp = opts.port_file + ".tmp"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(str(server.server_address[1]))
    os.replace(tmp, opts.port_file)  # the parent polls for this file
    server.serve_forever()


if __name__ == "__main__":
    main()
