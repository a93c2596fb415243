"""Three rotations under load: the harness every zero-failure test shares (psycopg_pool sync
and asyncio, SQLAlchemy, Django, asyncpg, psycopg2).

A test starts one or more workloads (``dbcreds_testing.workload``: requests through the
library's own API), calls `rotate_three_times` (or awaits `arotate_three_times`), stops the
workloads and checks each report with `assert_three_rotations_served`. A workload of the same
library used the usual way (the secret read once at start) can run beside it in the same
rotations: `assert_usual_way_broke` shows that the test exercises what dbcreds fixes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from dbcreds.rotation.events import RotationStep
from dbcreds.rotation.local import rotate_locally
from dbcreds_testing.workload import WorkloadReport

#: route name -> the stack's server attribute (the database, and both proxy behaviours)
ROUTES = {"direct": "postgres", "pgbouncer-auth_query": "pgbouncer", "rds-proxy-like": "rds_proxy"}
#: the two proxy behaviours (PgBouncer with auth_query; the RDS Proxy stand-in)
PROXIES = {k: v for k, v in ROUTES.items() if k != "direct"}


def proxy_caught_up(stack: Any, secret_id: str, version: str) -> None:
    """Start the next rotation once the RDS Proxy stand-in applied the last one.

    Rotations are days apart in production; back to back (0.5 s pauses) the stand-in could
    apply rotation N's password just after rotation N+1's setSecret changed it again, and
    PgBouncer, unlike RDS Proxy, closes its server connections of a user whose auth_file
    password changed: every query would then wait for the next refresh. That is a property
    of the stand-in, not of a rotation, so the tests wait for the proxy (an event, not a
    sleep) between rotations."""
    stack.rds_proxy.wait_applied(secret_id, version, timeout=15)


def direct_login_works(stack: Any, doc: dict[str, Any] | None) -> bool:
    if doc is None:
        return False
    try:
        with psycopg.connect(host=stack.postgres.host, port=stack.postgres.port,
                             dbname=doc.get("dbname", "postgres"), user=doc["username"],
                             password=doc["password"], connect_timeout=5):
            return True
    except psycopg.OperationalError:
        return False


def stage_doc(sm_client: Any, secret_id: str, stage: str) -> dict[str, Any] | None:
    try:
        value = sm_client.get_secret_value(SecretId=secret_id, VersionStage=stage)
    except sm_client.exceptions.ResourceNotFoundException:
        return None
    doc: dict[str, Any] = json.loads(value["SecretString"])
    return doc


def rotate_three_times(
    stack: Any,
    app: Any,
    sm_client: Any,
    workloads: Sequence[Any] = (),
    *,
    rotate: Callable[..., Any] = rotate_locally,
    between: Callable[[RotationStep], None] | None = None,
) -> list[bool]:
    """Rotate *app*'s secret three times with the real rotation handler (0.5 s between steps),
    each time waiting for the RDS Proxy stand-in to apply it. At every step each workload's
    timeline gets a mark, and the result records whether AWSCURRENT or AWSPENDING logs in to
    the database directly (it must: the rotation never leaves a window with neither).

    *rotate* is ``rotate_locally`` or anything with its signature and result (``completed``,
    ``token``), e.g. the RDS-managed rotation of a two-key secret.
    """
    logins_ok: list[bool] = []

    def step_done(step: RotationStep) -> None:
        for workload in workloads:
            workload.mark(str(step.step))
        current = stage_doc(sm_client, app.secret_id, "AWSCURRENT")
        pending = stage_doc(sm_client, app.secret_id, "AWSPENDING")
        logins_ok.append(direct_login_works(stack, current) or direct_login_works(stack, pending))
        if between is not None:
            between(step)

    for _ in range(3):
        proxy_warmed(stack, app, sm_client)
        rotation = rotate(app.secret_id, pause=0.5, between_steps=step_done)
        assert rotation.completed
        proxy_caught_up(stack, app.secret_id, rotation.token)
    return logins_ok


#: server connections the RDS Proxy stand-in holds for an app before a rotation: the
#: concurrency of the load tests (8 threads of dbcreds, 8 of the usual way beside it)
WARM_SERVER_CONNECTIONS = 16


def proxy_warmed(stack: Any, app: Any, sm_client: Any) -> None:
    """Before a rotation, the RDS Proxy stand-in holds a warm pool of server connections for
    the app, as RDS Proxy does (``PgBouncer.warm``: PgBouncer, unlike RDS Proxy, closes them
    when a RELOAD changes the password, and refuses queries at once while it cannot open new
    ones). A property of the stand-in, not of a rotation: waited for like `proxy_caught_up`."""
    current = sm_client.get_secret_value(SecretId=app.secret_id, VersionStage="AWSCURRENT")
    proxy_caught_up(stack, app.secret_id, current["VersionId"])  # it serves this version
    doc = json.loads(current["SecretString"])
    stack.rds_proxy.warm(doc["username"], doc["password"], stack.dbname,
                         WARM_SERVER_CONNECTIONS)


async def arotate_three_times(
    stack: Any, app: Any, sm_client: Any, workloads: Sequence[Any] = (), **kw: Any
) -> list[bool]:
    """`rotate_three_times` in a thread, for a test whose workloads run on the event loop."""
    return await asyncio.to_thread(rotate_three_times, stack, app, sm_client, workloads, **kw)


def report(name: str, result: WorkloadReport, provider: Any = None) -> None:
    """Print the figures of a load test (run with ``-s``): requests, failed, latency."""
    figures = result.summary()
    if provider is not None:
        figures["GetSecretValue"] = provider.get_stats()["fetches"]
    print(f"\n[{name}] {json.dumps(figures)}")
    slow = [(round(r.start, 2), round(r.seconds, 2)) for r in result.requests if r.seconds > 0.5]
    if slow:  # diagnostics for a slow request: when it started, against the rotation steps
        print(f"  slow requests (start, seconds): {slow[:20]}")
        print(f"  marks: {[(round(m.at, 2), m.label) for m in result.marks]}")


def assert_three_rotations_served(
    stack: Any, app: Any, result: WorkloadReport, logins_ok: list[bool],
    *, min_requests: int = 500,
) -> None:
    """What a load test through three rotations must show (every integration alike): no
    failed request. Latency (the worst request, the p99) is printed by `report` and quoted in
    the notes; speed targets live in benchmarks/, not in timed assertions here."""
    assert result.failures == [], result.summary()
    assert len(logins_ok) == 12 and all(logins_ok)  # AWSCURRENT or AWSPENDING at every step
    # The workload really ran across the rotations, and the password really changed.
    assert len(result.requests) > min_requests
    assert not direct_login_works(stack, {"username": app.username, "password": app.password})


def assert_usual_way_broke(result: WorkloadReport) -> None:
    """The same library used the usual way (the password read once at start) failed requests
    in the same rotations: the scenario exercises what dbcreds fixes."""
    assert result.failures, result.summary()
