"""The fault-injecting proxy against a plain echo server on 127.0.0.1.

Each test drives one link state and checks what a TCP client observes: bytes echoed, a reset,
bytes held and then released, added latency, a rate limit. Waits have deadlines.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from rillet.chaos.proxy import HEALTHY, LinkProxy, LinkState, ProxyNetwork

DEADLINE_S = 5.0


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[tuple[str, int]]:
    """Echo every byte back; yields (host, port)."""
    writers: list[asyncio.StreamWriter] = []

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        writers.append(w)
        with contextlib.suppress(OSError):
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield "127.0.0.1", int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        for w in writers:
            w.transport.abort()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def proxied() -> AsyncIterator[LinkProxy]:
    async with echo_server() as target:
        link = LinkProxy("0->1", target)
        await link.start()
        try:
            yield link
        finally:
            await link.stop()


@contextlib.asynccontextmanager
async def client(link: LinkProxy) -> AsyncIterator[tuple[asyncio.StreamReader,
                                                          asyncio.StreamWriter]]:
    r, w = await asyncio.open_connection("127.0.0.1", link.port)
    try:
        yield r, w
    finally:
        w.transport.abort()


async def roundtrip(r: asyncio.StreamReader, w: asyncio.StreamWriter, data: bytes,
                    timeout_s: float = DEADLINE_S) -> bytes:
    w.write(data)
    await w.drain()
    return await asyncio.wait_for(r.readexactly(len(data)), timeout_s)


async def closed_by_peer(r: asyncio.StreamReader) -> bool:
    """True when the connection ends (EOF or reset) within the deadline."""
    try:
        data = await asyncio.wait_for(r.read(1), DEADLINE_S)
    except (ConnectionResetError, ConnectionAbortedError):
        return True
    return data == b""


async def test_pass_forwards_both_directions() -> None:
    async with proxied() as link, client(link) as (r, w):
        assert await roundtrip(r, w, b"hello" * 1000) == b"hello" * 1000
        assert link.open_connections == 1
        assert link.bytes_forwarded >= 2 * 5000


async def test_cut_resets_open_connections_and_refuses_new_ones() -> None:
    async with proxied() as link:
        async with client(link) as (r, w):
            assert await roundtrip(r, w, b"x") == b"x"
            link.set_state(LinkState(mode="cut"))
            assert await closed_by_peer(r)
        async with client(link) as (r, _w):
            assert await closed_by_peer(r)  # accepted, then closed at once
        link.set_state(HEALTHY)
        async with client(link) as (r, w):
            assert await roundtrip(r, w, b"back") == b"back"


async def test_blackhole_holds_bytes_until_healed() -> None:
    async with proxied() as link, client(link) as (r, w):
        assert await roundtrip(r, w, b"a") == b"a"
        link.set_state(LinkState(mode="blackhole"))
        w.write(b"held")
        await w.drain()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(r.readexactly(4), 0.3)
        assert link.open_connections == 1  # still open: nothing was reset
        link.set_state(HEALTHY)
        assert await asyncio.wait_for(r.readexactly(4), DEADLINE_S) == b"held"


async def test_delay_adds_latency_each_way() -> None:
    async with proxied() as link, client(link) as (r, w):
        await roundtrip(r, w, b"warm")
        link.set_state(LinkState(delay_ms=100))
        t0 = time.monotonic()
        assert await roundtrip(r, w, b"slowly") == b"slowly"
        elapsed = time.monotonic() - t0
        assert 0.2 <= elapsed < 2.0, elapsed  # 100 ms there and 100 ms back


async def test_slow_limits_the_rate() -> None:
    async with proxied() as link, client(link) as (r, w):
        link.set_state(LinkState(rate_bps=40_000))
        t0 = time.monotonic()
        data = b"z" * 8000
        assert await roundtrip(r, w, data) == data
        elapsed = time.monotonic() - t0
        # 8 kB at 40 kB/s takes 0.2 s (the two directions overlap: the echo starts early).
        assert 0.19 <= elapsed < 3.0, elapsed


async def test_drop_connections_resets_but_keeps_the_link_up() -> None:
    async with proxied() as link:
        async with client(link) as (r, w):
            await roundtrip(r, w, b"1")
            assert link.drop_connections() == 1
            assert await closed_by_peer(r)
        async with client(link) as (r, w):
            assert await roundtrip(r, w, b"2") == b"2"


async def test_unreachable_target_closes_the_client() -> None:
    async with echo_server() as (host, port):
        pass  # closed: nothing listens there any more
    link = LinkProxy("0->9", (host, port))
    await link.start()
    try:
        async with client(link) as (r, _w):
            assert await closed_by_peer(r)
    finally:
        await link.stop()


async def test_network_links_dial_env_and_directed_cuts() -> None:
    async with echo_server() as t0, echo_server() as t1, echo_server() as t2:
        addrs = [f"{h}:{p}" for h, p in (t0, t1, t2)]
        net = ProxyNetwork(addrs)
        net.start()
        try:
            assert sorted(net.links) == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]
            env = dict(part.split("=") for part in net.dial_env(0).split(","))
            assert set(env) == {"1", "2"}
            assert env["1"] == net.links[(0, 1)].address
            net.cut([(0, 1)])
            assert net.state((0, 1)).mode == "cut"
            assert net.state((1, 0)) == HEALTHY  # one direction only
            assert sorted(net.pairs_between([0], [1, 2])) == [(0, 1), (0, 2), (1, 0), (2, 0)]
            host, _, port = net.links[(1, 0)].address.rpartition(":")
            r, w = await asyncio.open_connection(host, int(port))
            try:
                assert await roundtrip(r, w, b"ok") == b"ok"
            finally:
                w.transport.abort()
            net.delay([(1, 0)], 50)
            assert net.state((1, 0)).delay_ms == 50
            net.heal()
            assert all(net.state(p) == HEALTHY for p in net.links)
        finally:
            net.stop()
