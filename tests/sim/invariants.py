"""Safety invariants of Raft, checked after every simulated event.

The checks are incremental so they can run after every event without making a seed slow:
each one looks only at what the event changed (one node's role, term and commit index; the
entries a node just wrote; the entry a node just applied).

What is checked (Raft paper section 5.2, 5.3, 5.4, figure 3):
- Election safety: at most one leader per term.
- Log matching: an (index, term) pair names one entry, with one predecessor term, in every log
  of every node, ever. By induction that makes logs sharing (index, term) identical up to it.
- Leader completeness: an entry known to be committed while some node was at term T is in the
  log of every leader of a term greater than T.
- Monotonicity: term and commit index never go down on a live node (per incarnation); the
  durable term never goes down across a restart.
- State machine safety: every node applies one global committed sequence, in order, without
  gaps; an entry once known committed (and so possibly acknowledged) never changes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from rillet.cluster.raft.types import Entry, EntryKind, Role

log = logging.getLogger(__name__)


class InvariantViolation(AssertionError):
    """A safety property of Raft does not hold. Always a bug (in the core or the simulator)."""


class NodeView(Protocol):
    """What the checker reads of one simulated node."""

    @property
    def id(self) -> int: ...
    @property
    def incarnation(self) -> int: ...
    @property
    def up(self) -> bool: ...
    @property
    def term(self) -> int: ...
    @property
    def role(self) -> Role: ...
    @property
    def commit_index(self) -> int: ...

    def log_entry(self, index: int) -> Entry | None:
        """The entry at `index` in the node's written log (durable + pending); None if the
        index is past the end or was compacted away."""
        ...

    def last_log_index(self) -> int:
        """The last index of the node's written log (its core may already hold more)."""
        ...


@dataclass(frozen=True)
class CommittedEntry:
    entry: Entry
    commit_term: int  # the lowest term of any node seen with this index committed


