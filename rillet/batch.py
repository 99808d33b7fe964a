"""The record batch codec: the byte layout documented in proto/rillet/api/v1/records.proto.

This module is part of the public contract, beside the generated stubs: the client builds and
reads batches with it, the broker checks and stamps them with it, storage walks them with it.
It imports nothing else of ours. The broker's hot path only touches the fixed header (parse,
CRC, stamp); decoding records is for clients and tools.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import google_crc32c

from rillet.api.v1 import records_pb2

# base_offset, batch_length, leader_term, raft_index, magic, crc, attributes, record_count,
# first_timestamp, max_timestamp, producer_id, producer_epoch, base_sequence
HEADER = struct.Struct("<qiqqbIhiqqqhi")
HEADER_SIZE = HEADER.size  # 69
# Bytes before batch_length counts: base_offset and batch_length themselves.
LENGTH_PREFIX_SIZE = 12
# The broker-stamped prefix: base_offset, batch_length, leader_term, raft_index (bytes 0..27).
STAMPED_PREFIX = struct.Struct("<qiqq")
STAMPED_PREFIX_SIZE = STAMPED_PREFIX.size  # 28
# The CRC covers everything from the attributes field to the end of the batch.
CRC_START = 33
CRC_FIELD = 29
RECORD_COUNT_FIELD = 35
MAGIC = 1
COMPRESSION_MASK = 0x7
CONTROL_FLAG = 0x10
"""Attributes bit 4: a control batch, written by the partition's Raft log itself (the leader's
no-op entry, membership changes). It holds no records and occupies no offsets."""
CONF_CHANGE_FLAG = 0x20
"""Attributes bit 5, only with CONTROL_FLAG: the entry is a Raft membership change."""
COMPACTED_FLAG = 0x40
"""Attributes bit 6: the broker's compactor rewrote the batch; record_count is the offset span
and `Records.offset_deltas` gives the surviving records' offsets (see records.proto)."""
_KNOWN_ATTRIBUTES = COMPRESSION_MASK | CONTROL_FLAG | CONF_CHANGE_FLAG | COMPACTED_FLAG
NO_PRODUCER = -1

_STAMP = struct.Struct("<q")
_LENGTH = struct.Struct("<i")
_TERM_OFFSET = 12
_RAFT_INDEX_OFFSET = 20
_CRC = struct.Struct("<I")
_ATTRIBUTES = struct.Struct("<h")
_ATTRIBUTES_FIELD = 33


class BatchError(ValueError):
    """A batch that cannot be accepted; the message says what is wrong with it."""


class CorruptBatchError(BatchError):
    """The bytes are damaged: short, a bad magic byte, or a CRC that does not match."""


class InvalidBatchError(BatchError):
    """The bytes are intact but the batch breaks a rule (record counts, fields, sizes)."""


@dataclass(frozen=True, slots=True)
class BatchHeader:
    """The fixed header of one batch; field meanings and units are in records.proto."""

    base_offset: int
    batch_length: int
    leader_term: int
    raft_index: int
    magic: int
    crc: int
    attributes: int
    record_count: int
    first_timestamp_ms: int
    max_timestamp_ms: int
    producer_id: int
    producer_epoch: int
    base_sequence: int

    @property
    def size(self) -> int:
        """Total bytes of the batch, header included."""
        return self.batch_length + LENGTH_PREFIX_SIZE

    @property
    def is_control(self) -> bool:
        """A control batch (Raft no-op or membership change): no records, skipped by readers."""
        return bool(self.attributes & CONTROL_FLAG)

    @property
    def is_compacted(self) -> bool:
        """Rewritten by compaction: fewer records than offsets (see records.proto)."""
        return bool(self.attributes & COMPACTED_FLAG)

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.record_count - 1

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.record_count


