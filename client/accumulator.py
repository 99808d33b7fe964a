"""Per-partition record batching for the producer, without I/O.

Records are appended column by column (values, keys, timestamps, headers) so that sealing a
batch is one call to `rillet.batch.encode`, the client's hot path (PERFORMANCE.md: columns cost
a fraction of one message per record). The producer decides when to seal (size, linger, flush)
and what to do with sealed batches; this module only keeps the columns and the outcome.

A record's future is a `RecordFuture`: a (batch, index) handle that reads its outcome from the
batch. There is no asyncio.Future per record; the batch is completed once, and the few handles
that are awaited or given a done-callback register with the batch (docs/decisions/0300).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from rillet import batch as codec

#: Broker limit on one produced batch (header included), unless it was configured otherwise.
MAX_BATCH_BYTES = 1024 * 1024
#: Default target size of a sealed batch: just below the broker's limit, header included.
DEFAULT_BATCH_BYTES = 1_000_000
# Upper bound on what one record adds to the serialized Records message beyond its key and
# value: field tags, length varints (values below 2 MiB), a sint64 timestamp delta.
RECORD_OVERHEAD = 20
_HEADER_OVERHEAD = 12
# Packed-field headers and the slack between this estimate and the real encoding.
BATCH_SLACK = codec.HEADER_SIZE + 64


class ChunkAck(NamedTuple):
    """Where a run of consecutive records from one `send_many` call was stored."""

    topic: str
    partition: int
    #: Offset of the first record of the run; the others follow densely. -1 when stored at
    #: an unknown offset (see RecordMetadata.offset).
    base_offset: int
    record_count: int


class ManyFuture:
    """Collects the chunks of one `send_many` call; resolves `future` once all are acked."""

    __slots__ = ("acks", "closed", "future", "pending")

    def __init__(self, future: asyncio.Future[list[ChunkAck]]) -> None:
        self.future = future
        self.acks: list[tuple[int, ChunkAck]] = []
        self.pending = 0
        #: Set once every chunk has been handed to a batch.
        self.closed = False

    def chunk_done(self, seq: int, ack: ChunkAck | None, exc: BaseException | None) -> None:
        self.pending -= 1
        if self.future.done():
            return
        if exc is not None:
            self.future.set_exception(exc)
            self.future.exception()
            return
        assert ack is not None
        self.acks.append((seq, ack))
        self.maybe_resolve()

    def maybe_resolve(self) -> None:
        if self.closed and self.pending == 0 and not self.future.done():
            self.future.set_result([a for _, a in sorted(self.acks)])


class RecordMetadata(NamedTuple):
    """Where an acknowledged record was stored."""

    topic: str
    partition: int
    #: The offset the broker assigned to the record; -1 when the record is stored but its
    #: offset is unknown (an idempotent resend the broker had stored long before, answered
    #: DUPLICATE_SEQUENCE: see docs/decisions/0403).
    offset: int
    #: The record's timestamp, milliseconds since the Unix epoch.
    timestamp_ms: int


def record_size(value: bytes, key: bytes | None,
                headers: Sequence[tuple[str, bytes]] | None) -> int:
    """Upper bound of the bytes a record adds to a batch."""
    size = len(value) + RECORD_OVERHEAD
    if key:
        size += len(key)
    if headers:
        for hk, hv in headers:
            size += len(hk) + len(hv) + _HEADER_OVERHEAD
    return size


# A done-callback registered on a record: (callback, the record's handle, its context).
_Callback = tuple[Callable[[Any], object], "RecordFuture", contextvars.Context]


class RecordFuture:
    """The future of one record sent with `Producer.send()`: resolves to its RecordMetadata.

    Future-like, not an `asyncio.Future`: it is a (batch, index) handle, and the offset is
    derived from the batch's base offset when asked for, so a record costs no future, no
    callback and no metadata object unless the caller wants one. It offers the asyncio.Future
    methods callers use: `await`, `done()`, `result()`, `exception()`, `cancelled()`,
    `cancel()`, `add_done_callback(fn)` (fn receives this handle, and runs from the event loop
    as with asyncio.Future) and `remove_done_callback(fn)`. `asyncio.gather`, `asyncio.wait`
    and `asyncio.wait_for` accept it (they wrap it in a task); `asyncio.isfuture()` is False.

    `cancel()` only stops this handle from waiting: the record itself was already handed to
    a batch and is still sent. Cancelling a task that awaits the handle cancels that wait only.
    """

    __slots__ = ("_batch", "_index")

    def __init__(self, batch: PartitionBatch, index: int) -> None:
        self._batch = batch
        #: Position of the record in its batch.
        self._index = index

    def __repr__(self) -> str:
        b = self._batch
        state = ("cancelled" if self.cancelled() else
                 "pending" if not b.done else "failed" if b.error is not None else "done")
        return f"<RecordFuture {b.topic}[{b.partition}] #{self._index} {state}>"

    def done(self) -> bool:
        b = self._batch
        return b.done or (b.cancelled is not None and self._index in b.cancelled)

    def cancelled(self) -> bool:
        cancelled = self._batch.cancelled
        return cancelled is not None and self._index in cancelled

    def result(self) -> RecordMetadata:
        """The record's metadata; raises its error, or InvalidStateError while pending."""
        b = self._batch
        i = self._index
        if b.cancelled is not None and i in b.cancelled:
            raise asyncio.CancelledError()
        if not b.done:
            raise asyncio.InvalidStateError("record not acknowledged yet")
        if b.error is not None:
            raise b.error
        # -1: stored, offset unknown (a resend the broker recognised only by its sequence).
        offset = b.base_offset + i if b.base_offset >= 0 else -1
        return RecordMetadata(b.topic, b.partition, offset, b.timestamps[i])

    def exception(self) -> BaseException | None:
        b = self._batch
        if b.cancelled is not None and self._index in b.cancelled:
            raise asyncio.CancelledError()
        if not b.done:
            raise asyncio.InvalidStateError("record not acknowledged yet")
        return b.error

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._batch.get_loop()

    def add_done_callback(self, fn: Callable[[Any], object], *,
                          context: contextvars.Context | None = None) -> None:
        """Call `fn(self)` from the event loop once the record is acked, failed or cancelled."""
        if context is None:
            context = contextvars.copy_context()
        b = self._batch
        if self.done():
            b.get_loop().call_soon(fn, self, context=context)
        elif b.callbacks is None:
            b.callbacks = [(fn, self, context)]
        else:
            b.callbacks.append((fn, self, context))

    def remove_done_callback(self, fn: Callable[[Any], object]) -> int:
        """Unregister `fn` for this record; returns how many registrations were removed."""
        b = self._batch
        if not b.callbacks:
            return 0
        keep = [c for c in b.callbacks if not (c[1] is self and c[0] == fn)]
        removed = len(b.callbacks) - len(keep)
        b.callbacks = keep
        return removed

    def cancel(self, msg: Any = None) -> bool:
        """Stop waiting for this record (it is still sent); False once it is done."""
        if self.done():
            return False
        b = self._batch
        if b.cancelled is None:
            b.cancelled = set()
        b.cancelled.add(self._index)
        if b.waiters:
            for i, w in b.waiters:
                if i == self._index:
                    w.cancel(msg)
        if b.callbacks:
            mine = [c for c in b.callbacks if c[1] is self]
            b.callbacks = [c for c in b.callbacks if c[1] is not self]
            b.get_loop().call_soon(_run_callbacks, mine)
        return True

    def __await__(self) -> Generator[Any, None, RecordMetadata]:
        b = self._batch
        if not self.done():
            # One plain future per awaiting caller, never the batch's: cancelling a task
            # that awaits this record must not touch the other records of the batch.
            waiter = b.get_loop().create_future()
            if b.waiters is None:
                b.waiters = [(self._index, waiter)]
            else:
                b.waiters.append((self._index, waiter))
            yield from waiter.__await__()
        return self.result()

    __iter__ = __await__


