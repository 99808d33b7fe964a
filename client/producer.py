"""The asyncio producer: batches records per partition and pipelines them to partition leaders.

Shape (aiokafka's, trimmed): `send()` appends a record to the accumulator and returns a
`RecordFuture` (a future-like handle on the record's batch, no asyncio.Future per record);
a batch is sealed when full, when `linger_ms` passes, or on `flush()`. Sealed batches join the
queue of their partition (`_PartitionState`); each broker address has a `_Sender` task that owns
ONE bidi Produce stream and writes the queued batches of the partitions that node leads, at most
`max_in_flight` unanswered per partition, and matches answers to batches in order (the broker
answers in order).

Idempotence (default; docs/decisions/0403): the producer gets a producer id from the cluster
once (`Metadata.InitProducer`) and stamps every batch with it and a per-partition sequence before
encoding, so a resend is the identical bytes and the leader drops duplicates, answering with the
original offset. Retries: a retriable answer (NOT_LEADER, UNAVAILABLE, OUT_OF_ORDER_SEQUENCE) or
a broken stream pauses the partition: once its later in-flight batches are answered, every
unacknowledged batch goes back to the front of its queue in sequence order, and after a backoff
(50 ms doubling to 1 s) and a metadata refresh the partition resumes at its current leader. A
batch fails with RequestTimeoutError when `delivery_timeout_ms` passes. Without idempotence the
same resends give at-least-once delivery (docs/decisions/0302).
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
from rillet.api.v1 import admin_pb2, admin_pb2_grpc, common_pb2, log_pb2, log_pb2_grpc
from rillet.client.accumulator import (
    BATCH_SLACK,
    DEFAULT_BATCH_BYTES,
    MAX_BATCH_BYTES,
    RECORD_OVERHEAD,
    Accumulator,
    ChunkAck,
    ManyFuture,
    PartitionBatch,
    RecordFuture,
    RecordMetadata,
    record_size,
)
from rillet.client.connection import (
    ChannelPool,
    Credentials,
    fetch_metadata,
    make_stub,
    parse_bootstrap,
)
from rillet.client.errors import (
    BatchTooLargeError,
    ClientClosedError,
    ClusterUnreachableError,
    PartitionOutOfRangeError,
    RequestTimeoutError,
    RilletError,
    UnknownTopicError,
    from_error,
    from_rpc_error,
)
from rillet.client.metadata import NO_LEADER, ClusterMetadata

log = logging.getLogger(__name__)

# grpc-stubs does not declare the end-of-stream sentinel.
_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]

# The largest record that fits in a batch of its own under the broker's limit.
_MAX_RECORD_BYTES = MAX_BATCH_BYTES - BATCH_SLACK

ACKS = {"none": log_pb2.ACKS_NONE, "leader": log_pb2.ACKS_LEADER, "all": log_pb2.ACKS_ALL}

#: Sequences are int32 in the batch header and wrap from 2**31 - 1 to 0.
SEQUENCE_MODULUS = 2 ** 31
#: Batches per partition a leader remembers per producer (the broker contract), and so the
#: most an idempotent producer keeps unanswered per partition.
IDEMPOTENT_MAX_IN_FLIGHT = 5

__all__ = ["ACKS", "SEQUENCE_MODULUS", "Producer", "RecordFuture", "RecordMetadata"]

_time = time.time

_DUPLICATE_SEQUENCE = common_pb2.ERROR_CODE_DUPLICATE_SEQUENCE
_OUT_OF_ORDER = common_pb2.ERROR_CODE_OUT_OF_ORDER_SEQUENCE
# The shortest wait before an open batch of a busy partition is looked at again.
_RELINGER_MIN_MS = 5.0
# Upper bound on each metadata / InitProducer call the maintenance task makes (seconds).
_BACKGROUND_CALL_TIMEOUT_S = 2.0
# How often paused partitions poll metadata for a new leader.
_METADATA_POLL_S = 0.1
#: Metadata is refreshed at least this often while the producer has partitions (seconds).
METADATA_MAX_AGE_S = 10.0
# How often metadata is polled while some partition is sent through a node that forwards it
# because its leader was unknown (an election was running when it was routed).
_UNROUTED_POLL_S = 0.2
# Statuses that end a Produce stream because the broker refuses it (not a node failing):
# the unanswered batches fail. Any other status (UNAVAILABLE, and INTERNAL/UNKNOWN as a reset
# HTTP/2 stream shows up) means a broken connection: the outcome is unknown, resend.
_STREAM_REFUSED = frozenset({
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.FAILED_PRECONDITION,
})
# Logged once per process: a broker without InitProducer (older single node).
_warned_no_idempotence = False


class _StreamBroken(Exception):
    """Internal: the stream must be replaced; carries the cause for the log."""


class _PartitionState:
    """One partition's batches between dispatch and answer, its sequence and its route.

    Invariants: `retry`, then `in_flight`, then `queue` hold the partition's unanswered batches
    in dispatch (= sequence) order; `in_flight` are written to `sender`'s stream and unanswered
    (at most `max_in_flight`); `retry` only fills while `paused`. A paused partition writes
    nothing until the producer resumes it (backoff, metadata, route).
    """

    __slots__ = ("backoff", "head_refused", "in_flight", "in_ready", "known", "next_seq",
                 "partition", "paused", "producer_id", "queue", "retry", "sender", "tainted",
                 "topic")

    def __init__(self, topic: str, partition: int, producer_id: int, backoff: float) -> None:
        self.topic = topic
        self.partition = partition
        #: -1 when not idempotent. Per partition because a reset (see `tainted`) takes a new id.
        self.producer_id = producer_id
        #: base_sequence of the next batch stamped.
        self.next_seq = 0
        #: The partition acknowledged a batch under `producer_id`, so its leader knows the
        #: producer. Until then one batch at a time: a leader appends ANY sequence of an
        #: unknown producer, so a second batch must not overtake a refused first one.
        self.known = producer_id < 0
        self.queue: deque[PartitionBatch] = deque()
        self.in_flight: deque[PartitionBatch] = deque()
        self.retry: list[PartitionBatch] = []
        self.sender: _Sender | None = None
        self.paused = False
        #: The sender whose `ready` deque holds this partition, if any.
        self.in_ready: _Sender | None = None
        #: Pause before the next resend (seconds); doubles per failure, reset by an ack.
        self.backoff = backoff
        #: A batch of this partition was given up on (failed, expired) while the broker may
        #: hold it or not: if the oldest unanswered batch is then refused as out of order, the
        #: gap is ours and will never fill; only a new producer id continues (`head_refused`).
        self.tainted = False
        #: The oldest unanswered batch was answered OUT_OF_ORDER_SEQUENCE this round.
        self.head_refused = False

    def pending(self) -> int:
        return len(self.retry) + len(self.in_flight) + len(self.queue)

    def next_sequence(self, count: int) -> int:
        """Take `count` sequence numbers; returns the first (wrapping at 2**31)."""
        seq = self.next_seq
        self.next_seq = (seq + count) % SEQUENCE_MODULUS
        return seq


class _Sender:
    """Owns the Produce stream to one broker address; writes the batches of the partitions
    routed to it, round robin across partitions."""

    def __init__(self, producer: Producer, address: str) -> None:
        self.producer = producer
        self.address = address
        #: Partitions that may have a batch to write (a partition is here at most once).
        self.ready: deque[_PartitionState] = deque()
        #: Written, unanswered batches across partitions, in write order.
        self.in_flight: deque[PartitionBatch] = deque()
        #: loop.time() of the last answer, or of the first write after an idle spell.
        self.last_progress = 0.0
        self._wakeup = asyncio.Event()
        #: Set by the producer when the stream went silent with batches in flight.
        self.stalled = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(
            self._run(), name=f"rillet-producer-sender-{address}")
        self.task.add_done_callback(self._on_done)

    def enqueue(self, batch: PartitionBatch) -> None:
        st = self.producer._state(batch.topic, batch.partition)
        st.queue.append(batch)
        if not st.paused:
            self.wake(st)

    def wake(self, st: _PartitionState) -> None:
        # `in_ready` names the sender whose `ready` holds the partition: a partition that
        # moved may still sit in its old sender's deque, which skips it.
        if st.in_ready is not self:
            st.in_ready = self
            self.ready.append(st)
            self._wakeup.set()

    def _on_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return  # closed by the producer, which fails what is left
        exc = task.exception() or RilletError("sender died")
        log.error("producer sender for %s died: %r", self.address, exc)
        # The batch being handled when it died has failed with the error (`_read_loop`).
        # The others of its partitions move, in order, to a new sender for this address,
        # as after a broken stream: what was in flight is resent.
        producer = self.producer
        if producer._senders.get(self.address) is self:
            del producer._senders[self.address]
        self.in_flight.clear()
        for st in list(producer._states.values()):
            if st.sender is not self:
                continue
            st.retry.extend(st.in_flight)
            st.in_flight.clear()
            st.queue.extendleft(reversed(st.retry))
            st.retry.clear()
            st.paused = False
            st.in_ready = None
            producer._resume_at.pop(st, None)
            if st.queue:
                st.sender = producer._sender_at(self.address)
                st.sender.wake(st)
            else:
                st.sender = None

    async def _run(self) -> None:
        while True:
            while not self.ready:
                self._wakeup.clear()
                await self._wakeup.wait()
            stub = make_stub(log_pb2_grpc.ProduceStub, self.producer._pool.get(self.address))
            call = stub.Produce()
            self.stalled.clear()
            tasks = {asyncio.ensure_future(self._write_loop(call)),
                     asyncio.ensure_future(self._read_loop(call)),
                     asyncio.ensure_future(self.stalled.wait())}
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                call.cancel()
            cause: BaseException | None = next(
                (t.exception() for t in done if not t.cancelled()), None)
            if cause is not None and not isinstance(cause, _StreamBroken | RilletError):
                raise cause
            if cause is None:
                cause = _StreamBroken(
                    f"no answer within {self.producer.request_timeout_s} s")
            self._stream_broken(cause)

    def _stream_broken(self, cause: BaseException) -> None:
        """Every unanswered batch's outcome is unknown: each partition rewinds and pauses."""
        log.info("produce stream to %s broke (%s); %d batches unanswered",
                 self.address, cause, len(self.in_flight))
        producer = self.producer
        self.in_flight.clear()
        producer._metadata.mark_stale()  # the node may be gone or no longer lead
        # Every partition routed here waits for fresh metadata before it writes again,
        # including one that was paused and still waiting for answers that now never come.
        for st in list(producer._states.values()):
            if st.sender is not self or st in producer._resume_at:
                continue  # routed elsewhere, or already rewound and waiting to resume
            if not (st.paused or st.in_flight or st.queue):
                continue
            st.retry.extend(st.in_flight)
            st.in_flight.clear()
            producer._pause(st)
            producer._rewind(st)

    async def _write_loop(self, call: grpc.aio.StreamStreamCall[Any, Any]) -> None:
        producer = self.producer
        max_in_flight = producer.max_in_flight
        acks = producer.acks
        ready = self.ready
        loop = asyncio.get_running_loop()
        while True:
            while not ready:
                self._wakeup.clear()
                await self._wakeup.wait()
            st = ready.popleft()
            if st.in_ready is not self:
                continue  # moved to another sender's deque meanwhile
            st.in_ready = None
            if st.sender is not self or st.paused or not st.queue:
                continue
            if len(st.in_flight) >= (max_in_flight if st.known else 1):
                continue  # an answer wakes it again
            b = st.queue.popleft()
            if b.done:  # expired or failed while queued
                self.wake(st)
                continue
            b.attempts += 1
            b.unknown = True
            if not self.in_flight:
                self.last_progress = loop.time()
            st.in_flight.append(b)
            self.in_flight.append(b)
            if st.queue and st.known and len(st.in_flight) < max_in_flight:
                self.wake(st)  # behind the others: partitions take turns
            request = log_pb2.ProduceRequest(
                topic=b.topic, partition=b.partition, batch=b.encode(), acks=acks)
            try:
                await call.write(request)
            except grpc.aio.AioRpcError as exc:
                raise _StreamBroken(f"write failed: {from_rpc_error(exc)}") from exc
            except asyncio.InvalidStateError as exc:
                raise _StreamBroken("write failed: the call already ended") from exc

    async def _read_loop(self, call: grpc.aio.StreamStreamCall[Any, Any]) -> None:
        producer = self.producer
        loop = asyncio.get_running_loop()
        try:
            while True:
                response: Any = await call.read()
                if response is _EOF:
                    raise _StreamBroken(f"stream ended: {await call.code()}")
                self.last_progress = loop.time()
                b = self.in_flight.popleft()
                st = producer._state(b.topic, b.partition)
                head = st.in_flight.popleft()
                assert head is b, "answers come in write order"
                b.unknown = False
                try:
                    if response.HasField("error") and response.error.code:
                        producer._answered_error(st, b, response.error)
                    else:
                        producer._answered_ok(st, b, response.base_offset)
                except Exception as exc:  # a bug: the batch is in no list now, fail it
                    producer._give_up(st, b, exc)
                    raise
                if st.paused:
                    if not st.in_flight:
                        producer._rewind(st)
                elif st.queue:
                    self.wake(st)
                else:
                    producer._release_held(st)
        except grpc.aio.AioRpcError as exc:
            err = from_rpc_error(exc)
            if exc.code() in _STREAM_REFUSED:
                # The broker rejected the stream itself; every unanswered batch fails alike.
                for b in self.in_flight:
                    st = producer._state(b.topic, b.partition)
                    st.in_flight.remove(b)
                    producer._give_up(st, b, err)
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
        idempotent: bool = True,
        linger_ms: float = 5.0,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
        max_in_flight: int = 5,
        buffer_bytes: int = 8 * 1024 * 1024,
        retries: int | None = None,
        retry_backoff_ms: float = 50.0,
        retry_backoff_max_ms: float = 1000.0,
        delivery_timeout_ms: float = 120_000.0,
        request_timeout_s: float = 10.0,
        credentials: Credentials | None = None,
    ) -> None:
        """`max_in_flight` bounds unanswered batches per partition (at most 5 when
        idempotent: the leader remembers 5 batches per producer for deduplication).
        `retries` (None: no limit) caps resends of one batch; either way a batch fails once
        `delivery_timeout_ms` passed since it was sealed.
        `request_timeout_s` bounds metadata calls and how long a stream may stay silent with
        batches in flight before it is replaced. `idempotent=False` gives at-least-once
        delivery (docs/decisions/0302, 0403). `credentials`: TLS and token
        (rillet.client.Credentials; None: from RILLET_TLS_* and RILLET_TOKEN)."""
        if acks not in ACKS:
            raise ValueError(f"acks must be one of {sorted(ACKS)}, not {acks!r}")
        if not 0 < batch_bytes <= MAX_BATCH_BYTES:
            raise ValueError(f"batch_bytes must be in 1..{MAX_BATCH_BYTES}")
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.acks = ACKS[acks]
        self.idempotent = idempotent
        self.linger_ms = linger_ms
        if idempotent and max_in_flight > IDEMPOTENT_MAX_IN_FLIGHT:
            # A leader remembers a producer's last 5 batches per partition: a resend of an
            # older one would only be recognised as DUPLICATE_SEQUENCE (offset unknown).
            log.debug("max_in_flight %d lowered to %d for the idempotent producer",
                      max_in_flight, IDEMPOTENT_MAX_IN_FLIGHT)
            max_in_flight = IDEMPOTENT_MAX_IN_FLIGHT
        self.max_in_flight = max_in_flight
        self.buffer_bytes = buffer_bytes
        self.retries = retries
        self.retry_backoff_ms = retry_backoff_ms
        self.retry_backoff_max_ms = retry_backoff_max_ms
        self.delivery_timeout_ms = delivery_timeout_ms
        self.request_timeout_s = request_timeout_s
        #: The id stamped on new partitions' batches; -1 until start() got one (or when the
        #: producer is not idempotent, or the broker cannot hand out ids).
        self.producer_id = codec.NO_PRODUCER
        self._metadata = ClusterMetadata(parse_bootstrap(bootstrap))
        self._pool = ChannelPool(credentials)
        self._acc = Accumulator(batch_bytes)
        self._senders: dict[str, _Sender] = {}
        self._states: dict[tuple[str, int], _PartitionState] = {}
        #: Paused partitions and the loop.time() at which each may resume.
        self._resume_at: dict[_PartitionState, float] = {}
        self._maintenance: asyncio.Task[None] | None = None
        #: loop.time() of the last metadata refresh by the maintenance task.
        self._refreshed_at = 0.0
        #: Some partition was routed while its leader was unknown: it goes through a node that
        #: forwards it, and a busy partition never turns idle to be routed again, so the
        #: maintenance task looks for its leader every _UNROUTED_POLL_S.
        self._unrouted = False
        self._maintenance_wake = asyncio.Event()
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

    @property
    def _background_timeout_s(self) -> float:
        """Deadline of the maintenance task's own calls: short, so that one unreachable
        cluster does not hold up expiries and resumes for a whole request timeout."""
        return min(self.request_timeout_s, _BACKGROUND_CALL_TIMEOUT_S)

    async def start(self) -> None:
        """Fetch metadata (so a wrong bootstrap fails here, not at the first send) and, when
        idempotent, a producer id."""
        await fetch_metadata(self._pool, self._metadata, timeout_s=self.request_timeout_s)
        self._loop = asyncio.get_running_loop()
        if self.idempotent:
            self.producer_id = await self._init_producer_id()
        self._refreshed_at = self._loop.time()
        self._maintenance = self._loop.create_task(
            self._maintain(), name="rillet-producer-maintenance")
        self._started = True

    async def _init_producer_id(self, timeout_s: float | None = None) -> int:
        """A new producer id from any node (bootstrap list first), or -1 when the broker does
        not implement InitProducer: the producer then runs without idempotence."""
        global _warned_no_idempotence
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.request_timeout_s if timeout_s is None else timeout_s)
        backoff = self.retry_backoff_ms / 1000
        last: BaseException | None = None
        while True:
            candidates = list(dict.fromkeys(
                [*self._metadata.bootstrap, *self._metadata.brokers.values()]))
            for addr in candidates:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                stub = make_stub(admin_pb2_grpc.MetadataStub, self._pool.get(addr))
                try:
                    response: admin_pb2.InitProducerResponse = await stub.InitProducer(
                        admin_pb2.InitProducerRequest(), timeout=max(remaining, 0.05))
                except grpc.aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                        if not _warned_no_idempotence:
                            _warned_no_idempotence = True
                            log.warning("broker %s cannot hand out producer ids "
                                        "(InitProducer unimplemented): producing without "
                                        "idempotence, at least once", addr)
                        return codec.NO_PRODUCER
                    err = from_rpc_error(exc)
                    if not err.retriable and exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                        raise err from exc
                    last = err
                    log.debug("InitProducer at %s failed: %s", addr, exc.details())
                    continue
                log.debug("producer id %d from %s", response.producer_id, addr)
                return int(response.producer_id)
            if loop.time() + backoff >= deadline:
                raise ClusterUnreachableError(
                    f"no producer id from {','.join(candidates)}: {last or 'no answer'}")
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.retry_backoff_max_ms / 1000)

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
                size = len(value) + RECORD_OVERHEAD
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
        size = len(value) + RECORD_OVERHEAD if key is None and headers is None else record_size(
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
            self._buffered += BATCH_SLACK
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
        if total and max(map(len, values)) + RECORD_OVERHEAD > _MAX_RECORD_BYTES:
            raise BatchTooLargeError(
                f"a record above {_MAX_RECORD_BYTES} bytes does not fit in a batch")
        if timestamp_ms is None:
            timestamp_ms = int(time.time() * 1000)
        # cum[k]: estimated bytes of records 0..k, computed at C speed.
        cum = list(itertools.accumulate(map(RECORD_OVERHEAD.__add__, map(len, values))))
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
            self._buffered += used + (BATCH_SLACK if created else 0)
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
        """Linger passed: seal and send the batch, unless its partition cannot send it now.

        A partition that is paused (failover) or already has sealed batches waiting lets its
        open batch keep growing (until full or flushed) and looks again a little later: the
        backlog is then a few full batches instead of many small ones that would each cost
        a round trip to drain, in order, once the partition moves on.
        """
        if self._acc.open_batch(batch.topic, batch.partition) is not batch:
            return
        st = self._states.get((batch.topic, batch.partition))
        if st is not None and (st.paused or st.queue) and not self._closed:
            batch.held = True
            batch.timer = self._loop.call_later(
                max(self.linger_ms, _RELINGER_MIN_MS) / 1000, self._linger, batch)
            return
        self._acc.seal(batch.topic, batch.partition)
        self._dispatch(batch)

    def _release_held(self, st: _PartitionState) -> None:
        """The partition can send again: seal its open batch now if its linger passed."""
        batch = self._acc.open_batch(st.topic, st.partition)
        if batch is not None and batch.held:
            self._acc.seal(st.topic, st.partition)
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
        st = self._state(batch.topic, batch.partition)
        if st.producer_id >= 0 and not st.tainted:
            batch.producer_id = st.producer_id
            batch.producer_epoch = 0
            batch.base_sequence = st.next_seq
        try:
            batch.encode()
        except Exception as exc:
            self._batch_done(batch, RilletError(f"cannot encode batch: {exc}"))
            return
        if batch.base_sequence >= 0:
            st.next_sequence(len(batch))
        sender = st.sender
        task = getattr(sender, "task", None)
        if (sender is None or not (st.paused or st.in_flight or st.queue)
                or (task is not None and task.done())):
            # Idle partition: follow the latest metadata (a leader may have moved).
            sender = st.sender = self._sender_for(batch)
        sender.enqueue(batch)

    def _state(self, topic: str, partition: int) -> _PartitionState:
        st = self._states.get((topic, partition))
        if st is None:
            st = self._states[(topic, partition)] = _PartitionState(
                topic, partition, self.producer_id, self.retry_backoff_ms / 1000)
        return st

    def _sender_for(self, batch: PartitionBatch) -> _Sender:
        address = self._metadata.leader_address(batch.topic, batch.partition)
        if self._metadata.leader(batch.topic, batch.partition) == NO_LEADER:
            self._unrouted = True  # any node forwards; _maintain finds the leader soon
        return self._sender_at(address or self._metadata.bootstrap[0])

    def _sender_at(self, address: str) -> _Sender:
        sender = self._senders.get(address)
        # A sender whose task died (a bug; logged) is replaced. getattr: the hot-path bench
        # swaps in a stand-in without a task.
        task = getattr(sender, "task", None)
        if sender is None or (task is not None and task.done()):
            sender = self._senders[address] = _Sender(self, address)
        return sender

    # ------------------------------------------------------------------ answers and retries

    def _answered_ok(self, st: _PartitionState, b: PartitionBatch, base_offset: int) -> None:
        """The broker stored `b` (now, or before: a duplicate answers the original offset)."""
        st.backoff = self.retry_backoff_ms / 1000
        st.known = True
        if not st.retry:
            # Broker and producer agree on everything up to here again.
            st.tainted = False
        self._batch_done(b, None, base_offset)

    def _answered_error(self, st: _PartitionState, b: PartitionBatch,
                        error: common_pb2.Error) -> None:
        if error.code == _DUPLICATE_SEQUENCE:
            # Stored long ago; the leader no longer remembers where (contract: success).
            self._answered_ok(st, b, -1)
            return
        err = from_error(error)
        if err.retriable and (self.retries is None or b.attempts <= self.retries):
            if err.refresh_metadata:
                self._metadata.mark_stale()
            if error.code == _OUT_OF_ORDER and not st.retry:
                st.head_refused = True
            if not st.paused:
                log.info("%s[%d]: %s; resending from sequence %d", st.topic, st.partition,
                         err, b.base_sequence)
                self._pause(st)
            st.retry.append(b)
            return
        self._give_up(st, b, err)

    def _give_up(self, st: _PartitionState, b: PartitionBatch, exc: BaseException) -> None:
        """Fail `b` for good. Its sequence numbers are then a gap the leader may never see
        filled: the partition is tainted (see `_PartitionState.tainted`)."""
        if st.producer_id >= 0:
            st.tainted = True
        self._batch_done(b, exc)

    def _pause(self, st: _PartitionState) -> None:
        """Stop writing this partition's batches until `_rewind` and the resume."""
        st.paused = True

    def _rewind(self, st: _PartitionState) -> None:
        """Nothing of a paused partition is in flight any more: put the batches to resend
        back in front of its queue, in sequence order, and schedule the resume."""
        if st.retry:
            st.queue.extendleft(reversed(st.retry))
            st.retry.clear()
        self._resume_at[st] = self._loop.time() + st.backoff
        st.backoff = min(st.backoff * 2, self.retry_backoff_max_ms / 1000)
        self._maintenance_wake.set()

    async def _maintain(self) -> None:
        """The producer's one background task besides the senders: expires batches past
        their delivery timeout, replaces silent streams, and resumes paused partitions
        (metadata refresh, producer id reset, new route)."""
        while True:
            now = self._loop.time()
            wait = _METADATA_POLL_S
            if self._resume_at:
                wait = min(wait, max(min(self._resume_at.values()) - now, 0.0))
            if wait > 0:
                self._maintenance_wake.clear()
                try:
                    async with asyncio.timeout(wait):
                        await self._maintenance_wake.wait()
                except TimeoutError:
                    pass
            try:
                now = self._loop.time()
                self._expire(now)
                self._check_stalls(now)
                await self._resume_due(now)
                age = now - self._refreshed_at
                if self._states and (age >= METADATA_MAX_AGE_S
                                     or (self._unrouted and age >= _UNROUTED_POLL_S)):
                    await self._follow_leaders()
            except Exception:
                log.exception("producer maintenance failed; continuing")
                await asyncio.sleep(0.1)

    def _expire(self, now: float) -> None:
        """Fail batches whose delivery timeout passed (deadlines grow in dispatch order)."""
        for st in self._states.values():
            if not (st.retry or st.in_flight or st.queue):
                continue
            for part in (st.retry, st.in_flight, st.queue):
                for b in part:
                    if b.deadline > now:
                        break
                    if not b.done:
                        self._give_up(st, b, RequestTimeoutError(
                            f"batch for {b.topic}[{b.partition}] not acknowledged within "
                            f"{self.delivery_timeout_ms:g} ms ({b.attempts} attempts)"))
            # Batches still in flight stay there until answered: answers match by position.
            while st.queue and st.queue[0].done:
                st.queue.popleft()
            st.retry[:] = [b for b in st.retry if not b.done]

    def _check_stalls(self, now: float) -> None:
        for sender in self._senders.values():
            if (isinstance(sender, _Sender) and sender.in_flight
                    and now - sender.last_progress > self.request_timeout_s):
                sender.stalled.set()

    async def _resume_due(self, now: float) -> None:
        """Resume paused partitions whose backoff passed, or whose leader moved.

        While any partition is paused, metadata is refreshed every `_METADATA_POLL_S`: a
        partition resumes as soon as a new leader is known, without waiting out a backoff
        that grew while the old leader was being replaced.
        """
        if not self._resume_at:
            return
        if self._metadata.stale and now - self._refreshed_at >= _METADATA_POLL_S:
            self._refreshed_at = now
            try:
                await fetch_metadata(self._pool, self._metadata,
                                     sorted({st.topic for st in self._resume_at}),
                                     timeout_s=self._background_timeout_s)
                self._counts.clear()
                self._hot.clear()
            except RilletError as exc:
                log.info("metadata refresh failed: %s", exc)
        now = self._loop.time()
        metadata = self._metadata
        for st, at in list(self._resume_at.items()):
            leader = metadata.leader(st.topic, st.partition)
            address = metadata.leader_address(st.topic, st.partition)
            if address is None or (leader == NO_LEADER and len(metadata.brokers) > 1):
                continue  # an election is running
            moved = st.sender is None or address != st.sender.address
            if at > now and not moved:
                continue
            if st.tainted and st.head_refused and st.producer_id >= 0:
                if not await self._reset(st):
                    self._resume_at[st] = self._loop.time() + st.backoff
                    continue
            st.head_refused = False
            del self._resume_at[st]
            st.paused = False
            log.debug("%s[%d]: resuming at %s (leader %d), %d batches queued",
                      st.topic, st.partition, address, leader, len(st.queue))
            if st.queue:
                sender = st.sender = self._sender_at(address)
                sender.wake(st)
            else:
                st.sender = None
        if self._resume_at:
            metadata.mark_stale()  # keep polling until every paused partition has moved on

    async def _follow_leaders(self) -> None:
        """Periodic metadata refresh: a node that no longer leads a partition may keep
        answering (it forwards), so without this a moved leader would only be noticed after
        a failure. A partition whose leader moved drains what it has in flight on the old
        stream, then resumes at the new leader (the pause keeps its batches in order)."""
        self._refreshed_at = self._loop.time()
        try:
            await fetch_metadata(self._pool, self._metadata,
                                 sorted({st.topic for st in self._states.values()}),
                                 timeout_s=self._background_timeout_s)
        except RilletError as exc:
            log.info("metadata refresh failed: %s", exc)
            return
        self._counts.clear()
        self._hot.clear()
        self._unrouted = False
        for st in self._states.values():
            if st.paused or st.sender is None:
                continue
            if self._metadata.leader(st.topic, st.partition) == NO_LEADER:
                # Still electing (or this node's view lags): look again soon if the partition
                # is going through some other node meanwhile.
                self._unrouted = True
                continue
            address = self._metadata.leader_address(st.topic, st.partition)
            if address is None or address == st.sender.address:
                continue
            log.info("%s[%d]: leader moved to %s", st.topic, st.partition, address)
            if st.in_flight:
                self._pause(st)  # rewinds once the old stream answered the rest
            else:
                st.sender = self._sender_at(address)
                if st.queue:
                    st.sender.wake(st)

    async def _reset(self, st: _PartitionState) -> bool:
        """Continue a tainted partition under a new producer id from sequence 0.

        Called when the partition's oldest unanswered batch was refused as out of order after
        one of its batches was given up on: the leader will never see that gap filled. Every
        batch now queued was refused or never sent (none is in flight), so none is stored and
        restamping them cannot duplicate. False when no id could be had (try again later).
        """
        try:
            new_id = await self._init_producer_id(self._background_timeout_s)
        except RilletError as exc:
            log.info("%s[%d]: no new producer id yet: %s", st.topic, st.partition, exc)
            return False
        log.warning("%s[%d]: sequence gap after a failed batch; continuing as producer %d",
                    st.topic, st.partition, new_id)
        st.producer_id = new_id
        st.next_seq = 0
        st.known = new_id < 0
        st.tainted = False
        for b in st.queue:
            if b.done:
                continue
            b.payload = None
            b.producer_id = new_id
            b.producer_epoch = 0 if new_id >= 0 else codec.NO_PRODUCER
            b.base_sequence = (st.next_sequence(len(b)) if new_id >= 0
                               else codec.NO_PRODUCER)
            b.encode()
        return True

    def _batch_done(self, batch: PartitionBatch, exc: BaseException | None,
                    base_offset: int = -1) -> None:
        if batch.done:
            return  # expired earlier; a late answer changes nothing
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
            tasks = [s.task for s in self._senders.values()]
            self._senders = {}
            if self._maintenance is not None:
                tasks.append(self._maintenance)
                self._maintenance = None
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            closed = ClientClosedError("producer closed before the batch was acked")
            for st in self._states.values():
                for b in itertools.chain(st.retry, st.in_flight, st.queue):
                    self._batch_done(b, closed)
                st.retry.clear()
                st.in_flight.clear()
                st.queue.clear()
            self._resume_at.clear()
            await self._pool.close()
