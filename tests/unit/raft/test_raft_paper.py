"""Paper tests: each test checks sentences of the Raft paper (Ongaro and Ousterhout, "In Search
of an Understandable Consensus Algorithm", extended version) and names the section.

Each test has three parts: init (build cores and logs), test (step messages or tick), check
(compare roles, terms, logs or messages). Cores are driven by hand message by message, or in
the synchronous in-test network of raftnet.py where whole exchanges matter.
"""

from __future__ import annotations

import dataclasses
import random

import pytest
from raftnet import Network, drain, make_core, make_leader, msg, store_log

from rillet.cluster.raft import (
    NONE,
    ConfState,
    Entry,
    HardState,
    MemoryStorage,
    Message,
    MessageType,
    Role,
)

APPEND = MessageType.APPEND
APPEND_RESP = MessageType.APPEND_RESP
VOTE = MessageType.VOTE
VOTE_RESP = MessageType.VOTE_RESP


def _to_role(role: Role, core_id: int = 1) -> tuple:  # type: ignore[type-arg]
    """A core at term 1 in ``role`` (pre-vote off so CANDIDATE is one step)."""
    core, storage = make_core(core_id, pre_vote=False)
    if role == Role.CANDIDATE:
        core.campaign()
    elif role == Role.LEADER:
        make_leader(core, storage)
    else:
        core.step(msg(APPEND, 2, core_id, 1))
    drain(core, storage)
    assert core.role == role and core.term == 1
    return core, storage


# -- §5.1 Raft basics ------------------------------------------------------------------------


@pytest.mark.parametrize("role", [Role.FOLLOWER, Role.CANDIDATE, Role.LEADER])
def test_update_term_from_message(role: Role) -> None:
    """Raft paper §5.1: if one server's current term is smaller than the other's, it updates
    its current term to the larger value; a candidate or leader that discovers its term is out
    of date reverts to follower state."""
    core, _storage = _to_role(role)

    core.step(msg(APPEND, 3, 1, 2))

    assert core.term == 2
    assert core.role == Role.FOLLOWER
    assert core.leader == 3


def test_reject_stale_term_message() -> None:
    """Raft paper §5.1: if a server receives a request with a stale term number, it rejects
    the request (the log is untouched; the sender is told the newer term)."""
    storage = MemoryStorage(ConfState(frozenset({1, 2, 3})))
    storage.set_hard_state(HardState(term=2))
    core, _ = make_core(1, storage=storage)

    core.step(msg(APPEND, 2, 1, 1, entries=(Entry(1, 1, data=b"x"),)))
    out = drain(core, storage)

    assert core.log.last_index() == 0
    assert [(m.type, m.term, m.reject) for m in out] == [(APPEND_RESP, 2, False)]
    assert core.term == 2


def test_start_as_follower() -> None:
    """Raft paper §5.2: when servers start up, they begin as followers."""
    core, _ = make_core(1)

    assert core.role == Role.FOLLOWER
    assert core.leader == NONE


# -- §5.2 Leader election ------------------------------------------------------------------


def test_leader_bcast_beat() -> None:
    """Raft paper §5.2: leaders send periodic heartbeats (AppendEntries RPCs that carry no log
    entries) to all followers in order to maintain their authority."""
    core, storage = make_core(1, heartbeat_ticks=1)
    make_leader(core, storage)

    core.tick()
    out = drain(core, storage)

    beats = sorted((m.to, m.type, m.entries) for m in out)
    assert beats == [(2, MessageType.HEARTBEAT, ()), (3, MessageType.HEARTBEAT, ())]


@pytest.mark.parametrize("role", [Role.FOLLOWER, Role.CANDIDATE])
def test_nonleader_start_election(role: Role) -> None:
    """Raft paper §5.2: if a follower receives no communication over the election timeout, it
    begins an election: it increments its term, votes for itself and issues RequestVote RPCs
    to each of the other servers. A candidate whose election times out starts a new one."""
    core, storage = _to_role(role)

    for _ in range(2 * core.config.election_ticks):
        core.tick()
    out = drain(core, storage)

    assert core.term == 2
    assert core.role == Role.CANDIDATE
    assert core.vote == 1
    assert sorted((m.to, m.type, m.term) for m in out) == [(2, VOTE, 2), (3, VOTE, 2)]


