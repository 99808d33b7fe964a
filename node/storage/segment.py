"""One segment: a `.log` file of whole batches plus its two indexes.

A segment is named by its base offset padded to 20 digits, so a directory listing sorts
numerically. Batches are written with positioned writes (pwritev) straight to the page cache:
no user-space buffer, so reads (pread) always see every appended byte and appending costs one
system call per batch. Durability is the owning PartitionLog's business (it fsyncs).

Not thread-safe by itself: PartitionLog serializes every call under its lock; only `fd` is
duplicated for fsync outside the lock.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import os
import struct
from collections.abc import Iterator
from pathlib import Path

from rillet.batch import HEADER, HEADER_SIZE, LENGTH_PREFIX_SIZE, BatchError, verify
from rillet.node.storage.errors import LogCorruptionError
from rillet.node.storage.index import NO_TIMESTAMP, OffsetIndex, TimeIndex

log = logging.getLogger(__name__)

LOG_SUFFIX = ".log"
INDEX_SUFFIX = ".index"
TIMEINDEX_SUFFIX = ".timeindex"
DELETED_SUFFIX = ".deleted"
MAX_RELATIVE_OFFSET = 2**31 - 1
MAX_SEGMENT_BYTES = 2**31 - 1  # positions in the offset index are 4 bytes
_SCAN_CHUNK = 64 * 1024
_RECOVER_CHUNK = 4 * 1024 * 1024
_BASE_AND_LENGTH = struct.Struct("<qi")
_MIN_BATCH_LENGTH = HEADER_SIZE - LENGTH_PREFIX_SIZE
# Positions in the rillet.batch.HEADER tuple.
_F_BASE, _F_LENGTH, _F_TERM, _F_RAFT_INDEX, _F_COUNT, _F_MAX_TS = 0, 1, 2, 3, 7, 9


def segment_name(base_offset: int) -> str:
    return f"{base_offset:020d}"


class Segment:
    """A contiguous run of batches [base_offset, next_offset) stored in one file."""

    def __init__(self, directory: Path, base_offset: int, fd: int, size: int,
                 index_interval_bytes: int, first_raft_index: int = 1) -> None:
        self.directory = directory
        self.base_offset = base_offset
        self.fd = fd
        self.size = size
        self.flushed_size = 0
        self.next_offset = base_offset
        # Every batch is one Raft entry: batches carry consecutive Raft indexes, so a segment
        # covers [first_raft_index, next_raft_index). last_term is the leader_term of its last
        # batch (0 while empty). All three are derived from the log like the indexes.
        self.first_raft_index = first_raft_index
        self.next_raft_index = first_raft_index
        self.last_term = 0
        self.index_interval_bytes = index_interval_bytes
        self.offset_index = OffsetIndex()
        self.time_index = TimeIndex()
        self.max_timestamp_ms = NO_TIMESTAMP
        self._max_timestamp_rel = 0
        self._bytes_since_index = 0
        # Clock time of the first append to this segment (or of opening it when it already had
        # data): what segment_ms counts from.
        self.created_ms: int | None = None

    # ----------------------------------------------------------------- files and lifecycle
    @property
    def log_path(self) -> Path:
        return self.directory / (segment_name(self.base_offset) + LOG_SUFFIX)

    @property
    def index_path(self) -> Path:
        return self.directory / (segment_name(self.base_offset) + INDEX_SUFFIX)

    @property
    def timeindex_path(self) -> Path:
        return self.directory / (segment_name(self.base_offset) + TIMEINDEX_SUFFIX)

    @classmethod
    def create(cls, directory: Path, base_offset: int, index_interval_bytes: int,
               first_raft_index: int = 1) -> Segment:
        """A new empty segment; an old file of the same name (a leftover) is emptied."""
        path = directory / (segment_name(base_offset) + LOG_SUFFIX)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        seg = cls(directory, base_offset, fd, 0, index_interval_bytes, first_raft_index)
        for stale in (seg.index_path, seg.timeindex_path):
            stale.unlink(missing_ok=True)
        return seg

    @classmethod
    def open_existing(cls, directory: Path, base_offset: int,
                      index_interval_bytes: int) -> Segment:
        path = directory / (segment_name(base_offset) + LOG_SUFFIX)
        fd = os.open(path, os.O_RDWR)
        size = os.fstat(fd).st_size
        seg = cls(directory, base_offset, fd, size, index_interval_bytes)
        if size >= HEADER_SIZE:  # the first batch names the segment's first Raft index
            seg.first_raft_index = seg.next_raft_index = int(
                HEADER.unpack(os.pread(fd, HEADER_SIZE, 0))[_F_RAFT_INDEX])
        return seg

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def rename_deleted(self) -> list[Path]:
        """First half of deletion: rename every file to `.deleted` (recovery removes leftovers).

        Closes the file; returns the new paths for the caller to unlink once the directory is
        synced.
        """
        self.close()
        out = []
        for path in (self.log_path, self.index_path, self.timeindex_path):
            target = path.with_name(path.name + DELETED_SUFFIX)
            with contextlib.suppress(FileNotFoundError):
                path.rename(target)
                out.append(target)
        return out

    def remove_index_files(self) -> None:
        """Forget the on-disk indexes (the segment became active again after a truncation)."""
        self.index_path.unlink(missing_ok=True)
        self.timeindex_path.unlink(missing_ok=True)

    def write_index_files(self) -> list[Path]:
        """Write both indexes (not fsynced: the caller fsyncs them in its next flush)."""
        out = []
        for path, data in ((self.index_path, self.offset_index.to_bytes()),
                           (self.timeindex_path, self.time_index.to_bytes())):
            with open(path, "wb") as f:
                f.write(data)
            out.append(path)
        return out

    # ----------------------------------------------------------------- appending
    @property
    def is_empty(self) -> bool:
        return self.size == 0

    def append(self, parts: list[bytes | memoryview], total: int, base_offset: int,
               record_count: int, max_timestamp_ms: int, now_ms: int, leader_term: int) -> None:
        """Write one stamped batch (given as pieces, to avoid copying it) at the end."""
        pos = self.size
        try:
            written = os.pwritev(self.fd, parts, pos)
            if written != total:  # short writes only happen near ENOSPC; finish or fail
                rest = b"".join(bytes(p) for p in parts)[written:]
                while rest:
                    n = os.pwrite(self.fd, rest, pos + written)
                    written += n
                    rest = rest[n:]
        except OSError:
            # Leave no half batch where the next append will land.
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, pos)
            raise
        if self.created_ms is None:
            self.created_ms = now_ms
        self._note_batch(pos, base_offset, record_count, max_timestamp_ms, total, leader_term)
        self.size = pos + total
        self.next_offset = base_offset + record_count

    def _note_batch(self, pos: int, base_offset: int, record_count: int,
                    max_timestamp_ms: int, size: int, leader_term: int) -> None:
        """Index bookkeeping for one batch, shared by append and recovery (so both agree).
        The batch's Raft index is `next_raft_index` (the caller checked it)."""
        rel = base_offset - self.base_offset
        if max_timestamp_ms > self.max_timestamp_ms:
            self.max_timestamp_ms = max_timestamp_ms
            self._max_timestamp_rel = rel
        if self._bytes_since_index >= self.index_interval_bytes:
            self.offset_index.append(rel, pos, self.next_raft_index - self.first_raft_index)
            self.time_index.maybe_append(self.max_timestamp_ms, rel)
            self._bytes_since_index = 0
        self._bytes_since_index += size
        self.next_raft_index += 1
        self.last_term = leader_term

    def seal(self) -> None:
        """The segment stops growing: make the time index's last entry the segment maximum."""
        if self.max_timestamp_ms != NO_TIMESTAMP:
            self.time_index.maybe_append(self.max_timestamp_ms, self._max_timestamp_rel)

    # ----------------------------------------------------------------- reading
    def iter_headers(
            self, pos: int, end: int | None = None) -> Iterator[tuple[int, tuple[int, ...]]]:
        """(position, header fields) of each batch from `pos` (a batch start) up to `end`.

        Reads in chunks so small batches do not cost one system call each. Fields are the raw
        tuple of rillet.batch.HEADER (0 base_offset, 1 batch_length, 2 leader_term,
        3 raft_index, 7 record_count, 9 max_timestamp).
        """
        end = self.size if end is None else end
        while pos < end:
            buf = os.pread(self.fd, min(_SCAN_CHUNK, end - pos), pos)
            off = 0
            while off + HEADER_SIZE <= len(buf):
                fields = HEADER.unpack_from(buf, off)
                if fields[1] < _MIN_BATCH_LENGTH:
                    raise LogCorruptionError(
                        f"{self.log_path.name}: bad batch length {fields[1]} at {pos + off}")
                yield pos + off, fields
                off += fields[1] + LENGTH_PREFIX_SIZE
            if off == 0:
                raise LogCorruptionError(
                    f"{self.log_path.name}: truncated batch header at {pos}")
            pos += off

    def position_of(self, offset: int) -> int:
        """File position of the batch that contains `offset` (which must be in this segment)."""
        start = self.offset_index.lookup(offset - self.base_offset)
        for pos, fields in self.iter_headers(start):
            base = fields[0]
            if base > offset:
                break
            if offset < base + fields[_F_COUNT]:
                return pos
        raise LogCorruptionError(
            f"{self.log_path.name}: no batch holds offset {offset} "
            f"(segment covers {self.base_offset} to {self.next_offset - 1})")

    def position_of_raft(self, raft_index: int) -> int:
        """File position of the batch that is Raft entry `raft_index` (held by this segment)."""
        start = self.offset_index.lookup_raft(raft_index - self.first_raft_index)
        for pos, fields in self.iter_headers(start):
            if fields[_F_RAFT_INDEX] == raft_index:
                return pos
        raise LogCorruptionError(
            f"{self.log_path.name}: no batch is Raft entry {raft_index} (segment holds "
            f"{self.first_raft_index} to {self.next_raft_index - 1})")

    def position_of_first_at(self, offset: int) -> int:
        """File position of the first batch based at or after `offset`, control batches
        included (the segment size when there is none)."""
        start = self.offset_index.lookup_before(offset - self.base_offset)
        for pos, fields in self.iter_headers(start):
            if fields[_F_BASE] >= offset:
                return pos
        return self.size

    def read_from(self, pos: int, max_bytes: int, upper: int,
                  at_least_one: bool) -> tuple[bytes, bool]:
        """Whole batches from `pos` within `max_bytes`, none based at or beyond `upper`.

        Returns (data, stopped): stopped is True when the read ended for a reason other than
        reaching the end of this segment (budget or upper), so the caller does not continue
        into the next segment.
        """
        remaining = self.size - pos
        if remaining <= 0:
            return b"", False
        head = os.pread(self.fd, LENGTH_PREFIX_SIZE, pos)
        base, length = _BASE_AND_LENGTH.unpack(head)
        if base >= upper:
            return b"", True
        first_size = length + LENGTH_PREFIX_SIZE
        if first_size > max_bytes:
            if not at_least_one:
                return b"", True
            data = os.pread(self.fd, first_size, pos)
            if len(data) != first_size:
                raise LogCorruptionError(f"{self.log_path.name}: short read at {pos}")
            return data, pos + first_size < self.size
        # Find where the read ends without reading the data: the offset index gives a batch
        # boundary near the budget, and the few headers after it are read one by one. Then
        # one pread of exactly that range, so the result is never a copy of a bigger buffer.
        limit = min(max_bytes, remaining)
        off = max(first_size, self._skip_by_index(pos, limit, upper))
        stopped = False
        while off + LENGTH_PREFIX_SIZE <= limit:
            base, length = _BASE_AND_LENGTH.unpack(
                os.pread(self.fd, LENGTH_PREFIX_SIZE, pos + off))
            if base >= upper:
                stopped = True
                break
            size = length + LENGTH_PREFIX_SIZE
            if off + size > limit:
                break
            off += size
        if not stopped and off < remaining:
            stopped = True  # the budget ended before the segment did
        data = os.pread(self.fd, off, pos)
        if len(data) != off:
            raise LogCorruptionError(f"{self.log_path.name}: short read at {pos}")
        return data, stopped

    def _skip_by_index(self, pos: int, n: int, upper: int) -> int:
        """How far into a read of `n` bytes from `pos` the batches are known whole and < upper.

        An index entry marks where a batch starts, so every batch before it is whole; and if
        that batch's offset is <= upper, every batch before it is below upper. Starting the
        header walk there makes a read of many small batches cost about one index interval of
        Python work instead of one step per batch.
        """
        idx = self.offset_index
        if not idx.rels:
            return 0
        i = min(bisect.bisect_right(idx.positions, pos + n),
                bisect.bisect_right(idx.rels, upper - self.base_offset)) - 1
        return idx.positions[i] - pos if i >= 0 and idx.positions[i] > pos else 0

    def offset_for_timestamp(self, timestamp_ms: int) -> int | None:
        """Base offset of the first batch here whose max_timestamp >= timestamp_ms."""
        if self.max_timestamp_ms < timestamp_ms:
            return None
        rel = self.time_index.scan_start(timestamp_ms)
        start = self.position_of(self.base_offset + rel)
        for _pos, fields in self.iter_headers(start):
            if fields[_F_MAX_TS] >= timestamp_ms:
                return int(fields[0])
        raise LogCorruptionError(
            f"{self.log_path.name}: max timestamp {self.max_timestamp_ms} not found in the log")

    # ----------------------------------------------------------------- recovery
    def recover(self) -> int:
        """Check every batch (CRC, continuity), rebuild the indexes, cut an invalid tail.

        Returns the number of bytes cut. Anything after the first bad batch is dropped even if
        it looks fine: offsets after a hole cannot be trusted.
        """
        self.offset_index = OffsetIndex()
        self.time_index = TimeIndex()
        self.max_timestamp_ms = NO_TIMESTAMP
        self._max_timestamp_rel = 0
        self._bytes_since_index = 0
        self.next_raft_index = self.first_raft_index
        self.last_term = 0
        file_size = os.fstat(self.fd).st_size
        expected = self.base_offset
        pos = 0
        chunk = b""
        chunk_start = 0
        reason = ""
        while pos < file_size:
            off = pos - chunk_start
            if off + HEADER_SIZE > len(chunk):
                chunk = os.pread(self.fd, _RECOVER_CHUNK, pos)
                chunk_start, off = pos, 0
                if len(chunk) < HEADER_SIZE:
                    reason = f"a partial batch header ({len(chunk)} bytes)"
                    break
            try:
                fields = HEADER.unpack_from(chunk, off)
                size = fields[1] + LENGTH_PREFIX_SIZE
                if pos + size > file_size or fields[1] < _MIN_BATCH_LENGTH:
                    reason = f"a partial batch ({file_size - pos} of {size} bytes)"
                    break
                if off + size > len(chunk):
                    chunk = os.pread(self.fd, max(_RECOVER_CHUNK, size), pos)
                    chunk_start, off = pos, 0
                header = verify(chunk, off)
            except BatchError as exc:
                reason = f"a damaged batch ({exc})"
                break
            if header.base_offset != expected:
                reason = f"base offset {header.base_offset} where {expected} was expected"
                break
            if header.raft_index != self.next_raft_index:
                reason = (f"Raft index {header.raft_index} where {self.next_raft_index} was "
                          "expected")
                break
            if header.last_offset - self.base_offset > MAX_RELATIVE_OFFSET:
                reason = "a batch beyond the segment's relative offset range"
                break
            if header.leader_term < self.last_term:
                # The term is stamped outside the CRC: a damaged one shows as a term that goes
                # back (one that jumps ahead is caught only by the Raft log's own checks).
                reason = (f"leader term {header.leader_term} after term {self.last_term}: "
                          "terms never go back")
                break
            self._note_batch(pos, expected, header.record_count, header.max_timestamp_ms,
                             header.size, header.leader_term)
            pos += header.size
            expected = header.next_offset
        cut = file_size - pos
        if cut:
            log.warning("%s: recovery cut %d bytes at position %d (offset %d): found %s",
                        self.log_path, cut, pos, expected, reason)
            os.ftruncate(self.fd, pos)
        self.size = pos
        self.next_offset = expected
        return cut

    def load_index_files(self, next_offset: int) -> bool:
        """Adopt the on-disk indexes of a closed, known-flushed segment without reading its log.

        `next_offset` is the next segment's base offset. Returns False (the caller rebuilds)
        when a file is missing or anything fails a sanity check.
        """
        try:
            offsets = OffsetIndex.from_bytes(self.index_path.read_bytes())
            times = TimeIndex.from_bytes(self.timeindex_path.read_bytes())
        except (OSError, ValueError) as exc:
            log.info("%s: rebuilding indexes (%s)", self.log_path, exc)
            return False
        span = next_offset - self.base_offset
        ok = (span > 0) == (self.size > 0) and span <= MAX_RELATIVE_OFFSET + 1
        if ok and self.size > 0:
            ok = len(times) > 0 and times.rels[-1] < span
        last = offsets.last()
        if ok and last is not None:
            ok = last[0] < span and last[1] < self.size
            if ok:
                head = os.pread(self.fd, LENGTH_PREFIX_SIZE, last[1])
                ok = (len(head) == LENGTH_PREFIX_SIZE
                      and _BASE_AND_LENGTH.unpack(head)[0] == self.base_offset + last[0])
        if ok and self.size > 0:
            # Walk the headers after the last index entry: the last batch must end exactly at
            # the end of the file and at the next segment's base offset (this also catches a
            # missing segment after this one). At most about one index interval of headers.
            end_pos, end_offset = (last[1] if last else 0), -1
            raft = self.first_raft_index + (last[2] if last else 0)
            term = 0
            try:
                for pos, fields in self.iter_headers(end_pos):
                    end_pos = pos + fields[1] + LENGTH_PREFIX_SIZE
                    end_offset = fields[0] + fields[_F_COUNT]
                    ok = ok and fields[_F_RAFT_INDEX] == raft
                    raft, term = raft + 1, fields[_F_TERM]
            except LogCorruptionError:
                ok = False
            ok = ok and end_pos == self.size and end_offset == next_offset
            self.next_raft_index, self.last_term = raft, term
        if not ok:
            log.info("%s: rebuilding indexes (they do not match the log)", self.log_path)
            return False
        self.offset_index = offsets
        self.time_index = times
        self.max_timestamp_ms = times.last_timestamp
        self._max_timestamp_rel = times.rels[-1] if len(times) else 0
        self.next_offset = next_offset
        self.flushed_size = self.size
        return True

    # ----------------------------------------------------------------- truncation
    def truncate_at(self, pos: int, offset: int, raft_index: int) -> None:
        """Drop every batch from file position `pos` (the batch based at `offset`, Raft entry
        `raft_index`) onwards."""
        os.ftruncate(self.fd, pos)
        self.size = pos
        self.flushed_size = min(self.flushed_size, pos)
        self.next_offset = offset
        self.next_raft_index = raft_index
        self.last_term = 0
        rel = offset - self.base_offset
        self.offset_index.truncate_to_raft(raft_index - self.first_raft_index)
        self.time_index.truncate_to(rel)
        # Rebuild the running maximum from the last surviving time entry.
        if len(self.time_index):
            self.max_timestamp_ms = self.time_index.timestamps[-1]
            self._max_timestamp_rel = self.time_index.rels[-1]
            start = self.position_of(self.base_offset + self._max_timestamp_rel) if pos else 0
        else:
            self.max_timestamp_ms = NO_TIMESTAMP
            self._max_timestamp_rel = 0
            start = 0
        for _p, fields in self.iter_headers(start):
            self.last_term = fields[_F_TERM]  # the scan ends at the new last batch
            if fields[_F_MAX_TS] > self.max_timestamp_ms:
                self.max_timestamp_ms = fields[_F_MAX_TS]
                self._max_timestamp_rel = fields[0] - self.base_offset
        last = self.offset_index.last()
        self._bytes_since_index = pos - (last[1] if last else 0)
