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
``verify-full``     as asked, against ``sslrootcert`` or the default trust.
``verify-ca``       the certificate is checked against the CA, not the host name: a weaker
                    setting, logged as a warning. It needs an explicit CA bundle (with the
                    system store any holder of any public certificate would pass), a password
                    login also demands SCRAM channel binding, and IAM tokens are refused.
``require``         TLS without a CA. A password login then demands SCRAM with channel binding
                    (``channel_binding=require``): the server must prove that it holds the
                    password's SCRAM verifier over this very TLS session, so a man in the middle
                    can neither relay the login nor replay what it sees (an impostor answering
                    the exchange itself could only guess the password offline, which the long
                    random passwords of rotation defeat). An IAM token is sent as a cleartext
                    password: refused (`ConfigurationError`).
``disable``         no TLS: an explicit downgrade, for local development only. Logged as a
                    warning (by the pools at every start). Through libpq a password still
                    never travels in clear (SCRAM only); asyncpg, which has no libpq, sends it
                    in clear if the server asks (its warning says so); an IAM token is refused.
``allow``,          refused: they fall back to plaintext without saying so.
``prefer``
==================  ============================================================================

A password login never accepts a cleartext password exchange (libpq's ``require_auth``:
SCRAM-SHA-256 or MD5 under verify-full; SCRAM only otherwise), so a server that asks for the
password in clear gets nothing, whatever its certificate. Logins over a Unix-domain socket
(a host that is a path, or empty) are refused unless TLS is explicitly disabled: libpq never
uses TLS there, and whoever can create the socket file would receive the login. GSSAPI
encryption is switched off (``gssencmode=disable``): TLS is the one channel dbcreds checks.
``PGSSLROOTCERT`` (libpq's own variable) counts as a configured CA bundle; ``PGSSLMODE``
is never read (the policy always sets ``sslmode``).

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
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import ConfigurationError

__all__ = [
    "ASYNCPG",
    "PSYCOPG",
    "SSLMODES",
    "SYSTEM",
    "TlsClient",
    "TlsPolicy",
    "check_hosts",
    "libpq_supports_policy",
    "login_tls",
    "require_libpq_support",
    "ssl_context",
    "system_trust_file",
]

logger = logging.getLogger("dbcreds.tls")

#: The sslmodes dbcreds accepts, from the weakest to the strongest (``allow``/``prefer`` can
#: fall back to plaintext silently).
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
#: GSSAPI encryption off: TLS is the one channel the policy checks
_NO_GSS = {"gssencmode": "disable"}


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


def _psycopg_libpq() -> int:
    import psycopg

    return psycopg.pq.version()


@dataclass(frozen=True)
class TlsClient:
    """The client library a login goes through, as far as the TLS policy cares.

    :param name: for messages (``psycopg``, ``psycopg2``, ``asyncpg``).
    :param libpq_version: the version of the libpq it uses (e.g. 170004), or None for a
        driver that speaks the protocol itself (asyncpg): such a driver has neither
        ``require_auth`` nor SCRAM channel binding, so it may only log in to a server whose
        certificate it verified (``verify-full``), or with TLS explicitly disabled.
    """

    name: str
    libpq_version: Callable[[], int] | None


#: psycopg 3 (the pools, ``get_connection()``, the rotation, SQLAlchemy, Django)
PSYCOPG = TlsClient("psycopg", _psycopg_libpq)
#: asyncpg: no libpq; the policy becomes an ``ssl.SSLContext`` (`ssl_context`)
ASYNCPG = TlsClient("asyncpg", None)


def libpq_supports_policy(client: TlsClient = PSYCOPG) -> bool:
    """True when the libpq *client* uses knows ``require_auth`` (libpq >= 16)."""
    version = client.libpq_version
    return version is not None and version() >= 160000


def require_libpq_support(client: TlsClient = PSYCOPG) -> None:
    """Refuse a libpq that cannot enforce the policy (no ``require_auth``, libpq < 16)."""
    version = client.libpq_version
    if version is not None and not libpq_supports_policy(client):
        hint = {
            "psycopg": "install psycopg[binary] (it bundles a recent libpq) or a newer libpq",
            "psycopg2": "install psycopg2-binary 2.9.10 or later (it bundles libpq 17), or "
            "build psycopg2 against a newer libpq",
        }.get(client.name, "use a build linked with libpq 16 or later")
        raise ConfigurationError(
            f"dbcreds needs libpq 16 or later (require_auth, channel_binding), but "
            f"{client.name} uses libpq {version()}: {hint}"
        )


def ssl_context(policy: TlsPolicy) -> ssl.SSLContext | None:
    """The policy as an ``ssl.SSLContext`` for a driver without libpq (asyncpg), or None
    when TLS is disabled. Only verified policies (`TlsPolicy.verified`) have one: `login_tls`
    with a client without libpq returns no other."""
    if policy.sslmode == "disable":
        return None
    if not policy.verified:  # pragma: no cover - login_tls refuses it for such a client
        raise ConfigurationError(f"TLS {policy.describe()} cannot be expressed as an SSLContext")
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                         cafile=str(policy.params["sslrootcert"]))
    context.check_hostname = policy.sslmode == "verify-full"
    return context


