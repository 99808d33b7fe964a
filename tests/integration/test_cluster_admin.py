"""Cluster-mode admin and routing with real processes: any node takes admin calls (forwarded
to the metadata leader) and produce requests (forwarded to the partition's leader), answers
with the same view afterwards, and hands out producer ids no other node hands out."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from rillet import batch
from rillet.api.v1 import admin_pb2, common_pb2, log_pb2

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


async def test_admin_calls_on_any_node_and_the_views_agree(cluster) -> None:
    async with cluster.stubs(2) as s:
        created = await s.admin.CreateTopic(admin_pb2.CreateTopicRequest(
            name="orders", partitions=4, replication_factor=3), timeout=30)
    assert [list(p.replicas) for p in created.topic.partitions] != []
    assert all(len(p.replicas) == 3 for p in created.topic.partitions)
    # Leaders end up spread as placement put them (the preferred replica campaigns first,
    # and leaders hand partitions back to their preferred replica): every node leads one.
    preferred = {p.partition: p.replicas[0] for p in created.topic.partitions}
    assert set(preferred.values()) == {0, 1, 2}

    async def spread() -> bool | None:
        leaders = await cluster.wait_leaders("orders")
        return True if leaders == preferred else None
    await cluster.poll(spread, "every partition led by its preferred replica", 30.0)
    for node in (0, 1, 2):
        async with cluster.stubs(node) as s:
            listed = await s.admin.ListTopics(admin_pb2.ListTopicsRequest())
            assert [(t.name, t.partitions, t.replication_factor) for t in listed.topics] == [
                ("orders", 4, 3)]
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await s.admin.CreateTopic(admin_pb2.CreateTopicRequest(
                    name="orders", partitions=1, replication_factor=3), timeout=30)
            assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    async with cluster.stubs(0) as s:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await s.admin.CreateTopic(admin_pb2.CreateTopicRequest(
                name="big", partitions=1, replication_factor=5), timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "5" in (info.value.details() or "")
        await s.admin.DeleteTopic(admin_pb2.DeleteTopicRequest(name="orders"), timeout=30)
    for node in (0, 1, 2):
        async def gone(node: int = node) -> bool | None:
            async with cluster.stubs(node) as s:
                listed = await s.admin.ListTopics(admin_pb2.ListTopicsRequest())
            return True if not listed.topics else None
        await cluster.poll(gone, f"node {node} to drop the deleted topic", 20.0)


async def test_a_plain_client_on_one_node_produces_to_every_partition(cluster) -> None:
    """Forwarding: one stream to node 0 carries batches for partitions led elsewhere; every
    answer has the offset the leader gave, and each partition holds its batches in order."""
    await cluster.create_topic("fwd", partitions=6)
    async with cluster.stubs(0) as s:
        call = s.produce.Produce()
        for round_ in range(3):
            for p in range(6):
                await call.write(log_pb2.ProduceRequest(
                    topic="fwd", partition=p, acks=log_pb2.ACKS_ALL,
                    batch=batch.encode([f"{p}-{round_}".encode()], timestamps_ms=[1])))
        answers = [await call.read() for _ in range(18)]
        await call.done_writing()
    assert [a.error.code for a in answers] == [common_pb2.ERROR_CODE_NONE] * 18
    offsets: dict[int, list[int]] = {}
    for a in answers:
        offsets.setdefault(a.partition, []).append(a.base_offset)
    assert offsets == {p: [0, 1, 2] for p in range(6)}
    async with cluster.stubs(1) as s:  # any replica serves committed data
        values = []
        async for resp in s.replay.Replay(log_pb2.ReplayRequest(topic="fwd", partitions=[4])):
            for pd in resp.partitions:
                values += [r.value for h, mv in batch.iter_batches(pd.batches)
                           if not h.is_control for r in batch.decode(bytes(mv))]
    assert values == [b"4-0", b"4-1", b"4-2"]


async def test_producer_ids_are_unique_across_nodes(cluster) -> None:
    async def ids(node: int) -> list[int]:
        async with cluster.stubs(node) as s:
            return [(await s.metadata.InitProducer(admin_pb2.InitProducerRequest(),
                                                   timeout=30)).producer_id for _ in range(5)]
    got = await asyncio.gather(*(ids(n) for n in (0, 1, 2)))
    flat = [pid for node_ids in got for pid in node_ids]
    assert len(set(flat)) == 15 and min(flat) >= 0


async def test_reads_of_partitions_held_elsewhere_are_proxied(cluster) -> None:
    """Replication factor 1: each node holds a third of the partitions. A plain client on
    node 0 still produces to, replays and consumes every partition through node 0."""
    async with cluster.stubs(0) as s:
        created = await s.admin.CreateTopic(admin_pb2.CreateTopicRequest(
            name="rf1", partitions=3, replication_factor=1), timeout=30)
    assert {p.replicas[0] for p in created.topic.partitions} == {0, 1, 2}
    await cluster.wait_leaders("rf1")
    async with cluster.stubs(0) as s:
        call = s.produce.Produce()
        for p in range(3):
            await call.write(log_pb2.ProduceRequest(
                topic="rf1", partition=p, batch=batch.encode([f"v{p}".encode()],
                                                              timestamps_ms=[1])))
        answers = [await call.read() for _ in range(3)]
        await call.done_writing()
        assert [(a.partition, a.base_offset, a.error.code) for a in answers] == [
            (p, 0, common_pb2.ERROR_CODE_NONE) for p in range(3)]

        def values(resp) -> dict[int, list[bytes]]:
            out: dict[int, list[bytes]] = {}
            for pd in resp.partitions:
                out.setdefault(pd.partition, []).extend(
                    r.value for h, mv in batch.iter_batches(pd.batches) if not h.is_control
                    for r in batch.decode(bytes(mv)))
            return out

        replayed: dict[int, list[bytes]] = {}
        async for resp in s.replay.Replay(log_pb2.ReplayRequest(topic="rf1"), timeout=30):
            for p, vs in values(resp).items():
                replayed.setdefault(p, []).extend(vs)
        assert replayed == {p: [f"v{p}".encode()] for p in range(3)}

        consumed: dict[int, list[bytes]] = {}
        stream = s.consume.Consume(log_pb2.ConsumeRequest(topic="rf1", max_wait_ms=200))
        async with asyncio.timeout(30):
            while sum(len(v) for v in consumed.values()) < 3:
                for p, vs in values(await stream.read()).items():
                    consumed.setdefault(p, []).extend(vs)
        stream.cancel()
        assert consumed == {p: [f"v{p}".encode()] for p in range(3)}
