"""Tests of what the Raft paper leaves to the thesis (Ongaro, "Consensus: Bridging Theory and
Practice", 2014) and of Rillet's own contract: pre-vote and check-quorum (thesis §9.6, §6.2),
leader transfer (§3.10), learners and single-server membership changes (§4.1, §4.2.1), log
compaction (chapter 5), flow control, persistence ordering and the Ready/advance contract.
Each test has an init/test/check shape.
"""

from __future__ import annotations

import dataclasses

import pytest
from raftnet import Network, drain, make_core, make_leader, msg, store_log

from rillet.cluster.raft import (
    CAMPAIGN_TRANSFER,
    NONE,
    ConfChange,
    ConfChangeKind,
    Config,
    ConfState,
    Entry,
    HardState,
    MemoryStorage,
    Message,
    MessageType,
    NotLeaderError,
    ProposalDroppedError,
    Role,
)
from rillet.cluster.raft.progress import ProgressState
from rillet.cluster.raft.storage import persist_ready

T = MessageType


def _settle(net: Network, leader: int, rounds: int = 3) -> None:
    """A few heartbeat rounds so every follower catches up and learns the commit index."""
    for _ in range(rounds):
        net.tick(leader)


# -- pre-vote and check-quorum (thesis §9.6, §6.2) ---------------------------------------------


def test_pre_candidate_does_not_bump_term() -> None:
    """Thesis §9.6: a pre-candidate asks whether it could win before incrementing its term;
    the PRE_VOTE carries the term it would move to, its own term stays."""
    core, storage = make_core(1)

    core.campaign()
    out = drain(core, storage)

    assert core.role == Role.PRE_CANDIDATE
    assert core.term == 0 and core.vote == NONE
    assert sorted((m.to, m.type, m.term) for m in out) == [(2, T.PRE_VOTE, 1),
                                                           (3, T.PRE_VOTE, 1)]


def test_pre_vote_grant_does_not_change_voter() -> None:
    """Thesis §9.6: granting a pre-vote changes nothing on the voter: not its term, not its
    vote (so a pre-vote round can never disturb a cluster)."""
    core, storage = make_core(2)

    core.step(msg(T.PRE_VOTE, 1, 2, 1))
    out = drain(core, storage)

    assert [(m.type, m.term, m.reject) for m in out] == [(T.PRE_VOTE_RESP, 1, False)]
    assert core.term == 0 and core.vote == NONE
    assert storage.initial_state()[0] == HardState()


def test_rejoining_partitioned_node_does_not_depose_leader() -> None:
    """Thesis §9.6: with pre-vote, a server that was partitioned away (and kept timing out)
    cannot force the leader to step down when it rejoins, since it never raised its term."""
    net = Network([1, 2, 3])
    net.elect(1)
    net.isolate(3)
    for _ in range(100):
        net.cores[3].tick()
        net.stabilize()
    assert net.cores[3].term == 1  # it tried pre-votes only

    net.heal()
    net.tick_all(20)

    assert net.leaders() == [1]
    assert all(c.term == 1 for c in net.cores.values())


def test_follower_with_live_leader_ignores_vote_request() -> None:
    """Thesis §6.2 / §4.2.3: a server that heard from a current leader within the minimum
    election timeout does not grant a vote or update its term on a RequestVote (the lease
    that keeps removed or partitioned servers from disrupting the cluster)."""
    core, storage = make_core(2)
    core.step(msg(T.APPEND, 1, 2, 1))
    drain(core, storage)

    core.step(msg(T.VOTE, 3, 2, 5, index=10, log_term=5))
    out = drain(core, storage)

    assert out == []
    assert core.term == 1 and core.leader == 1 and core.vote == NONE


def test_pre_vote_rejected_while_leader_is_live() -> None:
    """Thesis §9.6: a voter grants a pre-vote only if it has not heard from a leader within an
    election timeout."""
    net = Network([1, 2, 3])
    net.elect(1)
    net.cut(1, 3)  # 3 stops hearing from 1; 2 still does

    for _ in range(40):
        net.cores[3].tick()
        net.stabilize()

    assert net.leaders() == [1]
    assert net.cores[3].role in (Role.PRE_CANDIDATE, Role.FOLLOWER)
    assert net.cores[2].term == 1 and net.cores[3].term == 1


