"""Decoding read responses column by column.

A consume response carries whole stored batches; the consumer keeps them as columns (the parsed
`Records` message plus the index range of records to deliver) and builds a per-record object
only when the caller iterates. Counting, slicing or bulk-reading values never pays the per-record
cost (PERFORMANCE.md: reading columns is about half the cost of rows).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from itertools import count, repeat
from typing import NamedTuple

from rillet import batch as codec
from rillet.api.v1 import records_pb2


class ConsumerRecord(NamedTuple):
    """One record as a consumer sees it."""

    topic: str
    partition: int
    offset: int
    #: Milliseconds since the Unix epoch.
    timestamp_ms: int
    #: b"" when the record has no key.
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...]


class RecordBatch:
    """The records of one stored batch that fall inside the requested range, as columns."""

    __slots__ = ("_next", "_offsets", "_records", "base_offset", "first_timestamp_ms",
                 "partition", "start", "stop", "topic")

    def __init__(self, topic: str, partition: int, header: codec.BatchHeader,
                 records: records_pb2.Records, start: int, stop: int,
                 offsets: list[int] | None = None, next_offset: int | None = None) -> None:
        self.topic = topic
        self.partition = partition
        #: Offset of the stored batch's first offset (of record index 0 unless compacted).
        self.base_offset = header.base_offset
        self.first_timestamp_ms = header.first_timestamp_ms
        self._records = records
        #: Index range [start, stop) of the records delivered from this batch.
        self.start = start
        self.stop = stop
        # A compacted batch (records.proto): each record's offset, and where reading resumes
        # (past the removed offsets after the last survivor). None: dense offsets.
        self._offsets = offsets
        self._next = next_offset

    def __len__(self) -> int:
        return self.stop - self.start

    @property
    def first_offset(self) -> int:
        if self._offsets is not None:
            return self._offsets[self.start]
        return self.base_offset + self.start

    @property
    def next_offset(self) -> int:
        """Where reading resumes: the offset after the last record delivered from this batch
        (in a compacted batch, after the removed offsets that follow it, if delivered too)."""
        if self._next is not None:
            return self._next
        return self.base_offset + self.stop

    @property
    def offsets(self) -> list[int]:
        """The offset of each record delivered (not always consecutive on compacted topics)."""
        if self._offsets is not None:
            return self._offsets[self.start:self.stop]
        return list(range(self.base_offset + self.start, self.base_offset + self.stop))

    @property
    def values(self) -> list[bytes]:
        # Slicing a repeated field already builds a new list.
        return self._records.values[self.start:self.stop]

    @property
    def keys(self) -> list[bytes]:
        if not self._records.keys:
            return [b""] * len(self)
        return self._records.keys[self.start:self.stop]

    @property
    def timestamps_ms(self) -> list[int]:
        first = self.first_timestamp_ms
        return [first + d for d in self._records.timestamp_deltas_ms[self.start:self.stop]]

    @property
    def headers(self) -> list[tuple[tuple[str, bytes], ...]]:
        if not self._records.headers:
            return [()] * len(self)
        return [tuple((h.key, h.value) for h in rh.items)
                for rh in self._records.headers[self.start:self.stop]]

    def __iter__(self) -> Iterator[ConsumerRecord]:
        r, start, stop = self._records, self.start, self.stop
        keys: Iterable[bytes] = r.keys[start:stop] if r.keys else repeat(b"")
        headers: Iterable[tuple[tuple[str, bytes], ...]] = (
            self.headers if r.headers else repeat(()))
        # map() over columns: no per-record Python frame beyond the tuple itself.
        offsets: Iterable[int] = (count(self.base_offset + start) if self._offsets is None
                                  else self._offsets[start:stop])
        return map(ConsumerRecord, repeat(self.topic), repeat(self.partition), offsets,
                   map(self.first_timestamp_ms.__add__, r.timestamp_deltas_ms[start:stop]),
                   keys, r.values[start:stop], headers)


def decode_batches(
    topic: str, partition: int, buf: bytes, first_offset: int = 0,
    end_offset: int | None = None,
) -> list[RecordBatch]:
    """Split concatenated stored batches (CRC checked) and keep records in [first, end).

    Batches entirely below `first_offset` are skipped without parsing their records, and so
    are control batches (the partition's Raft no-ops and membership changes: no records). A
    compacted batch (records.proto) delivers its surviving records with their true offsets;
    one with no survivors in range delivers nothing (the caller resumes after it from the
    response's next offset).
    """
    out: list[RecordBatch] = []
    for header, view in codec.iter_batches(buf):
        nxt = header.base_offset + header.record_count
        if header.is_control or nxt <= first_offset:
            continue
        if end_offset is not None and header.base_offset >= end_offset:
            break
        records = records_pb2.Records()
        # upb parses a memoryview without copying; the stubs only declare bytes.
        records.ParseFromString(view[codec.HEADER_SIZE:])  # type: ignore[arg-type]
        n = len(records.values)
        if header.is_compacted:
            offsets = list(codec.record_offsets(header, records))
            start = bisect.bisect_left(offsets, first_offset)
            if end_offset is None or end_offset >= nxt:
                stop, resume = n, nxt
            else:
                stop = bisect.bisect_left(offsets, end_offset)
                resume = offsets[stop] if stop < n else end_offset
            if stop > start:
                out.append(RecordBatch(topic, partition, header, records, start, stop,
                                       offsets, resume))
            continue
        if n != header.record_count:
            raise codec.InvalidBatchError(
                f"batch at offset {header.base_offset} holds {n} records, header says "
                f"{header.record_count}")
        start = max(first_offset - header.base_offset, 0)
        stop = n if end_offset is None else min(n, end_offset - header.base_offset)
        if stop > start:
            out.append(RecordBatch(topic, partition, header, records, start, stop))
    return out
