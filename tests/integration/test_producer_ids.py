"""Metadata.InitProducer on a single node: ids are unique, also across a crash (kill -9)."""

from __future__ import annotations

from rillet.api.v1 import admin_pb2


async def test_producer_ids_are_never_handed_out_twice(broker, connect) -> None:
    async with connect(broker) as s:
        first = [(await s.metadata.InitProducer(admin_pb2.InitProducerRequest())).producer_id
                 for _ in range(3)]
    assert len(set(first)) == 3 and all(pid >= 0 for pid in first)
    broker.kill()
    broker.start()
    async with connect(broker) as s:
        resp = await s.metadata.InitProducer(admin_pb2.InitProducerRequest())
    assert resp.producer_id > max(first)
    assert resp.producer_epoch == 0
