"""Quiescence (decision 0404): an idle group stops ticking and sending, and every way out of
that state still elects a leader when one is needed, without disrupting a healthy one.

Rillet's own extension (CockroachDB quiesces idle ranges the same way); the safety of Raft
is untouched because a quiesced core only skips ticks: every message it steps is handled by
the ordinary rules. These tests pin down the liveness side. Each has an init/test/check shape.
"""

from __future__ import annotations

from raftnet import Network, drain, make_core, make_leader, msg

from rillet.cluster.raft import MessageType, PeerLiveness, Role
from rillet.cluster.raft.core import QUIESCE_IDLE_HEARTBEATS

T = MessageType
ELECTION_TICKS = 10


def _quiet_net(ids: list[int] | None = None, **config: object) -> Network:
    """A cluster led by node 1, with one proposal committed, ticked until everyone quiesced."""
    net = Network(ids or [1, 2, 3], quiesce=True, election_ticks=ELECTION_TICKS, **config)
    net.elect(1)
    net.propose(1, b"a")
    _tick_until_quiet(net)
    return net


def _tick_until_quiet(net: Network, max_ticks: int = 20) -> int:
    for n in range(1, max_ticks + 1):
        net.tick_all()
        if all(c.quiesced for c in net.cores.values()):
            return n
    raise AssertionError("not quiesced: " + "; ".join(c.describe() for c in net.cores.values()))


def test_idle_group_quiesces_after_idle_heartbeats_then_sends_nothing() -> None:
    # Init: a committed proposal, every follower caught up.
    net = Network([1, 2, 3], quiesce=True, election_ticks=ELECTION_TICKS)
    net.elect(1)
    net.propose(1, b"a")

    # Test: heartbeat ticks until quiet, then many election timeouts of ticks.
    ticks = _tick_until_quiet(net)
    delivered = len(net.delivered)
    readies = {i: len(r) for i, r in net.readies.items()}
    net.tick_all(ELECTION_TICKS * 5)

    # Check: quiet after the idle heartbeats; then no message, no Ready, no election.
    assert ticks == QUIESCE_IDLE_HEARTBEATS
    assert len(net.delivered) == delivered
    assert {i: len(r) for i, r in net.readies.items()} == readies
    assert net.leaders() == [1] and all(c.term == 1 for c in net.cores.values())
    quiesce = [m for m in net.delivered if m.quiesce]
    assert [(m.frm, m.to, m.type) for m in quiesce] == [(1, 2, T.HEARTBEAT), (1, 3, T.HEARTBEAT)]
    assert all(net.applied_data(i) == [b"a"] for i in net.cores)
    assert "quiesced" in net.cores[2].describe()


def test_quiescence_is_off_by_default() -> None:
    net = Network([1, 2, 3], election_ticks=ELECTION_TICKS)
    net.elect(1)
    net.tick_all(ELECTION_TICKS * 2)
    assert not any(c.quiesced for c in net.cores.values())


def test_proposal_wakes_the_group_which_quiesces_again() -> None:
    net = _quiet_net()

    net.propose(1, b"b")

    assert not any(c.quiesced for c in net.cores.values())
    _tick_until_quiet(net)
    assert all(net.applied_data(i) == [b"a", b"b"] for i in net.cores)
    assert all(c.term == 1 for c in net.cores.values())


