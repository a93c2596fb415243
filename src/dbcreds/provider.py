"""SecretProvider: the AWSCURRENT (and AWSPENDING) secret, cached, fetched once however many ask.

* **Cache.** A ``cachetools.TLRUCache`` keyed by staging label; each entry gets its own
  time-to-use, the TTL shortened by a random fraction (``jitter``) so that a fleet of Lambda
  containers started together does not refresh in lockstep.
* **Single flight.** One fetch per label at a time: every caller that finds the cache cold or
  expired while a fetch is under way waits for that fetch's result (a ``concurrent.futures.Future``)
  instead of calling Secrets Manager itself. ``refresh()`` forces a fetch, or joins the one in
  flight. (cachetools' own ``cached(condition=...)`` protects a stampede on *get*, but a
  refresh that joins a flight and a stale-if-error fallback need the flight state, so it lives
  here.)
* **No herd on refresh.** ``refresh(stale=s)`` fetches only if the provider still holds ``s``
  (the very object that failed to log in); when another thread already replaced it, that newer
  value is returned without a call. Many connections failing at once cause one refresh.
* **Stale-if-error.** When Secrets Manager is unreachable, throttles (after botocore's own
  retries) or fails on its side, the last good value is served for up to ``max_stale`` seconds,
  and the next attempt is pushed back with capped exponential backoff.
* **AWSPENDING.** ``get_pending()`` reads the pending version of a rotation in progress,
  ``None`` when there is none. It is the way through the single-user rotation window: between
  setSecret (the database's password changes) and finishSecret (AWSCURRENT moves), only the
  AWSPENDING value logs in.

Thread-safe: psycopg_pool calls the connect path, and so this provider, from its worker
threads (it calls conninfo/kwargs callables there, at every connection attempt).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from cachetools import TLRUCache

from . import telemetry
from ._aws import client_error_code, new_client, secret_call, translate_exception
from .errors import (
    DbcredsError,
    InvalidSecret,
    SecretNotFound,
    SecretsManagerUnavailable,
    raise_clean,
)
from .secret import AWSCURRENT, AWSPENDING, AWSPREVIOUS, DbSecret, check_key_map

# The staging labels are defined in dbcreds.secret; re-exported here (dbcreds.provider.AWSCURRENT).
__all__ = ["AWSCURRENT", "AWSPENDING", "AWSPREVIOUS", "SecretProvider"]

logger = logging.getLogger("dbcreds.provider")


@dataclass(frozen=True)
class _Entry:
    secret: DbSecret | None  # None: the label has no value (no rotation in progress)
    fetched_at: float  # clock() when the fetch that produced it started
    ttl: float


#: fetch(secret_id, stage) -> the GetSecretValue response (a dict), raising on error.
Fetcher = Callable[[str, str], dict[str, Any]]


class SecretProvider:
    """The database secret of one Secrets Manager secret, cached and shared.

    :param secret_id: name or ARN of the secret.
    :param client: a boto3 ``secretsmanager`` client to use as given; by default one is
        created on first use (region and endpoint from botocore's settings).
    :param ttl: seconds a fetched AWSCURRENT value is served before it is fetched again.
    :param jitter: fraction of ``ttl`` (0-1) by which each entry's life is randomly shortened.
    :param max_stale: how long past its fetch a value may still be served while Secrets
        Manager fails (stale-if-error); 0 disables it.
    :param pending_ttl: how long an AWSPENDING answer (or its absence) is reused.
    :param error_backoff: (first, cap) seconds between refetches while Secrets Manager fails.
    :param fetcher: ``fetch(secret_id, stage) -> GetSecretValue dict`` instead of boto3; one
        with a ``fetch_fresh`` method (a cache) has it called for forced refreshes. Without
        ``client`` and ``fetcher``: the Lambda extension / Secrets Manager Agent when one is
        configured, else boto3 (``dbcreds.extension``).
    :param wall: the wall clock (seconds since the epoch) that ``LastRotatedDate`` is compared
        with (`rotated_recently`).
    :param keys: the secret's own key names where they differ from the RDS format's, as
        ``{field: key}`` (``{"username": "user"}``; see ``secret.check_key_map``).
    """

    def __init__(
        self,
        secret_id: str,
        client: Any = None,
        ttl: float = 300.0,
        *,
        jitter: float = 0.1,
        max_stale: float = 3600.0,
        pending_ttl: float = 1.0,
        error_backoff: tuple[float, float] = (0.5, 30.0),
        fetcher: Fetcher | None = None,
        clock: Callable[[], float] = time.monotonic,
        keys: Mapping[str, str] | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if not secret_id:
            raise ValueError("secret_id is required")
        self.keys = check_key_map(keys or {})
        if ttl < 0 or not 0.0 <= jitter < 1.0:
            raise ValueError("ttl must be >= 0 and jitter in [0, 1)")
        self.secret_id = secret_id
        self.ttl = float(ttl)
        self.jitter = float(jitter)
        self.max_stale = float(max_stale)
        self.pending_ttl = float(pending_ttl)
        self.error_backoff = error_backoff
        self._client = client
        self._fetcher = fetcher
        self._clock = clock
        self._wall = wall
        self._rotated_at_checked: tuple[float, float | None] | None = None
        self._lock = threading.Lock()
        self._cache: TLRUCache[str, _Entry] = TLRUCache(
            maxsize=8, ttu=lambda _key, entry, now: now + entry.ttl, timer=clock
        )
        self._last_good: dict[str, _Entry] = {}
        self._flights: dict[str, Future[_Entry]] = {}
        self._error_streak = 0
        self._changed_at: float | None = None
        self._stats = {
            "fetches": 0, "fetch_errors": 0, "cache_hits": 0, "joined_flights": 0,
            "stale_served": 0, "version_changes": 0,
        }

    def __repr__(self) -> str:
        return f"SecretProvider(secret_id={self.secret_id!r}, version_id={self.version_id!r})"

    # -- public API ---------------------------------------------------------------------

    def get(self) -> DbSecret:
        """The AWSCURRENT secret: from the cache, or fetched once for all concurrent callers."""
        secret = self._get(AWSCURRENT, force=False, stale=None)
        assert secret is not None
        return secret

    def refresh(self, stale: DbSecret | None = None) -> DbSecret:
        """Fetch AWSCURRENT now (or join the fetch in flight) and return it.

        With ``stale`` (the value that just failed), fetch only if the provider still holds
        that very value: when another caller has already replaced it, return the newer one.
        """
        secret = self._get(AWSCURRENT, force=True, stale=stale)
        assert secret is not None
        return secret

    def get_pending(self, stale: DbSecret | None = None) -> DbSecret | None:
        """The AWSPENDING secret of a rotation in progress, or None when there is none.

        Cached for ``pending_ttl`` seconds so that a burst of failing logins asks once.
        ``stale`` works as for `refresh`.
        """
        return self._get(AWSPENDING, force=stale is not None, stale=stale)

    def prepare(self) -> None:
        """Choose the transport and, when it is boto3, create the client now (no request).

        `dbcreds.prefetch` calls it in the caller's thread: the client's creation is CPU work
        that the first request waits for. A configuration error is raised as `get` would.
        """
        if self._default_fetcher() == self._get_secret_value:
            self._create_client()

    def invalidate(self) -> None:
        """Forget every cached value (the next `get` fetches). Used after a SnapStart restore."""
        with self._lock:
            self._cache.clear()
            self._last_good.clear()

    @property
    def version_id(self) -> str | None:
        """Version id of the AWSCURRENT value held now (None before the first fetch)."""
        with self._lock:
            entry = self._last_good.get(AWSCURRENT)
        return entry.secret.version_id if entry and entry.secret else None

    def changed_recently(self, within: float) -> bool:
        """True when the secret was rotated within ``within`` s: AWSCURRENT's version changed
        as this provider saw it, or, for a provider that has seen only one version (a
        container started during a rotation's tail, while RDS Proxy still serves the old
        password), Secrets Manager's ``LastRotatedDate`` says so (`rotated_recently`)."""
        changed = self._changed_at
        if changed is not None and self._clock() - changed <= within:
            return True
        return self.rotated_recently(within)

    def rotated_recently(self, within: float) -> bool:
        """Secrets Manager's ``LastRotatedDate`` (DescribeSecret) is within ``within`` s of
        now (wall clock). Asked only through boto3 (the extension has no DescribeSecret), at
        most once per ``pending_ttl`` s; False when it cannot be asked (no permission, another
        transport, Secrets Manager failing). A ``PutSecretValue`` by hand is not a rotation:
        a wrong password written a moment ago still fails at once."""
        now = self._clock()
        with self._lock:  # one DescribeSecret at a time: the others use the last answer
            asked = self._rotated_at_checked
            due = asked is None or now - asked[0] >= self.pending_ttl
            rotated = asked[1] if asked is not None else None
            if due:
                self._rotated_at_checked = (now, rotated)  # claimed: no second caller asks
        if due:
            rotated = self._last_rotated()
            with self._lock:
                self._rotated_at_checked = (now, rotated)
        return rotated is not None and -within <= self._wall() - rotated <= within

    def _last_rotated(self) -> float | None:
        if self._fetcher is None or self._fetcher != self._get_secret_value:
            return None  # the extension, the Agent or a fetcher of the caller's: no DescribeSecret
        try:
            with secret_call():
                answer = self._create_client().describe_secret(SecretId=self.secret_id)
        except Exception as exc:  # a bonus: without it a refusal is simply not a rotation
            logger.debug("DescribeSecret of %r failed: %s", self.secret_id,
                         client_error_code(exc) or type(exc).__name__)
            return None
        stamp = getattr(answer.get("LastRotatedDate"), "timestamp", None)
        return float(stamp()) if callable(stamp) else None

    def get_stats(self) -> dict[str, Any]:
        """Counters (fetches, cache hits, joined flights, stale values served, ...)."""
        with self._lock:
            stats: dict[str, Any] = dict(self._stats)
        stats["version_id"] = self.version_id
        return stats

    # -- the flight ---------------------------------------------------------------------

    def _get(self, stage: str, *, force: bool, stale: DbSecret | None) -> DbSecret | None:
        flight: Future[_Entry] | None = None
        leader = False
        with self._lock:  # one decision: a hit, a flight to join, or a flight to lead
            entry = self._cache.get(stage)
            hit = entry is not None and (
                not force or (stale is not None and entry.secret is not stale)
            )
            if hit:
                self._stats["cache_hits"] += 1
            else:
                flight = self._flights.get(stage)
                leader = flight is None
                if flight is None:
                    flight = self._flights[stage] = Future()
                else:
                    self._stats["joined_flights"] += 1
        if hit:  # reported outside the lock (a sink may write a line)
            telemetry.count(telemetry.CACHE_HITS, {"stage": stage})
            assert entry is not None
            return entry.secret
        assert flight is not None
        if not leader:
            return flight.result().secret
        try:
            entry = self._load(stage, fresh=force)
        except BaseException as exc:
            with self._lock:
                del self._flights[stage]
            flight.set_exception(exc)
            raise
        with self._lock:
            self._cache[stage] = entry
            del self._flights[stage]
        flight.set_result(entry)
        return entry.secret

    def _load(self, stage: str, fresh: bool = False) -> _Entry:
        """Fetch one label (only ever called by the flight's leader)."""
        started = self._clock()
        if fresh and stage == AWSCURRENT:
            telemetry.count(telemetry.REFRESHES)
        try:
            secret = self._fetch(stage, fresh)
        except SecretNotFound:
            if stage == AWSPENDING:  # no rotation in progress (or no value put yet)
                return _Entry(None, started, self._jittered(self.pending_ttl))
            raise
        except SecretsManagerUnavailable as exc:
            return self._stale_or_raise(stage, exc)
        ttl = self.ttl if stage == AWSCURRENT else self.pending_ttl
        entry = _Entry(secret, started, self._jittered(ttl))
        with self._lock:
            self._error_streak = 0
            if stage == AWSCURRENT:
                previous = self._last_good.get(AWSCURRENT)
                if previous and previous.secret and previous.secret.version_id != secret.version_id:
                    self._changed_at = started
                    self._stats["version_changes"] += 1
            self._last_good[stage] = entry
        return entry

    def _stale_or_raise(self, stage: str, exc: SecretsManagerUnavailable) -> _Entry:
        now = self._clock()
        with self._lock:
            last = self._last_good.get(stage)
            if last is None or not 0 <= now - last.fetched_at <= self.max_stale:
                raise exc
            self._error_streak += 1
            first, cap = self.error_backoff
            backoff = min(cap, first * 2 ** (self._error_streak - 1))
            self._stats["stale_served"] += 1
        telemetry.count(telemetry.STALE_SERVED, {"stage": stage})
        logger.warning(
            "Secrets Manager failed for secret %r (%s); serving the cached %s value "
            "(%.0f s old) and retrying in %.1f s",
            self.secret_id, exc.code, stage, now - last.fetched_at, backoff,
        )
        return _Entry(last.secret, last.fetched_at, self._jittered(backoff))

    def _jittered(self, seconds: float) -> float:
        return seconds * (1.0 - self.jitter * random.random())

    # -- Secrets Manager ----------------------------------------------------------------

    def _fetch(self, stage: str, fresh: bool = False) -> DbSecret:
        with telemetry.span("dbcreds.secret.fetch",
                            {"dbcreds.secret_id": self.secret_id, "dbcreds.stage": stage}):
            t0 = time.perf_counter()
            outcome = "error"
            try:
                secret = self._fetch_once(stage, fresh)
                outcome = "ok"
                return secret
            finally:
                elapsed = time.perf_counter() - t0
                telemetry.count(telemetry.FETCHES, {"stage": stage, "outcome": outcome})
                telemetry.observe(telemetry.FETCH_DURATION, elapsed, {"stage": stage})

    def _fetch_once(self, stage: str, fresh: bool) -> DbSecret:
        t0 = time.perf_counter()
        with self._lock:
            self._stats["fetches"] += 1
        fetch = self._fetcher or self._default_fetcher()
        if fresh:  # forced: a cache in front of Secrets Manager (the extension) is bypassed
            fetch = getattr(fetch, "fetch_fresh", fetch)
        try:
            response = fetch(self.secret_id, stage)
        except DbcredsError:
            self._count_error()
            raise
        except Exception as exc:
            self._count_error()
            translated = translate_exception(exc, self.secret_id, stage)
            if client_error_code(exc) is not None:
                raise translated from exc  # the service's answer: no secret in it
            # Anything else (botocore's HTTPClientError, a ValueError from http.client) may
            # quote a request header, the session token: named by type only, not chained.
            raise_clean(translated)
        secret = self._parse(response)
        logger.debug(
            "fetched %s of secret %r (version %s) in %.1f ms",
            stage, self.secret_id, secret.version_id, (time.perf_counter() - t0) * 1000,
        )
        return secret

    def _count_error(self) -> None:
        with self._lock:
            self._stats["fetch_errors"] += 1

    def _default_fetcher(self) -> Fetcher:
        """boto3, or the Lambda extension / Secrets Manager Agent when one is configured and no
        client was given: chosen once, at the first fetch (see ``dbcreds.extension``)."""
        with self._lock:
            if self._fetcher is None:
                if self._client is not None:
                    self._fetcher = self._get_secret_value
                else:
                    from .extension import auto_fetcher

                    self._fetcher = auto_fetcher(self._get_secret_value)
            return self._fetcher

    def _get_secret_value(self, secret_id: str, stage: str) -> dict[str, Any]:
        client = self._client or self._create_client()
        with secret_call():
            # VersionStage always explicit: moto keeps answering the old version to a call
            # without it after UpdateSecretVersionStage (and naming the stage is right on AWS).
            response: dict[str, Any] = client.get_secret_value(
                SecretId=secret_id, VersionStage=stage
            )
        return response

    def _create_client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = new_client("secretsmanager")
            return self._client

    def _parse(self, response: dict[str, Any]) -> DbSecret:
        version_id = response.get("VersionId")
        secret_string = response.get("SecretString")
        if secret_string is None:
            reason = (
                "is binary (SecretBinary); dbcreds needs a JSON SecretString"
                if response.get("SecretBinary") is not None
                else "has no SecretString"
            )
            raise InvalidSecret(self.secret_id, None, reason)
        return DbSecret.from_json(secret_string, secret_id=self.secret_id, version_id=version_id,
                                  keys=self.keys)