@pytest.mark.parametrize(("size", "votes", "role"), [
    (1, {}, Role.LEADER),
    (3, {2: True, 3: True}, Role.LEADER),
    (3, {2: True}, Role.LEADER),
    (5, {2: True, 3: True, 4: True, 5: True}, Role.LEADER),
    (5, {2: True, 3: True, 4: True}, Role.LEADER),
    (5, {2: True, 3: True}, Role.LEADER),
    (3, {2: False, 3: False}, Role.FOLLOWER),
    (5, {2: False, 3: False, 4: False}, Role.FOLLOWER),
    (5, {2: True, 3: False, 4: False, 5: False}, Role.FOLLOWER),
    (3, {}, Role.CANDIDATE),
    (5, {2: True}, Role.CANDIDATE),
    (5, {2: False, 3: False}, Role.CANDIDATE),
])
def test_leader_election_in_one_round(size: int, votes: dict[int, bool], role: Role) -> None:
    """Raft paper §5.2: a candidate wins with votes from a majority of the servers, and loses
    (returns to follower) once a majority refused; otherwise it keeps waiting."""
    core, storage = make_core(1, voters=range(1, size + 1), pre_vote=False)
    core.campaign()
    drain(core, storage)

    for voter, granted in votes.items():
        core.step(msg(VOTE_RESP, voter, 1, core.term, reject=not granted))
    drain(core, storage)

    assert core.role == role
    assert core.term == 1


@pytest.mark.parametrize(("vote", "candidate", "reject"), [
    (NONE, 2, False),
    (NONE, 3, False),
    (2, 2, False),
    (3, 3, False),
    (2, 3, True),
    (3, 2, True),
])
def test_follower_vote(vote: int, candidate: int, reject: bool) -> None:
    """Raft paper §5.2: each server votes for at most one candidate in a given term, on a
    first-come-first-served basis."""
    storage = MemoryStorage(ConfState(frozenset({1, 2, 3})))
    storage.set_hard_state(HardState(term=1, vote=vote))
    core, _ = make_core(1, storage=storage)

    core.step(msg(VOTE, candidate, 1, 1))
    out = drain(core, storage)

    assert [(m.to, m.type, m.reject) for m in out] == [(candidate, VOTE_RESP, reject)]


@pytest.mark.parametrize("term", [1, 2])
def test_candidate_fallback(term: int) -> None:
    """Raft paper §5.2: if the AppendEntries RPC a candidate receives comes from a leader whose
    term is at least as large as the candidate's, the candidate returns to follower state."""
    core, storage = make_core(1, pre_vote=False)
    core.campaign()
    drain(core, storage)
    assert core.role == Role.CANDIDATE

    core.step(msg(APPEND, 2, 1, term))

    assert core.role == Role.FOLLOWER
    assert core.term == term
    assert core.leader == 2


def test_election_timeout_randomized() -> None:
    """Raft paper §5.2: election timeouts are chosen randomly from a fixed interval, here
    [election_ticks, 2 * election_ticks), drawn from the injected rng only."""
    election_ticks = 10
    seen = set()
    for seed in range(200):
        core, _storage = make_core(1, seed=seed, election_ticks=election_ticks, pre_vote=False)
        for ticks in range(1, 2 * election_ticks + 1):
            core.tick()
            if core.role == Role.CANDIDATE:
                seen.add(ticks)
                break
        else:
            raise AssertionError(f"seed {seed}: no election within {2 * election_ticks} ticks")

    assert seen == set(range(election_ticks, 2 * election_ticks))


def test_election_timeout_is_reproducible() -> None:
    """Raft paper §5.2 (randomized timeouts), Rillet rule: the same seed gives the same
    timeouts, because the only randomness is the injected random.Random."""
    def first_timeouts(seed: int) -> list[int]:
        core, _storage = make_core(1, seed=seed, pre_vote=False)
        out = []
        for _ in range(5):
            ticks = 0
            while core.role == Role.FOLLOWER or ticks == 0:
                core.tick()
                ticks += 1
                if core.role == Role.CANDIDATE:
                    break
            out.append(ticks)
            core.step(msg(APPEND, 2, 1, core.term + 1))
        return out

    assert first_timeouts(7) == first_timeouts(7)


