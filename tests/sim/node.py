"""One simulated node: the real core plus the very round the driver runs, called synchronously.

Each Ready is carried out by ``rillet.cluster.rounds.Round``, the code the asyncio driver runs
for every round, with the fsync as its own scheduled event so that time passes between writing
and the second half:

1. ``Round.start()``: send what may leave at once, write snapshot, entries, hard state to the
   disk (pending), apply the committed entries and settle the proposals they decide;
2. when `must_sync`, wait for an fsync event; only then
3. ``Round.finish()``: send what waited for the sync, `advance(ready)`.

While a Ready is between steps 1 and 3 the core keeps ticking and stepping (as a real driver's
core does while the disk works); the next Ready is taken only after `advance`.

Planted bugs of the round are Round subclasses (``planted.py``), set as a node class's
``round_type``: the simulator never has an order of its own to get wrong.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

from rillet.cluster.raft.liveness import PeerLiveness
from rillet.cluster.raft.storage import Storage
from rillet.cluster.raft.types import (
    ConfState,
    Entry,
    HardState,
    Message,
    Ready,
    Role,
    Snapshot,
)
from rillet.cluster.rounds import Outbox, Proposal, RaftGroup, Round

from .disk import SimDisk
from .invariants import Invariants, InvariantViolation
from .scheduler import Scheduler

log = logging.getLogger(__name__)

def encode_state(values: list[bytes]) -> bytes:
    """The state machine as snapshot data: the applied values, NUL-separated (values are
    ASCII tags without NUL)."""
    return b"\x00".join(values)


def decode_state(data: bytes) -> list[bytes]:
    return data.split(b"\x00") if data else []


READY_LOOPS_MAX = 64  # Readies one event drains; the rest continue in a follow-up event
GROUP_ID = 1  # the one Raft group a simulated node runs


@dataclass(frozen=True)
class NodePing:
    """A node-level ping (what the driver sends a peer it sent nothing else to): only says
    that ``frm`` is alive. Travels the same faulty links as Raft messages."""

    frm: int
    to: int

    def describe(self) -> str:
        return f"{self.frm}->{self.to} PING"


Wire = Message | NodePing


class Core(Protocol):
    """The part of RaftCore the simulator drives."""

    @property
    def id(self) -> int: ...
    @property
    def term(self) -> int: ...
    @property
    def role(self) -> Role: ...
    @property
    def leader(self) -> int: ...
    @property
    def commit_index(self) -> int: ...
    @property
    def quiesced(self) -> bool: ...
    @property
    def conf_state(self) -> ConfState: ...

    def tick(self) -> None: ...
    def report_unreachable(self, node_id: int) -> None: ...
    def step(self, msg: Message) -> None: ...
    def propose(self, data: bytes) -> int: ...
    def has_ready(self) -> bool: ...
    def ready(self) -> Ready: ...
    def advance(self, ready: Ready) -> None: ...


CoreFactory = Callable[[int, Storage, random.Random, logging.Logger], Core]


@dataclass
class NodeTiming:
    """Per-node time parameters, drawn per seed (swarm)."""

    tick_ms: int = 10
    tick_jitter_ms: int = 2
    fsync_min_ms: int = 1
    fsync_mean_ms: float = 2.0
    liveness_ticks: int = 0
    """With quiescence: report a peer unreachable after this many ticks of silence, and ping
    peers sent nothing for a quarter of it (the driver's rule). 0 = no liveness."""


@dataclass
class NodeHooks:
    """Where a node reports to the rest of the simulation."""

    send: Callable[[int, int, Message], None]
    ping: Callable[[int, int], None]
    applied: Callable[[SimNode, Entry], None]
    checker: Invariants
    crash_rng: random.Random
    torn_probability: float = 0.5
    compact_every: int = 0


@dataclass
class NodeStats:
    readies: int = 0
    fsyncs: int = 0
    applied: int = 0
    crashes: int = 0
    ticks: int = 0
    steps: int = 0
    quiesces: int = 0  # times the core went quiet (on a tick as leader, on a step otherwise)


class SimLog:
    """The node's disk as the round's ``DurableLog``: reads from the disk's storage, writes
    as disk records with the checker told at once (log matching, committed entries). With an
    atomic-snapshot disk a Ready's snapshot is held and written in one record with what
    follows it (``flush`` writes whatever is still held)."""

    def __init__(self, node: SimNode) -> None:
        self._node = node
        self._snapshot: Snapshot | None = None
        self._entries: list[Entry] = []

    def __getattr__(self, name: str) -> Any:  # the read side: the disk's MemoryStorage
        return getattr(self._node.disk.storage, name)

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        if self._node.disk.atomic_snapshot and not snapshot.is_empty():
            self._snapshot = snapshot
        else:
            self._write(snapshot, [], None)

    def append(self, entries: list[Entry]) -> None:
        if self._snapshot is not None:
            self._entries = list(entries)  # written with the snapshot, see flush()
        else:
            self._write(None, entries, None)

    def set_hard_state(self, hard_state: HardState) -> None:
        snapshot, entries = self._snapshot, self._entries
        self._snapshot, self._entries = None, []
        self._write(snapshot, entries, hard_state)

    def flush(self) -> None:
        if self._snapshot is not None:
            snapshot, entries = self._snapshot, self._entries
            self._snapshot, self._entries = None, []
            self._write(snapshot, entries, None)

    def _write(self, snapshot: Snapshot | None, entries: list[Entry],
               hard_state: HardState | None) -> None:
        node = self._node
        node.disk.write(snapshot=snapshot, entries=entries, hard_state=hard_state)
        checker = node._hooks.checker
        if entries:
            checker.on_write(node, entries)
        if hard_state is not None:
            node._written_hard = hard_state
            checker.on_committed(node, hard_state.commit)


class SimMachine:
    """The node's state machine as the round's ``StateMachine``: applied values in order,
    each apply checked against the committed history; an entry's result is its index."""

    def __init__(self, node: SimNode) -> None:
        self._node = node

    def apply(self, entries: list[Entry]) -> list[int]:
        node = self._node
        for entry in entries:
            if entry.index <= node.applied_index:
                raise InvariantViolation(f"n{node.node_id} was handed {entry.describe()} to "
                                         f"apply again (applied up to {node.applied_index})")
            node._hooks.checker.on_apply(node.node_id, node.incarnation, entry)
            node.applied_index = entry.index
            node.stats.applied += 1
            node._hooks.applied(node, entry)
        return [e.index for e in entries]

    def restore(self, snapshot: Snapshot) -> None:
        if snapshot.is_empty():
            return
        node = self._node
        node.applied_index = snapshot.meta.index
        node.state = decode_state(snapshot.data)
        node._hooks.checker.on_snapshot_restore(node.node_id, node.incarnation,
                                                node.applied_index, node.state)


class SimNode:
    """A node's life across crashes: the disk persists, the core and state machine do not."""

    round_type: type[Round] = Round
    """The round every Ready goes through: production's; planted bugs subclass it."""

    def __init__(self, node_id: int, disk: SimDisk, scheduler: Scheduler,
                 factory: CoreFactory, hooks: NodeHooks, timing: NodeTiming,
                 tick_rng: random.Random, disk_rng: random.Random,
                 core_rng: random.Random) -> None:
        self.node_id = node_id
        self.disk = disk
        self._scheduler = scheduler
        self._factory = factory
        self._hooks = hooks
        self._timing = timing
        self._tick_rng = tick_rng
        self._disk_rng = disk_rng
        self._core_rng = core_rng
        self.core: Core | None = None
        self.group: RaftGroup | None = None
        self.incarnation = 0
        self.applied_index = 0  # the state machine's last applied index (volatile)
        self.state: list[bytes] = []  # the state machine: applied NORMAL data, in order
        self._inflight: Ready | None = None
        self._round: Round | None = None
        self._written_hard = HardState()
        self.stats = NodeStats()
        self.logger = logging.getLogger(f"tests.sim.core.n{node_id}")
        self.removed = False  # set by the simulation once a REMOVE of this node applied
        self.liveness: PeerLiveness | None = None

    # -- NodeView (what the invariant checker reads) ----------------------------------------

    @property
    def id(self) -> int:
        return self.node_id

    @property
    def up(self) -> bool:
        return self.core is not None

    @property
    def term(self) -> int:
        return self.core.term if self.core is not None else 0

    @property
    def role(self) -> Role:
        return self.core.role if self.core is not None else Role.FOLLOWER

    @property
    def commit_index(self) -> int:
        return self.core.commit_index if self.core is not None else 0

    def log_entry(self, index: int) -> Entry | None:
        return self.disk.entry(index)

    def last_log_index(self) -> int:
        return self.disk.storage.last_index()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Build a fresh core from what the disk holds durably (all of it, after a crash)."""
        assert self.core is None, f"n{self.node_id} started twice"
        self.incarnation += 1
        hard, _conf = self.disk.storage.initial_state()
        self._hooks.checker.on_restart(self.node_id, hard.term)
        self._written_hard = hard
        snap = self.disk.storage.snapshot()
        self.applied_index = snap.meta.index
        self.state = decode_state(snap.data)
        self._hooks.checker.on_snapshot_restore(self.node_id, self.incarnation,
                                                self.applied_index, self.state)
        self.core = self._factory(self.node_id, self.disk.storage, self._core_rng, self.logger)
        self.group = RaftGroup(GROUP_ID, self.core, SimLog(self),  # type: ignore[arg-type]
                               SimMachine(self))
        self._inflight = None
        self._round = None
        ticks = self._timing.liveness_ticks
        self.liveness = PeerLiveness(ticks, max(1, ticks // 4)) if ticks else None
        first = self._tick_rng.randrange(self._timing.tick_ms)
        self._schedule_tick(first)
        self._hooks.checker.observe(self)

    def crash(self) -> str:
        """Stop now: the core and state machine are gone, unsynced writes (mostly) too."""
        assert self.core is not None, f"n{self.node_id} crashed while down"
        self.core = None
        self.group = None  # its waiting proposals die with it, unanswered (outcome unknown)
        self._inflight = None
        self._round = None
        self.stats.crashes += 1
        report = self.disk.crash(self._hooks.crash_rng, self._hooks.torn_probability)
        self._hooks.checker.observe(self)
        return report.describe()

    def _alive(self, incarnation: int) -> bool:
        return self.core is not None and self.incarnation == incarnation

    # -- inputs ------------------------------------------------------------------------------

    def _schedule_tick(self, delay_ms: int) -> None:
        incarnation = self.incarnation

        def tick() -> None:
            if not self._alive(incarnation):
                return
            core = self.core
            assert core is not None
            self.stats.ticks += 1
            self._tick_liveness(core)
            was_quiet = core.quiesced
            quiet = was_quiet and self._inflight is None and not core.has_ready()
            core.tick()
            self.stats.quiesces += core.quiesced and not was_quiet
            if quiet and (core.has_ready() or not core.quiesced):
                raise InvariantViolation(f"n{self.node_id}: a quiesced {core.role.name} of "
                                         f"term {core.term} woke or handed out work on a tick")
            self._hooks.checker.observe(self)
            self._process()
            jitter = self._timing.tick_jitter_ms
            self._schedule_tick(self._timing.tick_ms
                                + self._tick_rng.randint(-jitter, jitter))

        self._scheduler.schedule(delay_ms, "tick", tick, node=self.node_id)

    def _tick_liveness(self, core: Core) -> None:
        """The driver's node-level liveness: ping idle links, report silent peers."""
        live = self.liveness
        if live is None:
            return
        conf = core.conf_state
        live.set_peers((conf.voters | conf.learners) - {self.node_id})
        pings, silent = live.tick()
        for peer in pings:
            self._hooks.ping(self.node_id, peer)
        for peer in silent:
            self._scheduler.note("peer-silent", node=self.node_id, subject=f"n{peer}")
            core.report_unreachable(peer)

    def heard_from(self, peer: int) -> None:
        """A node ping arrived (dropped when the node is down)."""
        if self.core is not None and self.liveness is not None:
            self.liveness.heard(peer)

    def receive(self, msg: Message) -> None:
        """A delivered message; dropped when the node is down."""
        if self.core is None:
            return
        if self.liveness is not None:
            self.liveness.heard(msg.frm)
        self.stats.steps += 1
        was_quiet = self.core.quiesced
        self.core.step(msg)
        self.stats.quiesces += self.core.quiesced and not was_quiet
        self._hooks.checker.observe(self)
        self._process()

    def propose(self, data: bytes) -> tuple[int, Future[Any]]:
        """Propose on this node's core (raises the core's errors, e.g. NotLeaderError); the
        entry's index and the future the round settles, as the driver's ``propose`` does."""
        assert self.core is not None and self.group is not None
        group = self.group
        index = self.core.propose(data)
        if group.pending and group.pending[-1].term != self.core.term:
            group.fail_deposed()  # keep the queue ordered by (term, index)
        future: Future[Any] = Future()
        group.pending.append(Proposal(index, self.core.term, future))
        self._hooks.checker.observe(self)
        self._process()
        return index, future

    def poke(self) -> None:
        """Check and run Ready handling after something called the core directly."""
        self._hooks.checker.observe(self)
        self._process()

    # -- Ready handling ----------------------------------------------------------------------

    def _process(self) -> None:
        for _ in range(READY_LOOPS_MAX):
            core = self.core
            if core is None or self._inflight is not None or not core.has_ready():
                return
            assert self.group is not None
            rd = core.ready()
            self.stats.readies += 1
            self._inflight = rd
            self._check_must_sync(rd)
            rnd = self._round = self.round_type([(self.group, rd)], self._send)
            to_sync = rnd.start()
            self.group.log.flush()  # type: ignore[attr-defined]
            if core.role == Role.LEADER:
                self._hooks.checker.on_leader_log_current(self)
            if to_sync:
                self._schedule_fsync(rd)
                return
            self._finish(rd)
        # Still work left (e.g. committed entries handed out one per Ready): continue in a
        # new event, so other events interleave as they would with a real driver.
        incarnation = self.incarnation

        def more() -> None:
            if self._alive(incarnation):
                self._process()

        self._scheduler.schedule(0, "ready-more", more, node=self.node_id)

    def _check_must_sync(self, rd: Ready) -> None:
        """The contract: entries, a snapshot, or a new term or vote must be fsynced."""
        hs = rd.hard_state
        changed = hs is not None and (hs.term, hs.vote) != (self._written_hard.term,
                                                             self._written_hard.vote)
        needs = bool(rd.entries) or (rd.snapshot is not None) or changed
        if needs and not rd.must_sync:
            raise InvariantViolation(f"n{self.node_id} Ready must_sync=False but it carries "
                                     f"durable state: {rd.describe()}")

    def _schedule_fsync(self, rd: Ready) -> None:
        incarnation = self.incarnation
        delay = self._timing.fsync_min_ms + int(
            self._disk_rng.expovariate(1.0 / self._timing.fsync_mean_ms))

        def fsync() -> None:
            if not self._alive(incarnation) or self._inflight is not rd:
                return
            self.disk.fsync()
            self.stats.fsyncs += 1
            self._hooks.checker.on_durable(self.node_id, self.disk.durable_hard_state().term)
            self._finish(rd)
            self._process()

        self._scheduler.schedule(delay, "fsync", fsync, node=self.node_id)

    def _send(self, out: Outbox) -> None:
        live = self.liveness
        for peer, batch in out.items():
            for _group, msg in batch:
                self._hooks.send(self.node_id, peer, msg)
            if live is not None:
                live.sent(peer)

    def _finish(self, rd: Ready) -> None:
        core = self.core
        rnd = self._round
        assert core is not None and rnd is not None and rnd.work[0][1] is rd
        rnd.finish()
        self._inflight = None
        self._round = None
        self._hooks.checker.observe(self)
        self._maybe_compact(core)

    def _maybe_compact(self, core: Core) -> None:
        """Retention: move the log start up to the applied index, with the state machine as
        the snapshot, so lagging nodes must be sent a snapshot instead of entries."""
        every = self._hooks.compact_every
        storage = self.disk.storage
        if not every or self.applied_index - (storage.first_index() - 1) < every:
            return
        if self.applied_index > storage.last_index():
            return  # applied past what was written? then the checks above already failed
        conf = core.conf_state  # membership at the applied index
        self.disk.compact(self.applied_index, conf, encode_state(self.state))
        self._scheduler.note("compact", node=self.node_id, subject=f"to {self.applied_index}")

