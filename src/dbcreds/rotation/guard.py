"""Which roles the alternating-users strategy may touch.

Whoever can write the application secret chooses the role names that setSecret then changes
*as the master user*: an RDS master is CREATEROLE, which on PostgreSQL 15 may change the
password of any role that is not a superuser, and the clone created on the first rotation is
made a member of ``<user>``. So before any statement that changes something, the pair
(``<user>``, ``<user>_clone``) is refused when either role is, or can become, privileged:

Name rules (`name_violations`, pure, no database; createSecret applies them too):

* ``master-user``: a name equals the master secret's user name (also after truncation);
* ``reserved-prefix``: a name starts with ``pg_`` (PostgreSQL's predefined roles);
* ``too-long``: a name is longer than 63 bytes in UTF-8 (PostgreSQL truncates identifiers to
  NAMEDATALEN-1 bytes, so a longer name would act on whatever role its first 63 bytes name);
* ``truncation-collision``: the two names are the same role after that truncation.

Database rules (`privilege_violations`, read-only queries on ``pg_roles`` and
``pg_has_role(..., 'MEMBER')``, run as the master before any change), for each role of the pair
that exists:

* ``privileged-attribute``: it has SUPERUSER, CREATEROLE, REPLICATION or BYPASSRLS;
* ``privileged-membership``: it is a member, directly or through other roles, with or without
  INHERIT (``SET ROLE`` reaches it either way), of a role that has one of those attributes, of
  a predefined ``pg_*`` role, of RDS's administrative roles (``rds_superuser``,
  ``rds_password``, ``rds_replication``), or of the master role itself.

``pg_database_owner`` is left out of the ``pg_*`` rule: its membership is implicit and exists
only inside the database the check connects to (so the verdict would depend on the master
secret's ``dbname``), and owning a database grants nothing outside it. The strategy also
demands that the secret proves it holds the pair (its credentials log in) before the master
touches it, so cloning a database owner gives the secret's holder nothing it did not have.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "MAX_ROLE_NAME_BYTES",
    "PRIVILEGED_ATTRIBUTES",
    "RESERVED_PREFIX",
    "name_violations",
    "pg_truncate",
    "privilege_violations",
]

#: NAMEDATALEN - 1: PostgreSQL truncates longer identifiers (in bytes, at a character boundary).
MAX_ROLE_NAME_BYTES = 63
#: Role names PostgreSQL reserves for its predefined roles (CREATE ROLE refuses them).
RESERVED_PREFIX = "pg_"
#: Role attributes that make a role privileged (``pg_roles`` column -> keyword).
PRIVILEGED_ATTRIBUTES = {
    "rolsuper": "SUPERUSER",
    "rolcreaterole": "CREATEROLE",
    "rolreplication": "REPLICATION",
    "rolbypassrls": "BYPASSRLS",
}
_SHOWN = 5  # role names listed in one message, at most


def pg_truncate(name: str) -> str:
    """*name* as PostgreSQL stores it: at most 63 UTF-8 bytes, cut at a character boundary."""
    raw = name.encode("utf-8")
    if len(raw) <= MAX_ROLE_NAME_BYTES:
        return name
    return raw[:MAX_ROLE_NAME_BYTES].decode("utf-8", errors="ignore")


def _names(names: Sequence[str]) -> str:
    shown = [repr(n) for n in names[:_SHOWN]]
    more = len(names) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def name_violations(current: str, pending: str, master: str | None = None) -> list[str]:
    """The name rules (module docstring) that the pair *current*/*pending* breaks.

    Each item is ``"<rule>: <explanation naming the role(s)>"``; empty when the pair is safe
    by name. *master* is the master secret's user name, when known.
    """
    found: list[str] = []
    pair = [current] if current == pending else [current, pending]
    if master is not None:
        for name in pair:
            if name == master or pg_truncate(name) == pg_truncate(master):
                found.append(
                    f"master-user: role {name!r} is the master user {master!r}; rotation "
                    "never changes the master's password with the master's own login"
                )
    for name in pair:
        if name.startswith(RESERVED_PREFIX):
            found.append(
                f"reserved-prefix: role {name!r} starts with {RESERVED_PREFIX!r}, which "
                "PostgreSQL reserves for its predefined roles"
            )
    for name in pair:
        size = len(name.encode("utf-8"))
        if size > MAX_ROLE_NAME_BYTES:
            found.append(
                f"too-long: role {name!r} is {size} bytes in UTF-8, over PostgreSQL's "
                f"{MAX_ROLE_NAME_BYTES}-byte limit on role names (PostgreSQL would truncate "
                f"it to {pg_truncate(name)!r}, which may be another role)"
            )
    if pg_truncate(current) == pg_truncate(pending):
        found.append(
            f"truncation-collision: roles {current!r} and {pending!r} are the same role "
            f"{pg_truncate(current)!r} once PostgreSQL truncates them to "
            f"{MAX_ROLE_NAME_BYTES} bytes"
        )
    return found


# One row per role of the pair that exists: its privileged attributes, and every privileged
# role it is a member of. pg_has_role(..., 'MEMBER') follows memberships transitively, with or
# without INHERIT (what SET ROLE can reach). Read-only: pg_roles and pg_has_role need no
# privilege.
_PRIVILEGE_QUERY = """
SELECT r.rolname::text,
       array_remove(ARRAY[
           CASE WHEN r.rolsuper THEN 'SUPERUSER' END,
           CASE WHEN r.rolcreaterole THEN 'CREATEROLE' END,
           CASE WHEN r.rolreplication THEN 'REPLICATION' END,
           CASE WHEN r.rolbypassrls THEN 'BYPASSRLS' END
       ], NULL) AS attributes,
       ARRAY(
           SELECT g.rolname::text
           FROM pg_roles AS g
           WHERE g.oid <> r.oid
             AND (g.rolsuper OR g.rolcreaterole OR g.rolreplication OR g.rolbypassrls
                  OR (left(g.rolname::text, 3) = 'pg_' AND g.rolname <> 'pg_database_owner')
                  OR g.rolname IN ('rds_superuser', 'rds_password', 'rds_replication')
                  OR g.rolname = %(master)s OR g.rolname = session_user)
             AND pg_has_role(r.oid, g.oid, 'MEMBER')
           ORDER BY g.rolname
       ) AS privileged_groups
FROM pg_roles AS r
WHERE r.rolname = ANY(%(names)s)
ORDER BY r.rolname
"""


def privilege_violations(
    conn: psycopg.Connection[Any], names: Sequence[str], master: str
) -> list[str]:
    """The database rules (module docstring) that the roles *names* break, seen by *conn*.

    *conn* is logged in as the master user *master* (``session_user`` is checked as well, in
    case the server's name for the login differs). Roles that do not exist are skipped.
    """
    rows = conn.execute(
        _PRIVILEGE_QUERY, {"names": list(dict.fromkeys(names)), "master": master}
    ).fetchall()
    found: list[str] = []
    for rolname, attributes, groups in rows:
        if attributes:
            found.append(
                f"privileged-attribute: role {rolname!r} has {', '.join(attributes)}"
            )
        if groups:
            found.append(
                f"privileged-membership: role {rolname!r} is a member of {_names(groups)} "
                "(a superuser, CREATEROLE, REPLICATION or BYPASSRLS role, a predefined pg_* "
                "role, an RDS administrative role, or the master user)"
            )
    return found
