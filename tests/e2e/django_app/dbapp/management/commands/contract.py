"""What Django's own options still do under ENGINE dbcreds.django; prints JSON observations."""

import json
from typing import Any

from django.core.management.base import BaseCommand
from django.db import close_old_connections, connection, transaction
from django.db.backends.signals import connection_created

from dbapp.models import Item


class Command(BaseCommand):
    def handle(self, *args: Any, **options: Any) -> None:
        created: list[str] = []

        def on_created(sender: Any, connection: Any, **kwargs: Any) -> None:
            created.append(connection.alias)

        connection_created.connect(on_created)
        seen = []
        for _ in range(3):  # three "requests", as Django's request cycle runs them
            close_old_connections()
            Item.objects.create(name="x")
            seen.append(id(connection.connection))
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("show transaction_isolation")
                isolation = cursor.fetchone()[0]
            close_old_connections()
        pool = connection.pool
        print(json.dumps({
            "distinct_connections": len(set(seen)),
            "connection_created": len(created),
            "isolation": isolation,
            "count": Item.objects.count(),
            "pool": None if pool is None else {
                "class": type(pool).__name__,
                "min_size": pool.min_size, "max_size": pool.max_size,
                "max_lifetime": pool.max_lifetime, "timeout": pool.timeout,
                "check": pool._check is not None,
                "configure": pool._configure is not None,
                "stats": pool.get_stats(),
            },
        }), flush=True)