def test_election_safety_under_random_partitions() -> None:
    """Raft paper §5.2 (Election Safety, Figure 3): at most one leader can be elected in a
    given term, whatever the timing and partitions."""
    rng = random.Random(42)
    for seed in range(20):
        net = Network(range(1, 6), seed=seed)
        leaders_by_term: dict[int, set[int]] = {}
        for _ in range(150):
            if rng.random() < 0.1:
                net.heal()
                for _ in range(rng.randrange(3)):
                    net.isolate(rng.randrange(1, 6))
            node = rng.randrange(1, 6)
            net.cores[node].tick()
            net.stabilize()
            for core in net.cores.values():
                if core.role == Role.LEADER:
                    leaders_by_term.setdefault(core.term, set()).add(core.id)
        assert all(len(ids) == 1 for ids in leaders_by_term.values()), (seed, leaders_by_term)
        assert leaders_by_term, f"seed {seed}: no leader at all"


# -- §5.3 Log replication ------------------------------------------------------------------


def test_leader_start_replication() -> None:
    """Raft paper §5.3: the leader appends the command to its log as a new entry, then issues
    AppendEntries RPCs in parallel to each of the other servers to replicate it; the RPC
    carries the index and term of the entry that precedes the new one."""
    core, storage = make_core(1)
    make_leader(core, storage)
    last = core.log.last_index()

    index = core.propose(b"some data")
    out = drain(core, storage)

    assert index == last + 1
    expected = (Entry(last + 1, 1, data=b"some data"),)
    assert sorted((m.to, m.type, m.index, m.log_term, m.entries, m.commit) for m in out) == [
        (2, APPEND, last, 1, expected, last), (3, APPEND, last, 1, expected, last)]


def test_leader_commit_entry() -> None:
    """Raft paper §5.3: when the entry has been safely replicated, the leader applies it and
    returns the result; it includes the highest committed index in future AppendEntries RPCs
    so that followers find out."""
    core, storage = make_core(1)
    make_leader(core, storage)
    index = core.propose(b"some data")
    drain(core, storage)

    core.step(msg(APPEND_RESP, 2, 1, 1, index=index))
    rd = core.ready()
    core.advance(rd)

    assert core.commit_index == index
    assert [e.data for e in rd.committed_entries] == [b"some data"]
    assert sorted((m.to, m.commit) for m in rd.messages if m.type == APPEND) == [
        (2, index), (3, index)]


@pytest.mark.parametrize(("size", "acceptors", "committed"), [
    (1, set(), True),
    (3, set(), False),
    (3, {2}, True),
    (3, {2, 3}, True),
    (5, set(), False),
    (5, {2}, False),
    (5, {2, 3}, True),
    (5, {2, 3, 4}, True),
    (5, {2, 3, 4, 5}, True),
])
def test_leader_acknowledge_commit(size: int, acceptors: set[int], committed: bool) -> None:
    """Raft paper §5.3: a log entry is committed once the leader that created it has
    replicated it on a majority of the servers (the leader's own copy counts once it is on
    its disk)."""
    core, storage = make_core(1, voters=range(1, size + 1))
    make_leader(core, storage)
    index = core.propose(b"some data")
    drain(core, storage)

    for node in sorted(acceptors):
        core.step(msg(APPEND_RESP, node, 1, 1, index=index))
    drain(core, storage)

    assert (core.commit_index == index) == committed


def test_leader_does_not_count_unpersisted_own_entry() -> None:
    """Raft paper §5.3 with Figure 2's persistence rule: the leader's own copy counts toward
    the majority only once it is on stable storage, i.e. after advance() of the Ready that
    carried it."""
    core, storage = make_core(1)
    make_leader(core, storage)
    index = core.propose(b"x")

    core.step(msg(APPEND_RESP, 2, 1, 1, index=index))
    assert core.commit_index == index - 1, "committed before the leader persisted"
    drain(core, storage)

    assert core.commit_index == index


def test_leader_commit_preceding_entries() -> None:
    """Raft paper §5.3: when the leader commits an entry, it also commits all preceding
    entries in its log, including those created by previous leaders."""
    for terms in ([], [2], [1, 1], [1, 2]):
        storage = MemoryStorage(ConfState(frozenset({1, 2, 3})))
        store_log(storage, terms)
        storage.set_hard_state(HardState(term=2))
        core, _ = make_core(1, storage=storage, pre_vote=False)
        core.campaign()
        drain(core, storage)
        core.step(msg(VOTE_RESP, 2, 1, 3))
        drain(core, storage)
        assert core.role == Role.LEADER

        index = core.propose(b"some data")
        drain(core, storage)
        core.step(msg(APPEND_RESP, 2, 1, 3, index=index))
        rd = core.ready()
        core.advance(rd)

        assert [e.index for e in rd.committed_entries] == list(range(1, index + 1)), terms


