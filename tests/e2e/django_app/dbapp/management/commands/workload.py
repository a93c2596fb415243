"""8 threads per alias making ORM queries as Django's request cycle does, through rotations
that the parent test drives; talks to it on stdin/stdout:

stdout ``READY`` once both workloads served requests; stdin ``mark <label>`` marks both
timelines; stdin ``stop`` stops them, then stdout ``REPORT <json>`` (each alias's requests and
marks) and the command ends.
"""

import json
import sys
from dataclasses import asdict
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import close_old_connections

from dbapp.models import Item
from dbcreds_testing.workload import Workload


def one_request(alias: str) -> None:
    """One request: close_old_connections() around it, as Django's request_started and
    request_finished signals do (CONN_MAX_AGE ages connections out there)."""
    close_old_connections()
    try:
        Item.objects.using(alias).exists()
    finally:
        close_old_connections()


class Command(BaseCommand):
    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--threads", type=int, default=8)

    def handle(self, *args: Any, **options: Any) -> None:
        for alias in settings.DATABASES:  # warm-up: Django's first connection (version
            one_request(alias)                # check, adapters) and the secret's first fetch
        workloads = {
            alias: Workload(request=lambda alias=alias: one_request(alias),
                            threads=options["threads"])
            for alias in settings.DATABASES
        }
        for workload in workloads.values():
            workload.start()
        try:
            for alias, workload in workloads.items():
                if not workload.wait_for_requests(50):
                    raise SystemExit(f"{alias}: no requests served: {workload.report().summary()}")
            print("READY", flush=True)
            for line in sys.stdin:
                command, _, label = line.strip().partition(" ")
                if command == "mark":
                    for workload in workloads.values():
                        workload.mark(label)
                elif command == "stop":
                    break
        finally:
            reports = {alias: w.stop() for alias, w in workloads.items()}
        print("REPORT " + json.dumps({alias: asdict(r) for alias, r in reports.items()}),
              flush=True)
