"""The ``dbcreds`` command.

``dbcreds check SECRET``
    fetch the secret (AWSCURRENT, or ``--stage``) and try to log in with it; prints OK or why
    not, never a secret value. ``--host/--port/--dbname`` log in elsewhere (e.g. through the
    RDS Proxy endpoint).
``dbcreds rotate SECRET``
    start a rotation on AWS (RotateSecret: Secrets Manager invokes the rotation function).
``dbcreds rotate SECRET --local [--pause S] [--stop-after STEP] [--token T]``
    run the four steps in this process against the configured endpoint, as Secrets Manager
    would (see ``dbcreds.rotation.local``).
``dbcreds demo [--duration S] [--threads N] [--rotations R] [--proxy rds-proxy|pgbouncer]``
    rotation under load on a local stack, end to end (``make demo``). The demo and its local
    stack live in ``dbcreds_testing``, which only a checkout of the repository has (no wheel
    ships it); they also need the ``demo`` extra, PostgreSQL's server binaries and PgBouncer.

Region, endpoint and credentials come from botocore's own settings (``AWS_REGION``,
``AWS_ENDPOINT_URL_SECRETS_MANAGER``, ...). Exit status: 0 success, 1 failure, 2 usage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from .secret import AWSCURRENT, STAGES  # stdlib only: cheap

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dbcreds",
        description="PostgreSQL credentials in AWS Secrets Manager: check and rotate them.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    check = sub.add_parser("check", help="fetch a secret and try to log in with it")
    check.add_argument("secret", metavar="SECRET", help="secret name or ARN")
    check.add_argument("--stage", choices=STAGES, default=AWSCURRENT,
                       help="which version to check (default AWSCURRENT)")
    check.add_argument("--host", help="log in to this host instead of the secret's "
                       "(e.g. the RDS Proxy endpoint)")
    check.add_argument("--port", type=int, help="... and this port")
    check.add_argument("--dbname", help="... and this database")
    from .tls import SSLMODES  # stdlib only: cheap

    check.add_argument("--sslmode", choices=SSLMODES,
                       help="TLS: default DBCREDS_SSLMODE, else verify-full (see dbcreds.tls)")
    check.add_argument("--sslrootcert", metavar="PEM",
                       help="CA bundle of the server (default DBCREDS_SSLROOTCERT, else the "
                       "system trust store: right for RDS Proxy; a database endpoint needs the "
                       "RDS CA bundle)")
    check.add_argument("--timeout", type=float, default=5.0, help="connect timeout in seconds")

    rotate = sub.add_parser("rotate", help="rotate a secret (on AWS, or --local)")
    rotate.add_argument("secret", metavar="SECRET", help="secret name or ARN")
    rotate.add_argument("--local", action="store_true",
                        help="run the four steps in this process instead of asking AWS")
    rotate.add_argument("--pause", type=float, default=0.0, metavar="S",
                        help="--local: seconds to wait between steps")
    rotate.add_argument("--stop-after", metavar="STEP",
                        choices=["createSecret", "setSecret", "testSecret", "finishSecret",
                                 "create", "set", "test", "finish"],
                        help="--local: stop after this step (simulates a crash)")
    rotate.add_argument("--token", help="ClientRequestToken (--local: resume a stopped rotation)")

    # The demo's own parser (dbcreds_testing.demo) reads its options, --help included: the
    # other commands never import dbcreds_testing, which a plain install does not have.
    sub.add_parser("demo", add_help=False,
                   help="rotation under load on a local stack, end to end (make demo)")
    return parser


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None,
         err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        return _demo(rest, out, err)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "check":
        return _check(args, out, err)
    if args.command == "rotate":
        if not args.local and (args.pause or args.stop_after):
            print("dbcreds rotate: --pause and --stop-after need --local", file=err)
            return 2
        return _rotate_local(args, out, err) if args.local else _rotate_aws(args, out, err)
    raise AssertionError(args.command)  # pragma: no cover - argparse allows no other


# -- demo ----------------------------------------------------------------------------------------

def _demo(argv: list[str], out: TextIO, err: TextIO) -> int:
    try:
        from dbcreds_testing import demo
    except ModuleNotFoundError as exc:
        if exc.name != "dbcreds_testing":
            raise
        print("dbcreds demo: the demo needs a checkout of the dbcreds repository: make demo",
              file=err)
        return 2
    parser = argparse.ArgumentParser(prog="dbcreds demo",
                                     description="rotation under load on a local stack")
    demo.add_arguments(parser)
    return demo.run(parser.parse_args(argv), out, err)


# -- check ---------------------------------------------------------------------------------------

def _check(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    import os

    from . import _env
    from ._aws import client_error_code, new_client, secret_call
    from .errors import DbcredsError, classify_tls_failure
    from .secret import DbSecret
    from .tls import check_hosts, login_tls

    try:
        sslmode = args.sslmode or _env.sslmode(os.environ, "DBCREDS_SSLMODE")
    except DbcredsError as exc:  # a ConfigurationError naming the variable, not the value
        print(f"FAILED: {exc}", file=err)
        return 1
    try:
        client = new_client("secretsmanager")
        with secret_call():
            response = client.get_secret_value(SecretId=args.secret, VersionStage=args.stage)
        text = response.get("SecretString")
        if text is None:
            print(f"FAILED: {args.stage} of {args.secret!r} is binary, not a JSON secret",
                  file=err)
            return 1
        secret = DbSecret.from_json(text, secret_id=args.secret,
                                    version_id=response.get("VersionId"),
                                    keys=_env.key_map(os.environ, "DBCREDS_SECRET_KEYS"))
    except DbcredsError as exc:
        print(f"FAILED: {exc}", file=err)
        return 1
    except Exception as exc:
        code = client_error_code(exc) or type(exc).__name__
        print(f"FAILED: could not read {args.stage} of secret {args.secret!r}: {code}", file=err)
        return 1

    kwargs: dict[str, Any] = secret.connect_kwargs()
    for key in ("host", "port", "dbname"):
        if getattr(args, key) is not None:
            kwargs[key] = getattr(args, key)
    if not kwargs.get("host"):
        print(f"FAILED: {args.stage} of {args.secret!r} names no host (an RDS-managed secret "
              "holds only the username and the password): give --host", file=err)
        return 1
    where = f"{kwargs['host']}:{kwargs['port']}/{kwargs['dbname']} as {secret.username!r}"
    label = f"{args.stage} of {args.secret!r} (version {secret.version_id})"
    try:
        tls = login_tls(
            sslmode=sslmode,
            sslrootcert=args.sslrootcert or os.environ.get("DBCREDS_SSLROOTCERT") or None,
            source="--sslmode / DBCREDS_SSLMODE",
            ca_setting="--sslrootcert (or DBCREDS_SSLROOTCERT)",
        )
    except DbcredsError as exc:
        print(f"FAILED: {exc}", file=err)
        return 1
    if tls.downgrade is not None:
        print(f"WARNING: {tls.downgrade}", file=err)
    kwargs.update(tls.params)
    try:
        check_hosts(kwargs, tls)
    except DbcredsError as exc:
        print(f"FAILED: {label} was not sent to {where}: {exc}", file=err)
        return 1
    try:
        import psycopg

        with psycopg.connect(**kwargs, connect_timeout=max(1, round(args.timeout)),
                             prepare_threshold=None, application_name="dbcreds-check") as conn:
            row = conn.execute("SELECT current_user, current_setting('server_version')")
            user, version = row.fetchone() or ("?", "?")
    except Exception as exc:
        from .errors import scrub

        reason = " ".join(scrub(str(exc), [secret.password]).split())
        hint = classify_tls_failure(exc, "--sslrootcert, or DBCREDS_SSLROOTCERT")
        if hint is not None:  # libpq stopped before the password left
            print(f"FAILED: {label} was not sent to {where} (TLS {tls.describe()}): {reason}. "
                  f"{hint}", file=err)
            return 1
        print(f"FAILED: {label} does not log in to {where}: {reason}", file=err)
        return 1
    print(f"OK: {label} logs in to {where} (current_user {user}, PostgreSQL {version})",
          file=out)
    return 0


# -- rotate --------------------------------------------------------------------------------------

def _rotate_aws(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from ._aws import client_error_code, new_client

    kwargs: dict[str, Any] = {"SecretId": args.secret}
    if args.token:
        kwargs["ClientRequestToken"] = args.token
    try:
        response = new_client("secretsmanager").rotate_secret(**kwargs)
    except Exception as exc:
        code = client_error_code(exc) or type(exc).__name__
        print(f"FAILED: RotateSecret on {args.secret!r}: {code}: {_message(exc)}", file=err)
        return 1
    print(f"rotation started for {response.get('ARN', args.secret)} (version "
          f"{response.get('VersionId')}); Secrets Manager runs the rotation function: follow "
          "its log, then `dbcreds check` the secret", file=out)
    return 0


def _rotate_local(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .errors import DbcredsError
    from .rotation.handler import StepResult
    from .rotation.local import rotate_locally

    def show(result: StepResult) -> None:
        print(f"  {result.step.value:<13} {result.outcome:<8} {result.detail} "
              f"({result.duration * 1000:.0f} ms)", file=out, flush=True)

    print(f"rotating {args.secret!r} locally", file=out, flush=True)
    try:
        run = rotate_locally(args.secret, token=args.token, pause=args.pause,
                             stop_after=args.stop_after, between_steps=show)
    except DbcredsError as exc:
        print(f"FAILED: {exc}", file=err)
        return 1
    except Exception as exc:
        print(f"FAILED: {type(exc).__name__}: {_message(exc)}", file=err)
        return 1
    if run.stopped_after is not None:
        print(f"stopped after {run.stopped_after.value}; resume with: dbcreds rotate "
              f"{args.secret} --local --token {run.token}", file=out)
    elif not run.results:
        print(f"version {run.token} is already AWSCURRENT: nothing to do", file=out)
    else:
        print(f"rotated: AWSCURRENT is now version {run.token} "
              f"({run.duration:.2f} s in the steps)", file=out)
    return 0


def _message(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Message", ""))
    return str(exc)


if __name__ == "__main__":
    sys.exit(main())
