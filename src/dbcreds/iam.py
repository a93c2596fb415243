"""RDS IAM database authentication: auth tokens as the credentials of a pool.

`IamAuthSource` is a ``login.CredentialSource``: it hands the pools a `DbSecret` whose
password is an RDS IAM auth token, generated with boto3's ``rds`` client
``generate_db_auth_token(DBHostname, Port, DBUsername, Region)`` for the RDS Proxy or database
endpoint. It plugs into `CredentialPool` / ``AsyncCredentialPool`` like a `SecretProvider`.

* **Local, cheap, but not free.** A token is a SigV4-presigned URL computed on this machine
  (no call to RDS); it needs the function's AWS credentials (which may be fetched from the
  Lambda/container credentials endpoint) and is valid for 15 minutes, only to *log in*: an
  established connection is not affected when its token expires.
* **Cache and renewal.** A token is reused for ``renew_after`` seconds (10 minutes by default,
  of its 15) and renewed at the first use after that, well before it expires. A refusal makes
  the pool ask for a new one (``refresh``), once for all connections refused together.
* **Single flight.** Generation happens under a lock: concurrent callers that find the token
  old wait for the one generation and share its result.
* **TLS.** A token is sent as a cleartext password and is replayable for 15 minutes, so it
  goes only to a server whose certificate is verified (``credential_kind = "token"`` tells the
  pools' TLS policy, ``dbcreds.tls``): ``verify-full`` against the system trust store by
  default (RDS Proxy's certificates chain to public Amazon roots), or against the CA bundle
  given as ``sslrootcert`` (the RDS CA bundle for a database endpoint). ``require`` and
  ``disable`` are refused with a `ConfigurationError` when the pool is built. The source also
  has the last word on each login's endpoint (``login.ConnectParamsPolicy``): it refuses a
  host/port other than the one the token is signed for.
* **No token in logs.** botocore logs the SigV4 signature at DEBUG; generation runs inside
  ``_aws.secret_call()``, which withholds those records. `DbSecret` never shows its password.

Behind RDS Proxy, IAM authentication covers the client -> proxy login only: the proxy still
logs in to the database with the Secrets Manager secret (and keeps rotating it). A rotation
therefore shows up here as the proxy's own login failing for a moment, which the login policy
retries within its budget as for password logins.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._aws import new_client, secret_call
from .errors import ConfigurationError
from .secret import DbSecret

__all__ = ["TOKEN_LIFETIME", "IamAuthSource"]

logger = logging.getLogger("dbcreds.iam")

#: Seconds an RDS IAM auth token is valid for (X-Amz-Expires=900).
TOKEN_LIFETIME = 900.0


@dataclass(frozen=True)
class _Token:
    secret: DbSecret
    issued_at: float  # clock() at generation


class IamAuthSource:
    """Credentials made of RDS IAM auth tokens for ``username`` at ``host:port``.

    :param host, port: the endpoint the token is signed for and the pool connects to: the
        RDS Proxy endpoint (proxy IAM authentication) or the DB instance/cluster endpoint.
    :param username: the database user (for RDS: a role granted ``rds_iam``).
    :param dbname: database to connect to.
    :param region: AWS region of the endpoint; default: the client's (botocore's settings:
        ``AWS_DEFAULT_REGION``, which Lambda sets).
    :param client: a boto3 ``rds`` client; by default one is created on first use.
    :param renew_after: seconds a token is reused before a new one is generated (must be
        shorter than its 15-minute life; default 600).
    :param clock: monotonic clock (tests inject one).
    """

    #: The credential is a token sent as a cleartext password: only to verified servers.
    credential_kind = "token"

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        *,
        dbname: str = "postgres",
        region: str | None = None,
        client: Any = None,
        renew_after: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not host or not username:
            raise ValueError("host and username are required")
        if not 0 < renew_after < TOKEN_LIFETIME:
            raise ValueError(f"renew_after must be in (0, {TOKEN_LIFETIME:.0f}) seconds")
        self.host = host
        self.port = int(port)
        self.username = username
        self.dbname = dbname
        self.region = region
        self.renew_after = float(renew_after)
        self.secret_id = f"iam:{username}@{host}:{self.port}"
        self._client = client
        self._clock = clock
        self._lock = threading.Lock()
        self._token: _Token | None = None
        self._stats = {"tokens": 0, "cache_hits": 0, "renewals": 0, "refreshes": 0}

    def __repr__(self) -> str:
        return (
            f"IamAuthSource(host={self.host!r}, port={self.port}, username={self.username!r}, "
            f"dbname={self.dbname!r}, region={self.region!r})"
        )

    # -- CredentialSource -----------------------------------------------------------------

    def get(self) -> DbSecret:
        """The current token's credentials; a new token once the current one is
        ``renew_after`` seconds old (one generation however many callers ask)."""
        with self._lock:
            token = self._token
            if token is not None and self._clock() - token.issued_at < self.renew_after:
                self._stats["cache_hits"] += 1
                return token.secret
            if token is not None:
                self._stats["renewals"] += 1
            return self._generate().secret

    def refresh(self, stale: DbSecret | None = None) -> DbSecret:
        """A new token, unless another caller already replaced *stale* (no herd)."""
        with self._lock:
            token = self._token
            if stale is not None and token is not None and token.secret is not stale:
                self._stats["cache_hits"] += 1
                return token.secret
            self._stats["refreshes"] += 1
            return self._generate().secret

    def get_pending(self, stale: DbSecret | None = None) -> DbSecret | None:
        """IAM tokens have no pending version."""
        return None

    def changed_recently(self, within: float) -> bool:
        """A new token is not a new password: never the tail of a rotation."""
        return False

    def invalidate(self) -> None:
        """Forget the cached token (SnapStart: no token survives a snapshot)."""
        with self._lock:
            self._token = None

    def get_stats(self) -> dict[str, Any]:
        """Counters: tokens generated, cache hits, renewals (age), refreshes (refusals)."""
        with self._lock:
            stats: dict[str, Any] = dict(self._stats)
            token = self._token
        stats["token_age"] = None if token is None else self._clock() - token.issued_at
        return stats

    # -- ConnectParamsPolicy --------------------------------------------------------------

    def connect_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """Keep each login on the endpoint the token is signed for, over verified TLS.

        The pools' TLS policy (``dbcreds.tls``) already sets verify-full for a token source;
        this is the source's own, second check that nothing lowered it on the way.
        """
        if params.get("sslmode") != "verify-full":
            raise ConfigurationError(
                f"the IAM auth tokens of {self.secret_id!r} go only to a server verified with "
                f"sslmode=verify-full, not {params.get('sslmode')!r}"
            )
        host = params.get("host")
        port = params.get("port")
        if (host is not None and str(host) != self.host) or (
            port is not None and str(port) != str(self.port)
        ):
            raise ConfigurationError(
                f"the IAM auth tokens of {self.secret_id!r} are signed for "
                f"{self.host}:{self.port}, but the pool connects to {host}:{port}: give the "
                "source the endpoint the pool connects to"
            )
        return params

    # -- tokens ---------------------------------------------------------------------------

    def _generate(self) -> _Token:
        """A new token (called with the lock held: the single flight)."""
        client = self._client
        if client is None:
            try:
                client = new_client("rds", **({"region_name": self.region} if self.region else {}))
            except Exception as exc:
                if type(exc).__name__ != "NoRegionError":
                    raise
                client = None
            self._client = client
        region = self.region or (client.meta.region_name if client is not None else None)
        if client is None or not region:
            raise ConfigurationError(
                f"no AWS region for the IAM auth tokens of {self.secret_id!r}: set "
                "AWS_DEFAULT_REGION (Lambda sets it) or pass region="
            )
        issued = self._clock()
        with secret_call():  # botocore logs the SigV4 signature at DEBUG
            token: str = client.generate_db_auth_token(
                DBHostname=self.host, Port=self.port, DBUsername=self.username, Region=region
            )
        self._stats["tokens"] += 1
        secret = DbSecret(
            username=self.username,
            password=token,
            host=self.host,
            port=self.port,
            dbname=self.dbname,
            version_id=f"iam-token-{self._stats['tokens']}",
            secret_id=self.secret_id,
        )
        self._token = _Token(secret, issued)
        logger.debug("generated an IAM auth token for %s (region %s)", self.secret_id, region)
        return self._token