def check_hosts(params: Mapping[str, Any], policy: TlsPolicy) -> None:
    """Refuse a login over a Unix-domain socket unless TLS was explicitly disabled.

    libpq never negotiates TLS on a socket, whatever the sslmode, so a host that is a path
    (or ``@abstract``, or empty: libpq's default socket) would get the login in clear.
    """
    if policy.sslmode == "disable":
        return
    hosts = str(params.get("host") or "").split(",")
    if params.get("hostaddr"):
        return  # libpq connects to hostaddr over TCP; host is the name TLS checks
    for host in hosts:
        host = host.strip()
        if not host or host.startswith(("/", "@")):
            raise ConfigurationError(
                "a login over a Unix-domain socket (a host that is a path, or no host) cannot "
                "use TLS, so dbcreds refuses it: give the server's host name (sslmode=disable "
                "is the explicit, logged way for a local socket in development)"
            )


def login_tls(
    *,
    sslmode: str | None,
    sslrootcert: str | None,
    token: bool = False,
    default_trust: DefaultTrust = SYSTEM,
    source: str = "sslmode",
    what: str = "the credentials",
    ca_setting: str = "DBCREDS_SSLROOTCERT (or sslrootcert=)",
    client: TlsClient = PSYCOPG,
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
    :param client: the driver that logs in (`PSYCOPG`, `ASYNCPG`, or psycopg2's); one
        without libpq can neither demand SCRAM channel binding nor refuse a cleartext password
        request, so for a password it gets ``verify-full`` or an explicit ``disable`` only.
    """
    require_libpq_support(client)
    mode = sslmode.strip().lower() if sslmode else None
    if mode is not None and mode not in SSLMODES:
        raise ConfigurationError(
            f"{source}: sslmode must be one of {', '.join(SSLMODES)} (allow and prefer can fall "
            "back to plaintext without saying so)"
        )
    root = (sslrootcert or os.environ.get("PGSSLROOTCERT") or "").strip() or None
    if mode is None:
        if root is None and default_trust is None:
            mode, source = "require", "default without a CA"
        else:
            mode, source = "verify-full", "default"
    libpq = client.libpq_version is not None
    if not libpq and mode in ("require", "verify-ca"):
        raise ConfigurationError(
            f"{what}: sslmode {mode} (from {source}) does not verify the server's identity, and "
            f"{client.name} can neither demand SCRAM channel binding nor refuse a cleartext "
            "password request, so the password could reach an impostor: use verify-full (the "
            f"default) with the CA that signs the server's certificate ({ca_setting})"
        )
    if mode in ("verify-ca", "verify-full"):
        trust = root or default_trust
        if trust is None:
            raise ConfigurationError(
                f"sslmode {mode} (from {source}) needs a CA bundle: set {ca_setting} to the RDS "
                "CA bundle for a database endpoint ('system' for RDS Proxy)"
            )
        cafile = system_trust_file() if trust == SYSTEM else trust
        if mode == "verify-full":
            params = {"sslmode": mode, "sslrootcert": cafile, **_NO_GSS}
            if not token and libpq:
                params["require_auth"] = "scram-sha-256,md5"
            return TlsPolicy(params, verified=True, source=source)
        if token or trust == SYSTEM:
            raise ConfigurationError(
                f"{what}: sslmode verify-ca (from {source}) checks the certificate's CA but not "
                "the host name: " + ("an IAM auth token needs verify-full" if token else
                "with the system trust store any holder of any public certificate would pass; "
                f"use verify-full, or give the server's own CA bundle ({ca_setting})")
            )
        return TlsPolicy(
            {"sslmode": mode, "sslrootcert": cafile, "channel_binding": "require",
             "require_auth": "scram-sha-256", **_NO_GSS},
            verified=True,
            downgrade=f"sslmode=verify-ca (from {source}) does not check the server's host "
            "name; SCRAM channel binding is required instead",
            source=source,
        )
    if token:
        raise ConfigurationError(
            f"{what}: an IAM auth token is sent as a cleartext password, so it needs a verified "
            f"server, but sslmode is {mode} (from {source}): use verify-full (the default) with "
            "the CA that signs the endpoint's certificate"
        )
    if mode == "require":
        return TlsPolicy(
            {"sslmode": "require", "channel_binding": "require", "require_auth": "scram-sha-256",
             **_NO_GSS},
            source=source,
        )
    return TlsPolicy(
        {"sslmode": "disable", **({"require_auth": "scram-sha-256"} if libpq else {}), **_NO_GSS},
        downgrade=f"TLS is disabled (sslmode=disable from {source}): the connection is not "
        "encrypted and the server is not verified; use this for local development only"
        + ("" if libpq else f" ({client.name} sends the password in clear if the server asks)"),
        source=source,
    )


def tls_params_of(params: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(sslmode, sslrootcert) named in a login's parameters (conninfo merged in)."""
    mode = params.get("sslmode")
    root = params.get("sslrootcert")
    return (str(mode) if mode else None, str(root) if root else None)
