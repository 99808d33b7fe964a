"""The asyncio producer: batches records per partition and pipelines them to partition leaders.

Shape (aiokafka's, trimmed): `send()` appends a record to the accumulator and returns a
`RecordFuture` (a future-like handle on the record's batch, no asyncio.Future per record);
a batch is sealed when full, when `linger_ms` passes, or on `flush()`; each broker address has a
`_Sender` task that owns ONE bidi Produce stream with at most `max_in_flight` unanswered batches
and matches responses to batches in order (the broker answers in order).

Retries: a retriable error (a per-batch NOT_LEADER/UNAVAILABLE, or the stream breaking, e.g. the
broker restarting) tears the stream down and sends every unanswered batch again, in order, on a
fresh stream after a short backoff. Batches the broker had stored but not yet answered are then
stored twice: delivery is at-least-once until idempotent producers exist (docs/decisions/0302).
A batch that is still unacknowledged at its `delivery_timeout` fails with RequestTimeoutError.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import time
from collections import deque
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import grpc
import grpc.aio

from rillet import batch as codec
from rillet.api.v1 import log_pb2, log_pb2_grpc
from rillet.client.accumulator import (
    _BATCH_SLACK,
    _RECORD_OVERHEAD,
    DEFAULT_BATCH_BYTES,
    MAX_BATCH_BYTES,
    Accumulator,
    ChunkAck,
    ManyFuture,
    PartitionBatch,
    RecordFuture,
    RecordMetadata,
    record_size,
)
from rillet.client.connection import ChannelPool, fetch_metadata, make_stub, parse_bootstrap
from rillet.client.errors import (
    BatchTooLargeError,
    ClientClosedError,
    PartitionOutOfRangeError,
    RequestTimeoutError,
    RilletError,
    UnknownTopicError,
    from_error,
    from_rpc_error,
)
from rillet.client.metadata import ClusterMetadata

log = logging.getLogger(__name__)

# grpc-stubs does not declare the end-of-stream sentinel.
_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]

# The largest record that fits in a batch of its own under the broker's limit.
_MAX_RECORD_BYTES = MAX_BATCH_BYTES - _BATCH_SLACK

ACKS = {"none": log_pb2.ACKS_NONE, "leader": log_pb2.ACKS_LEADER, "all": log_pb2.ACKS_ALL}

__all__ = ["ACKS", "Producer", "RecordFuture", "RecordMetadata"]

_time = time.time


class _StreamBroken(Exception):
    """Internal: the stream must be replaced; carries the cause for the log."""


class _Sender:
    """Owns the Produce stream to one broker address and the batches queued for it."""

    def __init__(self, producer: Producer, address: str) -> None:
        self.producer = producer
        self.address = address
        self.queue: deque[PartitionBatch] = deque()
        self.in_flight: deque[PartitionBatch] = deque()
        self._wakeup = asyncio.Event()
        self._slot_free = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(
            self._run(), name=f"rillet-producer-sender-{address}")
        self.task.add_done_callback(self._on_done)

    def enqueue(self, batch: PartitionBatch) -> None:
        self.queue.append(batch)
        self._wakeup.set()

    def _on_done(self, task: asyncio.Task[None]) -> None:
        # Whatever ended the task, no batch it owned may stay pending forever.
        exc: BaseException = ClientClosedError("producer closed before the batch was acked")
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception() or exc
            log.error("producer sender for %s died: %r", self.address, exc)
        for b in itertools.chain(self.in_flight, self.queue):
            self.producer._batch_done(b, exc)
        self.in_flight.clear()
        self.queue.clear()

    async def _run(self) -> None:
        backoff = self.producer.retry_backoff_ms / 1000
        while True:
            while not self.queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            stub = make_stub(log_pb2_grpc.ProduceStub, self.producer._pool.get(self.address))
            call = stub.Produce()
            writer = asyncio.ensure_future(self._write_loop(call))
            reader = asyncio.ensure_future(self._read_loop(call))
            try:
                done, _ = await asyncio.wait({writer, reader},
                                             return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in (writer, reader):
                    t.cancel()
                await asyncio.gather(writer, reader, return_exceptions=True)
                call.cancel()
            cause = next((t.exception() for t in done if not t.cancelled()), None)
            if cause is not None and not isinstance(cause, _StreamBroken | RilletError):
                raise cause
            log.info("produce stream to %s broke (%s); resending %d unanswered batches",
                     self.address, cause, len(self.in_flight))
            # Unanswered batches go back first, in their original order.
            self.queue.extendleft(reversed(self.in_flight))
            self.in_flight.clear()
            await self._expire()
            if self.queue:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.producer.retry_backoff_max_ms / 1000)
                await self.producer._reroute(self)
            else:
                backoff = self.producer.retry_backoff_ms / 1000

    async def _expire(self) -> None:
        """Fail queued batches whose delivery timeout passed or whose retries ran out."""
        now = asyncio.get_running_loop().time()
        keep: deque[PartitionBatch] = deque()
        for b in self.queue:
            if b.deadline <= now:
                self.producer._batch_done(b, RequestTimeoutError(
                    f"batch for {b.topic}[{b.partition}] not acknowledged within "
                    f"{self.producer.delivery_timeout_ms} ms"))
            elif b.attempts > self.producer.retries:
                self.producer._batch_done(b, RequestTimeoutError(
                    f"batch for {b.topic}[{b.partition}] failed after {b.attempts} attempts"))
            else:
                keep.append(b)
        self.queue = keep

    async def _write_loop(self, call: grpc.aio.StreamStreamCall[Any, Any]) -> None:
        max_in_flight = self.producer.max_in_flight
        acks = self.producer.acks
        while True:
            while not self.queue or len(self.in_flight) >= max_in_flight:
                if len(self.in_flight) >= max_in_flight:
                    self._slot_free.clear()
                    await self._slot_free.wait()
                else:
                    self._wakeup.clear()
                    await self._wakeup.wait()
            b = self.queue.popleft()
            b.attempts += 1
            self.in_flight.append(b)
            request = log_pb2.ProduceRequest(
                topic=b.topic, partition=b.partition, batch=b.encode(), acks=acks)
            try:
                await call.write(request)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
                raise _StreamBroken(f"write failed: {exc!r}") from exc

    async def _read_loop(self, call: grpc.aio.StreamStreamCall[Any, Any]) -> None:
        try:
            while True:
                response: Any = await call.read()
                if response is _EOF:
                    raise _StreamBroken(f"stream ended: {await call.code()}")
                b = self.in_flight.popleft()
                self._slot_free.set()
                if response.HasField("error") and response.error.code:
                    err = from_error(response.error)
                    if err.retriable and b.attempts <= self.producer.retries:
                        self.in_flight.appendleft(b)
                        if err.refresh_metadata:
                            self.producer._metadata.mark_stale()
                        raise _StreamBroken(f"retriable error: {err}")
                    self.producer._batch_done(b, err)
                else:
                    self.producer._batch_done(b, None, response.base_offset)
        except grpc.aio.AioRpcError as exc:
            err = from_rpc_error(exc)
            if not err.retriable and exc.code() != grpc.StatusCode.CANCELLED:
                # The broker rejected the stream itself; every unanswered batch fails alike.
                for b in self.in_flight:
                    self.producer._batch_done(b, err)
                self.in_flight.clear()
            raise _StreamBroken(f"stream failed: {err}") from exc


class Producer:
    """Asyncio producer; use `async with Producer(...) as p:` and `await p.send(...)`.

    `send()` is a coroutine so it can wait when `buffer_bytes` of records are unacknowledged
    (backpressure); it returns a `RecordFuture` that resolves to RecordMetadata once the broker
    acked (await it, or use `result()`/`add_done_callback()` as with an asyncio.Future).
    """

    def __init__(
        self,
        bootstrap: str | Sequence[str] = "127.0.0.1:9091",
        *,
        acks: str = "all",
        linger_ms: float = 5.0,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
        max_in_flight: int = 8,
        buffer_bytes: int = 8 * 1024 * 1024,
        retries: int = 5,
        retry_backoff_ms: float = 100.0,
        retry_backoff_max_ms: float = 1000.0,
        delivery_timeout_ms: float = 120_000.0,
        request_timeout_s: float = 10.0,
    ) -> None:
        if acks not in ACKS:
            raise ValueError(f"acks must be one of {sorted(ACKS)}, not {acks!r}")
        if not 0 < batch_bytes <= MAX_BATCH_BYTES:
            raise ValueError(f"batch_bytes must be in 1..{MAX_BATCH_BYTES}")
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.acks = ACKS[acks]
        self.linger_ms = linger_ms
        self.max_in_flight = max_in_flight
        self.buffer_bytes = buffer_bytes
        self.retries = retries
        self.retry_backoff_ms = retry_backoff_ms
        self.retry_backoff_max_ms = retry_backoff_max_ms
        self.delivery_timeout_ms = delivery_timeout_ms
        self.request_timeout_s = request_timeout_s
        self._metadata = ClusterMetadata(parse_bootstrap(bootstrap))
        self._pool = ChannelPool()
        self._acc = Accumulator(batch_bytes)
        self._senders: dict[str, _Sender] = {}
        self._round_robin: dict[str, int] = {}
        # Partition counts by topic, read on every send(); cleared when metadata refreshes.
        self._counts: dict[str, int] = {}
        self._batch_futures: dict[int, asyncio.Future[None]] = {}
        # Open batches that plain records may be appended to without further checks, keyed
        # by topic (the sticky partition of keyless records) and by (topic, partition).
        self._hot: dict[str | tuple[str, int], PartitionBatch] = {}
        self._batch_bytes = batch_bytes
        # The last clock reading in milliseconds, and the span of time.time() it covers.
        self._ms = 0
        self._ms_from = self._ms_until = 0.0
        self._buffered = 0
        self._room = asyncio.Event()
        self._room.set()
        self._closed = False
        self._started = False

    @property
    def metadata(self) -> ClusterMetadata:
        return self._metadata

    async def start(self) -> None:
        """Fetch metadata once so a wrong bootstrap fails here, not at the first send."""
        await fetch_metadata(self._pool, self._metadata, timeout_s=self.request_timeout_s)
        self._loop = asyncio.get_running_loop()
        self._started = True

    async def __aenter__(self) -> Producer:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close(flush=exc_type is None)

    async def _partition_count(self, topic: str) -> int:
        """Partition count of `topic`, asking the cluster when the cache does not know it."""
        n = self._metadata.partition_count(topic)
        if n is None:
            await fetch_metadata(self._pool, self._metadata, [topic],
                                 timeout_s=self.request_timeout_s)
            n = self._metadata.partition_count(topic)
            if n is None:
                raise UnknownTopicError(f"topic {topic!r} does not exist")
        self._counts[topic] = n
        return n

    async def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> RecordFuture:
        """Queue one record; returns its RecordFuture (await it for the RecordMetadata).

        The returned handle is future-like (see `RecordFuture`), not an asyncio.Future. The
        call itself only waits when `buffer_bytes` of records are unacknowledged or when the
        record sealed a batch (it yields once so the sender can run).
        """
        # Fast path: a keyless, headerless record that fits the open batch of its partition
        # (most records). No await, no future: append to the columns, return a handle.
        # `_hot` holds only open batches without keys or headers; it is empty before start()
        # and after close(), and a batch leaves it when sealed.
        if key is None and headers is None:
            if partition is None:
                batch = self._hot.get(topic)
            else:
                batch = self._hot.get((topic, partition))
            if batch is not None:
                size = len(value) + _RECORD_OVERHEAD
                if batch.size + size <= self._batch_bytes and self._buffered < self.buffer_bytes:
                    if timestamp_ms is None:
                        now = _time()
                        if self._ms_from <= now < self._ms_until:
                            timestamp_ms = self._ms  # the millisecond of the last reading
                        else:
                            timestamp_ms = self._clock_ms(now)
                    index = len(batch.values)
                    batch.values.append(value)
                    batch.timestamps.append(timestamp_ms)
                    batch.size += size
                    self._buffered += size
                    return RecordFuture(batch, index)
        return await self._send(topic, value, key, headers, partition, timestamp_ms)

    async def _send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: Sequence[tuple[str, bytes]] | None,
        partition: int | None,
        timestamp_ms: int | None,
    ) -> RecordFuture:
        """Every case the fast path of `send()` does not take."""
        if not self._started:
            raise ClientClosedError("producer not started: use `async with` or await start()")
        if self._closed:
            raise ClientClosedError("producer is closed")
        if self._buffered >= self.buffer_bytes:
            await self._wait_room()
        n = self._counts.get(topic)
        if n is None:
            n = await self._partition_count(topic)
        sticky = False
        if partition is None:
            if key:
                partition = codec.partition_for_key(key, n)
            else:
                sticky = True
                partition = self._round_robin.get(topic)
                if partition is None or partition >= n:
                    partition = self._sticky(topic, n)
        elif not 0 <= partition < n:
            raise PartitionOutOfRangeError(
                f"partition {partition} out of range: topic {topic!r} has {n} partitions")
        if timestamp_ms is None:
            timestamp_ms = self._clock_ms(_time())
        size = len(value) + _RECORD_OVERHEAD if key is None and headers is None else record_size(
            value, key, headers)
        if size > _MAX_RECORD_BYTES:
            raise BatchTooLargeError(
                f"record of about {size} bytes does not fit in a batch of at most "
                f"{MAX_BATCH_BYTES} bytes")
        batch, sealed, created = self._acc.append(
            topic, partition, value, key, timestamp_ms, headers, size)
        handle = RecordFuture(batch, len(batch.values) - 1)
        self._buffered += size
        if created:
            self._buffered += _BATCH_SLACK
            if self.linger_ms > 0:
                batch.timer = self._loop.call_later(self.linger_ms / 1000, self._linger, batch)
            else:
                batch.timer = self._loop.call_soon(self._linger, batch)  # type: ignore[assignment]
        if batch.has_keys or batch.has_headers:
            self._unhot(batch)
        elif key is None and headers is None:
            # Later plain records to this partition take the fast path into this batch.
            self._hot[(topic, partition)] = batch
            if sticky:
                self._hot[topic] = batch
        if sealed is not None:
            self._dispatch(sealed)
            # A caller sending in a tight loop never yields otherwise, and the sender
            # tasks (writes, acks) only run when it does.
            await asyncio.sleep(0)
        return handle

    def _clock_ms(self, now: float) -> int:
        """`now` (time.time()) in whole milliseconds, remembered with the bounds of that
        millisecond: records read in the same millisecond share one int (no conversion and no
        allocation per record), and their timestamps stay exact to the millisecond."""
        ms = self._ms = int(now * 1000)
        self._ms_from = ms / 1000
        self._ms_until = (ms + 1) / 1000
        return ms

    def _unhot(self, batch: PartitionBatch) -> None:
        """Take a batch out of the fast path of `send()` (sealed, or given keys or headers)."""
        hot = self._hot
        if hot.get((batch.topic, batch.partition)) is batch:
            del hot[(batch.topic, batch.partition)]
        if hot.get(batch.topic) is batch:
            del hot[batch.topic]

    def _sticky(self, topic: str, n: int) -> int:
        """The partition keyless records of `topic` fill now (round robin per batch)."""
        partition = self._round_robin.get(topic)
        if partition is None or partition >= n:
            partition = self._round_robin[topic] = len(self._round_robin) % n
        return partition

    async def send_many(
        self,
        topic: str,
        values: Sequence[bytes],
        *,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> asyncio.Future[list[ChunkAck]]:
        """Queue many keyless records at once; one future for the whole call.

        The bulk path for throughput: records are appended to batches in slices, with no
        per-record future or metadata, so its cost per record is a fraction of `send()`'s. The
        future resolves to the runs of consecutive records as stored (partition, base offset,
        count), in the order of `values`, or fails if any run fails. Keyless records of one
        call may span partitions (round robin per batch) unless `partition` is given.
        """
        if not self._started:
            raise ClientClosedError("producer not started: use `async with` or await start()")
        if self._closed:
            raise ClientClosedError("producer is closed")
        n = self._metadata.partition_count(topic)
        if n is None:
            n = await self._partition_count(topic)
        if partition is not None and not 0 <= partition < n:
            raise PartitionOutOfRangeError(
                f"partition {partition} out of range: topic {topic!r} has {n} partitions")
        fut: asyncio.Future[list[ChunkAck]] = self._loop.create_future()
        owner = ManyFuture(fut)
        total = len(values)
        if total and max(map(len, values)) + _RECORD_OVERHEAD > _MAX_RECORD_BYTES:
            raise BatchTooLargeError(
                f"a record above {_MAX_RECORD_BYTES} bytes does not fit in a batch")
        if timestamp_ms is None:
            timestamp_ms = int(time.time() * 1000)
        # cum[k]: estimated bytes of records 0..k, computed at C speed.
        cum = list(itertools.accumulate(map(_RECORD_OVERHEAD.__add__, map(len, values))))
        i = seq = 0
        while i < total:
            if self._buffered >= self.buffer_bytes:
                await self._wait_room()
            p = partition if partition is not None else self._sticky(topic, n)
            room = self._acc.room(topic, p)
            before = cum[i - 1] if i else 0
            j = bisect.bisect_right(cum, before + room, i)
            if j == i:
                sealed = self._acc.seal(topic, p)
                if sealed is not None:
                    # The open batch is too full for the next record: send it, retry.
                    self._dispatch(sealed)
                    await asyncio.sleep(0)
                    continue
                j = i + 1  # an empty batch takes at least one record
            batch, created = self._acc.get_or_open(topic, p)
            used = cum[j - 1] - before
            batch.extend(values[i:j], timestamp_ms, used, owner, seq)
            seq += 1
            self._buffered += used + (_BATCH_SLACK if created else 0)
            if created:
                if self.linger_ms > 0:
                    batch.timer = self._loop.call_later(
                        self.linger_ms / 1000, self._linger, batch)
                else:
                    batch.timer = self._loop.call_soon(  # type: ignore[assignment]
                        self._linger, batch)
            i = j
            if i < total:
                self._acc.seal(topic, p)
                self._dispatch(batch)
                await asyncio.sleep(0)
        owner.closed = True
        owner.maybe_resolve()
        return fut

    async def send_and_wait(self, topic: str, value: bytes, key: bytes | None = None,
                            headers: Sequence[tuple[str, bytes]] | None = None,
                            partition: int | None = None,
                            timestamp_ms: int | None = None) -> RecordMetadata:
        fut = await self.send(topic, value, key, headers, partition, timestamp_ms)
        return await fut

    def _linger(self, batch: PartitionBatch) -> None:
        if self._acc.open_batch(batch.topic, batch.partition) is batch:
            self._acc.seal(batch.topic, batch.partition)
            self._dispatch(batch)

    def _dispatch(self, batch: PartitionBatch) -> None:
        """Hand a sealed batch to the sender of its partition's leader."""
        self._unhot(batch)
        if batch.timer is not None:
            batch.timer.cancel()
            batch.timer = None
        # Keyless records stick to one partition per batch; move on once it is sealed.
        if batch.topic in self._round_robin and self._round_robin[batch.topic] == batch.partition:
            n = self._metadata.partition_count(batch.topic) or 1
            self._round_robin[batch.topic] = (batch.partition + 1) % n
        loop = asyncio.get_running_loop()
        batch.deadline = loop.time() + self.delivery_timeout_ms / 1000
        done = loop.create_future()
        self._batch_futures[id(batch)] = done
        try:
            batch.encode()
        except Exception as exc:
            self._batch_done(batch, RilletError(f"cannot encode batch: {exc}"))
            return
        self._sender_for(batch).enqueue(batch)

    def _sender_for(self, batch: PartitionBatch) -> _Sender:
        address = self._metadata.leader_address(batch.topic, batch.partition)
        if address is None:
            address = self._metadata.bootstrap[0]
        sender = self._senders.get(address)
        if sender is None:
            sender = self._senders[address] = _Sender(self, address)
        return sender

    async def _reroute(self, sender: _Sender) -> None:
        """After a failure: refresh stale metadata, then move batches whose leader changed."""
        if self._metadata.stale:
            try:
                await fetch_metadata(self._pool, self._metadata,
                                     timeout_s=self.request_timeout_s)
                self._counts.clear()
                self._hot.clear()
            except RilletError as exc:
                log.info("metadata refresh failed: %s", exc)
                return
        moved = [b for b in sender.queue
                 if self._metadata.leader_address(b.topic, b.partition) not in
                 (None, sender.address)]
        if moved:
            sender.queue = deque(b for b in sender.queue if b not in moved)
            for b in moved:
                self._sender_for(b).enqueue(b)

    def _batch_done(self, batch: PartitionBatch, exc: BaseException | None,
                    base_offset: int = -1) -> None:
        if exc is None:
            batch.complete(base_offset)
        else:
            batch.fail(exc)
        self._buffered -= batch.size
        if self._buffered < self.buffer_bytes:
            self._room.set()
        done = self._batch_futures.pop(id(batch), None)
        if done is not None and not done.done():
            done.set_result(None)

    async def _wait_room(self) -> None:
        # Whatever is still lingering must flow, or the room we wait for never frees up.
        for b in self._acc.seal_all():
            self._dispatch(b)
        while self._buffered >= self.buffer_bytes:
            self._room.clear()
            await self._room.wait()

    async def flush(self, timeout_s: float | None = None) -> None:
        """Send every record queued so far and wait until each is acked or failed."""
        for b in self._acc.seal_all():
            self._dispatch(b)
        pending = list(self._batch_futures.values())
        if not pending:
            return
        _, not_done = await asyncio.wait(pending, timeout=timeout_s)
        if not_done:
            raise RequestTimeoutError(
                f"flush: {len(not_done)} batches still unacknowledged after {timeout_s} s")

    async def close(self, *, flush: bool = True, timeout_s: float | None = 30.0) -> None:
        """Flush (unless told not to), then stop every sender and fail what is left."""
        if self._closed:
            return
        self._closed = True
        self._hot.clear()
        try:
            if flush:
                try:
                    await self.flush(timeout_s)
                except RequestTimeoutError as exc:
                    log.warning("closing producer with records unacknowledged: %s", exc)
        finally:
            for b in self._acc.seal_all():
                if b.timer is not None:
                    b.timer.cancel()
                self._buffered -= b.size
                b.fail(ClientClosedError("producer closed before the record was sent"))
            senders, self._senders = list(self._senders.values()), {}
            for s in senders:
                s.task.cancel()
            await asyncio.gather(*(s.task for s in senders), return_exceptions=True)
            await self._pool.close()
