"""The two per-segment indexes: sparse offset -> position, and time -> offset.

Both are derived data. A segment keeps them in memory (arrays of machine integers), writes
them to disk once, when it closes, and rebuilds them from the log whenever the files are
missing or fail the sanity checks here. So the files carry no checksum and no header.

File formats (little-endian, fixed-size entries, sorted):
- `.index`: 4-byte offset relative to the segment's base offset, 4-byte file position of the
  batch at that position, 4-byte Raft index of that batch relative to the segment's first Raft
  index. One entry roughly every `index_interval_bytes` of log. Offsets may repeat (a control
  batch occupies no offsets, so it shares its base offset with the next batch); positions and
  Raft indexes strictly increase.
- `.timeindex`: 8-byte timestamp (ms), 4-byte relative offset. An entry (ts, rel) means "the
  largest max_timestamp of any batch up to and including the batch at rel is ts"; entries are
  only added when that running maximum grows, so timestamps are strictly increasing.
"""

from __future__ import annotations

import bisect
import struct
import sys
from array import array

OFFSET_ENTRY = struct.Struct("<iii")
TIME_ENTRY = struct.Struct("<qi")
NO_TIMESTAMP = -(2**63)
_SWAP = sys.byteorder != "little"


def _le(values: array) -> bytes:  # type: ignore[type-arg]
    if _SWAP:
        values = array(values.typecode, values)
        values.byteswap()
    return values.tobytes()


class OffsetIndex:
    """Sparse map from relative offset, and from relative Raft index, to file position;
    lookups floor to the nearest entry."""

    __slots__ = ("positions", "raft_rels", "rels")

    def __init__(self) -> None:
        self.rels: array[int] = array("i")
        self.positions: array[int] = array("i")
        self.raft_rels: array[int] = array("i")

    def __len__(self) -> int:
        return len(self.rels)

    def append(self, rel: int, position: int, raft_rel: int = 0) -> None:
        """Add an entry; append order makes the offset not decrease and the position and the
        Raft index grow."""
        if self.rels and (rel < self.rels[-1] or position <= self.positions[-1]
                          or raft_rel <= self.raft_rels[-1]):
            raise ValueError(
                f"offset index entry ({rel}, {position}, {raft_rel}) is not increasing")
        self.rels.append(rel)
        self.positions.append(position)
        self.raft_rels.append(raft_rel)

    def lookup(self, rel: int) -> int:
        """Position to start scanning from for `rel`: the greatest entry at or below it, or 0.

        With repeated offsets this is the last batch based at `rel`, which is the one holding
        its records (the control batches before it hold none)."""
        i = bisect.bisect_right(self.rels, rel) - 1
        return self.positions[i] if i >= 0 else 0

    def lookup_before(self, rel: int) -> int:
        """Position of the last entry strictly below `rel` (or 0): a scan for the FIRST batch
        based at or after `rel` (control batches included) starts there."""
        i = bisect.bisect_left(self.rels, rel) - 1
        return self.positions[i] if i >= 0 else 0

    def lookup_raft(self, raft_rel: int) -> int:
        """Position to start scanning from for Raft index `raft_rel` (relative)."""
        i = bisect.bisect_right(self.raft_rels, raft_rel) - 1
        return self.positions[i] if i >= 0 else 0

    def last(self) -> tuple[int, int, int] | None:
        """(relative offset, position, relative Raft index) of the last entry."""
        return (self.rels[-1], self.positions[-1], self.raft_rels[-1]) if self.rels else None

    def truncate_to_raft(self, raft_rel: int) -> None:
        """Drop entries for batches at or after Raft index `raft_rel` (they no longer exist)."""
        i = bisect.bisect_left(self.raft_rels, raft_rel)
        del self.rels[i:]
        del self.positions[i:]
        del self.raft_rels[i:]

    def to_bytes(self) -> bytes:
        merged = array("i", bytes(12 * len(self.rels)))
        merged[0::3] = self.rels
        merged[1::3] = self.positions
        merged[2::3] = self.raft_rels
        return _le(merged)

    @classmethod
    def from_bytes(cls, data: bytes) -> OffsetIndex:
        """Parse a file's contents; ValueError when it is not a well-formed, sorted index."""
        if len(data) % OFFSET_ENTRY.size:
            raise ValueError(f"offset index size {len(data)} is not a multiple of 12")
        index = cls()
        for rel, pos, raft_rel in OFFSET_ENTRY.iter_unpack(data):
            if rel < 0 or pos < 0 or raft_rel < 0:
                raise ValueError(f"negative offset index entry ({rel}, {pos}, {raft_rel})")
            index.append(rel, pos, raft_rel)
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
