"""A network latency model for the local stack: TCP relays that delay connection setup and
every turn, in front of the Secrets Manager endpoint and the RDS Proxy stand-in.

On loopback a GetSecretValue costs about a millisecond and a login through the proxy a few, so
nothing a client does can overlap them with anything. In a Lambda function in a VPC the first
GetSecretValue pays DNS, TCP and TLS to the endpoint, the request pays a round trip plus the
service's own time, and each login to RDS Proxy pays a TCP connect and a round trip per turn of
the protocol (SSLRequest, the TLS handshake, startup, SCRAM's three messages, the first query).

`LatencyRelay` is a plain TCP relay (threads of the process that starts it) that models exactly
that, and nothing else:

* **connect**: a new connection's bytes are held for ``connect`` seconds before the relay
  connects upstream and forwards them: the first turn of each new connection pays it (TCP,
  and for the Secrets Manager endpoint, which is HTTPS on AWS but HTTP here, DNS and the TLS
  handshake);
* **up / down**: every chunk is forwarded ``up`` seconds (client to server) or ``down``
  seconds (server to client) after it arrived, in order: one-way delays, so each round trip
  of a request/response protocol costs ``up + down`` however the bytes are split.

moto's server (werkzeug) closes each connection after its answer, so here every request to
Secrets Manager is a new connection and pays ``connect`` (AWS keeps them alive); a cold start
makes one request, so the cold-start benchmark is not affected.

The bytes pass through untouched: TLS between a client and the proxy stand-in is end to end
(clients still verify the stack's certificate, ``verify-full``, whose names are 127.0.0.1 and
localhost: the relay listens on 127.0.0.1 too).

`LatencyModel` holds the defaults (see ``benchmarks/README.md`` for where they come from) and
`LatentStack` (``LocalStack.latency(model)``) puts one relay in front of each server. Nothing in
the stack changes: code that uses ``stack.env()`` / ``stack.address()`` still talks to the
servers directly; code that uses the `LatentStack`'s ``env()`` / ``address()`` pays the model.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .stack import LocalStack, Via

__all__ = ["LatencyModel", "LatencyRelay", "LatentStack"]

_CHUNK = 65536


@dataclass(frozen=True)
class LatencyModel:
    """Seconds of latency per new connection and per request/round trip (see the module doc).

    The defaults model a Lambda function in a VPC: Secrets Manager through an interface VPC
    endpoint or a NAT gateway in the same region, RDS Proxy in the same region (the figures'
    sources are cited in ``benchmarks/README.md``).
    """

    #: a new connection to the Secrets Manager endpoint: DNS + TCP + the TLS handshake's
    #: round trips (its crypto is CPU work of the client, not modelled: HTTP here, for all)
    secrets_connect: float = 0.010
    #: each request to Secrets Manager: a round trip + the service's own time
    secrets_request: float = 0.015
    #: a new TCP connection to the proxy (its handshake; the TLS handshake is round trips)
    proxy_connect: float = 0.002
    #: each round trip to the proxy (half each way)
    proxy_rtt: float = 0.001

    def as_ms(self) -> dict[str, float]:
        return {k: round(v * 1000, 3) for k, v in asdict(self).items()}


class LatencyRelay:
    """A TCP relay from ``listen`` (127.0.0.1, a free port) to ``target``, adding latency.

    Threads with blocking sockets (a relay's delays are ``time.sleep`` to an absolute
    deadline: nanosleep, accurate to a few tens of microseconds, where an event loop's epoll
    timeout is rounded up to whole milliseconds). ``start()`` binds and returns at once;
    ``close()`` stops accepting and closes every relayed connection, ending every thread.
    ``connections`` counts accepted connections.
    """

    def __init__(self, target: tuple[str, int], *, connect: float = 0.0, up: float = 0.0,
                 down: float = 0.0, host: str = "127.0.0.1") -> None:
        if min(connect, up, down) < 0:
            raise ValueError("latencies must be >= 0")
        self.target = target
        self.connect, self.up, self.down = connect, up, down
        self.host = host
        self.port = 0
        self.connections = 0
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._closed = threading.Event()

    def __repr__(self) -> str:
        return (f"<LatencyRelay {self.host}:{self.port} -> {self.target[0]}:{self.target[1]} "
                f"connect={self.connect * 1000:g}ms up={self.up * 1000:g}ms "
                f"down={self.down * 1000:g}ms>")

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def start(self) -> LatencyRelay:
        if self._listener is not None:
            return self
        listener = socket.create_server((self.host, 0))
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._closed.clear()
        self._spawn(self._accept, "accept")
        return self

    def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is None:
            return
        self._closed.set()
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(timeout=10)
        for sock in sockets:
            sock.close()

    def __enter__(self) -> LatencyRelay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- threads --------------------------------------------------------------------------
    def _spawn(self, target: Any, what: str, *args: Any) -> None:
        def run() -> None:
            try:
                target(*args)
            finally:
                with self._lock:
                    self._threads.discard(threading.current_thread())

        thread = threading.Thread(target=run, name=f"latency-relay-{self.target[1]}-{what}",
                                  daemon=True)
        with self._lock:
            self._threads.add(thread)
        thread.start()

    def _track(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._sockets.add(sock)

    def _accept(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self._closed.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            self.connections += 1
            self._track(client)
            self._spawn(self._connection, "conn", client, time.monotonic())

    def _connection(self, client: socket.socket, accepted: float) -> None:
        # The connection's setup: its first bytes wait (the client already sent them).
        if self._closed.wait(max(0.0, accepted + self.connect - time.monotonic())):
            return
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)
            return
        upstream.settimeout(None)
        self._track(upstream)
        self._spawn(self._pipe, "up", client, upstream, self.up)
        self._pipe(upstream, client, self.down)

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket, delay: float) -> None:
        """Forward src to dst, each chunk ``delay`` seconds after it was received.

        One thread per direction: a chunk is received, held until its deadline, sent. Bytes
        that arrived while a chunk was held are received right after it is sent and held for
        a full ``delay`` again, so a message split in several chunks can pay the delay more
        than once: never less than the model, at most ``delay`` per extra chunk (rare for the
        small request/response turns modelled here)."""
        while True:
            try:
                data = src.recv(_CHUNK)
            except OSError:
                data = b""
            if delay:
                time.sleep(delay)
            try:
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)
            except OSError:
                with contextlib.suppress(OSError):
                    src.shutdown(socket.SHUT_RDWR)
                return


class LatentStack:
    """The stack's Secrets Manager endpoint and RDS Proxy stand-in behind latency relays.

    ``env()`` and ``address("rds_proxy")`` are those of `LocalStack` through the relays; the
    stack itself is unchanged (its own clients and the proxy stand-in's refreshes pay nothing).
    """

    def __init__(self, stack: LocalStack, model: LatencyModel) -> None:
        self.stack = stack
        self.model = model
        sm = stack.secrets
        self.secrets_relay = LatencyRelay((sm.host, sm.port), connect=model.secrets_connect,
                                          up=model.secrets_request)
        proxy = stack.address("rds_proxy")
        self.proxy_relay = LatencyRelay(proxy, connect=model.proxy_connect,
                                        up=model.proxy_rtt / 2, down=model.proxy_rtt / 2)

    def start(self) -> LatentStack:
        self.secrets_relay.start()
        try:
            self.proxy_relay.start()
        except BaseException:
            self.secrets_relay.close()
            raise
        return self

    def close(self) -> None:
        self.proxy_relay.close()
        self.secrets_relay.close()

    @property
    def secrets_url(self) -> str:
        host, port = self.secrets_relay.address
        return f"http://{host}:{port}"

    def env(self) -> dict[str, str]:
        """`LocalStack.env` with the Secrets Manager endpoint behind its relay."""
        env = self.stack.env()
        env["AWS_ENDPOINT_URL"] = env["AWS_ENDPOINT_URL_SECRETS_MANAGER"] = self.secrets_url
        return env

    def address(self, via: Via = "rds_proxy") -> tuple[str, int]:
        if via != "rds_proxy":
            raise ValueError("only the RDS Proxy stand-in has a latency relay")
        return self.proxy_relay.address

    def describe(self) -> dict[str, Any]:
        return self.model.as_ms()


@contextlib.contextmanager
def latent(stack: LocalStack, model: LatencyModel | None = None) -> Iterator[LatentStack]:
    """``with latent(stack) as slow:`` the stack behind latency relays (see `LatentStack`)."""
    relays = LatentStack(stack, model or LatencyModel()).start()
    try:
        yield relays
    finally:
        relays.close()
