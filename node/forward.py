"""Forwarding produce requests to the partition's leader.

Any node answers any client: a plain generated client pointed at one address (or a
Kubernetes Service) just works. A node that does not lead a partition passes the batch on to
the leader over ONE long-lived Produce stream per leader address, shared by every client
stream of this node, and relays the leader's answer (offset or error) unchanged. The Python
client routes to leaders itself and never pays this extra hop.

Loops are impossible: the forwarding stream carries the ``rillet-forwarded`` metadata key, and
a node never forwards a request that arrived that way (it answers NOT_LEADER instead, and the
forwarder relays that, so the client refreshes its metadata).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from typing import Any

import grpc

from rillet.api.v1 import log_pb2, log_pb2_grpc
from rillet.node.errors import UnavailableError

log = logging.getLogger(__name__)

FORWARDED_KEY = "rillet-forwarded"
FORWARDED_METADATA = ((FORWARDED_KEY, "1"),)
"""The metadata of every call one node makes on a client's behalf to another."""
_MAX_PENDING = 4096
_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]


def is_forwarded(context: Any) -> bool:
    """True when the call came from another node's forwarder."""
    try:
        return any(k == FORWARDED_KEY for k, _ in (context.invocation_metadata() or ()))
    except Exception:
        return False


class _Stream:
    """One Produce stream to one leader: requests written in order, answers matched FIFO."""

    def __init__(self, channel: grpc.aio.Channel, address: str) -> None:
        self.address = address
        stub = log_pb2_grpc.ProduceStub(channel)  # type: ignore[no-untyped-call]
        self.call = stub.Produce(metadata=FORWARDED_METADATA)
        self.pending: collections.deque[asyncio.Future[log_pb2.ProduceResponse]] = (
            collections.deque())
        self.broken = False
        self.reader = asyncio.create_task(self._read(), name=f"forward-read-{address}")

    async def _read(self) -> None:
        try:
            while True:
                resp = await self.call.read()
                if resp is _EOF:
                    break
                if not self.pending:
                    log.warning("forward stream to %s: an answer nobody waits for", self.address)
                    continue
                fut = self.pending.popleft()
                if not fut.done():
                    fut.set_result(resp)
        except (grpc.aio.AioRpcError, asyncio.CancelledError) as exc:
            why = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else "closed"
            self._fail(f"forwarding to the leader at {self.address} failed: {why}")
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        self._fail(f"the leader at {self.address} ended the forwarding stream")

    def _fail(self, why: str) -> None:
        self.broken = True
        while self.pending:
            fut = self.pending.popleft()
            if not fut.done():
                fut.set_exception(UnavailableError(why + "; retry"))

    async def send(self, req: log_pb2.ProduceRequest) -> asyncio.Future[log_pb2.ProduceResponse]:
        if len(self.pending) >= _MAX_PENDING:
            raise UnavailableError(f"too many requests forwarded to {self.address}; retry")
        fut: asyncio.Future[log_pb2.ProduceResponse] = (
            asyncio.get_running_loop().create_future())
        self.pending.append(fut)  # before the write: answers come back in write order
        try:
            await self.call.write(req)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
            self._fail(f"forwarding to the leader at {self.address} failed: {exc}")
        return fut

    async def close(self) -> None:
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader
        self.call.cancel()


class Forwarder:
    """Produce streams to leaders, opened on first use and replaced when they break."""

    def __init__(self) -> None:
        self._streams: dict[str, _Stream] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def produce(self, channel: grpc.aio.Channel, address: str,
                      req: log_pb2.ProduceRequest) -> asyncio.Future[log_pb2.ProduceResponse]:
        """Send ``req`` to the leader at ``address``; the future gives its answer."""
        lock = self._locks.setdefault(address, asyncio.Lock())
        async with lock:  # one writer per stream: writes and the FIFO stay in step
            stream = self._streams.get(address)
            if stream is None or stream.broken:
                if stream is not None:
                    await stream.close()
                stream = self._streams[address] = _Stream(channel, address)
            return await stream.send(req)

    async def close(self) -> None:
        for stream in self._streams.values():
            await stream.close()
        self._streams.clear()
