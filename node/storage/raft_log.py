"""PartitionRaftLog: the partition log IS the partition's Raft log (one write path).

Every Raft entry of a partition's group is exactly one stored batch (decision 0401):

- a NORMAL entry with data is a producer batch; the batch is stored stamped with
  base_offset = the log's next record offset, leader_term = the entry's term and
  raft_index = the entry's index, and read back as Entry(data=the whole stored batch). A
  follower therefore receives the leader's stamped bytes and appends them unchanged
  (`PartitionLog.append_stamped` checks that they continue its log);
- an entry the core makes itself (the leader's empty no-op, CONF_CHANGE) is stored as a
  control batch (rillet.batch.encode_control): no records, no offsets, the raw entry data as
  its body, the kind in the attributes, so the Entry round-trips exactly.

What is where on disk:
- the batches: the PartitionLog's segments (durable after `sync`);
- the log start (Raft index of the first entry held, term of the entry before it, record offset
  and the membership in effect there): the PartitionLog checkpoint, written atomically
  whenever retention or a snapshot moves it;
- the hard state (term, vote, commit) and the membership saved with `set_conf_state`:
  `raft-state`, replaced with atomic.write_atomic (CRC-checked) only when it changed, during
  `sync`.

Staging and durability (the driver's DurableLog contract): `append` writes to the page cache
and `set_hard_state` only records the value; both are visible to reads at once and durable
after the next `PartitionRaftLogSyncer.sync` that includes this log. Truncating a conflicting
suffix and `apply_snapshot` are durable on return.

Threading: everything runs on the event loop except `sync_now`, which the syncer runs in a
worker thread; PartitionLog.flush is safe there, and the hard state is copied under a lock.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rillet.batch import CONF_CHANGE_FLAG, HEADER_SIZE, crc32c, encode_control, parse_header, stamp
from rillet.cluster.raft import (
    CompactedError,
    ConfState,
    Entry,
    HardState,
    Snapshot,
    SnapshotMeta,
    UnavailableError,
)
from rillet.cluster.raft.codec import decode_conf_change
from rillet.cluster.raft.errors import SnapshotOutOfDateError
from rillet.cluster.raft.storage import limit_size
from rillet.cluster.raft.types import EntryKind
from rillet.node.storage.atomic import write_atomic
from rillet.node.storage.compactor import CompactionStats
from rillet.node.storage.errors import LogCorruptionError, StorageError
from rillet.node.storage.hardstate import HardStateJournal
from rillet.node.storage.log import LogConfig, PartitionLog, wall_clock_ms

log = logging.getLogger(__name__)

STATE_NAME = "raft-state"
_STATE_MAGIC = b"RRS1"
_CRC = struct.Struct("<I")
# Public: node/replica.py decodes the same snapshot data when it installs a snapshot.
NEXT_OFFSET = struct.Struct("<q")
"""Snapshot.data of a partition: the record offset the log restarts at (8 bytes)."""
COMMIT_SAVE_INTERVAL_S = 1.0


def _conf_to_json(conf: ConfState) -> dict[str, list[int]]:
    return {"voters": sorted(conf.voters), "learners": sorted(conf.learners)}


def _conf_from_json(doc: dict[str, Any]) -> ConfState:
    return ConfState(frozenset(int(v) for v in doc["voters"]),
                     frozenset(int(v) for v in doc["learners"]))


def entry_of(batch: bytes | memoryview) -> Entry:
    """The Raft entry a stored batch is (see the module doc)."""
    header = parse_header(batch)
    if header.is_control:
        kind = (EntryKind.CONF_CHANGE if header.attributes & CONF_CHANGE_FLAG
                else EntryKind.NORMAL)
        return Entry(header.raft_index, header.leader_term, kind,
                     bytes(batch[HEADER_SIZE:header.size]))
    return Entry(header.raft_index, header.leader_term, EntryKind.NORMAL, bytes(batch))


class PartitionRaftLog:
    """A partition's Raft log on its PartitionLog; satisfies cluster.driver.DurableLog.

    Errors follow cluster.raft.storage: CompactedError below the log start, UnavailableError
    past the last index. A NORMAL entry whose data is not a record batch raises
    InvalidBatchError from `append` (a partition group carries record batches only).
    """

    def __init__(self, plog: PartitionLog, initial_conf: ConfState) -> None:
        # Use PartitionRaftLog.open().
        self.plog = plog
        self.directory = plog.directory
        self._lock = threading.Lock()
        self._hard_state = HardState()
        self._applied_conf: ConfState | None = None
        self._initial_conf = initial_conf
        self._state_dirty = False
        self._commit_dirty = False
        self._state_written_at = 0.0
        self._synced_hard_state = HardState()
        self._journal: HardStateJournal | None = None
        self._group = 0

    @classmethod
    def open(cls, directory: Path, config: LogConfig | None = None, *,
             conf: ConfState | None = None,
             clock_ms: Callable[[], int] = wall_clock_ms,
             journal: HardStateJournal | None = None, group: int = 0,
             log_fields: Mapping[str, object] | None = None) -> PartitionRaftLog:
        """Open (recovering) the partition log in `directory` and its Raft state. `conf` is the
        group's initial membership, used only while the log has never moved its start and no
        state file records one. With a `journal` (one per node), term, vote and commit of
        group `group` live there instead of in the state file (see node/storage/hardstate.py),
        and the syncer given the same journal makes them durable with one fsync per round.
        `log_fields` (topic, partition) go on every line the log writes."""
        plog = PartitionLog.open(Path(directory), config or LogConfig(), clock_ms=clock_ms,
                                 log_fields=log_fields)
        rlog = cls(plog, conf if conf is not None else ConfState())
        rlog._load_state()
        if journal is not None:
            rlog._journal, rlog._group = journal, group
            hs = journal.get(group)
            if hs is not None:
                rlog._hard_state = rlog._synced_hard_state = hs
        rlog._cut_terms_past_hard_state()
        return rlog

    def _cut_terms_past_hard_state(self) -> None:
        """Drop entries whose term is above the durable hard state's. A node never holds an
        entry of a term it has not recorded (its term is persisted no later than the entries of
        that term), so such a term is damage: the leader term sits outside the batch CRC. Left
        in place, a damaged high term would make this node's log look the most up to date and
        win it elections it must lose. What is cut was never acknowledged by this node, or is
        fetched again from the leader (``Config.repair_lost_tail``)."""
        limit = self._hard_state.term
        if limit == 0 or self.last_index() < self.first_index():
            return
        if self.plog.last_term <= limit:
            return
        cut = self.last_index()
        # Terms never go back (segment recovery checks that), so the damaged ones are a suffix.
        while cut > self.first_index() and self.term(cut - 1) > limit:
            cut -= 1
        self.plog.logger.warning(
            "%s: Raft entries from %d have terms above the recorded term %d (last %d): damaged "
            "leader terms; dropping them", self.directory, cut, limit, self.plog.last_term)
        self.plog.truncate_to_raft_index(cut)

    # -- the state file ------------------------------------------------------------------------

    def _load_state(self) -> None:
        path = self.directory / STATE_NAME
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return
        if (len(raw) < 8 or raw[:4] != _STATE_MAGIC
                or _CRC.unpack_from(raw, 4)[0] != crc32c(raw[8:])):
            # write_atomic never leaves a torn file: this is real damage, and guessing a term
            # or a vote could make this node vote twice.
            raise LogCorruptionError(f"{path}: Raft state file fails its magic or CRC check")
        doc = json.loads(raw[8:])
        hs = HardState(int(doc["term"]), int(doc["vote"]), int(doc["commit"]))
        self._hard_state = self._synced_hard_state = hs
        self._initial_conf = _conf_from_json(doc["initial_conf"])
        if doc.get("applied_conf") is not None:
            self._applied_conf = _conf_from_json(doc["applied_conf"])

    def _state_bytes(self) -> bytes:
        hs = self._hard_state
        doc = {"term": hs.term, "vote": hs.vote, "commit": hs.commit,
               "initial_conf": _conf_to_json(self._initial_conf),
               "applied_conf": (None if self._applied_conf is None
                                else _conf_to_json(self._applied_conf))}
        body = json.dumps(doc, sort_keys=True).encode()
        return _STATE_MAGIC + _CRC.pack(crc32c(body)) + body

    # -- the Storage protocol (the core's read side) -----------------------------------------

    def _start_conf(self) -> ConfState:
        meta = self.plog.start_meta
        return _conf_from_json(json.loads(meta)) if meta else self._initial_conf

    def initial_state(self) -> tuple[HardState, ConfState]:
        """The hard state as last set, and the membership saved with `set_conf_state`, else
        the one at the log start (the core then re-applies the committed log after it)."""
        conf = self._applied_conf if self._applied_conf is not None else self._start_conf()
        return self._hard_state, conf

    def first_index(self) -> int:
        return self.plog.first_raft_index

    def last_index(self) -> int:
        return self.plog.next_raft_index - 1

    def term(self, index: int) -> int:
        first, last = self.first_index(), self.last_index()
        if index < first - 1:
            raise CompactedError(f"term of {index}: compacted up to {first - 1}")
        if index > last:
            raise UnavailableError(f"term of {index}: last index is {last}")
        if index == first - 1:
            return self.plog.start_prev_term
        if index == last:
            return self.plog.last_term
        return parse_header(self.plog.read_raft(index, index + 1, 0)[0]).leader_term

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        first = self.first_index()
        if lo < first:
            raise CompactedError(f"entries from {lo}: compacted up to {first - 1}")
        if hi > self.last_index() + 1:
            raise UnavailableError(f"entries up to {hi - 1}: last index is {self.last_index()}")
        assert lo <= hi, f"invalid range [{lo}, {hi})"
        if lo == hi:
            return []
        batches = self.plog.read_raft(lo, hi, max_bytes)
        return limit_size([entry_of(b) for b in batches], max_bytes)

    def snapshot(self) -> Snapshot:
        """The log start: index first-1, its term, the membership there, and (as data) the
        record offset the log starts at, for a follower to restart its log at."""
        meta = SnapshotMeta(self.first_index() - 1, self.plog.start_prev_term,
                            self._start_conf())
        return Snapshot(meta, NEXT_OFFSET.pack(self.plog.log_start_offset))

    # -- the write side (staged; see the module doc) ----------------------------------------

    def append(self, entries: list[Entry]) -> None:
        """Append `entries`, first dropping any held entries from `entries[0].index` on
        (durably, at once). Entries at or below the log start are ignored."""
        if not entries:
            return
        first = self.first_index()
        if entries[-1].index < first:
            return
        if entries[0].index < first:
            entries = entries[first - entries[0].index:]
        if entries[0].index <= self.last_index():
            self.plog.logger.info("%s: dropping Raft entries from %d (conflicting suffix)",
                                  self.directory, entries[0].index)
            self.plog.truncate_to_raft_index(entries[0].index)
        # Invariant: no gap between what is held and what is appended.
        assert entries[0].index == self.plog.next_raft_index, (
            f"gap: appending {entries[0].index} after {self.last_index()}")
        for e in entries:
            self.plog.append_stamped(self._batch_for(e))

    def _batch_for(self, e: Entry) -> bytes | bytearray:
        if e.kind == EntryKind.CONF_CHANGE or not e.data:
            buf = bytearray(encode_control(e.data, conf_change=e.kind == EntryKind.CONF_CHANGE))
        else:
            header = parse_header(e.data)
            if (header.raft_index == e.index and header.leader_term == e.term
                    and header.base_offset == self.plog.log_end_offset):
                return e.data  # the leader's stored bytes, already stamped as ours would be
            buf = bytearray(e.data)
        stamp(buf, self.plog.log_end_offset, e.term, e.index)
        return buf

    def set_hard_state(self, hard_state: HardState) -> None:
        """Record term, vote and commit. A new term or vote is written by the next sync; a
        commit index alone at most every COMMIT_SAVE_INTERVAL_S (and at close): Raft re-learns
        it from the leader, and rewriting the state file (three fsyncs) on every round would
        cost more than the data's own fsync."""
        if self._journal is not None:
            if hard_state != self._hard_state:
                self._hard_state = hard_state
                self._journal.stage(self._group, hard_state)
            return
        with self._lock:
            old = self._hard_state
            if hard_state != old:
                self._hard_state = hard_state
                if hard_state.term != old.term or hard_state.vote != old.vote:
                    self._state_dirty = True
                else:
                    self._commit_dirty = True

    def set_conf_state(self, conf: ConfState) -> None:
        """Save the membership at the caller's applied index (for callers that persist that
        index as Config.applied); written with the hard state by the next sync."""
        with self._lock:
            self._applied_conf = conf
            self._state_dirty = True

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Discard the log and restart it after `snapshot.meta.index`, at the record offset
        carried in `snapshot.data`. Durable on return. SnapshotOutOfDateError if not newer."""
        meta = snapshot.meta
        if meta.index < self.first_index():
            raise SnapshotOutOfDateError(
                f"snapshot at {meta.index} is not newer than the log start "
                f"{self.first_index() - 1}")
        if len(snapshot.data) != NEXT_OFFSET.size:
            raise StorageError(f"partition snapshot data must be {NEXT_OFFSET.size} bytes "
                               f"(the next record offset), got {len(snapshot.data)}")
        (next_offset,) = NEXT_OFFSET.unpack(snapshot.data)
        self.plog.reset(next_offset, meta.index + 1, meta.term,
                        start_meta=json.dumps(_conf_to_json(meta.conf)))
        with self._lock:
            if self._applied_conf is not None:
                self._applied_conf = None  # the applied index is now the snapshot's
                self._state_dirty = True

    def enforce_retention(self, now_ms: int | None = None) -> int:
        """Apply the topic's retention, but never past the commit index: returns how many
        segments went. The membership at the new log start is computed from the membership
        changes in the part that goes and saved with the start, atomically."""
        now = self.plog.now_ms() if now_ms is None else now_ms
        commit = self._hard_state.commit
        first = self.first_index()
        new_first = self.plog.retention_point(now, max_raft_index=commit)
        if new_first <= first:
            return 0
        conf = self._start_conf()
        lo = first
        while lo < new_first:
            for e in self.entries(lo, new_first, 4 << 20):
                if e.kind == EntryKind.CONF_CHANGE:
                    conf = conf.changed_by(decode_conf_change(e.data)) or conf
                lo = e.index + 1
        return self.plog.enforce_retention(now, max_raft_index=new_first - 1,
                                           start_meta=json.dumps(_conf_to_json(conf)))

    @property
    def compaction_enabled(self) -> bool:
        """The topic's cleanup.policy includes compact."""
        return self.plog.compaction_enabled

    def compact(self, now_ms: int | None = None, *,
                should_stop: Callable[[], bool] | None = None,
                hook: Callable[[str, int], None] | None = None) -> CompactionStats:
        """One compaction pass over the committed part of the log: nothing above the commit
        index (which a new leader could still truncate) is rewritten. Every batch keeps its
        Raft index and term; only records go. Blocking: run it in a worker thread."""
        return self.plog.compact(now_ms, max_raft_index=self._hard_state.commit,
                                 should_stop=should_stop, hook=hook)

    # -- durability -----------------------------------------------------------------------------

    def sync_now(self) -> None:
        """fsync the appended batches, then write the hard state if it changed. Blocking:
        PartitionRaftLogSyncer runs it in a worker thread."""
        self._sync(force_commit=False)

    def _sync(self, *, force_commit: bool) -> None:
        self.plog.flush()
        now = time.monotonic()
        with self._lock:
            commit_due = self._commit_dirty and (
                force_commit or now - self._state_written_at >= COMMIT_SAVE_INTERVAL_S)
            if not self._state_dirty and not commit_due:
                return
            data, hs = self._state_bytes(), self._hard_state
            self._state_dirty = self._commit_dirty = False
        try:
            write_atomic(self.directory / STATE_NAME, data)
        except BaseException:
            with self._lock:
                self._state_dirty = True
            raise
        self._state_written_at = now
        self._synced_hard_state = hs

    def close(self) -> None:
        """Sync everything (the commit index too) and close the partition log."""
        self._sync(force_commit=True)
        self.plog.close()

    def abandon(self) -> None:
        """Release the files as a crash would: nothing more is flushed or written."""
        self.plog.abandon()

    def describe(self) -> str:
        return (f"raftlog[{self.first_index()},{self.last_index()}] "
                f"hard=({self._hard_state.describe()}) {self.plog.describe()}")


