"""Bootstrap parsing, gRPC channels and the metadata call shared by producer, consumer, admin.

Every channel sets its message size limits explicitly: the 4 MiB default counts framing, and a
1 MiB batch plus a full consume response must both fit (PERFORMANCE.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Self

import grpc
import grpc.aio

from rillet.api.v1 import admin_pb2, admin_pb2_grpc
from rillet.client.errors import ClusterUnreachableError, RilletError, from_rpc_error
from rillet.client.metadata import ClusterMetadata

log = logging.getLogger(__name__)

DEFAULT_BOOTSTRAP = "127.0.0.1:9091"
#: Enough for the largest consume response the client asks for (max_bytes) plus framing.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: Passes over the addresses before fetch_metadata gives up (pauses 0.1 s, then 0.3 s).
METADATA_ROUNDS = 3
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # Reconnect quickly after a broker restart instead of the default 1 s..120 s backoff.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # Each client object gets its own connections: otherwise gRPC shares one subchannel per
    # address process-wide, and a new client inherits another's reconnect backoff after a
    # broker restart, failing at once with the old "connection refused".
    ("grpc.use_local_subchannel_pool", 1),
)


def make_stub(stub_class: Any, channel: grpc.aio.Channel) -> Any:
    """Build a generated stub: the generated classes are untyped; this is the one place."""
    return stub_class(channel)


def parse_bootstrap(bootstrap: str | Iterable[str]) -> list[str]:
    """Split "host:port[,host:port...]" into addresses, checking each has a numeric port."""
    items = bootstrap.split(",") if isinstance(bootstrap, str) else list(bootstrap)
    out = []
    for raw in items:
        addr = raw.strip()
        if not addr:
            continue
        host, sep, port = addr.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"bootstrap address {addr!r} is not host:port")
        out.append(addr)
    if not out:
        raise ValueError("bootstrap list is empty; expected host:port[,host:port...]")
    return out


class AsyncResource:
    """Something a caller uses as ``async with``: entering starts it, leaving closes it, whatever
    happened inside (readers, group consumers and tables share this)."""

    async def start(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()


class ChannelPool:
    """One grpc.aio channel per address, shared by every stream to that node."""

    def __init__(self) -> None:
        self._channels: dict[str, grpc.aio.Channel] = {}

    def get(self, address: str) -> grpc.aio.Channel:
        ch = self._channels.get(address)
        if ch is None:
            ch = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
            self._channels[address] = ch
        return ch

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for ch in channels:
            await ch.close(grace=None)


async def fetch_metadata(
    pool: ChannelPool,
    metadata: ClusterMetadata,
    topics: Iterable[str] = (),
    *,
    timeout_s: float = 5.0,
) -> admin_pb2.MetadataResponse:
    """Ask the bootstrap list, then the known brokers, for metadata; update the cache.

    Makes up to METADATA_ROUNDS passes over the addresses with a short pause between them, all
    within `timeout_s`: a node that is just coming back (or a connection still in its reconnect
    backoff) gets a second chance, while an unreachable cluster still fails within about a
    second. Raises ClusterUnreachableError naming the last failure, one line for a CLI.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    candidates = list(dict.fromkeys([*metadata.bootstrap, *metadata.brokers.values()]))
    request = admin_pb2.MetadataRequest(topics=list(topics))
    last: Exception | None = None
    for round_no in range(METADATA_ROUNDS):
        if round_no:
            await asyncio.sleep(min(0.1 * 3 ** (round_no - 1), max(deadline - loop.time(), 0)))
        for i, addr in enumerate(candidates):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            # Leave time for the others: an address that hangs gets its share of the deadline.
            per_call = max(remaining / (len(candidates) - i), 0.05)
            stub = make_stub(admin_pb2_grpc.MetadataStub, pool.get(addr))
            try:
                response: admin_pb2.MetadataResponse = await stub.GetMetadata(
                    request, timeout=per_call)
            except grpc.aio.AioRpcError as exc:
                err = from_rpc_error(exc)
                if not err.retriable and exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise err from exc
                log.debug("metadata from %s failed: %s", addr, exc.details())
                last = err
                continue
            metadata.update(response)
            return response
    reason = str(last) if last else "no address answered"
    raise ClusterUnreachableError(
        f"cannot reach cluster at {','.join(metadata.bootstrap)}: {reason}")


def describe(exc: BaseException) -> str:
    """One line for a person: the error's class and message, no traceback."""
    if isinstance(exc, RilletError):
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"{type(exc).__name__}: {exc}".splitlines()[0]
