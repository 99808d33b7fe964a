"""Input limits: each one refused with a clear status whose message names the setting.

The codec checks first (rillet.batch.validate with Limits), then a real node with low limits
set through its RILLET_* environment, through the generated stubs any client would use.
"""

from __future__ import annotations

import asyncio
import struct
import time

import grpc
import pytest

from rillet import batch
from rillet.api.v1 import admin_pb2, common_pb2, groups_pb2, groups_pb2_grpc, log_pb2
from tests.integration.conftest import (
    CHANNEL_OPTIONS,
    BrokerFactory,
    Stubs,
)

LIMITS = batch.Limits(max_records=10, max_headers=2, max_header_bytes=64)


def make(n: int, headers: list[list[tuple[str, bytes]]] | None = None) -> bytes:
    now = int(time.time() * 1000)
    return batch.encode([b"v"] * n, timestamps_ms=[now] * n, headers=headers)


# ------------------------------------------------------------------------------ the codec


def test_records_per_batch_up_to_the_limit() -> None:
    assert batch.validate(make(10), LIMITS).record_count == 10
    with pytest.raises(batch.InvalidBatchError, match=r"11 records.*at most 10.*max_batch_records"):
        batch.validate(make(11), LIMITS)


def test_record_count_is_checked_before_the_body_is_parsed() -> None:
    """A header claiming a huge count is refused on the count, not after parsing the body."""
    data = bytearray(make(3))
    struct.pack_into("<i", data, batch.RECORD_COUNT_FIELD, 2_000_000_000)
    struct.pack_into("<I", data, batch.CRC_FIELD,
                     batch.crc32c(memoryview(data)[batch.CRC_START:]))
    with pytest.raises(batch.InvalidBatchError, match="max_batch_records"):
        batch.validate(bytes(data), LIMITS)


def test_headers_per_record_up_to_the_limit() -> None:
    two = [[("a", b"1"), ("b", b"2")]] * 3
    batch.validate(make(3, two), LIMITS)
    three = [[], [("a", b"1"), ("b", b"2"), ("c", b"3")], []]
    with pytest.raises(batch.InvalidBatchError,
                       match=r"record 1 .* 3 headers.*at most 2.*max_record_headers"):
        batch.validate(make(3, three), LIMITS)


def test_header_bytes_per_record_count_keys_and_values() -> None:
    exactly = [[("k" * 4, b"v" * 60)]]  # 64 bytes
    batch.validate(make(1, exactly), LIMITS)
    over = [[("k" * 4, b"v" * 61)]]
    with pytest.raises(batch.InvalidBatchError,
                       match=r"65 bytes of headers.*at most 64.*max_record_header_bytes"):
        batch.validate(make(1, over), LIMITS)
    # Keys count in UTF-8 bytes, not characters.
    with pytest.raises(batch.InvalidBatchError, match="max_record_header_bytes"):
        batch.validate(make(1, [[("é" * 32, b"x")]]), LIMITS)


def test_no_limits_means_only_the_format_rules() -> None:
    batch.validate(make(11, [[("a", b"1")] * 3] * 11))


# ------------------------------------------------------------------------------ a real node

LOW_LIMITS_ENV = {
    "RILLET_MAX_BATCH_RECORDS": "10",
    "RILLET_MAX_RECORD_HEADERS": "2",
    "RILLET_MAX_RECORD_HEADER_BYTES": "64",
    "RILLET_MAX_GROUP_NAME_LENGTH": "8",
    "RILLET_MAX_PARTITIONS": "4",
    "RILLET_MAX_STREAMS_PER_CONNECTION": "2",
}