def test_check_quorum_leader_steps_down() -> None:
    """Thesis §6.2: a leader that has not heard from a majority within an election timeout
    steps down, so clients stop waiting on it."""
    net = Network([1, 2, 3])
    leader = net.elect(1)
    net.isolate(1)

    for _ in range(leader.config.election_ticks * 2):
        leader.tick()
        net.stabilize()

    assert leader.role == Role.FOLLOWER
    assert leader.term == 1


def test_leader_stays_with_quorum() -> None:
    """Thesis §6.2: a leader that hears from a majority keeps leading through many check-quorum
    rounds even with a minority cut off."""
    net = Network([1, 2, 3, 4, 5])
    net.elect(1)
    net.isolate(5)
    net.isolate(4)

    net.tick_all(50)

    assert net.cores[1].role == Role.LEADER


def test_stale_leader_learns_new_term() -> None:
    """Raft paper §5.1: a deposed leader that comes back learns the newer term from the first
    reply and steps down (with check-quorum the reply to its stale APPEND carries the term)."""
    net = Network([1, 2, 3], check_quorum=True)
    net.elect(1)
    net.isolate(1)
    net.cores[2].campaign()
    net.stabilize()
    for _ in range(50):
        if net.leaders() != [1]:
            break
        net.tick_all()
    assert 2 in net.leaders() or 3 in net.leaders()

    net.heal()
    net.tick_all(3)

    assert len(net.leaders()) == 1 and net.leaders() != [1]
    assert net.cores[1].role == Role.FOLLOWER


# -- leader transfer (thesis §3.10) ------------------------------------------------------------


def test_leader_transfer_to_up_to_date_follower() -> None:
    """Thesis §3.10: the leader sends TimeoutNow to a target whose log is up to date; the
    target starts an election at once (no pre-vote, through the voters' lease) and wins."""
    net = Network([1, 2, 3])
    net.elect(1)
    _settle(net, 1)

    net.cores[1].transfer_leader(2)
    net.stabilize()

    assert net.leaders() == [2]
    assert net.cores[2].term == 2
    assert any(m.type == T.TIMEOUT_NOW and m.to == 2 for m in net.delivered)
    assert any(m.type == T.VOTE and m.context == CAMPAIGN_TRANSFER for m in net.delivered)


def test_leader_transfer_to_lagging_follower_catches_up_first() -> None:
    """Thesis §3.10: if the target's log is behind, the leader first brings it up to date,
    then sends TimeoutNow; meanwhile it refuses new proposals."""
    net = Network([1, 2, 3])
    net.elect(1)
    net.isolate(3)
    for i in range(5):
        net.propose(1, b"x%d" % i)
    net.heal()
    assert net.storages[3].last_index() < net.storages[1].last_index()

    net.cores[1].transfer_leader(3)
    with pytest.raises(ProposalDroppedError):
        net.cores[1].propose(b"during transfer")
    net.stabilize()

    assert net.leaders() == [3]
    assert net.log_of(3)[:6] == net.log_of(1)[:6]


def test_leader_transfer_aborts_after_election_timeout() -> None:
    """Thesis §3.10: if the transfer does not finish within an election timeout, the leader
    aborts it and accepts proposals again."""
    net = Network([1, 2, 3])
    leader = net.elect(1)
    net.isolate(3)
    net.propose(1, b"x")

    leader.transfer_leader(3)
    with pytest.raises(ProposalDroppedError):
        leader.propose(b"y")
    net.tick(1, leader.config.election_ticks)

    assert leader.role == Role.LEADER
    assert leader.lead_transferee == NONE
    assert leader.propose(b"y") > 0


def test_transfer_and_propose_on_follower_name_the_leader() -> None:
    """Rillet API: leader-only requests on a follower raise NotLeaderError carrying the
    leader this node knows, so the caller can redirect in one step."""
    net = Network([1, 2, 3])
    net.elect(1)

    with pytest.raises(NotLeaderError) as err:
        net.cores[2].propose(b"x")
    assert err.value.leader == 1
    with pytest.raises(NotLeaderError):
        net.cores[2].transfer_leader(3)
    with pytest.raises(ValueError, match="not a voter"):
        net.cores[1].transfer_leader(9)


