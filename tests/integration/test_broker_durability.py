"""Crashes, restarts and shutdowns of a real broker process."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from rillet import batch
from rillet.api.v1 import admin_pb2, common_pb2, log_pb2

pytestmark = pytest.mark.integration


def make_batch(values: list[bytes]) -> bytes:
    now = int(time.time() * 1000)
    return batch.encode(values, timestamps_ms=[now] * len(values))


async def replay_all(stubs, topic: str) -> dict[int, list[batch.Record]]:
    out: dict[int, list[batch.Record]] = {}
    async with asyncio.timeout(60):
        async for resp in stubs.replay.Replay(log_pb2.ReplayRequest(topic=topic)):
            for pd in resp.partitions:
                # decode_range verifies every CRC: nothing corrupt is served.
                out.setdefault(pd.partition, []).extend(
                    batch.decode_range(pd.batches, pd.first_offset, pd.end_offset))
    return out


async def test_kill_9_during_acks_all_produce_loses_no_acknowledged_batch(
        broker, connect) -> None:
    partitions = 2
    kill_after = 150
    values_of: list[list[bytes]] = []
    acked: list[tuple[int, int, int]] = []  # (partition, base offset, request index)
    async with connect(broker) as s:
        await s.admin.CreateTopic(admin_pb2.CreateTopicRequest(name="d", partitions=partitions))

        async def requests():
            for i in range(100_000):
                values = [f"{i}:{j}".encode() * 3 for j in range(50)]
                values_of.append(values)
                yield log_pb2.ProduceRequest(topic="d", partition=i % partitions,
                                             batch=make_batch(values), acks=log_pb2.ACKS_ALL)

        call = s.produce.Produce(requests())
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async with asyncio.timeout(60):
                async for resp in call:
                    assert not resp.HasField("error"), resp.error
                    # Responses come in request order, so the n-th answers request n.
                    acked.append((resp.partition, resp.base_offset, len(acked)))
                    if len(acked) == kill_after:
                        broker.kill()
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(acked) >= kill_after
    broker.start()
    async with connect(broker) as s:
        stored = await replay_all(s, "d")
    for partition, base, index in acked:
        assert partition == index % partitions
        recs = stored[partition][base:base + 50]
        assert [r.offset for r in recs] == list(range(base, base + 50))
        assert [r.value for r in recs] == values_of[index]
    # Offsets stay dense after recovery: whatever survived is a clean prefix.
    for recs in stored.values():
        assert [r.offset for r in recs] == list(range(len(recs)))
    assert "node 0 listening" in broker.log_text()


async def test_restart_after_kill_keeps_topics_and_accepts_writes(broker, connect) -> None:
    async with connect(broker) as s:
        await s.admin.CreateTopic(admin_pb2.CreateTopicRequest(
            name="r", partitions=3, config=admin_pb2.TopicConfig(retention_ms=3_600_000)))
        await asyncio.wait_for(_produce_one(s, "r", 1, [b"one"]), 30)
    broker.kill()
    broker.start()
    async with connect(broker) as s:
        desc = await s.admin.DescribeTopic(admin_pb2.DescribeTopicRequest(name="r"))
        assert desc.topic.config.retention_ms == 3_600_000
        assert [p.high_watermark for p in desc.topic.partitions] == [0, 1, 0]
        assert await asyncio.wait_for(_produce_one(s, "r", 1, [b"two"]), 30) == 1
        stored = await replay_all(s, "r")
        assert [r.value for r in stored[1]] == [b"one", b"two"]


async def _produce_one(stubs, topic: str, partition: int, values: list[bytes]) -> int:
    resps = [r async for r in stubs.produce.Produce(iter([log_pb2.ProduceRequest(
        topic=topic, partition=partition, batch=make_batch(values))]))]
    assert not resps[0].HasField("error"), resps[0].error
    return resps[0].base_offset


async def test_sigterm_ends_tailing_consumers_with_unavailable(broker, connect) -> None:
    async with connect(broker) as s:
        await s.admin.CreateTopic(admin_pb2.CreateTopicRequest(name="s"))
        call = s.consume.Consume(log_pb2.ConsumeRequest(topic="s", max_wait_ms=100))
        async with asyncio.timeout(30):
            first = await call.read()  # a heartbeat: the stream is open and tailing
            assert first.partitions[0].high_watermark == 0
            stopper = asyncio.create_task(asyncio.to_thread(broker.stop))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                while True:
                    msg = await call.read()
                    assert msg is not grpc.aio.EOF
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "shutting down" in (info.value.details() or "")
            assert await stopper == 0


async def test_delete_topic_ends_its_consumers_with_not_found(broker, connect) -> None:
    async with connect(broker) as s:
        await s.admin.CreateTopic(admin_pb2.CreateTopicRequest(name="gone"))
        call = s.consume.Consume(log_pb2.ConsumeRequest(
            topic="gone", max_wait_ms=100,
            default_position=common_pb2.Position(boundary=common_pb2.BOUNDARY_LATEST)))
        async with asyncio.timeout(30):
            # A heartbeat proves the stream is open and tailing before the delete,
            # so the error below comes from the delete, not from a late lookup.
            first = await call.read()
            assert first.partitions[0].high_watermark == 0
            await s.admin.DeleteTopic(admin_pb2.DeleteTopicRequest(name="gone"))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                while True:
                    msg = await call.read()
                    assert msg is not grpc.aio.EOF
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert "deleted" in (info.value.details() or "")
        # Re-creating the name gives a fresh, empty topic.
        await s.admin.CreateTopic(admin_pb2.CreateTopicRequest(name="gone"))
        desc = await s.admin.DescribeTopic(admin_pb2.DescribeTopicRequest(name="gone"))
        assert desc.topic.partitions[0].high_watermark == 0


async def test_second_node_on_same_data_dir_refuses_to_start(broker, broker_factory) -> None:
    other = broker_factory(start=False)
    other.data_dir = broker.data_dir
    with pytest.raises(RuntimeError, match="in use by another node"):
        other.start()


async def test_retention_deletes_old_segments_and_reads_below_start_are_out_of_range(
        broker_factory, connect) -> None:
    node = broker_factory(env={"RILLET_RETENTION_CHECK_INTERVAL_MS": "200"})
    async with connect(node) as s:
        await s.admin.CreateTopic(admin_pb2.CreateTopicRequest(
            name="ret", config=admin_pb2.TopicConfig(segment_bytes=4096, retention_bytes=8192)))
        reqs = [log_pb2.ProduceRequest(topic="ret", batch=make_batch([b"r" * 1000]))
                for _ in range(20)]
        async with asyncio.timeout(30):
            resps = [r async for r in s.produce.Produce(iter(reqs))]
        assert [r.base_offset for r in resps] == list(range(20))
        async with asyncio.timeout(30):
            while True:
                desc = await s.admin.DescribeTopic(admin_pb2.DescribeTopicRequest(name="ret"))
                start = desc.topic.partitions[0].log_start_offset
                if start > 0:
                    break
                await asyncio.sleep(0.05)
        assert desc.topic.partitions[0].size_bytes <= 8192 + 4096
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async with asyncio.timeout(30):
                async for _ in s.consume.Consume(log_pb2.ConsumeRequest(
                        topic="ret", partitions=[log_pb2.PartitionPosition(
                            partition=0, position=common_pb2.Position(offset=0))])):
                    pass
        assert info.value.code() == grpc.StatusCode.OUT_OF_RANGE
        assert f"valid offsets are {start} to 20" in (info.value.details() or "")
        # Replay from earliest starts at the new log start.
        stored = await replay_all(s, "ret")
        assert [r.offset for r in stored[0]] == list(range(start, 20))


async def test_producer_that_vanishes_mid_pipeline_does_not_wedge_the_node(
        broker, connect) -> None:
    async with connect(broker) as s:
        await s.admin.CreateTopic(admin_pb2.CreateTopicRequest(name="v"))
        call = s.produce.Produce()
        data = make_batch([b"v" * 100] * 1000)
        async with asyncio.timeout(30):
            # Never read a response: the broker's pending queue fills and it stops reading.
            for _ in range(100):
                await call.write(log_pb2.ProduceRequest(topic="v", batch=data))
        call.cancel()
        resps = [r async for r in s.produce.Produce(iter([
            log_pb2.ProduceRequest(topic="v", batch=make_batch([b"after"]))]))]
        assert not resps[0].HasField("error")
    started = time.monotonic()
    assert broker.stop() == 0
    # Well under the 5 s grace: no handler was left stuck behind the vanished producer.
    assert time.monotonic() - started < 4


async def test_sigterm_during_acks_all_produce_answers_or_refuses_and_keeps_acked(
        broker, connect) -> None:
    acked: list[tuple[int, int]] = []  # (base offset, request index)
    refused = 0
    async with connect(broker) as s:
        await s.admin.CreateTopic(admin_pb2.CreateTopicRequest(name="g"))

        async def requests():
            for i in range(5000):
                yield log_pb2.ProduceRequest(topic="g", batch=make_batch([str(i).encode()] * 20))

        call = s.produce.Produce(requests())
        stopper = None
        try:
            async with asyncio.timeout(60):
                async for resp in call:
                    if resp.HasField("error"):
                        # After SIGTERM the node refuses new batches as retriable UNAVAILABLE.
                        assert resp.error.code == common_pb2.ERROR_CODE_UNAVAILABLE, resp.error
                        assert resp.error.retriable
                        refused += 1
                    else:
                        assert refused == 0, "a batch was stored after one was refused"
                        acked.append((resp.base_offset, len(acked) + refused))
                    # Stop once 50 answers came back (not 50 requests sent: the client runs
                    # far ahead of the answers), so the stop lands mid-stream every time.
                    if len(acked) > 50 and stopper is None:
                        stopper = asyncio.create_task(asyncio.to_thread(broker.stop))
        except grpc.aio.AioRpcError as exc:
            # The grace period ran out or the server closed the stream: both are fine here.
            assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        assert stopper is not None
        assert await stopper == 0
    assert len(acked) > 50
    broker.start()
    async with connect(broker) as s:
        stored = (await replay_all(s, "g")).get(0, [])
    for base, index in acked:
        assert [r.value for r in stored[base:base + 20]] == [str(index).encode()] * 20


async def test_config_file_sets_the_batch_limit(broker_factory, connect, tmp_path) -> None:
    path = tmp_path / "node.toml"
    path.write_text("[broker]\nmax_batch_bytes = 65536\n")
    node = broker_factory(extra_args=["--config", str(path)])
    async with connect(node) as s:
        await s.admin.CreateTopic(admin_pb2.CreateTopicRequest(name="small"))
        resps = [r async for r in s.produce.Produce(iter([
            log_pb2.ProduceRequest(topic="small", batch=make_batch([b"z" * 1000] * 70)),
            log_pb2.ProduceRequest(topic="small", batch=make_batch([b"z" * 1000] * 60)),
        ]))]
        assert resps[0].error.code == common_pb2.ERROR_CODE_BATCH_TOO_LARGE
        assert "limit of 65536 bytes" in resps[0].error.message
        assert resps[1].base_offset == 0
