"""The read side of stable storage that the Raft core needs, and an in-memory reference.

The core owns this protocol (it is the caller); the partition log of a broker and the
simulator's disk implement it. The core only READS storage. Writes happen outside the core,
by the caller acting on a ``Ready`` (append ``entries``, install ``snapshot``, save
``hard_state``), and the core learns of them through ``RaftCore.advance()``.

Ranges and what is kept
-----------------------
A storage holds a contiguous run of entries ``first_index() .. last_index()`` (inclusive),
preceded by a log start (the "snapshot" point) at ``first_index() - 1`` whose index and TERM are
always kept, even though its entry is gone: the core needs that term to check log matching for
the first entry after it. When the log is empty, ``last_index() == first_index() - 1``.
A fresh storage starts at the log start (0, term 0), so ``first_index() == 1`` and
``last_index() == 0``.

- ``entries(lo, hi, max_bytes)`` returns the entries with ``lo <= index < hi`` (half-open).
  ``lo < first_index()`` raises ``CompactedError``; ``hi > last_index() + 1`` raises
  ``UnavailableError``. ``max_bytes`` bounds the total data bytes returned, but at least one
  entry is returned when ``lo < hi`` even if it alone exceeds the bound, so a large entry can
  always make progress. ``None`` means no bound.
- ``term(i)`` is valid for ``first_index() - 1 <= i <= last_index()``; below it raises
  ``CompactedError``, above it ``UnavailableError``.
- ``snapshot()`` describes the log start: its ``meta.index == first_index() - 1`` (or later,
  if the storage has a newer one ready), its term, the membership in effect at that index,
  and optional state bytes. It may raise ``SnapshotTemporarilyUnavailableError``.
- ``initial_state()`` is read once when a core starts: the last persisted ``HardState`` and
  the ``ConfState`` in effect at the caller's applied index (``Config.applied``), or, when the
  caller does not persist an applied index, at the log start (the core then re-applies the
  committed log, membership changes included). The core starts with commit index
  ``max(hard_state.commit, first_index() - 1)``: the log start is committed by definition
  (only committed entries are compacted or sent as a snapshot), so the hard state may lag it,
  as it does after a crash between writing a snapshot and writing the hard state after it.
  A hard state commit past ``last_index()`` is refused (``ValueError``): entries the node
  acknowledged are gone.

Ownership: returned lists are fresh and belong to the caller; ``Entry`` values are immutable,
so sharing them is safe. Implementations must not call back into the core.
"""

from __future__ import annotations

import itertools
from typing import Protocol

from .errors import CompactedError, SnapshotOutOfDateError, UnavailableError
from .types import ConfState, Entry, HardState, Ready, Snapshot, SnapshotMeta


