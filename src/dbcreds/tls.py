"""The TLS policy of every login dbcreds makes: no credential reaches an unverified server.

One function, `login_tls`, turns what an operator configured (``sslmode``, ``sslrootcert``)
into the libpq parameters of a login, for the SDK's pools, the IAM source, ``dbcreds check``
and the rotation Lambda alike:

==================  ============================================================================
configured          what a login does
==================  ============================================================================
nothing             ``sslmode=verify-full`` against the *default trust*: for the SDK the system
                    trust store (RDS Proxy presents ACM certificates that chain to public Amazon
                    roots). The rotation Lambda has no default trust (it connects to the
                    database endpoint, whose certificate chains to the RDS CA, which no system
                    store holds): without a CA a password login there is SCRAM with channel
                    binding, below.
``sslrootcert``     ``verify-full`` against that CA bundle (the RDS CA bundle for a database
                    endpoint), or ``system``: the system trust store.
``verify-ca``,      as asked, against ``sslrootcert`` or the default trust.
``verify-full``
``require``         TLS without a CA. A password login then demands SCRAM with channel binding
                    (``channel_binding=require``): the server must prove that it holds the
                    password's SCRAM verifier over this very TLS session, so a man in the middle
                    learns nothing it can use. An IAM token is sent as a cleartext password:
                    refused (`ConfigurationError`).
``disable``         no TLS: an explicit downgrade, for local development only. Logged as a
                    warning (by the pools at every start). A password still never travels in
                    clear (SCRAM only); an IAM token is refused.
``allow``,          refused: they fall back to plaintext without saying so.
``prefer``
==================  ============================================================================

A password login never accepts a cleartext password exchange (libpq's ``require_auth``:
SCRAM-SHA-256 or MD5 under verified TLS; SCRAM only otherwise), so a server that asks for the
password in clear gets nothing, whatever its certificate.

**Which roots "system" means.** libpq's own ``sslrootcert=system`` asks the OpenSSL that libpq
was linked with for its default paths; the OpenSSL bundled in ``psycopg[binary]`` looks in
``/usr/lib/psycopg-openssl`` (its build's OPENSSLDIR), which no distribution and no Lambda
runtime has, so every verification would fail. dbcreds therefore resolves "system" itself to a
PEM file: ``SSL_CERT_FILE`` if set, else the first bundle that exists among the distributions'
well-known paths (Debian/Ubuntu, Amazon Linux/RHEL/Fedora, SUSE, Alpine), else the Mozilla
bundle of ``certifi`` or of ``botocore`` (which ships one, and is wherever boto3 is). All hold
the Amazon roots that RDS Proxy's certificates chain to, and none holds the RDS CA.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import ConfigurationError

__all__ = [
    "SSLMODES",
    "SYSTEM",
    "TlsPolicy",
    "libpq_supports_policy",
    "login_tls",
    "system_trust_file",
]

logger = logging.getLogger("dbcreds.tls")

#: The sslmodes dbcreds accepts (``allow``/``prefer`` can fall back to plaintext silently).
SSLMODES = ("disable", "require", "verify-ca", "verify-full")
#: ``sslrootcert`` value meaning "the system trust store" (as in libpq >= 16).
SYSTEM: Literal["system"] = "system"

#: PEM bundles of the system trust store, by distribution (the list Go's crypto/x509 uses).
_SYSTEM_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Gentoo
    "/etc/pki/tls/certs/ca-bundle.crt",  # Amazon Linux (Lambda), Fedora, RHEL
    "/etc/ssl/ca-bundle.pem",  # openSUSE
    "/etc/pki/tls/cacert.pem",  # OpenELEC
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",  # CentOS, RHEL 7
    "/etc/ssl/cert.pem",  # Alpine
)

DefaultTrust = Literal["system"] | None


@dataclass(frozen=True)
class TlsPolicy:
    """What one login will do, as libpq parameters plus a description for logs and errors."""

    params: Mapping[str, Any] = field(default_factory=dict)
    #: the server's identity is checked against a CA (verify-ca / verify-full)
    verified: bool = False
    #: why this is weaker than the default (None: it is not); logged as a warning
    downgrade: str | None = None
    #: who chose the sslmode (a parameter, an environment variable, the default)
    source: str = "default"

    @property
    def sslmode(self) -> str:
        return str(self.params["sslmode"])

    def describe(self) -> str:
        """E.g. ``verify-full (CA /etc/ssl/certs/ca-certificates.crt)``; never a secret."""
        mode = self.sslmode
        if self.verified:
            return f"{mode} (CA {self.params['sslrootcert']})"
        if self.params.get("channel_binding") == "require":
            return f"{mode} with SCRAM channel binding"
        return mode


def system_trust_file(environ: Mapping[str, str] | None = None) -> str:
    """The PEM file of the system trust store (see the module docstring)."""
    env = os.environ if environ is None else environ
    configured = env.get("SSL_CERT_FILE", "").strip()
    if configured:
        if os.path.isfile(configured):
            return configured
        raise ConfigurationError(
            "SSL_CERT_FILE names no readable file: point it at a PEM bundle of trusted CAs, or "
            "set DBCREDS_SSLROOTCERT to the CA bundle of the server"
        )
    for path in _SYSTEM_BUNDLES:
        if os.path.isfile(path):
            return path
    for bundle in _mozilla_bundles():
        if os.path.isfile(bundle):
            return bundle
    raise ConfigurationError(
        "no system trust store was found (no CA bundle in the usual places, no certifi or "
        "botocore bundle): set DBCREDS_SSLROOTCERT (or sslrootcert=) to the CA bundle that "
        "signs the server's certificate, or SSL_CERT_FILE to a PEM bundle of trusted CAs"
    )


def _mozilla_bundles() -> list[str]:
    """Mozilla's roots as Python packages ship them, where the system has none: certifi's,
    then botocore's own copy (present wherever boto3 is, as on Lambda). Found without
    importing either (``find_spec`` only locates the package)."""
    import importlib.util

    found = []
    for package, name in (("certifi", "cacert.pem"), ("botocore", "cacert.pem")):
        spec = importlib.util.find_spec(package)
        for folder in (spec.submodule_search_locations or []) if spec else []:
            found.append(os.path.join(folder, name))
    return found


def libpq_supports_policy() -> bool:
    """True when the libpq psycopg uses knows ``require_auth`` (libpq >= 16)."""
    import psycopg

    return psycopg.pq.version() >= 160000


def login_tls(
    *,
    sslmode: str | None,
    sslrootcert: str | None,
    token: bool = False,
    default_trust: DefaultTrust = SYSTEM,
    source: str = "sslmode",
    what: str = "the credentials",
    ca_setting: str = "DBCREDS_SSLROOTCERT (or sslrootcert=)",
) -> TlsPolicy:
    """The TLS policy of a login (see the module docstring).

    :param sslmode: as configured (None: nothing configured).
    :param sslrootcert: a CA bundle path, ``system``, or None.
    :param token: the credential is an IAM auth token (sent as a cleartext password).
    :param default_trust: ``system``, or None where the system store cannot verify the
        server (the rotation's database endpoint).
    :param source: who set *sslmode*, for messages (e.g. ``DBCREDS_SSLMODE``).
    :param what: what is being protected, for messages (e.g. ``secret 'prod/app'``).
    :param ca_setting: where the operator names a CA bundle, for messages.
    """
    mode = sslmode.strip().lower() if sslmode else None
    if mode is not None and mode not in SSLMODES:
        raise ConfigurationError(
            f"{source}: sslmode must be one of {', '.join(SSLMODES)} (allow and prefer can fall "
            "back to plaintext without saying so)"
        )
    root = sslrootcert.strip() if sslrootcert else None
    if mode is None:
        if root is None and default_trust is None:
            mode, source = "require", "default without a CA"
        else:
            mode, source = "verify-full", "default"
    if mode in ("verify-ca", "verify-full"):
        trust = root or default_trust
        if trust is None:
            raise ConfigurationError(
                f"sslmode {mode} (from {source}) needs a CA bundle: set {ca_setting} to the RDS "
                "CA bundle for a database endpoint ('system' for RDS Proxy)"
            )
        cafile = system_trust_file() if trust == SYSTEM else trust
        params = {"sslmode": mode, "sslrootcert": cafile}
        if not token:
            params["require_auth"] = "scram-sha-256,md5"
        return TlsPolicy(params, verified=True, source=source)
    if token:
        raise ConfigurationError(
            f"{what}: an IAM auth token is sent as a cleartext password, so it needs a verified "
            f"server, but sslmode is {mode} (from {source}): use verify-full (the default) with "
            "the CA that signs the endpoint's certificate"
        )
    if mode == "require":
        return TlsPolicy(
            {"sslmode": "require", "channel_binding": "require", "require_auth": "scram-sha-256"},
            source=source,
        )
    return TlsPolicy(
        {"sslmode": "disable", "require_auth": "scram-sha-256"},
        downgrade=f"TLS is disabled (sslmode=disable from {source}): the connection is not "
        "encrypted and the server is not verified; use this for local development only",
        source=source,
    )


def tls_params_of(params: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(sslmode, sslrootcert) named in a login's parameters (conninfo merged in)."""
    mode = params.get("sslmode")
    root = params.get("sslrootcert")
    return (str(mode) if mode else None, str(root) if root else None)
