"""``python -m dbcreds_testing``: start the local stack, print how to reach it, wait.

Prints the environment for boto3 (dummy keys, the endpoint URL) and each server's address;
never a password. Stops everything on Ctrl-C / SIGTERM. ``--json`` prints one JSON line
(endpoints, env, pids, workdirs) for scripts and tests.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import threading
from typing import Any

from .stack import LocalStack


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dbcreds_testing", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON line, then wait")
    parser.add_argument("--app", metavar="PREFIX", help="also create a role + secret PREFIX_xxxx")
    parser.add_argument("--log-statement", action="store_true", help="log_statement=all")
    opts = parser.parse_args(argv)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    settings = {"log_statement": "all"} if opts.log_statement else None
    with LocalStack(pg_settings=settings) as stack:
        info: dict[str, Any] = {
            "endpoints": stack.endpoints(),
            "env": stack.env(),
            "pids": stack.pids(),
            "workdirs": [str(stack.workdir)]
            + [str(d) for d in [getattr(stack.postgres, "workdir", None)] if d],
            "postgres_log": str(stack.postgres.log_path or ""),
        }
        if opts.app:
            app = stack.new_app(opts.app)
            info["app"] = {"secret_id": app.secret_id, "arn": app.arn, "username": app.username}
        if opts.json:
            print(json.dumps(info), flush=True)
        else:
            for key, value in info["env"].items():
                print(f"export {key}={shlex.quote(value)}")
            for name, where in info["endpoints"].items():
                print(f"# {name}: {json.dumps(where)}")
            if "app" in info:
                print(f"export DBCREDS_SECRET_ID={shlex.quote(info['app']['secret_id'])}")
            print("# stack is up; Ctrl-C stops it", flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
