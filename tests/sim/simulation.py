"""One simulated cluster run: build the nodes, run the faulty safety phase, then the healed
liveness phase, with the invariants checked after every event.

The seed is the only input besides the options (which themselves are drawn from the seed
unless given): rerunning a seed replays the run event for event.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from rillet.cluster.raft import codec
from rillet.cluster.raft.errors import NotLeaderError, RaftError
from rillet.cluster.raft.storage import Storage
from rillet.cluster.raft.types import (
    ConfChange,
    ConfChangeKind,
    ConfState,
    Entry,
    EntryKind,
    Message,
    MessageType,
    Role,
)

from .disk import SimDisk
from .invariants import Invariants, InvariantViolation
from .network import LinkFaults, Network
from .node import Core, CoreFactory, NodeHooks, NodePing, NodeTiming, SimNode, Wire
from .options import LIVENESS_TICKS, TICK_MS, Options
from .scheduler import Scheduler
from .seeds import derive

log = logging.getLogger(__name__)

EVENTS_MAX_PER_MS = 200  # a bound on events per simulated millisecond, for every run loop
NODE_IDS_MAX = 7  # membership changes never go past node id 7
OPERATOR_MS = 50  # how often the simulated operator looks for removed nodes to stop


class SimulationFailure(AssertionError):
    """A run broke an invariant or missed its liveness budget; the message says how to
    reproduce it and shows the last events."""


class LivenessFailure(AssertionError):
    """The healed cluster did not converge within the liveness budget."""


def core_factory(core_class: type, options: Options) -> CoreFactory:
    """Build cores of `core_class` (RaftCore or a planted-bug subclass) with the seed's
    configuration."""
    from rillet.cluster.raft.core import Config

    def make(node_id: int, storage: Storage, rng: random.Random,
             logger: logging.Logger) -> Core:
        config = Config(id=node_id, election_ticks=options.election_ticks,
                        pre_vote=options.pre_vote, check_quorum=options.check_quorum,
                        max_size_per_msg=options.max_size_per_msg,
                        max_inflight_msgs=options.max_inflight_msgs,
                        max_committed_bytes_per_ready=options.max_committed_bytes_per_ready,
                        quiesce=options.quiesce)
        core: Core = core_class(config, storage, rng, logger)
        return core

    return make


_PING = b"P"  # codec messages start with their version byte (1), never with this


def encode_wire(msg: Wire) -> bytes:
    """A Raft message in the codec's bytes, or a node ping as ``P`` + from + to."""
    if isinstance(msg, NodePing):
        return _PING + msg.frm.to_bytes(8, "big") + msg.to.to_bytes(8, "big")
    return codec.encode_message(msg)


def decode_wire(buf: bytes) -> Wire:
    if buf[:1] == _PING:
        return NodePing(int.from_bytes(buf[1:9], "big"), int.from_bytes(buf[9:17], "big"))
    return codec.decode_message(buf)


def default_core_factory(options: Options) -> CoreFactory:
    """The real RaftCore with the seed's configuration."""
    from rillet.cluster.raft.core import RaftCore

    return core_factory(RaftCore, options)


@dataclass
class Proposal:
    value: bytes
    node: int
    incarnation: int
    index: int
    acked: bool = False
    failed: bool = False  # its future failed (leadership lost...): the outcome is unknown


@dataclass
class RunResult:
    """What a passing run did, for the runner's summary line and for tests."""

    seed: int
    options: Options
    events: int
    sim_ms: int
    proposals: int
    acked: int
    leaders: int
    crashes: int
    conf: ConfState
    liveness_ms: int
    stats: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        return (f"seed={self.seed} ok events={self.events} sim_ms={self.sim_ms} "
                f"proposals={self.proposals} acked={self.acked} terms_with_leader="
                f"{self.leaders} crashes={self.crashes} liveness_ms={self.liveness_ms} "
                + (f"quiesces={self.stats.get('quiesces', 0)} " if self.options.quiesce else "")
                + f"final {self.conf.describe()}")


def reproduce_command(seed: int, bug: str | None = None,
                      overrides: list[str] | None = None, scenario: str | None = None) -> str:
    """The one command that replays `seed` exactly, printing every event."""
    extra = f" --scenario {scenario}" if scenario else ""
    extra += f" --bug {bug}" if bug else ""
    extra += "".join(f" --set {item}" for item in overrides or [])
    return f".venv/bin/python -m tests.sim.run --seed {seed}{extra} -v"


