"""The Raft log as the core sees it: stable storage plus an unstable tail not yet persisted.

::

    storage (persisted, read-only to us)      unstable (ours, handed out in Ready.entries)
    [first_index ............ last]            [offset ............... last_index()]
                          ^ may overlap: entries from ``offset`` on replace storage's

``unstable.offset`` is the index of the first unstable entry. Entries below it are read from
storage; entries from it on come from the unstable tail, even when storage still holds older
entries at those indexes (a new leader overwrote an uncommitted suffix; the storage drops them
when it persists the tail). Invariant: ``unstable.offset <= storage.last_index() + 1``.

A pending snapshot (received from the leader, not yet installed by the caller) sits in
``unstable.snapshot``; while it is there, the log starts right after it.

``committed`` is the highest index known committed; ``applied`` the highest index the caller
has applied (learned through ``advance``). Invariant: ``applied <= committed <= last_index()``.
"""

from __future__ import annotations

import logging

from .errors import CompactedError, UnavailableError
from .storage import Storage, limit_size
from .types import Entry, Snapshot


class Unstable:
    """Entries and maybe a snapshot that the caller has not persisted yet."""

    def __init__(self, offset: int) -> None:
        self.snapshot: Snapshot | None = None
        self.entries: list[Entry] = []
        self.offset = offset

    def maybe_first_index(self) -> int | None:
        """The first log index implied by a pending snapshot, if one is pending."""
        if self.snapshot is not None:
            return self.snapshot.meta.index + 1
        return None

    def maybe_last_index(self) -> int | None:
        """The last index held here (entries, else the pending snapshot), if any."""
        if self.entries:
            return self.offset + len(self.entries) - 1
        if self.snapshot is not None:
            return self.snapshot.meta.index
        return None

    def maybe_term(self, index: int) -> int | None:
        """The term at ``index`` if this tail (or the pending snapshot) knows it."""
        if index < self.offset:
            if self.snapshot is not None and self.snapshot.meta.index == index:
                return self.snapshot.meta.term
            return None
        last = self.maybe_last_index()
        if last is None or index > last:
            return None
        if not self.entries:
            return None
        return self.entries[index - self.offset].term

    def stable_to(self, index: int, term: int) -> None:
        """The caller persisted entries up to ``index`` (whose term was ``term``). Drop them,
        unless the tail changed since (a newer term replaced them): then keep everything, and
        the next Ready hands the new entries out again."""
        t = self.maybe_term(index)
        if t is None or t != term or index < self.offset:
            return
        del self.entries[:index + 1 - self.offset]
        self.offset = index + 1

    def stable_snap_to(self, index: int) -> None:
        """The caller installed the pending snapshot at ``index``."""
        if self.snapshot is not None and self.snapshot.meta.index == index:
            self.snapshot = None

    def restore(self, snapshot: Snapshot) -> None:
        """Replace everything with a snapshot received from the leader."""
        self.offset = snapshot.meta.index + 1
        self.entries = []
        self.snapshot = snapshot

    def truncate_and_append(self, entries: list[Entry]) -> None:
        """Append ``entries``, dropping any held entries at or after ``entries[0].index``."""
        after = entries[0].index
        if after == self.offset + len(self.entries):
            self.entries.extend(entries)  # the common case: a plain append
        elif after <= self.offset:
            # Replace the whole tail; storage drops its own suffix from ``after`` on when the
            # caller persists these (the Ready contract).
            self.offset = after
            self.entries = list(entries)
        else:
            del self.entries[after - self.offset:]
            self.entries.extend(entries)


