"""The values the Raft core takes in and hands out.

Everything here is an immutable value (frozen, slotted dataclasses and enums), so a value handed
to the caller can never be changed behind its back, and the simulator can compare and log them.
Each value has a ``describe()`` that renders it as one stable line of text: tests, logs and
golden transcripts all use that rendering, so it must not change without a reason.

Node ids are positive integers; ``NONE`` (0) means "nobody" (no leader known, no vote cast).
Indexes and terms start at 1; index 0 / term 0 is the empty log before the first entry.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

NONE = 0
"""The node id meaning "nobody": no leader known, no vote cast."""

CAMPAIGN_TRANSFER = b"transfer"
"""``Message.context`` of vote requests sent because of a leader transfer. Voters grant such a
request even while they still hear from a live leader (the leader lease), because the leader
itself asked for the election."""


class MessageType(enum.IntEnum):
    """What a message asks or answers. The numbers are part of the wire format (codec)."""

    APPEND = 1
    APPEND_RESP = 2
    VOTE = 3
    VOTE_RESP = 4
    PRE_VOTE = 5
    PRE_VOTE_RESP = 6
    HEARTBEAT = 7
    HEARTBEAT_RESP = 8
    SNAPSHOT = 9
    TIMEOUT_NOW = 10


class EntryKind(enum.IntEnum):
    """How the core treats an entry's data. The numbers are part of the wire format."""

    NORMAL = 0
    """Opaque application data (record batches, metadata commands). Empty = leader's no-op."""
    CONF_CHANGE = 1
    """A membership change; ``data`` is ``codec.encode_conf_change(ConfChange)``."""


class ConfChangeKind(enum.IntEnum):
    """One single-server membership step. The numbers are part of the wire format."""

    ADD_LEARNER = 0
    """Add a node that receives the log but does not vote and does not count for quorum."""
    PROMOTE = 1
    """Turn a learner (that has caught up) into a voter."""
    REMOVE = 2
    """Remove a voter or a learner."""


class Role(enum.IntEnum):
    """The role a node currently plays. A learner is a FOLLOWER that is not a voter."""

    FOLLOWER = 0
    PRE_CANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3


def _describe_ids(ids: frozenset[int]) -> str:
    return "(" + " ".join(str(i) for i in sorted(ids)) + ")"


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry: its position (``index``), the term of the leader that created it, and
    opaque bytes. The core never looks inside NORMAL data, so record batches and metadata
    commands ride alike."""

    index: int
    term: int
    kind: EntryKind = EntryKind.NORMAL
    data: bytes = b""

    def size(self) -> int:
        """The bytes this entry counts for in the byte limits (data only, as etcd does)."""
        return len(self.data)

    def describe(self) -> str:
        """``term/index KIND size`` (e.g. ``3/17 NORMAL 16384B``; ``3/18 NOOP``)."""
        if self.kind == EntryKind.NORMAL and not self.data:
            return f"{self.term}/{self.index} NOOP"
        return f"{self.term}/{self.index} {self.kind.name} {len(self.data)}B"


@dataclass(frozen=True, slots=True)
class HardState:
    """The state that must be on disk before any message that depends on it leaves the node:
    the current ``term``, the ``vote`` cast in it (NONE if none), and the ``commit`` index
    (persisted so a restarted node need not wait to re-learn it; losing it is safe)."""

    term: int = 0
    vote: int = NONE
    commit: int = 0

    def describe(self) -> str:
        """``term=T vote=V commit=C``."""
        return f"term={self.term} vote={self.vote} commit={self.commit}"


@dataclass(frozen=True, slots=True)
class ConfState:
    """The membership in effect: the voters and the learners (disjoint sets)."""

    voters: frozenset[int] = frozenset()
    learners: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        # Invariant: a node is a voter or a learner, never both; NONE is never a member.
        assert not (self.voters & self.learners), "voters and learners overlap"
        assert NONE not in self.voters and NONE not in self.learners, "NONE is not a node"

    def describe(self) -> str:
        """``voters=(1 2 3) learners=(4)``."""
        return f"voters={_describe_ids(self.voters)} learners={_describe_ids(self.learners)}"

    def changed_by(self, change: ConfChange) -> ConfState | None:
        """The membership after ``change``, or None when the change no longer makes sense
        here (see ``ConfChange``). The one membership rule: the core applies it, and storage
        replays it to know the membership at a new log start, so both must agree."""
        voters, learners = set(self.voters), set(self.learners)
        n = change.node_id
        if change.kind == ConfChangeKind.ADD_LEARNER and n not in voters | learners:
            learners.add(n)
        elif change.kind == ConfChangeKind.PROMOTE and n in learners:
            learners.discard(n)
            voters.add(n)
        elif change.kind == ConfChangeKind.REMOVE and n in voters | learners and voters != {n}:
            voters.discard(n)
            learners.discard(n)
        else:
            return None
        return ConfState(frozenset(voters), frozenset(learners))


@dataclass(frozen=True, slots=True)
class ConfChange:
    """One membership step, carried in the data of a CONF_CHANGE entry.

    A change takes effect when its entry is APPLIED: the core switches membership inside
    ``RaftCore.advance()`` for the CONF_CHANGE entries of that Ready's ``committed_entries``
    (the etcd rule). Only one change may be in flight: the leader refuses a new one while an
    earlier one is not yet applied. A change that no longer makes sense when applied (promote a
    node that is not a learner, remove a node that is not a member) is skipped, identically on
    every node, and logged.
    """

    kind: ConfChangeKind
    node_id: int

    def describe(self) -> str:
        """``ADD_LEARNER 4``."""
        return f"{self.kind.name} {self.node_id}"


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """Where a snapshot stands: the last ``index`` it covers, that entry's ``term``, and the
    membership in effect at that index."""

    index: int = 0
    term: int = 0
    conf: ConfState = field(default_factory=ConfState)

    def describe(self) -> str:
        """``index=I term=T voters=(..) learners=(..)``."""
        return f"index={self.index} term={self.term} {self.conf.describe()}"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The state up to ``meta.index``, replacing the log up to there.

    For a Rillet data partition a snapshot mostly says "the log start moved past what you need":
    ``data`` may be empty, and the follower discards its log and restarts at ``meta.index + 1``.
    The metadata group puts its state machine in ``data``.
    """

    meta: SnapshotMeta = field(default_factory=SnapshotMeta)
    data: bytes = b""

    def is_empty(self) -> bool:
        """The empty snapshot (index 0) stands for "no snapshot"."""
        return self.meta.index == 0

    def describe(self) -> str:
        """``snapshot index=I term=T voters=(..) learners=(..) NB``."""
        return f"snapshot {self.meta.describe()} {len(self.data)}B"