def test_follower_commit_entry() -> None:
    """Raft paper §5.3: once a follower learns that a log entry is committed, it applies the
    entry to its local state machine (in log order)."""
    core, _storage = make_core(1)
    entries = (Entry(1, 1, data=b"a"), Entry(2, 1, data=b"b"))

    core.step(msg(APPEND, 2, 1, 1, entries=entries, commit=1))
    rd = core.ready()
    core.advance(rd)

    assert core.commit_index == 1
    assert rd.committed_entries == [entries[0]]


@pytest.mark.parametrize(("log_term", "index", "reject", "hint"), [
    (0, 0, False, 0),   # matches the empty log start
    (1, 1, False, 0),
    (2, 2, False, 0),
    (1, 2, True, 1),    # term at 2 is 2 > 1: hint back to 1 (term 1)
    (3, 3, True, 2),    # no entry 3: hint at our last index
])
def test_follower_check_append(log_term: int, index: int, reject: bool, hint: int) -> None:
    """Raft paper §5.3: if the follower does not find an entry in its log with the same index
    and term as the one preceding the new entries, it refuses them (consistency check); the
    refusal carries a hint so the leader can skip a whole term at once (§5.3, end)."""
    storage = MemoryStorage(ConfState(frozenset({1, 2, 3})))
    store_log(storage, [1, 2])
    storage.set_hard_state(HardState(term=2, commit=1))
    core, _ = make_core(1, storage=storage)

    core.step(msg(APPEND, 2, 1, 2, log_term=log_term, index=index, commit=1))
    out = drain(core, storage)

    assert len(out) == 1 and out[0].type == APPEND_RESP
    assert out[0].reject == reject
    if reject:
        assert (out[0].index, out[0].reject_hint) == (index, hint)


@pytest.mark.parametrize(("index", "log_term", "entries", "expected"), [
    (2, 2, [(3, 3)], [1, 2, 3]),
    (1, 1, [(2, 3), (3, 4)], [1, 3, 4]),
    (0, 0, [(1, 1)], [1, 2]),
    (0, 0, [(1, 3)], [3]),
])
def test_follower_append_entries(index: int, log_term: int, entries: list[tuple[int, int]],
                                 expected: list[int]) -> None:
    """Raft paper §5.3: if an existing entry conflicts with a new one (same index, different
    terms), the follower deletes the existing entry and all that follow it, then appends any
    new entries not already in the log."""
    storage = MemoryStorage(ConfState(frozenset({1, 2, 3})))
    store_log(storage, [1, 2])
    storage.set_hard_state(HardState(term=1))
    core, _ = make_core(1, storage=storage)
    ents = tuple(Entry(i, t) for i, t in entries)

    core.step(msg(APPEND, 2, 1, 4, index=index, log_term=log_term, entries=ents))
    drain(core, storage)

    assert [t for _, t, _ in _log(storage)] == expected


def _log(storage: MemoryStorage) -> list[tuple[int, int, bytes]]:
    return [(e.index, e.term, e.data)
            for e in storage.entries(storage.first_index(), storage.last_index() + 1)]