# -- membership: learners, promote, remove (thesis §4.1, §4.2.1) -------------------------------


def _conf_change(net: Network, leader: int, kind: ConfChangeKind, node: int) -> int:
    index = net.cores[leader].propose_conf_change(ConfChange(kind, node))
    net.stabilize()
    _settle(net, leader)
    return index


def test_add_learner_catch_up_promote() -> None:
    """Thesis §4.2.1: a new server joins as a non-voting member, receives the log until it has
    caught up, and only then becomes a voter; learners never count for quorum."""
    net = Network([1, 2, 3])
    net.elect(1)
    for i in range(3):
        net.propose(1, b"before %d" % i)
    # The new node starts empty, knowing the membership it joins (as a learner).
    net.add(4, MemoryStorage(ConfState(frozenset({1, 2, 3}), frozenset({4}))))

    _conf_change(net, 1, ConfChangeKind.ADD_LEARNER, 4)

    assert net.cores[1].conf_state == ConfState(frozenset({1, 2, 3}), frozenset({4}))
    assert net.applied_data(4) == net.applied_data(1)
    assert net.cores[4].role == Role.FOLLOWER and net.cores[4].is_learner()

    _conf_change(net, 1, ConfChangeKind.PROMOTE, 4)

    assert all(c.conf_state.voters == {1, 2, 3, 4} for c in net.cores.values())
    net.isolate(1)
    for _ in range(100):
        net.tick_all()
        if [n for n in net.leaders() if n != 1]:
            break
    assert [n for n in net.leaders() if n != 1]


def test_learner_does_not_count_for_quorum() -> None:
    """Thesis §4.2.1: learners receive entries but do not count toward commitment: a single
    voter with a learner commits on its own, and a cut-off learner does not block."""
    net = Network([1], learners=[2])
    net.elect(1)
    net.isolate(2)

    index = net.propose(1, b"x")

    assert net.cores[1].commit_index == index
    net.heal()
    _settle(net, 1)
    assert net.applied_data(2) == [b"x"]


def test_learner_never_campaigns() -> None:
    """Thesis §4.2.1: a non-voting member does not start elections."""
    net = Network([1], learners=[2])

    for _ in range(100):
        net.cores[2].tick()
        net.stabilize()

    assert net.cores[2].role == Role.FOLLOWER and net.cores[2].term == 0


def test_one_membership_change_at_a_time() -> None:
    """Thesis §4.1: single-server changes are safe only one at a time: the leader refuses a
    new change while the previous one is not yet applied."""
    net = Network([1, 2, 3])
    leader = net.elect(1)
    net.isolate(2)
    net.isolate(3)  # nothing can commit

    leader.propose_conf_change(ConfChange(ConfChangeKind.ADD_LEARNER, 4))
    net.stabilize()

    with pytest.raises(ProposalDroppedError):
        leader.propose_conf_change(ConfChange(ConfChangeKind.ADD_LEARNER, 5))
    net.heal()
    _settle(net, 1)
    leader.propose_conf_change(ConfChange(ConfChangeKind.ADD_LEARNER, 5))


def test_conf_change_validation() -> None:
    """Rillet API: a change that makes no sense against the current membership is refused
    when proposed (it would be skipped when applied anyway)."""
    net = Network([1, 2, 3])
    leader = net.elect(1)

    with pytest.raises(ValueError, match="already a member"):
        leader.propose_conf_change(ConfChange(ConfChangeKind.ADD_LEARNER, 2))
    with pytest.raises(ValueError, match="not a learner"):
        leader.propose_conf_change(ConfChange(ConfChangeKind.PROMOTE, 2))
    with pytest.raises(ValueError, match="not a member"):
        leader.propose_conf_change(ConfChange(ConfChangeKind.REMOVE, 7))


