"""Log compaction: keep the latest record per key in the closed segments of a compact topic.

A pass (`compact_log`, reached as `PartitionLog.compact`) works on the cleanable prefix of a
partition log: the closed segments that are fully flushed (and, for a Raft log, hold nothing
above the commit index, which could still be truncated). The active segment is never touched.

1. Under the log's lock (`PartitionLog.cleanable_segments`), take the cleanable segments and
   a duplicate of each file descriptor (the duplicates keep the files readable even if
   retention deletes them meanwhile).
2. Outside the lock, build key -> offset of its latest record over that whole prefix.
3. Rewrite the segments oldest first, each into `<base>.log.cleaned`: every batch stays
   (its Raft index, term, base offset and offset span), only its records shrink; a record
   goes when a later record of the same key exists, or when it is a tombstone (empty value)
   whose timestamp is at least `delete_retention_ms` old. A batch that loses records becomes
   a compacted batch (rillet.batch.compact_records; format in records.proto). The new file is
   fsynced and read back in full (CRC, continuity) to build its indexes.
4. The swap, per segment: the old index files are unlinked and the directory synced; then,
   under the log's lock (`PartitionLog.replace_segment`: a rename and a list assignment,
   microseconds), the `.cleaned` file is renamed over `<base>.log` and the new Segment object
   replaces the old one; after the lock, the directory is synced and the new index files
   written and fsynced.

Crash safety: until the rename the old `.log` is intact and recovery deletes the `.cleaned`
leftover; the rename is atomic, and the new file was fsynced before it, so after a crash the
name holds either the whole old file or the whole new one. Missing index files are rebuilt
at recovery. Segments are swapped in offset order, so when a tombstone is dropped the older
values of its key are already gone from disk: a crash can never bring a superseded value
back as the latest.

Readers: every read of segment bytes happens under the log's lock, so a reader sees the old
segment or the new one, never a mix; the old file descriptor is closed inside the swap.

Offsets never change, so consumer positions, the indexes' offsets and the Raft log are
unaffected; a follower compacts its own log, and accepts compacted batches from its leader
like any others (the stamps are unchanged).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from rillet.api.v1 import records_pb2
from rillet.batch import (
    HEADER_SIZE,
    LENGTH_PREFIX_SIZE,
    BatchHeader,
    compact_records,
    parse_header,
    record_offsets,
    verify,
)
from rillet.node.storage.atomic import fsync_dir, fsync_path
from rillet.node.storage.errors import LogCorruptionError
from rillet.node.storage.segment import Segment

if TYPE_CHECKING:
    from rillet.node.storage.log import PartitionLog

log = logging.getLogger(__name__)

CLEANED_SUFFIX = ".cleaned"
_READ_CHUNK = 4 * 1024 * 1024
_WRITE_CHUNK = 1024 * 1024

# The steps of a segment swap, in order; tests inject a crash at each (the `hook` argument).
STEP_WRITTEN = "written"  # .cleaned written and fsynced
STEP_INDEXES_REMOVED = "indexes-removed"  # old index files unlinked, directory synced
STEP_RENAMED = "renamed"  # .cleaned renamed over .log (not yet synced)
STEP_DONE = "done"  # directory synced, new index files written
STEPS = (STEP_WRITTEN, STEP_INDEXES_REMOVED, STEP_RENAMED, STEP_DONE)


@dataclass
class CompactionStats:
    """What one pass did (for logs, the bench and tests)."""

    segments_checked: int = 0
    segments_rewritten: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    records_read: int = 0
    records_removed: int = 0
    tombstones_removed: int = 0
    seconds: float = 0.0
    skipped: str = ""
    """Why the pass did nothing, when it did nothing ("" otherwise)."""

    def add(self, other: CompactionStats) -> None:
        for name in ("segments_checked", "segments_rewritten", "bytes_read", "bytes_written",
                     "records_read", "records_removed", "tombstones_removed", "seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class CompactionProgress:
    """Per-log memory between passes, so an idle compacted partition costs nothing.

    Public because the PartitionLog keeps one (its lifetime is the log's) and hands it back
    with each view of its cleanable segments; only this module reads or writes the fields."""

    compacted_to: int = -1
    """Offset up to which the last pass cleaned (its cleanable end)."""
    next_expiry_ms: int | None = None
    """Earliest time a tombstone kept by the last pass may go (None: no tombstone kept)."""
    epoch: int = -1
    delete_retention_ms: int = -1


class CompactionAborted(Exception):
    """The log changed under the pass (truncated, reset, closed, segment deleted).

    Public because `PartitionLog.replace_segment` raises it and `compact_log` catches it: a
    pass that loses that race ends quietly and the next one starts over."""


def _iter_batches(fd: int, size: int) -> Iterator[tuple[int, memoryview]]:
    """(file position, bytes) of each batch in the first `size` bytes of a segment file."""
    pos = 0
    buf = b""
    buf_start = 0
    while pos < size:
        off = pos - buf_start
        if off + LENGTH_PREFIX_SIZE > len(buf):
            buf = os.pread(fd, min(_READ_CHUNK, size - pos), pos)
            buf_start, off = pos, 0
        n = int.from_bytes(buf[off + 8:off + 12], "little", signed=True) + LENGTH_PREFIX_SIZE
        if n < HEADER_SIZE or pos + n > size:
            raise LogCorruptionError(f"bad batch length {n} at position {pos}")
        if off + n > len(buf):
            buf = os.pread(fd, max(_READ_CHUNK, n), pos)
            buf_start, off = pos, 0
        yield pos, memoryview(buf)[off:off + n]
        pos += n


def _records_of(header: BatchHeader, batch: memoryview) -> records_pb2.Records:
    records = records_pb2.Records()
    records.ParseFromString(bytes(batch[HEADER_SIZE:header.size]))
    return records


def _cleaned_path(seg: Segment) -> Path:
    return seg.log_path.with_name(seg.log_path.name + CLEANED_SUFFIX)


def compact_log(plog: PartitionLog, now_ms: int, *, delete_retention_ms: int,
                max_raft_index: int | None = None,
                hook: Callable[[str, int], None] | None = None,
                should_stop: Callable[[], bool] | None = None) -> CompactionStats:
    """One compaction pass over `plog` (see the module doc). Blocking: run it in a worker
    thread. `hook(step, base_offset)` is called after each swap step (crash-injection tests);
    `should_stop()` is checked between segments (a stopping node ends the pass early)."""
    started = time.perf_counter()
    stats = CompactionStats()
    with plog.cleanable_segments(max_raft_index=max_raft_index) as cleanable:
        cands, end, epoch, progress = cleanable
        if not cands:
            stats.skipped = "no closed segment to clean"
            return stats
        if (progress.epoch == epoch and progress.compacted_to >= end
                and progress.delete_retention_ms == delete_retention_ms
                and (progress.next_expiry_ms is None or now_ms < progress.next_expiry_ms)):
            stats.skipped = "nothing new since the last pass"
            return stats
        # Under the log's lock: retention cannot close these files before they are duplicated.
        fds = [os.dup(seg.fd) for seg in cands]
    next_expiry: int | None = None
    try:
        # Pass 1: the latest offset of every key in the cleanable prefix.
        latest: dict[bytes, int] = {}
        for seg, fd in zip(cands, fds, strict=True):
            for _pos, view in _iter_batches(fd, seg.size):
                header = parse_header(view)
                if header.is_control:
                    continue
                records = _records_of(header, view)
                if records.keys:
                    # Keyless records land under b"", which pass 2 never looks up.
                    latest.update(zip(records.keys, record_offsets(header, records),
                                      strict=True))
        # Pass 2: rewrite and swap, oldest first.
        cutoff = now_ms - delete_retention_ms
        for seg, fd in zip(cands, fds, strict=True):
            if should_stop is not None and should_stop():
                stats.skipped = "stopped"
                break
            stats.segments_checked += 1
            out = _CleanedFile(_cleaned_path(seg), fd)
            try:
                for pos, view in _iter_batches(fd, seg.size):
                    next_expiry = _clean_batch(pos, view, latest, out, cutoff,
                                               delete_retention_ms, next_expiry, stats)
                if out.fd >= 0:
                    _swap(plog, seg, out, epoch, stats, hook)
            except Exception:
                out.discard()
                raise
            except BaseException:
                out.close()  # the process is going down: leave the file as a crash would
                raise
        else:
            progress.compacted_to = end
            progress.next_expiry_ms = next_expiry
            progress.epoch = epoch
            progress.delete_retention_ms = delete_retention_ms
    except CompactionAborted as exc:
        stats.skipped = f"aborted: {exc}"
        plog.logger.info("%s: compaction pass aborted: %s", plog.directory, exc)
    finally:
        for fd in fds:
            os.close(fd)
        stats.seconds = time.perf_counter() - started
    if stats.segments_rewritten:
        plog.logger.info("%s: compaction rewrote %d of %d segment(s): %d of %d records removed "
                         "(%d tombstones), %d -> %d bytes in %.3fs", plog.directory,
                         stats.segments_rewritten, stats.segments_checked, stats.records_removed,
                         stats.records_read, stats.tombstones_removed, stats.bytes_read,
                         stats.bytes_written, stats.seconds)
    return stats


def _clean_batch(pos: int, view: memoryview, latest: dict[bytes, int], out: _CleanedFile,
                 cutoff: int, delete_retention_ms: int, next_expiry: int | None,
                 stats: CompactionStats) -> int | None:
    """Decide which records of the batch at file position `pos` stay and pass the batch on
    to `out` (unchanged, or rewritten); returns the updated earliest tombstone expiry."""
    header = verify(view)
    stats.bytes_read += header.size
    if header.is_control:
        out.add(view)
        return next_expiry
    records = _records_of(header, view)
    offsets = record_offsets(header, records)
    n = len(offsets)
    keys = records.keys
    if not keys:
        keep = list(range(n))  # no keys: nothing can supersede them
    else:
        # A record stays when it has no key or is its key's latest (a comprehension: this
        # loop is most of the pass's CPU time).
        get = latest.get
        keep = [i for i, k, o in zip(range(n), keys, offsets, strict=True)
                if not k or get(k) == o]
        values = records.values
        gone: list[int] = []
        for i in keep:
            if keys[i] and not values[i]:  # the latest record of its key is a tombstone
                ts = header.first_timestamp_ms + records.timestamp_deltas_ms[i]
                if ts <= cutoff:
                    gone.append(i)
                    continue
                expiry = ts + delete_retention_ms
                next_expiry = expiry if next_expiry is None else min(next_expiry, expiry)
        if gone:
            stats.tombstones_removed += len(gone)
            dropped = set(gone)
            keep = [i for i in keep if i not in dropped]
    stats.records_read += n
    stats.records_removed += n - len(keep)
    if len(keep) == n:
        out.add(view)
    else:
        out.start(pos)
        out.add(compact_records(view, keep, records))
    return next_expiry


class _CleanedFile:
    """The rewrite of one segment into `<base>.log.cleaned`, created at the first batch that
    changes: the unchanged batches before it are copied from the old file then, so a segment
    with nothing to remove costs no write and memory stays at about one write chunk."""

    def __init__(self, path: Path, src_fd: int) -> None:
        self.path = path
        self.src_fd = src_fd
        self.fd = -1
        self.size = 0
        self._pending: list[bytes | memoryview] = []
        self._pending_size = 0

    def start(self, upto: int) -> None:
        """Open the file (once), holding a copy of the old file's bytes [0, upto)."""
        if self.fd >= 0:
            return
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        pos = 0
        while pos < upto:
            chunk = os.pread(self.src_fd, min(_READ_CHUNK, upto - pos), pos)
            if not chunk:
                raise LogCorruptionError(f"{self.path}: short read of the old segment at {pos}")
            self.add(chunk)
            pos += len(chunk)

    def add(self, data: bytes | memoryview) -> None:
        """Append one batch (ignored until `start`: the old file still holds it)."""
        if self.fd < 0:
            return
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size >= _WRITE_CHUNK:
            self._write()

    def _write(self) -> None:
        self.size += _write_all(self.fd, self._pending, self.size)
        self._pending, self._pending_size = [], 0

    def finish(self) -> None:
        """Write what is pending and fsync."""
        self._write()
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def discard(self) -> None:
        """Drop the file (the swap did not happen); idempotent."""
        if self.fd >= 0:
            self.close()
            self.path.unlink(missing_ok=True)


def _swap(plog: PartitionLog, old: Segment, out: _CleanedFile, epoch: int,
          stats: CompactionStats, hook: Callable[[str, int], None] | None) -> None:
    """Replace segment `old` by the rewrite in `out` (see the module doc, steps 3 and 4).
    On an exception before the rename, the caller discards `out`."""
    directory = plog.directory
    out.finish()
    new = Segment(directory, old.base_offset, out.fd, out.size,
                  plog.config.index_interval_bytes, old.first_raft_index)
    cut = new.recover()  # CRC and continuity of what we wrote; builds the indexes
    if (cut or new.next_offset != old.next_offset
            or new.next_raft_index != old.next_raft_index or new.last_term != old.last_term):
        raise LogCorruptionError(
            f"{out.path}: the rewritten segment does not match the original (offsets "
            f"{new.next_offset}/{old.next_offset}, Raft {new.next_raft_index}/"
            f"{old.next_raft_index})")
    new.seal()
    new.flushed_size = new.size
    new.created_ms = None
    if hook is not None:
        hook(STEP_WRITTEN, old.base_offset)
    old.index_path.unlink(missing_ok=True)
    old.timeindex_path.unlink(missing_ok=True)
    fsync_dir(directory)
    if hook is not None:
        hook(STEP_INDEXES_REMOVED, old.base_offset)
    out.fd = -1  # the new Segment owns the descriptor from here on, swapped in or not
    try:
        plog.replace_segment(old, new, epoch, out.path)
    except CompactionAborted:  # nothing changed: the rewrite goes
        new.close()
        out.path.unlink(missing_ok=True)
        raise
    if hook is not None:
        hook(STEP_RENAMED, old.base_offset)
    fsync_dir(directory)
    for p in new.write_index_files():
        fsync_path(p)
    fsync_dir(directory)
    if hook is not None:
        hook(STEP_DONE, old.base_offset)
    stats.segments_rewritten += 1
    stats.bytes_written += new.size


def _write_all(fd: int, parts: list[bytes | memoryview], pos: int) -> int:
    total = sum(len(p) for p in parts)
    written = os.pwritev(fd, parts, pos) if parts else 0
    if written != total:
        rest = b"".join(parts)[written:]
        while rest:
            n = os.pwrite(fd, rest, pos + written)
            written += n
            rest = rest[n:]
    return total



# ==================================================================== the background compactor
class Compactable(Protocol):
    """A partition log the Compactor can clean: PartitionLog or PartitionRaftLog."""

    @property
    def compaction_enabled(self) -> bool: ...

    def compact(self, now_ms: int | None = None, *,
                should_stop: Callable[[], bool] | None = None) -> CompactionStats: ...


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class Compactor:
    """Walks the partitions every `interval_s` and runs a compaction pass, in a worker thread,
    on each whose topic has cleanup.policy compact (or compact,delete).

    `logs()` is called at every round and yields (name, log) for the partitions this node
    holds; logs whose `compaction_enabled` is False are skipped. One pass at a time, one
    partition at a time: compaction is background work and the machine's cores are the
    producers'. A failing pass is logged and retried next round.
    """

    def __init__(self, logs: Callable[[], Iterable[tuple[str, Compactable]]],
                 interval_s: float, *, clock_ms: Callable[[], int] = _wall_clock_ms) -> None:
        self._logs = logs
        self.interval_s = interval_s
        self._clock_ms = clock_ms
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self.rounds = 0
        """Completed rounds (every partition visited once)."""
        self.totals = CompactionStats()

    def start(self) -> None:
        """Start the background loop (on the running event loop)."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="compactor")

    def trigger(self) -> None:
        """Run a round now instead of at the end of the interval."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop after the segment being rewritten (a pass in a thread cannot be cancelled;
        it checks the stop flag between segments). Idempotent."""
        self._stopping = True
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            await task

    async def _loop(self) -> None:
        while not self._stopping:
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval_s)
            except TimeoutError:
                pass
            self._wake.clear()
            if self._stopping:
                break
            await self.run_once()

    async def run_once(self) -> CompactionStats:
        """One round over every compacted partition; returns the summed stats."""
        total = CompactionStats()
        for name, lg in list(self._logs()):
            if self._stopping:
                break
            try:
                if not lg.compaction_enabled:
                    continue
                stats = await asyncio.to_thread(self._pass, lg)
            except Exception:
                log.exception("partition %s: compaction failed", name)
                continue
            total.add(stats)
        self.rounds += 1
        self.totals.add(total)
        return total

    def _pass(self, lg: Compactable) -> CompactionStats:
        return lg.compact(self._clock_ms(), should_stop=lambda: self._stopping)


__all__ = ["CLEANED_SUFFIX", "STEPS", "Compactable", "CompactionAborted", "CompactionProgress",
           "CompactionStats", "Compactor", "compact_log"]
