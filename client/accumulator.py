"""Per-partition record batching for the producer, without I/O.

Records are appended column by column (values, keys, timestamps, headers) so that sealing a
batch is one call to `rillet.batch.encode`, the client's hot path (PERFORMANCE.md: columns cost
a fraction of one message per record). The producer decides when to seal (size, linger, flush)
and what to do with sealed batches; this module only keeps the columns and the futures.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import count, repeat
from typing import NamedTuple

from rillet import batch as codec

#: Broker limit on one produced batch (header included), unless it was configured otherwise.
MAX_BATCH_BYTES = 1024 * 1024
#: Default target size of a sealed batch: just below the broker's limit, header included.
DEFAULT_BATCH_BYTES = 1_000_000
# Upper bound on what one record adds to the serialized Records message beyond its key and
# value: field tags, length varints (values below 2 MiB), a sint64 timestamp delta.
_RECORD_OVERHEAD = 20
_HEADER_OVERHEAD = 12
# Packed-field headers and the slack between this estimate and the real encoding.
_BATCH_SLACK = codec.HEADER_SIZE + 64


class ChunkAck(NamedTuple):
    """Where a run of consecutive records from one `send_many` call was stored."""

    topic: str
    partition: int
    #: Offset of the first record of the run; the others follow densely.
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
    #: The offset the broker assigned to the record.
    offset: int
    #: The record's timestamp, milliseconds since the Unix epoch.
    timestamp_ms: int


def record_size(value: bytes, key: bytes | None,
                headers: Sequence[tuple[str, bytes]] | None) -> int:
    """Upper bound of the bytes a record adds to a batch."""
    size = len(value) + _RECORD_OVERHEAD
    if key:
        size += len(key)
    if headers:
        for hk, hv in headers:
            size += len(hk) + len(hv) + _HEADER_OVERHEAD
    return size


_new_metadata = functools.partial(tuple.__new__, RecordMetadata)
_set_result = asyncio.Future.set_result


@dataclass(eq=False, slots=True)
class PartitionBatch:
    """An open (then sealed) batch of one partition, with one future per record."""

    topic: str
    partition: int
    values: list[bytes] = field(default_factory=list)
    keys: list[bytes] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)
    headers: list[Sequence[tuple[str, bytes]]] = field(default_factory=list)
    #: One future per record, or None for records that belong to a `send_many` chunk.
    futures: list[asyncio.Future[RecordMetadata] | None] = field(default_factory=list)
    #: `send_many` chunks: (first record index, record count, owner, chunk sequence).
    chunks: list[tuple[int, int, ManyFuture, int]] = field(default_factory=list)
    #: How many entries of `futures` are real futures (0 lets completion skip the loop).
    record_futures: int = 0
    has_keys: bool = False
    has_headers: bool = False
    #: Estimated encoded size so far, an upper bound.
    size: int = _BATCH_SLACK
    #: The encoded batch, set by `encode()` when the batch is sealed.
    payload: bytes | None = None
    #: Retries spent on this batch.
    attempts: int = 0
    #: loop.time() by which the batch must be acknowledged.
    deadline: float = 0.0
    #: Linger timer handle while the batch is open.
    timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self.values)

    def append(self, value: bytes, key: bytes | None, timestamp_ms: int,
               headers: Sequence[tuple[str, bytes]] | None, size: int,
               future: asyncio.Future[RecordMetadata]) -> None:
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
        self.futures.append(future)
        self.record_futures += 1
        self.size += size

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
        self.futures.extend([None] * n)
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
            )
        return self.payload

    def complete(self, base_offset: int) -> None:
        """Resolve every record future from the broker-assigned base offset."""
        topic, partition = self.topic, self.partition
        if self.record_futures == len(self.futures):
            # Every record has a future: resolve them with map() over C callables, no Python
            # frame per record. A future the caller cancelled stops it; the loop below
            # finishes the rest.
            metas = map(_new_metadata, zip(repeat(topic), repeat(partition),
                                           count(base_offset), self.timestamps))
            try:
                deque(map(_set_result, self.futures, metas), maxlen=0)  # type: ignore[arg-type]
                self.record_futures = 0
            except asyncio.InvalidStateError:
                pass
        if self.record_futures:
            offset = base_offset
            for fut, ts in zip(self.futures, self.timestamps, strict=True):
                if fut is not None and not fut.done():
                    fut.set_result(RecordMetadata(topic, partition, offset, ts))
                offset += 1
        for start, n, owner, seq in self.chunks:
            owner.chunk_done(seq, ChunkAck(topic, partition, base_offset + start, n), None)

    def fail(self, exc: BaseException) -> None:
        for fut in self.futures:
            if fut is not None and not fut.done():
                fut.set_exception(exc)
                # The caller may never look at a future it did not need; don't warn about it.
                fut.exception()
        for _, _, owner, seq in self.chunks:
            owner.chunk_done(seq, None, exc)


class Accumulator:
    """The open batch of each partition; a batch is sealed when the next record won't fit."""

    def __init__(self, batch_bytes: int = DEFAULT_BATCH_BYTES) -> None:
        if batch_bytes <= _BATCH_SLACK:
            raise ValueError(f"batch_bytes must be above {_BATCH_SLACK}")
        self.batch_bytes = batch_bytes
        self._open: dict[tuple[str, int], PartitionBatch] = {}

    def open_batch(self, topic: str, partition: int) -> PartitionBatch | None:
        return self._open.get((topic, partition))

    def append(
        self, topic: str, partition: int, value: bytes, key: bytes | None, timestamp_ms: int,
        headers: Sequence[tuple[str, bytes]] | None, future: asyncio.Future[RecordMetadata],
        size: int | None = None,
    ) -> tuple[PartitionBatch, PartitionBatch | None, bool]:
        """Add a record; returns (its batch, a batch sealed to make room or None, batch is new).

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
            current.append(value, key, timestamp_ms, headers, size, future)
        else:  # the common case, inlined: a record with neither key nor headers
            current.values.append(value)
            current.timestamps.append(timestamp_ms)
            current.futures.append(future)
            current.record_futures += 1
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
        return self.batch_bytes - (current.size if current is not None else _BATCH_SLACK)

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