def _run_callbacks(callbacks: list[_Callback]) -> None:
    """Run records' done-callbacks (one loop turn for a whole batch, not one per record)."""
    for fn, handle, context in callbacks:
        try:
            context.run(fn, handle)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:  # as asyncio.Handle does: report, keep going
            handle.get_loop().call_exception_handler({
                "message": f"Exception in done-callback {fn!r} of {handle!r}",
                "exception": exc,
            })


@dataclass(eq=False, slots=True)
class PartitionBatch:
    """An open (then sealed) batch of one partition, then its outcome (shared by its records)."""

    topic: str
    partition: int
    values: list[bytes] = field(default_factory=list)
    keys: list[bytes] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)
    headers: list[Sequence[tuple[str, bytes]]] = field(default_factory=list)
    #: `send_many` chunks: (first record index, record count, owner, chunk sequence).
    chunks: list[tuple[int, int, ManyFuture, int]] = field(default_factory=list)
    has_keys: bool = False
    has_headers: bool = False
    #: Estimated encoded size so far, an upper bound.
    size: int = BATCH_SLACK
    #: The encoded batch, set by `encode()` when the batch is sealed.
    payload: bytes | None = None
    #: Times the batch was written to a stream.
    attempts: int = 0
    #: Idempotence stamp (records.proto header): -1, -1, -1 when the producer is not
    #: idempotent. Set before `encode()`; a batch keeps it for every resend.
    producer_id: int = codec.NO_PRODUCER
    producer_epoch: int = codec.NO_PRODUCER
    base_sequence: int = codec.NO_PRODUCER
    #: Written to a stream whose answer never came: the broker may or may not have it.
    unknown: bool = False
    #: loop.time() by which the batch must be acknowledged.
    deadline: float = 0.0
    #: Linger timer handle while the batch is open.
    timer: asyncio.TimerHandle | None = None
    #: Its linger passed while the partition could not send: it is sealed once it can.
    held: bool = False
    #: The loop its records' callbacks run on (the running loop when None).
    loop: asyncio.AbstractEventLoop | None = None
    #: Set once by `complete()` or `fail()`.
    done: bool = False
    #: Offset of record 0, once acknowledged (-1: stored at an unknown offset).
    base_offset: int = -1
    error: BaseException | None = None
    #: (record index, future) of each caller awaiting a record, created on demand.
    waiters: list[tuple[int, asyncio.Future[None]]] | None = None
    #: Done-callbacks registered on records, in registration order.
    callbacks: list[_Callback] | None = None
    #: Indexes of records whose handle was cancelled.
    cancelled: set[int] | None = None

    def __len__(self) -> int:
        return len(self.values)

    def append(self, value: bytes, key: bytes | None, timestamp_ms: int,
               headers: Sequence[tuple[str, bytes]] | None, size: int) -> int:
        """Add one record; returns its index in the batch."""
        index = len(self.values)
        self.values.append(value)
        if key:
            if not self.has_keys:
                self.keys.extend([b""] * (len(self.values) - 1))
                self.has_keys = True
            self.keys.append(key)
        elif self.has_keys:
            self.keys.append(b"")
        if headers:
            if not self.has_headers:
                self.headers.extend([()] * (len(self.values) - 1))
                self.has_headers = True
            self.headers.append(headers)
        elif self.has_headers:
            self.headers.append(())
        self.timestamps.append(timestamp_ms)
        self.size += size
        return index

    def extend(self, values: Sequence[bytes], timestamp_ms: int, size: int, owner: ManyFuture,
               seq: int) -> None:
        """Add keyless, headerless records as one `send_many` chunk (no per-record future)."""
        n = len(values)
        start = len(self.values)
        self.values.extend(values)
        if self.has_keys:
            self.keys.extend([b""] * n)
        if self.has_headers:
            self.headers.extend([()] * n)
        self.timestamps.extend([timestamp_ms] * n)
        self.chunks.append((start, n, owner, seq))
        owner.pending += 1
        self.size += size

    def encode(self) -> bytes:
        """Build the batch bytes once; later calls return the same bytes (for retries)."""
        if self.payload is None:
            self.payload = codec.encode(
                self.values,
                keys=self.keys if self.has_keys else None,
                timestamps_ms=self.timestamps,
                headers=self.headers if self.has_headers else None,
                producer_id=self.producer_id,
                producer_epoch=self.producer_epoch,
                base_sequence=self.base_sequence,
            )
        return self.payload

    def get_loop(self) -> asyncio.AbstractEventLoop:
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        return self.loop

    def complete(self, base_offset: int) -> None:
        """Record the broker-assigned base offset: every record's handle resolves from it."""
        if self.done:
            return
        self.base_offset = base_offset
        self.done = True
        self._wake()
        topic, partition = self.topic, self.partition
        for start, n, owner, seq in self.chunks:
            first = base_offset + start if base_offset >= 0 else -1
            owner.chunk_done(seq, ChunkAck(topic, partition, first, n), None)

    def fail(self, exc: BaseException) -> None:
        """Fail every record of the batch (and every `send_many` call with a chunk in it)."""
        if self.done:
            return
        self.error = exc
        self.done = True
        self._wake()
        for _, _, owner, seq in self.chunks:
            owner.chunk_done(seq, None, exc)

    def _wake(self) -> None:
        # Only records someone waits on cost anything here.
        if self.waiters is not None:
            for _, w in self.waiters:
                if not w.done():
                    w.set_result(None)
            self.waiters = None
        if self.callbacks:
            self.get_loop().call_soon(_run_callbacks, self.callbacks)
            self.callbacks = None


