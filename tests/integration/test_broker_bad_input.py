"""Every malformed or out-of-range request gets its status and message and changes nothing."""

from __future__ import annotations

import asyncio
import struct
import time

import grpc
import pytest

from rillet import batch
from rillet.api.v1 import admin_pb2, common_pb2, log_pb2

pytestmark = pytest.mark.integration

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def make_batch(values: list[bytes]) -> bytes:
    now = int(time.time() * 1000)
    return batch.encode(values, timestamps_ms=[now] * len(values))


def with_crc(buf: bytearray) -> bytes:
    struct.pack_into("<I", buf, batch.CRC_FIELD, batch.crc32c(memoryview(buf)[batch.CRC_START:]))
    return bytes(buf)


async def produce_all(stubs, requests):
    async with asyncio.timeout(30):
        return [r async for r in stubs.produce.Produce(iter(requests))]


async def expect_status(awaitable, code: grpc.StatusCode, *fragments: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async with asyncio.timeout(30):
            await awaitable
    assert info.value.code() == code, info.value.details()
    details = info.value.details() or ""
    for fragment in fragments:
        assert fragment in details, details
    return details


async def drain(call) -> list:
    return [r async for r in call]


async def snapshot(stubs, topic: str) -> list[tuple[int, int, int]]:
    desc = await stubs.admin.DescribeTopic(admin_pb2.DescribeTopicRequest(name=topic))
    return [(p.log_start_offset, p.high_watermark, p.size_bytes) for p in desc.topic.partitions]


@pytest.fixture
async def topic(stubs) -> str:
    await stubs.admin.CreateTopic(admin_pb2.CreateTopicRequest(name="t", partitions=2))
    resps = await produce_all(stubs, [log_pb2.ProduceRequest(
        topic="t", partition=0, batch=make_batch([b"a", b"b", b"c"]))])
    assert resps[0].base_offset == 0
    return "t"


async def test_bad_batches_get_their_error_and_the_stream_and_log_continue(stubs, topic) -> None:
    good = make_batch([b"x"] * 4)
    corrupt = bytearray(good)
    corrupt[-1] ^= 0xFF  # a flipped bit in the records: CRC mismatch
    miscounted = bytearray(good)
    # The header says 5 records, the batch holds 4.
    struct.pack_into("<i", miscounted, batch.RECORD_COUNT_FIELD, 5)
    too_large = make_batch([b"v" * 1000] * 1100)  # about 1.1 MB, above the 1 MiB default
    before = await snapshot(stubs, topic)
    cases = [
        (log_pb2.ProduceRequest(topic="nope", batch=good),
         common_pb2.ERROR_CODE_UNKNOWN_TOPIC, "unknown topic 'nope'"),
        (log_pb2.ProduceRequest(topic="bad name", batch=good),
         common_pb2.ERROR_CODE_INVALID_TOPIC, "may only contain"),
        (log_pb2.ProduceRequest(topic=topic, partition=7, batch=good),
         common_pb2.ERROR_CODE_PARTITION_OUT_OF_RANGE, "partitions 0 to 1"),
        (log_pb2.ProduceRequest(topic=topic, batch=too_large),
         common_pb2.ERROR_CODE_BATCH_TOO_LARGE, "limit of 1048576 bytes"),
        (log_pb2.ProduceRequest(topic=topic, batch=bytes(corrupt)),
         common_pb2.ERROR_CODE_CORRUPT_BATCH, "CRC mismatch"),
        (log_pb2.ProduceRequest(topic=topic, batch=with_crc(miscounted)),
         common_pb2.ERROR_CODE_INVALID_BATCH, "record count mismatch"),
        (log_pb2.ProduceRequest(topic=topic, batch=good[:40]),
         common_pb2.ERROR_CODE_CORRUPT_BATCH, "header needs"),
        (log_pb2.ProduceRequest(topic=topic, batch=good + good),
         common_pb2.ERROR_CODE_INVALID_BATCH, "exactly one batch"),
        (log_pb2.ProduceRequest(topic=topic, batch=good, acks=9),
         common_pb2.ERROR_CODE_INVALID_REQUEST, "unknown acks"),
    ]
    resps = await produce_all(stubs, [req for req, _, _ in cases])
    assert len(resps) == len(cases)
    for resp, (req, code, fragment) in zip(resps, cases, strict=True):
        assert resp.base_offset == -1
        assert resp.error.code == code, resp.error
        assert fragment in resp.error.message, resp.error.message
        assert resp.topic == req.topic and resp.partition == req.partition
        assert not resp.error.retriable
    assert await snapshot(stubs, topic) == before

    # Bad batches in the middle of a stream neither end it nor leave a gap in the offsets.
    resps = await produce_all(stubs, [
        log_pb2.ProduceRequest(topic=topic, batch=good),
        log_pb2.ProduceRequest(topic=topic, batch=bytes(corrupt)),
        log_pb2.ProduceRequest(topic=topic, batch=good),
    ])
    assert [r.base_offset for r in resps] == [3, -1, 7]
    replayed = []
    async for resp in stubs.replay.Replay(log_pb2.ReplayRequest(topic=topic, partitions=[0])):
        for pd in resp.partitions:
            replayed.extend(batch.decode_range(pd.batches, pd.first_offset, pd.end_offset))
    assert [r.value for r in replayed] == [b"a", b"b", b"c"] + [b"x"] * 8


BAD_NAMES = [
    ("", "must not be empty"),
    (".", "not allowed"),
    ("..", "not allowed"),
    ("a/b", "may only contain"),
    ("spaces here", "may only contain"),
    ("x" * 250, "limit is 249"),
]

BAD_CONFIGS = [
    ({"partitions": 100_000}, "partitions must be in [1, 1000]"),
    ({"replication_factor": 3}, "replication_factor 3 needs 3 live brokers; 1 are live"),
    ({"replication_factor": 2}, "must be 1, 3 or 5"),
    ({"config": admin_pb2.TopicConfig(retention_ms=-5)}, "retention.ms"),
    ({"config": admin_pb2.TopicConfig(retention_bytes=0)}, "retention.bytes"),
    ({"config": admin_pb2.TopicConfig(segment_bytes=10)}, "segment.bytes"),
    ({"config": admin_pb2.TopicConfig(segment_ms=0)}, "segment.ms"),
    ({"config": admin_pb2.TopicConfig(cleanup_policy=9)},  # type: ignore[arg-type]
     "unknown cleanup.policy 9"),
    ({"config": admin_pb2.TopicConfig(delete_retention_ms=-1)}, "delete.retention.ms"),
]


async def test_invalid_topic_names_and_configs_create_nothing(broker, stubs) -> None:
    # One node for all cases (a process start costs seconds); each case is checked alone.
    cases = [({"name": name}, fragment) for name, fragment in BAD_NAMES]
    cases += [({"name": "c", **kwargs}, fragment) for kwargs, fragment in BAD_CONFIGS]
    for kwargs, fragment in cases:
        await expect_status(stubs.admin.CreateTopic(admin_pb2.CreateTopicRequest(**kwargs)),
                            INVALID, fragment)
        listed = await stubs.admin.ListTopics(admin_pb2.ListTopicsRequest())
        assert list(listed.topics) == [], kwargs
        assert list((broker.data_dir / "partitions").iterdir()) == [], kwargs
    # The node is still fine afterwards.
    await stubs.admin.CreateTopic(admin_pb2.CreateTopicRequest(name="ok"))


async def test_topic_exists_and_unknown_topic_statuses(stubs, topic) -> None:
    before = await snapshot(stubs, topic)
    await expect_status(stubs.admin.CreateTopic(admin_pb2.CreateTopicRequest(name=topic)),
                        grpc.StatusCode.ALREADY_EXISTS, "already exists")
    assert await snapshot(stubs, topic) == before
    nf = grpc.StatusCode.NOT_FOUND
    await expect_status(stubs.admin.DescribeTopic(admin_pb2.DescribeTopicRequest(name="nope")),
                        nf, "unknown topic 'nope'")
    await expect_status(stubs.admin.DeleteTopic(admin_pb2.DeleteTopicRequest(name="nope")),
                        nf, "unknown topic")
    await expect_status(stubs.metadata.GetMetadata(admin_pb2.MetadataRequest(topics=["nope"])),
                        nf, "unknown topic")
    await expect_status(drain(stubs.consume.Consume(log_pb2.ConsumeRequest(topic="nope"))),
                        nf, "unknown topic")
    await expect_status(drain(stubs.replay.Replay(log_pb2.ReplayRequest(topic="nope"))),
                        nf, "unknown topic")


async def test_read_positions_out_of_range(stubs, topic) -> None:
    before = await snapshot(stubs, topic)
    oor = grpc.StatusCode.OUT_OF_RANGE
    for offset in (4, 1000, -1):
        await expect_status(drain(stubs.consume.Consume(log_pb2.ConsumeRequest(
            topic=topic, partitions=[log_pb2.PartitionPosition(
                partition=0, position=common_pb2.Position(offset=offset))]))),
            oor, f"offset {offset} is out of range", "valid offsets are 0 to 3")
    await expect_status(drain(stubs.replay.Replay(log_pb2.ReplayRequest(
        topic=topic, **{"from": common_pb2.Position(offset=50)}))),
        oor, "valid offsets are 0 to 3")
    await expect_status(drain(stubs.consume.Consume(log_pb2.ConsumeRequest(
        topic=topic, partitions=[log_pb2.PartitionPosition(partition=2)]))),
        INVALID, "partitions 0 to 1")
    await expect_status(drain(stubs.replay.Replay(log_pb2.ReplayRequest(
        topic=topic, partitions=[0, 0]))), INVALID, "listed twice")
    await expect_status(drain(stubs.consume.Consume(log_pb2.ConsumeRequest(
        topic=topic, max_wait_ms=3_600_000))), INVALID, "max_wait_ms")
    assert await snapshot(stubs, topic) == before
