"""The partition log: a directory of segments that is also the partition's Raft log.

Layout of a partition directory:
    00000000000000000000.log / .index / .timeindex    one segment per base offset
    recovery-point.json                               checkpoint, replaced atomically

Every batch is also one Raft entry (decision 0401): its header carries a raft_index, and
batches carry consecutive Raft indexes. `append` (storage tests and benchmarks; the broker
writes through a Raft log) stamps the next one itself, so there the Raft index is the entry
count; `append_stamped` takes batches a
Raft log stamped (control batches included), `truncate_to_raft_index`, `read_raft` and
`reset` serve node/storage/raft_log.py. The checkpoint also holds the log start: its record
offset, its Raft index, the term of the entry before it, and the owner's `start_meta`.

Durability contract (what is on disk when):
- `append` writes the stamped batch into the page cache (one pwritev, no fsync). A process
  crash keeps it; a machine crash may lose it.
- `flush` fsyncs every segment file written since the last flush (one fdatasync when nothing
  rolled), the index files of segments that closed, and the directory when files were created.
  On return every offset below the returned `flushed_offset` survives a machine crash.
- The checkpoint records the recovery point: every segment below it is fully flushed, and its
  index files too. It moves forward only in a flush that follows a roll (so the ordinary flush
  stays one fsync), and backward, synchronously, before a truncation. `close` sets it to the
  log end and marks the shutdown clean.
- Opening a log recovers it: segments below the recovery point are trusted (index files loaded
  after sanity checks, rebuilt from the log when missing or inconsistent); the segment holding
  the recovery point and every later one are read in full, each batch CRC-checked and its base
  offset checked against the previous batch, indexes rebuilt, and the first bad byte and
  everything after it cut (logged at WARNING with the byte count).

Threading: one thread (the event loop) calls everything except `flush`, which may run at the
same time in a worker thread (asyncio.to_thread). An internal lock covers the bookkeeping; the
fsyncs themselves run outside it, on duplicated file descriptors, so a slow disk never blocks
appends or reads.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import logging
import os
import re
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from rillet.batch import (
    CONTROL_FLAG,
    CRC_START,
    HEADER_SIZE,
    LENGTH_PREFIX_SIZE,
    STAMPED_PREFIX,
    STAMPED_PREFIX_SIZE,
    BatchError,
    InvalidBatchError,
    parse_header,
)
from rillet.node.storage.atomic import fsync_dir, fsync_path, write_atomic
from rillet.node.storage.compactor import (
    CLEANED_SUFFIX,
    CompactionAborted,
    CompactionProgress,
    CompactionStats,
    compact_log,
)
from rillet.node.storage.errors import OffsetOutOfRangeError, StorageError
from rillet.node.storage.segment import (
    DELETED_SUFFIX,
    INDEX_SUFFIX,
    LOG_SUFFIX,
    MAX_RELATIVE_OFFSET,
    MAX_SEGMENT_BYTES,
    TIMEINDEX_SUFFIX,
    Segment,
)

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "recovery-point.json"
_SEGMENT_FILE = re.compile(r"^(\d{20})\.(log|index|timeindex)$")
# From byte 8: batch_length @8, record_count @35, max_timestamp @47 (see records.proto).
_BATCH_FIELDS = struct.Struct("<i23xi8xq")
_LENGTH = struct.Struct("<i")
_ATTRIBUTES = struct.Struct("<h")
_RAFT_READ_CHUNK = 4 * 1024 * 1024
_MIB = 1024 * 1024
_DAY_MS = 24 * 3600 * 1000

# cleanup.policy values, as in admin.proto's CleanupPolicy (node/topics.py re-exports them).
CLEANUP_DELETE = 1
CLEANUP_COMPACT = 2
CLEANUP_COMPACT_DELETE = 3


# Public: raft_log.py opens its PartitionLog with the same default clock.
def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class LogConfig:
    """Per-partition storage settings (the topic's segment.*, retention.* configs)."""

    segment_bytes: int = 256 * _MIB
    segment_ms: int = 7 * _DAY_MS
    retention_ms: int = 7 * _DAY_MS  # -1: keep forever
    retention_bytes: int = -1  # -1: no size limit
    index_interval_bytes: int = 4096
    cleanup_policy: int = CLEANUP_DELETE
    # How long a tombstone (an empty value) outlives its timestamp on a compacted topic.
    delete_retention_ms: int = _DAY_MS

    @property
    def compacts(self) -> bool:
        """cleanup.policy compact or compact,delete: the compactor cleans this log."""
        return self.cleanup_policy in (CLEANUP_COMPACT, CLEANUP_COMPACT_DELETE)

    @property
    def deletes(self) -> bool:
        """cleanup.policy delete or compact,delete: retention by time and size applies."""
        return self.cleanup_policy in (CLEANUP_DELETE, CLEANUP_COMPACT_DELETE)

    def __post_init__(self) -> None:
        if not 1 <= self.segment_bytes <= MAX_SEGMENT_BYTES:
            raise ValueError(f"segment_bytes must be 1 to {MAX_SEGMENT_BYTES}")
        if self.segment_ms < 1:
            raise ValueError("segment_ms must be at least 1")
        if self.retention_ms < -1 or self.retention_bytes < -1:
            raise ValueError("retention_ms and retention_bytes must be -1 (no limit) or >= 0")
        if self.index_interval_bytes < 0:
            raise ValueError("index_interval_bytes must not be negative")
        if self.cleanup_policy not in (CLEANUP_DELETE, CLEANUP_COMPACT, CLEANUP_COMPACT_DELETE):
            raise ValueError(f"unknown cleanup_policy {self.cleanup_policy}")
        if self.delete_retention_ms < 0:
            raise ValueError("delete_retention_ms must not be negative")


class AppendInfo(NamedTuple):
    """Where a batch landed."""

    base_offset: int
    """Offset assigned to the batch's first record."""
    last_offset: int
    """Offset of its last record."""
    log_append_time_ms: int
    """Clock time of the append, ms since the Unix epoch."""


class CleanableSegments(NamedTuple):
    """One consistent view of what a compaction pass may rewrite, taken under the log's lock
    so the swap can later tell whether the log moved on (see `PartitionLog.replace_segment`)."""

    segments: list[Segment]
    """The closed, fully flushed segments, oldest first, that hold nothing above the
    requested Raft index (never the active segment; may be empty)."""
    end_offset: int
    """The offset just past the last of them (the log start offset when there are none)."""
    epoch: int
    """The log's truncation epoch at the time of the view."""
    progress: CompactionProgress
    """The compactor's memory between passes, kept by the log it describes."""


class PartitionLog:
    """An append-only, segmented log of record batches; see the module doc for guarantees."""

    def __init__(self, directory: Path, config: LogConfig, clock_ms: Callable[[], int],
                 log_fields: Mapping[str, object] | None = None) -> None:
        # Use PartitionLog.open(); the constructor only sets fields.
        self.directory = directory
        # Every line this log writes carries its topic and partition (node/logs.py).
        self.log_fields: dict[str, object] = dict(log_fields or {})
        self.logger = logging.LoggerAdapter(log, self.log_fields)
        self.config = config
        self._clock_ms = clock_ms
        self._lock = threading.Lock()
        self._checkpoint_lock = threading.Lock()  # taken before _lock, never after
        self._segments: list[Segment] = []
        self._bases: list[int] = []
        self._log_end = 0
        self._size = 0
        self._flushed_offset = 0
        self._checkpoint_offset = 0
        self._pending_fsync: list[Path] = []
        self._dir_dirty = False
        self._epoch = 0  # bumped by truncation: a flush that straddles one claims nothing
        self._closed = False
        # The Raft log start (checkpointed): the first entry held would be start_raft_index;
        # start_prev_term is the term of the entry just before it, kept for log matching
        # after retention deleted that entry (0 for a log that never lost its beginning).
        self._start_raft_index = 1
        self._start_prev_term = 0
        self._start_meta = ""  # the owner's opaque notes about the log start (Raft: membership)
        self._compaction = CompactionProgress()  # the compactor's memory between passes

    # ================================================================ opening and recovery
    @classmethod
    def open(cls, directory: Path, config: LogConfig, *,
             clock_ms: Callable[[], int] = wall_clock_ms,
             log_fields: Mapping[str, object] | None = None) -> PartitionLog:
        """Create the log in `directory`, or recover the one already there (see module doc).
        `log_fields` (topic, partition) go on every line it logs."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        plog = cls(directory, config, clock_ms, log_fields)
        plog._recover()
        return plog

    def _read_checkpoint(self) -> tuple[int, bool, int, int, int]:
        """(recovery point, clean, log start offset, start Raft index, its previous term)."""
        path = self.directory / CHECKPOINT_NAME
        try:
            doc = json.loads(path.read_bytes())
            self._start_meta = str(doc.get("start_meta", ""))
            return (int(doc["recovery_point"]), bool(doc.get("clean", False)),
                    int(doc.get("start_offset", 0)), int(doc.get("start_raft_index", 1)),
                    int(doc.get("start_prev_term", 0)))
        except FileNotFoundError:
            return 0, False, 0, 1, 0
        except (ValueError, KeyError, TypeError) as exc:
            self.logger.warning("%s: unreadable checkpoint (%s); checking every segment", path, exc)
            return 0, False, 0, 1, 0

    def _write_checkpoint(self, recovery_point: int, clean: bool,
                          start_offset: int | None = None) -> None:
        doc = {"version": 1, "recovery_point": recovery_point, "clean": clean,
               "start_offset": self.log_start_offset if start_offset is None else start_offset,
               "start_raft_index": self._start_raft_index,
               "start_prev_term": self._start_prev_term, "start_meta": self._start_meta}
        write_atomic(self.directory / CHECKPOINT_NAME, json.dumps(doc).encode())
        self._checkpoint_offset = recovery_point

    def _recover(self) -> None:
        d = self.directory
        bases: set[int] = set()
        others: list[tuple[int, Path]] = []
        for path in d.iterdir():
            if path.name.endswith((DELETED_SUFFIX, ".tmp", CLEANED_SUFFIX)):
                self.logger.info("%s: removing leftover %s", d, path.name)
                path.unlink(missing_ok=True)
                continue
            m = _SEGMENT_FILE.match(path.name)
            if m is None:
                continue
            if m.group(2) == "log":
                bases.add(int(m.group(1)))
            else:
                others.append((int(m.group(1)), path))
        for base, path in others:
            if base not in bases:
                self.logger.info("%s: removing index %s that has no log", d, path.name)
                path.unlink(missing_ok=True)
        recovery_point, clean, start_offset, start_raft, prev_term = self._read_checkpoint()
        self._start_raft_index, self._start_prev_term = start_raft, prev_term
        interval = self.config.index_interval_bytes
        segs = [Segment.open_existing(d, b, interval) for b in sorted(bases)]
        # Finish a retention or a reset that the checkpoint announced but a crash interrupted:
        # segments below the log start go; a first segment that does not begin exactly at the
        # checkpointed start (offset and Raft index) is a log a reset replaced: all of it goes.
        below = [s for s in segs if s.base_offset < start_offset]
        rest = segs[len(below):]
        if rest and rest[0].size and (rest[0].base_offset != start_offset
                                      or rest[0].first_raft_index != start_raft):
            below += rest
            rest = []
        for s in below:
            self.logger.info("%s: removing segment %d below the log start (offset %d, "
                             "Raft index %d)", d, s.base_offset, start_offset, start_raft)
            self._delete_files(s.rename_deleted())
        segs = rest
        if not segs:
            segs = [Segment.create(d, start_offset, interval, start_raft)]
            self._dir_dirty = True
        elif not segs[0].size:
            segs[0].first_raft_index = segs[0].next_raft_index = start_raft
        first_checked = max(0, bisect.bisect_right([s.base_offset for s in segs],
                                                   recovery_point) - 1)
        if not clean:
            self.logger.info("%s: opening after an unclean shutdown; checking from offset %d",
                             d, segs[first_checked].base_offset)
        kept: list[Segment] = []
        cut_total = 0
        for i, seg in enumerate(segs):
            if kept and not seg.size:
                seg.first_raft_index = seg.next_raft_index = kept[-1].next_raft_index
            if kept and (kept[-1].next_offset != seg.base_offset
                         or kept[-1].next_raft_index != seg.first_raft_index):
                # A gap or overlap (the previous segment lost its tail): nothing after a hole
                # can be trusted.
                dropped = segs[i:]
                self.logger.warning("%s: dropping %d segment(s) from offset %d: they do not "
                                    "continue offset %d", d, len(dropped), seg.base_offset,
                                    kept[-1].next_offset)
                for s in dropped:
                    cut_total += s.size
                    self._delete_files(s.rename_deleted())
                break
            is_last = i == len(segs) - 1
            if i < first_checked and not is_last and seg.load_index_files(
                    segs[i + 1].base_offset):
                kept.append(seg)
                continue
            cut_total += seg.recover()
            os.fsync(seg.fd)  # whatever survived the crash is durable from here on
            seg.flushed_size = seg.size
            kept.append(seg)
            if not is_last and segs[i + 1].base_offset == seg.next_offset:
                seg.seal()
                for p in seg.write_index_files():
                    fsync_path(p)
        active = kept[-1]
        active.remove_index_files()  # the active segment's indexes live in memory only
        if active.size:
            active.created_ms = self._clock_ms()
        for seg in kept[:-1]:
            seg.created_ms = None
        self._segments = kept
        self._bases = [s.base_offset for s in kept]
        self._log_end = active.next_offset
        self._size = sum(s.size for s in kept)
        self._flushed_offset = self._log_end
        fsync_dir(d)
        self._dir_dirty = False
        if recovery_point > self._log_end:
            self.logger.error("%s: checkpoint says offsets below %d were flushed but the log "
                              "ends at %d: flushed data was lost", d, recovery_point,
                              self._log_end)
        self._write_checkpoint(active.base_offset, clean=False)
        self.logger.info("%s: opened, offsets %d to %d in %d segment(s), %d bytes%s", d,
                         self.log_start_offset, self._log_end, len(kept), self._size,
                         f", cut {cut_total} bytes" if cut_total else "")

    def _delete_files(self, paths: list[Path]) -> None:
        for p in paths:
            p.unlink(missing_ok=True)

    # ================================================================ properties
    # Properties read plain fields; from another thread they may be a moment stale, never torn.
    @property
    def log_start_offset(self) -> int:
        """First offset still stored (moves up when retention deletes segments)."""
        return self._bases[0] if self._bases else 0

    @property
    def first_raft_index(self) -> int:
        """Raft index of the first batch held (the log start + 1)."""
        return self._segments[0].first_raft_index

    @property
    def next_raft_index(self) -> int:
        """Raft index the next appended batch gets (last index + 1)."""
        return self._segments[-1].next_raft_index

    @property
    def start_prev_term(self) -> int:
        """Term of the entry just before `first_raft_index` (0 at the very beginning)."""
        return self._start_prev_term

    @property
    def start_meta(self) -> str:
        """The owner's notes about the log start, saved with it by `reset`/`enforce_retention`
        in the same atomic checkpoint write (the Raft log keeps the membership there)."""
        return self._start_meta

    @property
    def last_term(self) -> int:
        """Term of the last batch held, or `start_prev_term` when the log is empty."""
        for seg in reversed(self._segments):
            if seg.next_raft_index > seg.first_raft_index:
                return seg.last_term
        return self._start_prev_term

    @property
    def log_end_offset(self) -> int:
        """The offset the next appended record will get."""
        return self._log_end

    @property
    def flushed_offset(self) -> int:
        """Every offset below this survives a machine crash."""
        return self._flushed_offset

    @property
    def size_bytes(self) -> int:
        return self._size

    @property
    def segment_count(self) -> int:
        return len(self._segments)

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(f"partition log {self.directory} is closed")

    # ================================================================ writing
    def append(self, batch: bytes | bytearray | memoryview, *, leader_term: int = 0) -> AppendInfo:
        """Assign offsets to one validated batch and write it; durable only after `flush`.

        The batch must already have passed rillet.batch.validate (CRC, record count): this
        only reads the fixed header fields it needs and never looks at records. The batch's
        bytes are not copied: the stamped prefix and the rest go to the kernel in one
        pwritev. Event-loop thread only.
        """
        n = len(batch)
        if n < HEADER_SIZE:
            raise InvalidBatchError(f"a batch needs at least {HEADER_SIZE} bytes, got {n}")
        length, count, max_ts = _BATCH_FIELDS.unpack_from(batch, 8)
        if length + LENGTH_PREFIX_SIZE != n or count < 1:
            raise InvalidBatchError(
                f"batch header declares {length + LENGTH_PREFIX_SIZE} bytes and {count} "
                f"records, got {n} bytes")
        with self._lock:
            self._check_open()
            base = self._log_end
            raft_index = self._segments[-1].next_raft_index
            view = memoryview(batch)
            now = self._append_locked(
                [STAMPED_PREFIX.pack(base, length, leader_term, raft_index),
                 view[STAMPED_PREFIX_SIZE:]], n, base, count, max_ts, leader_term)
        return AppendInfo(base, base + count - 1, now)

    def append_stamped(self, batch: bytes | bytearray | memoryview) -> AppendInfo:
        """Write a batch that is already stamped (a Raft entry: base offset, leader term and
        Raft index set by the partition's Raft log, or by the leader it copies).

        Control batches (no records) are accepted here and only here. The stamps must continue
        the log: base_offset == log_end_offset and raft_index == next_raft_index, else
        StorageError (a caller bug: writing it would break the log's invariants). Checks the
        header, not the CRC. Durable only after `flush`. Event-loop thread only.
        """
        try:
            header = parse_header(batch)
        except BatchError as exc:
            raise InvalidBatchError(f"cannot append: {exc}") from exc
        n = len(batch)
        if header.size != n:
            raise InvalidBatchError(f"batch header declares {header.size} bytes, got {n}")
        with self._lock:
            self._check_open()
            base, raft_index = self._log_end, self._segments[-1].next_raft_index
            if header.base_offset != base or header.raft_index != raft_index:
                raise StorageError(
                    f"{self.directory}: batch stamped offset {header.base_offset} / Raft index "
                    f"{header.raft_index} does not continue the log at offset {base} / Raft "
                    f"index {raft_index}")
            now = self._append_locked([batch], n, base, header.record_count,
                                      header.max_timestamp_ms, header.leader_term)
        return AppendInfo(base, base + header.record_count - 1, now)

    def _append_locked(self, parts: list[bytes | bytearray | memoryview], n: int, base: int,
                       count: int, max_ts: int, leader_term: int) -> int:
        """Roll if due, then write one stamped batch. Caller holds _lock; returns the time."""
        now = self._clock_ms()
        seg = self._segments[-1]
        # A segment is only closed once it holds records: a control batch occupies no offsets,
        # so a segment of control batches only would share its name with the next one.
        if not seg.is_empty and base > seg.base_offset and (
                seg.size + n > self.config.segment_bytes
                or (seg.created_ms is not None
                    and now - seg.created_ms >= self.config.segment_ms)
                or base + count - 1 - seg.base_offset > MAX_RELATIVE_OFFSET):
            seg = self._roll()
        seg.append(parts, n, base, count, max_ts, now, leader_term)  # type: ignore[arg-type]
        self._log_end = base + count
        self._size += n
        return now

    def _roll(self) -> Segment:
        """Close the active segment and start a new one at the log end. Caller holds _lock."""
        old = self._segments[-1]
        old.seal()
        new = Segment.create(self.directory, self._log_end, self.config.index_interval_bytes,
                             old.next_raft_index)
        self._pending_fsync.extend(old.write_index_files())
        self._segments.append(new)
        self._bases.append(new.base_offset)
        self._dir_dirty = True
        self.logger.debug("%s: rolled segment %d -> %d", self.directory, old.base_offset,
                          new.base_offset)
        return new

    def flush(self) -> int:
        """fsync everything appended so far; returns the new flushed offset.

        Safe from a worker thread while the event loop appends and reads: the lock is held
        only to snapshot what needs syncing and to publish the result. Appends that race with
        the fsync are simply not claimed. One fdatasync when nothing rolled since the last
        flush; after a roll also the closed segment's indexes, the directory, and the
        checkpoint.
        """
        with self._lock:
            self._check_open()
            end = self._log_end
            epoch = self._epoch
            jobs = [(os.dup(s.fd), s, s.size) for s in self._segments
                    if s.flushed_size < s.size]
            pending, self._pending_fsync = self._pending_fsync, []
            need_dir, self._dir_dirty = self._dir_dirty, False
        try:
            for fd, _seg, _size in jobs:
                os.fdatasync(fd)
            for path in pending:
                with contextlib.suppress(FileNotFoundError):
                    fsync_path(path)
            if need_dir:
                fsync_dir(self.directory)
        except BaseException:
            with self._lock:
                self._pending_fsync[:0] = pending
                self._dir_dirty = self._dir_dirty or need_dir
            raise
        finally:
            for fd, _seg, _size in jobs:
                os.close(fd)
        with self._checkpoint_lock:
            with self._lock:
                if self._epoch != epoch or self._closed:
                    # A truncation or close ran meanwhile: claim nothing, leave the checkpoint
                    # they wrote alone.
                    return self._flushed_offset
                for _fd, seg, size in jobs:
                    seg.flushed_size = max(seg.flushed_size, size)
                self._flushed_offset = max(self._flushed_offset, end)
                flushed = self._flushed_offset
                point = self._durable_point()
            if point > self._checkpoint_offset:
                self._write_checkpoint(point, clean=False)
        return flushed

    def _durable_point(self) -> int:
        """Base offset of the first segment that is not wholly durable. Caller holds _lock."""
        if self._pending_fsync:
            return self._checkpoint_offset
        i = max(0, bisect.bisect_right(self._bases, self._checkpoint_offset) - 1)
        for seg in self._segments[i:-1]:
            if seg.flushed_size < seg.size:
                return seg.base_offset
        return self._segments[-1].base_offset

    # ================================================================ reading
    def read(self, offset: int, max_bytes: int, *, upper: int | None = None) -> bytes:
        """Whole stored batches from the one containing `offset`, as one bytes object.

        Stops before any batch based at or beyond `upper` (default: the log end) and before
        exceeding `max_bytes`, but returns at least one batch when one is available; b"" when
        `offset` has reached `upper`. Batches come back exactly as stored (stamped, CRC
        intact). Raises OffsetOutOfRangeError outside [log_start_offset, log_end_offset].
        Event-loop thread only.
        """
        with self._lock:
            self._check_open()
            start, end = self.log_start_offset, self._log_end
            if offset < start or offset > end:
                raise OffsetOutOfRangeError(offset, start, end)
            limit = end if upper is None else min(upper, end)
            if offset >= limit:
                return b""
            i = bisect.bisect_right(self._bases, offset) - 1
            seg = self._segments[i]
            pos = seg.position_of(offset)
            parts: list[bytes] = []
            budget = max_bytes
            while True:
                data, stopped = seg.read_from(pos, budget, limit, not parts)
                if data:
                    parts.append(data)
                    budget -= len(data)
                i += 1
                if stopped or budget < HEADER_SIZE or i == len(self._segments):
                    break
                seg, pos = self._segments[i], 0
                if seg.base_offset >= limit:
                    break
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def read_raft(self, lo: int, hi: int, max_bytes: int | None) -> list[bytes]:
        """The stored batches that are Raft entries [lo, hi), each as its own bytes, within
        `max_bytes` of entry data in total but at least one (None: no bound). An entry's size
        is what cluster.raft counts: the whole batch, or a control batch's body. The caller
        checked that first_raft_index <= lo < hi <= next_raft_index. Event-loop thread only."""
        budget = (1 << 62) if max_bytes is None else max_bytes
        out: list[bytes] = []
        with self._lock:
            self._check_open()
            firsts = [s.first_raft_index for s in self._segments]
            i = bisect.bisect_right(firsts, lo) - 1
            while i > 0 and self._segments[i].next_raft_index <= lo:
                i += 1  # an empty segment shares its first index with the next one
            seg = self._segments[i]
            pos = seg.position_of_raft(lo)
            r = lo
            full = False
            while r < hi and not full:
                chunk = min(max(budget, 0) + 8 * HEADER_SIZE, _RAFT_READ_CHUNK)
                data, _stopped = seg.read_from(pos, chunk, 1 << 62, True)
                off = 0
                while off < len(data) and r < hi:
                    size = _LENGTH.unpack_from(data, off + 8)[0] + LENGTH_PREFIX_SIZE
                    control = _ATTRIBUTES.unpack_from(data, off + CRC_START)[0] & CONTROL_FLAG
                    esize = size - HEADER_SIZE if control else size
                    if out and esize > budget:
                        full = True
                        break
                    out.append(data[off:off + size])
                    off += size
                    budget -= esize
                    r += 1
                pos += off
                if not data:
                    break
                if pos >= seg.size:
                    i += 1
                    if i == len(self._segments):
                        break
                    seg, pos = self._segments[i], 0
        return out

    def offset_for_timestamp(self, ts_ms: int) -> int | None:
        """Base offset of the first batch whose max_timestamp >= ts_ms, or None.

        Segments are checked in order by their in-memory maximum timestamp; inside one, the
        time index narrows the scan to about one index interval of batch headers. Event-loop
        thread only.
        """
        with self._lock:
            self._check_open()
            for seg in self._segments:
                # A segment of control batches only (a Raft no-op, timestamp 0) holds no
                # record to find: skip it, or a search for a timestamp <= 0 fails there.
                if seg.next_offset > seg.base_offset and seg.max_timestamp_ms >= ts_ms:
                    return seg.offset_for_timestamp(ts_ms)
        return None

    # ================================================================ truncation, retention
    def truncate_to(self, offset: int) -> None:
        """Remove every batch at or above `offset`, which must be a batch boundary.

        Durable on return (file truncation and directory fsynced, checkpoint lowered first), as
        a Raft follower needs before it accepts the leader's entries. Event-loop thread only.
        """
        with self._checkpoint_lock, self._lock:
            self._check_open()
            start, end = self.log_start_offset, self._log_end
            if offset < start or offset > end:
                raise OffsetOutOfRangeError(offset, start, end)
            # The first batch based at or after `offset` (control batches included): a control
            # batch at a segment's base offset may end the segment before it.
            i = max(0, bisect.bisect_left(self._bases, offset) - 1)
            target = self._segments[i]
            pos = target.position_of_first_at(offset)
            if pos < target.size:
                fields = next(target.iter_headers(pos))[1]
                got, raft_index = fields[0], fields[3]
            else:
                got, raft_index = target.next_offset, target.next_raft_index
            if got != offset:
                inside = next(target.iter_headers(target.position_of(offset)))[1][0]
                raise StorageError(
                    f"cannot truncate to {offset}: it is inside the batch based at {inside}")
            if pos == target.size and i == len(self._segments) - 1:
                return  # nothing at or above `offset`
            self._truncate_locked(i, pos, offset, raft_index)

    def truncate_to_raft_index(self, raft_index: int) -> None:
        """Remove the batch that is Raft entry `raft_index` and every later one (a follower
        dropping a conflicting suffix). Same durability as `truncate_to`. Raises StorageError
        outside [first_raft_index, next_raft_index]; a no-op at next_raft_index."""
        with self._checkpoint_lock, self._lock:
            self._check_open()
            first, nxt = self._segments[0].first_raft_index, self._segments[-1].next_raft_index
            if not first <= raft_index <= nxt:
                raise StorageError(f"{self.directory}: cannot truncate to Raft index "
                                   f"{raft_index}: the log holds {first} to {nxt - 1}")
            if raft_index == nxt:
                return
            firsts = [s.first_raft_index for s in self._segments]
            i = max(0, bisect.bisect_left(firsts, raft_index) - 1)
            target = self._segments[i]
            if raft_index == target.next_raft_index:
                pos, offset = target.size, target.next_offset
            else:
                pos = target.position_of_raft(raft_index)
                offset = next(target.iter_headers(pos))[1][0]
            self._truncate_locked(i, pos, offset, raft_index)

    def _truncate_locked(self, i: int, pos: int, offset: int, raft_index: int) -> None:
        """Cut segment i at `pos` (the batch based at `offset`, Raft entry `raft_index`) and
        drop every later segment. Caller holds both locks."""
        target = self._segments[i]
        if target.base_offset < self._checkpoint_offset:
            self._write_checkpoint(target.base_offset, clean=False)
        doomed = self._segments[i + 1:]
        renamed: list[Path] = []
        for seg in doomed:
            renamed.extend(seg.rename_deleted())
        del self._segments[i + 1:]
        del self._bases[i + 1:]
        dead = {p for s in doomed for p in (s.index_path, s.timeindex_path)}
        dead |= {target.index_path, target.timeindex_path}
        self._pending_fsync = [p for p in self._pending_fsync if p not in dead]
        target.remove_index_files()
        target.truncate_at(pos, offset, raft_index)
        os.fsync(target.fd)
        target.flushed_size = target.size
        target.created_ms = self._clock_ms() if target.size else None
        fsync_dir(self.directory)
        self._delete_files(renamed)
        self._epoch += 1
        self._log_end = offset
        self._flushed_offset = min(self._flushed_offset, offset)
        self._size = sum(s.size for s in self._segments)
        self.logger.info("%s: truncated to offset %d (Raft index %d)", self.directory, offset,
                         raft_index)

    def reset(self, next_offset: int, next_raft_index: int, prev_term: int,
              start_meta: str = "") -> None:
        """Discard the whole log and restart it empty at record offset `next_offset` and Raft
        index `next_raft_index` (whose previous entry had term `prev_term`): a Raft follower
        installing the leader's snapshot. Durable on return: the checkpoint naming the new
        start is written first, so recovery after a crash part-way removes the old segments.
        """
        with self._checkpoint_lock, self._lock:
            self._check_open()
            self._start_raft_index, self._start_prev_term = next_raft_index, prev_term
            self._start_meta = start_meta
            self._write_checkpoint(next_offset, clean=False, start_offset=next_offset)
            renamed: list[Path] = []
            for seg in self._segments:
                renamed.extend(seg.rename_deleted())
            new = Segment.create(self.directory, next_offset, self.config.index_interval_bytes,
                                 next_raft_index)
            self._segments = [new]
            self._bases = [next_offset]
            self._pending_fsync = []
            fsync_dir(self.directory)
            self._delete_files(renamed)
            self._epoch += 1
            self._log_end = self._flushed_offset = next_offset
            self._size = 0
            self._dir_dirty = False
        self.logger.info("%s: reset to offset %d, Raft index %d", self.directory, next_offset,
                         next_raft_index)

    def now_ms(self) -> int:
        """The log's clock (wall clock, or the one a test injected at open): its Raft log
        judges retention by the same time the log does."""
        return self._clock_ms()

    def retention_point(self, now_ms: int, *, max_raft_index: int | None = None) -> int:
        """The first Raft index `enforce_retention(now_ms, max_raft_index=...)` would keep
        (first_raft_index when it would delete nothing). No side effects."""
        with self._lock:
            doomed = self._doomed_locked(now_ms, max_raft_index)
            return doomed[-1].next_raft_index if doomed else self.first_raft_index

    def _doomed_locked(self, now: int, max_raft_index: int | None) -> list[Segment]:
        cfg = self.config
        doomed: list[Segment] = []
        if not cfg.deletes:
            return doomed  # cleanup.policy compact: only the compactor removes anything
        size = self._size
        for seg in self._segments[:-1]:
            expired = cfg.retention_ms >= 0 and (
                seg.is_empty or now - seg.max_timestamp_ms > cfg.retention_ms)
            oversize = cfg.retention_bytes >= 0 and size > cfg.retention_bytes
            if not (expired or oversize):
                break
            if max_raft_index is not None and seg.next_raft_index - 1 > max_raft_index:
                break
            doomed.append(seg)
            size -= seg.size
        return doomed

    def enforce_retention(self, now_ms: int | None = None, *,
                          max_raft_index: int | None = None,
                          start_meta: str | None = None) -> int:
        """Delete whole closed segments past retention_ms or while over retention_bytes.

        A segment's age is `now - its largest record timestamp`. Deletes from the oldest end
        only, never the active segment, and (for a Raft log) never a segment holding an entry
        above `max_raft_index` (the commit index: Raft must never forget uncommitted
        entries). The checkpoint moves the log start (offset, Raft index and the term before
        it) first; then the files are renamed to `.deleted`, the directory synced once, and
        the files unlinked. Returns how many segments went. Event-loop thread.
        """
        with self._checkpoint_lock, self._lock:
            self._check_open()
            now = self._clock_ms() if now_ms is None else now_ms
            doomed = self._doomed_locked(now, max_raft_index)
            if not doomed:
                return 0
            size = self._size - sum(s.size for s in doomed)
            if start_meta is not None:
                self._start_meta = start_meta
            last = doomed[-1]
            if last.next_raft_index > last.first_raft_index:
                self._start_raft_index, self._start_prev_term = (
                    last.next_raft_index, last.last_term)
            new_start = self._bases[len(doomed)]
            self._write_checkpoint(max(self._checkpoint_offset, new_start), clean=False,
                                   start_offset=new_start)
            renamed: list[Path] = []
            for seg in doomed:
                renamed.extend(seg.rename_deleted())
            n = len(doomed)
            del self._segments[:n]
            del self._bases[:n]
            self._size = size
            dead = {p for s in doomed for p in (s.index_path, s.timeindex_path)}
            self._pending_fsync = [p for p in self._pending_fsync if p not in dead]
        fsync_dir(self.directory)
        self._delete_files(renamed)
        self.logger.info("%s: retention deleted %d segment(s); log now starts at %d",
                         self.directory, n, self.log_start_offset)
        return n

    # ================================================================ compaction
    @property
    def compaction_enabled(self) -> bool:
        """The topic's cleanup.policy includes compact."""
        return self.config.compacts

    @contextlib.contextmanager
    def cleanable_segments(self, *, max_raft_index: int | None = None
                           ) -> Iterator[CleanableSegments]:
        """The prefix a compaction pass may rewrite: closed segments with nothing unflushed
        (a crash could still cut it) and, for a Raft log, no entry above `max_raft_index`
        (the commit index: a new leader could still truncate above it).

        The log's lock is held for the whole `with` body, so the pass can decide whether to
        run and duplicate the descriptors it will read before retention can close them; keep
        the body that short, appends and reads wait for it. StorageError if the log is closed.
        """
        with self._lock:
            self._check_open()
            segments: list[Segment] = []
            for seg in self._segments[:-1]:
                if seg.flushed_size < seg.size:
                    break
                if max_raft_index is not None and seg.next_raft_index - 1 > max_raft_index:
                    break
                segments.append(seg)
            end = segments[-1].next_offset if segments else self.log_start_offset
            yield CleanableSegments(segments, end, self._epoch, self._compaction)

    def replace_segment(self, old: Segment, new: Segment, epoch: int, cleaned: Path) -> None:
        """Swap closed segment `old` for its compacted rewrite `new`, whose file is `cleaned`
        (Kafka's replaceSegments): the rename and the list update happen under the lock, so
        a reader sees the old segment or the new one, never a mix.

        `new` must cover exactly `old`'s offsets and Raft indexes, be sealed and fsynced, and
        have `cleaned` in the same directory. The rename makes it durable only once the caller
        syncs the directory; `new`'s index files are the caller's to write. On return the log
        owns `new` and has closed `old`. Raises CompactionAborted, changing nothing, when the
        log moved on since `epoch` (closed, truncated or reset) or `old` is gone or active.
        """
        with self._lock:
            if self._closed or self._epoch != epoch:
                raise CompactionAborted("the log was closed, truncated or reset")
            try:
                i = next(j for j, s in enumerate(self._segments) if s is old)
            except StopIteration:
                raise CompactionAborted(f"segment {old.base_offset} was deleted") from None
            if i == len(self._segments) - 1:
                raise CompactionAborted(f"segment {old.base_offset} is active again")
            cleaned.replace(old.log_path)
            self._segments[i] = new
            self._size += new.size - old.size
            dead = {old.index_path, old.timeindex_path}
            self._pending_fsync = [p for p in self._pending_fsync if p not in dead]
            old.close()

    def compact(self, now_ms: int | None = None, *, max_raft_index: int | None = None,
                delete_retention_ms: int | None = None,
                should_stop: Callable[[], bool] | None = None,
                hook: Callable[[str, int], None] | None = None) -> CompactionStats:
        """One compaction pass (node/storage/compactor.py): keep the latest record per key in
        the closed, flushed segments, never any segment holding an entry above
        `max_raft_index`. Blocking (it reads and rewrites segment files): run it in a worker
        thread; appends and reads only wait for the swap's short critical sections.
        Runs whatever the cleanup policy says (the Compactor checks `compaction_enabled`)."""
        now = self._clock_ms() if now_ms is None else now_ms
        keep_ms = (self.config.delete_retention_ms if delete_retention_ms is None
                   else delete_retention_ms)
        return compact_log(self, now, delete_retention_ms=keep_ms,
                           max_raft_index=max_raft_index, hook=hook, should_stop=should_stop)

    # ================================================================ shutdown
    def close(self) -> None:
        """Flush, record a clean shutdown, and release the files. Idempotent.

        Event-loop thread. A flush still running in a worker thread finishes harmlessly (it
        syncs duplicated descriptors and claims nothing once it sees the log closed); the
        caller should still stop its flusher first so that flush's result is not lost.
        """
        if self._closed:
            return
        self.flush()
        with self._checkpoint_lock, self._lock:
            self._write_checkpoint(self._log_end, clean=True)
            self._closed = True
            for seg in self._segments:
                seg.close()

    def abandon(self) -> None:
        """Release the files without flushing or marking clean: what a crash leaves behind.

        For tests that simulate crashes, and for giving up after an I/O error.
        """
        with self._lock:
            self._closed = True
            for seg in self._segments:
                seg.close()

    def flushed_file_sizes(self) -> dict[str, int]:
        """Bytes of each file in the directory known to be durable (for crash simulations).

        Segment logs count up to their last fsync; index files not yet fsynced count as 0.
        """
        with self._lock:
            out: dict[str, int] = {}
            pending = set(self._pending_fsync)
            for seg in self._segments:
                out[seg.log_path.name] = seg.flushed_size
                for p in (seg.index_path, seg.timeindex_path):
                    if p.exists():
                        out[p.name] = 0 if p in pending else p.stat().st_size
            return out

    def describe(self) -> str:
        """One stable line for logs and test failures."""
        return (f"log[{self.log_start_offset},{self._log_end}) flushed={self._flushed_offset} "
                f"segments={len(self._segments)} bytes={self._size}")



__all__ = ["INDEX_SUFFIX", "LOG_SUFFIX", "TIMEINDEX_SUFFIX", "AppendInfo", "CleanableSegments",
           "LogConfig", "PartitionLog", "wall_clock_ms"]
