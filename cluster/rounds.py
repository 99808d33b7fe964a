"""One Raft round: the code that carries out Readies, shared by the driver and the simulator.

A round takes one Ready from each of many groups and carries them out together, in the order
``types.Ready`` documents, split in two halves around the one thing that is not synchronous,
the shared fsync:

- ``Round.start()``: send every Ready's ``messages`` (those the core says may leave before the
  write), persist every Ready (staged writes), apply every Ready's snapshot and committed
  entries and settle the proposals they decide; return the logs that need a sync.
- the caller makes those logs durable: ``await Syncer.sync(logs)`` in the asyncio driver (one
  fsync round for every group: group commit), a scheduled fsync event in the simulator.
- ``Round.finish()``: send every Ready's ``persisted_messages``, then ``advance`` every core
  and fail the proposals of terms this node no longer leads.

Both callers run exactly this code, so every simulator seed checks the order production runs,
early sends and early applies included. Nothing here awaits, reads a clock or touches a
socket: sending goes through the ``send`` callable the caller hands in, writing through the
group's ``DurableLog``, applying through its ``StateMachine``.

Proposals
---------
A proposal waits in its group's ``pending`` queue (ordered by term, then index) until the
entry at its index is applied here: then its future resolves with what the state machine's
``apply`` returned for that entry when the entry has the proposal's term, and fails with
``EntryOverwrittenError`` when another leader's entry committed there. A core that stops
leading the proposal's term fails it with ``LeadershipLostError`` (outcome unknown). The
futures are anything with ``done``/``set_result``/``set_exception``: asyncio futures in the
driver, plain ``concurrent.futures.Future`` in the simulator.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from rillet.cluster.raft import Entry, HardState, Message, RaftCore, Ready, Role, Snapshot, Storage
from rillet.cluster.raft.storage import persist_ready

# -- what a round works on ------------------------------------------------------------------------


class DurableLog(Storage, Protocol):
    """A group's Raft log as the round writes it: the core's read side (``Storage``) plus the
    write side of a Ready. Writes are STAGED: they must be visible to the reads at once
    (the core reads back what it handed out), but are only promised durable after the next
    sync that includes this log. ``MemoryStorage`` satisfies it."""

    def append(self, entries: list[Entry]) -> None:
        """Append, first dropping any held suffix from ``entries[0].index`` on."""
        ...

    def set_hard_state(self, hard_state: HardState) -> None:
        """Save term, vote and commit index."""
        ...

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Replace the log with ``snapshot``: it restarts after ``snapshot.meta.index``."""
        ...


class StateMachine(Protocol):
    """What a group's committed entries are applied to (a partition, the metadata state)."""

    def apply(self, entries: list[Entry]) -> Sequence[Any]:
        """Apply committed entries, in log order; return one result per entry, in order (a
        proposal's future resolves with its entry's result). Empty NORMAL entries are leader
        no-ops; CONF_CHANGE entries are membership steps the core itself takes into account."""
        ...

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the state with ``snapshot`` (called before entries that follow it)."""
        ...


class Settleable(Protocol):
    """A proposal's future, as the round settles it."""

    def done(self) -> bool: ...
    def set_result(self, result: Any, /) -> None: ...
    def set_exception(self, exception: BaseException, /) -> None: ...


class DriverError(Exception):
    """Base of the errors of running Raft groups (the driver adds its own beside these two
    that the round raises). ``outcome_unknown``: the entry may or may not end up committed;
    ``retriable``: trying again (perhaps on another node) may work."""

    retriable = True
    outcome_unknown = True


class LeadershipLostError(DriverError):
    """This node stopped leading the group before the proposed entry committed."""


class EntryOverwrittenError(DriverError):
    """Another leader's entry committed at the proposed index: the proposal is not in the log."""

    outcome_unknown = False


class Proposal:
    """One proposal waiting for its entry to be applied here."""

    __slots__ = ("future", "index", "term")

    def __init__(self, index: int, term: int, future: Settleable) -> None:
        self.index = index
        self.term = term
        self.future = future


class RaftGroup:
    """This node's member of one Raft group: its core, log, state machine and the proposals
    waiting. ``removed`` is set by the owner when the group stops running here; a round in
    flight then drops its Ready."""

    __slots__ = ("core", "id", "log", "machine", "pending", "removed")

    def __init__(self, group_id: int, core: RaftCore, log: DurableLog,
                 machine: StateMachine) -> None:
        self.id = group_id
        self.core = core
        self.log = log
        self.machine = machine
        self.removed = False
        # Ordered by (term, index): proposals get increasing indexes within a term, and a
        # proposal of a new term first fails every one of older terms (``fail_deposed``).
        self.pending: collections.deque[Proposal] = collections.deque()

    def fail_pending(self, error_type: type[DriverError], why: str) -> None:
        """Fail every waiting proposal (the group or the node stops)."""
        while self.pending:
            p = self.pending.popleft()
            if not p.future.done():
                p.future.set_exception(error_type(f"group {self.id} entry {p.index}: {why}"))

    def fail_deposed(self) -> None:
        """Fail the proposals of terms this node no longer leads (all of them if it is no
        longer the leader). They are at the head of the queue: it is ordered by term."""
        core = self.core
        leading = core.role == Role.LEADER
        pending = self.pending
        while pending and (not leading or pending[0].term != core.term):
            p = pending.popleft()
            if not p.future.done():
                p.future.set_exception(LeadershipLostError(
                    f"group {self.id} entry {p.index}: node {core.id} no longer leads "
                    f"term {p.term} (now {core.role.name} of term {core.term}, "
                    f"leader {core.leader})"))


