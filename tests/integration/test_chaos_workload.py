"""The chaos workload and checker against real brokers.

1. A few seconds of workload on one broker, no faults, a final read: the checker must find
   nothing, every write acknowledged and read back.
2. The planted bug (nodes run by rillet.chaos.planted) on a 3-node cluster: with both followers
   killed the leader still acknowledges an acks=all write (it has no majority); kill -9 that
   leader, bring the followers back, and the write is gone. The checker must call it lost.
   (Helper E's harness runs the same with the full workload under a fault schedule.)
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from rillet.chaos.checker import check
from rillet.chaos.history import History, Op
from rillet.chaos.planted import WARNING
from rillet.chaos.timeline import render_svg
from rillet.chaos.workload import final_read, run_workload
from rillet.client import Admin, Producer
from tests.integration.conftest import BrokerProcess, Cluster, ClusterFactory
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


async def test_workload_on_one_broker_is_clean(broker: BrokerProcess, tmp_path: Path) -> None:
    async with Admin(broker.address) as admin:
        await admin.create_topic("chaos", partitions=3)
    history = History()
    stop = asyncio.Event()
    work = asyncio.create_task(run_workload(broker.address, "chaos", 3, history, stop,
                                            writers=2, readers=1, rate_per_writer=100.0))
    # Run until every partition has been read by the tailing reader at least 20 times over.
    await wait_for(lambda: len(history.reads) >= 60 and len(history.ops) >= 200,
                   "200 acknowledged writes and 60 reads", timeout_s=30.0, interval_s=0.05)
    stop.set()
    await asyncio.wait_for(work, 30.0)
    await final_read(broker.address, "chaos", 3, history, timeout_s=20.0)

    report = check(history)
    assert report.ok, report.to_json()
    assert report.unknown == 0 and report.failed == 0, report.to_json()
    assert report.acknowledged == report.writes >= 200
    assert sum(p.final_log_records for p in report.partitions.values()) == report.acknowledged
    writes = [o for o in history.ops if o.kind == "write"]
    assert {o.process for o in writes} == {0, 1}
    assert all(o.offset is not None and o.end_s >= o.start_s for o in writes)
    # One consumer session per partition, each ended by the stop, none broken off.
    sessions = [o for o in history.ops if o.kind == "read"]
    assert sorted(o.partition for o in sessions) == [0, 1, 2]
    assert all(o.outcome == "ok" for o in sessions)
    assert report.read_errors == 0 and report.operations == report.writes + 3

    history.to_json(tmp_path / "history.json")
    again = check(History.from_json(tmp_path / "history.json"))
    assert again.to_dict() == report.to_dict()
    render_svg(history, tmp_path / "run.svg", report)
    assert (tmp_path / "run.svg").read_text().count('class="throughput"') == 1


async def _leader(cluster: Cluster, topic: str) -> int:
    leaders = await cluster.wait_leaders(topic)
    return leaders[0]


@pytest.mark.chaos
async def test_planted_early_ack_loses_an_acknowledged_write(
        cluster_factory: ClusterFactory) -> None:
    cluster = await cluster_factory(3, module="rillet.chaos.planted")
    await cluster.create_topic("planted", partitions=1, replication_factor=3)
    leader = await _leader(cluster, "planted")
    followers = [n for n in cluster.nodes if n.node_id != leader]
    history = History()

    async def write(producer: Producer, value: str) -> None:
        start = history.clock()
        meta = await asyncio.wait_for(await producer.send("planted", value.encode(),
                                                          partition=0), 5.0)
        history.add_op(Op(0, "write", 0, value, start, history.clock(), "ok", meta.offset))

    async with Producer(cluster.node(leader).address, acks="all") as producer:
        await write(producer, "0-0")
        for n in followers:  # 0-0 is on every node before the followers die
            async def has_it(node: int = n.node_id) -> bool | None:
                topic = await cluster.describe(node, "planted")
                return True if topic.partitions[0].high_watermark >= 1 else None
            await cluster.poll(has_it, f"node {n.node_id} to apply 0-0", 10.0)
        # Both followers die at once; the leader keeps its role for an election timeout,
        # and in that time it acknowledges a write nobody else has.
        for n in followers:
            os.kill(n.pid, signal.SIGKILL)
        for n in followers:
            n.kill()
        await write(producer, "0-1")
        await producer.close(flush=False)
    cluster.node(leader).kill()

    for n in followers:  # without the early-acknowledged entry; the old leader stays dead
        n.start(wait=False)
    for n in followers:
        n.wait_serving()
    await cluster.wait_leaders("planted", exclude=[leader])
    bootstrap = ",".join(n.address for n in followers)
    await final_read(bootstrap, "planted", 1, history, timeout_s=30.0)

    report = check(history)
    assert not report.ok
    assert report.violations == ["lost"], report.to_json()
    assert report.partitions[0].lost_values == ["0-1"]
    assert WARNING in cluster.node(leader).log_text()
