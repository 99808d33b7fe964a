"""Reading: a tailing `Consumer` and a bounded `Replay`, both async iterators.

Each reader opens one server stream per leader address (usually one) and a fetch task per
stream that decodes responses into column batches (`records.RecordBatch`) and puts them on a
bounded queue; the queue is the backpressure. Iterating yields records one by one; `batches()`
and `getmany()` yield whole column batches for callers that want speed.

Each partition is read from its leader (from metadata). A fetch task survives a broker restart
or a leader change: on a retriable failure (UNAVAILABLE, NOT_LEADER, the node gone) it waits a
backoff, refreshes metadata, hands partitions whose leader moved to the stream of their new
leader, and reopens from the next offset of each partition not yet queued for the caller, so
the caller sees no record twice and none skipped. After `reconnect_timeout_s` without success
the error is raised to the iterating caller.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import grpc
import grpc.aio

from rillet.api.v1 import common_pb2, log_pb2, log_pb2_grpc
from rillet.client.connection import (
    AsyncResource,
    ChannelPool,
    Credentials,
    fetch_metadata,
    make_stub,
    parse_bootstrap,
)
from rillet.client.errors import (
    ClientClosedError,
    PartitionOutOfRangeError,
    RilletError,
    UnknownTopicError,
    from_rpc_error,
)
from rillet.client.metadata import NO_LEADER, ClusterMetadata
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


class _Fetch:
    """One fetch task: a stream to `address` for `partitions` (which may grow: `restart`)."""

    __slots__ = ("address", "failing_since", "partitions", "restart", "task")

    def __init__(self, address: str, partitions: list[int]) -> None:
        self.address = address
        self.partitions = partitions
        #: Partitions were added: reopen the stream with all of them (no backoff).
        self.restart = False
        #: loop.time() of the first failure in the current run of failures.
        self.failing_since: float | None = None
        self.task: asyncio.Task[None] | None = None


class _Reader(AsyncResource):
    """What Consumer and Replay share: metadata, fetch tasks, the queue, iteration, close."""

    #: Partitions that move to a leader join the stream already reading from it.
    _share_streams = True

    def __init__(self, bootstrap: str | Sequence[str], topic: str,
                 partitions: Sequence[int] | None, max_bytes: int, queue_size: int,
                 request_timeout_s: float, credentials: Credentials | None = None) -> None:
        self.topic = topic
        self._wanted = list(partitions) if partitions is not None else None
        self.max_bytes = max_bytes
        self.request_timeout_s = request_timeout_s
        self._metadata = ClusterMetadata(parse_bootstrap(bootstrap))
        #: Channels; a group consumer passes one pool shared by its per-partition readers
        #: (set before start()), which it closes itself.
        self._pool = ChannelPool(credentials)
        self._own_pool = True
        self._queue: asyncio.Queue[RecordBatch | BaseException | object] = asyncio.Queue(
            queue_size)
        self._tasks: list[asyncio.Task[None]] = []
        self._running = 0
        #: The live fetch task per leader address.
        self._fetches: dict[str, _Fetch] = {}
        #: Per partition: the next offset to fetch (everything below it is queued or consumed).
        self._fetch_from: dict[int, int] = {}
        self.retry_backoff_ms = 100.0
        self.reconnect_timeout_s = 30.0
        self._current: RecordBatch | None = None
        self._records: list[ConsumerRecord] = []
        self._closed = False
        self.partitions: list[int] = []
        #: Per partition: the offset after the last record handed to the caller.
        self.positions: dict[int, int] = {}
        #: Per partition: high watermark as last reported by the broker.
        self.high_watermarks: dict[int, int] = {}

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
            self._spawn(_Fetch(addr, ps))

    def _spawn(self, f: _Fetch) -> None:
        f.task = asyncio.get_running_loop().create_task(
            self._fetch_guarded(f), name=f"rillet-fetch-{self.topic}-{f.address}")
        self._tasks.append(f.task)
        self._running += 1

    async def _fetch_guarded(self, f: _Fetch) -> None:
        if self._share_streams:
            self._fetches[f.address] = f
        try:
            await self._fetch(f)
        except asyncio.CancelledError:
            self._running -= 1
            raise
        except Exception as exc:
            await self._queue.put(exc)
        finally:
            if self._fetches.get(f.address) is f:
                del self._fetches[f.address]
        self._running -= 1
        if self._running == 0:
            await self._queue.put(_END)

    async def _fetch(self, f: _Fetch) -> None:
        raise NotImplementedError

    async def _deliver(self, pd: common_pb2.PartitionData, end: int | None = None) -> None:
        """Decode one PartitionData and queue its batches; advance the fetch position.

        The position moves only once a batch is queued, so a task cancelled while waiting
        for room in the queue resumes with that batch, not after it.
        """
        p = pd.partition
        fetch_from = self._fetch_from
        self.high_watermarks[p] = pd.high_watermark
        first = max(pd.first_offset, fetch_from.get(p, 0))
        if pd.batches:
            if end is None and pd.end_offset:
                end = pd.end_offset
            for b in decode_batches(self.topic, p, pd.batches, first, end):
                await self._queue.put(b)
                fetch_from[p] = b.next_offset
        if pd.next_offset > fetch_from.get(p, -1):
            fetch_from[p] = pd.next_offset

    async def _retry_wait(self, f: _Fetch, err: RilletError, backoff: float) -> None:
        """After a retriable failure: give up once failures lasted `reconnect_timeout_s`,
        else wait `backoff` and refresh metadata (a failed refresh is retried next time)."""
        now = asyncio.get_running_loop().time()
        if f.failing_since is None:
            f.failing_since = now
        if now - f.failing_since > self.reconnect_timeout_s:
            raise err
        log.info("%s: read stream from %s failed (%s); retrying in %.2f s",
                 self.topic, f.address, err, backoff)
        self._metadata.mark_stale()
        await asyncio.sleep(backoff)
        try:
            await fetch_metadata(self._pool, self._metadata, [self.topic],
                                 timeout_s=self.request_timeout_s)
        except RilletError as exc:
            log.info("%s: metadata refresh failed: %s", self.topic, exc)

    def _moved(self, f: _Fetch) -> dict[str, list[int]]:
        """Partitions of `f` whose known leader is now at another address, by address."""
        out: dict[str, list[int]] = {}
        for p in f.partitions:
            if self._metadata.leader(self.topic, p) == NO_LEADER:
                continue  # an election: stay, and look again after the next failure
            addr = self._metadata.leader_address(self.topic, p)
            if addr is not None and addr != f.address:
                out.setdefault(addr, []).append(p)
        return out

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
        if self._own_pool:
            await self._pool.close()

    def share_pool(self, pool: ChannelPool) -> None:
        """Use `pool`'s channels (owned and closed by the caller) instead of a private pool:
        readers of many partitions then share one connection per node."""
        self._pool, self._own_pool = pool, False


class Consumer(_Reader):
    """Tails a topic (all or chosen partitions) from a position until closed.

        async with Consumer("127.0.0.1:9091", "events", start="earliest") as c:
            async for record in c:
                ...

    With `group_id=...` it returns a `rillet.client.group.GroupConsumer` instead: a member
    of that consumer group, reading the partitions the group assigns it from the committed
    offsets (the other keywords are GroupConsumer's: auto_offset_reset, on_assign, ...).
    """

    def __new__(cls, *args: Any, group_id: str | None = None, **kwargs: Any) -> Any:
        if group_id is None:
            return super().__new__(cls)
        # Imported here: group.py builds on this module.
        from rillet.client.group import GroupConsumer
        return GroupConsumer(*args, group_id=group_id, **kwargs)

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
        group_id: None = None,
        credentials: Credentials | None = None,
    ) -> None:
        super().__init__(bootstrap, topic, partitions, max_bytes, queue_size, request_timeout_s,
                         credentials)
        self._start = to_position(start)
        self.max_wait_ms = max_wait_ms
        self.reconnect_timeout_s = reconnect_timeout_s
        self.retry_backoff_ms = retry_backoff_ms

    async def _fetch(self, f: _Fetch) -> None:
        backoff = self.retry_backoff_ms / 1000
        while f.partitions:
            fetch_from = self._fetch_from
            request = log_pb2.ConsumeRequest(
                topic=self.topic, max_bytes=self.max_bytes, max_wait_ms=self.max_wait_ms,
                partitions=[
                    log_pb2.PartitionPosition(
                        partition=p,
                        position=(common_pb2.Position(offset=fetch_from[p])
                                  if p in fetch_from else self._start))
                    for p in f.partitions])
            f.restart = False
            stub = make_stub(log_pb2_grpc.ConsumeStub, self._pool.get(f.address))
            call = stub.Consume(request)
            try:
                async for response in call:
                    f.failing_since = None
                    backoff = self.retry_backoff_ms / 1000
                    for pd in response.partitions:
                        await self._deliver(pd)
                    if f.restart:
                        break
                else:
                    raise UnavailableStreamEnd(f"consume stream from {f.address} ended")
            except (grpc.aio.AioRpcError, UnavailableStreamEnd) as exc:
                err = (from_rpc_error(exc) if isinstance(exc, grpc.aio.AioRpcError)
                       else RilletError(str(exc)))
                if isinstance(exc, grpc.aio.AioRpcError) and not err.retriable:
                    raise err from exc
                call.cancel()
                await self._retry_wait(f, err, backoff)
                backoff = min(backoff * 2, 1.0)
                self._hand_off(f)
            finally:
                call.cancel()

    def _hand_off(self, f: _Fetch) -> None:
        """Give partitions whose leader moved to the task reading from the new leader."""
        for addr, ps in self._moved(f).items():
            f.partitions = [p for p in f.partitions if p not in ps]
            other = self._fetches.get(addr)
            if other is not None and other.task is not None and not other.task.done():
                other.partitions.extend(ps)
                other.restart = True
            else:
                self._spawn(_Fetch(addr, ps))


class UnavailableStreamEnd(Exception):
    """Internal: a tailing stream ended without an error; reconnect like after a failure."""


class Replay(_Reader):
    """Reads a bounded range and ends when the broker has sent all of it.

    `start` defaults to earliest; `end` (exclusive) to the high watermark when the request
    arrives. An offset `end` applies to every partition. When a stream fails (a node dies,
    the leader moves), each unfinished partition resumes at its new leader from the next
    offset not yet queued up to the end the first answer fixed.
    """

    # A resumed partition reads its own rest of the range (one from/to per request).
    _share_streams = False

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
        reconnect_timeout_s: float = 30.0,
        retry_backoff_ms: float = 100.0,
        credentials: Credentials | None = None,
    ) -> None:
        super().__init__(bootstrap, topic, partitions, max_bytes, queue_size, request_timeout_s,
                         credentials)
        self._from = to_position(start)
        self._to = to_position(end)
        self.reconnect_timeout_s = reconnect_timeout_s
        self.retry_backoff_ms = retry_backoff_ms
        #: Per partition: the exclusive end the broker fixed when the read began.
        self._ends: dict[int, int] = {}

    async def _fetch(self, f: _Fetch) -> None:
        begin, end = self._from, self._to
        if len(f.partitions) == 1 and f.partitions[0] in self._ends:
            # A resumed partition: exactly the rest of the range fixed by the first answer.
            p = f.partitions[0]
            begin = common_pb2.Position(offset=self._fetch_from.get(p, 0))
            end = common_pb2.Position(offset=self._ends[p])
        elif len(f.partitions) == 1 and f.partitions[0] in self._fetch_from:
            begin = common_pb2.Position(offset=self._fetch_from[f.partitions[0]])
        request = log_pb2.ReplayRequest(
            topic=self.topic, partitions=f.partitions, max_bytes=self.max_bytes)
        request.to.CopyFrom(end)
        getattr(request, "from").CopyFrom(begin)
        stub = make_stub(log_pb2_grpc.ReplayStub, self._pool.get(f.address))
        call = stub.Replay(request)
        try:
            async for response in call:
                f.failing_since = None
                for pd in response.partitions:
                    if pd.end_offset:
                        self._ends.setdefault(pd.partition, pd.end_offset)
                    await self._deliver(pd)
        except grpc.aio.AioRpcError as exc:
            err = from_rpc_error(exc)
            if not err.retriable:
                raise err from exc
            call.cancel()
            await self._retry_wait(f, err, self.retry_backoff_ms / 1000)
            # Each unfinished partition resumes on its own stream to its current leader.
            for p in f.partitions:
                if p in self._ends and self._fetch_from.get(p, 0) >= self._ends[p]:
                    continue
                addr = self._metadata.leader_address(self.topic, p) or f.address
                resumed = _Fetch(addr, [p])
                resumed.failing_since = f.failing_since
                self._spawn(resumed)
        finally:
            call.cancel()
