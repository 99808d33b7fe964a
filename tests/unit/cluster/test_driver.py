"""RaftDriver over an InMemoryNetwork: many groups per node, the Ready contract in rounds,
group commit, proposals' futures, partitions and a clean stop."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from drivernet import RAFT, Cluster

from rillet.cluster.driver import (
    DriverStoppedError,
    EntryOverwrittenError,
    LeadershipLostError,
    UnknownGroupError,
)
from rillet.cluster.raft import Entry, Message, MessageType, NotLeaderError, Role
from rillet.cluster.raft.codec import decode_message, encode_message

pytestmark = pytest.mark.timeout(60)


def _other_tasks() -> set[asyncio.Task[object]]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}


async def test_many_groups_elect_and_commit_in_order() -> None:
    cluster = Cluster(3, 50)
    cluster.start()
    try:
        leaders = await cluster.wait_leaders()
        futures = {}
        for g, lead in leaders.items():
            futures[g] = [cluster.driver(lead).propose(g, b"g%d-%d" % (g, k)) for k in range(3)]
        for g, futs in futures.items():
            indexes = await asyncio.gather(*futs)
            # Consecutive indexes, in proposal order, after the leader's no-op.
            assert indexes == list(range(indexes[0], indexes[0] + 3)), (g, indexes)
            lead = leaders[g]
            assert cluster.nodes[lead].machines[g].data() == [b"g%d-%d" % (g, k)
                                                             for k in range(3)]
        # Followers apply the same entries, in the same order, once they learn the commit.
        def all_applied() -> bool:
            return all(len(n.machines[g].data()) == 3 for n in cluster.nodes.values()
                       for g in cluster.groups)
        await cluster.wait_for(all_applied, "every node to apply every group's entries")
        for g in cluster.groups:
            seen = {tuple(e.index for e in n.machines[g].applied) for n in cluster.nodes.values()}
            assert len(seen) == 1, f"group {g} applied differently: {seen}"
    finally:
        await cluster.stop()
    assert not _other_tasks()


async def test_one_shared_sync_per_round_for_many_groups() -> None:
    cluster = Cluster(3, 50)
    cluster.start()
    try:
        for g in cluster.groups:
            cluster.driver(1).campaign(g)
        await cluster.wait_for(lambda: all(cluster.leader(g) == 1 for g in cluster.groups),
                               "node 1 to lead all 50 groups")
        node = cluster.nodes[1]
        stats = node.driver.stats
        calls_before, rounds_before = node.syncer.calls, stats.rounds
        futs = [node.driver.propose(g, b"x") for g in cluster.groups]
        await asyncio.gather(*futs)
        syncs = node.syncer.calls - calls_before
        rounds = stats.rounds - rounds_before
        # 50 groups appended in the same loop iteration: one round persisted all of them with
        # ONE sync (plus perhaps a later round for commit-index-only changes, which need none).
        assert 1 <= syncs <= rounds
        assert syncs < 5, f"{syncs} syncs for one proposal in each of 50 groups"
        assert max(node.syncer.sizes[calls_before:]) == 50
        assert node.syncer.calls == stats.syncs
        for follower in (2, 3):
            f = cluster.nodes[follower]
            assert f.syncer.calls == f.driver.stats.syncs <= f.driver.stats.rounds
    finally:
        await cluster.stop()


def _record_sends(cluster: Cluster,
                  node_id: int) -> list[tuple[int, MessageType, int, bool, int]]:
    """Record (to, type, entry count, reject, index) of everything node `node_id` sends."""
    sent: list[tuple[int, MessageType, int, bool, int]] = []
    transport = cluster.driver(node_id).transport
    original_send = transport.send

    def recording_send(to: int, messages: list[tuple[int, bytes]]) -> None:
        for _, buf in messages:
            if not buf:
                continue  # a node-level ping (a slow tick can make one due), not a message
            m = decode_message(buf)
            sent.append((to, m.type, len(m.entries), m.reject, m.index))
        original_send(to, messages)

    transport.send = recording_send  # type: ignore[method-assign]
    return sent


async def test_a_leader_replicates_while_it_syncs_but_applies_only_after() -> None:
    """Step 0 of the contract: the leader's APPEND leaves before its own sync returns (it
    writes in parallel with its followers); nothing is applied before a majority synced. One
    follower's sync is held too, so the leader's own sync is what makes the majority (with both
    followers synced, the entry may commit without the leader's: decision 0406)."""
    cluster = Cluster(3, 1)
    sent = _record_sends(cluster, 1)
    cluster.start()
    try:
        cluster.driver(1).campaign(1)
        await cluster.wait_for(lambda: cluster.leader(1) == 1, "node 1 to lead")
        node = cluster.nodes[1]
        node.syncer.gate.clear()
        cluster.nodes[3].syncer.gate.clear()
        sent.clear()
        fut = node.driver.propose(1, b"held")
        await asyncio.wait_for(node.syncer.waiting.wait(), 5)
        await cluster.wait_for(
            lambda: {s[0] for s in sent if s[1] == MessageType.APPEND and s[2]} == {2, 3},
            "the entry to leave for both followers while the leader's sync is held")
        for _ in range(20):
            await asyncio.sleep(0)
        assert not fut.done()
        assert node.machines[1].data() == []
        node.syncer.gate.set()
        index = await asyncio.wait_for(fut, 5)
        assert node.machines[1].applied[-1].index == index
    finally:
        cluster.nodes[1].syncer.gate.set()
        cluster.nodes[3].syncer.gate.set()
        await cluster.stop()


async def test_a_follower_acknowledges_only_after_its_sync_returns() -> None:
    cluster = Cluster(3, 1)
    sent = _record_sends(cluster, 2)
    cluster.start()
    try:
        cluster.driver(1).campaign(1)
        await cluster.wait_for(lambda: cluster.leader(1) == 1, "node 1 to lead")
        await cluster.wait_for(lambda: cluster.nodes[2].driver.core(1).leader == 1,
                               "node 2 to follow")
        follower = cluster.nodes[2]
        last = follower.driver.core(1).status().last_index
        follower.syncer.gate.clear()
        sent.clear()
        fut = cluster.driver(1).propose(1, b"held")
        await asyncio.wait_for(follower.syncer.waiting.wait(), 5)
        for _ in range(20):
            await asyncio.sleep(0)
        # Parked in its sync: no acknowledgement of the new entry has left node 2 (answers
        # about earlier entries may still be on their way out).
        def acks() -> list[tuple[int, MessageType, int, bool, int]]:
            return [s for s in sent if s[1] == MessageType.APPEND_RESP and not s[3]
                    and s[4] > last]

        assert not acks(), sent
        follower.syncer.gate.set()
        await asyncio.wait_for(fut, 5)
        assert follower.driver.core(1).status().last_index > last
        assert acks(), sent
    finally:
        cluster.nodes[2].syncer.gate.set()
        await cluster.stop()


async def test_cut_node_the_rest_commit_and_it_catches_up() -> None:
    cluster = Cluster(3, 10)
    cluster.start()
    try:
        await cluster.wait_leaders()
        cluster.network.isolate(3)
        leaders = await cluster.wait_leaders(among=[1, 2])
        assert set(leaders.values()) <= {1, 2}
        indexes = {}
        for g, lead in leaders.items():
            indexes[g] = await asyncio.wait_for(cluster.driver(lead).propose(g, b"while-cut"), 5)
        assert all(b"while-cut" not in cluster.nodes[3].machines[g].data()
                   for g in cluster.groups)
        cluster.network.heal_all()
        await cluster.wait_for(
            lambda: all(b"while-cut" in cluster.nodes[3].machines[g].data()
                        for g in cluster.groups),
            "the healed node to apply what the others committed")
        for g, index in indexes.items():
            assert cluster.nodes[3].storages[g].term(index) == \
                cluster.nodes[leaders[g]].storages[g].term(index)
    finally:
        await cluster.stop()


async def test_proposals_on_a_deposed_leader_fail_and_never_commit() -> None:
    cluster = Cluster(3, 1)
    cluster.start()
    try:
        cluster.driver(1).campaign(1)
        await cluster.wait_for(lambda: cluster.leader(1) == 1, "node 1 to lead")
        cluster.network.isolate(1)
        fut = cluster.driver(1).propose(1, b"lost")  # node 1 still believes it leads
        # check-quorum: without a majority, the leader steps down within an election timeout.
        with pytest.raises(LeadershipLostError) as info:
            await asyncio.wait_for(fut, 5)
        assert info.value.outcome_unknown and info.value.retriable
        await cluster.wait_leaders(among=[2, 3])
        lead = cluster.leader(1, [2, 3])
        await asyncio.wait_for(cluster.driver(lead).propose(1, b"kept"), 5)
        cluster.network.heal_all()
        await cluster.wait_for(lambda: b"kept" in cluster.nodes[1].machines[1].data(),
                               "the old leader to apply the new leader's entries")
        for node in cluster.nodes.values():
            assert b"lost" not in node.machines[1].data()
        with pytest.raises(NotLeaderError):
            cluster.driver(1).propose(1, b"refused")
    finally:
        await cluster.stop()


async def test_overwritten_entry_fails_with_entry_overwritten() -> None:
    # Node 1 leads, is cut off (check-quorum off, so it keeps believing it leads), and appends
    # an entry nobody else has. Then a leader of a newer term reaches it with a different entry
    # at that index, already committed: node 1 applies the other entry at the proposal's index.
    cluster = Cluster(3, 1, raft=dataclasses.replace(RAFT, check_quorum=False))
    cluster.start()
    try:
        cluster.driver(1).campaign(1)
        await cluster.wait_for(lambda: cluster.leader(1) == 1, "node 1 to lead")
        core = cluster.driver(1).core(1)
        await cluster.wait_for(lambda: core.applied_index == core.commit_index > 0,
                               "node 1 to apply its no-op")
        cluster.network.isolate(1)
        term, prev = core.term, core.commit_index
        fut = cluster.driver(1).propose(1, b"orphan")
        index = prev + 1
        other = Message(MessageType.APPEND, to=1, frm=2, term=term + 1, log_term=term,
                        index=prev, entries=(Entry(index, term + 1, data=b"winner"),),
                        commit=index)
        cluster.driver(1).receive(2, [(1, encode_message(other))])
        with pytest.raises(EntryOverwrittenError) as info:
            await asyncio.wait_for(fut, 5)
        assert not info.value.outcome_unknown
        assert cluster.nodes[1].machines[1].data() == [b"winner"]
    finally:
        await cluster.stop()


async def test_stop_fails_pending_futures_and_leaves_no_task() -> None:
    cluster = Cluster(3, 2)
    cluster.start()
    try:
        cluster.driver(1).campaign(1)
        await cluster.wait_for(lambda: cluster.leader(1) == 1, "node 1 to lead")
        node = cluster.nodes[1]
        node.syncer.gate.clear()
        fut = node.driver.propose(1, b"never")
        await asyncio.wait_for(node.syncer.waiting.wait(), 5)  # a round is parked in sync
        await node.driver.stop()
        with pytest.raises(DriverStoppedError):
            await fut
        with pytest.raises(DriverStoppedError):
            node.driver.propose(1, b"after stop")
        node.syncer.gate.set()
    finally:
        await cluster.stop()
    assert not _other_tasks(), _other_tasks()


async def test_unknown_groups_and_misaddressed_messages_are_refused_or_dropped() -> None:
    cluster = Cluster(3, 1)
    cluster.start()
    try:
        with pytest.raises(UnknownGroupError):
            cluster.driver(1).propose(99, b"x")
        before = cluster.driver(1).stats.dropped_in
        cluster.driver(1).receive(2, [(99, b"\x01"), (1, b"garbage")])
        assert cluster.driver(1).stats.dropped_in == before + 2
        await cluster.wait_leaders()
    finally:
        await cluster.stop()


async def test_restarted_node_recovers_from_its_log() -> None:
    cluster = Cluster(3, 3)
    cluster.start()
    try:
        leaders = await cluster.wait_leaders()
        for g, lead in leaders.items():
            await asyncio.wait_for(cluster.driver(lead).propose(g, b"before"), 5)
        await cluster.nodes[2].crash()
        leaders = await cluster.wait_leaders(among=[1, 3])
        for g, lead in leaders.items():
            await asyncio.wait_for(cluster.driver(lead).propose(g, b"during"), 5)
        cluster.nodes[2].restart()
        await cluster.wait_for(
            lambda: all(cluster.nodes[2].machines[g].data() == [b"before", b"during"]
                        for g in cluster.groups),
            "the restarted node to re-apply its log and catch up")
        assert cluster.driver(2).core(1).role in (Role.FOLLOWER, Role.LEADER)
    finally:
        await cluster.stop()


async def test_peer_down_names_a_peer_silent_for_an_election_timeout_until_it_speaks() -> None:
    cluster = Cluster(3, 2)
    cluster.start()
    try:
        cluster.driver(1).campaign(1)
        await cluster.wait_for(lambda: cluster.leader(1) == 1, "node 1 to lead")
        assert not cluster.driver(2).peer_down(3)
        cluster.network.isolate(3)
        await cluster.wait_for(
            lambda: cluster.driver(1).peer_down(3) and cluster.driver(2).peer_down(3),
            "nodes 1 and 2 to call node 3 down")
        assert not cluster.driver(1).peer_down(2)
        cluster.network.heal_all()
        await cluster.wait_for(
            lambda: not cluster.driver(1).peer_down(3) and not cluster.driver(2).peer_down(3),
            "node 3 to be heard again")
    finally:
        await cluster.stop()