class Limits(NamedTuple):
    """What a broker accepts in one produced batch beyond its byte size (hostile input).

    Each field is named after the broker setting that sets it (max_batch_records,
    max_record_headers, max_record_header_bytes); the error message names the setting, so a
    producer that hits one knows which knob the operator would have to turn. Header bytes are
    a record's header keys (UTF-8) plus values: what the broker stores and every consumer
    decodes for it.
    """

    max_records: int = 100_000
    max_headers: int = 64
    max_header_bytes: int = 64 * 1024


class Record(NamedTuple):
    """One decoded record."""

    offset: int
    timestamp_ms: int
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...]


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """CRC-32C (Castagnoli) as an unsigned 32-bit integer."""
    return int(google_crc32c.value(bytes(data) if isinstance(data, memoryview) else data))


def partition_for_key(key: bytes, partition_count: int) -> int:
    """The partition of a keyed record: crc32c(key) mod partition_count (see records.proto)."""
    if partition_count < 1:
        raise ValueError("partition_count must be at least 1")
    return crc32c(key) % partition_count


def parse_header(buf: bytes | bytearray | memoryview, pos: int = 0) -> BatchHeader:
    """Read the header at `pos`; checks the size fields and magic, not the CRC."""
    if len(buf) - pos < HEADER_SIZE:
        raise CorruptBatchError(
            f"batch header needs {HEADER_SIZE} bytes, only {len(buf) - pos} present")
    header = BatchHeader(*HEADER.unpack_from(buf, pos))
    if header.magic != MAGIC:
        raise CorruptBatchError(f"unknown batch magic {header.magic} (expected {MAGIC})")
    if header.batch_length < HEADER_SIZE - LENGTH_PREFIX_SIZE:
        raise CorruptBatchError(f"batch_length {header.batch_length} is shorter than a header")
    if header.attributes & CONTROL_FLAG:
        if header.record_count != 0:
            raise InvalidBatchError(
                f"a control batch holds no records, header says {header.record_count}")
    elif header.record_count < 1:
        raise InvalidBatchError(f"record_count must be at least 1, got {header.record_count}")
    return header


def batch_size_at(buf: bytes | bytearray | memoryview, pos: int = 0) -> int | None:
    """Total size of the batch starting at `pos`, or None when fewer than 12 bytes remain."""
    if len(buf) - pos < LENGTH_PREFIX_SIZE:
        return None
    return int(_LENGTH.unpack_from(buf, pos + 8)[0]) + LENGTH_PREFIX_SIZE


def verify(buf: bytes | bytearray | memoryview, pos: int = 0) -> BatchHeader:
    """Check the batch at `pos` is whole and its CRC matches; return its header."""
    header = parse_header(buf, pos)
    end = pos + header.size
    if end > len(buf):
        raise CorruptBatchError(
            f"batch declares {header.size} bytes but only {len(buf) - pos} are present")
    view = memoryview(buf)[pos + CRC_START:end]
    actual = crc32c(view)
    if actual != header.crc:
        raise CorruptBatchError(
            f"CRC mismatch: header says {header.crc:#010x}, content has {actual:#010x}")
    return header