# Figure 7 of the paper: the leader's log (term 8) and follower logs a) to f), as terms.
_FIG7_LEADER = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]
_FIG7_FOLLOWERS = {
    "a": [1, 1, 1, 4, 4, 5, 5, 6, 6],
    "b": [1, 1, 1, 4],
    "c": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
    "d": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
    "e": [1, 1, 1, 4, 4, 4, 4],
    "f": [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
}


@pytest.mark.parametrize("case", sorted(_FIG7_FOLLOWERS))
def test_leader_sync_follower_log(case: str) -> None:
    """Raft paper §5.3 (Figure 7): the leader handles inconsistencies by forcing the
    followers' logs to duplicate its own: it finds the latest entry where the two logs agree,
    deletes the follower's entries after it and sends its own; missing and extraneous entries
    alike are repaired."""
    net = Network([1, 2, 3], pre_vote=False)
    store_log(net.storages[1], _FIG7_LEADER)
    net.storages[1].set_hard_state(HardState(term=7))
    store_log(net.storages[2], _FIG7_FOLLOWERS[case])
    net.storages[2].set_hard_state(HardState(term=7))
    net.storages[3].set_hard_state(HardState(term=7))  # a voter with an empty log
    for node in (1, 2, 3):
        net.restart(node)

    net.elect(1)
    net.propose(1, b"")

    assert _log(net.storages[2]) == _log(net.storages[1])
    assert net.cores[1].term == 8


def test_leader_append_only() -> None:
    """Raft paper §5.3 (Leader Append-Only, Figure 3): a leader never overwrites or deletes
    entries in its log; it only appends new entries."""
    net = Network([1, 2, 3])
    net.elect(1)
    before = _log(net.storages[1])
    rng = random.Random(1)
    for i in range(30):
        if rng.random() < 0.3:
            net.isolate(rng.choice([2, 3]))
        elif rng.random() < 0.3:
            net.heal()
        net.propose(1, b"e%d" % i)
        net.tick(rng.choice([1, 2, 3]))
        if net.cores[1].role != Role.LEADER:
            break
        after = _log(net.storages[1])
        assert after[:len(before)] == before
        before = after


def test_log_matching_under_random_faults() -> None:
    """Raft paper §5.3 (Log Matching, Figure 3): if two logs contain an entry with the same
    index and term, the logs are identical in all entries up through that index."""
    for seed in range(10):
        rng = random.Random(seed)
        net = Network(range(1, 6), seed=seed)
        for step in range(200):
            r = rng.random()
            if r < 0.05:
                net.heal()
            elif r < 0.1:
                net.isolate(rng.randrange(1, 6))
            leaders = net.leaders()
            if leaders and rng.random() < 0.5:
                net.cores[leaders[-1]].propose(b"s%d-%d" % (seed, step))
            net.cores[rng.randrange(1, 6)].tick()
            net.stabilize()
        logs = {n: {i: (t, d) for i, t, d in _log(net.storages[n])} for n in net.cores}
        for a in logs:
            for b in logs:
                common = [i for i in logs[a] if i in logs[b] and logs[a][i][0] == logs[b][i][0]]
                for i in common:
                    assert all(logs[a][j] == logs[b][j] for j in range(1, i + 1)
                               if j in logs[a] and j in logs[b]), (seed, a, b, i)


# -- §5.4 Safety -------------------------------------------------------------------------------


def test_vote_request_carries_last_entry() -> None:
    """Raft paper §5.4.1: the RequestVote RPC includes information about the candidate's log
    (the index and term of its last entry)."""
    storage = MemoryStorage(ConfState(frozenset({1, 2, 3})))
    store_log(storage, [1, 2, 2])
    storage.set_hard_state(HardState(term=2))
    core, _ = make_core(1, storage=storage, pre_vote=False)

    core.campaign()
    out = drain(core, storage)

    assert sorted((m.to, m.type, m.term, m.index, m.log_term) for m in out) == [
        (2, VOTE, 3, 3, 2), (3, VOTE, 3, 3, 2)]


@pytest.mark.parametrize(("voter_log", "log_term", "index", "reject"), [
    ([1], 1, 1, False),      # same last term, same length
    ([1], 1, 2, False),      # same last term, longer
    ([1, 1], 1, 1, True),    # same last term, shorter
    ([1], 2, 1, False),      # later last term
    ([1], 2, 2, False),
    ([1, 1], 2, 1, False),   # later last term beats length
    ([2], 1, 1, True),       # earlier last term
    ([2], 1, 2, True),
    ([2, 1], 1, 1, True),
])
def test_voter(voter_log: list[int], log_term: int, index: int, reject: bool) -> None:
    """Raft paper §5.4.1: the voter denies its vote if its own log is more up-to-date than
    that of the candidate: the later last term wins; with equal last terms, the longer log."""
    storage = MemoryStorage(ConfState(frozenset({1, 2, 3})))
    store_log(storage, voter_log)
    storage.set_hard_state(HardState(term=2))
    core, _ = make_core(1, storage=storage)

    core.step(msg(VOTE, 2, 1, 3, log_term=log_term, index=index))
    out = drain(core, storage)

    assert [(m.type, m.reject) for m in out] == [(VOTE_RESP, reject)]


def test_leader_completeness() -> None:
    """Raft paper §5.4.1 (Leader Completeness, Figure 3): if an entry is committed in a term,
    it is present in the logs of the leaders of all later terms: a node that missed it cannot
    win an election."""
    net = Network([1, 2, 3], pre_vote=False, check_quorum=False)
    net.elect(1)
    net.cut(1, 3)
    index = net.propose(1, b"committed")
    assert net.cores[1].commit_index == index
    assert (index, 1, b"committed") not in _log(net.storages[3])
    net.heal()
    net.isolate(1)

    for _ in range(200):
        net.tick_all()
        # 3 missed the committed entry: 2 refuses it, so it never wins.
        assert net.cores[3].role != Role.LEADER
        if net.cores[2].role == Role.LEADER:
            break

    assert net.cores[2].role == Role.LEADER
    assert net.cores[3].term > 1, "3 never campaigned: the test proved nothing"
    assert (index, 1, b"committed") in _log(net.storages[2])


@pytest.mark.parametrize(("ack_index", "committed"), [(1, 0), (2, 0), (3, 3)])
def test_leader_only_commits_log_from_current_term(ack_index: int, committed: int) -> None:
    """Raft paper §5.4.2: Raft never commits log entries from previous terms by counting
    replicas; only entries from the leader's current term are committed that way."""
    storage = MemoryStorage(ConfState(frozenset({1, 2})))
    store_log(storage, [1, 2])
    storage.set_hard_state(HardState(term=2))
    core, _ = make_core(1, voters=(1, 2), storage=storage, pre_vote=False)
    core.campaign()
    drain(core, storage)
    core.step(msg(VOTE_RESP, 2, 1, 3))
    drain(core, storage)
    assert core.role == Role.LEADER and core.log.last_index() == 3

    core.step(msg(APPEND_RESP, 2, 1, 3, index=ack_index))
    drain(core, storage)

    assert core.commit_index == committed


def test_figure8_previous_term_entry_not_committed_by_counting() -> None:
    """Raft paper §5.4.2 (Figure 8): an entry from an earlier term stored on a majority can
    still be overwritten by a later leader, so a leader must not count replicas of it; it
    commits only once an entry of its own term is replicated on a majority."""
    # Init: 1 leads term 1 and got entry 2 ("old") only onto 2; then 5 leads term 2 with
    # an entry at index 2 that nobody else has. One entry per APPEND, to control delivery.
    net = Network(range(1, 6), pre_vote=False, check_quorum=False, max_size_per_msg=1)
    net.elect(1)
    for n in (3, 4, 5):
        net.cut(1, n)
    old_index = net.propose(1, b"old")
    assert net.cores[1].commit_index == old_index - 1
    net.heal()
    net.isolate(1)
    net.isolate(2)
    net.hook = lambda m: None if m.frm == 5 and m.type == APPEND else m
    net.elect(5)
    assert net.cores[5].log.term(old_index) == 2
    net.hook = None
    net.heal()
    net.isolate(5)

    # Test: 1 wins term 3 and spreads "old" (term 1) to a majority (1, 2, 3), while its own
    # term-3 no-op is held back from 3 and 4.
    def hold_back(m: Message) -> Message:
        if m.type == APPEND and m.to in (3, 4):
            kept = tuple(e for e in m.entries if e.index <= old_index)
            return dataclasses.replace(m, entries=kept)
        return m

    net.hook = hold_back
    net.restart(1)  # 1 crashed as leader of term 1; back, it loses term 2 (3 and 4 voted)
    net.cores[1].campaign()
    net.stabilize()
    leader = net.elect(1)
    assert leader.term == 3
    assert (old_index, 1, b"old") in _log(net.storages[3])

    # Check: "old" is on a majority but from an earlier term: not committed by counting.
    assert leader.commit_index < old_index
    net.hook = None
    net.tick(1)  # a heartbeat round finds 3 and 4 behind and resends the no-op
    assert leader.commit_index >= old_index + 1
    assert leader.log.term(leader.commit_index) == leader.term


def test_stale_vote_request_is_rejected_with_the_current_term() -> None:
    """Raft §5.1 and Figure 2 (RequestVote): "reply false if term < currentTerm"; the reply
    carries currentTerm "for candidate to update itself". Found by the simulator (seed
    201185): a candidate whose term lagged a voter's, with pre-vote off, was ignored on every
    try and never caught up, so the group never elected a leader again."""
    core, storage = make_core(2, pre_vote=False)
    core.step(msg(VOTE, 3, 2, 5, index=0, log_term=0))  # we move to term 5
    drain(core, storage)

    core.step(msg(VOTE, 1, 2, 3, index=9, log_term=3))
    out = drain(core, storage)

    assert [(m.type, m.to, m.term, m.reject) for m in out] == [(VOTE_RESP, 1, 5, True)]
    assert (core.term, core.vote) == (5, 3)

    candidate, cstorage = make_core(1, pre_vote=False)
    candidate.campaign()
    drain(candidate, cstorage)
    candidate.step(out[0])
    assert candidate.role == Role.FOLLOWER and candidate.term == 5
