"""Role helpers for the test database: quoted names, passwords sent only as SCRAM verifiers.

Role names in tests may contain uppercase, spaces, quotes or reserved words: every name goes
through ``psycopg.sql.Identifier``. ``ALTER ROLE`` takes no bind parameters, so the password is
sent as a SCRAM-SHA-256 verifier computed client-side by ``dbcreds.rotation.password`` (the
rotation's own functions): the plaintext never reaches the server, its log
(``log_statement=all``) or pg_stat_statements.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from dbcreds.rotation.password import scram_verifier, set_password

if TYPE_CHECKING:
    import psycopg

__all__ = ["SCHEMA_PRIVILEGES", "create_role", "drop_role", "scram_verifier", "set_password"]

#: Privileges ``create_role(grants=...)`` may grant on schema public.
SCHEMA_PRIVILEGES = frozenset({"USAGE", "CREATE"})


def create_role(
    conn: psycopg.Connection[Any],
    username: str,
    password: str,
    *,
    grants: Iterable[str] = ("USAGE", "CREATE"),
    createrole: bool = False,
) -> None:
    """Create a LOGIN role; ``grants`` are privileges on schema public of ``conn``'s database."""
    from psycopg import sql

    privileges = [g.upper() for g in grants]
    unknown = set(privileges) - SCHEMA_PRIVILEGES
    if unknown:
        raise ValueError(f"grants must be among {sorted(SCHEMA_PRIVILEGES)}, not {sorted(unknown)}")
    role = sql.Identifier(username)
    options = sql.SQL(" CREATEROLE" if createrole else "")
    conn.execute(
        sql.SQL("CREATE ROLE {} LOGIN{} PASSWORD {}").format(
            role, options, sql.Literal(scram_verifier(conn, username, password))
        )
    )
    if privileges:
        conn.execute(
            sql.SQL("GRANT {} ON SCHEMA public TO {}").format(
                sql.SQL(", ").join(sql.SQL(p) for p in privileges), role
            )
        )


def drop_role(conn: psycopg.Connection[Any], username: str) -> None:
    """Drop a role and what it owns in ``conn``'s database (no error if it is gone)."""
    from psycopg import sql

    role = sql.Identifier(username)
    exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [username]).fetchone()
    if exists is None:
        return
    conn.execute(sql.SQL("DROP OWNED BY {}").format(role))
    conn.execute(sql.SQL("DROP ROLE {}").format(role))
