"""The simulated disk of one node: a write-ahead log whose tail is durable only after fsync.

Every write (snapshot, entries, hard state, compaction) is a record appended to the node's
log of records. `durable` counts the records that an fsync has covered; the rest is pending:
written to the page cache, readable, but lost on a crash. The core reads a `MemoryStorage`
that holds durable + pending (what a real process reads back from its own files).

Faults injected here are only the ones Raft must survive (a crash loses unsynced writes; the
last write may be torn part way). Nothing here corrupts durable data: an fsynced record is
never damaged, the same promise a real disk with working fsync gives.

Within one Ready the records go snapshot, entries, hard state (the order of etcd's WAL), so a
torn tail that keeps a hard state keeps the entries its commit index may point at. A Ready
that installs a snapshot is written as ONE record when `atomic_snapshot` is set (the default):
the core refuses to start from a durable snapshot newer than the durable hard state's commit
index, so a driver must write the two together (see the README's findings).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

from rillet.cluster.raft.storage import MemoryStorage
from rillet.cluster.raft.types import ConfState, Entry, HardState, Snapshot

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Record:
    """One write: entries, a hard state, a snapshot (possibly with the entries and hard state
    of its Ready, written atomically), or a compaction."""

    entries: tuple[Entry, ...] = ()
    hard_state: HardState | None = None
    snapshot: Snapshot | None = None
    compact_index: int = 0
    compact_conf: ConfState | None = None
    compact_data: bytes = b""

    def describe(self) -> str:
        if self.entries:
            return "entries " + ", ".join(e.describe() for e in self.entries)
        if self.hard_state is not None:
            return "hard " + self.hard_state.describe()
        if self.snapshot is not None:
            return self.snapshot.describe()
        return f"compact {self.compact_index}"


@dataclass
class CrashReport:
    """What a crash did to the pending tail."""

    pending_records: int
    kept_records: int
    kept_entries_of_torn: int

    def describe(self) -> str:
        return (f"pending={self.pending_records} kept={self.kept_records} "
                f"torn_kept_entries={self.kept_entries_of_torn}")


class SimDisk:
    """A node's disk. Survives the node's crashes (that is the point of it)."""

    def __init__(self, node_id: int, conf: ConfState, *, atomic_snapshot: bool = True) -> None:
        self.node_id = node_id
        self.atomic_snapshot = atomic_snapshot
        self._bootstrap = conf
        self._records: list[Record] = []
        self.durable = 0  # records[:durable] are fsynced
        self.storage = MemoryStorage(conf)
        self.fsyncs = 0

    # -- writing (the node's step 1 of a Ready) ---------------------------------------------

    def write(self, *, snapshot: Snapshot | None, entries: list[Entry],
              hard_state: HardState | None) -> bool:
        """Write a Ready's persistent parts in WAL order; True if anything was written."""
        wrote = False
        if snapshot is not None and not snapshot.is_empty() and self.atomic_snapshot:
            self._add(Record(snapshot=snapshot, entries=tuple(entries), hard_state=hard_state))
            return True
        if snapshot is not None and not snapshot.is_empty():
            self._add(Record(snapshot=snapshot))
            wrote = True
        if entries:
            self._add(Record(entries=tuple(entries)))
            wrote = True
        if hard_state is not None:
            self._add(Record(hard_state=hard_state))
            wrote = True
        return wrote

    def compact(self, index: int, conf: ConfState, data: bytes = b"") -> None:
        """Move the log start (retention). Written like any other record."""
        self._add(Record(compact_index=index, compact_conf=conf, compact_data=data))

    def _add(self, record: Record) -> None:
        self._records.append(record)
        _apply(self.storage, record)

    # -- durability -------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        return len(self._records) - self.durable

    def fsync(self) -> None:
        """Everything written so far is now durable."""
        self.durable = len(self._records)
        self.fsyncs += 1

    def durable_hard_state(self) -> HardState:
        """The last hard state that an fsync covered."""
        for record in reversed(self._records[: self.durable]):
            if record.hard_state is not None:
                return record.hard_state
        return HardState()

    def crash(self, rng: random.Random, torn_probability: float) -> CrashReport:
        """Lose the pending tail, except (sometimes) a torn prefix of it that made it out.

        The kept prefix is cut at a record boundary or inside an entries record (some of
        its entries made it, the rest did not). Durable records are never touched.
        """
        pending = self._records[self.durable:]
        kept: list[Record] = []
        torn_entries = 0
        if pending and rng.random() < torn_probability:
            cut = rng.randrange(len(pending))  # records fully kept; pending[cut] is torn
            kept = pending[:cut]
            torn = pending[cut]
            splittable = torn.snapshot is None and torn.hard_state is None
            torn_entries = rng.randrange(len(torn.entries)) if torn.entries and splittable \
                else 0
            if torn_entries:
                kept.append(Record(entries=torn.entries[:torn_entries]))
        report = CrashReport(len(pending), len(kept), torn_entries)
        self._records = self._records[: self.durable] + kept
        self.durable = len(self._records)
        self.storage = self._replay()
        return report

    def _replay(self) -> MemoryStorage:
        storage = MemoryStorage(self._bootstrap)
        for record in self._records:
            _apply(storage, record)
        return storage

    # -- reading ----------------------------------------------------------------------------

    def entry(self, index: int) -> Entry | None:
        """The written entry at `index`, or None when compacted or past the end."""
        storage = self.storage
        if index < storage.first_index() or index > storage.last_index():
            return None
        return storage.entries(index, index + 1)[0]

    def describe(self) -> str:
        return f"disk n{self.node_id} records={len(self._records)} durable={self.durable} " \
               f"{self.storage.describe()}"


def _apply(storage: MemoryStorage, record: Record) -> None:
    if record.snapshot is not None:
        storage.apply_snapshot(record.snapshot)
    if record.entries:
        storage.append(list(record.entries))
    if record.hard_state is not None:
        storage.set_hard_state(record.hard_state)
    if record.compact_index:
        storage.compact(record.compact_index, record.compact_conf, record.compact_data)
