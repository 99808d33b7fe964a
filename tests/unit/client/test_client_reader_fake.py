"""Consumer, Replay and Admin against in-process fake nodes: reads follow partition leaders
and resume after a failure with no record twice and none skipped."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from rillet.client import Admin, Consumer, Replay
from tests.unit.client.fake_cluster import FakeCluster, start_cluster, stop_cluster


@pytest.fixture
async def cluster() -> AsyncIterator[FakeCluster]:
    c = await start_cluster(nodes=3, partitions=2)
    c.leaders = {0: 0, 1: 1}
    for p, batches in ((0, 5), (1, 2)):
        for b in range(batches):
            c.store(p, [b"p%d-%d" % (p, b * 3 + i) for i in range(3)])
    yield c
    await stop_cluster(c)


def _addresses(c: FakeCluster) -> str:
    return ",".join(n.address for n in c.nodes)


def _check_exactly_once(got: list[tuple[int, int, bytes]], counts: dict[int, int]) -> None:
    for p, n in counts.items():
        mine = [(off, v) for part, off, v in got if part == p]
        assert mine == [(i, b"p%d-%d" % (p, i)) for i in range(n)], f"partition {p}"


async def test_consumer_resumes_at_the_new_leader_from_the_next_offset(
        cluster: FakeCluster) -> None:
    # Node 0 fails its stream after two answers (then on every reconnect after two more);
    # partition 0 moves to node 2 while the consumer reads.
    cluster.nodes[0].fail_reads_after = 2
    got: list[tuple[int, int, bytes]] = []
    async with Consumer(_addresses(cluster), "t", start="earliest", queue_size=1,
                        retry_backoff_ms=10) as consumer:
        async for r in consumer:
            got.append((r.partition, r.offset, r.value))
            if len(got) == 4:
                cluster.leaders[0] = 2
            if len(got) == 15 + 6:
                break
        # Records written after the move arrive from the new leader, once.
        cluster.store(0, [b"p0-15", b"p0-16"])
        async for r in consumer:
            got.append((r.partition, r.offset, r.value))
            if len(got) == 23:
                break
    _check_exactly_once(got, {0: 17, 1: 6})
    assert consumer.positions == {0: 17, 1: 6}


async def test_replay_resumes_each_partition_up_to_its_original_end(
        cluster: FakeCluster) -> None:
    cluster.nodes[0].fail_reads_after = 1
    got: list[tuple[int, int, bytes]] = []
    async with Replay(_addresses(cluster), "t", queue_size=1, retry_backoff_ms=10) as replay:
        async for r in replay:
            got.append((r.partition, r.offset, r.value))
            if len(got) == 1:
                cluster.leaders[0] = 2
    _check_exactly_once(got, {0: 15, 1: 6})


async def test_describe_cluster_lists_brokers_leaders_and_reachability(
        cluster: FakeCluster) -> None:
    await cluster.nodes[2].server.stop(grace=None)  # type: ignore[union-attr]
    async with Admin(cluster.nodes[0].address) as admin:
        desc = await admin.describe_cluster(probe_timeout_s=0.5)
    assert [(b.node_id, b.reachable) for b in desc.brokers] == [
        (0, True), (1, True), (2, False)]
    assert [(p.partition, p.leader_id, p.replicas) for p in desc.topics["t"]] == [
        (0, 0, (0, 1, 2)), (1, 1, (0, 1, 2))]
    assert desc.leaders_by_node() == {0: 1, 1: 1, 2: 0}
    assert desc.leaderless() == []
