"""Scripted scenarios on the simulator: a fixed history instead of random faults.

Random seeds find what nobody thought of; a script pins down a history the Raft paper says
matters, so a planted bug that needs a rare sequence of faults is still shown to be caught.
The script drives the same Simulation (network, disks, invariant checks after every event);
only the fault schedule and the elections are chosen by hand.
"""

from __future__ import annotations

from collections.abc import Callable

from rillet.cluster.raft.types import Role

from .node import SimNode
from .options import TICK_MS
from .simulation import Simulation

STEP_EVENTS_MAX = 20_000  # events one scripted step may take


def _until(sim: Simulation, what: str, predicate: Callable[[], bool]) -> None:
    if not sim.scheduler.run_until(predicate, STEP_EVENTS_MAX):
        raise AssertionError(f"scenario step did not happen: {what}")


def _campaign_until_leader(sim: Simulation, node: SimNode) -> None:
    """Make `node` campaign until it leads (a rejection teaches it the higher term first)."""
    for _ in range(5):
        assert node.core is not None
        node.core.campaign()  # type: ignore[attr-defined]
        node.poke()
        _until(sim, f"n{node.node_id} election settles",
               lambda: node.role in (Role.LEADER, Role.FOLLOWER))
        if node.role == Role.LEADER:
            return
    raise AssertionError(f"n{node.node_id} could not win an election")


def figure8(sim: Simulation) -> None:
    """Raft paper Figure 8, on three nodes, with one-entry APPENDs so the window is wide.

    1. n1 leads term 1; everyone has its no-op at index 1.
    2. n1 is cut off and takes value A at index 2 (term 1), on n1 only.
    3. n2 wins term 2 with n3's vote and is cut off before its no-op (index 2, term 2)
       leaves it.
    4. n1 returns and wins a later term with n3's vote; it sends index 2 (A, term 1) to n3.
       As soon as n3 holds it, n1 is cut off again: its term-3 no-op never reaches n3.
       A correct leader has NOT committed index 2 (an earlier term's entry: §5.4.2);
       a leader that commits by counting replicas has.
    5. n2 returns and wins a still later term with n3's vote (its last term 2 beats n3's 1) and
       overwrites index 2. Only the counting leader has broken an invariant: it called A
       committed, and a later leader does not have it.
    """
    ids = sorted(sim.nodes)
    n1, n2, n3 = (sim.nodes[i] for i in ids[:3])
    net = sim.network
    _campaign_until_leader(sim, n1)
    _until(sim, "index 1 on all", lambda: all(n.commit_index >= 1 for n in (n1, n2, n3)))

    net.isolate(n1.node_id, ids)
    sim.scheduler.note("script", subject="isolate n1; propose A on n1")
    sim.propose_to(n1, tag="A")
    _until(sim, "A durable on n1", lambda: n1.disk.durable >= 1 and n1.last_log_index() >= 2)

    net.heal_partitions()
    net.isolate(n1.node_id, ids)
    _campaign_until_leader(sim, n2)
    net.isolate(n2.node_id, ids)  # before n2's no-op leaves (it waits for n2's fsync)
    sim.scheduler.note("script", subject="n2 leads and is cut off")

    net.heal_partitions()
    net.isolate(n2.node_id, ids)
    _campaign_until_leader(sim, n1)
    a = n1.log_entry(2)
    assert a is not None and a.term == 1, "n1 lost A"
    _until(sim, "n3 holds A durably",
           lambda: (e := n3.disk.entry(2)) is not None and e == a and n3.disk.pending == 0)
    _until(sim, "n1 hears n3's acknowledgement",
           lambda: _acked(n1, n3.node_id, 2))
    net.isolate(n1.node_id, ids)
    sim.scheduler.note("script", subject="n1 cut off after n3 acknowledged index 2")

    net.heal_partitions()
    net.isolate(n1.node_id, ids)
    _campaign_until_leader(sim, n2)
    _until(sim, "n2 overwrites index 2 on n3",
           lambda: (e := n3.disk.entry(2)) is not None and e.term == 2)
    sim.scheduler.run_for(200, STEP_EVENTS_MAX)