def validate(batch: bytes | bytearray | memoryview, limits: Limits | None = None) -> BatchHeader:
    """Everything the broker checks before it accepts a produced batch.

    One whole batch and nothing after it, an intact CRC, no compression (none is supported
    yet), and a record section whose columns hold exactly `record_count` records. Parsing the
    columns costs about 0.1 us per record: cheap enough to do once at the leader.

    With `limits`, also at most `max_records` records, and per record at most `max_headers`
    headers of at most `max_header_bytes` bytes in all (InvalidBatchError naming the setting).
    The record count is checked from the header, before the body is parsed at all.
    """
    header = verify(batch)
    if header.size != len(batch):
        raise InvalidBatchError(
            f"request holds {len(batch)} bytes but the batch declares {header.size}; "
            "send exactly one batch per request")
    if header.attributes & CONTROL_FLAG:
        raise InvalidBatchError(
            "control batches (attributes bit 4) are written by the broker's Raft log; "
            "producers may not send them")
    if header.attributes & COMPACTED_FLAG:
        raise InvalidBatchError(
            "compacted batches (attributes bit 6) are written by the broker's compactor; "
            "producers may not send them")
    if header.attributes & ~COMPRESSION_MASK:
        raise InvalidBatchError(f"unknown attribute bits {header.attributes:#06x}")
    if header.attributes & COMPRESSION_MASK:
        raise InvalidBatchError(
            f"compression {header.attributes & COMPRESSION_MASK} is not supported")
    if header.max_timestamp_ms < header.first_timestamp_ms:
        raise InvalidBatchError("max_timestamp is before first_timestamp")
    if limits is not None and header.record_count > limits.max_records:
        raise InvalidBatchError(
            f"batch holds {header.record_count} records; this broker accepts at most "
            f"{limits.max_records} per batch (max_batch_records)")
    records = records_pb2.Records()
    try:
        records.ParseFromString(bytes(memoryview(batch)[HEADER_SIZE:]))
    except Exception as exc:  # protobuf raises DecodeError, a bare Exception subclass
        raise InvalidBatchError(f"records section does not parse: {exc}") from exc
    n = header.record_count
    if len(records.values) != n:
        raise InvalidBatchError(
            f"record count mismatch: header says {n}, batch holds {len(records.values)}")
    if len(records.keys) not in (0, n) or len(records.timestamp_deltas_ms) != n:
        raise InvalidBatchError("keys and timestamp columns must have one entry per record")
    if len(records.headers) not in (0, n):
        raise InvalidBatchError("headers column must be empty or have one entry per record")
    if records.offset_deltas:
        raise InvalidBatchError(
            "offset_deltas is only for compacted batches; producers may not send it")
    if limits is not None and records.headers:
        _check_headers(records, limits)
    return header


def _check_headers(records: records_pb2.Records, limits: Limits) -> None:
    """Per record: at most `max_headers` headers, at most `max_header_bytes` key+value bytes."""
    for i, rh in enumerate(records.headers):
        items = rh.items
        if not items:
            continue
        if len(items) > limits.max_headers:
            raise InvalidBatchError(
                f"record {i} of the batch has {len(items)} headers; this broker accepts at "
                f"most {limits.max_headers} per record (max_record_headers)")
        # ByteSize is exact for the encoded form and a cheap upper bound first: the key and
        # value bytes alone are below it, so only records near the limit are summed exactly.
        if rh.ByteSize() > limits.max_header_bytes:
            size = sum(len(h.key.encode()) + len(h.value) for h in items)
            if size > limits.max_header_bytes:
                raise InvalidBatchError(
                    f"record {i} of the batch has {size} bytes of headers (keys and values); "
                    f"this broker accepts at most {limits.max_header_bytes} per record "
                    "(max_record_header_bytes)")


def record_offsets(header: BatchHeader, records: records_pb2.Records) -> list[int] | range:
    """The offset of each record in `records` (the parsed body of the batch with `header`).

    Dense (base_offset + i) for an ordinary batch; from `offset_deltas` for a compacted one,
    whose columns are checked against it (InvalidBatchError when they do not fit).
    """
    base, n = header.base_offset, len(records.values)
    if not header.is_compacted:
        if n != header.record_count:
            raise InvalidBatchError(
                f"batch at offset {base} holds {n} records, header says {header.record_count}")
        return range(base, base + n)
    deltas = records.offset_deltas
    if (len(deltas) != n or len(records.timestamp_deltas_ms) != n
            or len(records.keys) not in (0, n) or len(records.headers) not in (0, n)):
        raise InvalidBatchError(
            f"compacted batch at offset {base}: columns do not match its {len(deltas)} offsets")
    prev = -1
    for d in deltas:
        if not prev < d < header.record_count:
            raise InvalidBatchError(
                f"compacted batch at offset {base}: offset delta {d} out of order or beyond "
                f"its span {header.record_count}")
        prev = d
    return [base + d for d in deltas]


