"""RaftCore: one Raft group member as a pure state machine.

The core does no I/O, reads no clock and starts no task. It changes only through its inputs,
and hands all its work back as a ``Ready``:

- ``tick()``: one unit of logical time passed (the caller decides how long a tick is).
- ``step(message)``: a message from another member arrived.
- ``propose(data)`` / ``propose_conf_change(change)`` / ``transfer_leader(id)`` /
  ``campaign()``: requests from the local application.

The apply-path contract
-----------------------
When ``has_ready()`` is true, the caller takes ``rd = ready()`` and then, in this order
(``types.Ready`` says why each step may come where it does):

1. sends ``rd.messages``: those that promise nothing about this node's disk (a leader's
   appends and heartbeats in a term and vote already durable) may leave before the write;
2. persists ``rd.snapshot`` (if set), then ``rd.entries``, then ``rd.hard_state`` (if set);
3. applies ``rd.committed_entries`` in order (restoring ``rd.snapshot.data`` first if set);
   they are on a majority's disks, so this need not wait for this node's fsync;
4. fsyncs the writes of step 2 when ``rd.must_sync``;
5. sends ``rd.persisted_messages`` (only now: a vote or an append acknowledgement promises
   the state above is durable; this is how term and vote reach disk before any reply that
   depends on them);
6. calls ``advance(rd)``.

The core decides which message is which (``ready``), so every caller (the asyncio driver, the
simulator) runs the same order without judging messages by type and role itself.

The core enforces the part it can see, in one place (``ready``/``advance``): a second
``ready()`` before ``advance()`` raises, ``advance()`` only accepts the Ready just handed out,
and ``has_ready()`` is false in between. Inputs (``step``, ``tick``, ...) may arrive between
``ready()`` and ``advance()``; what they produce goes into the next Ready. The leader counts its
own log for commitment only up to what ``advance()`` confirmed persisted.

Membership changes take effect when applied, i.e. inside ``advance()`` for the CONF_CHANGE
entries of that Ready's ``committed_entries`` (see ``types.ConfChange``); ``conf_state`` then
shows the new membership, and a caller that persists an applied index must persist
``conf_state`` with it.

Quiescence (``Config.quiesce``, decision 0404)
-----------------------------------------------
An idle group need not tick. A leader whose whole log is committed, applied, persisted and
acknowledged by every member, with no transfer under way, quiesces after
``QUIESCE_IDLE_HEARTBEATS`` such heartbeats: it sends each member a last HEARTBEAT marked
``quiesce`` (carrying its last index and term) and from then on ``tick()`` does nothing. A
member whose log matches that last entry quiesces too and does not answer; one that cannot
answers with a rejected HEARTBEAT_RESP, which wakes the leader. A quiesced core hands out no
Ready and sends nothing until it wakes, which any of these does: a proposal, a membership
change, ``transfer_leader``, ``campaign``, a message that needs an answer or a new term (see
``step``), and ``report_unreachable`` for the leader of a quiesced follower. The last one is
the caller's duty: with quiescence on, only the caller's node-to-node liveness notices that a
quiesced leader's node died, so it MUST call ``report_unreachable(peer)`` on the quiesced
cores of a peer it has not heard from for an election timeout (``liveness.PeerLiveness``).

Randomness (election timeouts) comes only from the injected ``random.Random``, and logging only
goes to the injected logger, so two cores built with equal seeds behave identically.
"""

from __future__ import annotations

import collections
import enum
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from . import codec
from .errors import (
    CompactedError,
    NotLeaderError,
    ProposalDroppedError,
    SnapshotTemporarilyUnavailableError,
)
from .log import RaftLog
from .progress import Inflights, Progress, ProgressState
from .quorum import VoteResult, majority_commit_index, vote_result
from .storage import Storage
from .types import (
    CAMPAIGN_TRANSFER,
    NONE,
    ConfChange,
    ConfChangeKind,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    Message,
    MessageType,
    Ready,
    Role,
    Snapshot,
    SoftState,
)

_LEADER_MESSAGES = (MessageType.APPEND, MessageType.HEARTBEAT, MessageType.SNAPSHOT)
_VOTE_REQUESTS = (MessageType.VOTE, MessageType.PRE_VOTE)
_RESPONSES = (MessageType.APPEND_RESP, MessageType.HEARTBEAT_RESP)
# What a leader may send before its own write of the same Ready (``_split_messages``).
_EARLY_TYPES = frozenset((MessageType.APPEND, MessageType.HEARTBEAT))

QUIESCE_IDLE_HEARTBEATS = 2
"""A leader quiesces at the heartbeat where its group has been idle (see ``Config.quiesce``)
for this many heartbeats in a row, so a group with a trickle of proposals does not quiesce and
wake on every one."""


@dataclass
class Config:
    """How one core behaves. ``validate()`` checks it; the core calls it on construction."""

    id: int
    """This member's node id (positive; ``NONE`` is 0)."""
    election_ticks: int = 10
    """A follower that hears no leader for a randomized ``[election_ticks,
    2 * election_ticks)`` ticks campaigns; a leader checks its quorum every ``election_ticks``."""
    heartbeat_ticks: int = 1
    """A leader sends heartbeats every ``heartbeat_ticks``; must be below ``election_ticks``."""
    max_inflight_msgs: int = 256
    """At most this many unacknowledged APPENDs per follower while replicating."""
    max_inflight_bytes: int = 32 << 20
    """At most this many unacknowledged entry bytes per follower; 0 = no byte bound."""
    max_uncommitted_bytes: int = 64 << 20
    """A leader refuses proposals (ProposalDroppedError) while this many entry bytes of its
    own term wait for commitment, so a leader without a quorum cannot grow its log without
    bound; 0 = no bound. A proposal is always accepted when nothing is uncommitted."""
    max_size_per_msg: int = 1 << 20
    """At most this many entry bytes per APPEND (at least one entry is always sent)."""
    max_committed_bytes_per_ready: int = 64 << 20
    """At most this many committed entry bytes per Ready (at least one entry). The caller
    reads them back from its log to apply them. Not smaller: a lone node applies at most this
    much per fsync round, and the uncommitted budget is released only at apply (8 MiB made a
    slow disk refuse proposals; issue 13's note)."""
    pre_vote: bool = True
    """Run a pre-vote round (no term change) before a real election, so a node that was cut
    off cannot force the cluster into a new term when it returns."""
    check_quorum: bool = True
    """A leader steps down when it has not heard from a majority within an election timeout,
    and followers ignore vote requests while they hear from a live leader (leader lease)."""
    applied: int = 0
    """The last index the caller had applied before this start (0 = re-apply everything
    committed after the log start)."""
    quiesce: bool = False
    """Let an idle group stop ticking and heartbeating (module docstring, decision 0404).
    Only for callers that track their peers' liveness and call ``report_unreachable``: a
    quiesced follower does not notice on its own that its leader died."""
    repair_lost_tail: bool = False
    """Survive a disk that lost the end of the log after it was acknowledged (the node's
    storage cut a damaged tail on recovery): start with the commit index clamped to the last
    entry that survived, and when a leader's heartbeat names a commit index past it, commit
    only what we hold and tell the leader our last index (``HEARTBEAT_RESP.index``), which
    lowers its idea of our match so it sends the lost entries again. Off, such a start raises
    and such a heartbeat asserts (the simulator keeps it off: there, only a bug loses
    acknowledged entries)."""

    def validate(self) -> None:
        """Raise ValueError naming the first setting that cannot work."""
        if self.id <= NONE:
            raise ValueError(f"id must be positive, not {self.id}")
        if self.heartbeat_ticks <= 0:
            raise ValueError(f"heartbeat_ticks must be positive, not {self.heartbeat_ticks}")
        if self.election_ticks <= self.heartbeat_ticks:
            raise ValueError(f"election_ticks ({self.election_ticks}) must exceed "
                             f"heartbeat_ticks ({self.heartbeat_ticks})")
        if self.max_inflight_msgs <= 0:
            raise ValueError(f"max_inflight_msgs must be positive, not {self.max_inflight_msgs}")
        if self.max_inflight_bytes < 0:
            raise ValueError(f"max_inflight_bytes must be >= 0, not {self.max_inflight_bytes}")
        if self.max_inflight_bytes and self.max_inflight_bytes < self.max_size_per_msg:
            raise ValueError("max_inflight_bytes must be 0 or at least max_size_per_msg")
        if self.max_size_per_msg <= 0:
            raise ValueError(f"max_size_per_msg must be positive, not {self.max_size_per_msg}")
        if self.max_committed_bytes_per_ready <= 0:
            raise ValueError("max_committed_bytes_per_ready must be positive")
        if self.max_uncommitted_bytes < 0:
            raise ValueError("max_uncommitted_bytes must be >= 0")
        if self.applied < 0:
            raise ValueError(f"applied must be >= 0, not {self.applied}")


