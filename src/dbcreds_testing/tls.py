"""The local stack's own certificate authority: TLS everywhere, verified with ``verify-full``.

RDS serves TLS with certificates of the RDS CA and RDS Proxy with certificates from a public
CA; the local stack stands in for both with a throw-away CA (``trustme``) that signs one server
certificate for ``127.0.0.1``, ``::1`` and ``localhost``. PostgreSQL and both PgBouncers serve
it, PostgreSQL accepts TLS connections only (``hostssl`` in pg_hba.conf), and every client of
the stack (the tests, the demo, the benchmarks) verifies it with ``sslmode=verify-full`` and
``sslrootcert=<ca_file>``: the secure default of dbcreds, not a downgrade.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import _proc

__all__ = ["LocalCA"]

#: The names the server certificate is valid for (every address the stack listens on).
SERVER_NAMES = ("127.0.0.1", "::1", "localhost")


class LocalCA:
    """A CA (``ca_file``, public) and a server key pair (``cert_file``, ``key_file``)."""

    def __init__(self, workdir: Path) -> None:
        import trustme  # test extra: imported only when a stack starts

        _proc.make_private_dir(workdir)
        self.workdir = workdir
        ca = trustme.CA(organization_name="dbcreds local stack", organization_unit_name="tests")
        server = ca.issue_cert(*SERVER_NAMES)
        self.ca_file = workdir / "ca.pem"
        self.cert_file = workdir / "server.crt"
        self.key_file = workdir / "server.key"
        ca.cert_pem.write_to_path(str(self.ca_file))
        os.chmod(self.ca_file, 0o644)
        self.cert_file.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
        os.chmod(self.cert_file, 0o644)
        # PostgreSQL refuses a key readable by others, or owned by anyone but itself (or root).
        _proc.write_private_file(self.key_file, server.private_key_pem.bytes().decode("ascii"))
        _proc.give_to_service_user(self.ca_file)
        _proc.give_to_service_user(self.cert_file)

    def __repr__(self) -> str:
        return f"<LocalCA {self.ca_file}>"

    def client_params(self) -> dict[str, str]:
        """libpq parameters of a client that verifies the stack's servers."""
        return {"sslmode": "verify-full", "sslrootcert": str(self.ca_file)}
