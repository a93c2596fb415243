"""One ORM query through the "default" alias, timed; prints JSON: the error (type, module,
text, chained causes), the seconds it took, and the reprs of what dbcreds returns."""

import json
import time
from typing import Any

from django.core.management.base import BaseCommand
from django.db import connections

from dbapp.models import Item


def chain(exc: BaseException | None) -> list[str]:
    out = []
    while exc is not None:
        out.append(f"{type(exc).__module__}.{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    return out


class Command(BaseCommand):
    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--times", type=int, default=1)

    def handle(self, *args: Any, **options: Any) -> None:
        results = []
        for _ in range(options["times"]):
            t0 = time.monotonic()
            error = None
            try:
                Item.objects.exists()
            except Exception as exc:
                error = exc
            results.append({
                "seconds": time.monotonic() - t0,
                "error": None if error is None else type(error).__name__,
                "error_module": None if error is None else type(error).__module__,
                "texts": chain(error),
                "args": [] if error is None else [repr(a) for a in error.args],
            })
        wrapper = connections["default"]
        pool = wrapper.pool
        print(json.dumps({
            "results": results,
            "reprs": [repr(wrapper), repr(wrapper.connection), repr(pool),
                      repr(wrapper.Database), repr(wrapper.settings_dict)],
            "pool_class": None if pool is None else type(pool).__name__,
            "pool_stats": None if pool is None else pool.get_stats(),
        }), flush=True)
