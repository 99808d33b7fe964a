"""RaftDriver: the asyncio loop that runs MANY Raft groups of one node.

Each group is a ``RaftCore`` (pure, no I/O) plus its ``DurableLog`` and its ``StateMachine``.
The driver gives the cores time (one tick task for all groups), feeds them messages
(``receive``) and proposals (``propose``), and carries out their ``Ready`` batches.

The ordering contract (enforced in ONE place: ``rounds.Round``)
---------------------------------------------------------------
One round takes a Ready from every group that has one and hands them all to one
``rounds.Round``, the code the simulator runs too: ``start()`` sends what the cores say may
leave at once, stages every write and applies every committed entry (settling the proposals
they decide); then, if any Ready ``must_sync``, ONE ``Syncer.sync(logs)`` call makes every
staged write of the round durable (group commit: one fsync round for all groups, however many
there are); then ``finish()`` sends the rest (votes and acknowledgements promise the sync),
coalesced per peer (one ``Transport.send`` per peer per half-round, every message encoded
with the raft codec and tagged with its group id), and advances every core.

Inputs may arrive while a round waits for its sync (``receive``, ``propose``, ticks): the core
accepts them between ``ready()`` and ``advance()`` and puts their effects in the next Ready.

Proposals
---------
``propose(group, data)`` refuses at once (raises) when the node does not lead the group
(``NotLeaderError``), the leader refuses (``ProposalDroppedError``), the group is unknown or
the driver stopped. Otherwise it returns a future that

- resolves with what the group's ``StateMachine.apply`` returned for the entry, once the entry
  is committed and applied on this node;
- fails with ``EntryOverwrittenError`` when the entry at that index commits with another term
  (a new leader replaced it: it is certainly NOT in the log);
- fails with ``LeadershipLostError`` when this node stops leading the group (term or role
  change) before the entry committed: the outcome is UNKNOWN, the entry may still commit under
  the new leader (a producer retries with its idempotence keys);
- fails with ``DriverStoppedError`` / ``GroupRemovedError`` when the driver stops or the group
  is removed (outcome unknown too).

Idle groups cost nothing (quiescence, decision 0404)
----------------------------------------------------
Every group runs with ``Config.quiesce`` (unless the driver is built with ``quiesce=False``):
an idle group's leader sends a last heartbeat and the group stops ticking. The tick task
ticks only the groups that are not quiesced (an active set: quiesced groups are not even
visited), so an idle node's cost follows its peers, not its groups. What the quiesced groups
no longer tell each other, the driver tells them once per node: ``PeerLiveness`` makes sure
every peer hears from this node at least every ``ping_ticks`` (a ping, one
``(NODE_GROUP_ID, b"")`` pair, when nothing else went to that peer), and a peer silent for an
election timeout (the template's ``election_ticks``) is reported to every group with
``RaftCore.report_unreachable``: quiesced followers of a leader there wake and elect another,
a quiesced leader that lost sight of its majority wakes so check-quorum can depose it.

Bounds: the tick and ready loops do a bounded amount of work per iteration (every group at
most once per round; the core bounds bytes per Ready and in flight); pending proposals are
bounded per group (``max_pending_proposals``) on top of the core's uncommitted-bytes bound;
transports bound their queues.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
from collections.abc import Sequence
from typing import Any, Protocol

from rillet.cluster.raft import (
    CodecError,
    Config,
    NotLeaderError,
    PeerLiveness,
    ProposalDroppedError,
    RaftCore,
    RaftError,
    Ready,
)
from rillet.cluster.raft.codec import decode_message, encode_message
from rillet.cluster.rounds import (
    DriverError,
    DurableLog,
    EntryOverwrittenError,
    LeadershipLostError,
    Outbox,
    Proposal,
    RaftGroup,
    Round,
    StateMachine,
)
from rillet.cluster.transport import GroupMessage, Transport

log = logging.getLogger(__name__)

NODE_GROUP_ID = (1 << 64) - 1
"""The group id of node-level pings (``(NODE_GROUP_ID, b"")``): reserved, no Raft group may
use it. A ping is an ordinary pair on the ordinary transport, so every transport carries it
as it is; the receiving driver only notes that the sender is alive."""


# -- protocols the driver needs ----------------------------------------------------------------


class Syncer(Protocol):
    """Makes the staged writes of many logs durable at once: the group commit.

    The driver calls ``sync`` at most once per round, with every log that staged writes
    needing durability in that round, and sends nothing of the round before it returns. A disk
    implementation runs its fsyncs in ONE worker-thread call (``asyncio.to_thread``) so the
    event loop keeps serving meanwhile, and raises if any fsync failed (the driver then stops:
    a node that cannot persist must not vote or acknowledge)."""

    async def sync(self, logs: Sequence[DurableLog]) -> None:
        """Return once every write staged on ``logs`` so far is durable."""
        ...


class CountingSyncer:
    """A ``Syncer`` for in-memory logs: nothing to flush, so it only counts rounds and logs
    (tests assert group commit with ``calls``)."""

    def __init__(self) -> None:
        self.calls = 0
        self.logs_synced = 0

    async def sync(self, logs: Sequence[DurableLog]) -> None:
        """Count one shared sync covering ``logs``."""
        self.calls += 1
        self.logs_synced += len(logs)


# -- errors -------------------------------------------------------------------------------------


class DriverStoppedError(DriverError):
    """The driver stopped (or died) before the entry was applied, or refuses new work."""


class GroupRemovedError(DriverError):
    """The group was removed from this node before the entry was applied."""


class UnknownGroupError(DriverError):
    """No group with this id runs on this node."""

    retriable = False
    outcome_unknown = False


# -- the driver ---------------------------------------------------------------------------------


@dataclasses.dataclass
class DriverStats:
    """Counters for benchmarks, tests and metrics."""

    rounds: int = 0
    syncs: int = 0
    ticks: int = 0
    readies: int = 0
    sends: int = 0
    messages_out: int = 0
    messages_in: int = 0
    dropped_in: int = 0
    group_ticks: int = 0
    """Core ticks given (quiesced groups get none)."""
    pings_out: int = 0
    pings_in: int = 0
    peer_timeouts: int = 0
    """Times a peer was found silent for an election timeout."""


class RaftDriver:
    """Runs many Raft groups of node ``node_id``; see the module docstring for the contract.

    ``raft_config`` is the template for every group's ``Config`` (its ``id`` is replaced by
    ``node_id``, its ``quiesce`` by the driver's ``quiesce``: quiescence is safe only with
    the peer liveness the driver runs). ``tick_ms`` is how long one tick lasts; the
    template's ``election_ticks`` is also how long a silent peer takes to be reported
    unreachable. The driver owns ``transport``: it closes it in ``stop()``. ``round_type``
    is the class every round runs (``rounds.Round``; a test plants a bug in a subclass).
    """

    def __init__(self, node_id: int, transport: Transport, syncer: Syncer, *,
                 raft_config: Config | None = None, tick_ms: float = 100.0,
                 max_pending_proposals: int = 4096, seed: int | None = None,
                 quiesce: bool = True, round_type: type[Round] = Round) -> None:
        if tick_ms <= 0:
            raise ValueError(f"tick_ms must be positive, not {tick_ms}")
        if max_pending_proposals <= 0:
            raise ValueError("max_pending_proposals must be positive")
        self.node_id = node_id
        self.transport = transport
        self.syncer = syncer
        self.quiesce = quiesce
        self.round_type = round_type
        # Real disks can lose an acknowledged tail (a damaged segment cut on recovery): the
        # node's groups repair it by fetching again instead of refusing to start.
        self.raft_config = dataclasses.replace(raft_config or Config(id=node_id), id=node_id,
                                               quiesce=quiesce, repair_lost_tail=True)
        self.raft_config.validate()
        election_ticks = self.raft_config.election_ticks
        self._liveness = PeerLiveness(timeout_ticks=election_ticks,
                                      ping_ticks=max(1, election_ticks // 4))
        self._peers_dirty = True  # membership may have changed: recompute the peers
        self._active: dict[int, None] = {}  # groups to tick: every group not quiesced
        self.tick_s = tick_ms / 1000.0
        self.max_pending_proposals = max_pending_proposals
        self.stats = DriverStats()
        self._rng = random.Random(seed)
        self._groups: dict[int, RaftGroup] = {}
        self._dirty: dict[int, None] = {}  # groups that may have a Ready (insertion-ordered)
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = False
        self._failure: BaseException | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the tick task and the ready loop (on the running event loop)."""
        if self._tasks or self._stopped:
            raise RuntimeError("RaftDriver.start() called twice or after stop()")
        for name, coro in (("tick", self._tick_loop()), ("ready", self._ready_loop())):
            task = asyncio.create_task(coro, name=f"raft-{name}-{self.node_id}")
            task.add_done_callback(self._on_task_done)
            self._tasks.append(task)

    async def stop(self) -> None:
        """Cancel and await both tasks, fail every pending proposal, close the transport.
        Idempotent. Readies taken but not advanced are abandoned with the cores."""
        if self._stopped:
            return
        self._stopped = True
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._fail_all("driver stopped")
        await self.transport.close()

    @property
    def running(self) -> bool:
        return bool(self._tasks) and not self._stopped and self._failure is None

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        # A loop died (a storage or sync failure, a broken invariant): this node must neither
        # vote nor acknowledge any more. Refuse everything and fail what waits.
        log.critical("raft driver %d: %s task died; refusing all work", self.node_id,
                     task.get_name(), exc_info=exc)
        self._failure = exc
        self._fail_all(f"driver failed: {exc!r}")
        for other in self._tasks:
            if other is not task:
                other.cancel()

    def _fail_all(self, why: str) -> None:
        for group in self._groups.values():
            group.fail_pending(DriverStoppedError, why)

    def _check_running(self) -> None:
        if self._stopped or self._failure is not None:
            raise DriverStoppedError(f"raft driver {self.node_id} is stopped")

    # -- groups ---------------------------------------------------------------------------------

    def add_group(self, group_id: int, storage: DurableLog, machine: StateMachine, *,
                  config: Config | None = None) -> RaftCore:
        """Start a member of group ``group_id`` on this node over ``storage`` (which holds its
        persisted state: a restarted member picks up its term, vote and log from it)."""
        self._check_running()
        if group_id in self._groups:
            raise ValueError(f"group {group_id} already runs on node {self.node_id}")
        if group_id == NODE_GROUP_ID:
            raise ValueError(f"group id {group_id} is reserved for node-level pings")
        cfg = dataclasses.replace(config or self.raft_config, id=self.node_id,
                                  quiesce=self.quiesce)
        core = RaftCore(cfg, storage, random.Random(self._rng.getrandbits(64)),
                        logging.getLogger(f"{__name__}.g{group_id}"))
        self._groups[group_id] = RaftGroup(group_id, core, storage, machine)
        if core.conf_state.voters == {self.node_id}:
            # Its only voter: nobody else can be elected, so waiting out an election timeout
            # would only delay its data (a lone node, a partition of replication factor 1).
            core.campaign()
        self._active[group_id] = None
        self._peers_dirty = True
        self._mark(group_id)
        return core

    def remove_group(self, group_id: int) -> None:
        """Stop running ``group_id`` here; its pending proposals fail with GroupRemovedError.
        A Ready of it taken by a round in flight is dropped with the group."""
        group = self._groups.pop(group_id, None)
        if group is None:
            raise UnknownGroupError(f"group {group_id} does not run on node {self.node_id}")
        group.removed = True
        self._dirty.pop(group_id, None)
        self._active.pop(group_id, None)
        self._peers_dirty = True
        group.fail_pending(GroupRemovedError, "group removed")

    def groups(self) -> list[int]:
        """The ids of the groups running here."""
        return list(self._groups)

    def quiesced_groups(self) -> list[int]:
        """The ids of the groups quiesced here now (visits every group: for tests, benchmarks
        and admin pages, not for a loop)."""
        return [gid for gid, group in self._groups.items() if group.core.quiesced]

    def peers(self) -> list[int]:
        """The nodes this one shares a group with, as of the last tick."""
        return self._liveness.peers()

    def peer_down(self, peer: int) -> bool:
        """Whether ``peer`` has been silent for an election timeout (a leader this node still
        names there is probably gone: metadata should not send clients to it)."""
        return self._liveness.is_down(peer)

    def core(self, group_id: int) -> RaftCore:
        """The core of ``group_id`` (read its ``role``, ``leader``, ``commit_index``...).
        Callers must not feed it inputs directly: use the driver's methods."""
        return self._get(group_id).core

    def _get(self, group_id: int) -> RaftGroup:
        group = self._groups.get(group_id)
        if group is None:
            raise UnknownGroupError(f"group {group_id} does not run on node {self.node_id}")
        return group

    def _mark(self, group_id: int) -> None:
        self._dirty[group_id] = None
        self._wake.set()

    def _activate(self, group: RaftGroup) -> None:
        """Tick ``group`` again if an input woke it (a no-op for awake groups)."""
        if not group.core.quiesced:
            self._active[group.id] = None

    # -- inputs ---------------------------------------------------------------------------------

    def propose(self, group_id: int, data: bytes) -> asyncio.Future[Any]:
        """Propose ``data`` to ``group_id``; see the module docstring for the outcomes."""
        self._check_running()
        group = self._get(group_id)
        if len(group.pending) >= self.max_pending_proposals:
            raise ProposalDroppedError(
                f"group {group_id}: {len(group.pending)} proposals already pending")
        core = group.core
        index = core.propose(data)  # raises NotLeaderError / ProposalDroppedError
        if group.pending and group.pending[-1].term != core.term:
            group.fail_deposed()  # keep the queue ordered by (term, index)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        group.pending.append(Proposal(index, core.term, fut))
        self._active[group_id] = None  # a proposal always wakes the group
        self._mark(group_id)
        return fut

    def campaign(self, group_id: int) -> None:
        """Make this node campaign for ``group_id`` now (placement, tests, benchmarks)."""
        self._check_running()
        group = self._get(group_id)
        group.core.campaign()
        self._activate(group)
        self._mark(group_id)

    def transfer_leader(self, group_id: int, target: int) -> None:
        """Hand leadership of ``group_id`` to ``target`` (raises NotLeaderError if not ours)."""
        self._check_running()
        group = self._get(group_id)
        group.core.transfer_leader(target)
        self._activate(group)
        self._mark(group_id)

    def peer_unreachable(self, peer: int) -> None:
        """Tell every group that ``peer`` cannot be reached (``RaftCore.report_unreachable``):
        quiesced followers of a leader there wake and elect another. The driver calls it
        itself when ``peer`` has been silent for an election timeout; a transport that knows
        sooner (a refused connection) may call it too."""
        self._check_running()
        self.stats.peer_timeouts += 1
        woken = 0
        for group in self._groups.values():
            core = group.core
            was_quiet = core.quiesced
            core.report_unreachable(peer)
            if was_quiet and not core.quiesced:
                woken += 1
                self._active[group.id] = None
                self._mark(group.id)
        log.info("node %d: peer %d unreachable: %d quiesced groups woken", self.node_id, peer,
                 woken)

    def receive(self, frm: int, messages: list[GroupMessage]) -> None:
        """Messages from peer ``frm`` (the transport server calls this). Messages for unknown
        groups, undecodable or misaddressed ones are dropped and counted: the sender retries,
        and a group being created or removed is a normal race."""
        if self._stopped or self._failure is not None:
            return
        self._liveness.heard(frm)
        groups = self._groups
        active = self._active
        for group_id, buf in messages:
            group = groups.get(group_id)
            if group is None:
                if group_id == NODE_GROUP_ID:
                    self.stats.pings_in += 1
                else:
                    self.stats.dropped_in += 1
                continue
            try:
                m = decode_message(buf)
            except CodecError as exc:
                self.stats.dropped_in += 1
                log.warning("node %d: undecodable message for group %d from %d: %s",
                            self.node_id, group_id, frm, exc)
                continue
            if m.to != self.node_id or m.frm != frm:
                self.stats.dropped_in += 1
                log.warning("node %d: group %d: dropped misaddressed %s (arrived from %d)",
                            self.node_id, group_id, m.describe(), frm)
                continue
            try:
                group.core.step(m)
            except RaftError as exc:
                self.stats.dropped_in += 1
                log.info("node %d: group %d: step %s refused: %s", self.node_id, group_id,
                         m.describe(), exc)
                continue
            self.stats.messages_in += 1
            self._dirty[group_id] = None
            if group_id not in active and not group.core.quiesced:
                active[group_id] = None
        self._wake.set()

    # -- the two tasks --------------------------------------------------------------------------

    async def _tick_loop(self) -> None:
        """Every ``tick_s``, on a fixed schedule (a late tick does not push the later ones
        back; ticks missed during a long stall are skipped, not bunched): ping the peers owed
        one, report the peers gone silent, and tick every group that is not quiesced."""
        loop = asyncio.get_running_loop()
        next_at = loop.time() + self.tick_s
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            now = loop.time()
            next_at += self.tick_s
            if next_at < now:
                next_at = now + self.tick_s
            self._tick()

    def _tick(self) -> None:
        """One tick: the peer liveness, then the active groups."""
        if self._peers_dirty:
            self._refresh_peers()
        pings, silent = self._liveness.tick()
        for peer in pings:
            self.transport.send(peer, [(NODE_GROUP_ID, b"")])
            self.stats.pings_out += 1
        for peer in silent:
            log.info("node %d: nothing heard from peer %d for %d ticks", self.node_id, peer,
                     self._liveness.timeout_ticks)
            self.peer_unreachable(peer)
        groups, active, dirty = self._groups, self._active, self._dirty
        ticked = 0
        for group_id in list(active):
            group = groups.get(group_id)
            if group is None or group.core.quiesced:
                del active[group_id]
                continue
            group.core.tick()
            dirty[group_id] = None
            ticked += 1
        self.stats.ticks += 1
        self.stats.group_ticks += ticked
        if ticked:
            self._wake.set()

    def _refresh_peers(self) -> None:
        """Track the nodes that share a group with this one (after groups or membership
        changed; visits every group, so only then)."""
        peers: set[int] = set()
        for group in self._groups.values():
            conf = group.core.conf_state
            peers |= conf.voters
            peers |= conf.learners
        peers.discard(self.node_id)
        self._liveness.set_peers(peers)
        self._peers_dirty = False

    async def _ready_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._round()
            # Yield at least once per round so transports and servicers run in between.
            await asyncio.sleep(0)

    async def _round(self) -> None:
        """ONE round of the contract (``rounds.Round``), with one shared sync in the middle.
        This is the only place where Readies are taken and advanced."""
        dirty, self._dirty = self._dirty, {}
        work: list[tuple[RaftGroup, Ready]] = []
        for group_id in dirty:
            group = self._groups.get(group_id)
            if group is not None and group.core.has_ready():
                work.append((group, group.core.ready()))
        if not work:
            return
        self.stats.rounds += 1
        self.stats.readies += len(work)
        rnd = self.round_type(work, self._send)
        to_sync = rnd.start()
        if to_sync:
            await self.syncer.sync(to_sync)
            self.stats.syncs += 1
        rnd.finish()
        if rnd.membership_changed:
            self._peers_dirty = True
        for group, _rd in work:
            if not group.removed and group.core.has_ready():
                self._mark(group.id)

    def _send(self, out: Outbox) -> None:
        """Encode and send a round's messages: one ``Transport.send`` per peer."""
        liveness = self._liveness
        for peer, batch in out.items():
            self.transport.send(peer, [(gid, encode_message(m)) for gid, m in batch])
            liveness.sent(peer)
            self.stats.sends += 1
            self.stats.messages_out += len(batch)


__all__ = [
    "NODE_GROUP_ID", "CountingSyncer", "DriverError", "DriverStats", "DriverStoppedError",
    "DurableLog", "EntryOverwrittenError", "GroupRemovedError", "LeadershipLostError",
    "NotLeaderError",
    "ProposalDroppedError", "RaftDriver", "StateMachine", "Syncer", "UnknownGroupError",
]
