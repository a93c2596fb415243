"""An application Lambda using dbcreds: the code a user deploys (see the README)."""

from __future__ import annotations

from typing import Any

import dbcreds


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    with dbcreds.get_connection() as conn:
        row = conn.execute("select current_user, %s::text", [event.get("customer", "")]
                           ).fetchone()
    assert row is not None
    return {"user": row[0], "customer": row[1]}