#: Outgoing messages of a round, per peer: (group id, message) in the order handed out.
Outbox = dict[int, list[tuple[int, Message]]]


# -- the round ----------------------------------------------------------------------------------


class Round:
    """One round over the Readies in ``work`` (one per group); ``send`` gets an ``Outbox``
    at most twice: the messages that may leave at once, then those that waited for the sync.

    Call ``start()``, make the returned logs durable, then ``finish()``. Test-side subclasses
    plant bugs by overriding one step (``tests/sim/planted.py``); production runs this class.
    """

    def __init__(self, work: list[tuple[RaftGroup, Ready]],
                 send: Callable[[Outbox], None]) -> None:
        self.work = work
        self._send = send
        # Set by finish() when a core's membership changed (the caller refreshes its peers).
        self.membership_changed = False

    def start(self) -> list[DurableLog]:
        """Send early, persist, apply; returns the logs that must be synced before
        ``finish()`` (none when no Ready ``must_sync``)."""
        self.send_early()
        to_sync = self.persist()
        self.apply()
        return to_sync

    def finish(self) -> None:
        """Send what waited for the sync, then advance every core."""
        self.send_persisted()
        self.advance()

    # -- the steps, in order ------------------------------------------------------------------

    def send_early(self) -> None:
        """Step 1: the messages that promise nothing about this node's disk."""
        self.send_messages([(group, rd.messages) for group, rd in self.work])

    def persist(self) -> list[DurableLog]:
        """Step 2: stage every Ready's writes; the logs whose writes must be synced."""
        to_sync: list[DurableLog] = []
        for group, rd in self.work:
            persist_ready(group.log, rd)
            if rd.must_sync:
                to_sync.append(group.log)
        return to_sync

    def apply(self) -> None:
        """Step 3: snapshots and committed entries, and the proposals they decide. Before the
        sync: committed entries are on a majority's disks already, and staged here."""
        for group, rd in self.work:
            if rd.snapshot is not None:
                group.machine.restore(rd.snapshot)
                settle_snapshot(group, rd.snapshot)
            if rd.committed_entries:
                results = group.machine.apply(rd.committed_entries)
                settle(group, rd.committed_entries, results)

    def send_persisted(self) -> None:
        """Step 5: votes, acknowledgements and the rest, now that the writes are durable."""
        self.send_messages([(group, rd.persisted_messages) for group, rd in self.work
                           if not group.removed])

    def advance(self) -> None:
        """Step 6: hand every Ready back; fail the proposals of terms no longer led."""
        for group, rd in self.work:
            if group.removed:
                continue
            core = group.core
            conf = core.conf_state
            core.advance(rd)
            if core.conf_state is not conf or rd.snapshot is not None:
                self.membership_changed = True
            if group.pending:
                group.fail_deposed()

    def send_messages(self, lists: list[tuple[RaftGroup, list[Message]]]) -> None:
        """Coalesce per peer and hand to `send`: the one way a step sends (subclasses that
        plant a bug send through it too)."""
        out: Outbox = {}
        for group, messages in lists:
            gid = group.id
            for m in messages:
                batch = out.get(m.to)
                if batch is None:
                    batch = out[m.to] = []
                batch.append((gid, m))
        if out:
            self._send(out)


def settle(group: RaftGroup, entries: list[Entry], results: Sequence[Any]) -> None:
    """Resolve the proposals that ``entries`` (just applied, with ``results``) decide."""
    if len(results) != len(entries):
        raise AssertionError(f"group {group.id}: the state machine returned {len(results)} "
                             f"results for {len(entries)} entries")
    pending = group.pending
    last = entries[-1].index
    first = entries[0].index
    while pending and pending[0].index <= last:
        p = pending.popleft()
        if p.future.done():
            continue  # the proposer gave up (cancelled)
        if p.index < first:
            # Applied before, without us seeing it (cannot happen without a snapshot).
            p.future.set_exception(LeadershipLostError(
                f"group {group.id} entry {p.index}: applied out of our sight"))
            continue
        entry = entries[p.index - first]
        if entry.term == p.term:
            p.future.set_result(results[p.index - first])
        else:
            p.future.set_exception(EntryOverwrittenError(
                f"group {group.id} entry {p.index}: committed with term {entry.term}, "
                f"proposed in term {p.term}"))


def settle_snapshot(group: RaftGroup, snapshot: Snapshot) -> None:
    """Fail the proposals a snapshot replaced: their outcome is unknown here."""
    pending = group.pending
    while pending and pending[0].index <= snapshot.meta.index:
        p = pending.popleft()
        if not p.future.done():
            p.future.set_exception(LeadershipLostError(
                f"group {group.id} entry {p.index}: replaced by a snapshot at "
                f"{snapshot.meta.index}"))


__all__ = [
    "DriverError", "DurableLog", "EntryOverwrittenError", "LeadershipLostError", "Outbox",
    "Proposal", "RaftGroup", "Round", "Settleable", "StateMachine", "settle",
    "settle_snapshot",
]