class RaftLog:
    """Stable storage plus the unstable tail, with commit and apply positions."""

    def __init__(self, storage: Storage, logger: logging.Logger, max_bytes_per_read: int) -> None:
        self.storage = storage
        self.logger = logger
        self.max_bytes_per_read = max_bytes_per_read
        first = storage.first_index()
        last = storage.last_index()
        self.unstable = Unstable(last + 1)
        # Everything up to the log start is committed and applied (it is in the snapshot).
        self.committed = first - 1
        self.applied = first - 1

    # -- positions ----------------------------------------------------------------------------

    def first_index(self) -> int:
        """The first index we still have an entry for."""
        first = self.unstable.maybe_first_index()
        return first if first is not None else self.storage.first_index()

    def last_index(self) -> int:
        """The last index in the log (unstable tail first, then storage)."""
        last = self.unstable.maybe_last_index()
        return last if last is not None else self.storage.last_index()

    def last_term(self) -> int:
        """The term of the last entry (0 for the empty log)."""
        return self.term(self.last_index())

    def persisted_last_index(self) -> int:
        """The last index known to be on the caller's disk (and not about to be replaced)."""
        if self.unstable.snapshot is not None:
            return 0  # nothing we hold is durable in the form we hold it
        return self.unstable.offset - 1

    # -- reading ------------------------------------------------------------------------------

    def term(self, index: int) -> int:
        """The term at ``index``; raises CompactedError below the log start and
        UnavailableError past the last index."""
        dummy = self.first_index() - 1
        if index < dummy:
            raise CompactedError(f"term of {index}: log starts after {dummy}")
        if index > self.last_index():
            raise UnavailableError(f"term of {index}: last index is {self.last_index()}")
        t = self.unstable.maybe_term(index)
        if t is not None:
            return t
        return self.storage.term(index)

    def term_or_zero(self, index: int) -> int:
        """The term at ``index``, or 0 when we do not have it (compacted or missing)."""
        try:
            return self.term(index)
        except (CompactedError, UnavailableError):
            return 0

    def match_term(self, index: int, term: int) -> bool:
        """Whether our entry at ``index`` has ``term`` (log matching check)."""
        try:
            return self.term(index) == term
        except (CompactedError, UnavailableError):
            return False

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries in ``[lo, hi)``, at most ``max_bytes`` (at least one). Raises CompactedError
        when ``lo`` is below the first index."""
        if lo >= hi:
            return []
        first = self.first_index()
        if lo < first:
            raise CompactedError(f"entries from {lo}: log starts at {first}")
        # Invariant: callers never ask past the end.
        assert hi <= self.last_index() + 1, f"entries up to {hi - 1} past {self.last_index()}"
        out: list[Entry] = []
        offset = self.unstable.offset
        if lo < offset:
            out = self.storage.entries(lo, min(hi, offset), max_bytes)
            if len(out) < min(hi, offset) - lo:
                return out  # hit the byte limit inside storage
        if hi > offset:
            start = max(lo, offset)
            out = out + self.unstable.entries[start - offset:hi - offset]
        return limit_size(out, max_bytes)

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Whether a log ending at (``last_index``, ``last_term``) is at least as up to date as
        ours (Raft §5.4.1): a later last term wins; equal terms compare length."""
        our_term = self.last_term()
        return last_term > our_term or (last_term == our_term and last_index >= self.last_index())

    def find_conflict(self, entries: tuple[Entry, ...]) -> int:
        """The index of the first of ``entries`` whose term differs from ours (or that we do
        not have); 0 when all match."""
        for entry in entries:
            if not self.match_term(entry.index, entry.term):
                return entry.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The last index ``<= index`` whose term is ``<= term``, and that term; the basis of
        fast backtracking. Stops at the log start (whose term is kept)."""
        # Bounded: index only decreases, and stops at the log start.
        first = self.first_index()
        while index >= first:
            t = self.term_or_zero(index)
            if t <= term:
                return index, t
            index -= 1
        return index, self.term_or_zero(index)

    def next_committed_entries(self, max_bytes: int | None) -> list[Entry]:
        """Committed entries not yet applied, from ``applied + 1`` (none while a snapshot is
        pending: the caller installs it first)."""
        if self.unstable.snapshot is not None:
            return []
        lo = max(self.applied + 1, self.first_index())
        hi = self.committed + 1
        if lo >= hi:
            return []
        return self.entries(lo, hi, max_bytes)

    # -- changing -----------------------------------------------------------------------------

    def append(self, entries: list[Entry]) -> int:
        """Append to the unstable tail (truncating a conflicting suffix); the new last index."""
        if entries:
            # Invariant: never rewrite committed entries (Raft: committed is permanent).
            assert entries[0].index > self.committed, (
                f"overwriting committed {entries[0].index} <= {self.committed}")
            self.unstable.truncate_and_append(entries)
        return self.last_index()

    def maybe_append(self, index: int, log_term: int, committed: int,
                     entries: tuple[Entry, ...]) -> int | None:
        """Follower side of APPEND: if our log matches at (``index``, ``log_term``), keep the
        matching prefix of ``entries``, append the rest, move commit, and return the last
        index now known to match the leader. None when the log does not match there."""
        if not self.match_term(index, log_term):
            return None
        last_new = index + len(entries)
        conflict = self.find_conflict(entries)
        if conflict:
            # Invariant: a leader never disagrees with a committed entry (Leader Completeness).
            assert conflict > self.committed, (
                f"conflict at {conflict} inside committed prefix {self.committed}")
            self.append(list(entries[conflict - index - 1:]))
        self.commit_to(min(committed, last_new))
        return last_new

    def commit_to(self, index: int) -> None:
        """Move the commit index forward (never back)."""
        if index > self.committed:
            # Invariant: we can only commit what we have.
            assert index <= self.last_index(), (
                f"commit {index} beyond last index {self.last_index()}")
            self.committed = index

    def applied_to(self, index: int) -> None:
        """The caller applied entries up to ``index``."""
        if index:
            assert self.applied <= index <= self.committed, (
                f"applied {index} outside [{self.applied}, {self.committed}]")
            self.applied = index

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the log with a snapshot from the leader; it is committed by definition."""
        self.logger.info("log restore: %s", snapshot.describe())
        self.unstable.restore(snapshot)
        self.committed = snapshot.meta.index

    def describe(self) -> str:
        """``log first=F last=L committed=C applied=A unstable=O+N``."""
        return (f"log first={self.first_index()} last={self.last_index()} "
                f"committed={self.committed} applied={self.applied} "
                f"unstable={self.unstable.offset}+{len(self.unstable.entries)}")