class Accumulator:
    """The open batch of each partition; a batch is sealed when the next record won't fit."""

    def __init__(self, batch_bytes: int = DEFAULT_BATCH_BYTES) -> None:
        if batch_bytes <= BATCH_SLACK:
            raise ValueError(f"batch_bytes must be above {BATCH_SLACK}")
        self.batch_bytes = batch_bytes
        self._open: dict[tuple[str, int], PartitionBatch] = {}

    def open_batch(self, topic: str, partition: int) -> PartitionBatch | None:
        return self._open.get((topic, partition))

    def append(
        self, topic: str, partition: int, value: bytes, key: bytes | None, timestamp_ms: int,
        headers: Sequence[tuple[str, bytes]] | None, size: int | None = None,
    ) -> tuple[PartitionBatch, PartitionBatch | None, bool]:
        """Add a record; returns (its batch, a batch sealed to make room or None, batch is new).

        The record is the last of its batch (index `len(batch) - 1`).

        `size` is `record_size(...)` when the caller computed it already. A record too big to
        share a batch still gets one of its own; the producer rejects records above the broker
        limit before they get here.
        """
        if size is None:
            size = record_size(value, key, headers)
        tp = (topic, partition)
        current = self._open.get(tp)
        sealed = None
        if current is not None and current.size + size > self.batch_bytes:
            sealed = self._open.pop(tp)
            current = None
        created = current is None
        if current is None:
            current = self._open[tp] = PartitionBatch(topic, partition)
        if key or headers or current.has_keys or current.has_headers:
            current.append(value, key, timestamp_ms, headers, size)
        else:  # the common case, inlined: a record with neither key nor headers
            current.values.append(value)
            current.timestamps.append(timestamp_ms)
            current.size += size
        return current, sealed, created

    def seal_if_full(self, topic: str, partition: int, size: int) -> PartitionBatch | None:
        """Seal the open batch when `size` more bytes would not fit."""
        current = self._open.get((topic, partition))
        if current is not None and current.size + size > self.batch_bytes:
            return self._open.pop((topic, partition))
        return None

    def room(self, topic: str, partition: int) -> int:
        """Estimated bytes the open batch of a partition can still take."""
        current = self._open.get((topic, partition))
        return self.batch_bytes - (current.size if current is not None else BATCH_SLACK)

    def get_or_open(self, topic: str, partition: int) -> tuple[PartitionBatch, bool]:
        current = self._open.get((topic, partition))
        if current is not None:
            return current, False
        current = self._open[(topic, partition)] = PartitionBatch(topic, partition)
        return current, True

    def seal(self, topic: str, partition: int) -> PartitionBatch | None:
        """Close the open batch of a partition (linger expired, flush), if any."""
        return self._open.pop((topic, partition), None)

    def seal_all(self) -> list[PartitionBatch]:
        out, self._open = list(self._open.values()), {}
        return out

    def __len__(self) -> int:
        """Number of open batches."""
        return len(self._open)