class PartitionRaftLogSyncer:
    """cluster.driver.Syncer for PartitionRaftLogs: one worker-thread call per round fsyncs
    every dirty log and writes the hard states that changed (group commit: one fsync round
    for every group of the node, however many). Raises if any write
    failed: the driver then stops, since a node that cannot persist must not vote or ack.

    With a `journal`, the hard states of every group are appended to it after the logs were
    flushed, with one fsync for all of them."""

    def __init__(self, journal: HardStateJournal | None = None) -> None:
        self.calls = 0
        self.journal = journal
        # Called with each round's duration in seconds (the node's fsync histogram).
        self.observe: Callable[[float], None] | None = None

    async def sync(self, logs: Sequence[object]) -> None:
        targets: list[PartitionRaftLog] = []
        for lg in logs:
            if not isinstance(lg, PartitionRaftLog):
                raise TypeError(f"PartitionRaftLogSyncer cannot sync {type(lg).__name__}")
            targets.append(lg)
        self.calls += 1
        started = time.perf_counter()
        await asyncio.to_thread(_sync_all, targets, self.journal)
        if self.observe is not None:
            self.observe(time.perf_counter() - started)


def _sync_all(logs: list[PartitionRaftLog], journal: HardStateJournal | None = None) -> None:
    errors: list[BaseException] = []
    for lg in logs:
        try:
            lg.sync_now()
        except Exception as exc:  # keep syncing the others; report every failure
            lg.plog.logger.error("%s: sync failed: %s", lg.directory, exc)
            errors.append(exc)
    if errors:
        raise StorageError(f"{len(errors)} of {len(logs)} partition logs failed to sync: "
                           f"{errors[0]!r}") from errors[0]
    if journal is not None:
        journal.sync()  # after the entries: a commit index on disk never outruns them


__all__ = ["NEXT_OFFSET", "STATE_NAME", "PartitionRaftLog", "PartitionRaftLogSyncer",
           "entry_of"]