@dataclass(frozen=True, slots=True)
class Message:
    """One message between two nodes of the same group.

    Field use by type (unused fields are zero):

    - APPEND: ``index``/``log_term`` = the entry just before ``entries`` (log matching),
      ``commit`` = the leader's commit index.
    - APPEND_RESP: ``index`` = the follower's last index that matches the leader's log; on
      ``reject``, ``index`` = the rejected APPEND's ``index``, and ``reject_hint`` /
      ``log_term`` = the follower's hint (its last index at or below the rejected one whose term
      is at most the rejected ``log_term``, and that term) for fast backtracking.
    - VOTE / PRE_VOTE: ``index``/``log_term`` = the candidate's last entry. A PRE_VOTE carries
      the term the sender WOULD campaign in (its term + 1) without having moved to it.
      ``context`` = ``CAMPAIGN_TRANSFER`` when caused by a leader transfer.
    - VOTE_RESP / PRE_VOTE_RESP: ``reject`` = refused. A granted response carries the
      request's term.
    - HEARTBEAT: ``commit`` = min(follower's match, leader's commit). With ``quiesce`` (the
      leader's last heartbeat before it goes quiet, see ``RaftCore.quiesced``) also
      ``index``/``log_term`` = the leader's last entry, which is committed.
    - HEARTBEAT_RESP: ``reject`` = the answer to a ``quiesce`` heartbeat from a member
      that did not quiesce (its log does not match, or it does not quiesce at all), which
      wakes the leader. ``index`` = 0, or (``Config.repair_lost_tail``) the member's last index
      + 1 when the heartbeat's commit was past it: its disk lost entries, and the leader lowers
      its match to that last index.
    - SNAPSHOT: ``snapshot``. The follower answers with an APPEND_RESP.
    - TIMEOUT_NOW: the leader tells a caught-up transfer target to campaign at once.
    """

    type: MessageType
    to: int
    frm: int
    term: int
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    snapshot: Snapshot | None = None
    context: bytes = b""
    quiesce: bool = False

    def size(self) -> int:
        """The entry bytes this message carries (for byte limits)."""
        return sum(e.size() for e in self.entries)

    def describe(self) -> str:
        """``1->2 APPEND term=3 log_term=2 index=5 commit=4 entries=[3/6 NOOP]`` and so on;
        zero fields are left out so the line stays short."""
        parts = [f"{self.frm}->{self.to} {self.type.name} term={self.term}"]
        if self.log_term:
            parts.append(f"log_term={self.log_term}")
        if self.index:
            parts.append(f"index={self.index}")
        if self.commit:
            parts.append(f"commit={self.commit}")
        if self.reject:
            parts.append(f"rejected (hint: {self.reject_hint})")
        if self.entries:
            parts.append("entries=[" + ", ".join(e.describe() for e in self.entries) + "]")
        if self.snapshot is not None:
            parts.append(self.snapshot.describe())
        if self.context:
            parts.append(f"context={self.context.decode('ascii', 'backslashreplace')}")
        if self.quiesce:
            parts.append("quiesce")
        return " ".join(parts)


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state worth telling the caller about: who leads and what role we play. It is
    not persisted; it is rebuilt by elections after a restart."""

    leader: int
    role: Role

    def describe(self) -> str:
        """``leader=L role=ROLE``."""
        return f"leader={self.leader} role={self.role.name}"


@dataclass(frozen=True, slots=True)
class Ready:
    """A batch of work the core hands to its caller. Act on it in this order:

    1. Send ``messages`` at once, before anything else: none of them promises anything about
       this node's disk. They are a leader's APPENDs and HEARTBEATs in a term and vote already
       durable (the leader writes its log in parallel with its followers, Raft thesis 10.2.1:
       the core counts its own entries for commitment only after ``advance`` confirmed them
       persisted).
    2. Persist ``snapshot`` (if set), then ``entries``, then ``hard_state`` (if set).
       ``entries`` are appended to stable storage; when ``entries[0].index`` is at or below the
       storage's last index, the storage first drops everything from that index on (a new
       leader overwrote an uncommitted suffix). These writes may be staged (visible to reads,
       not yet durable) until step 4.
    3. Apply ``committed_entries`` in order (after restoring ``snapshot.data`` if set). They
       may be applied before step 4: each is on a majority's disks already (members
       acknowledge after their sync, the leader counts itself after its own) and is in this
       node's staged log, and committed entries are never rolled back.
    4. When ``must_sync``, make the writes of step 2 durable (fsync).
    5. Send ``persisted_messages``. Only now: a vote or an append acknowledgement promises
       that the state of step 2 is durable.
    6. Call ``RaftCore.advance(ready)`` with this very object.

    ``soft_state`` and ``hard_state`` are None when unchanged since the previous Ready.
    The lists belong to the caller once handed out; the core keeps no reference to them.
    """

    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    entries: list[Entry] = field(default_factory=list)
    snapshot: Snapshot | None = None
    messages: list[Message] = field(default_factory=list)
    committed_entries: list[Entry] = field(default_factory=list)
    must_sync: bool = False
    persisted_messages: list[Message] = field(default_factory=list)

    def all_messages(self) -> list[Message]:
        """Both kinds of message, those that may leave at once first."""
        return self.messages + self.persisted_messages

    def is_empty(self) -> bool:
        """True when there is nothing to persist, send or apply."""
        return (self.soft_state is None and self.hard_state is None and not self.entries
                and self.snapshot is None and not self.messages
                and not self.persisted_messages and not self.committed_entries)

    def describe(self) -> str:
        """One line: ``Ready soft=(..) hard=(..) entries=[..] snapshot=.. msgs=[..]
        committed=[..] sync persisted_msgs=[..]``; empty parts are left out."""
        parts = ["Ready"]
        if self.soft_state is not None:
            parts.append(f"soft=({self.soft_state.describe()})")
        if self.hard_state is not None:
            parts.append(f"hard=({self.hard_state.describe()})")
        if self.entries:
            parts.append("entries=[" + ", ".join(e.describe() for e in self.entries) + "]")
        if self.snapshot is not None:
            parts.append(f"({self.snapshot.describe()})")
        if self.messages:
            parts.append("msgs=[" + "; ".join(m.describe() for m in self.messages) + "]")
        if self.committed_entries:
            parts.append("committed=["
                         + ", ".join(e.describe() for e in self.committed_entries) + "]")
        if self.must_sync:
            parts.append("sync")
        if self.persisted_messages:
            parts.append("persisted_msgs=["
                         + "; ".join(m.describe() for m in self.persisted_messages) + "]")
        return " ".join(parts)
