"""The two per-segment indexes: sparse offset -> position, and time -> offset.

Both are derived data. A segment keeps them in memory (arrays of machine integers), writes
them to disk once, when it closes, and rebuilds them from the log whenever the files are
missing or fail the sanity checks here. So the files carry no checksum and no header.

File formats (little-endian, fixed-size entries, sorted):
- `.index`: 4-byte offset relative to the segment's base offset, 4-byte file position of the
  batch with that base offset. One entry roughly every `index_interval_bytes` of log.
- `.timeindex`: 8-byte timestamp (ms), 4-byte relative offset. An entry (ts, rel) means "the
  largest max_timestamp of any batch up to and including the batch at rel is ts"; entries are
  only added when that running maximum grows, so timestamps are strictly increasing.
"""

from __future__ import annotations

import bisect
import struct
import sys
from array import array

OFFSET_ENTRY = struct.Struct("<ii")
TIME_ENTRY = struct.Struct("<qi")
NO_TIMESTAMP = -(2**63)
_SWAP = sys.byteorder != "little"


def _le(values: array) -> bytes:  # type: ignore[type-arg]
    if _SWAP:
        values = array(values.typecode, values)
        values.byteswap()
    return values.tobytes()


class OffsetIndex:
    """Sparse map from relative offset to file position; lookups floor to the nearest entry."""

    __slots__ = ("positions", "rels")

    def __init__(self) -> None:
        self.rels: array[int] = array("i")
        self.positions: array[int] = array("i")

    def __len__(self) -> int:
        return len(self.rels)

    def append(self, rel: int, position: int) -> None:
        """Add an entry; both keys must grow, which append order guarantees."""
        if self.rels and (rel <= self.rels[-1] or position <= self.positions[-1]):
            raise ValueError(f"offset index entry ({rel}, {position}) is not increasing")
        self.rels.append(rel)
        self.positions.append(position)

    def lookup(self, rel: int) -> int:
        """Position to start scanning from for `rel`: the greatest entry at or below it, or 0."""
        i = bisect.bisect_right(self.rels, rel) - 1
        return self.positions[i] if i >= 0 else 0

    def last(self) -> tuple[int, int] | None:
        return (self.rels[-1], self.positions[-1]) if self.rels else None

    def truncate_to(self, rel: int) -> None:
        """Drop entries for batches at or after `rel` (they no longer exist)."""
        i = bisect.bisect_left(self.rels, rel)
        del self.rels[i:]
        del self.positions[i:]

    def to_bytes(self) -> bytes:
        merged = array("i", bytes(8 * len(self.rels)))
        merged[0::2] = self.rels
        merged[1::2] = self.positions
        return _le(merged)

    @classmethod
    def from_bytes(cls, data: bytes) -> OffsetIndex:
        """Parse a file's contents; ValueError when it is not a well-formed, sorted index."""
        if len(data) % OFFSET_ENTRY.size:
            raise ValueError(f"offset index size {len(data)} is not a multiple of 8")
        index = cls()
        for rel, pos in OFFSET_ENTRY.iter_unpack(data):
            if rel < 0 or pos < 0:
                raise ValueError(f"negative offset index entry ({rel}, {pos})")
            index.append(rel, pos)
        return index


class TimeIndex:
    """Running-maximum timestamps at some batches, for "first batch with max_ts >= T"."""

    __slots__ = ("rels", "timestamps")

    def __init__(self) -> None:
        self.timestamps: array[int] = array("q")
        self.rels: array[int] = array("i")

    def __len__(self) -> int:
        return len(self.rels)

    @property
    def last_timestamp(self) -> int:
        return self.timestamps[-1] if self.timestamps else NO_TIMESTAMP

    def maybe_append(self, timestamp_ms: int, rel: int) -> None:
        """Add (timestamp, rel) if the running maximum grew since the last entry."""
        if self.timestamps and timestamp_ms <= self.timestamps[-1]:
            return
        if self.rels and rel < self.rels[-1]:
            raise ValueError(f"time index entry ({timestamp_ms}, {rel}) goes back in offset")
        self.timestamps.append(timestamp_ms)
        self.rels.append(rel)

    def scan_start(self, timestamp_ms: int) -> int:
        """Relative offset from which to scan for the first batch with max_ts >= timestamp.

        Every batch up to the last entry below the target has max_ts < target, so the answer
        is at or after that entry's batch; with no such entry, scan from the segment start.
        """
        i = bisect.bisect_left(self.timestamps, timestamp_ms) - 1
        return self.rels[i] if i >= 0 else 0

    def truncate_to(self, rel: int) -> None:
        i = bisect.bisect_left(self.rels, rel)
        del self.rels[i:]
        del self.timestamps[i:]

    def to_bytes(self) -> bytes:
        return b"".join(TIME_ENTRY.pack(t, r) for t, r in zip(self.timestamps, self.rels,
                                                               strict=True))

    @classmethod
    def from_bytes(cls, data: bytes) -> TimeIndex:
        if len(data) % TIME_ENTRY.size:
            raise ValueError(f"time index size {len(data)} is not a multiple of 12")
        index = cls()
        for ts, rel in TIME_ENTRY.iter_unpack(data):
            if rel < 0 or (index.timestamps and ts <= index.timestamps[-1]):
                raise ValueError(f"time index entry ({ts}, {rel}) is out of order")
            index.maybe_append(ts, rel)
        return index
