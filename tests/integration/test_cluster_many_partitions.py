"""1,000 partitions with replication factor 3 on three real nodes: every partition gets a
leader and leaders are spread over the nodes. (The idle cluster's CPU is a figure, measured
by `bench/idle_cluster.py --partitions 1000`, not asserted here.)"""

from __future__ import annotations

import collections

import pytest

from rillet.api.v1 import admin_pb2

pytestmark = [pytest.mark.integration, pytest.mark.chaos, pytest.mark.timeout(300)]

PARTITIONS = 1000


async def test_a_thousand_partitions_all_get_leaders_spread_over_the_nodes(cluster) -> None:
    async with cluster.stubs(0) as s:
        created = await s.admin.CreateTopic(admin_pb2.CreateTopicRequest(
            name="many", partitions=PARTITIONS, replication_factor=3), timeout=180)
    assert len(created.topic.partitions) == PARTITIONS
    leaders = await cluster.wait_leaders("many", timeout_s=120)
    assert len(leaders) == PARTITIONS
    counts = collections.Counter(leaders.values())
    assert set(counts) == {0, 1, 2}, counts
    # Every node holds a replica of every partition (3 nodes, RF 3), each one on disk.
    for node in (0, 1, 2):
        desc = await cluster.describe(node, "many", timeout_s=30)
        assert len(desc.partitions) == PARTITIONS
        assert all(sorted(p.replicas) == [0, 1, 2] for p in desc.partitions)
