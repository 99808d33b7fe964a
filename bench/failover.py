"""Failover gap: from kill -9 of a partition's leader to the first acks=all answer after it.

`python bench/failover.py [--kills 10] [--port 19931] [--raft-tick-ms 100] [--election-ticks 10]`

Starts three local nodes (rillet.devcluster: 127.0.0.1-3, --peers), creates one topic with
replication factor 3, and keeps one producer writing batches with acks=all to partition 0,
one at a time, to the partition's leader. Each round kills the leader of partition 0 with
SIGKILL, records the time to the first acknowledged batch after the kill, restarts the
killed node on its data and waits until its replica has caught up before the next round.
Prints one line per kill, then median and p90. The node's Raft settings are its defaults
unless given (the issue's target: median gap <= 2 s with the defaults).

The producer speaks the generated stubs directly: after a failure it asks a live node for
metadata, and when that names no live leader yet it tries each live node in turn (a
non-leader answers NOT_LEADER at once). So the gap is the cluster's (detection, election,
metadata) plus at most one round of this discovery, not a client library's retry backoff.
Before each kill the producer is pointed at the leader the metadata names: a node that does
not lead forwards produce requests, so which node answers does not tell who leads; and an
answer the victim sent just before it died does not count.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time

import grpc
import grpc.aio

from rillet import batch
from rillet.api.v1 import admin_pb2, admin_pb2_grpc, log_pb2, log_pb2_grpc
from rillet.devcluster import (
    NodeProcess,
    create_topic,
    restart_node,
    temporary_cluster,
    wait_leaders,
    wait_serving,
)

log = logging.getLogger("bench.failover")
TOPIC = "failover"
ANSWER_TIMEOUT_S = 3.0
CATCH_UP_TIMEOUT_S = 60.0
OPTIONS = [("grpc.initial_reconnect_backoff_ms", 50), ("grpc.min_reconnect_backoff_ms", 50),
           ("grpc.max_reconnect_backoff_ms", 200), ("grpc.use_local_subchannel_pool", 1)]


class AckLoop:
    """Writes to partition 0 without pause and remembers when each ack arrived."""

    def __init__(self, nodes: list[NodeProcess]) -> None:
        self.nodes = nodes
        #: (monotonic time, node id) of every ack, in arrival order.
        self.acks: list[tuple[float, int]] = []
        self.leader: int | None = None
        self.failures = 0
        self._stop = False
        self._switch: int | None = None

    def alive(self) -> list[NodeProcess]:
        return [n for n in self.nodes if n.proc.poll() is None]

    async def _find_leader(self) -> list[int]:
        """Candidates, best first: the leader a live node names, then every live node."""
        alive = self.alive()
        for node in alive:
            try:
                async with grpc.aio.insecure_channel(node.address, options=OPTIONS) as ch:
                    stub = admin_pb2_grpc.MetadataStub(ch)  # type: ignore[no-untyped-call]
                    resp = await stub.GetMetadata(admin_pb2.MetadataRequest(topics=[TOPIC]),
                                                  timeout=0.5)
            except grpc.aio.AioRpcError:
                continue
            for tm in resp.topics:
                for pm in tm.partitions:
                    if pm.partition == 0 and any(n.node_id == pm.leader_id for n in alive):
                        return [pm.leader_id, *(n.node_id for n in alive
                                                if n.node_id != pm.leader_id)]
            break
        return [n.node_id for n in alive]

    async def run(self) -> None:
        seq = 0
        while not self._stop:
            if self._switch is not None:
                candidates, self._switch = [self._switch], None
            elif self.leader is not None:
                candidates = [self.leader]
            else:
                candidates = await self._find_leader()
            self.leader = None
            for node_id in candidates:
                if self._stop:
                    return
                acked_here = False
                try:
                    async with grpc.aio.insecure_channel(self.nodes[node_id].address,
                                                         options=OPTIONS) as ch:
                        stub = log_pb2_grpc.ProduceStub(ch)  # type: ignore[no-untyped-call]
                        call = stub.Produce()
                        try:
                            while not self._stop and self._switch in (None, node_id):
                                self._switch = None  # already on the node asked for
                                seq += 1
                                data = batch.encode([f"v{seq}".encode() * 10],
                                                    timestamps_ms=[int(time.time() * 1000)])
                                await call.write(log_pb2.ProduceRequest(
                                    topic=TOPIC, partition=0, batch=data,
                                    acks=log_pb2.ACKS_ALL))
                                resp = await asyncio.wait_for(call.read(), ANSWER_TIMEOUT_S)
                                if resp is grpc.aio.EOF or resp.HasField("error"):
                                    break
                                self.acks.append((time.monotonic(), node_id))
                                self.leader = node_id
                                acked_here = True
                        finally:
                            call.cancel()
                except (grpc.aio.AioRpcError, TimeoutError, asyncio.InvalidStateError):
                    pass  # node gone, no answer in time, or the stream ended under a write
                self.failures += 1
                self.leader = None
                if acked_here:
                    break  # it led a moment ago: ask the metadata afresh
            await asyncio.sleep(0.01)

    def stop(self) -> None:
        self._stop = True

    async def switch_to(self, node_id: int, timeout_s: float = 30.0) -> None:
        """Send to `node_id` from now on (a node that does not lead forwards, so acks alone do
        not show who leads) and return after its first ack."""
        self._switch = node_id
        deadline = time.monotonic() + timeout_s
        while not (self.acks and self.acks[-1][1] == node_id and self._switch is None):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no ack from node {node_id} in {timeout_s}s")
            await asyncio.sleep(0.005)

    async def first_ack_after(self, t: float, victim: int, timeout_s: float = 60.0) -> float:
        """When the first ack from another node than `victim` arrived after `t` (an answer
        the victim sent just before dying may still be read after the kill)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            later = [a for a, node in self.acks[-50:] if a > t and node != victim]
            if later:
                return later[0]
            await asyncio.sleep(0.005)
        raise TimeoutError(f"no ack within {timeout_s}s of the kill")

    async def wait_acks(self, n: int, timeout_s: float = 60.0) -> None:
        target = len(self.acks) + n
        deadline = time.monotonic() + timeout_s
        while len(self.acks) < target:
            if time.monotonic() > deadline:
                raise TimeoutError(f"fewer than {n} acks in {timeout_s}s")
            await asyncio.sleep(0.01)


