"""A network latency model for the local stack: TCP relays that delay connection setup and
every turn, in front of the Secrets Manager endpoint and the RDS Proxy stand-in.

On loopback a GetSecretValue costs about a millisecond and a login through the proxy a few, so
nothing a client does can overlap them with anything. In a Lambda function in a VPC the first
GetSecretValue pays DNS, TCP and TLS to the endpoint, the request pays a round trip plus the
service's own time, and each login to RDS Proxy pays a TCP connect and a round trip per turn of
the protocol (SSLRequest, the TLS handshake, startup, SCRAM's three messages, the first query).

`LatencyRelay` is a plain TCP relay (asyncio, in a daemon thread of the process that starts it)
that models exactly that, and nothing else:

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

import asyncio
import contextlib
import threading
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

    #: a new connection to the Secrets Manager endpoint: DNS + TCP + TLS handshake
    secrets_connect: float = 0.020
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

    ``start()`` binds and returns at once (the relay runs in a daemon thread); ``close()`` stops
    it and closes every relayed connection. ``connections`` counts accepted connections.
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
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return (f"<LatencyRelay {self.host}:{self.port} -> {self.target[0]}:{self.target[1]} "
                f"connect={self.connect * 1000:g}ms up={self.up * 1000:g}ms "
                f"down={self.down * 1000:g}ms>")

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def start(self) -> LatencyRelay:
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        async def serve() -> None:
            self._server = await asyncio.start_server(self._handle, self.host, 0)
            self.port = self._server.sockets[0].getsockname()[1]

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(serve())
            except BaseException as exc:  # reported by start()
                failure.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name=f"latency-relay-{self.target[1]}",
                                        daemon=True)
        self._thread.start()
        started.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise RuntimeError(f"the latency relay could not start: {failure[0]}")
        return self

    def close(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._loop = self._thread = None

    def __enter__(self) -> LatencyRelay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one connection -------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        upstream: asyncio.StreamWriter | None = None
        try:
            if self.connect:
                await asyncio.sleep(self.connect)  # the connection's setup: its bytes wait
            up_reader, upstream = await asyncio.open_connection(*self.target)
            await asyncio.gather(self._pipe(reader, upstream, self.up),
                                 self._pipe(up_reader, writer, self.down))
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            for w in (writer, upstream):
                if w is not None:
                    w.close()

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, delay: float) -> None:
        """Forward src to dst, each chunk ``delay`` seconds after it arrived (in order)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def read() -> None:
            while True:
                data = await src.read(_CHUNK)
                await queue.put((loop.time() + delay, data))
                if not data:
                    return

        reading = asyncio.ensure_future(read())
        try:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if dst.can_write_eof():
                        dst.write_eof()
                    return
                dst.write(data)
                await dst.drain()
        except OSError:
            return
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await reading


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
