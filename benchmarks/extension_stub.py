"""A stand-in for the AWS Parameters and Secrets Lambda Extension, as its own process.

It speaks the extension's protocol (``GET /secretsmanager/get?secretId=..&versionStage=..``,
``X-Aws-Parameters-Secrets-Token`` checked) on 127.0.0.1 and, like the extension, answers from
an in-memory cache (TTL ``SECRETS_MANAGER_TTL``, default 300 s) filled by GetSecretValue calls
to Secrets Manager (here: the local stack's endpoint, through boto3 with a kept-alive client).

``GET /_reset`` empties the cache: the next request is a cold extension's (it calls Secrets
Manager first). ``GET /_stats`` returns hits and misses.

    python benchmarks/extension_stub.py --port-file FILE   (env: STUB_TOKEN, AWS_* of the stack)
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


def serve(port_file: Path, token: str, ttl: float) -> None:
    import boto3

    client = boto3.client("secretsmanager")
    cache: dict[tuple[str, str], tuple[float, bytes]] = {}
    stats = {"hits": 0, "misses": 0}
    lock = threading.Lock()

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
            if self.headers.get(TOKEN_HEADER) != token:
                return self.reply(403, b"Bad Token")
            query = dict(parse_qsl(url.query))
            if url.path != "/secretsmanager/get" or not query.get("secretId"):
                return self.reply(400, b"missing parameter secretId")
            key = (query["secretId"], query.get("versionStage", "AWSCURRENT"))
            now = time.monotonic()
            with lock:
                hit = cache.get(key)
            if hit is not None and now - hit[0] < ttl:
                with lock:
                    stats["hits"] += 1
                return self.reply(200, hit[1])
            try:
                response = client.get_secret_value(SecretId=key[0], VersionStage=key[1])
            except Exception as exc:
                code = getattr(exc, "response", {}).get("Error", {}).get("Code", "InternalFailure")
                return self.reply(400, json.dumps({"__type": code, "message": code}).encode())
            doc = {k: response[k] for k in ("ARN", "Name", "VersionId", "SecretString",
                                            "VersionStages") if k in response}
            body = json.dumps(doc).encode()
            with lock:
                stats["misses"] += 1
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
    server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port-file", type=Path, required=True)
    opts = parser.parse_args()
    serve(opts.port_file, os.environ["STUB_TOKEN"],
          float(os.environ.get("SECRETS_MANAGER_TTL", "300")))


if __name__ == "__main__":
    main()