def test_remove_voter_shrinks_quorum() -> None:
    """Thesis §4.1: once a removal is applied, the majority is counted over the new
    membership: with 4 removed from {1..4}, two of {1, 2, 3} commit."""
    net = Network([1, 2, 3, 4])
    net.elect(1)

    _conf_change(net, 1, ConfChangeKind.REMOVE, 4)
    net.isolate(4)
    net.isolate(3)
    index = net.propose(1, b"after removal")

    assert net.cores[1].conf_state.voters == {1, 2, 3}
    assert net.cores[1].commit_index == index


def test_removed_leader_steps_down() -> None:
    """Thesis §4.2.2: a leader removed from the membership steps down once the change is
    committed (here: once it has handed leadership to a remaining voter); the remaining
    servers then lead on their own."""
    net = Network([1, 2, 3])
    net.elect(1)

    _conf_change(net, 1, ConfChangeKind.REMOVE, 1)

    assert net.cores[1].role == Role.FOLLOWER
    for _ in range(100):
        net.tick_all()
        if net.leaders():
            break
    assert net.leaders() in ([2], [3])
    assert not net.cores[1].promotable()


def test_removed_leader_keeps_leading_until_the_others_know() -> None:
    """Thesis §4.2.2: "there will be a period of time (while it is committing Cnew) where a
    leader is managing a cluster that does not include itself". With membership applied at
    commit, that period lasts until the remaining voters LEARN the commit: before, they still
    count the old leader, and its longer log makes it refuse their votes. A leader that
    stepped down the moment it applied its own removal wedged the group for good (found by
    the simulator, seed 201976).

    Init: {1, 2, 3}; 3 is removed, leaving the two voters {1, 2}; leader 1 proposes its own
    removal at r and an entry at r + 1. The network drops, once each, the APPEND carrying
    r + 1 to 2 and the first message telling 2 that r committed."""
    net = Network([1, 2, 3])
    net.elect(1)
    _conf_change(net, 1, ConfChangeKind.REMOVE, 3)
    net.isolate(3)
    leader = net.cores[1]
    assert leader.conf_state.voters == {1, 2}
    r = leader.propose_conf_change(ConfChange(ConfChangeKind.REMOVE, 1))
    dropped: list[str] = []

    def drop_once(m: Message) -> Message | None:
        if m.frm != 1 or m.to != 2:
            return m
        carries_tail = any(e.index == r + 1 for e in m.entries)
        tells_commit = m.type in (T.APPEND, T.HEARTBEAT) and m.commit >= r
        for what, hit in (("tail", carries_tail), ("commit", tells_commit)):
            if hit and what not in dropped:
                dropped.append(what)
                return None
        return m

    net.hook = drop_once
    leader.propose(b"after the removal")
    net.stabilize()
    assert sorted(dropped) == ["commit", "tail"]
    assert leader.conf_state.voters == {2}  # 1 applied its own removal

    # Test: time passes (1 is never stopped: an operator stops it only once 2 knows).
    for _ in range(10 * leader.config.election_ticks):
        net.tick_all()
        if net.leaders() == [2] and net.cores[2].conf_state.voters == {2}:
            break

    # Check: 2 leads the new membership alone, has the removed leader's last entry, and
    # commits new entries; 1 stepped down and never campaigns again.
    assert net.leaders() == [2], [c.describe() for c in net.cores.values()]
    assert net.cores[2].conf_state.voters == {2}
    assert net.applied_data(2) == net.applied_data(1)
    assert net.applied_data(2)[-1] == b"after the removal"
    index = net.propose(2, b"new leader")
    assert net.cores[2].commit_index == index
    assert net.cores[1].role == Role.FOLLOWER and not net.cores[1].promotable()