class Simulation:
    """A cluster of SimNodes on one scheduler, network and set of disks."""

    def __init__(self, seed: int, options: Options | None = None, *,
                 core_factory: CoreFactory | None = None,
                 node_class: type[SimNode] = SimNode, bug: str | None = None,
                 overrides: list[str] | None = None,
                 verbose: Callable[[str], None] | None = None) -> None:
        self.seed = seed
        self.bug = bug
        self.overrides = overrides or []
        self.scenario: str | None = None  # set by the runner for scripted runs
        self.options = (options or Options.swarm(seed, derive(seed, "options"))).override(
            self.overrides)
        opts = self.options
        self.scheduler = Scheduler(verbose=verbose)
        self.checker = Invariants()
        self.checker.bind(lambda node_id: self.nodes[node_id])
        self._workload_rng = derive(seed, "workload")
        self._fault_rng = derive(seed, "faults")
        self._tick_rng = derive(seed, "ticks")
        self._disk_rng = derive(seed, "disk")
        self._node_rng = derive(seed, "nodes")
        self.network: Network[Wire] = Network(
            self.scheduler, derive(seed, "network"),
            encode=encode_wire, decode=decode_wire, deliver=self._deliver,
            defaults=LinkFaults(drop=opts.drop, duplicate=opts.duplicate,
                                delay_min_ms=opts.delay_min_ms,
                                delay_mean_ms=opts.delay_mean_ms, fifo=not opts.reorder))
        self._factory = core_factory or default_core_factory(opts)
        self._node_class = node_class
        self.genesis = ConfState(voters=frozenset(range(1, opts.nodes + 1)))
        self.nodes: dict[int, SimNode] = {}
        self.proposals: dict[bytes, Proposal] = {}
        self._next_value = 0
        self.phase = "safety"
        # The membership mirror: the committed sequence's conf changes, applied in order.
        self.conf = self.genesis
        self._conf_applied = 0
        self._conf_pending_index = 0
        self._next_node_id = opts.nodes + 1
        self._removals: list[tuple[int, int]] = []  # (node, index of its REMOVE entry)
        for node_id in sorted(self.genesis.voters):
            self._add_node(node_id)

    # -- building ----------------------------------------------------------------------------

    def _add_node(self, node_id: int) -> SimNode:
        opts = self.options
        hooks = NodeHooks(send=self._send, ping=self._ping, applied=self._on_applied,
                          checker=self.checker, crash_rng=self._disk_rng,
                          torn_probability=opts.torn_probability,
                          compact_every=opts.compact_every)
        timing = NodeTiming(tick_ms=TICK_MS, tick_jitter_ms=opts.tick_jitter_ms,
                            fsync_mean_ms=opts.fsync_mean_ms,
                            liveness_ticks=opts.election_ticks if opts.quiesce else 0)
        disk = SimDisk(node_id, self.genesis, atomic_snapshot=opts.atomic_snapshot)
        node = self._node_class(node_id, disk, self.scheduler,
                                self._factory, hooks, timing, self._tick_rng, self._disk_rng,
                                random.Random(self._node_rng.getrandbits(64)))
        self.nodes[node_id] = node
        node.start()
        return node

    def _send(self, frm: int, to: int, msg: Message) -> None:
        """Every message leaves through here: the network, plus one targeted fault."""
        self.network.send(frm, to, msg)
        opts = self.options
        if (msg.type == MessageType.VOTE_RESP and not msg.reject and opts.crashes
                and self.phase == "safety" and opts.reboot_after_vote
                and self._fault_rng.random() < opts.reboot_after_vote):
            # A voter that reboots mid-election must still remember its vote (Raft §5.2:
            # the vote is persisted before the reply). Come back while the election runs.
            self.scheduler.schedule(self._fault_rng.randint(0, 3), "reboot-after-vote",
                                    self._reboot_action(frm), node=frm)

    def _ping(self, frm: int, to: int) -> None:
        """A node-level ping (quiescence seeds): through the same faulty links as Raft."""
        self.network.send(frm, to, NodePing(frm, to))

    def _reboot_action(self, node_id: int) -> Callable[[], None]:
        def reboot() -> None:
            node = self.nodes[node_id]
            if self.phase != "safety" or not node.up:
                return
            report = node.crash()
            self.scheduler.note("reboot", node=node_id, subject=report)
            self.scheduler.schedule(self._fault_rng.randint(1, 15), "restart",
                                    self._restart_action(node_id), node=node_id)
        return reboot

    def _deliver(self, to: int, msg: Wire) -> None:
        node = self.nodes.get(to)
        if node is None:
            return
        if isinstance(msg, NodePing):
            node.heard_from(msg.frm)
        else:
            node.receive(msg)

    # -- observation -------------------------------------------------------------------------

    def leaders(self) -> list[SimNode]:
        """Up nodes that believe they lead, highest term first."""
        found = [n for n in self.nodes.values() if n.up and n.role == Role.LEADER]
        return sorted(found, key=lambda n: (-n.term, n.node_id))

    def members(self) -> list[int]:
        return sorted(self.conf.voters | self.conf.learners)

    def _on_applied(self, node: SimNode, entry: Entry) -> None:
        if entry.kind == EntryKind.NORMAL and entry.data:
            node.state.append(entry.data)
        if entry.index == self._conf_applied + 1:
            self._conf_applied = entry.index
            if entry.kind == EntryKind.CONF_CHANGE:
                self._mirror_conf_change(codec.decode_conf_change(entry.data))

    def _mirror_conf_change(self, cc: ConfChange) -> None:
        """Follow the core's documented rule: a change that no longer makes sense is skipped."""
        voters, learners = set(self.conf.voters), set(self.conf.learners)
        if cc.kind == ConfChangeKind.ADD_LEARNER and cc.node_id not in voters | learners:
            learners.add(cc.node_id)
        elif cc.kind == ConfChangeKind.PROMOTE and cc.node_id in learners:
            learners.discard(cc.node_id)
            voters.add(cc.node_id)
        elif cc.kind == ConfChangeKind.REMOVE and cc.node_id in voters | learners:
            voters.discard(cc.node_id)
            learners.discard(cc.node_id)
            self._removals.append((cc.node_id, self._conf_applied))
        self.conf = ConfState(frozenset(voters), frozenset(learners))
        self.scheduler.note("conf", subject=self.conf.describe())

    def _schedule_operator(self) -> None:
        self.scheduler.schedule(OPERATOR_MS, "operator", self._operator_event)

    def _operator_event(self) -> None:
        """Stop a removed node once every remaining member has durably recorded a commit
        index that covers its removal. Stopping it earlier can wedge the group for good: a
        member that crashes before its commit index is durable restarts with the old
        membership and needs the removed node's vote (an operator must wait for this too)."""
        self._schedule_operator()
        waiting = []
        for node_id, index in self._removals:
            members = [self.nodes[m] for m in self.members() if m in self.nodes]
            if all(m.disk.durable_hard_state().commit >= index for m in members):
                node = self.nodes[node_id]
                node.removed = True
                if node.up:
                    node.crash()
                self.scheduler.note("stopped-removed", node=node_id)
            else:
                waiting.append((node_id, index))
        self._removals = waiting

    # -- the run -----------------------------------------------------------------------------

    def run(self) -> RunResult:
        """Safety phase then liveness phase; raises SimulationFailure with a report."""
        try:
            self._safety_phase()
            liveness_ms = self._liveness_phase()
        except InvariantViolation as exc:
            raise SimulationFailure(self.report(f"invariant violated: {exc}")) from exc
        except LivenessFailure as exc:
            raise SimulationFailure(self.report(f"liveness failure: {exc}")) from exc
        except Exception as exc:  # any crash of a core is a finding: report it with the seed
            raise SimulationFailure(self.report(f"{type(exc).__name__}: {exc}")) from exc
        return RunResult(
            seed=self.seed, options=self.options, events=self.scheduler.events_run,
            sim_ms=self.scheduler.now_ms, proposals=len(self.proposals),
            acked=sum(p.acked for p in self.proposals.values()),
            leaders=len(self.checker.leader_of_term),
            crashes=sum(n.stats.crashes for n in self.nodes.values()), conf=self.conf,
            liveness_ms=liveness_ms,
            stats={"sent": self.network.stats.sent, "dropped": self.network.stats.dropped,
                   "duplicated": self.network.stats.duplicated,
                   "clogged": self.network.stats.clogged,
                   "quiesces": sum(n.stats.quiesces for n in self.nodes.values())})

    def _safety_phase(self) -> None:
        opts = self.options
        self._schedule_proposal()
        self._schedule_fault()
        if opts.membership:
            self._schedule_membership()
            self._schedule_operator()
        if opts.transfers:
            self._schedule_transfer()
        ok = self.scheduler.run_for(opts.safety_ms, EVENTS_MAX_PER_MS * opts.safety_ms)
        if not ok:
            raise AssertionError(f"safety phase exceeded {EVENTS_MAX_PER_MS} events per ms")

    def _liveness_phase(self) -> int:
        """Heal everything and restart everyone: the cluster must converge in budget."""
        self.phase = "liveness"
        start_ms = self.scheduler.now_ms
        self.scheduler.note("phase", subject="liveness: heal, restart all")
        self.network.heal()
        for node_id in sorted(self.nodes):
            node = self.nodes[node_id]
            if not node.up and not node.removed:
                node.start()
        budget_ms = LIVENESS_TICKS * TICK_MS
        deadline = start_ms + budget_ms
        max_events = EVENTS_MAX_PER_MS * budget_ms
        fresh: list[Proposal] = []

        def converged() -> bool:
            leaders = self.leaders()
            if not leaders:
                return False
            if not fresh or not self._proposal_alive(fresh[-1]):
                if len(fresh) < 1000:
                    self._try_fresh(leaders[0], fresh)
                return False
            if not fresh[-1].acked:
                return False
            target = max([fresh[-1].index] + [p.index for p in self.proposals.values()
                                               if p.acked])
            for node_id in self.members():
                node = self.nodes.get(node_id)
                if node is None or not node.up or node.applied_index < target:
                    return False
            return True

        def until() -> bool:
            return converged() or self.scheduler.now_ms > deadline

        self.scheduler.run_until(until, max_events)
        if not converged():
            raise LivenessFailure(self._liveness_report(budget_ms, fresh))
        self._final_checks()
        return self.scheduler.now_ms - start_ms

    def _proposal_alive(self, proposal: Proposal) -> bool:
        """A fresh proposal can still be acknowledged: its future has not failed and its node
        still leads in the same life."""
        node = self.nodes[proposal.node]
        return proposal.acked or (not proposal.failed and node.up
                                  and node.incarnation == proposal.incarnation
                                  and node.role == Role.LEADER)

    def _try_fresh(self, leader: SimNode, fresh: list[Proposal]) -> None:
        proposal = self._propose(leader, tag="fresh")
        if proposal is not None:
            fresh.append(proposal)

    def _liveness_report(self, budget_ms: int, fresh: list[Proposal]) -> str:
        lines = [f"no convergence within {LIVENESS_TICKS} ticks ({budget_ms} ms)",
                 f"members {self.conf.describe()} fresh proposals tried: {len(fresh)}"]
        for node_id in sorted(self.nodes):
            node = self.nodes[node_id]
            lines.append(f"  n{node_id} up={node.up} removed={node.removed} term={node.term} "
                         f"role={node.role.name} commit={node.commit_index} "
                         f"applied={node.applied_index} {node.disk.describe()}")
        return "\n".join(lines)

    def _final_checks(self) -> None:
        """Every acknowledged value is committed, at its index, and applied on every member."""
        for value in sorted(self.proposals):
            proposal = self.proposals[value]
            if not proposal.acked:
                continue
            record = self.checker.committed.get(proposal.index)
            if record is None or record.entry.data != value:
                raise InvariantViolation(f"acknowledged {value!r} at index {proposal.index} "
                                         f"is not the committed entry there")

    # -- workload ----------------------------------------------------------------------------

    def _schedule_proposal(self) -> None:
        delay = int(self._workload_rng.expovariate(1.0 / self.options.propose_mean_ms))
        self.scheduler.schedule(delay, "propose", self._proposal_event)

    def _proposal_event(self) -> None:
        if self.phase != "safety":
            return
        self._schedule_proposal()
        up = [n for n in sorted(self.nodes) if self.nodes[n].up]
        if not up:
            return
        leaders = self.leaders()
        if leaders and self._workload_rng.random() < 0.85:
            # Any node that believes it leads, stale leaders included (clients with an old
            # leader cache do exactly that).
            target = self._workload_rng.choice(leaders)
        else:
            target = self.nodes[self._workload_rng.choice(up)]
        self._propose(target, tag="v")

    def propose_to(self, node: SimNode, tag: str) -> Proposal | None:
        """Propose a fresh unique value on `node`; None when it refuses (not leader...)."""
        return self._propose(node, tag)

    def _propose(self, node: SimNode, tag: str) -> Proposal | None:
        self._next_value += 1
        value = f"{tag}{self._next_value}".encode()
        try:
            index, future = node.propose(value)
        except NotLeaderError:
            self.scheduler.note("propose-refused", node=node.node_id, subject="not leader")
            return None
        except RaftError as exc:
            self.scheduler.note("propose-refused", node=node.node_id, subject=str(exc))
            return None
        proposal = Proposal(value, node.node_id, node.incarnation, index)
        self.proposals[value] = proposal
        future.add_done_callback(lambda f: self._answered(proposal, f))
        self.scheduler.note("proposed", node=node.node_id,
                            subject=f"{value.decode()} at {index}")
        return proposal

    def _answered(self, proposal: Proposal, future: Future[Any]) -> None:
        """The round settled a proposal's future: acknowledged, or failed."""
        if future.exception() is not None:
            proposal.failed = True
            self.scheduler.note("proposal-failed", node=proposal.node,
                                subject=f"{proposal.value.decode()}: {future.exception()}")
            return
        if future.result() != proposal.index:
            raise InvariantViolation(f"{proposal.value!r} proposed at {proposal.index} was "
                                     f"answered with the result of entry {future.result()}")
        proposal.acked = True

    def _schedule_membership(self) -> None:
        delay = int(self._workload_rng.expovariate(1.0 / 400.0))
        self.scheduler.schedule(delay, "membership", self._membership_event)

    def _membership_event(self) -> None:
        if self.phase != "safety":
            return
        self._schedule_membership()
        leaders = self.leaders()
        if not leaders or self._conf_pending_index > self._conf_applied:
            return
        leader = leaders[0]
        assert leader.core is not None
        rng = self._workload_rng
        conf = leader.core.conf_state
        learners = sorted(conf.learners)
        voters = sorted(conf.voters)
        if learners:
            cc = ConfChange(ConfChangeKind.PROMOTE, rng.choice(learners))
        elif len(voters) < 5 and self._next_node_id <= NODE_IDS_MAX and rng.random() < 0.6:
            cc = ConfChange(ConfChangeKind.ADD_LEARNER, self._next_node_id)
        elif len(voters) > 1:
            cc = ConfChange(ConfChangeKind.REMOVE, rng.choice(voters))
        else:
            return
        try:
            index = leader.core.propose_conf_change(cc)  # type: ignore[attr-defined]
        except (RaftError, ValueError) as exc:
            self.scheduler.note("conf-refused", node=leader.node_id,
                                subject=f"{cc.describe()}: {exc}")
            return
        self._conf_pending_index = index
        self.scheduler.note("conf-proposed", node=leader.node_id,
                            subject=f"{cc.describe()} at {index}")
        if cc.kind == ConfChangeKind.ADD_LEARNER:
            self._next_node_id += 1
            self._add_node(cc.node_id)
        leader.poke()

    def _schedule_transfer(self) -> None:
        delay = int(self._workload_rng.expovariate(1.0 / 500.0))
        self.scheduler.schedule(delay, "transfer", self._transfer_event)

    def _transfer_event(self) -> None:
        if self.phase != "safety":
            return
        self._schedule_transfer()
        leaders = self.leaders()
        if not leaders:
            return
        leader = leaders[0]
        assert leader.core is not None
        voters = leader.core.conf_state.voters
        others = [v for v in sorted(voters) if v != leader.node_id]
        if not others:
            return
        target = self._workload_rng.choice(others)
        try:
            leader.core.transfer_leader(target)  # type: ignore[attr-defined]
        except (RaftError, ValueError) as exc:
            self.scheduler.note("transfer-refused", node=leader.node_id, subject=str(exc))
            return
        self.scheduler.note("transfer", node=leader.node_id, subject=f"to n{target}")
        leader.poke()

    # -- faults ------------------------------------------------------------------------------

    def _schedule_fault(self) -> None:
        delay = int(self._fault_rng.expovariate(1.0 / self.options.fault_mean_ms))
        self.scheduler.schedule(delay, "fault", self._fault_event)

    def _fault_event(self) -> None:
        if self.phase != "safety":
            return
        self._schedule_fault()
        opts = self.options
        rng = self._fault_rng
        ids = sorted(self.nodes)
        actions: list[str] = []
        if opts.crashes:
            actions += ["crash", "crash", "reboot", "reboot", "power-failure"]
        if opts.partitions and len(ids) > 1:
            actions += ["partition", "cut", "isolate", "isolate-leader", "isolate-leader",
                        "split", "heal", "heal", "heal"]
        if opts.swizzle and len(ids) > 1:
            actions += ["swizzle"]
        if not actions:
            return
        action = rng.choice(actions)
        if action in ("crash", "reboot"):
            up = [n for n in ids if self.nodes[n].up]
            if not up:
                return
            # Half the time the leader: losing a leader's unsynced tail is where it hurts.
            leaders = self.leaders()
            if leaders and rng.random() < 0.5:
                victim = leaders[0]
            else:
                victim = self.nodes[rng.choice(up)]
            report = victim.crash()
            self.scheduler.note(action, node=victim.node_id, subject=report)
            # A reboot comes back at once, often inside the same election: state that was
            # promised but not fsynced (a vote, an acknowledged entry) is visibly missing.
            down_ms = (rng.randint(1, 30) if action == "reboot"
                       else int(rng.expovariate(1.0 / opts.down_mean_ms)))
            self.scheduler.schedule(down_ms, "restart", lambda: self._restart(victim),
                                    node=victim.node_id)
        elif action == "power-failure":
            # Several nodes lose power at the same instant (a rack, a zone): whatever was
            # acknowledged but not fsynced is gone from all of them at once.
            up = [n for n in ids if self.nodes[n].up]
            if not up:
                return
            victims = sorted(rng.sample(up, rng.randint(max(1, len(up) // 2), len(up))))
            for node_id in victims:
                report = self.nodes[node_id].crash()
                self.scheduler.note("power-failure", node=node_id, subject=report)
                self.scheduler.schedule(rng.randint(1, 50), "restart",
                                        self._restart_action(node_id), node=node_id)
        elif action == "partition":
            a, b = rng.sample(ids, 2)
            self.network.partition(a, b)
            self.scheduler.note("partition", subject=f"{a}<->{b}")
        elif action == "cut":
            a, b = rng.sample(ids, 2)
            self.network.cut(a, b)
            self.scheduler.note("cut", subject=f"{a}->{b}")
        elif action == "isolate":
            a = rng.choice(ids)
            self.network.isolate(a, ids)
            self.scheduler.note("isolate", node=a)
        elif action == "isolate-leader":
            # A cut-off leader keeps taking proposals it can never commit: the divergent
            # uncommitted suffixes that Raft's commitment rule (Figure 8) is about.
            leaders = self.leaders()
            if leaders:
                a = leaders[0].node_id
                self.network.isolate(a, ids)
                self.scheduler.note("isolate-leader", node=a)
        elif action == "split":
            size = rng.randint(1, len(ids) // 2)
            minority = sorted(rng.sample(ids, size))
            self.network.split(minority, ids)
            self.scheduler.note("split", subject=f"minority={minority}")
        elif action == "heal":
            self.network.heal_partitions()
            self.scheduler.note("heal")
        elif action == "swizzle":
            self._swizzle(ids)

    def _swizzle(self, ids: list[int]) -> None:
        """Clog a random subset of nodes one at a time, then unclog them in random order."""
        rng = self._fault_rng
        chosen = rng.sample(ids, rng.randint(1, len(ids)))
        at = 0
        for node_id in chosen:
            at += rng.randint(5, 60)
            self.scheduler.schedule(at, "clog", self._clog_action(node_id, ids, True),
                                    node=node_id)
        for node_id in rng.sample(chosen, len(chosen)):
            at += rng.randint(5, 120)
            self.scheduler.schedule(at, "unclog", self._clog_action(node_id, ids, False),
                                    node=node_id)

    def _clog_action(self, node_id: int, ids: list[int], clog: bool) -> Callable[[], None]:
        def act() -> None:
            if self.phase != "safety":
                return
            if clog:
                self.network.clog_node(node_id, ids)
            else:
                self.network.unclog_node(node_id, ids)
        return act

    def _restart_action(self, node_id: int) -> Callable[[], None]:
        return lambda: self._restart(self.nodes[node_id])

    def _restart(self, node: SimNode) -> None:
        if self.phase != "safety" or node.up or node.removed:
            return
        node.start()

    # -- reports -----------------------------------------------------------------------------

    def report(self, headline: str) -> str:
        """Seed, reproduce command, options, and the last events."""
        command = reproduce_command(self.seed, self.bug, self.overrides, self.scenario)
        lines = [f"seed {self.seed}: {headline}",
                 f"reproduce: {command}",
                 f"options: {self.options.describe()}",
                 f"at {self.scheduler.now_ms}ms after {self.scheduler.events_run} events; "
                 f"last {len(self.scheduler.history)} events:"]
        lines += ["  " + line for line in self.scheduler.recent()]
        return "\n".join(lines)