def test_lagging_follower_keeps_the_leader_awake() -> None:
    """A follower that has not acknowledged the last entry (and is not reported unreachable)
    must still be caught up: the leader does not quiesce."""
    net = Network([1, 2, 3], quiesce=True, election_ticks=ELECTION_TICKS)
    net.elect(1)
    net.cut(1, 3)
    net.propose(1, b"a")

    net.tick(1, ELECTION_TICKS // 2)

    assert not net.cores[1].quiesced


def test_follower_that_missed_the_quiesce_heartbeat_wakes_the_leader() -> None:
    """A lost quiesce heartbeat leaves one follower ticking; its pre-vote (ignored under the
    leader's lease) wakes the leader, whose heartbeats bring it back, and the group quiesces
    again without a new term."""
    net = Network([1, 2, 3], quiesce=True, election_ticks=ELECTION_TICKS)
    net.elect(1)
    net.propose(1, b"a")
    lost = []

    def drop_quiesce_to_3(m: object) -> object:
        if getattr(m, "quiesce", False) and getattr(m, "to", 0) == 3 and not lost:
            lost.append(m)
            return None
        return m

    net.hook = drop_quiesce_to_3  # type: ignore[assignment]
    for _ in range(QUIESCE_IDLE_HEARTBEATS):
        net.tick_all()
    assert lost and net.cores[1].quiesced and not net.cores[3].quiesced

    ticks = _tick_until_quiet(net, max_ticks=ELECTION_TICKS * 3)

    assert ticks <= ELECTION_TICKS * 2 + QUIESCE_IDLE_HEARTBEATS + 2
    assert net.leaders() == [1] and all(c.term == 1 for c in net.cores.values())


def test_pre_vote_from_a_non_leader_does_not_wake_a_quiesced_follower() -> None:
    """The lease still holds while quiesced: a cut-off member's pre-vote neither wakes nor
    moves a quiesced follower (it would otherwise time out against a healthy, silent leader)."""
    net = _quiet_net()
    follower = net.cores[2]

    follower.step(msg(T.PRE_VOTE, 3, 2, 2, index=10, log_term=1))

    assert follower.quiesced and not follower.has_ready()


def test_vote_request_from_its_own_leader_wakes_a_quiesced_follower() -> None:
    """A leader never campaigns: a (pre-)vote request from it means its leadership ended (its
    node restarted faster than the liveness timeout). The followers wake with the lease over,
    so the group elects a leader again."""
    net = _quiet_net()

    net.restart(1)  # the disk kept everything; the new core is a follower with no leader
    for _ in range(ELECTION_TICKS * 3):
        net.tick_all()
        if net.leaders():
            break

    assert len(net.leaders()) == 1
    assert net.cores[2].term == net.cores[3].term == 2


def test_unreachable_leader_wakes_followers_which_elect_within_an_election_timeout() -> None:
    """The node-level liveness reports the quiesced leader's node unreachable: its followers
    wake with the lease expired and one is elected within one (randomized) election timeout."""
    net = _quiet_net()
    net.isolate(1)

    for follower in (2, 3):
        net.cores[follower].report_unreachable(1)
    ticks = 0
    while not any(net.cores[i].role == Role.LEADER for i in (2, 3)):
        net.tick(2)
        net.tick(3)
        ticks += 1
        assert ticks <= ELECTION_TICKS + 2, [c.describe() for c in net.cores.values()]

    assert net.cores[1].quiesced  # still cut off: it learns later


def test_quiesced_leader_that_loses_its_quorum_wakes_and_steps_down() -> None:
    net = _quiet_net()
    net.isolate(1)
    leader = net.cores[1]

    leader.report_unreachable(2)
    assert leader.quiesced  # one follower gone: a majority is still in sight
    leader.report_unreachable(3)
    assert not leader.quiesced
    net.tick(1, ELECTION_TICKS * 2)

    assert leader.role == Role.FOLLOWER


def test_unreachable_follower_does_not_keep_the_leader_awake_and_rejoins_quietly() -> None:
    """A down follower is not waited for (so a node outage does not wake every group for its
    whole length); when it comes back, its pre-votes wake the leader, it catches up, and
    nobody's term moves (pre-vote)."""
    net = _quiet_net()
    net.isolate(3)
    net.cores[1].report_unreachable(3)
    net.cores[3].report_unreachable(1)
    net.propose(1, b"b")  # commits with node 2

    ticks = _tick_until_quiet_except(net, 3)
    for _ in range(ELECTION_TICKS * 3):
        net.tick(3)  # cut off: it campaigns in vain
    assert ticks <= QUIESCE_IDLE_HEARTBEATS + 1
    assert net.cores[3].term == 1

    net.heal()
    _tick_until_quiet(net, max_ticks=ELECTION_TICKS * 3)

    assert net.leaders() == [1] and all(c.term == 1 for c in net.cores.values())
    assert net.applied_data(3) == [b"a", b"b"]


def _tick_until_quiet_except(net: Network, skip: int, max_ticks: int = 20) -> int:
    others = [i for i in net.cores if i != skip]
    for n in range(1, max_ticks + 1):
        for i in others:
            net.tick(i)
        if all(net.cores[i].quiesced for i in others):
            return n
    raise AssertionError("not quiesced")


def test_transfer_and_campaign_wake_a_quiesced_group() -> None:
    net = _quiet_net()

    net.cores[1].transfer_leader(2)
    net.stabilize()
    assert net.leaders() == [2]
    _tick_until_quiet(net)
    term = net.cores[2].term
    net.cores[3].campaign()  # a pre-vote, which the live leader's lease refuses
    net.stabilize()

    assert not net.cores[3].quiesced and not net.cores[2].quiesced  # the leader woke
    assert net.cores[1].quiesced  # not by 3's pre-vote: it is under its leader's lease
    _tick_until_quiet(net, max_ticks=ELECTION_TICKS * 3)
    assert net.leaders() == [2] and all(c.term == term for c in net.cores.values())


def test_quiesce_heartbeat_refused_by_a_follower_whose_log_differs() -> None:
    """A member whose log does not end at the leader's last entry answers with a rejected
    HEARTBEAT_RESP (which wakes the leader) instead of going quiet."""
    core, storage = make_core(2, quiesce=True)
    core.step(msg(T.HEARTBEAT, 1, 2, 1))
    drain(core, storage)

    core.step(msg(T.HEARTBEAT, 1, 2, 1, quiesce=True, index=5, log_term=1))
    out = drain(core, storage)

    assert not core.quiesced
    assert [(m.type, m.reject) for m in out] == [(T.HEARTBEAT_RESP, True)]


def test_rejected_quiesce_wakes_the_leader() -> None:
    leader, storage = make_core(1, quiesce=True, election_ticks=ELECTION_TICKS)
    make_leader(leader, storage)
    for _ in range(QUIESCE_IDLE_HEARTBEATS):
        leader.tick()
    out = drain(leader, storage)
    assert leader.quiesced and {m.to for m in out if m.quiesce} == {2, 3}

    leader.step(msg(T.HEARTBEAT_RESP, 2, 1, leader.term))  # a late plain answer: stay quiet
    assert leader.quiesced and not leader.has_ready()
    leader.step(msg(T.HEARTBEAT_RESP, 3, 1, leader.term, reject=True))

    assert not leader.quiesced


def test_quiesced_core_ignores_ticks() -> None:
    net = _quiet_net()
    for core in net.cores.values():
        for _ in range(ELECTION_TICKS * 3):
            core.tick()
        assert not core.has_ready()


# -- PeerLiveness -------------------------------------------------------------------------------


def test_peer_liveness_pings_idle_peers_and_reports_silence_once() -> None:
    live = PeerLiveness(timeout_ticks=4, ping_ticks=2)
    live.set_peers([2, 3])

    seen = [live.tick() for _ in range(5)]
    live.heard(2)
    assert not live.is_down(2) and live.is_down(3)
    later = [live.tick() for _ in range(4)]

    assert [p for p, _ in seen] == [[], [2, 3], [], [2, 3], []]
    assert [d for _, d in seen] == [[], [], [], [2, 3], []]
    assert [d for _, d in later] == [[], [], [], [2]]  # 3 is not reported twice


def test_peer_liveness_sends_count_as_pings_and_new_peers_get_a_full_timeout() -> None:
    live = PeerLiveness(timeout_ticks=3, ping_ticks=2)
    live.set_peers([2])
    live.tick()
    live.sent(2)  # at tick 1: the next ping is owed at tick 3, not 2
    assert live.tick() == ([], [])
    live.set_peers([2, 4])  # 4 is new at tick 2
    assert live.tick() == ([2], [2])  # 2 silent since tick 0
    assert live.tick() == ([4], [])
    assert live.tick() == ([2], [4])
    live.set_peers([4])
    assert live.peers() == [4] and live.down() == [4]


def test_member_back_from_unreachable_with_everything_lets_the_leader_quiesce() -> None:
    """A member reported unreachable while it held everything (a stall longer than the
    liveness timeout) is probed, but needs no entries: once heard from again the leader
    quiesces without waiting for a proposal to move it back to replicating."""
    net = Network([1, 2, 3], quiesce=True, election_ticks=ELECTION_TICKS)
    net.elect(1)
    net.propose(1, b"a")
    leader = net.cores[1]
    leader.report_unreachable(3)  # awake: 3 is probed from now on
    assert leader.progress[3].state.name == "PROBE"

    _tick_until_quiet(net)

    assert leader.quiesced and not leader.unreachable


def test_late_vote_request_of_the_current_term_is_answered_without_waking() -> None:
    """A duplicate of the leader's own winning VOTE arriving after the group quiesced is not
    a campaign: it is answered (here refused: it names the log the leader had before its
    no-op) and the follower stays quiet."""
    net = _quiet_net()
    follower = net.cores[2]

    follower.step(msg(T.VOTE, 1, 2, follower.term, index=1, log_term=1))

    assert follower.quiesced
    assert [(m.type, m.to) for m in follower.ready().all_messages()] == [(T.VOTE_RESP, 1)]