def double_vote_after_reboot(sim: Simulation) -> None:
    """Raft §5.2: each server votes for at most one candidate in a term, and the vote must
    survive a crash (it is in the persisted hard state before the reply leaves).

    1. n1 and n2 cannot talk to each other; both reach n3.
    2. n1 campaigns and wins its term with n3's vote; n1 is then cut off from n3 too.
    3. n3 reboots (crash, restart from its disk).
    4. n2, which never heard of that term, campaigns into the SAME term. A correct n3
       remembers its vote and refuses; a core that lost its vote grants it, and the term has
       two leaders.
    """
    ids = sorted(sim.nodes)
    n1, n2, n3 = (sim.nodes[i] for i in ids[:3])
    net = sim.network
    net.partition(n1.node_id, n2.node_id)
    _campaign_until_leader(sim, n1)
    term = n1.term
    net.isolate(n1.node_id, ids)
    _until(sim, "n3 settles its Ready", lambda: n3.disk.pending == 0)
    sim.scheduler.note("script", subject="n3 reboots after voting")
    n3.crash()
    n3.start()
    assert n2.term < term, "n2 already heard of n1's term"
    for _ in range(term - n2.term):
        assert n2.core is not None
        n2.core.campaign()  # type: ignore[attr-defined]
        n2.poke()
        _until(sim, "n2's campaign settles", lambda: n2.role != Role.CANDIDATE)
        if n2.term >= term:
            break
    sim.scheduler.run_for(100, STEP_EVENTS_MAX)


def _acked(leader: SimNode, follower: int, index: int) -> bool:
    """Whether the leader's progress records `follower` as holding `index`."""
    core = leader.core
    progress = getattr(core, "progress", {})
    pr = progress.get(follower)
    return pr is not None and pr.match >= index


# -- quiescence (decision 0404) ------------------------------------------------------------------

QUIESCE_OPTIONS = [
    "nodes=3", "crashes=False", "partitions=False", "swizzle=False", "membership=False",
    "transfers=False", "drop=0", "duplicate=0", "reorder=False", "pre_vote=True",
    "check_quorum=True", "election_ticks=10", "quiesce=True", "delay_min_ms=1",
    "delay_mean_ms=2",
]
"""For the quiescence scripts: no random faults, the production election settings
(pre-vote, check-quorum), quiescence with the node pings and liveness reports, and a network
much faster than a tick. (On the slowest swarm links, a mean delay of most of a tick with an
exponential tail on an in-order link, one stall can silence a live leader for an election
timeout; that disrupts a group with or without quiescence, so the swarm seeds check only
safety there.)"""

FAILOVER_TICKS_MAX = 6 * 10
"""From a quiesced leader's loss to a new leader: one election timeout until the silence is
noticed (plus a ping interval), the rest of a randomized timeout, and the votes; a split vote
between the two survivors (or a pre-vote that reaches a follower that has not noticed yet)
costs another randomized timeout. Measured over seeds 0-299: p50 13, p90 18, max 45 ticks,
against p50 14, p90 19, max 42 for the same script without quiescence."""


def _all_quiet(nodes: list[SimNode]) -> bool:
    return all(n.core is not None and n.core.quiesced for n in nodes)


def _go_quiet(sim: Simulation) -> tuple[SimNode, list[SimNode]]:
    """n1 leads, one value committed everywhere, every core quiesced."""
    nodes = [sim.nodes[i] for i in sorted(sim.nodes)]
    n1 = nodes[0]
    _campaign_until_leader(sim, n1)
    sim.propose_to(n1, tag="q")
    _until(sim, "every core quiesced", lambda: _all_quiet(nodes))
    ticks = sum(n.stats.ticks for n in nodes)
    sim.scheduler.run_for(5 * 10 * TICK_MS, STEP_EVENTS_MAX)
    assert _all_quiet(nodes), "a quiesced group woke up while idle"
    assert sum(n.stats.ticks for n in nodes) > ticks  # time passed; nothing happened
    return n1, nodes[1:]