def test_removed_leader_refuses_proposals_and_hands_off() -> None:
    """Rillet API: a leader that applied its own removal accepts no new entries (they could
    only make its log longer than the voters' it must hand over to) and names itself no
    longer a voter in the reason."""
    net = Network([1, 2, 3])
    leader = net.elect(1)
    net.isolate(2)
    net.isolate(3)
    r = leader.propose_conf_change(ConfChange(ConfChangeKind.REMOVE, 1))
    net.stabilize()
    # Only 2 and 3 can commit it now: let 2 acknowledge, so 1 commits and applies it.
    net.heal()
    net.isolate(3)
    # 2 learns neither the commit nor the hand-off, so 1 keeps leading.
    net.hook = lambda m: None if (m.frm == 1 and m.to == 2 and (
        m.commit >= r or m.type == T.TIMEOUT_NOW)) else m
    net.tick(1)
    assert leader.role == Role.LEADER and leader.conf_state.voters == {2, 3}
    assert leader.status().lead_transferee == 2
    with pytest.raises(ProposalDroppedError, match="removed itself"):
        leader.propose(b"x")
    # It does not step down for want of a quorum either (nobody else could tell 2).
    for _ in range(3 * leader.config.election_ticks):
        net.tick(1)
    assert leader.role == Role.LEADER
    # Once the network heals, the hand-off completes and 1 follows.
    net.hook = None
    net.heal()
    for _ in range(3 * leader.config.election_ticks):
        net.tick_all()
        if leader.role == Role.FOLLOWER and net.leaders():
            break
    assert net.leaders() in ([2], [3]) and leader.role == Role.FOLLOWER


# -- log compaction / log start (thesis chapter 5) ---------------------------------------------


def test_follower_behind_log_start_gets_snapshot() -> None:
    """Thesis §5.1 (and Rillet's log start): when a follower needs entries the leader has
    compacted, the leader sends its log start instead; the follower installs it (a Ready
    carrying the snapshot) and replicates from there."""
    net = Network([1, 2, 3])
    net.elect(1)
    net.isolate(3)
    for i in range(10):
        net.propose(1, b"e%d" % i)
    leader = net.cores[1]
    applied = leader.applied_index
    net.storages[1].compact(applied, data=b"state@%d" % applied)

    net.heal()
    _settle(net, 1)
    net.propose(1, b"after")

    snaps = [rd.snapshot for rd in net.readies[3] if rd.snapshot is not None]
    assert [s.meta.index for s in snaps] == [applied]
    assert snaps[0].data == b"state@%d" % applied
    assert net.storages[3].first_index() == applied + 1
    assert net.log_of(3) == net.log_of(1)
    assert net.applied_data(3) == [b"after"]  # everything before came with the snapshot


def test_lost_snapshot_is_resent() -> None:
    """Thesis §5.1: snapshot delivery can fail; the leader tries again (here after a heartbeat
    round trip shows the follower is alive but did not catch up)."""
    net = Network([1, 2, 3])
    net.elect(1)
    net.isolate(3)
    for i in range(4):
        net.propose(1, b"e%d" % i)
    net.storages[1].compact(net.cores[1].applied_index)
    dropped: list[Message] = []

    def drop_first_snapshot(m: Message) -> Message | None:
        if m.type == T.SNAPSHOT and not dropped:
            dropped.append(m)
            return None
        return m

    net.hook = drop_first_snapshot
    net.heal()
    _settle(net, 1, rounds=5)

    assert dropped
    assert net.log_of(3) == net.log_of(1)


# -- flow control ------------------------------------------------------------------------------


def test_inflight_count_bound() -> None:
    """Rillet flow control: a leader pipelines at most max_inflight_msgs unacknowledged APPENDs
    to a follower in REPLICATE; further proposals wait until acknowledgements free room."""
    core, storage = make_core(1, max_inflight_msgs=3)
    make_leader(core, storage)

    for i in range(10):
        core.propose(b"p%d" % i)
    out = drain(core, storage)

    appends_to_2 = [m for m in out if m.type == T.APPEND and m.to == 2 and m.entries]
    assert len(appends_to_2) == 3
    assert core.progress[2].inflights.full()

    core.step(msg(T.APPEND_RESP, 2, 1, 1, index=appends_to_2[0].entries[-1].index))
    out = drain(core, storage)
    assert len([m for m in out if m.type == T.APPEND and m.to == 2]) == 1