def compact_records(batch: bytes | bytearray | memoryview, keep: Sequence[int],
                    records: records_pb2.Records | None = None) -> bytes:
    """Rewrite a verified, stored (non-control) batch keeping only the records at indexes
    `keep` (ascending positions among the records it holds now), as a compacted batch.

    The stamped prefix, timestamps, producer fields and record_count (the offset span) stay;
    attributes bit 6 is set, `offset_deltas` records where each survivor was, the CRC is
    resealed. Keeping every record of an ordinary batch returns it unchanged. `records`: the
    batch's body already parsed, if the caller has it.
    """
    header = parse_header(batch)
    if header.is_control:
        raise InvalidBatchError("control batches hold no records to compact")
    old = records
    if old is None:
        old = records_pb2.Records()
        old.ParseFromString(bytes(memoryview(batch)[HEADER_SIZE:header.size]))
    offsets = record_offsets(header, old)
    if not header.is_compacted and len(keep) == len(offsets):
        return bytes(batch)
    new = records_pb2.Records()
    base = header.base_offset
    new.values.extend([old.values[i] for i in keep])
    if old.keys:
        new.keys.extend([old.keys[i] for i in keep])
    new.timestamp_deltas_ms.extend([old.timestamp_deltas_ms[i] for i in keep])
    if old.headers and any(old.headers[i].items for i in keep):
        for i in keep:
            new.headers.add().CopyFrom(old.headers[i])
    new.offset_deltas.extend([offsets[i] - base for i in keep])
    body = new.SerializeToString()
    out = bytearray(memoryview(batch)[:HEADER_SIZE])
    _LENGTH.pack_into(out, 8, HEADER_SIZE + len(body) - LENGTH_PREFIX_SIZE)
    _ATTRIBUTES.pack_into(out, _ATTRIBUTES_FIELD, header.attributes | COMPACTED_FLAG)
    crc = google_crc32c.extend(google_crc32c.value(bytes(out[CRC_START:])), body)
    _CRC.pack_into(out, CRC_FIELD, crc)
    return bytes(out) + body


def stamp(batch: bytearray, base_offset: int, leader_term: int, raft_index: int = 0,
          pos: int = 0) -> None:
    """Write the broker-assigned base offset, leader term and Raft index; all three are outside
    the CRC, so stamping never re-seals the batch."""
    _STAMP.pack_into(batch, pos, base_offset)
    _STAMP.pack_into(batch, pos + _TERM_OFFSET, leader_term)
    _STAMP.pack_into(batch, pos + _RAFT_INDEX_OFFSET, raft_index)


def encode_control(data: bytes, *, conf_change: bool = False) -> bytes:
    """A control batch carrying a Raft entry the core made itself: `data` is the entry's raw
    bytes (empty for the leader's no-op, the encoded ConfChange for a membership change).

    Every field is a function of its arguments (timestamps 0, no producer), so every replica
    that stores the same entry writes the same bytes. Stamp it like any batch.
    """
    attributes = CONTROL_FLAG | (CONF_CHANGE_FLAG if conf_change else 0)
    header = bytearray(HEADER.pack(
        0, HEADER_SIZE + len(data) - LENGTH_PREFIX_SIZE, 0, 0, MAGIC, 0, attributes, 0, 0, 0,
        NO_PRODUCER, NO_PRODUCER, NO_PRODUCER))
    crc = google_crc32c.extend(google_crc32c.value(bytes(header[CRC_START:])), data)
    _CRC.pack_into(header, CRC_FIELD, crc)
    return bytes(header) + data


def control_data(batch: bytes | bytearray | memoryview) -> tuple[bool, bytes]:
    """(is a membership change, raw entry bytes) of a verified control batch."""
    header = parse_header(batch)
    if not header.is_control:
        raise InvalidBatchError("not a control batch")
    return (bool(header.attributes & CONF_CHANGE_FLAG),
            bytes(memoryview(batch)[HEADER_SIZE:header.size]))


_ZEROS: list[int] = []


def _zeros(n: int) -> list[int]:
    """A shared list of at least n zeros, sliced; saves building one per batch."""
    global _ZEROS
    if len(_ZEROS) < n:
        _ZEROS = [0] * max(n, 2 * len(_ZEROS))
    return _ZEROS[:n]


