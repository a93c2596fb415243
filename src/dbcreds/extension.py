"""The extension transport: secrets from the Lambda extension or the Secrets Manager Agent.

The AWS Parameters and Secrets Lambda Extension (a Lambda layer) and the AWS Secrets Manager
Agent (EC2, ECS, EKS, or packaged as a Lambda extension) both answer, on localhost,

    GET /secretsmanager/get?secretId=<id>&versionStage=<stage>
    X-Aws-Parameters-Secrets-Token: <token>

with the GetSecretValue JSON (``ARN``, ``Name``, ``VersionId``, ``SecretString``,
``VersionStages``, ``CreatedDate``), from their own in-memory cache. Talking to them needs only
``http.client``: a process whose secret comes this way never imports boto3 (about half of a
Python Lambda's cold start with the SDK, see benchmarks/README.md).

**Which transport** (`auto_fetcher`, asked once per `SecretProvider` that was given neither a
``client`` nor a ``fetcher``), by ``DBCREDS_SECRETS_TRANSPORT``:

* ``sdk``: boto3, always.
* ``extension``: the extension, even if nothing below detects it.
* ``auto`` (default): the extension when ``PARAMETERS_SECRETS_EXTENSION_HTTP_PORT`` is set
  (the Lambda extension's own setting) or when an executable named like the layer or the Agent
  (``*ParametersAndSecrets*``, ``*secrets*manager*agent*``, any case) is in
  ``/opt/extensions``; boto3 otherwise.

Either way the extension needs a token: ``AWS_SESSION_TOKEN`` (always set in Lambda), else
``AWS_TOKEN`` (the Agent's default; ``file://PATH`` reads it from a file); with
``DBCREDS_SECRETS_AGENT=yes``, the Agent's order instead (below). Without one, boto3.
The port is ``PARAMETERS_SECRETS_EXTENSION_HTTP_PORT``, default 2773.

**Bad settings are errors**, never a silent default: a ``DBCREDS_SECRETS_TRANSPORT`` other than
the three above, a ``DBCREDS_SECRETS_AGENT`` other than auto, yes or no, a port outside
1-65535, a ``SECRETS_MANAGER_TTL`` that is not a finite number >= 0, a token that is not
printable ASCII (a line break would let ``http.client`` quote the token in its error) are each
a `ConfigurationError` naming the variable, not its value.

**Falling back.** When the extension does not answer (connection refused or reset, timeout,
not HTTP), that fetch is made with boto3 instead, and boto3 stays in use for ``retry_after``
seconds (60) before the extension is tried again: a missing layer costs one refused
connection per minute, not one per fetch.

**Bypassing its cache.** Both serve what they cached for up to their TTL
(``SECRETS_MANAGER_TTL``, 300 s by default). That is right for the cold start and for the
provider's TTL refreshes, and wrong exactly when a login was just refused with the value
served (a rotation): `ExtensionTransport.fetch_fresh` (the provider's forced refresh) and every
read of another stage than AWSCURRENT (AWSPENDING is read only on a refused login) must come
from Secrets Manager itself. Two ways, chosen per server:

* **refreshNow** (the Secrets Manager Agent since 1.1.0): the same GET with
  ``&refreshNow=true``; the Agent calls GetSecretValue for that stage whatever it cached, stores
  the answer in its cache and returns it (an error, never its cached value, when Secrets
  Manager fails). No boto3 at all, and the Agent's cache is as fresh as ours afterwards.
* **boto3** (the Lambda extension, which documents no such parameter; an Agent before 1.1.0,
  which refuses it with 400 "unknown parameter: refreshNow"): the read goes to Secrets Manager
  through boto3; after such a fresh AWSCURRENT read the secret stays on boto3 for the
  extension's TTL, so that the extension's older copy is never taken back.

Which one, by ``DBCREDS_SECRETS_AGENT``:

* ``auto`` (default): asked once, at the first fresh read, with
  ``&refreshNow=dbcreds-probe`` (never a value of ``true``): the Agent parses ``refreshNow``
  strictly and answers exactly 400 "invalid refreshNow value" before it looks at its cache or
  at Secrets Manager; only that answer enables refreshNow. An Agent before 1.1.0 (400 unknown
  parameter) or a server that ignores the parameter (200) gets boto3 from then on; an answer
  that says nothing (403, 429, 5xx, nothing listening) gets boto3 for this read and the
  question again at the next. A server that ignored ``refreshNow`` is thus never taken to have
  refetched.
* ``yes``: the server is the Agent (1.1.0 or later): refreshNow without asking, and the token
  is looked up in the Agent's own order (``AWS_TOKEN``, ``AWS_SESSION_TOKEN``,
  ``AWS_CONTAINER_AUTHORIZATION_TOKEN``). An answer refusing the parameter still means boto3.
* ``no``: never refreshNow (boto3, as before refreshNow existed).

**Errors** become dbcreds' typed errors, by the table the SDK path uses too
(``dbcreds._aws.translate``): ``ResourceNotFoundException`` (or HTTP 404) -> `SecretNotFound`;
HTTP 401/403 (a token the extension refused) and AWS's access-denied codes ->
`SecretAccessDenied`; throttling, HTTP 429 and 5xx -> `SecretsManagerUnavailable`. Nothing of a
response body but the AWS error code ever reaches a message or a log.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

from . import _env
from ._aws import EXTENSION_TOKEN_HEADER, translate
from .errors import ConfigurationError, DbcredsError, SecretsManagerUnavailable, raise_clean
from .secret import AWSCURRENT

__all__ = [
    "DEFAULT_PORT",
    "ExtensionTransport",
    "ExtensionUnreachable",
    "RefreshNowRefused",
    "auto_fetcher",
    "extension_configured",
]

logger = logging.getLogger("dbcreds.extension")

DEFAULT_PORT = 2773
TOKEN_HEADER = EXTENSION_TOKEN_HEADER
#: Where Lambda layers put extensions (a module attribute so that tests can point it elsewhere).
EXTENSIONS_DIR = "/opt/extensions"
_TRANSPORTS = ("auto", "sdk", "extension")
_AGENT_MODES = ("auto", "yes", "no")
#: Where each server looks for its token, in order (the Agent: its ``ssrf_env_variables``
#: default, aws_secretsmanager_agent/src/config.rs).
_TOKEN_VARIABLES = ("AWS_SESSION_TOKEN", "AWS_TOKEN")
_AGENT_TOKEN_VARIABLES = ("AWS_TOKEN", "AWS_SESSION_TOKEN", "AWS_CONTAINER_AUTHORIZATION_TOKEN")
#: The probe's refreshNow value: anything but true/false/1/0 (any case), which the Agent accepts.
PROBE_VALUE = "dbcreds-probe"
#: What the Agent (1.1.0+) answers, with HTTP 400, to a refreshNow value it cannot parse, and
#: (every version) to a parameter it does not know (aws_secretsmanager_agent/src/parse.rs).
_INVALID_REFRESH_NOW = b"invalid refreshNow value"
_UNKNOWN_PARAMETER = b"unknown parameter: refreshNow"
_LAYER_NAMES = ("parametersandsecrets", "secretsmanageragent", "secrets-manager-agent",
                "secrets_manager_agent")

#: fetch(secret_id, stage) -> the GetSecretValue response (as `dbcreds.provider.Fetcher`).
Fetcher = Callable[[str, str], dict[str, Any]]


class ExtensionUnreachable(Exception):
    """The extension did not answer (nothing listens, timeout, not HTTP): use the SDK."""


class RefreshNowRefused(Exception):
    """The server refused the ``refreshNow`` parameter (HTTP 400): use the SDK for fresh reads."""


# -- selection ------------------------------------------------------------------------------

def _token(env: Mapping[str, str], agent: bool = False) -> str | None:
    """The extension's token: ``AWS_SESSION_TOKEN``, else ``AWS_TOKEN`` (``file://`` read);
    with *agent*, the Agent's order: ``AWS_TOKEN``, ``AWS_SESSION_TOKEN``,
    ``AWS_CONTAINER_AUTHORIZATION_TOKEN``.

    Raises `ConfigurationError` naming the variable (never showing the value) when the token
    is not something an HTTP header can carry (``http.client`` would quote it in its error).
    """
    names = _AGENT_TOKEN_VARIABLES if agent else _TOKEN_VARIABLES
    name = next((n for n in names if env.get(n)), names[-1])
    token = env.get(name)
    if token and token.startswith("file://"):
        try:
            with open(token[len("file://"):], encoding="utf-8") as f:
                token = f.read().strip()
        except (OSError, ValueError):  # ValueError: not UTF-8 (UnicodeDecodeError)
            return None
        name += " (the file it names)"
    if not token:
        return None
    _check_token(token, name)
    return token


def _check_token(token: str, name: str) -> None:
    if not all("!" <= c <= "~" for c in token):
        raise ConfigurationError(
            f"{name} is not a usable {TOKEN_HEADER} header: it must be printable ASCII without "
            "spaces or line breaks (value not shown)"
        )


def _port(env: Mapping[str, str]) -> int:
    return _env.port(env, "PARAMETERS_SECRETS_EXTENSION_HTTP_PORT", DEFAULT_PORT)


def _agent_mode(env: Mapping[str, str]) -> str:
    return _env.choice(env, "DBCREDS_SECRETS_AGENT", _AGENT_MODES, "auto")


def _layer_present() -> bool:
    try:
        names = os.listdir(EXTENSIONS_DIR)
    except OSError:
        return False
    return any(n in name.lower() for name in names for n in _LAYER_NAMES)


def extension_configured(env: Mapping[str, str] | None = None) -> bool:
    """True when the rule in the module docstring picks the extension (a token is needed).

    Raises `ConfigurationError` for a ``DBCREDS_SECRETS_TRANSPORT`` other than auto, sdk or
    extension, a ``DBCREDS_SECRETS_AGENT`` other than auto, yes or no, and for a token an HTTP
    header cannot carry.
    """
    env = os.environ if env is None else env
    mode = _env.choice(env, "DBCREDS_SECRETS_TRANSPORT", _TRANSPORTS, "auto")
    agent = _agent_mode(env) == "yes"
    if mode == "sdk":
        return False
    if mode == "auto" and not (
        _env.text(env, "PARAMETERS_SECRETS_EXTENSION_HTTP_PORT") or _layer_present()
    ):
        return False
    if _token(env, agent) is None:
        if mode == "extension":
            logger.warning("DBCREDS_SECRETS_TRANSPORT=extension but no token (%s) is set: the "
                           "extension would refuse us; using the AWS SDK",
                           ", ".join(_AGENT_TOKEN_VARIABLES if agent else _TOKEN_VARIABLES))
        return False
    return True


def auto_fetcher(sdk: Fetcher, env: Mapping[str, str] | None = None) -> Fetcher:
    """The fetcher a provider should use: an `ExtensionTransport` falling back to *sdk* when
    the extension is configured (module docstring), else *sdk* itself.

    Raises `ConfigurationError` for a bad ``DBCREDS_SECRETS_TRANSPORT``,
    ``DBCREDS_SECRETS_AGENT`` (auto, yes, no), ``PARAMETERS_SECRETS_EXTENSION_HTTP_PORT``
    (1-65535) or ``SECRETS_MANAGER_TTL`` (a finite number >= 0), or a token a header cannot
    carry.
    """
    env = os.environ if env is None else env
    if not extension_configured(env):
        return sdk
    agent = _agent_mode(env)
    token = _token(env, agent == "yes")
    assert token is not None
    transport = ExtensionTransport(
        sdk, port=_port(env), token=token,
        cache_ttl=_env.number(env, "SECRETS_MANAGER_TTL", 300.0, low=0),
        refresh_now={"auto": None, "yes": True, "no": False}[agent],
    )
    logger.debug("secrets come from the extension on port %d (boto3 as fallback; refreshNow: "
                 "%s)", transport.port, agent)
    return transport


# -- the transport --------------------------------------------------------------------------

class ExtensionTransport:
    """A fetcher (``transport(secret_id, stage) -> GetSecretValue dict``) over the extension.

    :param sdk: the fetcher to fall back to (the provider's boto3 call).
    :param port: the extension's port on 127.0.0.1.
    :param token: the value of the ``X-Aws-Parameters-Secrets-Token`` header.
    :param refresh_now: whether the server honours ``refreshNow`` (the Secrets Manager Agent
        1.1.0+): True, False, or None to ask it at the first fresh read (module docstring).
    :param retry_after: seconds the SDK is used after the extension failed to answer.
    :param cache_ttl: the extension's own cache TTL: how long a secret read fresh through the
        SDK stays on the SDK.
    :param connect_timeout, read_timeout: seconds (a cache miss makes the extension call
        Secrets Manager before it answers, hence the longer read timeout).
    """

    def __init__(
        self,
        sdk: Fetcher,
        *,
        port: int = DEFAULT_PORT,
        token: str,
        refresh_now: bool | None = None,
        host: str = "127.0.0.1",
        retry_after: float = 60.0,
        cache_ttl: float = 300.0,
        connect_timeout: float = 0.5,
        read_timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sdk = sdk
        self.host = host
        self.port = port
        _check_token(token, "the token")
        self._token = token
        self.retry_after = retry_after
        self.cache_ttl = cache_ttl
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._probe_lock = threading.Lock()  # one probe at a time
        self._refresh_now = refresh_now  # None: not known yet (ask the server)
        self._down_until: float | None = None  # extension failed to answer: SDK until then
        self._fresh_until: dict[str, float] = {}  # secret_id -> SDK until then
        self._stats = {"extension": 0, "refreshed": 0, "sdk": 0, "unreachable": 0}

    def __repr__(self) -> str:
        return f"<ExtensionTransport 127.0.0.1:{self.port} fallback=sdk>"

    @property
    def refresh_now(self) -> bool | None:
        """Whether fresh reads use ``refreshNow`` (None: the server has not been asked yet)."""
        with self._lock:
            return self._refresh_now

    def get_stats(self) -> dict[str, int]:
        """Fetches answered by the extension (``refreshed``: of them, with refreshNow), made
        through the SDK, and times it didn't answer."""
        with self._lock:
            return dict(self._stats)

    def __call__(self, secret_id: str, stage: str) -> dict[str, Any]:
        if stage != AWSCURRENT:  # AWSPENDING: read on a refused login, so always fresh
            return self.fetch_fresh(secret_id, stage)
        if not self._use_extension(secret_id):
            return self._sdk(secret_id, stage)
        try:
            response = self.get(secret_id, stage)
        except ExtensionUnreachable as exc:
            self._unreachable(exc)
            return self._sdk(secret_id, stage)
        with self._lock:
            self._stats["extension"] += 1
        return response

    def fetch_fresh(self, secret_id: str, stage: str) -> dict[str, Any]:
        """Secrets Manager's answer, not the extension's cached one (a login was refused):
        through the server with refreshNow when it honours it, else through the SDK."""
        if not self._down() and self._honours_refresh_now(secret_id):
            try:
                response = self.get(secret_id, stage, refresh_now=True)
            except ExtensionUnreachable as exc:
                self._unreachable(exc)
            except RefreshNowRefused:
                with self._lock:
                    self._refresh_now = False
                logger.warning(
                    "the secrets extension on 127.0.0.1:%d refused refreshNow (an Agent before "
                    "1.1.0?): fresh reads use the AWS SDK from now on", self.port)
            else:
                with self._lock:
                    self._stats["extension"] += 1
                    self._stats["refreshed"] += 1
                    if stage == AWSCURRENT:  # the server's AWSCURRENT is this fresh one
                        self._fresh_until.pop(secret_id, None)
                return response
        if stage == AWSCURRENT:
            with self._lock:
                self._fresh_until[secret_id] = self._clock() + self.cache_ttl
        return self._sdk(secret_id, stage)

    def _honours_refresh_now(self, secret_id: str) -> bool:
        """Known, or asked now (once for all threads): does the server honour refreshNow?"""
        with self._lock:
            known = self._refresh_now
        if known is not None:
            return known
        with self._probe_lock:
            with self._lock:
                known = self._refresh_now
            if known is not None:  # another thread asked meanwhile
                return known
            try:
                answer = self.probe(secret_id)
            except ExtensionUnreachable as exc:
                self._unreachable(exc)
                return False
            except DbcredsError:  # the request could not be sent (the token): the SDK's turn
                return False
            if answer is not None:
                with self._lock:
                    self._refresh_now = answer
                logger.info("the secrets extension on 127.0.0.1:%d %s refreshNow", self.port,
                            "honours" if answer else "does not honour")
            return bool(answer)

    def probe(self, secret_id: str) -> bool | None:
        """Ask the server whether it honours ``refreshNow``: True, False, or None when its
        answer says nothing (403, 429, 5xx...). Raises `ExtensionUnreachable`.

        Sends ``refreshNow=dbcreds-probe``, a value the Agent (1.1.0+) refuses with 400
        "invalid refreshNow value" while parsing the query, before its cache or Secrets
        Manager; only that answer is a yes. 400 "unknown parameter: refreshNow" (an Agent before
        1.1.0) and a 200 (a server that ignores the parameter) are a no.
        """
        status, body = self._request(secret_id, AWSCURRENT, PROBE_VALUE)
        if status == 400 and body.strip() == _INVALID_REFRESH_NOW:
            return True
        if status == 200 or (status == 400 and body.strip().startswith(_UNKNOWN_PARAMETER)):
            return False
        return None

    def _down(self) -> bool:
        with self._lock:
            return self._down_until is not None and self._clock() < self._down_until

    def _unreachable(self, exc: ExtensionUnreachable) -> None:
        with self._lock:
            self._stats["unreachable"] += 1
            self._down_until = self._clock() + self.retry_after
        logger.warning(
            "the secrets extension on 127.0.0.1:%d did not answer (%s): using the AWS SDK "
            "for %.0f s", self.port, exc, self.retry_after,
        )

    def _use_extension(self, secret_id: str) -> bool:
        now = self._clock()
        with self._lock:
            if self._down_until is not None and now < self._down_until:
                return False
            fresh_until = self._fresh_until.get(secret_id)
            if fresh_until is not None:
                if now < fresh_until:
                    return False
                del self._fresh_until[secret_id]
            return True

    def _sdk(self, secret_id: str, stage: str) -> dict[str, Any]:
        with self._lock:
            self._stats["sdk"] += 1
        return self.sdk(secret_id, stage)

    # -- HTTP ------------------------------------------------------------------------------

    def get(self, secret_id: str, stage: str, *, refresh_now: bool = False) -> dict[str, Any]:
        """One GET to the extension (with ``refreshNow=true`` if *refresh_now*). Raises
        `ExtensionUnreachable`, `RefreshNowRefused` or a `DbcredsError`."""
        status, body = self._request(secret_id, stage, "true" if refresh_now else None)
        if status == 200:
            return self._document(secret_id, body)
        if refresh_now and status == 400 and body.strip() in (_UNKNOWN_PARAMETER,
                                                               _INVALID_REFRESH_NOW):
            raise RefreshNowRefused()
        raise self._error(secret_id, stage, status, body)

    def _request(self, secret_id: str, stage: str, refresh_now: str | None) -> tuple[int, bytes]:
        """GET /secretsmanager/get: (status, body). Raises `ExtensionUnreachable`, or a
        `DbcredsError` when the request could not be sent."""
        import http.client  # deferred: only this transport needs it

        path = (f"/secretsmanager/get?secretId={quote(secret_id, safe='')}"
                f"&versionStage={quote(stage, safe='')}")
        if refresh_now is not None:
            path += f"&refreshNow={refresh_now}"
        # No exception of http.client leaves here, not even as a __context__: one about the
        # request quotes its header, the token (ValueError("Invalid header value ...")).
        failure: BaseException | None = None
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.connect_timeout)
        try:
            conn.connect()
            if conn.sock is not None:
                conn.sock.settimeout(self.read_timeout)
            conn.request("GET", path, headers={TOKEN_HEADER: self._token})
            response = conn.getresponse()
            status = response.status
            body = response.read()
        except (OSError, http.client.HTTPException) as exc:
            # ConnectionRefusedError, TimeoutError, ConnectionResetError, RemoteDisconnected,
            # BadStatusLine, ...: the extension is not there (or not an extension).
            failure = ExtensionUnreachable(type(exc).__name__)
        except ValueError as exc:  # a request http.client refuses to send (the header)
            failure = ConfigurationError(
                f"the request to the secrets extension for secret {secret_id!r} could not be "
                f"sent ({type(exc).__name__}): check the {TOKEN_HEADER} token "
                "(AWS_SESSION_TOKEN / AWS_TOKEN); details withheld, they would show it"
            )
        except Exception as exc:
            failure = SecretsManagerUnavailable(
                secret_id, f"the request to the secrets extension failed ({type(exc).__name__})"
            )
        finally:
            conn.close()
        if failure is not None:
            raise_clean(failure)
        return status, body

    def _document(self, secret_id: str, body: bytes) -> dict[str, Any]:
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None  # the decoder's message quotes the body: never chain it
        if not isinstance(doc, dict):
            raise SecretsManagerUnavailable(
                secret_id, "the secrets extension answered 200 with something else than a JSON "
                "object")
        return doc

    @staticmethod
    def _error(secret_id: str, stage: str, status: int, body: bytes) -> DbcredsError:
        return translate(_error_code(body), secret_id, stage, http_status=status)


def _error_code(body: bytes) -> str | None:
    """The AWS error code of an error body (``{"__type": "...", "message": "..."}``)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    code = doc.get("__type") or doc.get("Code") or doc.get("code")
    if not isinstance(code, str) or not code:
        return None
    return code.rsplit("#", 1)[-1][:100]  # "com.amazonaws...#ResourceNotFoundException"