class Invariants:
    """The checker's memory of everything that was ever observed in one run."""

    def __init__(self) -> None:
        self.leader_of_term: dict[int, int] = {}
        # (index, term) -> (the entry, the term of the entry before it)
        self.entries: dict[tuple[int, int], tuple[Entry, int]] = {}
        self.committed: dict[int, CommittedEntry] = {}
        self.leaders: dict[int, int] = {}  # node -> term it leads, once its log is up to date
        self._term: dict[tuple[int, int], int] = {}  # (node, incarnation) -> last term seen
        self._commit: dict[tuple[int, int], int] = {}  # (node, incarnation) -> last commit
        # (node, incarnation) -> last index recorded as committed (see on_committed)
        self._recorded: dict[tuple[int, int], int] = {}
        self._durable_term: dict[int, int] = {}
        self._applied: dict[tuple[int, int], int] = {}  # (node, incarnation) -> last applied
        self.checks = 0

    # -- per event --------------------------------------------------------------------------

    def observe(self, node: NodeView) -> None:
        """Check the node's role, term and commit index after an event that touched it."""
        self.checks += 1
        if not node.up:
            self.leaders.pop(node.id, None)
            return
        key = (node.id, node.incarnation)
        term = node.term
        last = self._term.get(key, 0)
        if term < last:
            self._fail(f"n{node.id} term went back from {last} to {term} (same incarnation)")
        self._term[key] = term
        if node.role == Role.LEADER:
            holder = self.leader_of_term.setdefault(term, node.id)
            if holder != node.id:
                self._fail(f"two leaders in term {term}: n{holder} and n{node.id}")
        elif self.leaders.get(node.id) is not None:
            del self.leaders[node.id]
        commit = node.commit_index
        last_commit = self._commit.get(key, 0)
        if commit < last_commit:
            self._fail(f"n{node.id} commit index went back from {last_commit} to {commit}")
        if commit > last_commit:
            self._commit[key] = commit

    def on_committed(self, node: NodeView, commit: int) -> None:
        """A node wrote a Ready whose hard state says `commit`. Right after that write the
        node's written log is exactly its core's log, so entries up to `commit` are read from
        the disk view here and nowhere else (between Readies the disk may still hold a suffix
        that the core already replaced)."""
        key = (node.id, node.incarnation)
        recorded = self._recorded.get(key, 0)
        if commit > recorded:
            self._recorded[key] = self._record_committed(node, recorded + 1, commit)

    def on_restart(self, node_id: int, durable_term: int) -> None:
        """A node came back: the term it recovered must be at least every term it fsynced."""
        last = self._durable_term.get(node_id, 0)
        if durable_term < last:
            self._fail(f"n{node_id} restarted at term {durable_term} below its durable "
                       f"term {last}")

    def on_durable(self, node_id: int, term: int) -> None:
        """A hard state with `term` was fsynced."""
        if term > self._durable_term.get(node_id, 0):
            self._durable_term[node_id] = term

    def on_write(self, node: NodeView, entries: Iterable[Entry]) -> None:
        """A node wrote entries to its log (pending, not yet durable): log matching."""
        commit = node.commit_index
        for entry in entries:
            # Below its own commit index a node may only write the committed entry. (Above
            # it, a node outside the committing majority may still hold or even receive a
            # stale entry at a committed index: it never claimed that index committed.)
            known = self.committed.get(entry.index) if entry.index <= commit else None
            if known is not None and known.entry != entry:
                self._fail(f"n{node.id} wrote {entry.describe()} at or below its commit "
                           f"index {commit}, over the committed {known.entry.describe()}")
            if entry.index <= 1:
                prev_term = 0
            else:
                before = node.log_entry(entry.index - 1)
                prev_term = before.term if before is not None else -1
            seen = self.entries.get((entry.index, entry.term))
            if seen is None:
                self.entries[(entry.index, entry.term)] = (entry, prev_term)
                continue
            old, old_prev = seen
            if old != entry:
                self._fail(f"log matching: n{node.id} wrote {entry.describe()} but "
                           f"{old.describe()} exists elsewhere")
            if -1 not in (prev_term, old_prev) and prev_term != old_prev:
                self._fail(f"log matching: n{node.id} has term {prev_term} before "
                           f"{entry.describe()}, another log has term {old_prev}")
            if old_prev == -1 and prev_term != -1:
                self.entries[(entry.index, entry.term)] = (old, prev_term)

    def on_leader_log_current(self, node: NodeView) -> None:
        """The node leads and its written log now holds everything its core has: from here
        on it must hold every entry committed in an earlier term (leader completeness)."""
        if node.role != Role.LEADER:
            return
        term = node.term
        if self.leaders.get(node.id) == term:
            return
        self.leaders[node.id] = term
        for index in sorted(self.committed):
            self._check_leader_has(node, term, index, self.committed[index])

    def on_apply(self, node_id: int, incarnation: int, entry: Entry) -> None:
        """A node applied `entry`: it must continue its own sequence and match the global one
        (each incarnation starts where `on_snapshot_restore` put it)."""
        key = (node_id, incarnation)
        last = self._applied.get(key, 0)
        if entry.index != last + 1:
            self._fail(f"n{node_id} applied index {entry.index} after {last} (gap or repeat)")
        self._applied[key] = entry.index
        known = self.committed.get(entry.index)
        if known is None:
            self._fail(f"n{node_id} applied {entry.describe()} that no node has committed")
        elif known.entry != entry:
            self._fail(f"n{node_id} applied {entry.describe()} but {known.entry.describe()} "
                       f"was committed at that index")

    def on_snapshot_restore(self, node_id: int, incarnation: int, index: int,
                            values: list[bytes] | None = None) -> None:
        """A node's state machine was replaced by a snapshot up to `index`; `values` (the
        snapshot's applied values) must be exactly the committed values up to there."""
        self._applied[(node_id, incarnation)] = index
        if values is None or index == 0:
            return
        expected: list[bytes] = []
        for i in range(1, index + 1):
            known = self.committed.get(i)
            if known is None:
                self._fail(f"n{node_id} restored a snapshot to {index} but index {i} was "
                           f"never seen committed")
                return
            if known.entry.kind == EntryKind.NORMAL and known.entry.data:
                expected.append(known.entry.data)
        if values != expected:
            self._fail(f"n{node_id} restored a snapshot to {index} whose state differs from "
                       f"the committed values ({len(values)} vs {len(expected)} values)")

    # -- helpers -----------------------------------------------------------------------------

    def _record_committed(self, node: NodeView, lo: int, hi: int) -> int:
        """Record entries lo..hi as committed; returns the last index recorded."""
        last_written = node.last_log_index()
        for index in range(lo, hi + 1):
            if index > last_written:
                return index - 1  # not written yet: record it after the Ready that holds it
            entry = node.log_entry(index)
            if entry is None:
                continue  # compacted: it was recorded when it was committed earlier
            known = self.committed.get(index)
            if known is None:
                record = CommittedEntry(entry, node.term)
                self.committed[index] = record
            elif known.entry != entry:
                self._fail(f"committed entry changed at index {index}: "
                           f"{known.entry.describe()} then n{node.id} committed "
                           f"{entry.describe()}")
            elif node.term < known.commit_term:
                record = CommittedEntry(entry, node.term)
                self.committed[index] = record
            else:
                continue
            for leader_id in sorted(self.leaders):
                leader_term = self.leaders[leader_id]
                if leader_term > record.commit_term and self._view is not None:
                    self._check_leader_has(self._view(leader_id), leader_term, index, record)
        return hi

    _view: Callable[[int], NodeView] | None = None

    def bind(self, view: Callable[[int], NodeView]) -> None:
        """Give the checker a way to look up other nodes (for leader completeness)."""
        self._view = view

    def _check_leader_has(self, leader: NodeView, term: int, index: int,
                          record: CommittedEntry) -> None:
        if record.commit_term >= term:
            return
        entry = leader.log_entry(index)
        if entry is None:
            if index <= leader.last_log_index():
                return  # compacted away, so it was committed and applied there
            self._fail(f"leader completeness: n{leader.id} leads term {term} without index "
                       f"{index} ({record.entry.describe()}, committed by term "
                       f"{record.commit_term})")
        elif entry != record.entry:
            self._fail(f"leader completeness: n{leader.id} leads term {term} with "
                       f"{entry.describe()} where {record.entry.describe()} was committed by "
                       f"term {record.commit_term}")

    def _fail(self, message: str) -> None:
        log.error("invariant violated: %s", message)
        raise InvariantViolation(message)
