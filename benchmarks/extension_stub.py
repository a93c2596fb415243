"""A stand-in for the AWS Parameters and Secrets Lambda Extension or the AWS Secrets Manager
Agent, as its own process.

It speaks their protocol (``GET /secretsmanager/get?secretId=..&versionStage=..``,
``X-Aws-Parameters-Secrets-Token`` checked) on 127.0.0.1 and, like them, answers from an
in-memory cache (TTL ``SECRETS_MANAGER_TTL``, default 300 s) filled by GetSecretValue calls to
Secrets Manager (here: the local stack's endpoint, through boto3 with a kept-alive client).

``--mode`` is which of the two it plays:

* ``extension`` (default): the Lambda extension, closed source; AWS's pages on it show
  ``secretId`` and the version parameters only. Anything else in the query is ignored,
  ``refreshNow`` included: a request asking for a fresh value gets the cached one (what the
  extension does with the parameter is not documented; this is the case a client must not be
  fooled by).
* ``agent``: the Secrets Manager Agent 1.1.0+ (aws/aws-secretsmanager-agent,
  ``aws_secretsmanager_agent/src/parse.rs``, ``aws_secretsmanager_caching/src/lib.rs``): the
  query is parsed strictly (400 "unknown parameter: NAME" for any other parameter, 400
  "invalid refreshNow value" for a ``refreshNow`` other than true/false/1/0 in any case);
  ``refreshNow=true`` calls GetSecretValue whatever is cached, caches the answer (an error is
  not cached) and returns it; ``GET /ping`` answers "healthy". (The real Agent revalidates an
  expired entry with DescribeSecret first; the stub simply refetches.)

The port is written to ``--port-file`` and printed on stdout once the server listens.
``GET /_reset`` empties the cache: the next request is a cold extension's (it calls Secrets
Manager first). ``GET /_stats`` returns ``hits``, ``misses`` (cache misses and expiries),
``refreshes`` (refreshNow=true requests) and ``secretsmanager_calls`` (every GetSecretValue the
stub made, failed ones included).

    python benchmarks/extension_stub.py --port-file FILE [--mode extension|agent]
    (env: STUB_TOKEN, AWS_* of the stack; STUB_USER_AGENT_EXTRA is appended to the stub's
    boto3 User-Agent, e.g. to tell its Secrets Manager calls from the application's)
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

TOKEN_HEADER = "X-Aws-Parameters-Secrets-Token"
MODES = ("extension", "agent")
_AGENT_PARAMETERS = ("secretId", "versionId", "versionStage", "refreshNow")
_REFRESH_VALUES = {"true": True, "1": True, "false": False, "0": False}


def serve(port_file: Path, token: str, ttl: float, mode: str = "extension",
          user_agent_extra: str | None = None) -> None:
    import boto3
    from botocore.config import Config

    config = Config(user_agent_extra=user_agent_extra) if user_agent_extra else None
    client = boto3.client("secretsmanager", config=config)
    cache: dict[tuple[str, str], tuple[float, bytes]] = {}
    stats = {"hits": 0, "misses": 0, "refreshes": 0, "secretsmanager_calls": 0}
    lock = threading.Lock()

    def parse_agent_query(query: str) -> tuple[dict[str, str], bool] | bytes:
        """The Agent's strict parsing: (parameters, refreshNow) or the 400 body."""
        params: dict[str, str] = {}
        refresh = False
        for name, value in parse_qsl(query, keep_blank_values=True):
            if name not in _AGENT_PARAMETERS:
                return f"unknown parameter: {name}".encode()
            if name == "refreshNow":
                parsed = _REFRESH_VALUES.get(value.lower())
                if parsed is None:
                    return b"invalid refreshNow value"
                refresh = parsed
            else:
                params[name] = value
        return params, refresh

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path == "/_reset":
                with lock:
                    cache.clear()
                return self.reply(200, b"{}")
            if url.path == "/_stats":
                with lock:
                    return self.reply(200, json.dumps(stats).encode())
            if mode == "agent" and url.path == "/ping":
                return self.reply(200, b"healthy")
            if self.headers.get(TOKEN_HEADER) != token:
                return self.reply(403, b"Bad Token")
            refresh = False
            if mode == "agent":
                parsed = parse_agent_query(url.query)
                if isinstance(parsed, bytes):
                    return self.reply(400, parsed)
                query, refresh = parsed
            else:
                query = dict(parse_qsl(url.query))
            if url.path != "/secretsmanager/get" or not query.get("secretId"):
                return self.reply(400, b"missing parameter secretId")
            key = (query["secretId"], query.get("versionStage", "AWSCURRENT"))
            now = time.monotonic()
            with lock:
                hit = None if refresh else cache.get(key)
            if hit is not None and now - hit[0] < ttl:
                with lock:
                    stats["hits"] += 1
                return self.reply(200, hit[1])
            with lock:
                stats["refreshes" if refresh else "misses"] += 1
                stats["secretsmanager_calls"] += 1
            try:
                response = client.get_secret_value(SecretId=key[0], VersionStage=key[1])
            except Exception as exc:
                code = getattr(exc, "response", {}).get("Error", {}).get("Code", "InternalFailure")
                return self.reply(400, json.dumps({"__type": code, "message": code}).encode())
            doc: dict[str, Any] = {k: response[k] for k in (
                "ARN", "Name", "VersionId", "SecretString", "VersionStages") if k in response}
            if mode == "agent" and "CreatedDate" in response:  # the Agent's: a string
                doc["CreatedDate"] = f"{response['CreatedDate'].timestamp():.3f}"
            body = json.dumps(doc).encode()
            with lock:
                cache[key] = (now, body)
            return self.reply(200, body)

        def reply(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    tmp = port_file.with_suffix(".tmp")
    tmp.write_text(str(server.server_address[1]))
    tmp.replace(port_file)
    print(server.server_address[1], flush=True)  # for a parent that reads a pipe instead
    server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port-file", type=Path, required=True)
    parser.add_argument("--mode", choices=MODES, default="extension")
    opts = parser.parse_args()
    serve(opts.port_file, os.environ["STUB_TOKEN"],
          float(os.environ.get("SECRETS_MANAGER_TTL", "300")), opts.mode,
          os.environ.get("STUB_USER_AGENT_EXTRA") or None)


if __name__ == "__main__":
    main()
