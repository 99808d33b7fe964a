"""Produce, consume and replay through a real broker process and the generated stubs only."""

from __future__ import annotations

import asyncio
import time

import pytest
from grpc_health.v1 import health_pb2

from rillet import batch
from rillet.api.v1 import admin_pb2, common_pb2, log_pb2
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def make_batch(values: list[bytes], *, ts_ms: int | None = None) -> bytes:
    now = int(time.time() * 1000) if ts_ms is None else ts_ms
    return batch.encode(values, timestamps_ms=[now] * len(values))


async def produce_all(
    stubs, requests: list[log_pb2.ProduceRequest]
) -> list[log_pb2.ProduceResponse]:
    async with asyncio.timeout(30):
        return [r async for r in stubs.produce.Produce(iter(requests))]


async def consume_n(stubs, request: log_pb2.ConsumeRequest, n: int) -> list[batch.Record]:
    """Records from a Consume stream until `n` arrived (deadline 30 s), then cancel it."""
    got: list[batch.Record] = []
    call = stubs.consume.Consume(request)
    try:
        async with asyncio.timeout(30):
            async for resp in call:
                for pd in resp.partitions:
                    got.extend(batch.decode_range(pd.batches, pd.first_offset))
                if len(got) >= n:
                    break
    finally:
        call.cancel()
    return got


async def test_health_reports_serving(broker, stubs) -> None:
    resp = await stubs.health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
    resp = await stubs.health.Check(
        health_pb2.HealthCheckRequest(service="rillet.api.v1.Produce"), timeout=5)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


async def test_produce_then_consume_and_replay(stubs) -> None:
    await stubs.admin.CreateTopic(admin_pb2.CreateTopicRequest(name="events", partitions=3),
                                  timeout=10)
    reqs = []
    for i in range(30):
        values = [f"{i}-{j}".encode() for j in range(10)]
        reqs.append(log_pb2.ProduceRequest(topic="events", partition=i % 3,
                                           batch=make_batch(values)))
    resps = await produce_all(stubs, reqs)
    assert [r.partition for r in resps] == [i % 3 for i in range(30)]
    assert not any(r.HasField("error") for r in resps)
    # Offsets are dense per partition and assigned in order.
    for p in range(3):
        assert [r.base_offset for r in resps if r.partition == p] == list(range(0, 100, 10))

    recs = await consume_n(stubs, log_pb2.ConsumeRequest(
        topic="events",
        default_position=common_pb2.Position(boundary=common_pb2.BOUNDARY_EARLIEST)), 300)
    assert sorted(r.value for r in recs) == sorted(
        f"{i}-{j}".encode() for i in range(30) for j in range(10))

    # Replay part of partition 1 up to offset 25: whole batches, bounded by end_offset.
    replayed = []
    async with asyncio.timeout(30):
        async for resp in stubs.replay.Replay(log_pb2.ReplayRequest(
                topic="events", partitions=[1], to=common_pb2.Position(offset=25))):
            for pd in resp.partitions:
                assert pd.partition == 1
                assert pd.end_offset == 25
                replayed.extend(batch.decode_range(pd.batches, pd.first_offset, pd.end_offset))
    assert [r.offset for r in replayed] == list(range(25))
    assert [r.value for r in replayed[:10]] == [f"1-{j}".encode() for j in range(10)]

    desc = await stubs.admin.DescribeTopic(admin_pb2.DescribeTopicRequest(name="events"))
    assert [p.high_watermark for p in desc.topic.partitions] == [100, 100, 100]


async def test_consume_tails_new_data_and_heartbeats(stubs) -> None:
    await stubs.admin.CreateTopic(admin_pb2.CreateTopicRequest(name="tail"))
    call = stubs.consume.Consume(log_pb2.ConsumeRequest(
        topic="tail", max_wait_ms=200,
        default_position=common_pb2.Position(boundary=common_pb2.BOUNDARY_LATEST)))
    try:
        async with asyncio.timeout(30):
            it = call.__aiter__()
            first = await it.__anext__()
            # Nothing produced yet: an empty heartbeat carrying the high watermark.
            assert [(p.partition, p.batches, p.high_watermark) for p in first.partitions] == [
                (0, b"", 0)]
            resps = await produce_all(stubs, [log_pb2.ProduceRequest(
                topic="tail", batch=make_batch([b"hello", b"world"]))])
            assert resps[0].base_offset == 0
            while True:
                resp = await it.__anext__()
                recs = [r for pd in resp.partitions
                        for r in batch.decode_range(pd.batches, pd.first_offset)]
                if recs:
                    break
            assert [r.value for r in recs] == [b"hello", b"world"]
            assert resp.partitions[0].next_offset == 2
    finally:
        call.cancel()


async def test_metadata_and_list(broker, stubs) -> None:
    await stubs.admin.CreateTopic(admin_pb2.CreateTopicRequest(name="a", partitions=2))
    await stubs.admin.CreateTopic(admin_pb2.CreateTopicRequest(name="b"))
    listed = await stubs.admin.ListTopics(admin_pb2.ListTopicsRequest())
    assert [(t.name, t.partitions, t.replication_factor) for t in listed.topics] == [
        ("a", 2, 1), ("b", 1, 1)]
    md = await stubs.metadata.GetMetadata(admin_pb2.MetadataRequest(topics=["a"]))
    assert [(b.node_id, b.address) for b in md.brokers] == [(0, broker.address)]
    assert [(p.partition, p.leader_id, list(p.replicas)) for p in md.topics[0].partitions] == [
        (0, 0, [0]), (1, 0, [0])]
    await stubs.admin.DeleteTopic(admin_pb2.DeleteTopicRequest(name="a"))
    listed = await stubs.admin.ListTopics(admin_pb2.ListTopicsRequest())
    assert [t.name for t in listed.topics] == ["b"]
    # Its partition directories (<group>-<topic>-<partition>) go with it.
    await wait_for(lambda: not [d for d in (broker.data_dir / "partitions").iterdir()
                                if d.name.endswith(("-a-0", "-a-1"))],
                   "the deleted topic's partition directories to go", timeout_s=10.0)
    assert [d.name.split("-", 1)[1] for d in (broker.data_dir / "partitions").iterdir()] == [
        "b-0"]


async def test_graceful_stop_exits_zero_and_keeps_data(broker, connect) -> None:
    async with connect(broker) as s:
        await s.admin.CreateTopic(admin_pb2.CreateTopicRequest(name="keep"))
        resps = await produce_all(s, [log_pb2.ProduceRequest(
            topic="keep", acks=log_pb2.ACKS_LEADER, batch=make_batch([b"x"] * 5))])
        assert resps[0].base_offset == 0
    assert broker.stop() == 0
    assert "stopped" in broker.log_text()
    broker.start()
    async with connect(broker) as s:
        desc = await s.admin.DescribeTopic(admin_pb2.DescribeTopicRequest(name="keep"))
        assert desc.topic.partitions[0].high_watermark == 5