@pytest.mark.integration
async def test_node_refuses_each_limit_with_its_setting_named(
        broker_factory: BrokerFactory) -> None:
    proc = broker_factory(env=LOW_LIMITS_ENV)
    async with grpc.aio.insecure_channel(proc.address, options=CHANNEL_OPTIONS) as ch:
        stubs = Stubs(ch)
        groups = groups_pb2_grpc.GroupsStub(ch)
        await stubs.admin.CreateTopic(admin_pb2.CreateTopicRequest(name="t", partitions=1))

        # Partitions per topic, topic name length: refused before anything is created.
        for req, fragment in (
                (admin_pb2.CreateTopicRequest(name="u", partitions=5), "[1, 4]"),
                (admin_pb2.CreateTopicRequest(name="x" * 250, partitions=1), "249")):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stubs.admin.CreateTopic(req, timeout=10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert fragment in (info.value.details() or "")

        # Batches: one stream, each batch answered on its own, the stream goes on.
        cases = [
            (make(10), 0, ""),
            (make(11), common_pb2.ERROR_CODE_INVALID_BATCH, "max_batch_records"),
            (make(1, [[("a", b""), ("b", b""), ("c", b"")]]),
             common_pb2.ERROR_CODE_INVALID_BATCH, "max_record_headers"),
            (make(1, [[("k", b"v" * 64)]]),
             common_pb2.ERROR_CODE_INVALID_BATCH, "max_record_header_bytes"),
            (make(2, [[("k", b"v" * 63)], [("k", b"v" * 63)]]), 0, ""),
        ]
        async with asyncio.timeout(30):
            resps = [r async for r in stubs.produce.Produce(iter(
                [log_pb2.ProduceRequest(topic="t", batch=b) for b, _, _ in cases]))]
        assert len(resps) == len(cases)
        for resp, (_b, code, fragment) in zip(resps, cases, strict=True):
            assert resp.error.code == code, resp.error
            assert fragment in resp.error.message
            assert not resp.error.retriable
        assert [r.base_offset for r in resps if not r.error.code] == [0, 10]

        # Group ids: at most 8 characters here, on every group call.
        ok, long = "g" * 8, "g" * 9
        fetched = await groups.FetchOffsets(groups_pb2.FetchOffsetsRequest(group=ok),
                                            timeout=10)
        assert list(fetched.offsets) == []
        # One at a time: this node allows 2 streams per connection (see the test below).
        calls = [
            lambda: groups.FetchOffsets(groups_pb2.FetchOffsetsRequest(group=long), timeout=10),
            lambda: groups.CommitOffsets(groups_pb2.CommitOffsetsRequest(
                group=long, generation=-1,
                offsets=[groups_pb2.OffsetCommit(topic="t", partition=0, offset=1)]),
                timeout=10),
            lambda: stubs.admin.DescribeGroup(groups_pb2.DescribeGroupRequest(group=long),
                                              timeout=10),
            lambda: stubs.admin.DeleteGroup(groups_pb2.DeleteGroupRequest(group=long),
                                            timeout=10),
        ]
        for call in calls:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call()
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "max_group_name_length" in (info.value.details() or "")
        join = groups.Join(iter([groups_pb2.GroupRequest(
            join=groups_pb2.JoinGroup(group=long, topics=["t"]))]), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ev in join:
                pass
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "is 9 characters long; the limit is 8 (max_group_name_length)" in (
            info.value.details() or "")
        # A megabyte of group id is refused on its length; the message does not echo it.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await groups.FetchOffsets(groups_pb2.FetchOffsetsRequest(group="g" * 1_000_000),
                                      timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert len(info.value.details() or "") < 200


@pytest.mark.integration
async def test_streams_beyond_the_per_connection_limit_wait_for_a_free_one(
        broker_factory: BrokerFactory) -> None:
    """max_streams_per_connection: the server announces it in HTTP/2 SETTINGS; a gRPC client
    queues calls beyond it on that connection (it does not fail them) until a stream ends, so
    a call with a deadline ends DEADLINE_EXCEEDED if none ends in time. Other connections are
    not affected."""
    proc = broker_factory(env=LOW_LIMITS_ENV)
    async with grpc.aio.insecure_channel(proc.address, options=CHANNEL_OPTIONS) as ch:
        stubs = Stubs(ch)
        await stubs.admin.CreateTopic(admin_pb2.CreateTopicRequest(name="t", partitions=1))
        tails = [stubs.consume.Consume(log_pb2.ConsumeRequest(topic="t", max_wait_ms=100))
                 for _ in range(2)]
        for tail in tails:  # both streams are open on the server
            assert isinstance(await tail.read(), log_pb2.ConsumeResponse)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stubs.admin.ListTopics(admin_pb2.ListTopicsRequest(), timeout=1.0)
        # Queued on the client until the deadline; (rarely) refused by the server with
        # REFUSED_STREAM if it still counted a stream the client saw end (docs/security.md, limits).
        assert info.value.code() in (grpc.StatusCode.DEADLINE_EXCEEDED,
                                     grpc.StatusCode.UNAVAILABLE), info.value
        queued = asyncio.ensure_future(
            stubs.admin.ListTopics(admin_pb2.ListTopicsRequest(), timeout=20))
        # Another connection (its own subchannel) is served meanwhile.
        async with grpc.aio.insecure_channel(
                proc.address, options=[*CHANNEL_OPTIONS,
                                       ("grpc.use_local_subchannel_pool", 1)]) as other:
            listed = await Stubs(other).admin.ListTopics(admin_pb2.ListTopicsRequest(),
                                                         timeout=10)
            assert [t.name for t in listed.topics] == ["t"]
        assert not queued.done()
        tails[0].cancel()
        resp = await asyncio.wait_for(queued, 10)
        assert [t.name for t in resp.topics] == ["t"]
        tails[1].cancel()
