"""A slow consumer on a node that proxies the read (cluster mode): the proxying node's memory
stays bounded too. node/read_proxy.py merges upstream responses through a queue; with 16 slots
of up to max_fetch_bytes each, one stalled consumer asking for the largest responses grew the
proxy by 150-180 MB for 233 MB produced; with one slot, about 60 MB (and no measurable change
in proxied read throughput, ~230-330 MB/s either way on the test machine)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from rillet.api.v1 import admin_pb2, common_pb2, log_pb2
from tests.integration.conftest import ClusterFactory, Stubs
from tests.security.test_slow_client import (
    BATCHES,
    MAX_GROWTH_SHARE,
    MIB,
    OWN_CONNECTION,
    RECORDS_PER_BATCH,
    PeakRss,
    one_batch,
)

pytestmark = pytest.mark.integration


async def produce_all(stubs: Stubs, topic: str, data: bytes, count: int) -> None:
    """Store `count` copies of `data`, sending again what the leader refused as retriable
    (UNAVAILABLE "overloaded": more than 64 MiB waiting for commitment)."""
    left = count
    async with asyncio.timeout(180):
        while left:
            reqs = [log_pb2.ProduceRequest(topic=topic, batch=data, acks=log_pb2.ACKS_LEADER)
                    for _ in range(left)]
            left = 0
            async for resp in stubs.produce.Produce(iter(reqs)):
                if resp.error.code:
                    assert resp.error.retriable, resp.error
                    left += 1


async def test_consumer_that_stops_reading_through_a_proxying_node(
        cluster_factory: ClusterFactory) -> None:
    cluster = await cluster_factory(2)
    leaders = await cluster.create_topic("t", partitions=1, replication_factor=1)
    leader = cluster.node(leaders[0])
    proxy = next(n for n in cluster.nodes if n is not leader)
    data = one_batch()
    written = len(data) * BATCHES
    async with grpc.aio.insecure_channel(leader.address, options=OWN_CONNECTION) as pch, \
            grpc.aio.insecure_channel(proxy.address, options=OWN_CONNECTION) as cch:
        producer, consumer = Stubs(pch), Stubs(cch)
        # The largest responses a client may ask for (max_fetch_bytes clamps it to 8 MiB).
        tail = consumer.consume.Consume(log_pb2.ConsumeRequest(
            topic="t", max_wait_ms=100, max_bytes=64 * MIB,
            default_position=common_pb2.Position(boundary=common_pb2.BOUNDARY_EARLIEST)))
        assert isinstance(await asyncio.wait_for(tail.read(), 20), log_pb2.ConsumeResponse)
        with PeakRss(proxy.pid) as rss:
            await produce_all(producer, "t", data, BATCHES)
            desc = await producer.admin.DescribeTopic(admin_pb2.DescribeTopicRequest(name="t"))
            assert desc.topic.partitions[0].high_watermark == BATCHES * RECORDS_PER_BATCH
        print(f"\nslow consumer through a proxying node: {written / MIB:.0f} MB produced; "
              f"proxy RSS {rss.start / MIB:.0f} MB -> peak {rss.peak / MIB:.0f} MB "
              f"(+{rss.growth / MIB:.0f} MB)")
        assert rss.growth < written * MAX_GROWTH_SHARE, (rss.growth, written)
        tail.cancel()