def _elect_among(sim: Simulation, nodes: list[SimNode], what: str) -> int:
    """Run until one of `nodes` leads; the ticks that took (bounded)."""
    start = sim.scheduler.now_ms
    _until(sim, what, lambda: any(n.role == Role.LEADER for n in nodes)
           or sim.scheduler.now_ms - start > 10 * FAILOVER_TICKS_MAX * TICK_MS)
    ticks = (sim.scheduler.now_ms - start) // TICK_MS
    if ticks > FAILOVER_TICKS_MAX:
        raise AssertionError(f"{what}: no leader within {FAILOVER_TICKS_MAX} ticks "
                             f"(waited {ticks})")
    return ticks


def quiesced_leader_crash(sim: Simulation) -> int:
    """The leader of a quiesced group crashes: nothing will arrive from it, so only the
    followers' node-level liveness can notice. One of them is elected within
    FAILOVER_TICKS_MAX ticks; the old leader restarts, follows, and all go quiet again.
    Returns the failover ticks."""
    n1, others = _go_quiet(sim)
    sim.scheduler.note("script", subject="the quiesced leader n1 crashes")
    n1.crash()
    ticks = _elect_among(sim, others, "a new leader after n1 crashed")
    n1.start()
    everyone = [n1, *others]
    _until(sim, "all quiet again under one leader",
           lambda: _all_quiet(everyone) and sum(n.role == Role.LEADER for n in everyone) == 1)
    assert n1.role == Role.FOLLOWER
    return ticks


def quiesced_leader_cut_off(sim: Simulation) -> int:
    """The leader of a quiesced group is cut off from both followers. They elect a leader
    within FAILOVER_TICKS_MAX ticks; the old one, having lost sight of its majority, wakes
    and steps down (check-quorum). Healed, it follows without a new election. Returns the
    failover ticks."""
    n1, others = _go_quiet(sim)
    ids = sorted(sim.nodes)
    sim.scheduler.note("script", subject="the quiesced leader n1 is cut off")
    sim.network.isolate(n1.node_id, ids)
    ticks = _elect_among(sim, others, "a new leader after n1 was cut off")
    _until(sim, "n1 steps down", lambda: n1.role != Role.LEADER)
    leader = next(n for n in others if n.role == Role.LEADER)
    term = leader.term
    sim.network.heal_partitions()
    everyone = [n1, *others]
    _until(sim, "all quiet again", lambda: _all_quiet(everyone))
    assert leader.role == Role.LEADER and all(n.term == term for n in everyone), \
        "the healed old leader disrupted the new one"
    return ticks


def quiesced_follower_rejoins(sim: Simulation) -> int:
    """A follower of a quiesced group is cut off for many election timeouts: it wakes (its
    leader went silent) and campaigns in vain with pre-votes, while the other two stay
    quiesced. Healed, it catches up and goes quiet again with the term unchanged and the same
    leader (pre-vote and the leader lease hold through quiescence). Returns the ticks the
    cut-off follower spent campaigning."""
    n1, (n2, n3) = _go_quiet(sim)
    ids = sorted(sim.nodes)
    term = n1.term
    sim.scheduler.note("script", subject="follower n3 is cut off")
    sim.network.isolate(n3.node_id, ids)
    start = sim.scheduler.now_ms
    sim.scheduler.run_for(20 * 10 * TICK_MS, STEP_EVENTS_MAX * 10)
    assert n3.core is not None and not n3.core.quiesced, "n3 never noticed its leader's silence"
    assert n1.role == Role.LEADER and _all_quiet([n1, n2]), "the healthy pair woke up"
    sim.network.heal_partitions()
    sim.propose_to(n1, tag="r")
    everyone = [n1, n2, n3]
    _until(sim, "all quiet again", lambda: _all_quiet(everyone)
           and n3.applied_index == n1.applied_index)
    assert n1.role == Role.LEADER and all(n.term == term for n in everyone), \
        "the rejoining follower disrupted the group"
    return (sim.scheduler.now_ms - start) // TICK_MS


SCRIPTED_OPTIONS = [
    "nodes=3", "crashes=False", "partitions=False", "swizzle=False", "membership=False",
    "transfers=False", "drop=0", "duplicate=0", "reorder=False", "pre_vote=False",
    "check_quorum=False", "election_ticks=1000", "max_size_per_msg=1", "max_inflight_msgs=1",
]
"""For every script: no random faults, no spontaneous elections; the script alone decides."""
