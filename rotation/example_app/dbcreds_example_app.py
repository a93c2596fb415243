"""Example application Lambda: reads the database through RDS Proxy with dbcreds.

Deployed by ``rotation/template.yaml`` when ``DeployExampleApp=true``, from the same zip as the
rotation function (``make package`` puts this module at the zip's root). Its configuration is
all environment, set by the template:

* ``DBCREDS_SECRET_ID``: the secret's ARN (the function may only GetSecretValue on it);
* ``DBCREDS_HOST``: the RDS Proxy endpoint, which replaces the host written in the secret;
* TLS: nothing to set. dbcreds verifies the proxy (``verify-full``) against the system trust
  store, which holds the public Amazon roots the proxy's certificate chains to.

The pool behind ``dbcreds.get_connection()`` lives at module scope in dbcreds and survives
between invocations; a rotation is absorbed by dbcreds (refetch and bounded retry), so this
handler has no credential logic at all.
"""

from __future__ import annotations

from typing import Any

import dbcreds


def handler(event: Any, context: Any) -> dict[str, Any]:
    """Return who we are logged in as, proving the secret and the proxy work end to end."""
    with dbcreds.get_connection() as conn:
        row = conn.execute("select current_user, inet_server_addr()::text, now()::text").fetchone()
    if row is None:  # pragma: no cover - a select always returns its row
        raise RuntimeError("the database returned no row")
    user, server, now = row
    return {"user": user, "server": server, "time": now}
