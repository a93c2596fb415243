"""Changing a role's password without ever sending the plaintext to the server.

``ALTER ROLE`` is a utility statement: it cannot take bind parameters, so the role name is
quoted with ``psycopg.sql.Identifier`` and the password goes in as a literal. The literal is a
SCRAM-SHA-256 verifier computed here, by libpq (``PQencryptPasswordConn``, the same thing
psql's ``\\password`` does): the server stores it as is, and the plaintext never reaches the
server, its log (``log_statement=all``) or pg_stat_statements.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "create_login_role",
    "ensure_member",
    "is_member",
    "role_exists",
    "scram_verifier",
    "set_password",
]


def scram_verifier(conn: psycopg.Connection[Any], username: str, password: str) -> str:
    """The SCRAM-SHA-256 verifier of *password* (salted; a new salt every call)."""
    verifier = conn.pgconn.encrypt_password(
        password.encode("utf-8"), username.encode("utf-8"), b"scram-sha-256"
    )
    return verifier.decode("ascii")


def set_password(conn: psycopg.Connection[Any], role: str, password: str) -> None:
    """``ALTER ROLE "role" WITH PASSWORD 'SCRAM-SHA-256$...'``."""
    from psycopg import sql

    conn.execute(
        sql.SQL("ALTER ROLE {} WITH PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(scram_verifier(conn, role, password))
        )
    )


def role_exists(conn: psycopg.Connection[Any], role: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is not None


def create_login_role(
    conn: psycopg.Connection[Any], role: str, password: str, *, member_of: str
) -> bool:
    """Create *role* WITH LOGIN, a member of *member_of* (so it has the same privileges).

    Returns False, changing nothing, when the role appeared meanwhile: a role the caller has
    not checked is never touched (the caller retries, and checks it first).
    """
    import psycopg
    from psycopg import sql

    try:
        conn.execute(
            sql.SQL("CREATE ROLE {} WITH LOGIN INHERIT PASSWORD {} IN ROLE {}").format(
                sql.Identifier(role),
                sql.Literal(scram_verifier(conn, role, password)),
                sql.Identifier(member_of),
            )
        )
    except psycopg.errors.DuplicateObject:
        return False
    return True


def is_member(conn: psycopg.Connection[Any], role: str, group: str) -> bool:
    """Whether *role* is a member of *group* (directly or not, what SET ROLE can reach)."""
    row = conn.execute("SELECT pg_has_role(%s, %s, 'MEMBER')", (role, group)).fetchone()
    return bool(row and row[0])


def ensure_member(conn: psycopg.Connection[Any], role: str, group: str) -> None:
    """``GRANT group TO role`` unless *role* already has *group*'s privileges."""
    from psycopg import sql

    row = conn.execute("SELECT pg_has_role(%s, %s, 'USAGE')", (role, group)).fetchone()
    if not (row and row[0]):
        conn.execute(
            sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), sql.Identifier(role))
        )