def test_reordered_rejections_do_not_refill_a_whole_window() -> None:
    """Rillet flow control, over a reordering link (found by the simulator: seed 1 with
    reorder and one-entry APPENDs exhausted its event budget): the follower accepts only the
    in-order prefix of a pipelined window and rejects the rest. The leader probes once per
    real rejection, ignores the stale rejections of the abandoned window, and pipelines half
    as deep when it replicates again, instead of refilling all max_inflight_msgs."""
    core, storage = make_core(1, max_inflight_msgs=64, max_size_per_msg=1)
    make_leader(core, storage)
    base = core.log.last_index()
    for i in range(64):
        core.propose(b"p%d" % i)
    window = [m for m in drain(core, storage) if m.type == T.APPEND and m.to == 2]
    assert len(window) == 64

    # The follower got entry base+1, then base+3 before base+2: it rejects that one.
    core.step(msg(T.APPEND_RESP, 2, 1, 1, index=base + 1))
    drain(core, storage)
    core.step(msg(T.APPEND_RESP, 2, 1, 1, index=base + 2, reject=True, reject_hint=base + 1,
                  log_term=1))
    probe = [m for m in drain(core, storage) if m.type == T.APPEND and m.to == 2]
    assert [m.index for m in probe] == [base + 1]  # one probe, then wait
    assert core.progress[2].state == ProgressState.PROBE

    # The rest of the old window arrives out of order too: stale rejections change nothing.
    for prev in range(base + 3, base + 40):
        core.step(msg(T.APPEND_RESP, 2, 1, 1, index=prev, reject=True,
                      reject_hint=base + 1, log_term=1))
    assert [m for m in drain(core, storage) if m.type == T.APPEND and m.to == 2] == []

    # The probe is accepted: replicate again, with half the window.
    core.step(msg(T.APPEND_RESP, 2, 1, 1, index=base + 2))
    refill = [m for m in drain(core, storage) if m.type == T.APPEND and m.to == 2
              and m.entries]
    assert core.progress[2].state == ProgressState.REPLICATE
    assert len(refill) == 64 // 2 + 1  # halved, plus one for the acknowledgement itself


def test_inflight_bytes_bound() -> None:
    """Rillet flow control: the bytes of unacknowledged APPENDs per follower are bounded too
    (max_inflight_bytes), so large entries cannot pile up behind a slow follower."""
    core, storage = make_core(1, max_inflight_bytes=3000, max_size_per_msg=1000)
    make_leader(core, storage)

    for _ in range(10):
        core.propose(b"x" * 1000)
    out = drain(core, storage)

    sent = sum(m.size() for m in out if m.type == T.APPEND and m.to == 2)
    assert sent == 3000
    assert core.progress[2].inflights.bytes == 3000


def test_probe_sends_one_append_until_answered() -> None:
    """Rillet flow control: a follower in PROBE gets one APPEND, and nothing more until it
    answers (or a heartbeat answer shows it is alive)."""
    core, storage = make_core(1)
    core.campaign()
    drain(core, storage)
    core.step(msg(T.PRE_VOTE_RESP, 2, 1, 1))
    drain(core, storage)
    core.step(msg(T.VOTE_RESP, 2, 1, 1))
    first = drain(core, storage)
    assert core.role == Role.LEADER

    for i in range(5):
        core.propose(b"p%d" % i)
    later = drain(core, storage)

    assert len([m for m in first if m.type == T.APPEND and m.to == 3]) == 1
    assert [m for m in later if m.type == T.APPEND and m.to == 3] == []
    core.step(msg(T.HEARTBEAT_RESP, 3, 1, 1))
    assert len([m for m in drain(core, storage) if m.type == T.APPEND and m.to == 3]) == 1


def test_fast_backtracking_skips_a_term_per_round_trip() -> None:
    """Raft paper §5.3 (end): with the follower's hint, the leader skips all conflicting
    entries of a term in one round trip instead of one entry per round trip."""
    net = Network([1, 2, 3], pre_vote=False)
    store_log(net.storages[1], [1] * 5 + [4] * 5)
    store_log(net.storages[2], [1] * 5 + [4] * 5)
    store_log(net.storages[3], [1] * 5 + [2] * 30 + [3] * 30)
    for n in (1, 2, 3):
        net.storages[n].set_hard_state(HardState(term=4))
        net.restart(n)

    net.elect(1)
    net.propose(1, b"x")

    rejections = [m for m in net.delivered if m.type == T.APPEND_RESP and m.frm == 3
                  and m.reject]
    assert len(rejections) <= 3
    assert net.log_of(3) == net.log_of(1)


# -- persistence ordering and the Ready/advance contract ---------------------------------------


