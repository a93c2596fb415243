"""``dbcreds demo`` (``make demo``): rotation under load, end to end, on this machine.

1. Starts the local stack (`dbcreds_testing.LocalStack`): PostgreSQL, PgBouncer checking the
   live database, PgBouncer behaving like RDS Proxy (it serves the AWSCURRENT password it
   re-reads from Secrets Manager about every second), and a Secrets Manager endpoint (moto)
   that counts requests.
2. Creates a role and its secret, and enables rotation on the secret.
3. Runs an application workload: ``--threads`` threads looping ``with dbcreds.get_connection()
   as conn: conn.execute("select 1")``, the default pool configured only by ``DBCREDS_*``
   variables and pointed at the chosen proxy, its connections recycled every 2 s
   (``DBCREDS_POOL_MAX_LIFETIME``) so that new logins happen all through the rotations.
4. Meanwhile rotates the password ``--rotations`` times with the real rotation handler, run
   step by step by the local driver (`dbcreds.rotation.local.rotate_locally`), as Secrets
   Manager would run the Lambda.
5. Shows live progress, then a report: requests, failed requests, rotations, GetSecretValue
   calls made by the application (counted at the endpoint), p50/p99/max latency; writes
   ``report.json`` and ``timeline.png`` (each request's latency, each rotation step marked)
   to ``--output``.

Exit status: 0 when every request succeeded and every rotation completed, 1 otherwise, 2 for
usage errors. Never prints a password.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

__all__ = ["add_arguments", "main", "run"]

PROXIES = {"rds-proxy": "rds_proxy", "pgbouncer": "pgbouncer"}
PROXY_TEXT = {
    "rds-proxy": "PgBouncer behaving like RDS Proxy (serves the AWSCURRENT it re-reads ~1/s)",
    "pgbouncer": "PgBouncer checking the live database (auth_query)",
}
STEPS = ("createSecret", "setSecret", "testSecret", "finishSecret")
STEP_COLORS = {"createSecret": "#9ecae1", "setSecret": "#fdae6b", "testSecret": "#c7e9c0",
               "finishSecret": "#bcbddc"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's options (shared by ``dbcreds demo`` and ``python -m dbcreds_testing.demo``)."""
    parser.add_argument("--duration", type=float, default=30.0, metavar="S",
                        help="seconds of workload (default 30)")
    parser.add_argument("--threads", type=int, default=8, metavar="N",
                        help="application threads (default 8)")
    parser.add_argument("--rotations", type=int, default=3, metavar="R",
                        help="rotations during the run (default 3)")
    parser.add_argument("--proxy", choices=sorted(PROXIES), default="rds-proxy",
                        help="the proxy's behaviour (default rds-proxy)")
    parser.add_argument("--output", type=Path, default=Path("demo-output"), metavar="DIR",
                        help="where report.json and timeline.png go (default demo-output/)")
    parser.add_argument("--pause", type=float, default=None, metavar="S",
                        help="seconds between two rotation steps (default: fits the duration)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dbcreds demo", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


@dataclass
class _Live:
    """What the progress display shows (written by the rotation thread, read by the UI)."""

    rotation: int = 0
    step: str = "warming up"
    done: int = 0
    failed: str | None = None
    log: list[str] = field(default_factory=list)


def run(args: argparse.Namespace, out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    """Run the demo with parsed ``args`` (see `add_arguments`); returns the exit status."""
    out = out or sys.stdout
    err = err or sys.stderr
    if args.duration <= 0 or args.threads < 1 or args.rotations < 0:
        print("dbcreds demo: --duration must be > 0, --threads >= 1, --rotations >= 0",
              file=err)
        return 2
    try:
        from rich.console import Console
    except ImportError:
        print("dbcreds demo needs the demo extra: pip install 'dbcreds[demo]'", file=err)
        return 2

    console = Console(file=out, highlight=False)
    from . import LocalStack

    console.print(f"[bold]dbcreds demo[/]: {args.threads} threads through "
                  f"{PROXY_TEXT[args.proxy]}, {args.rotations} rotation(s) in "
                  f"{args.duration:g} s")
    console.print("starting PostgreSQL, PgBouncer x2 and the Secrets Manager endpoint ...")
    try:
        stack = LocalStack().start()
    except Exception as exc:
        console.print(f"[red]could not start the local stack:[/] {type(exc).__name__}: {exc}")
        return 1
    try:
        return _run_on(stack, args, console)
    finally:
        from dbcreds import close_default_pool

        close_default_pool()
        stack.close()


def _run_on(stack: Any, args: argparse.Namespace, console: Any) -> int:
    app = stack.new_app("demo")
    stack.enable_rotation(app.secret_id)
    host, port = stack.address(PROXIES[args.proxy])
    os.environ.update(stack.env())
    os.environ.update({
        # The application: nothing but the secret's name and where the proxy is.
        "DBCREDS_SECRET_ID": app.secret_id,
        "DBCREDS_HOST": host,
        "DBCREDS_PORT": str(port),
        "DBCREDS_POOL_MIN_SIZE": str(args.threads),
        "DBCREDS_POOL_MAX_SIZE": str(args.threads),
        "DBCREDS_POOL_MAX_LIFETIME": "2",
        # TLS, verified (verify-full, the default) with the stack's own CA: the application
        # and the rotation function are given it as they would be given the RDS CA bundle.
        **stack.tls_env(),
    })
    for name in ("DBCREDS_SECRETS_TRANSPORT", "PARAMETERS_SECRETS_EXTENSION_HTTP_PORT",
                 "DBCREDS_SSLMODE", "DBCREDS_ROTATION_SSLMODE"):
        os.environ.pop(name, None)  # the stack and the secure default, whatever the shell says
    console.print(f"secret [cyan]{app.secret_id}[/] (role {app.username}), rotation enabled; "
                  f"application -> {host}:{port}")
    console.print("[dim](every login is TLS verify-full against the local stack's CA)[/]")
    return _run_workload(stack, app, args, console)


def _run_workload(stack: Any, app: Any, args: argparse.Namespace, console: Any) -> int:
    from dbcreds import get_connection
    from dbcreds.rotation.local import rotate_locally

    from .workload import Workload


    # The rotation's own Secrets Manager calls are marked as the stack's: the endpoint's
    # "client" count is then the application's alone.
    rotation_client = stack.secrets.client("secretsmanager", stack=True)
    pause = args.pause if args.pause is not None else max(
        0.2, min(1.0, args.duration / (args.rotations + 1) / 6))
    live = _Live()
    workload = Workload(get_connection, threads=args.threads)
    durations: dict[str, float] = {}

    def rotate_all(started: float) -> None:
        for i in range(1, args.rotations + 1):
            # Rotation i is centred on i/(R+1) of the run (three pauses long).
            at = started + args.duration * i / (args.rotations + 1) - 1.5 * pause
            while time.monotonic() < at:
                time.sleep(0.05)
            live.rotation, live.step = i, "createSecret"

            def after(result: Any, i: int = i) -> None:
                step = result.step.value
                label = f"R{i}:{step}"
                durations[label] = result.duration
                workload.mark(label)
                live.log.append(f"rotation {i}: {step} {result.outcome} "
                                f"({result.duration * 1000:.0f} ms)")
                nxt = STEPS.index(step) + 1
                live.step = STEPS[nxt] if nxt < len(STEPS) else "done"

            try:
                rotate_locally(app.secret_id, client=rotation_client, pause=pause,
                               between_steps=after)
            except Exception as exc:
                live.failed = f"rotation {i} failed: {type(exc).__name__}: {exc}"
                live.log.append(live.failed)
                return
            live.done = i
        live.step = "all done" if args.rotations else "no rotation"

    gsv_before = stack.secrets.count("GetSecretValue", secret_id=app.secret_id)
    workload.start()
    started = time.monotonic()
    workload.wait_for_requests(args.threads, timeout=30)
    rotator = threading.Thread(target=rotate_all, args=(started,), name="rotations",
                               daemon=True)
    rotator.start()
    _show_progress(console, workload, live, args, started, rotator,
                   lambda: stack.secrets.count("GetSecretValue", secret_id=app.secret_id)
                   - gsv_before)
    rotator.join()
    report = workload.stop()
    gsv = stack.secrets.count("GetSecretValue", secret_id=app.secret_id) - gsv_before
    proxy_gsv = stack.secrets.count("GetSecretValue", secret_id=app.secret_id, source="stack")

    summary = report.summary()
    ends = sorted(r.start + r.seconds for r in report.requests)
    warm = ends[min(len(ends), args.threads) - 1] if ends else 0.0  # the first wave: cold start
    summary["max_after_warmup_ms"] = round(max(
        (r.seconds for r in report.requests if r.start >= warm), default=0.0) * 1000, 2)
    summary.update({
        "rotations": live.done,
        "rotations_requested": args.rotations,
        "GetSecretValue": gsv,
        "threads": args.threads,
        "proxy": args.proxy,
        "secret_id": app.secret_id,
    })
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    png = args.output / "timeline.png"
    _plot(report, durations, summary, png, args)
    ok = summary["failed"] == 0 and live.done == args.rotations
    _print_report(console, summary, proxy_gsv, png, ok)
    if live.failed:
        console.print(f"[red]{live.failed}[/]")
    return 0 if ok else 1


def _show_progress(console: Any, workload: Any, live: _Live, args: argparse.Namespace,
                   started: float, rotator: threading.Thread, gsv: Any) -> None:
    from rich.live import Live
    from rich.table import Table

    last = (0, started)
    rate = 0.0
    calls = 0

    def view() -> Table:
        nonlocal last, rate, calls
        now = time.monotonic()
        served, failed = workload.snapshot()
        if now - last[1] >= 0.5:
            rate = (served - last[0]) / (now - last[1])
            last = (served, now)
            calls = gsv()
        elapsed = now - started
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        bar_width = 30
        filled = int(bar_width * min(1.0, elapsed / args.duration))
        table.add_row("elapsed", f"[green]{'━' * filled}[/][dim]{'━' * (bar_width - filled)}[/]"
                      f" {elapsed:5.1f} / {args.duration:g} s")
        table.add_row("requests served", f"{served:,}  ({rate:,.0f}/s)")
        table.add_row("failed requests", f"[{'red' if failed else 'green'}]{failed}[/]")
        rotation = (f"{live.done}/{args.rotations} done" + (
            f"; rotation {live.rotation}: [yellow]{live.step}[/]"
            if live.rotation and live.done < live.rotation else ""))
        table.add_row("rotations", rotation)
        table.add_row("GetSecretValue", f"{calls} (application, at the endpoint)")
        for line in live.log[-4:]:
            table.add_row("", f"[dim]{line}[/]")
        return table

    with Live(view(), console=console, refresh_per_second=4, transient=False) as screen:
        while time.monotonic() - started < args.duration or rotator.is_alive():
            time.sleep(0.25)
            screen.update(view())
        screen.update(view())
    if not console.is_terminal:  # the live view was drawn once, at the end: add its log
        console.print()
        for line in live.log:
            console.print(f"  {line}")


def _print_report(console: Any, summary: dict[str, Any], proxy_gsv: int, png: Path,
                  ok: bool) -> None:
    from rich.table import Table

    table = Table(title="dbcreds demo report", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("proxy", summary["proxy"])
    table.add_row("threads", str(summary["threads"]))
    table.add_row("requests", f"{summary['requests']:,}")
    style = "green" if summary["failed"] == 0 else "red"
    table.add_row("failed requests", f"[{style}]{summary['failed']}[/]")
    table.add_row("rotations", f"{summary['rotations']}/{summary['rotations_requested']}")
    table.add_row("GetSecretValue calls (application)", str(summary["GetSecretValue"]))
    table.add_row("GetSecretValue calls (proxy stand-in)", str(proxy_gsv))
    table.add_row("latency p50", f"{summary['p50_ms']:.2f} ms")
    table.add_row("latency p99", f"{summary['p99_ms']:.2f} ms")
    table.add_row("latency max", f"{summary['max_ms']:.2f} ms")
    table.add_row("latency max after the first wave",
                  f"{summary['max_after_warmup_ms']:.2f} ms")
    table.add_row("duration", f"{summary['duration_s']:.1f} s")
    console.print(table)
    for error in summary["errors"]:
        console.print(f"[red]error:[/] {error}")
    console.print(f"timeline: {png}   figures: {png.parent / 'report.json'}")
    console.print("[bold green]PASS[/]: no failed request" if ok
                  else "[bold red]FAIL[/]: see above")


def _plot(report: Any, durations: dict[str, float], summary: dict[str, Any], path: Path,
          args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    ok = [r for r in report.requests if r.error is None]
    bad = [r for r in report.requests if r.error is not None]
    fig, ax = plt.subplots(figsize=(13, 5.5), dpi=110)
    ax.scatter([r.start for r in ok], [max(r.seconds * 1000, 0.01) for r in ok], s=2,
               color="#3182bd", alpha=0.35, linewidths=0, rasterized=True,
               label="request (ok)")
    if bad:
        ax.scatter([r.start for r in bad], [max(r.seconds * 1000, 0.01) for r in bad], s=30,
                   marker="x", color="#de2d26", label=f"failed request ({len(bad)})")
    ax.set_yscale("log")
    ax.set_xlim(0, max(report.duration, 1.0))
    ax.set_xlabel("seconds since the workload started")
    ax.set_ylabel("request latency (ms, log scale)")
    top = ax.get_ylim()[1]
    for mark in report.marks:
        rotation, _, step = mark.label.partition(":")
        start = mark.at - durations.get(mark.label, 0.0)
        ax.axvspan(start, max(mark.at, start + 0.02), color=STEP_COLORS.get(step, "#dddddd"),
                   alpha=0.9, zorder=0)
        if step == "createSecret":
            ax.text(start, top, f" rotation {rotation[1:]}", va="top", ha="left", fontsize=9)
        if step == "finishSecret":
            ax.axvline(mark.at, color="#54278f", linestyle="--", linewidth=1)
    handles, _labels = ax.get_legend_handles_labels()
    handles[0] = Line2D([], [], marker="o", linestyle="", color="#3182bd", markersize=4,
                            label="request (ok)")
    handles += [Patch(color=c, label=s) for s, c in STEP_COLORS.items()]
    handles.append(Line2D([], [], color="#54278f", linestyle="--",
                              label="AWSCURRENT moved"))
    ax.legend(handles=handles, loc="upper right", fontsize=8, ncol=2, framealpha=0.9)
    ax.set_title(
        f"dbcreds demo through {args.proxy}: {summary['requests']:,} requests, "
        f"{summary['failed']} failed, {summary['rotations']} rotations, "
        f"{summary['GetSecretValue']} GetSecretValue  |  p50 {summary['p50_ms']:.1f} ms, "
        f"p99 {summary['p99_ms']:.1f} ms, max {summary['max_ms']:.0f} ms", fontsize=10)
    ax.grid(True, which="major", axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
