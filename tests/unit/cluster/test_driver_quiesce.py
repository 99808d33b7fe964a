"""RaftDriver with quiescence (decision 0404): idle groups are not ticked and send nothing,
nodes ping each other instead, and a leader's node that dies or is cut off is replaced in
every quiesced group within a bounded number of ticks."""

from __future__ import annotations

import asyncio

import pytest
from drivernet import RAFT, Cluster

from rillet.cluster.driver import NODE_GROUP_ID, CountingSyncer, RaftDriver
from rillet.cluster.raft import Entry, MemoryStorage, Role, Snapshot
from rillet.cluster.transport import InMemoryNetwork
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(60)

GROUPS = 20
# From silence to a new leader: an election timeout to notice the silence, the rest of a
# randomized timeout (< one more), a pre-vote and a vote; plus slack for a loaded machine.
FAILOVER_TICKS_MAX = RAFT.election_ticks * 4


def _all_quiet(cluster: Cluster, among: list[int] | None = None) -> bool:
    return all(len(cluster.driver(n).quiesced_groups()) == len(cluster.groups)
               for n in among or list(cluster.nodes))


async def _quiet_cluster() -> Cluster:
    cluster = Cluster(3, GROUPS)
    cluster.start()
    for g in cluster.groups:
        cluster.driver(1 + g % 3).campaign(g)
    await cluster.wait_leaders()
    await cluster.wait_for(lambda: _all_quiet(cluster), "every group to quiesce on every node")
    return cluster


async def test_idle_groups_quiesce_and_only_node_pings_flow() -> None:
    cluster = await _quiet_cluster()
    try:
        stats = {n: cluster.driver(n).stats for n in cluster.nodes}
        before = {n: (s.ticks, s.group_ticks, s.messages_out, s.pings_out, s.pings_in)
                  for n, s in stats.items()}
        # Quiet for a while: several election timeouts.
        await cluster.wait_for(
            lambda: all(s.ticks >= before[n][0] + 3 * RAFT.election_ticks
                        for n, s in stats.items()), "three election timeouts of ticks")
        for n, s in stats.items():
            ticks, group_ticks, messages, pings_out, pings_in = before[n]
            assert s.group_ticks == group_ticks, f"node {n} ticked quiesced groups"
            assert s.messages_out == messages, f"node {n} sent raft messages while idle"
            assert s.pings_out > pings_out and s.pings_in > pings_in
            # A ping per peer every election_ticks // 4 ticks at most, not one per group.
            assert s.pings_out - pings_out <= 2 * (s.ticks - ticks)
            assert cluster.driver(n).peers() == sorted(set(cluster.nodes) - {n})
        assert all(cluster.driver(n).core(g).term == 1 for n in cluster.nodes
                   for g in cluster.groups)

        # A proposal wakes its group, commits, and the group goes quiet again.
        lead = cluster.leader(1)
        assert await asyncio.wait_for(cluster.driver(lead).propose(1, b"x"), 5) > 0
        await cluster.wait_for(lambda: _all_quiet(cluster), "group 1 to quiesce again")
        assert all(b"x" in node.machines[1].data() for node in cluster.nodes.values())
    finally:
        await cluster.stop()


async def _failover_ticks(cluster: Cluster, dead: int) -> int:
    """Wait until every group node ``dead`` led has a leader among the others; the ticks
    that took, as the survivors counted them."""
    survivors = [n for n in cluster.nodes if n != dead]
    start = cluster.driver(survivors[0]).stats.ticks
    await cluster.wait_leaders(among=survivors)
    return cluster.driver(survivors[0]).stats.ticks - start


async def test_cut_off_leader_node_is_replaced_in_every_quiesced_group() -> None:
    cluster = await _quiet_cluster()
    try:
        led_by_1 = [g for g in cluster.groups if cluster.leader(g) == 1]
        assert led_by_1
        cluster.network.isolate(1)
        ticks = await _failover_ticks(cluster, 1)
        print(f"failover after a cut: {ticks} ticks")
        assert ticks <= FAILOVER_TICKS_MAX, f"failover took {ticks} ticks"
        assert cluster.driver(2).stats.peer_timeouts >= 1
        # The cut-off node's quiesced leaders lost sight of their majority: they woke, and
        # check-quorum deposed them.
        await cluster.wait_for(
            lambda: all(cluster.driver(1).core(g).role != Role.LEADER for g in led_by_1),
            "node 1 to stop leading once cut off")
        # Healed: node 1 rejoins as a follower without deposing anyone, and all quiesce.
        leaders = {g: cluster.leader(g, [2, 3]) for g in cluster.groups}
        cluster.network.heal_all()
        await cluster.wait_for(lambda: _all_quiet(cluster), "every group to quiesce again")
        assert {g: cluster.leader(g) for g in cluster.groups} == leaders
    finally:
        await cluster.stop()


async def test_crashed_leader_node_is_replaced_and_restarts_quietly() -> None:
    cluster = await _quiet_cluster()
    try:
        await cluster.nodes[2].crash()
        ticks = await _failover_ticks(cluster, 2)
        print(f"failover after a crash: {ticks} ticks")
        assert ticks <= FAILOVER_TICKS_MAX, f"failover took {ticks} ticks"
        lead = cluster.leader(1, [1, 3])
        await asyncio.wait_for(cluster.driver(lead).propose(1, b"after"), 5)
        cluster.nodes[2].restart()
        await cluster.wait_for(lambda: b"after" in cluster.nodes[2].machines[1].data(),
                               "the restarted node to catch up")
        await cluster.wait_for(lambda: _all_quiet(cluster), "every group to quiesce again")
    finally:
        await cluster.stop()


async def test_without_quiescence_every_group_ticks() -> None:
    net = InMemoryNetwork()
    driver = RaftDriver(1, net.transport(1), CountingSyncer(), raft_config=RAFT, tick_ms=5,
                        quiesce=False)
    for g in (1, 2):
        driver.add_group(g, MemoryStorage(), _NullMachine())
    driver.start()
    try:
        await wait_for(lambda: driver.stats.ticks >= 3, "three ticks")
        assert driver.stats.group_ticks >= 2 * driver.stats.ticks - 2
        assert not driver.core(1).config.quiesce
        with pytest.raises(ValueError, match="reserved"):
            driver.add_group(NODE_GROUP_ID, MemoryStorage(), _NullMachine())
    finally:
        await driver.stop()


class _NullMachine:
    def apply(self, entries: list[Entry]) -> list[int]:
        return [e.index for e in entries]

    def restore(self, snapshot: Snapshot) -> None:
        pass
