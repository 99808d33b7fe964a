"""A fault-injecting TCP proxy: one listener per directed link between two nodes.

Node i dials node j through the listener of link i->j (RILLET_PEER_DIAL), so every TCP
connection that node i opens to node j, and both byte directions on it (gRPC requests and their
answers), pass through that link. What a link does to them is its `LinkState`, changeable at any
time from any thread:

- pass: bytes flow as they arrive.
- cut ("refuse"): every open connection is closed at once and new ones are closed as soon as
  they are accepted, so the dialling node sees connection resets, like a host that is down.
- blackhole ("hold"): connections stay open but no byte moves. The proxy stops reading, so the
  kernel buffers fill and the sender blocks, like a network that silently drops packets while
  TCP keeps retransmitting; on heal the held bytes flow on, nothing is lost or reordered.
- delay_ms: every chunk is delivered that much later than it arrived (latency, not a rate
  limit: chunks in flight overlap).
- rate_bps: bytes per second per direction of each connection (a slow link).
- `drop_connections()`: close every open connection now, state unchanged (a reset).

Buffers are bounded: each direction of each connection holds at most `MAX_QUEUED_CHUNKS`
chunks of at most `CHUNK_BYTES`; beyond that the proxy stops reading (back-pressure) rather
than buffering. `LinkProxy` runs on the caller's event loop (unit tests); `ProxyNetwork` owns
one link per ordered node pair on a private event loop in a thread of its own, so a busy
workload on the harness's loop does not add latency to node-to-node traffic. Stopping closes
every listener and connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Coroutine, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeVar

log = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 1024
MAX_QUEUED_CHUNKS = 16
Mode = Literal["pass", "cut", "blackhole"]
T = TypeVar("T")


@dataclass(frozen=True)
class LinkState:
    """What a link does to its traffic; `LinkState()` is a healthy link."""

    mode: Mode = "pass"
    delay_ms: float = 0.0
    rate_bps: float | None = None

    def describe(self) -> str:
        parts: list[str] = [self.mode]
        if self.delay_ms:
            parts.append(f"delay {self.delay_ms:.0f} ms")
        if self.rate_bps is not None:
            parts.append(f"{self.rate_bps:.0f} B/s")
        return ", ".join(parts)


HEALTHY = LinkState()


class _Conn:
    """One proxied connection: two pumps (client->server and server->client)."""

    def __init__(self, link: LinkProxy, client_w: asyncio.StreamWriter,
                 server_w: asyncio.StreamWriter) -> None:
        self.link = link
        self.writers = (client_w, server_w)
        self.tasks: list[asyncio.Task[None]] = []
        self.closed = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for w in self.writers:
            with contextlib.suppress(Exception):
                # abort(): a reset, not a polite FIN, so the peer notices at once.
                w.transport.abort()
        for t in self.tasks:
            if t is not asyncio.current_task():
                t.cancel()


class LinkProxy:
    """Listens on `listen_host:port` (0 picks a free port) and forwards to `target`."""

    def __init__(self, name: str, target: tuple[str, int], listen_host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.name = name
        self.target = target
        self.listen_host = listen_host
        self.port = port
        self._state = HEALTHY
        self._changed = asyncio.Event()  # set and replaced on every state change
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()
        self.accepted = 0
        self.bytes_forwarded = 0

    @property
    def address(self) -> str:
        return f"{self.listen_host}:{self.port}"

    @property
    def state(self) -> LinkState:
        return self._state

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.listen_host, self.port,
                                                  reuse_address=True)
        self.port = int(self._server.sockets[0].getsockname()[1])

    def set_state(self, state: LinkState) -> None:
        """Change the link now (call on the proxy's loop). A cut closes open connections."""
        self._state = state
        old, self._changed = self._changed, asyncio.Event()
        old.set()
        if state.mode == "cut":
            self.drop_connections()

    def drop_connections(self) -> int:
        """Reset every open connection; returns how many there were."""
        conns = list(self._conns)
        for c in conns:
            c.close()
        self._conns.clear()
        return len(conns)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self.drop_connections()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    async def _accept(self, client_r: asyncio.StreamReader,
                      client_w: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self._is_cut():
            client_w.transport.abort()
            return
        try:
            server_r, server_w = await asyncio.wait_for(
                asyncio.open_connection(*self.target, limit=CHUNK_BYTES), 5.0)
        except (TimeoutError, OSError):
            client_w.transport.abort()
            return
        if self._is_cut():  # cut while we were connecting
            client_w.transport.abort()
            server_w.transport.abort()
            return
        for w in (client_w, server_w):
            sock = w.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Conn(self, client_w, server_w)
        self._conns.add(conn)
        conn.tasks = [asyncio.create_task(self._pump(conn, client_r, server_w)),
                      asyncio.create_task(self._pump(conn, server_r, client_w))]
        try:
            await asyncio.gather(*conn.tasks, return_exceptions=True)
        finally:
            conn.close()
            self._conns.discard(conn)

    def _is_cut(self) -> bool:
        return self._state.mode == "cut"

    async def _held(self, conn: _Conn) -> None:
        """Wait while the link is black-holed (bytes stay in the kernel buffers)."""
        while self._state.mode == "blackhole" and not conn.closed:
            await self._changed.wait()
        if self._state.mode == "cut":
            conn.close()

    async def _pump(self, conn: _Conn, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> None:
        """Read chunks, stamp their due time, and a writer task delivers them in order."""
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(MAX_QUEUED_CHUNKS)
        deliver = asyncio.create_task(self._deliver(conn, queue, writer))
        conn.tasks.append(deliver)
        try:
            while not conn.closed:
                await self._held(conn)
                if conn.closed:
                    break
                data = await reader.read(CHUNK_BYTES)
                if not data:
                    break
                due = time.monotonic() + self._state.delay_ms / 1000.0
                await queue.put((due, data))  # bounded: a full queue stops the reading
            await queue.put(None)
            await deliver
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            conn.close()

    async def _deliver(self, conn: _Conn, queue: asyncio.Queue[tuple[float, bytes] | None],
                       writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                due, data = item
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self._held(conn)
                if conn.closed:
                    return
                rate = self._state.rate_bps
                if not rate:
                    writer.write(data)
                    await writer.drain()
                    self.bytes_forwarded += len(data)
                    continue
                # Slow: pieces of at most 1/20 s worth of bytes, each sent after its time.
                piece = max(1, int(rate / 20))
                for i in range(0, len(data), piece):
                    part = data[i:i + piece]
                    await asyncio.sleep(len(part) / rate)
                    if conn.closed:
                        return
                    writer.write(part)
                    await writer.drain()
                    self.bytes_forwarded += len(part)
        except OSError:
            conn.close()


class ProxyNetwork:
    """One `LinkProxy` per ordered pair of nodes, on a private event loop in its own thread.

    `addresses[i]` is where node i really listens. `dial_env(i)` is the RILLET_PEER_DIAL value
    for node i: every other node j mapped to the listener of link i->j. Every method is safe
    to call from any thread; `stop()` closes everything (also run by `__exit__`).
    """

    def __init__(self, addresses: list[str], listen_host: str = "127.0.0.1") -> None:
        self.addresses = list(addresses)
        self.listen_host = listen_host
        self.links: dict[tuple[int, int], LinkProxy] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="chaos-proxy",
                                        daemon=True)
        self._started = False

    def __enter__(self) -> ProxyNetwork:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, coro: Coroutine[Any, Any, T], timeout_s: float = 10.0) -> T:
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(timeout_s)

    def start(self) -> None:
        self._thread.start()
        self._started = True
        n = len(self.addresses)
        for i in range(n):
            for j in range(n):
                if i == j:
                    continue
                host, _, port = self.addresses[j].rpartition(":")
                self.links[(i, j)] = LinkProxy(f"{i}->{j}", (host, int(port)),
                                               self.listen_host)

        async def start_all() -> None:
            for link in self.links.values():
                await link.start()
        self._call(start_all())
        log.info("proxies: %s", ", ".join(f"{k[0]}->{k[1]} at {v.address}"
                                           for k, v in sorted(self.links.items())))

    def stop(self) -> None:
        if not self._started:
            return
        self._started = False

        async def stop_all() -> None:
            for link in self.links.values():
                await link.stop()
        try:
            self._call(stop_all())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5.0)
            if not self._thread.is_alive():
                self._loop.close()

    def dial_env(self, node: int) -> str:
        """RILLET_PEER_DIAL for `node`: each other node via the proxy of link node->other."""
        return ",".join(f"{j}={self.links[(node, j)].address}"
                        for j in range(len(self.addresses)) if j != node)

    def _set(self, pairs: Iterable[tuple[int, int]], change: dict[str, Any]) -> None:
        pairs = list(pairs)

        async def apply() -> None:
            for p in pairs:
                link = self.links[p]
                link.set_state(replace(link.state, **change))
        self._call(apply())

    def set_links(self, pairs: Iterable[tuple[int, int]], state: LinkState) -> None:
        pairs = list(pairs)

        async def apply() -> None:
            for p in pairs:
                self.links[p].set_state(state)
        self._call(apply())

    def cut(self, pairs: Iterable[tuple[int, int]], *, hold: bool = False) -> None:
        """Cut these directed links: reset connections, or with `hold` black-hole them."""
        self._set(pairs, {"mode": "blackhole" if hold else "cut"})

    def delay(self, pairs: Iterable[tuple[int, int]], delay_ms: float) -> None:
        self._set(pairs, {"delay_ms": float(delay_ms)})

    def slow(self, pairs: Iterable[tuple[int, int]], rate_bps: float | None) -> None:
        self._set(pairs, {"rate_bps": rate_bps})

    def drop_connections(self, pairs: Iterable[tuple[int, int]]) -> int:
        pairs = list(pairs)

        async def apply() -> int:
            return sum(self.links[p].drop_connections() for p in pairs)
        return self._call(apply())

    def heal(self, pairs: Iterable[tuple[int, int]] | None = None) -> None:
        """Make these links (default: all) healthy again."""
        self.set_links(self.links if pairs is None else pairs, HEALTHY)

    def state(self, pair: tuple[int, int]) -> LinkState:
        return self.links[pair].state

    def pairs_between(self, group_a: Iterable[int], group_b: Iterable[int]) -> list[
            tuple[int, int]]:
        """Every directed link from a node of `group_a` to one of `group_b` and back."""
        a, b = set(group_a), set(group_b)
        return [(i, j) for (i, j) in self.links if (i in a and j in b) or (i in b and j in a)]