def encode(
    values: Sequence[bytes],
    *,
    keys: Sequence[bytes] | None = None,
    timestamps_ms: Sequence[int],
    headers: Sequence[Sequence[tuple[str, bytes]]] | None = None,
    producer_id: int = NO_PRODUCER,
    producer_epoch: int = NO_PRODUCER,
    base_sequence: int = NO_PRODUCER,
) -> bytes:
    """Build one batch from columns: `values[i]`, `keys[i]`, `timestamps_ms[i]` for record i."""
    n = len(values)
    if n == 0:
        raise ValueError("a batch holds at least one record")
    if len(timestamps_ms) != n or (keys is not None and len(keys) not in (0, n)):
        raise ValueError("keys and timestamps need one entry per value")
    first = timestamps_ms[0]
    records = records_pb2.Records()
    records.values.extend(values)
    if keys and any(keys):
        records.keys.extend(keys)
    hi = max(timestamps_ms)
    if hi == first and min(timestamps_ms) == first:
        # Common case: a producer stamps a whole linger window with one clock reading.
        records.timestamp_deltas_ms.extend(_zeros(n))
    else:
        records.timestamp_deltas_ms.extend([t - first for t in timestamps_ms])
    if headers is not None and any(headers):
        if len(headers) != n:
            raise ValueError("headers need one entry per value")
        for items in headers:
            rh = records.headers.add()
            for hk, hv in items:
                rh.items.add(key=hk, value=hv)
    body = records.SerializeToString()
    # Seal the header with the CRC of (header tail + body) without copying the body twice.
    header = bytearray(HEADER.pack(
        0, HEADER_SIZE + len(body) - LENGTH_PREFIX_SIZE, 0, 0, MAGIC, 0, 0, n, first, hi,
        producer_id, producer_epoch, base_sequence))
    crc = google_crc32c.extend(google_crc32c.value(bytes(header[CRC_START:])), body)
    _CRC.pack_into(header, CRC_FIELD, crc)
    return bytes(header) + body


def iter_batches(buf: bytes | bytearray | memoryview) -> Iterator[tuple[BatchHeader, memoryview]]:
    """Split concatenated batches (a read response), verifying each CRC.

    Yields control batches too (check `header.is_control`); decode and decode_range skip them.
    """
    view = memoryview(buf)
    pos = 0
    while pos < len(view):
        header = verify(view, pos)
        yield header, view[pos:pos + header.size]
        pos += header.size


def decode(batch: bytes | bytearray | memoryview) -> list[Record]:
    """Decode the records of one verified batch; a control batch has none. A compacted batch
    yields its surviving records with their true offsets (not dense)."""
    header = parse_header(batch)
    if header.is_control:
        return []
    records = records_pb2.Records()
    records.ParseFromString(bytes(memoryview(batch)[HEADER_SIZE:header.size]))
    keys = records.keys or [b""] * len(records.values)
    hdrs: list[tuple[tuple[str, bytes], ...]]
    if records.headers:
        hdrs = [tuple((h.key, h.value) for h in rh.items) for rh in records.headers]
    else:
        hdrs = [()] * len(records.values)
    first = header.first_timestamp_ms
    return [
        Record(o, first + d, k, v, h)
        for o, k, v, d, h in zip(record_offsets(header, records), keys, records.values,
                                 records.timestamp_deltas_ms, hdrs, strict=True)
    ]


def decode_range(
    buf: bytes | bytearray | memoryview, first_offset: int = 0, end_offset: int | None = None
) -> list[Record]:
    """Decode concatenated batches, keeping records in [first_offset, end_offset)."""
    out: list[Record] = []
    for header, view in iter_batches(buf):
        if header.is_control or header.next_offset <= first_offset:
            continue
        if end_offset is not None and header.base_offset >= end_offset:
            break
        for rec in decode(view):
            if rec.offset >= first_offset and (end_offset is None or rec.offset < end_offset):
                out.append(rec)
    return out
