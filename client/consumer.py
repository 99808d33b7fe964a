"""Reading: a tailing `Consumer` and a bounded `Replay`, both async iterators.

Each reader opens one server stream per leader address (usually one) and a fetch task per
stream that decodes responses into column batches (`records.RecordBatch`) and puts them on a
bounded queue; the queue is the backpressure. Iterating yields records one by one; `batches()`
and `getmany()` yield whole column batches for callers that want speed.

A consumer's fetch task survives a broker restart: on a retriable failure it reopens the stream
from the next offset of each partition, after a backoff, until `reconnect_timeout_s` passes
without success; then the error is raised to the iterating caller.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Self

import grpc
import grpc.aio

from rillet.api.v1 import common_pb2, log_pb2, log_pb2_grpc
from rillet.client.connection import ChannelPool, fetch_metadata, make_stub, parse_bootstrap
from rillet.client.errors import (
    ClientClosedError,
    PartitionOutOfRangeError,
    RilletError,
    UnknownTopicError,
    from_rpc_error,
)
from rillet.client.metadata import ClusterMetadata
from rillet.client.records import ConsumerRecord, RecordBatch, decode_batches

log = logging.getLogger(__name__)

__all__ = ["Consumer", "ConsumerRecord", "RecordBatch", "Replay", "Timestamp", "to_position"]


@dataclass(frozen=True, slots=True)
class Timestamp:
    """A position by time: the first batch whose max timestamp is at or after `ms`."""

    ms: int


PositionSpec = Literal["earliest", "latest"] | int | Timestamp


def to_position(spec: PositionSpec) -> common_pb2.Position:
    """"earliest" | "latest" | an offset | Timestamp(ms) as the wire Position."""
    if isinstance(spec, Timestamp):
        return common_pb2.Position(timestamp_ms=spec.ms)
    if isinstance(spec, bool):
        raise TypeError("position must be 'earliest', 'latest', an offset or a Timestamp")
    if isinstance(spec, int):
        if spec < 0:
            raise ValueError(f"offset must be >= 0, got {spec}")
        return common_pb2.Position(offset=spec)
    if spec == "earliest":
        return common_pb2.Position(boundary=common_pb2.BOUNDARY_EARLIEST)
    if spec == "latest":
        return common_pb2.Position(boundary=common_pb2.BOUNDARY_LATEST)
    raise ValueError(f"position must be 'earliest', 'latest', an offset or a Timestamp: {spec!r}")


_END = object()


class _Reader:
    """What Consumer and Replay share: metadata, fetch tasks, the queue, iteration, close."""

    def __init__(self, bootstrap: str | Sequence[str], topic: str,
                 partitions: Sequence[int] | None, max_bytes: int, queue_size: int,
                 request_timeout_s: float) -> None:
        self.topic = topic
        self._wanted = list(partitions) if partitions is not None else None
        self.max_bytes = max_bytes
        self.request_timeout_s = request_timeout_s
        self._metadata = ClusterMetadata(parse_bootstrap(bootstrap))
        self._pool = ChannelPool()
        self._queue: asyncio.Queue[RecordBatch | BaseException | object] = asyncio.Queue(
            queue_size)
        self._tasks: list[asyncio.Task[None]] = []
        self._running = 0
        self._current: RecordBatch | None = None
        self._records: list[ConsumerRecord] = []
        self._closed = False
        self.partitions: list[int] = []
        #: Per partition: the offset after the last record handed to the caller.
        self.positions: dict[int, int] = {}
        #: Per partition: high watermark as last reported by the broker.
        self.high_watermarks: dict[int, int] = {}

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def start(self) -> None:
        await fetch_metadata(self._pool, self._metadata, [self.topic],
                             timeout_s=self.request_timeout_s)
        parts = self._metadata.partitions(self.topic)
        if parts is None:
            raise UnknownTopicError(f"topic {self.topic!r} does not exist")
        n = len(parts)
        if self._wanted is None:
            self.partitions = list(range(n))
        else:
            bad = [p for p in self._wanted if not 0 <= p < n]
            if bad:
                raise PartitionOutOfRangeError(
                    f"partitions {bad} out of range: topic {self.topic!r} has {n} partitions")
            self.partitions = sorted(set(self._wanted))
        for addr, ps in self._metadata.partitions_by_address(self.topic, self.partitions).items():
            task = asyncio.get_running_loop().create_task(
                self._fetch_guarded(addr, ps), name=f"rillet-fetch-{self.topic}-{addr}")
            self._tasks.append(task)
            self._running += 1

    async def _fetch_guarded(self, address: str, partitions: list[int]) -> None:
        try:
            await self._fetch(address, partitions)
        except asyncio.CancelledError:
            self._running -= 1
            raise
        except Exception as exc:
            await self._queue.put(exc)
        self._running -= 1
        if self._running == 0:
            await self._queue.put(_END)

    async def _fetch(self, address: str, partitions: list[int]) -> None:
        raise NotImplementedError

    async def _deliver(self, pd: common_pb2.PartitionData, fetch_from: dict[int, int],
                       end: int | None = None) -> None:
        """Decode one PartitionData and queue its batches; advance the fetch position."""
        p = pd.partition
        self.high_watermarks[p] = pd.high_watermark
        first = max(pd.first_offset, fetch_from.get(p, 0))
        if pd.batches:
            if end is None and pd.end_offset:
                end = pd.end_offset
            for b in decode_batches(self.topic, p, pd.batches, first, end):
                fetch_from[p] = b.next_offset
                await self._queue.put(b)
        if pd.next_offset > fetch_from.get(p, -1):
            fetch_from[p] = pd.next_offset

    async def getmany(self, timeout_s: float | None = None) -> list[RecordBatch]:
        """Column batches available now, waiting up to `timeout_s` seconds for the first one.

        Returns [] when that time passes with nothing new; raises StopAsyncIteration once a
        bounded read (Replay) has sent everything.
        """
        out: list[RecordBatch] = []
        if self._queue.empty() and self._running == 0 and not self._tasks:
            raise ClientClosedError("reader not started")
        try:
            item = await asyncio.wait_for(self._queue.get(), timeout_s)
        except TimeoutError:
            return out
        while True:
            if item is _END:
                if out:
                    self._queue.put_nowait(_END)
                    return out
                self._queue.put_nowait(_END)
                raise StopAsyncIteration
            if isinstance(item, BaseException):
                if out:
                    # Deliver what arrived before the failure; raise on the next call.
                    self._queue.put_nowait(item)
                    return out
                raise item
            assert isinstance(item, RecordBatch)
            self.positions[item.partition] = item.next_offset
            out.append(item)
            if self._queue.empty():
                return out
            item = self._queue.get_nowait()

    async def batches(self) -> AsyncIterator[RecordBatch]:
        """Every column batch, in arrival order, until the read ends or the caller stops."""
        while True:
            try:
                got = await self.getmany()
            except StopAsyncIteration:
                return
            for b in got:
                yield b

    def __aiter__(self) -> _Reader:
        return self

    async def __anext__(self) -> ConsumerRecord:
        while not self._records:
            got = await self.getmany()
            for b in got:
                self._records.extend(b)
            self._records.reverse()
        return self._records.pop()

    async def close(self) -> None:
        """Cancel and await every fetch task; records still queued are dropped."""
        if self._closed:
            return
        self._closed = True
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._pool.close()


class Consumer(_Reader):
    """Tails a topic (all or chosen partitions) from a position until closed.

        async with Consumer("127.0.0.1:9091", "events", start="earliest") as c:
            async for record in c:
                ...
    """

    def __init__(
        self,
        bootstrap: str | Sequence[str],
        topic: str,
        *,
        start: PositionSpec = "latest",
        partitions: Sequence[int] | None = None,
        max_bytes: int = 1024 * 1024,
        max_wait_ms: int = 500,
        queue_size: int = 256,
        request_timeout_s: float = 10.0,
        reconnect_timeout_s: float = 30.0,
        retry_backoff_ms: float = 100.0,
    ) -> None:
        super().__init__(bootstrap, topic, partitions, max_bytes, queue_size, request_timeout_s)
        self._start = to_position(start)
        self.max_wait_ms = max_wait_ms
        self.reconnect_timeout_s = reconnect_timeout_s
        self.retry_backoff_ms = retry_backoff_ms

    async def _fetch(self, address: str, partitions: list[int]) -> None:
        loop = asyncio.get_running_loop()
        fetch_from: dict[int, int] = {}
        backoff = self.retry_backoff_ms / 1000
        failing_since: float | None = None
        while True:
            request = log_pb2.ConsumeRequest(
                topic=self.topic, max_bytes=self.max_bytes, max_wait_ms=self.max_wait_ms,
                partitions=[
                    log_pb2.PartitionPosition(
                        partition=p,
                        position=(common_pb2.Position(offset=fetch_from[p])
                                  if p in fetch_from else self._start))
                    for p in partitions])
            stub = make_stub(log_pb2_grpc.ConsumeStub, self._pool.get(address))
            call = stub.Consume(request)
            try:
                async for response in call:
                    failing_since = None
                    backoff = self.retry_backoff_ms / 1000
                    for pd in response.partitions:
                        await self._deliver(pd, fetch_from)
                raise UnavailableStreamEnd(f"consume stream from {address} ended")
            except (grpc.aio.AioRpcError, UnavailableStreamEnd) as exc:
                err = (from_rpc_error(exc) if isinstance(exc, grpc.aio.AioRpcError)
                       else RilletError(str(exc)))
                if isinstance(exc, grpc.aio.AioRpcError) and not err.retriable:
                    raise err from exc
                now = loop.time()
                failing_since = failing_since or now
                if now - failing_since > self.reconnect_timeout_s:
                    raise err from exc
                log.info("consume stream from %s failed (%s); reconnecting", address, err)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
            finally:
                call.cancel()


class UnavailableStreamEnd(Exception):
    """Internal: a tailing stream ended without an error; reconnect like after a failure."""


class Replay(_Reader):
    """Reads a bounded range and ends when the broker has sent all of it.

    `start` defaults to earliest; `end` (exclusive) to the high watermark when the request
    arrives. An offset `end` applies to every partition.
    """

    def __init__(
        self,
        bootstrap: str | Sequence[str],
        topic: str,
        *,
        start: PositionSpec = "earliest",
        end: PositionSpec = "latest",
        partitions: Sequence[int] | None = None,
        max_bytes: int = 1024 * 1024,
        queue_size: int = 256,
        request_timeout_s: float = 10.0,
    ) -> None:
        super().__init__(bootstrap, topic, partitions, max_bytes, queue_size, request_timeout_s)
        self._from = to_position(start)
        self._to = to_position(end)

    async def _fetch(self, address: str, partitions: list[int]) -> None:
        request = log_pb2.ReplayRequest(
            topic=self.topic, partitions=partitions, max_bytes=self.max_bytes)
        request.to.CopyFrom(self._to)
        getattr(request, "from").CopyFrom(self._from)
        stub = make_stub(log_pb2_grpc.ReplayStub, self._pool.get(address))
        call = stub.Replay(request)
        fetch_from: dict[int, int] = {}
        try:
            async for response in call:
                for pd in response.partitions:
                    await self._deliver(pd, fetch_from)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from exc
        finally:
            call.cancel()