def test_vote_response_rides_with_the_hard_state_that_records_it() -> None:
    """Raft paper Figure 2 ("updated on stable storage before responding to RPCs"): the vote
    response is in the same Ready as the HardState recording the vote, with must_sync, so
    the caller persists the vote before sending."""
    core, _ = make_core(2)

    core.step(msg(T.VOTE, 1, 2, 1))
    rd = core.ready()

    assert rd.hard_state == HardState(term=1, vote=1, commit=0)
    assert rd.must_sync
    assert [(m.type, m.reject) for m in rd.all_messages()] == [(T.VOTE_RESP, False)]


def test_append_response_rides_with_the_entries() -> None:
    """Raft paper Figure 2: a follower acknowledges entries only in the Ready that asks the
    caller to persist them (must_sync), never before."""
    core, _ = make_core(2)

    core.step(msg(T.APPEND, 1, 2, 1, entries=(Entry(1, 1, data=b"a"),)))
    rd = core.ready()

    assert rd.entries == [Entry(1, 1, data=b"a")]
    assert rd.must_sync
    assert [(m.type, m.index) for m in rd.all_messages()] == [(T.APPEND_RESP, 1)]


def test_commit_only_hard_state_needs_no_sync() -> None:
    """Rillet contract: a Ready whose only durable change is the commit index does not need an
    fsync (the commit index can be re-learned after a crash)."""
    core, storage = make_core(2)
    core.step(msg(T.APPEND, 1, 2, 1, entries=(Entry(1, 1),)))
    drain(core, storage)

    core.step(msg(T.HEARTBEAT, 1, 2, 1, commit=1))
    rd = core.ready()

    assert rd.hard_state == HardState(term=1, vote=NONE, commit=1)
    assert not rd.must_sync


def test_ready_advance_contract_is_enforced() -> None:
    """Rillet contract: one Ready at a time. ready() twice without advance() raises, advance()
    accepts only the Ready just handed out, and has_ready() is false in between."""
    core, _ = make_core(2)
    core.step(msg(T.VOTE, 1, 2, 1))
    rd = core.ready()

    assert not core.has_ready()
    with pytest.raises(RuntimeError):
        core.ready()
    with pytest.raises(RuntimeError):
        core.advance(dataclasses.replace(rd))
    core.advance(rd)
    assert not core.has_ready()


def test_restart_remembers_vote() -> None:
    """Raft paper Figure 2: currentTerm and votedFor are persistent, so a restarted server
    does not vote twice in one term."""
    core, storage = make_core(2)
    core.step(msg(T.VOTE, 1, 2, 1))
    drain(core, storage)

    restarted, _ = make_core(2, storage=storage)
    restarted.step(msg(T.VOTE, 3, 2, 1))
    out = drain(restarted, storage)

    assert restarted.vote == 1
    assert [(m.type, m.reject) for m in out] == [(T.VOTE_RESP, True)]


def test_restart_after_snapshot_written_but_not_its_hard_state() -> None:
    """Storage protocol (thesis §5.1: a snapshot holds only committed state): a crash between
    writing a Ready's snapshot and its hard state leaves a durable log start newer than the
    durable commit index. The core restarts with commit = the log start instead of refusing
    to start (found by the simulator, seed 149 with atomic_snapshot=false)."""
    storage = MemoryStorage(ConfState(frozenset({1, 2, 3})))
    store_log(storage, [1, 1, 1, 1, 1, 1, 1])
    storage.set_hard_state(HardState(term=1, vote=1, commit=3))
    storage.compact(5)  # the snapshot at 5 reached the disk; the hard state after it did not

    core, _ = make_core(2, storage=storage)

    assert core.commit_index == 5
    assert (core.term, core.vote) == (1, 1)
    assert core.log.next_committed_entries(None) == []  # the log start is applied too
    core.step(msg(T.APPEND, 1, 2, 1, index=7, log_term=1, commit=7))
    drain(core, storage)
    assert core.commit_index == 7