class _Campaign(enum.Enum):
    PRE_ELECTION = "pre-election"
    ELECTION = "election"
    TRANSFER = "transfer"


@dataclass(frozen=True)
class Status:
    """A snapshot of the core's state for logs, admin endpoints and tests."""

    id: int
    term: int
    vote: int
    leader: int
    role: Role
    commit: int
    applied: int
    last_index: int
    conf: ConfState
    lead_transferee: int
    progress: dict[int, str] = field(default_factory=dict)
    quiesced: bool = False

    def describe(self) -> str:
        """One line: identity, terms, indexes, membership, and each follower's progress."""
        line = (f"{self.id} {self.role.name} term={self.term} vote={self.vote} "
                f"leader={self.leader} commit={self.commit} applied={self.applied} "
                f"last={self.last_index} {self.conf.describe()}")
        if self.quiesced:
            line += " quiesced"
        if self.lead_transferee:
            line += f" transferring to {self.lead_transferee}"
        if self.progress:
            line += " progress=[" + "; ".join(
                f"{i}: {d}" for i, d in sorted(self.progress.items())) + "]"
        return line


class RaftCore:
    """One member of one Raft group. See the module docstring for the contract."""

    def __init__(self, config: Config, storage: Storage, rng: random.Random,
                 logger: logging.Logger) -> None:
        config.validate()
        self.config = config
        self.storage = storage
        self.rng = rng
        self.logger = logger
        self._id = config.id
        self.log = RaftLog(storage, logger, config.max_size_per_msg)
        hard_state, conf = storage.initial_state()
        self.conf = conf
        self._term = 0
        self.vote = NONE
        self.lead = NONE
        self._role = Role.FOLLOWER
        self.progress: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}
        self.msgs: list[Message] = []
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self._quiesced = False
        self.quiesce_idle = 0
        """Leader: heartbeats in a row at which the group was idle (``_can_quiesce``)."""
        self.unreachable: set[int] = set()
        """Members the caller reported unreachable (``report_unreachable``) and not heard
        from since: a leader quiesces without waiting for them to catch up, as long as the
        others form a majority. Kept across role changes: it is about nodes, not terms."""
        self.randomized_election_timeout = config.election_ticks
        self.lead_transferee = NONE
        self.uncommitted_bytes = 0
        """Leader: entry bytes appended in this term and not yet known committed."""
        self._uncommitted_sizes: collections.deque[tuple[int, int]] = collections.deque()
        # Leader: (index, bytes) of its entries of this term counted in uncommitted_bytes.
        self.pending_conf_index = 0
        """The index of the latest membership change the leader proposed (or, right after
        election, the last index: any uncommitted entry might be one). While it is above
        ``applied`` no new change is accepted: one change at a time."""
        if hard_state != HardState():
            self.load_state(hard_state)
        if config.applied:
            if config.applied > self.log.committed:
                raise ValueError(f"applied {config.applied} is past the persisted commit "
                                 f"index {self.log.committed}")
            self.log.applied_to(max(config.applied, self.log.applied))
        self.become_follower(self._term, NONE)
        # The state the caller already holds: only changes from here on go into a Ready.
        self.prev_hard_state = self.hard_state()
        self.prev_soft_state = self.soft_state()
        self._outstanding: Ready | None = None
        self.logger.info("raft %d: started: %s %s", self._id, self.log.describe(),
                         self.conf.describe())

    # -- read-only views ---------------------------------------------------------------------

    @property
    def id(self) -> int:
        """This member's node id."""
        return self._id

    @property
    def term(self) -> int:
        """The current term."""
        return self._term

    @property
    def role(self) -> Role:
        """The role played now."""
        return self._role

    @property
    def leader(self) -> int:
        """The leader known in the current term (``NONE`` if none)."""
        return self.lead

    @property
    def commit_index(self) -> int:
        """The highest index known committed."""
        return self.log.committed

    @property
    def applied_index(self) -> int:
        """The highest index the caller has applied (as confirmed through ``advance``)."""
        return self.log.applied

    @property
    def conf_state(self) -> ConfState:
        """The membership in effect (as of the applied index)."""
        return self.conf

    @property
    def quiesced(self) -> bool:
        """Whether the group is quiet here: ``tick()`` does nothing and, once the Ready that
        carried the quiesce heartbeats (leader) or the last commit (follower) is advanced,
        nothing is handed out until something wakes it (module docstring)."""
        return self._quiesced

    def is_learner(self) -> bool:
        """A member that receives the log but neither campaigns nor counts for quorum."""
        return self._id in self.conf.learners

    def promotable(self) -> bool:
        """Whether this node may campaign: it must be a voter in the membership it knows."""
        return self._id in self.conf.voters

    def hard_state(self) -> HardState:
        """The state that must be durable before dependent messages leave."""
        return HardState(self._term, self.vote, self.log.committed)

    def soft_state(self) -> SoftState:
        """Who leads and what we are."""
        return SoftState(self.lead, self._role)

    def status(self) -> Status:
        """The current state, with each follower's progress when leading."""
        progress = ({i: p.describe() for i, p in self.progress.items()}
                    if self._role == Role.LEADER else {})
        return Status(self._id, self._term, self.vote, self.lead, self._role,
                      self.log.committed, self.log.applied, self.log.last_index(), self.conf,
                      self.lead_transferee, progress, self._quiesced)

    def describe(self) -> str:
        """One line: ``status().describe()``."""
        return self.status().describe()

    # -- the Ready/advance contract (enforced here, and only here) ------------------------------

    def has_ready(self) -> bool:
        """Whether ``ready()`` would hand out any work. False while a Ready is outstanding:
        nothing new is handed out until ``advance()``."""
        if self._outstanding is not None:
            return False
        u = self.log.unstable
        soft = self.prev_soft_state
        # The cheap checks first: this runs once per group per tick on a node with thousands
        # of groups. The hard state is compared as ready() will build it.
        return bool(self.msgs or u.entries or u.snapshot is not None
                    or self.lead != soft.leader or self._role != soft.role
                    or self.log.applied < self.log.committed
                    or self.hard_state() != self.prev_hard_state)

    def ready(self) -> Ready:
        """Hand out the work accumulated since the last Ready (see the module docstring)."""
        if self._outstanding is not None:
            raise RuntimeError("ready() called again before advance() of the previous Ready")
        soft, hard = self.soft_state(), self.hard_state()
        snapshot = self.log.unstable.snapshot
        entries = list(self.log.unstable.entries)
        hard_changed = hard != self.prev_hard_state
        # The term and vote are durable unless this Ready changes them.
        vote_kept = (hard.term, hard.vote) == (self.prev_hard_state.term,
                                               self.prev_hard_state.vote)
        early, persisted = self._split_messages(self.msgs, vote_kept)
        rd = Ready(
            soft_state=soft if soft != self.prev_soft_state else None,
            hard_state=hard if hard_changed else None,
            entries=entries,
            snapshot=snapshot,
            messages=early,
            committed_entries=self.log.next_committed_entries(
                self.config.max_committed_bytes_per_ready),
            # The commit index alone need not be synced (it can be re-learned); the term, the
            # vote and the log must be, before any message that promises them goes out.
            must_sync=bool(entries) or snapshot is not None or not vote_kept,
            persisted_messages=persisted,
        )
        self.msgs = []
        self.prev_soft_state = soft
        self.prev_hard_state = hard
        self._outstanding = rd
        return rd

    def _split_messages(self, msgs: list[Message], vote_kept: bool
                        ) -> tuple[list[Message], list[Message]]:
        """(may leave before the write, must wait for it). Only a leader whose term and vote
        are already durable sends early, and only appends and heartbeats: they promise nothing
        about its own disk (it counts its own entries for commitment only after ``advance``).
        A Ready that changes term or vote sends nothing early: entries of a term this node
        might forget in a crash must never reach another node."""
        if not msgs or self._role != Role.LEADER or not vote_kept:
            return [], msgs
        early: list[Message] = []
        persisted: list[Message] = []
        for m in msgs:
            (early if m.type in _EARLY_TYPES else persisted).append(m)
        return early, persisted

    def advance(self, rd: Ready) -> None:
        """The caller persisted, sent and applied ``rd``: record that, switch membership for
        applied CONF_CHANGE entries, and (as leader) count our own persisted log."""
        if rd is not self._outstanding:
            raise RuntimeError("advance() must get the Ready that ready() just returned")
        self._outstanding = None
        if rd.snapshot is not None:
            self.log.unstable.stable_snap_to(rd.snapshot.meta.index)
            self.log.applied_to(rd.snapshot.meta.index)
        if rd.entries:
            last = rd.entries[-1]
            self.log.unstable.stable_to(last.index, last.term)
        for entry in rd.committed_entries:
            if entry.kind == EntryKind.CONF_CHANGE:
                self.apply_conf_change(codec.decode_conf_change(entry.data), entry.index)
        if rd.committed_entries:
            self.log.applied_to(rd.committed_entries[-1].index)
        if self._role == Role.LEADER:
            pr = self.progress.get(self._id)
            if pr is not None and pr.maybe_update(self.log.persisted_last_index()):
                if self.maybe_commit():
                    self.bcast_append()

    # -- inputs ---------------------------------------------------------------------------------

    def tick(self) -> None:
        """One tick of logical time (nothing happens while quiesced)."""
        if self._quiesced:
            return
        if self._role == Role.LEADER:
            self.tick_heartbeat()
        else:
            self.tick_election()

    def campaign(self) -> None:
        """Start an election now (with a pre-vote round if configured), as an election timeout
        would. Ignored by a leader, a learner, or while membership changes are unapplied."""
        self.wake()
        self.hup(_Campaign.PRE_ELECTION if self.config.pre_vote else _Campaign.ELECTION)

    def propose(self, data: bytes) -> int:
        """Append ``data`` as a new entry and replicate it; return its index.

        Raises NotLeaderError (with the known leader) on a non-leader, ProposalDroppedError
        during a leader transfer. The entry is committed once a majority persisted it; it may
        still be lost if leadership changes first (the caller learns that by watching the
        entry at that index commit with another term)."""
        return self.propose_batch([data])[0]

    def propose_batch(self, datas: Sequence[bytes]) -> list[int]:
        """Append several entries at once (one round of APPENDs); their indexes, in order.
        The batch is accepted or refused as a whole."""
        self._check_can_propose()
        size = sum(len(d) for d in datas)
        limit = self.config.max_uncommitted_bytes
        self._release_committed()
        if limit and self.uncommitted_bytes and self.uncommitted_bytes + size > limit:
            raise ProposalDroppedError(
                f"{self.uncommitted_bytes} bytes already wait for commitment (limit {limit})")
        return self._append_and_replicate([(EntryKind.NORMAL, d) for d in datas])

    def propose_conf_change(self, change: ConfChange) -> int:
        """Propose one membership step; return its entry index. It takes effect when applied.

        Raises ProposalDroppedError while an earlier change is unapplied; ValueError for a
        change that makes no sense against the current membership."""
        self._check_can_propose()
        if self.pending_conf_index > self.log.applied:
            raise ProposalDroppedError(
                f"membership change at {self.pending_conf_index} not applied yet "
                f"(applied {self.log.applied})")
        self._check_conf_change(change)
        index = self._append_and_replicate(
            [(EntryKind.CONF_CHANGE, codec.encode_conf_change(change))])[0]
        self.pending_conf_index = index
        return index

    def transfer_leader(self, target: int) -> None:
        """Hand leadership to ``target``: bring it up to date, then tell it to campaign at
        once. Proposals are refused meanwhile; the transfer is abandoned after an election
        timeout. Raises NotLeaderError on a non-leader, ValueError if ``target`` is no voter."""
        if self._role != Role.LEADER:
            raise NotLeaderError(self.lead)
        if target not in self.conf.voters:
            raise ValueError(f"cannot transfer leadership to {target}: not a voter")
        if self.lead_transferee != NONE:
            if self.lead_transferee == target:
                return  # already on its way
            self.abort_leader_transfer()
        if target == self._id:
            return  # already the leader
        self.wake()
        self.logger.info("raft %d: [term %d] starts transferring leadership to %d",
                         self._id, self._term, target)
        # The transfer must finish within one election timeout, counted from now.
        self.election_elapsed = 0
        self.lead_transferee = target
        if self.progress[target].match == self.log.last_index():
            self.send_timeout_now(target)
        else:
            self.maybe_send_append(target, send_if_empty=True)

    def report_unreachable(self, node_id: int) -> None:
        """The caller failed to reach ``node_id``, or has not heard from it for an election
        timeout. A leader stops pipelining to it and probes. While quiesced: a follower whose
        leader that is wakes with its leader lease expired (so it campaigns within a
        randomized ``[0, election_ticks)`` ticks, and grants votes); a leader wakes once it
        can no longer count on a majority, so check-quorum runs again."""
        if node_id != self._id:
            self.unreachable.add(node_id)
        pr = self.progress.get(node_id)
        if self._quiesced:
            if self._role == Role.LEADER:
                if pr is not None and node_id != self._id:
                    pr.recent_active = False
                    if not self._quorum_recently_active():
                        self.logger.info("raft %d: [term %d] woken: %d unreachable, no "
                                         "quorum left in sight", self._id, self._term, node_id)
                        self.wake()
            elif node_id == self.lead:
                self.logger.info("raft %d: [term %d] woken: leader %d unreachable", self._id,
                                 self._term, node_id)
                self.wake(lease_expired=True)
            return
        if self._role == Role.LEADER and pr is not None and pr.state == ProgressState.REPLICATE:
            pr.become_probe()

    def report_snapshot(self, node_id: int, *, failed: bool) -> None:
        """The transport finished (or gave up) sending a snapshot to ``node_id``."""
        pr = self.progress.get(node_id)
        if self._role != Role.LEADER or pr is None or pr.state != ProgressState.SNAPSHOT:
            return
        if failed:
            pr.pending_snapshot = 0
        pr.become_probe()
        pr.probe_sent = True  # wait for the follower's answer (or a heartbeat) before probing

    def step(self, m: Message) -> None:
        """Handle one message from another member (of any term)."""
        # Invariant: the transport delivers to the addressee only.
        assert m.to == self._id, f"message for {m.to} delivered to {self._id}"
        if self.unreachable:
            self.unreachable.discard(m.frm)
        if self._quiesced:
            self._step_quiesced(m)
        else:
            self._step(m)

    def _step_quiesced(self, m: Message) -> None:
        """Step ``m`` while quiesced, waking first when ``m`` shows the group is not idle.

        A leader stays quiet for plain answers that need nothing from it (late
        acknowledgements) and for messages from non-members (a removed node's pre-votes);
        anything else from a member wakes it, and so does a late answer that makes it send.
        A follower stays quiet for its leader's repeated quiesce heartbeat, for vote
        requests its lease ignores (a cut-off member's pre-votes must not wake a healthy
        group) and for late vote requests of an older or our own term (only answered); a
        vote request for a newer term FROM its leader proves that leader no longer leads (it
        restarted or stepped down) and wakes it with the lease expired; anything else wakes
        it. Waking is always safe: it only restores the ticking of a group that never
        quiesced."""
        if self._role == Role.LEADER:
            member = m.frm in self.progress
            if member and not (m.type in _RESPONSES and not m.reject):
                self.wake()
            sent = len(self.msgs)
            self._step(m)
            if self._quiesced and member and len(self.msgs) > sent:
                self.wake()
            return
        if m.type in _VOTE_REQUESTS:
            # A campaign asks for a newer term; an older or equal one (a late duplicate) is
            # only answered, which needs no timer.
            if m.term > self._term:
                if m.frm == self.lead:
                    self.wake(lease_expired=True)
                elif not self._in_lease(m):
                    self.wake()
        elif not (m.type == MessageType.HEARTBEAT and m.quiesce and m.frm == self.lead
                  and m.term == self._term):
            self.wake()
        self._step(m)

    def wake(self, *, lease_expired: bool = False) -> None:
        """Leave quiescence (nothing happens if not quiesced). The timers restart from zero,
        and a leader forgets who was recently active, so check-quorum judges only what it
        hears after waking. ``lease_expired`` (a follower whose leader is unreachable) starts
        the election timer at ``election_ticks``: the lease is over, and the follower
        campaigns after the rest of its randomized timeout."""
        if not self._quiesced:
            return
        self._quiesced = False
        self.quiesce_idle = 0
        self.heartbeat_elapsed = 0
        if self._role == Role.LEADER:
            self.election_elapsed = 0
            for node_id, pr in self.progress.items():
                if node_id != self._id:
                    pr.recent_active = False
        else:
            self.election_elapsed = self.config.election_ticks if lease_expired else 0
        self.logger.debug("raft %d: [term %d] woke up as %s", self._id, self._term,
                          self._role.name)

    def _step(self, m: Message) -> None:
        if m.term > self._term:
            if m.type in (MessageType.VOTE, MessageType.PRE_VOTE):
                if self._in_lease(m):
                    self.logger.info(
                        "raft %d: [term %d] ignored %s: leader %d is live (lease, %d ticks)",
                        self._id, self._term, m.describe(), self.lead, self.election_elapsed)
                    return
            if m.type == MessageType.PRE_VOTE:
                pass  # a pre-vote never changes our term
            elif m.type == MessageType.PRE_VOTE_RESP and not m.reject:
                pass  # granted pre-votes carry the term we would campaign in, not a new term
            else:
                self.logger.info("raft %d: [term %d] got a message of term %d: %s",
                                 self._id, self._term, m.term, m.describe())
                self.become_follower(m.term, m.frm if m.type in _LEADER_MESSAGES else NONE)
        elif m.term < self._term:
            if ((self.config.check_quorum or self.config.pre_vote)
                    and m.type in (MessageType.HEARTBEAT, MessageType.APPEND)):
                # A leader of an older term (cut off, then back) must learn our term and step
                # down; otherwise it may keep ignoring us while we ignore its messages.
                self.send(Message(MessageType.APPEND_RESP, to=m.frm, frm=self._id,
                                  term=self._term))
            elif m.type in (MessageType.PRE_VOTE, MessageType.VOTE):
                # Reject with our term (Raft Figure 2: "reply false if term < currentTerm";
                # the reply's term is "for candidate to update itself"). Ignoring it instead
                # can starve a candidate whose term lags ours for good: without pre-vote,
                # both sides time out at the same pace and it never catches up.
                resp = (MessageType.PRE_VOTE_RESP if m.type == MessageType.PRE_VOTE
                        else MessageType.VOTE_RESP)
                self.send(Message(resp, to=m.frm, frm=self._id, term=self._term,
                                  reject=True))
            return

        if m.type in (MessageType.VOTE, MessageType.PRE_VOTE):
            self.handle_vote_request(m)
        elif self._role == Role.LEADER:
            self.step_leader(m)
        elif self._role in (Role.CANDIDATE, Role.PRE_CANDIDATE):
            self.step_candidate(m)
        else:
            self.step_follower(m)

    # -- role transitions ------------------------------------------------------------------------

    def reset(self, term: int) -> None:
        """Common state for a new role: a new term forgets the vote; timers restart; the
        leader's bookkeeping (votes, progress, transfer) is dropped."""
        if term != self._term:
            self._term = term
            self.vote = NONE
        self.lead = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self._quiesced = False
        self.quiesce_idle = 0
        self.reset_randomized_election_timeout()
        self.abort_leader_transfer()
        self.votes = {}
        self.reset_progress()
        self.pending_conf_index = 0
        self.uncommitted_bytes = 0
        self._uncommitted_sizes.clear()

    def reset_progress(self) -> None:
        """Fresh Progress for every member, probing from our last index."""
        last = self.log.last_index()
        self.progress = {}
        for node_id in sorted(self.conf.voters | self.conf.learners):
            self.progress[node_id] = self._new_progress(node_id, last + 1)
        mine = self.progress.get(self._id)
        if mine is not None:
            mine.match = self.log.persisted_last_index()
            mine.next = max(mine.match, last) + 1

    def _new_progress(self, node_id: int, next_index: int) -> Progress:
        inflights = Inflights(self.config.max_inflight_msgs, self.config.max_inflight_bytes)
        return Progress(next_index, inflights, is_learner=node_id in self.conf.learners)

    def reset_randomized_election_timeout(self) -> None:
        """Draw the next election timeout from ``[election_ticks, 2 * election_ticks)`` with
        the injected rng, so that members rarely time out together (Raft §5.2)."""
        n = self.config.election_ticks
        self.randomized_election_timeout = n + self.rng.randrange(n)

    def become_follower(self, term: int, lead: int) -> None:
        """Follow ``lead`` (or nobody yet) in ``term``."""
        self.reset(term)
        self.lead = lead
        self._role = Role.FOLLOWER
        self.logger.info("raft %d: became follower at term %d (leader %d)",
                         self._id, self._term, lead)

    def become_pre_candidate(self) -> None:
        """Ask whether we could win, without touching our term or vote (Raft thesis §9.6)."""
        # Invariant: a leader never campaigns.
        assert self._role != Role.LEADER, "leader cannot become pre-candidate"
        self._role = Role.PRE_CANDIDATE
        self.votes = {}
        self.lead = NONE
        self.logger.info("raft %d: became pre-candidate at term %d", self._id, self._term)

    def become_candidate(self) -> None:
        """Start an election in the next term, voting for ourselves (Raft §5.2)."""
        assert self._role != Role.LEADER, "leader cannot become candidate"
        self.reset(self._term + 1)
        self.vote = self._id
        self._role = Role.CANDIDATE
        self.logger.info("raft %d: became candidate at term %d", self._id, self._term)

    def become_leader(self) -> None:
        """Lead the current term: probe every follower and append an empty entry, which
        commits everything before it once it commits (Raft §5.4.2, §8)."""
        # Invariant: only a candidate that won becomes leader.
        assert self._role == Role.CANDIDATE, f"{self._role.name} cannot become leader"
        self.reset(self._term)
        self.lead = self._id
        self._role = Role.LEADER
        mine = self.progress[self._id]
        mine.become_replicate()
        mine.recent_active = True
        # Any entry not yet applied might be a membership change: refuse new ones until then.
        self.pending_conf_index = self.log.last_index()
        self.append_entries([(EntryKind.NORMAL, b"")])
        self.logger.info("raft %d: became leader at term %d", self._id, self._term)

    # -- elections -------------------------------------------------------------------------------

    def tick_election(self) -> None:
        """Followers and candidates: campaign when the randomized timeout runs out."""
        self.election_elapsed += 1
        if self.promotable() and self.election_elapsed >= self.randomized_election_timeout:
            self.election_elapsed = 0
            self.campaign()

    def tick_heartbeat(self) -> None:
        """Leaders: heartbeat every ``heartbeat_ticks``; every ``election_ticks``, check the
        quorum (check-quorum) and abandon an unfinished leader transfer (a removed leader
        retries its hand-off instead; see ``removed_leader``)."""
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.config.election_ticks:
            self.election_elapsed = 0
            if self.removed_leader():
                # Stepping down would leave the others without anyone who can tell them the
                # removal committed (see apply_conf_change): keep trying to hand off instead.
                self.quorum_active()  # start the next round of recent_active
                self.abort_leader_transfer()
                self.maybe_hand_off()
            elif self.config.check_quorum and not self.quorum_active():
                self.logger.warning("raft %d: [term %d] stepped down: no quorum heard within "
                                    "an election timeout", self._id, self._term)
                self.become_follower(self._term, NONE)
                return
            elif self.lead_transferee != NONE:
                self.logger.info("raft %d: transfer to %d timed out", self._id,
                                 self.lead_transferee)
                self.abort_leader_transfer()
        if self.heartbeat_elapsed >= self.config.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            if self.config.quiesce and self._can_quiesce():
                self.quiesce_idle += 1
                if self.quiesce_idle >= QUIESCE_IDLE_HEARTBEATS:
                    self._quiesce()
                    return
            else:
                self.quiesce_idle = 0
            self.bcast_heartbeat()

    def _can_quiesce(self) -> bool:
        """Leader: whether the group is idle. Everything is committed, applied and persisted
        here, every member acknowledged our last entry (and is not waiting on a snapshot; a
        member probed after a report of unreachability that already holds everything counts),
        and no transfer or hand-off is under way. (An unapplied membership change is ruled
        out by ``applied == last``.) Members reported unreachable are not waited for, but
        the others must form a majority: a leader cut off from its quorum stays awake, so
        check-quorum makes it step down."""
        if self.lead_transferee != NONE or self.removed_leader():
            return False
        log = self.log
        last = log.last_index()
        if log.committed != last or log.applied != last:
            return False
        unreachable = self.unreachable
        for node_id, pr in self.progress.items():
            if node_id in unreachable:
                continue
            if pr.match != last:
                return False
            if pr.state == ProgressState.SNAPSHOT:
                return False
        if unreachable:
            votes = {node_id: node_id not in unreachable for node_id in self.progress}
            return vote_result(self.conf.voters, votes) == VoteResult.WON
        return True

    def _quiesce(self) -> None:
        """Leader: go quiet. Each member gets a last heartbeat marked ``quiesce`` naming our
        last entry (committed), and counts as recently active (it acknowledged everything)
        until the caller reports it unreachable."""
        last = self.log.last_index()
        last_term = self.log.last_term()
        self._quiesced = True
        self.quiesce_idle = 0
        self.logger.debug("raft %d: [term %d] quiescing at %d", self._id, self._term, last)
        for node_id in sorted(self.progress):
            if node_id == self._id:
                continue
            pr = self.progress[node_id]
            pr.recent_active = node_id not in self.unreachable
            # As in every heartbeat, the commit index is capped at what the member is known
            # to hold (an unreachable member may lag; it refuses to quiesce if it is back).
            self.send(Message(MessageType.HEARTBEAT, to=node_id, frm=self._id, term=self._term,
                              commit=min(pr.match, last), index=last, log_term=last_term,
                              quiesce=True))

    def _quorum_recently_active(self) -> bool:
        """Like ``quorum_active`` but without starting a new round."""
        votes = {node_id: node_id == self._id or pr.recent_active
                 for node_id, pr in self.progress.items()}
        return vote_result(self.conf.voters, votes) == VoteResult.WON

    def quorum_active(self) -> bool:
        """Whether a majority of voters (us included) was heard from since the last check;
        starts the next round by clearing every ``recent_active``."""
        votes = {}
        for node_id, pr in self.progress.items():
            votes[node_id] = node_id == self._id or pr.recent_active
            if node_id != self._id:
                pr.recent_active = False
        return vote_result(self.conf.voters, votes) == VoteResult.WON

    def _in_lease(self, m: Message) -> bool:
        """Whether to ignore the vote request ``m`` because we still hear from a live leader.

        With check-quorum, a leader steps down once it loses its majority, so while a follower
        heard from it within an election timeout no election is needed; pre-vote applies the
        same rule to pre-votes. A leader transfer (``CAMPAIGN_TRANSFER``) overrides it."""
        if m.context == CAMPAIGN_TRANSFER:
            return False
        guarded = self.config.check_quorum or (
            self.config.pre_vote and m.type == MessageType.PRE_VOTE)
        return (guarded and self.lead != NONE
                and self.election_elapsed < self.config.election_ticks)

    def hup(self, kind: _Campaign) -> None:
        """Start a campaign of ``kind`` if we are allowed to."""
        if self._role == Role.LEADER:
            self.logger.debug("raft %d: ignoring campaign: already leader", self._id)
            return
        if not self.promotable():
            self.logger.info("raft %d: not a voter (%s): will not campaign", self._id,
                             self.conf.describe())
            return
        if self._has_unapplied_conf_change():
            self.logger.info("raft %d: will not campaign: membership change committed but "
                             "not yet applied", self._id)
            return
        self.logger.info("raft %d: starting %s at term %d", self._id, kind.value, self._term)
        self._campaign(kind)

    def _has_unapplied_conf_change(self) -> bool:
        lo, hi = self.log.applied + 1, self.log.committed + 1
        if lo >= hi or self.log.unstable.snapshot is not None:
            return False
        # Bounded: at most committed - applied entries, read in pages.
        while lo < hi:
            page = self.log.entries(lo, hi, self.config.max_committed_bytes_per_ready)
            if any(e.kind == EntryKind.CONF_CHANGE for e in page):
                return True
            lo = page[-1].index + 1
        return False

    def _campaign(self, kind: _Campaign) -> None:
        if kind == _Campaign.PRE_ELECTION:
            self.become_pre_candidate()
            vote_type = MessageType.PRE_VOTE
            term = self._term + 1  # the term we would move to, without moving yet
        else:
            self.become_candidate()
            vote_type = MessageType.VOTE
            term = self._term
        if self.poll(self._id, granted=True) == VoteResult.WON:
            # A single-voter group wins on its own vote.
            self._won(kind)
            return
        context = CAMPAIGN_TRANSFER if kind == _Campaign.TRANSFER else b""
        last_index, last_term = self.log.last_index(), self.log.last_term()
        for node_id in sorted(self.conf.voters):
            if node_id == self._id:
                continue
            self.send(Message(vote_type, to=node_id, frm=self._id, term=term,
                              index=last_index, log_term=last_term, context=context))

    def _won(self, kind: _Campaign) -> None:
        if kind == _Campaign.PRE_ELECTION:
            self._campaign(_Campaign.ELECTION)
        else:
            self.become_leader()
            self.bcast_append()

    def poll(self, node_id: int, *, granted: bool) -> VoteResult:
        """Record ``node_id``'s answer (first answer wins) and tally the election."""
        self.votes.setdefault(node_id, granted)
        return vote_result(self.conf.voters, self.votes)

    def handle_vote_request(self, m: Message) -> None:
        """Grant a (pre-)vote only to a log at least as up to date as ours (Raft §5.4.1), and
        a real vote at most once per term (§5.2). The vote is recorded in the hard state,
        which the caller persists before it sends this reply (same Ready)."""
        can_vote = (self.vote == m.frm
                    or (self.vote == NONE and self.lead == NONE)
                    # A pre-vote for a future term: our vote in this term does not bind it.
                    or (m.type == MessageType.PRE_VOTE and m.term > self._term))
        resp_type = (MessageType.VOTE_RESP if m.type == MessageType.VOTE
                     else MessageType.PRE_VOTE_RESP)
        if can_vote and self.log.is_up_to_date(m.index, m.log_term):
            self.logger.info("raft %d: [term %d] granted %s", self._id, self._term,
                             m.describe())
            self.send(Message(resp_type, to=m.frm, frm=self._id, term=m.term))
            if m.type == MessageType.VOTE:
                self.election_elapsed = 0
                self.vote = m.frm
        else:
            self.logger.info("raft %d: [term %d vote %d last %d/%d] rejected %s", self._id,
                             self._term, self.vote, self.log.last_term(),
                             self.log.last_index(), m.describe())
            self.send(Message(resp_type, to=m.frm, frm=self._id, term=self._term,
                              reject=True))

    # -- role step functions ---------------------------------------------------------------------

    def step_follower(self, m: Message) -> None:
        """A follower (or learner) handles a message of its current term."""
        if m.type in _LEADER_MESSAGES:
            self.election_elapsed = 0
            self.lead = m.frm
        if m.type == MessageType.APPEND:
            self.handle_append_entries(m)
        elif m.type == MessageType.HEARTBEAT:
            self.handle_heartbeat(m)
        elif m.type == MessageType.SNAPSHOT:
            self.handle_snapshot(m)
        elif m.type == MessageType.TIMEOUT_NOW:
            self.logger.info("raft %d: [term %d] told to campaign now by %d (transfer)",
                             self._id, self._term, m.frm)
            # Leadership transfer skips the pre-vote and overrides the voters' lease.
            self.hup(_Campaign.TRANSFER)

    def step_candidate(self, m: Message) -> None:
        """A (pre-)candidate handles a message of its current term."""
        own_resp = (MessageType.PRE_VOTE_RESP if self._role == Role.PRE_CANDIDATE
                    else MessageType.VOTE_RESP)
        if m.type in _LEADER_MESSAGES:
            # Someone already won this term: follow it.
            self.become_follower(m.term, m.frm)
            self.step_follower(m)
        elif m.type == own_resp:
            result = self.poll(m.frm, granted=not m.reject)
            if result == VoteResult.WON:
                kind = (_Campaign.PRE_ELECTION if self._role == Role.PRE_CANDIDATE
                        else _Campaign.ELECTION)
                self._won(kind)
            elif result == VoteResult.LOST:
                # Stay in this term; a granted pre-vote response must not move us either.
                self.become_follower(self._term, NONE)

    def step_leader(self, m: Message) -> None:
        """The leader handles a message of its current term."""
        pr = self.progress.get(m.frm)
        if pr is None:
            return  # not (or no longer) a member
        if m.type == MessageType.APPEND_RESP:
            self.handle_append_response(m, pr)
        elif m.type == MessageType.HEARTBEAT_RESP:
            self.handle_heartbeat_response(m, pr)
        elif m.type in _LEADER_MESSAGES:
            self.logger.error("raft %d: [term %d] another leader %d in my term: %s",
                              self._id, self._term, m.frm, m.describe())

    # -- replication, leader side --------------------------------------------------------------

    def _check_can_propose(self) -> None:
        if self._role != Role.LEADER:
            raise NotLeaderError(self.lead)
        if self.removed_leader():
            raise ProposalDroppedError("this leader removed itself and is handing off")
        if self.lead_transferee != NONE:
            raise ProposalDroppedError(
                f"leadership is being transferred to {self.lead_transferee}")

    def _check_conf_change(self, change: ConfChange) -> None:
        n = change.node_id
        if n <= NONE:
            raise ValueError(f"bad node id {n}")
        members = self.conf.voters | self.conf.learners
        if change.kind == ConfChangeKind.ADD_LEARNER and n in members:
            raise ValueError(f"{n} is already a member ({self.conf.describe()})")
        if change.kind == ConfChangeKind.PROMOTE and n not in self.conf.learners:
            raise ValueError(f"{n} is not a learner ({self.conf.describe()})")
        if change.kind == ConfChangeKind.REMOVE:
            if n not in members:
                raise ValueError(f"{n} is not a member ({self.conf.describe()})")
            if self.conf.voters == {n}:
                raise ValueError(f"cannot remove {n}: it is the last voter")

    def _append_and_replicate(self, items: list[tuple[EntryKind, bytes]]) -> list[int]:
        self.wake()
        first = self.log.last_index() + 1
        self.append_entries(items)
        self.bcast_append()
        return list(range(first, first + len(items)))

    def append_entries(self, items: list[tuple[EntryKind, bytes]]) -> None:
        """Append new entries of our term to our (unstable) log. Our own Progress counts them
        only once ``advance()`` confirms they are persisted."""
        last = self.log.last_index()
        entries = [Entry(last + 1 + i, self._term, kind, data)
                   for i, (kind, data) in enumerate(items)]
        self.log.append(entries)
        for e in entries:
            self._uncommitted_sizes.append((e.index, e.size()))
            self.uncommitted_bytes += e.size()

    def _release_committed(self) -> None:
        """Free the budget of our entries the commit index reached. At commit, not at apply:
        the bound keeps a leader without a quorum from growing its log, and an entry applied
        late (the caller reads committed entries back in bounded Readies) is no such entry;
        released at apply, a lone node on a slow disk refused a stream's pipelined batches."""
        committed = self.log.committed
        sizes = self._uncommitted_sizes
        while sizes and sizes[0][0] <= committed:
            self.uncommitted_bytes -= sizes.popleft()[1]

    def maybe_commit(self) -> bool:
        """Advance the commit index to what a majority of voters has persisted, but only to an
        entry of the current term: older entries commit indirectly (Raft §5.4.2)."""
        index = majority_commit_index(
            [self.progress[v].match for v in self.conf.voters if v in self.progress])
        if index > self.log.committed and self.log.term_or_zero(index) == self._term:
            self.log.commit_to(index)
            return True
        return False

    def bcast_append(self) -> None:
        """Send what each member is missing (an empty APPEND carries the commit index)."""
        for node_id in sorted(self.progress):
            if node_id != self._id:
                self.maybe_send_append(node_id, send_if_empty=True)

    def bcast_heartbeat(self) -> None:
        """Heartbeat every member. The commit index sent is capped at what the member is
        known to have, so it never commits past its own matching log."""
        for node_id in sorted(self.progress):
            if node_id == self._id:
                continue
            pr = self.progress[node_id]
            self.send(Message(MessageType.HEARTBEAT, to=node_id, frm=self._id, term=self._term,
                              commit=min(pr.match, self.log.committed)))

    def maybe_send_append(self, to: int, *, send_if_empty: bool) -> bool:
        """Send ``to`` the entries it lacks, if its Progress allows; a SNAPSHOT instead when
        they were compacted away. Returns whether a message was sent."""
        pr = self.progress[to]
        if pr.is_paused():
            return False
        prev_index = pr.next - 1
        last = self.log.last_index()
        try:
            prev_term = self.log.term(prev_index)
            entries = self.log.entries(pr.next, last + 1, self.config.max_size_per_msg)
        except CompactedError:
            return self.maybe_send_snapshot(to, pr)
        if not entries and not send_if_empty:
            return False
        size = sum(e.size() for e in entries)
        self.send(Message(MessageType.APPEND, to=to, frm=self._id, term=self._term,
                          index=prev_index, log_term=prev_term, entries=tuple(entries),
                          commit=self.log.committed))
        if entries:
            pr.sent_entries(entries[-1].index, size)
        elif pr.state == ProgressState.PROBE:
            pr.probe_sent = True
        return True

    def maybe_send_snapshot(self, to: int, pr: Progress) -> bool:
        """Send the storage's snapshot (the log start) to a member that needs compacted
        entries; only to a member heard from recently, since snapshots can be large."""
        if not pr.recent_active:
            self.logger.debug("raft %d: not sending snapshot to inactive %d", self._id, to)
            return False
        try:
            snapshot = self.storage.snapshot()
        except SnapshotTemporarilyUnavailableError:
            self.logger.debug("raft %d: snapshot temporarily unavailable for %d", self._id, to)
            return False
        # Invariant: a compacted log has a snapshot at or past its log start.
        assert not snapshot.is_empty(), "entries compacted but storage has no snapshot"
        self.logger.info("raft %d: [term %d] sending %s to %d (%s)", self._id, self._term,
                         snapshot.describe(), to, pr.describe())
        pr.become_snapshot(snapshot.meta.index)
        self.send(Message(MessageType.SNAPSHOT, to=to, frm=self._id, term=self._term,
                          snapshot=snapshot))
        return True

    def send_timeout_now(self, to: int) -> None:
        """Tell a caught-up transfer target to campaign at once."""
        self.send(Message(MessageType.TIMEOUT_NOW, to=to, frm=self._id, term=self._term))

    def removed_leader(self) -> bool:
        """Whether we lead a membership we are no longer a voter of (we applied our own
        REMOVE). Such a leader accepts no proposals, does not count itself, does not step
        down for check-quorum, and hands leadership to the most up-to-date voter."""
        return self._role == Role.LEADER and self._id not in self.conf.voters

    def maybe_hand_off(self) -> None:
        """As a removed leader: (re)start a transfer to the voter whose log matches ours
        furthest (lowest id on a tie). Our APPENDs and heartbeats meanwhile carry the commit
        index that tells the others our removal committed; the transfer makes the target
        campaign at once, and its higher term ends our leadership."""
        if not self.removed_leader() or self.lead_transferee != NONE:
            return
        candidates = [v for v in sorted(self.conf.voters) if v in self.progress]
        if not candidates:
            return
        target = max(candidates, key=lambda v: (self.progress[v].match, -v))
        self.logger.info("raft %d: [term %d] removed: handing leadership to %d", self._id,
                         self._term, target)
        self.election_elapsed = 0
        self.lead_transferee = target
        self.bcast_append()
        if self.progress[target].match == self.log.last_index():
            self.send_timeout_now(target)

    def abort_leader_transfer(self) -> None:
        """Give up a leader transfer (timed out, target removed, or we stopped leading)."""
        self.lead_transferee = NONE

    def handle_append_response(self, m: Message, pr: Progress) -> None:
        """Move the member's Progress on an APPEND answer: back off on rejection (jumping by
        the follower's hint), or record the match, commit, and keep the pipeline full."""
        pr.recent_active = True
        if m.reject:
            self.logger.debug("raft %d: %d rejected append at %d (hint %d/%d): %s", self._id,
                              m.frm, m.index, m.reject_hint, m.log_term, pr.describe())
            next_probe = min(m.reject_hint, self.log.last_index())
            if m.log_term > 0:
                # Skip every entry of ours whose term is above the follower's term there:
                # none of them can match (log matching), so the next probe jumps past them.
                next_probe, _ = self.log.find_conflict_by_term(next_probe, m.log_term)
            if pr.maybe_decr_to(m.index, next_probe):
                if pr.state == ProgressState.REPLICATE:
                    # Not stale: what we pipelined did not arrive in order. Probe with one
                    # APPEND, and pipeline less deeply once it matches again.
                    pr.inflights.shrink()
                    pr.become_probe()
                self.maybe_send_append(m.frm, send_if_empty=True)
            return
        was_paused = pr.is_paused()
        if pr.match < m.index:
            pr.inflights.grow()
        if pr.maybe_update(m.index) or (pr.match == m.index and pr.state == ProgressState.PROBE):
            if pr.state == ProgressState.PROBE:
                pr.become_replicate()
            elif (pr.state == ProgressState.SNAPSHOT
                  and pr.match + 1 >= self.log.first_index()):
                # The member installed the snapshot (or caught up past it): replicate again.
                pr.become_probe()
                pr.become_replicate()
            elif pr.state == ProgressState.REPLICATE:
                pr.inflights.free_le(m.index)
            if self.maybe_commit():
                self.bcast_append()
            elif was_paused:
                self.maybe_send_append(m.frm, send_if_empty=False)
            # Fill the pipeline; bounded by the inflight window and by the log's end.
            for _ in range(self.config.max_inflight_msgs):
                if not self.maybe_send_append(m.frm, send_if_empty=False):
                    break
            if m.frm == self.lead_transferee and pr.match == self.log.last_index():
                self.logger.info("raft %d: %d caught up: sending TIMEOUT_NOW", self._id, m.frm)
                self.send_timeout_now(m.frm)

    def handle_heartbeat_response(self, m: Message, pr: Progress) -> None:
        """A heartbeat answer proves the member is alive: unpause it and resend if behind."""
        pr.recent_active = True
        pr.probe_sent = False
        if m.index and m.index - 1 < pr.match:
            # The member lost entries from its disk (``Config.repair_lost_tail``): what we
            # counted as matching is gone. Start again from what it still holds.
            self.logger.warning("raft %d: member %d lost entries %d-%d from disk: probing from "
                                "%d", self._id, m.frm, m.index, pr.match, m.index)
            pr.match = m.index - 1
            pr.become_probe()
        if pr.state == ProgressState.REPLICATE and pr.inflights.full():
            pr.inflights.free_first_one()
        if pr.state == ProgressState.SNAPSHOT:
            # A round trip after the snapshot went out: it was installed or lost. Probe again;
            # if still needed, the probe fails and the snapshot is sent again.
            pr.become_probe()
        if pr.match < self.log.last_index():
            self.maybe_send_append(m.frm, send_if_empty=True)

    # -- replication, follower side ------------------------------------------------------------

    def handle_append_entries(self, m: Message) -> None:
        """Accept entries that extend a log matching the leader's at (index, log_term) (Raft
        §5.3), or reject with a hint for fast backtracking."""
        if m.index < self.log.committed:
            # Everything up to our commit index matches the leader's log already.
            self.send(Message(MessageType.APPEND_RESP, to=m.frm, frm=self._id, term=self._term,
                              index=self.log.committed))
            return
        last_new = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last_new is not None:
            self.send(Message(MessageType.APPEND_RESP, to=m.frm, frm=self._id, term=self._term,
                              index=last_new))
            return
        # Hint: our last index at or below m.index whose term is at most m.log_term. Any
        # entry after it either does not exist or has a larger term, so cannot match.
        hint_index, hint_term = self.log.find_conflict_by_term(
            min(m.index, self.log.last_index()), m.log_term)
        self.logger.debug("raft %d: [term %d] rejected %s (hint %d/%d)", self._id, self._term,
                          m.describe(), hint_index, hint_term)
        self.send(Message(MessageType.APPEND_RESP, to=m.frm, frm=self._id, term=self._term,
                          index=m.index, reject=True, reject_hint=hint_index,
                          log_term=hint_term))

    def handle_heartbeat(self, m: Message) -> None:
        """Learn the commit index (capped by the leader at what we acknowledged holding) and
        answer. A commit index past our last entry means our disk lost acknowledged entries:
        commit_to asserts rather than paper over it.

        A ``quiesce`` heartbeat is not answered when we quiesce with it: our log ends at the
        leader's last entry, which is committed. Otherwise (our log differs or lags, or
        quiescence is off here) the answer is rejected, which wakes the leader: a member that keeps
        ticking must keep hearing heartbeats."""
        last = self.log.last_index()
        if m.commit > last and self.config.repair_lost_tail:
            # Our disk lost entries the leader saw us acknowledge: tell it where we end.
            self.logger.warning("raft %d: heartbeat commit %d from %d is past our last index "
                                "%d (entries lost from disk): asking for them again",
                                self._id, m.commit, m.frm, last)
            self.log.commit_to(last)
            self.send(Message(MessageType.HEARTBEAT_RESP, to=m.frm, frm=self._id,
                              term=self._term, context=m.context, reject=m.quiesce,
                              index=last + 1))
            return
        self.log.commit_to(m.commit)
        if m.quiesce:
            log = self.log
            self._quiesced = (self.config.quiesce and log.last_index() == m.index
                              and log.committed == m.index and log.match_term(m.index, m.log_term))
            if self._quiesced:
                return
        self.send(Message(MessageType.HEARTBEAT_RESP, to=m.frm, frm=self._id, term=self._term,
                          context=m.context, reject=m.quiesce))

    def handle_snapshot(self, m: Message) -> None:
        """Install the leader's log start when it is ahead of our commit index, then report
        where our log now ends."""
        if m.snapshot is None:
            self.logger.warning("raft %d: SNAPSHOT without snapshot from %d", self._id, m.frm)
            return
        if self.restore(m.snapshot):
            self.logger.info("raft %d: [commit %d] restored %s", self._id, self.log.committed,
                             m.snapshot.describe())
            index = self.log.last_index()
        else:
            index = self.log.committed
        self.send(Message(MessageType.APPEND_RESP, to=m.frm, frm=self._id, term=self._term,
                          index=index))

    def restore(self, snapshot: Snapshot) -> bool:
        """Replace our log with ``snapshot`` unless we already have what it covers. Returns
        whether a restore happened (the caller installs it via Ready.snapshot)."""
        meta = snapshot.meta
        if meta.index <= self.log.committed:
            return False
        # Invariant: only followers install snapshots (candidates became followers first).
        assert self._role == Role.FOLLOWER, f"{self._role.name} restoring a snapshot"
        if self.log.match_term(meta.index, meta.term):
            # We hold the entry the snapshot ends at: it is committed, keep our log.
            self.log.commit_to(meta.index)
            return False
        self.log.restore(snapshot)
        self.conf = meta.conf
        self.reset_progress()
        return True

    # -- membership ------------------------------------------------------------------------------

    def apply_conf_change(self, change: ConfChange, index: int) -> None:
        """Switch membership for an applied CONF_CHANGE entry at ``index``. Changes that no
        longer make sense are skipped identically on every member (they were validated when
        proposed, so this only happens if the log holds a stale duplicate)."""
        conf = self.conf.changed_by(change)
        if conf is None:
            self.logger.info("raft %d: skipped membership change %s at %d against %s",
                                self._id, change.describe(), index, self.conf.describe())
            return
        self.conf = conf
        voters, learners = conf.voters, conf.learners
        self.logger.info("raft %d: applied %s at %d: now %s", self._id, change.describe(),
                         index, self.conf.describe())
        # Progress follows membership: new members probe from our end, removed ones go.
        for node_id in list(self.progress):
            if node_id not in voters | learners:
                del self.progress[node_id]
        for node_id in sorted(voters | learners):
            pr = self.progress.get(node_id)
            if pr is None:
                pr = self._new_progress(node_id, self.log.last_index() + 1)
                pr.recent_active = True  # give it a chance (and a snapshot) before judging
                self.progress[node_id] = pr
            pr.is_learner = node_id in learners
        if self._role in (Role.CANDIDATE, Role.PRE_CANDIDATE) and self._id not in voters:
            # Removed while campaigning (the change was applied from a Ready handed out before
            # the campaign): a non-voter must not win.
            self.become_follower(self._term, NONE)
            return
        if self._role != Role.LEADER:
            return
        if self.lead_transferee not in voters:
            self.abort_leader_transfer()
        if self._id not in voters:
            # We removed ourselves. Stepping down now could wedge the group: the remaining
            # voters may not have learned that the removal committed, so they still count us,
            # and our longer log makes us refuse their votes. Keep leading without counting
            # ourselves (thesis §4.2.2) until an up-to-date voter takes over.
            self.logger.info("raft %d: no longer a voter: handing off leadership", self._id)
            self.maybe_hand_off()
        # The quorum may have shrunk: something may now be committed.
        if self.maybe_commit():
            self.bcast_append()
        else:
            for node_id in sorted(self.progress):
                if node_id != self._id:
                    self.maybe_send_append(node_id, send_if_empty=False)

    # -- helpers ---------------------------------------------------------------------------------

    def load_state(self, hs: HardState) -> None:
        """Start from a persisted hard state. The log start (``first_index() - 1``) is
        committed by definition, so a hard state whose commit lags it (a crash between
        writing a snapshot and the hard state after it) starts at the log start instead; a
        commit past the last entry means acknowledged entries are gone, and raises."""
        last = self.log.last_index()
        if hs.commit > last:
            if not self.config.repair_lost_tail:
                raise ValueError(f"hard state commit {hs.commit} is past the last index {last}")
            self.logger.warning("raft %d: hard state commit %d is past the last index %d: "
                                "entries %d-%d were lost from disk; committing only what "
                                "survived, the leader sends the rest again",
                                self._id, hs.commit, last, last + 1, hs.commit)
            hs = HardState(term=hs.term, vote=hs.vote, commit=last)
        if hs.commit < self.log.committed:
            self.logger.info("raft %d: hard state commit %d is behind the log start %d: "
                             "starting from the log start", self._id, hs.commit,
                             self.log.committed)
        self.log.committed = max(hs.commit, self.log.committed)
        self._term = hs.term
        self.vote = hs.vote

    def send(self, m: Message) -> None:
        """Queue ``m`` for the next Ready (sent by the caller after persisting)."""
        # Invariant: every message carries a term, and we never message ourselves.
        assert m.term > 0 and m.to != self._id, f"bad outgoing message {m.describe()}"
        self.msgs.append(m)