def partition0(address: str) -> admin_pb2.PartitionDescription:
    with grpc.insecure_channel(address) as ch:
        stub = admin_pb2_grpc.AdminStub(ch)  # type: ignore[no-untyped-call]
        resp = stub.DescribeTopic(admin_pb2.DescribeTopicRequest(name=TOPIC), timeout=2.0)
    return next(p for p in resp.topic.partitions if p.partition == 0)


def wait_caught_up(leader: NodeProcess, node: NodeProcess) -> None:
    """Until `node`'s replica of partition 0 has reached the high watermark the leader had
    when we started waiting (traffic keeps flowing, so 'equal' would chase a moving target)."""
    deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
    target: int | None = None
    while time.monotonic() < deadline:
        try:
            if target is None:
                target = partition0(leader.address).high_watermark
            if partition0(node.address).high_watermark >= target:
                return
        except (grpc.RpcError, StopIteration):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"node {node.node_id} did not catch up in {CATCH_UP_TIMEOUT_S}s")


async def measure(nodes: list[NodeProcess], kills: int) -> list[float]:
    loop = AckLoop(nodes)
    task = asyncio.create_task(loop.run())
    gaps: list[float] = []
    try:
        await loop.wait_acks(50)
        for k in range(kills):
            # Kill the leader the metadata names, with the producer connected to it directly
            # (any node forwards, so the node that acks is not necessarily the leader).
            live = next(n for n in nodes if n.proc.poll() is None)
            leader_id = (await asyncio.to_thread(wait_leaders, live.address, TOPIC)
                         ).partitions[0].leader_id
            await loop.switch_to(leader_id)
            victim = nodes[leader_id]
            t_kill = time.monotonic()
            victim.proc.kill()
            victim.proc.wait()
            t_ack = await loop.first_ack_after(t_kill, leader_id)
            gaps.append(t_ack - t_kill)
            print(f"kill {k + 1}: node {leader_id} -> first ack after {gaps[-1] * 1000:.0f} ms",
                  flush=True)
            restart_node(victim)
            await asyncio.to_thread(wait_serving, victim)
            live = next(n for n in nodes if n.proc.poll() is None and n is not victim)
            leader_now = (await asyncio.to_thread(wait_leaders, live.address, TOPIC)
                          ).partitions[0].leader_id
            await asyncio.to_thread(wait_caught_up, nodes[leader_now], victim)
            await loop.wait_acks(50)
    finally:
        loop.stop()
        await asyncio.wait_for(task, ANSWER_TIMEOUT_S + 5)
    return gaps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--port", type=int, default=19931)
    parser.add_argument("--raft-tick-ms", type=int, default=None)
    parser.add_argument("--election-ticks", type=int, default=None)
    parser.add_argument("--keep-data", action="store_true", help="keep the nodes' data dir")
    ns = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    env = {}
    if ns.raft_tick_ms:
        env["RILLET_RAFT_TICK_MS"] = str(ns.raft_tick_ms)
    if ns.election_ticks:
        env["RILLET_ELECTION_TICKS"] = str(ns.election_ticks)
    with temporary_cluster("rillet-failover-", 3, port=ns.port, env=env,
                           keep_data=ns.keep_data) as nodes:
        create_topic(nodes[0].address, TOPIC, 1, 3)
        wait_leaders(nodes[0].address, TOPIC)
        gaps = asyncio.run(measure(nodes, ns.kills))
    ms = sorted(g * 1000 for g in gaps)
    p90 = ms[min(len(ms) - 1, round(0.9 * (len(ms) - 1)))]
    print(f"failover gap over {len(ms)} leader kills (kill -9 to first acks=all answer): "
          f"median {statistics.median(ms):.0f} ms, p90 {p90:.0f} ms, max {ms[-1]:.0f} ms "
          f"(tick {ns.raft_tick_ms or 'default'} ms, election ticks "
          f"{ns.election_ticks or 'default'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