class Storage(Protocol):
    """What the core reads from stable storage; see the module docstring for the ranges."""

    def initial_state(self) -> tuple[HardState, ConfState]:
        """The persisted hard state and the membership to start with."""
        ...

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries in ``[lo, hi)``, at most ``max_bytes`` of data but at least one."""
        ...

    def term(self, index: int) -> int:
        """The term of entry ``index``, for ``first_index() - 1 <= index <= last_index()``."""
        ...

    def first_index(self) -> int:
        """The index of the first entry still held (log start + 1)."""
        ...

    def last_index(self) -> int:
        """The index of the last entry held (``first_index() - 1`` when empty)."""
        ...

    def snapshot(self) -> Snapshot:
        """The most recent snapshot, at the log start or later."""
        ...


class LogWriter(Protocol):
    """The write side of a Raft log: what step 1 of the Ready contract writes to."""

    def append(self, entries: list[Entry]) -> None: ...
    def set_hard_state(self, hard_state: HardState) -> None: ...
    def apply_snapshot(self, snapshot: Snapshot) -> None: ...


def persist_ready(log: LogWriter, rd: Ready) -> None:
    """Step 1 of the Ready contract, in its order: snapshot, then entries, then hard state.

    Only writes; making them durable (an fsync when ``rd.must_sync``) is the caller's, so that
    one sync can cover many groups' writes. Every driver, test network and benchmark calls this
    instead of restating the order.
    """
    if rd.snapshot is not None:
        log.apply_snapshot(rd.snapshot)
    if rd.entries:
        log.append(rd.entries)
    if rd.hard_state is not None:
        log.set_hard_state(rd.hard_state)


def limit_size(entries: list[Entry], max_bytes: int | None) -> list[Entry]:
    """The longest prefix of ``entries`` within ``max_bytes`` of data, but never empty when
    ``entries`` is not: one oversized entry must still be able to travel alone."""
    if max_bytes is None or not entries:
        return entries
    total = 0
    for n, entry in enumerate(entries):
        total += entry.size()
        if total > max_bytes and n > 0:
            return entries[:n]
    return entries


class MemoryStorage:
    """The reference ``Storage``: everything in a Python list, for tests and the simulator.

    ``self._ents[0]`` is a dummy entry standing for the log start: its index and term are the
    snapshot's, its data is empty. Entry ``i`` lives at ``self._ents[i - self._ents[0].index]``.
    Invariant: ``self._ents`` is never empty and its indexes are consecutive.

    Besides the protocol it offers the write side the caller uses when acting on a Ready
    (``append``, ``set_hard_state``, ``apply_snapshot``) and when moving the log start
    (``compact``), plus ``set_conf_state`` for callers that persist membership.
    """

    def __init__(self, conf: ConfState | None = None) -> None:
        conf = conf if conf is not None else ConfState()
        self._hard_state = HardState()
        self._applied_conf: ConfState | None = None
        """Set by ``set_conf_state``: the membership at the caller's applied index."""
        self._snapshot = Snapshot(SnapshotMeta(0, 0, conf))
        self._ents: list[Entry] = [Entry(0, 0)]

    # -- the Storage protocol -------------------------------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        """The saved hard state, and the membership saved with ``set_conf_state`` or else the
        one at the log start (from the constructor, ``compact`` or ``apply_snapshot``)."""
        conf = self._applied_conf if self._applied_conf is not None else self._snapshot.meta.conf
        return self._hard_state, conf

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries in ``[lo, hi)``; see the module docstring for the errors."""
        offset = self._ents[0].index
        if lo <= offset:
            raise CompactedError(f"entries from {lo}: compacted up to {offset}")
        if hi > self.last_index() + 1:
            raise UnavailableError(f"entries up to {hi - 1}: last index is {self.last_index()}")
        assert lo <= hi, f"invalid range [{lo}, {hi})"
        return limit_size(self._ents[lo - offset:hi - offset], max_bytes)

    def term(self, index: int) -> int:
        """The term at ``index`` (the log start's term is kept)."""
        offset = self._ents[0].index
        if index < offset:
            raise CompactedError(f"term of {index}: compacted up to {offset}")
        if index - offset >= len(self._ents):
            raise UnavailableError(f"term of {index}: last index is {self.last_index()}")
        return self._ents[index - offset].term

    def first_index(self) -> int:
        """The log start + 1."""
        return self._ents[0].index + 1

    def last_index(self) -> int:
        """The last index held."""
        return self._ents[0].index + len(self._ents) - 1

    def snapshot(self) -> Snapshot:
        """The snapshot at the log start."""
        return self._snapshot

    # -- the write side ---------------------------------------------------------------------

    def set_hard_state(self, hard_state: HardState) -> None:
        """Save the hard state (the caller's step 1 of a Ready)."""
        self._hard_state = hard_state

    def set_conf_state(self, conf: ConfState) -> None:
        """Save the membership at the caller's applied index, for a caller that also persists
        that index (``Config.applied``); ``initial_state`` returns it on restart. Callers that
        re-apply the log from its start never call this: they get the log start's membership
        and the core re-applies the changes after it."""
        self._applied_conf = conf

    def append(self, entries: list[Entry]) -> None:
        """Append ``entries``, first dropping any held entries at or after ``entries[0].index``
        (a conflicting, uncommitted suffix that a new leader replaced). Entries at or below the
        log start are ignored: they are already covered by the snapshot."""
        if not entries:
            return
        # Invariant: the batch itself is consecutive.
        assert all(b.index == a.index + 1 for a, b in itertools.pairwise(entries))
        first = self.first_index()
        if entries[-1].index < first:
            return
        if entries[0].index < first:
            entries = entries[first - entries[0].index:]
        pos = entries[0].index - self._ents[0].index
        # Invariant: no gap between what is held and what is appended.
        assert pos <= len(self._ents), (
            f"gap: appending {entries[0].index} after last index {self.last_index()}")
        del self._ents[pos:]
        self._ents.extend(entries)

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Replace everything with ``snapshot``: the log restarts after ``snapshot.meta.index``.
        Raises ``SnapshotOutOfDateError`` for a snapshot older than the one held."""
        meta = snapshot.meta
        if meta.index <= self._snapshot.meta.index:
            raise SnapshotOutOfDateError(
                f"snapshot at {meta.index} is not newer than {self._snapshot.meta.index}")
        self._snapshot = snapshot
        self._applied_conf = None  # the applied index is now the snapshot's
        self._ents = [Entry(meta.index, meta.term)]

    def compact(self, index: int, conf: ConfState | None = None, data: bytes = b"") -> None:
        """Move the log start to ``index``: drop entries ``<= index`` but keep the term of
        ``index`` for log matching, and record the snapshot a lagging follower will be sent.

        ``conf`` must be the membership in effect at ``index``: it becomes the log start's
        membership, which a restart re-applying from the log start begins with. The default,
        ``initial_state()``'s membership, is right only when no change was applied between the
        log start and ``index``. Only applied entries may be compacted. Raises
        ``CompactedError`` if ``index`` is not past the current log start.
        """
        offset = self._ents[0].index
        if index <= offset:
            raise CompactedError(f"compact to {index}: already compacted to {offset}")
        # Invariant: only entries that exist can be compacted.
        assert index <= self.last_index(), f"compact {index} beyond last {self.last_index()}"
        term = self._ents[index - offset].term
        conf = conf if conf is not None else self.initial_state()[1]
        self._snapshot = Snapshot(SnapshotMeta(index, term, conf), data)
        self._ents = [Entry(index, term), *self._ents[index - offset + 1:]]

    def describe(self) -> str:
        """``storage first=F last=L hard=(..) conf=(..)``."""
        return (f"storage first={self.first_index()} last={self.last_index()} "
                f"hard=({self._hard_state.describe()}) conf=({self.initial_state()[1].describe()})")