def test_restart_refuses_a_commit_index_past_the_log() -> None:
    """Raft paper Figure 2: a persisted commit index past the last persisted entry means the
    disk lost entries this node acknowledged; starting anyway would hide that."""
    storage = MemoryStorage(ConfState(frozenset({1, 2, 3})))
    store_log(storage, [1, 1, 1])
    storage.set_hard_state(HardState(term=1, vote=1, commit=5))

    with pytest.raises(ValueError, match="past the last index 3"):
        make_core(2, storage=storage)


def test_messages_between_ready_and_advance_go_to_next_ready() -> None:
    """Rillet contract: inputs may arrive while a Ready is being persisted; what they produce
    waits for the next Ready (and its persistence)."""
    core, storage = make_core(2)
    core.step(msg(T.APPEND, 1, 2, 1, entries=(Entry(1, 1),)))
    rd1 = core.ready()

    core.step(msg(T.APPEND, 1, 2, 1, index=1, log_term=1, entries=(Entry(2, 1),)))
    storage.append(rd1.entries)
    core.advance(rd1)
    rd2 = core.ready()

    assert rd2.entries == [Entry(2, 1)]
    assert [m.index for m in rd2.all_messages()] == [2]


# -- configuration and rendering ---------------------------------------------------------------


@pytest.mark.parametrize("bad", [
    {"id": 0},
    {"id": 1, "heartbeat_ticks": 0},
    {"id": 1, "election_ticks": 1, "heartbeat_ticks": 1},
    {"id": 1, "max_inflight_msgs": 0},
    {"id": 1, "max_inflight_bytes": -1},
    {"id": 1, "max_inflight_bytes": 10, "max_size_per_msg": 100},
    {"id": 1, "max_size_per_msg": 0},
    {"id": 1, "applied": -1},
])
def test_config_validate(bad: dict[str, int]) -> None:
    """Rillet API: Config.validate() names the setting that cannot work."""
    with pytest.raises(ValueError):
        Config(**bad).validate()  # type: ignore[arg-type]


def test_describe_is_one_stable_line() -> None:
    """Rillet rule: every core value renders as one stable line (logs and transcripts)."""
    m = Message(T.APPEND, to=2, frm=1, term=3, log_term=2, index=5, commit=4,
                entries=(Entry(6, 3), Entry(7, 3, data=b"abc")))
    assert m.describe() == (
        "1->2 APPEND term=3 log_term=2 index=5 commit=4 entries=[3/6 NOOP, 3/7 NORMAL 3B]")
    core, _ = make_core(2)
    core.step(msg(T.VOTE, 1, 2, 1))
    assert core.ready().describe() == (
        "Ready hard=(term=1 vote=1 commit=0) sync persisted_msgs=[2->1 VOTE_RESP term=1]")
    assert "\n" not in core.describe()


def test_uncommitted_budget_is_freed_at_commit_not_at_apply() -> None:
    """The bound is about entries that may never commit; a committed entry whose apply is
    still to come (handed out in a later, byte-bounded Ready) no longer counts."""
    core, storage = make_core(1, voters=(1,), max_uncommitted_bytes=3000)
    core.campaign()
    drain(core, storage)
    assert core.role == Role.LEADER
    for _ in range(3):
        core.propose(b"x" * 1000)
    rd = core.ready()  # the three entries: persisted, so the lone voter commits them
    persist_ready(storage, rd)
    core.advance(rd)
    assert core.commit_index == core.log.last_index()
    # Their apply is the next Ready, not taken yet: the budget is free all the same.
    assert core.propose(b"x" * 1000) == core.log.last_index()
    with pytest.raises(ProposalDroppedError):
        for _ in range(4):
            core.propose(b"x" * 1000)  # the third of these finds 3000 uncommitted bytes


def test_uncommitted_bytes_bound() -> None:
    """Rillet flow control: a leader that cannot commit (no quorum) refuses proposals once
    max_uncommitted_bytes wait, instead of growing its log without bound; commits free room."""
    net = Network([1, 2, 3], max_uncommitted_bytes=3000)
    leader = net.elect(1)
    net.isolate(2)
    net.isolate(3)

    for _ in range(3):
        leader.propose(b"x" * 1000)
    with pytest.raises(ProposalDroppedError):
        leader.propose(b"x" * 1000)
    net.heal()
    _settle(net, 1)

    assert leader.propose(b"x" * 1000) > 0
