"""Client pieces that need no network: errors, metadata cache, accumulator, decoding."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from rillet import batch as codec
from rillet.api.v1 import admin_pb2, common_pb2
from rillet.client import errors
from rillet.client.accumulator import Accumulator, PartitionBatch, RecordFuture
from rillet.client.admin import config_dict, topic_config
from rillet.client.connection import parse_bootstrap
from rillet.client.consumer import Timestamp, to_position
from rillet.client.metadata import ClusterMetadata
from rillet.client.records import decode_batches
from tests.rpc_errors import FailedCall

# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("code", [c for c in common_pb2.ErrorCode.values()
                                  if c != common_pb2.ERROR_CODE_NONE])
def test_every_error_code_has_its_own_class(code: int) -> None:
    cls = errors.for_code(code)
    assert cls is not errors.RilletError
    assert cls.code == code


def test_retriable_flags_follow_the_contract() -> None:
    assert errors.for_code(common_pb2.ERROR_CODE_NOT_LEADER).retriable
    assert errors.for_code(common_pb2.ERROR_CODE_NOT_LEADER).refresh_metadata
    assert errors.for_code(common_pb2.ERROR_CODE_UNAVAILABLE).retriable
    assert not errors.for_code(common_pb2.ERROR_CODE_CORRUPT_BATCH).retriable
    # Resending in order fixes a gap (docs/decisions/0403); a duplicate is not retried.
    assert errors.for_code(common_pb2.ERROR_CODE_OUT_OF_ORDER_SEQUENCE).retriable
    assert not errors.for_code(common_pb2.ERROR_CODE_DUPLICATE_SEQUENCE).retriable
    assert errors.for_code(999) is errors.RilletError


def test_from_error_keeps_message_and_broker_flags() -> None:
    exc = errors.from_error(common_pb2.Error(
        code=common_pb2.ERROR_CODE_STORAGE, message="disk full", retriable=True))
    assert isinstance(exc, errors.BrokerStorageError)
    assert str(exc) == "disk full"
    assert exc.retriable and not exc.refresh_metadata
    assert not errors.BrokerStorageError.retriable  # the class default is untouched




@pytest.mark.parametrize(("status", "cls"), [
    (grpc.StatusCode.NOT_FOUND, errors.UnknownTopicError),
    (grpc.StatusCode.OUT_OF_RANGE, errors.OffsetOutOfRangeError),
    (grpc.StatusCode.ALREADY_EXISTS, errors.TopicExistsError),
    (grpc.StatusCode.UNAVAILABLE, errors.UnavailableError),
    (grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidRequestError),
    (grpc.StatusCode.UNIMPLEMENTED, errors.RilletError),
])
def test_from_rpc_error_maps_status(status: grpc.StatusCode, cls: type) -> None:
    exc = errors.from_rpc_error(FailedCall(status, "topic 'x' does not exist"))
    assert type(exc) is cls
    assert "topic 'x' does not exist" in str(exc)
    assert status.name in str(exc)


# ---------------------------------------------------------------- bootstrap, positions, config


def test_parse_bootstrap() -> None:
    assert parse_bootstrap("127.0.0.1:9091, 127.0.0.1:9092,") == [
        "127.0.0.1:9091", "127.0.0.1:9092"]
    for bad in ["", "localhost", "host:port", "h:0", "h:70000", ":9091"]:
        with pytest.raises(ValueError, match=r"host:port|empty"):
            parse_bootstrap(bad)


def test_positions() -> None:
    assert to_position("earliest").boundary == common_pb2.BOUNDARY_EARLIEST
    assert to_position("latest").boundary == common_pb2.BOUNDARY_LATEST
    assert to_position(42).offset == 42
    assert to_position(0).WhichOneof("kind") == "offset"
    assert to_position(Timestamp(1_700_000_000_000)).timestamp_ms == 1_700_000_000_000
    with pytest.raises(ValueError):
        to_position(-1)
    with pytest.raises(ValueError):
        to_position("newest")  # type: ignore[arg-type]


def test_topic_config_round_trip() -> None:
    cfg = topic_config({"retention.ms": "1000", "segment.bytes": 4096,
                        "cleanup.policy": "compact"})
    assert cfg.retention_ms == 1000 and cfg.segment_bytes == 4096
    assert not cfg.HasField("retention_bytes")
    assert cfg.cleanup_policy == admin_pb2.CLEANUP_POLICY_COMPACT
    assert config_dict(cfg) == {"retention.ms": 1000, "segment.bytes": 4096,
                                "cleanup.policy": "compact"}
    with pytest.raises(errors.InvalidConfigError, match="unknown topic setting"):
        topic_config({"retention.hours": "1"})
    with pytest.raises(errors.InvalidConfigError, match="integer"):
        topic_config({"retention.ms": "soon"})
    with pytest.raises(errors.InvalidConfigError, match=r"cleanup\.policy"):
        topic_config({"cleanup.policy": "shred"})


# ---------------------------------------------------------------- metadata cache


def _metadata_response() -> admin_pb2.MetadataResponse:
    return admin_pb2.MetadataResponse(
        cluster_id="c1",
        brokers=[admin_pb2.Broker(node_id=0, address="127.0.0.1:1"),
                 admin_pb2.Broker(node_id=1, address="127.0.0.1:2")],
        topics=[admin_pb2.TopicMetadata(name="t", partitions=[
            admin_pb2.PartitionMetadata(partition=1, leader_id=1, replicas=[1, 0]),
            admin_pb2.PartitionMetadata(partition=0, leader_id=0, replicas=[0, 1]),
            admin_pb2.PartitionMetadata(partition=2, leader_id=-1, replicas=[0]),
        ])])


def test_metadata_cache_lookups() -> None:
    md = ClusterMetadata(["127.0.0.1:9"])
    assert md.stale and md.partition_count("t") is None
    md.update(_metadata_response(), now=5.0)
    assert not md.stale and md.updated_at == 5.0 and md.cluster_id == "c1"
    assert md.partition_count("t") == 3
    assert [p.partition for p in md.partitions("t") or ()] == [0, 1, 2]
    assert md.leader("t", 1) == 1 and md.leader("t", 7) == -1 and md.leader("u", 0) == -1
    assert md.leader_address("t", 0) == "127.0.0.1:1"
    assert md.leader_address("t", 1) == "127.0.0.1:2"
    # Leaderless: fall back to bootstrap (any node forwards).
    assert md.leader_address("t", 2) == "127.0.0.1:9"
    assert md.partitions_by_address("t", [0, 1, 2]) == {
        "127.0.0.1:1": [0], "127.0.0.1:2": [1], "127.0.0.1:9": [2]}


def test_metadata_partial_update_keeps_other_topics() -> None:
    md = ClusterMetadata(["127.0.0.1:9"])
    md.update(_metadata_response())
    md.mark_stale()
    assert md.stale
    md.update(admin_pb2.MetadataResponse(
        brokers=[admin_pb2.Broker(node_id=0, address="127.0.0.1:1")],
        topics=[admin_pb2.TopicMetadata(name="u", partitions=[
            admin_pb2.PartitionMetadata(partition=0, leader_id=0)])]))
    assert md.topics() == ["t", "u"]
    assert not md.stale
    # Broker 1 is gone, so its partition falls back to bootstrap.
    assert md.leader_address("t", 1) == "127.0.0.1:9"
    md.forget_topic("t")
    assert md.topics() == ["u"]


# ---------------------------------------------------------------- accumulator


def _future() -> asyncio.Future:  # type: ignore[type-arg]
    return asyncio.get_running_loop().create_future()


async def test_accumulator_seals_when_the_next_record_does_not_fit() -> None:
    acc = Accumulator(batch_bytes=1000)
    sealed_batches = []
    for i in range(30):
        _, sealed, _ = acc.append("t", 0, b"v" * 100, None, 1000 + i, None)
        if sealed is not None:
            sealed_batches.append(sealed)
    assert sealed_batches, "1000-byte batches cannot hold 30 records of 100 bytes"
    for b in sealed_batches:
        assert len(codec.encode(b.values, timestamps_ms=b.timestamps)) <= 1000
        assert b.size <= 1000
    total = sum(len(b) for b in sealed_batches) + len(acc.open_batch("t", 0) or [])
    assert total == 30
    rest = acc.seal_all()
    assert len(rest) == 1 and len(acc) == 0


async def test_accumulator_keeps_partitions_apart_and_columns_aligned() -> None:
    acc = Accumulator()
    acc.append("t", 0, b"a", None, 1, None)
    acc.append("t", 1, b"b", b"k", 2, [("h", b"1")])
    acc.append("t", 0, b"c", b"key", 3, None)
    acc.append("t", 0, b"d", None, 4, [("x", b"y")])
    b0 = acc.seal("t", 0)
    assert b0 is not None and acc.seal("t", 0) is None
    assert b0.values == [b"a", b"c", b"d"]
    assert b0.keys == [b"", b"key", b""]
    assert b0.headers == [(), (), [("x", b"y")]]
    records = codec.decode(b0.encode())
    assert [(r.key, r.value, r.timestamp_ms, r.headers) for r in records] == [
        (b"", b"a", 1, ()), (b"key", b"c", 3, ()), (b"", b"d", 4, (("x", b"y"),))]


def _handles(b: PartitionBatch, n: int, t0: int = 100) -> list[RecordFuture]:
    return [RecordFuture(b, b.append(b"v%d" % i, None, t0 + i, None, 10)) for i in range(n)]


async def test_record_futures_resolve_to_their_own_offsets() -> None:
    b = PartitionBatch("t", 2)
    hs = _handles(b, 3)
    assert not any(h.done() for h in hs)
    with pytest.raises(asyncio.InvalidStateError):
        hs[0].result()
    assert hs[1].cancel()  # a caller gave up on one record: the others still resolve
    waiting = asyncio.ensure_future(_await(hs[2]))
    await asyncio.sleep(0)
    assert not waiting.done()
    b.complete(40)
    assert hs[0].done() and hs[0].result() == ("t", 2, 40, 100)
    assert hs[0].exception() is None
    assert hs[1].cancelled() and not hs[1].cancel()
    with pytest.raises(asyncio.CancelledError):
        hs[1].result()
    assert await waiting == ("t", 2, 42, 102)
    # Awaiting after the ack, and awaiting twice, give the same metadata.
    assert [await h for h in (hs[0], hs[2], hs[2])] == [
        ("t", 2, 40, 100), ("t", 2, 42, 102), ("t", 2, 42, 102)]


async def _await(h: RecordFuture) -> object:
    return await h


async def test_every_awaiter_of_a_multi_record_batch_gets_its_offset() -> None:
    b = PartitionBatch("t", 0)
    hs = _handles(b, 50)
    tasks = [asyncio.ensure_future(_await(h)) for h in hs]
    gathered = asyncio.gather(*hs[::7])  # gather wraps each handle in a task
    await asyncio.sleep(0)
    b.complete(1000)
    got = await asyncio.gather(*tasks)
    assert [m.offset for m in got] == list(range(1000, 1050))  # type: ignore[attr-defined]
    assert [m.timestamp_ms for m in got] == list(range(100, 150))  # type: ignore[attr-defined]
    assert [m.offset for m in await gathered] == list(range(1000, 1050, 7))


async def test_done_callbacks_run_from_the_loop_with_the_handle() -> None:
    b = PartitionBatch("t", 0)
    hs = _handles(b, 4)
    seen: list[tuple[str, int]] = []

    def record(tag: str) -> object:
        return lambda h: seen.append((tag, h.result().offset))
    hs[0].add_done_callback(record("a"))
    hs[3].add_done_callback(record("b"))
    dropped = record("dropped")
    hs[2].add_done_callback(dropped)
    assert hs[2].remove_done_callback(dropped) == 1
    b.complete(7)
    assert seen == [], "callbacks are scheduled, not called inline"
    await asyncio.sleep(0)
    assert seen == [("a", 7), ("b", 10)]
    hs[1].add_done_callback(record("late"))  # on a done record: scheduled at once
    await asyncio.sleep(0)
    assert seen[-1] == ("late", 8)


async def test_a_failed_batch_fails_every_record() -> None:
    b = PartitionBatch("t", 0)
    hs = _handles(b, 5)
    task = asyncio.ensure_future(_await(hs[3]))
    called: list[BaseException | None] = []
    hs[4].add_done_callback(lambda h: called.append(h.exception()))
    await asyncio.sleep(0)
    err = errors.UnavailableError("gone")
    b.fail(err)
    b.complete(5)  # a late answer changes nothing
    for h in hs:
        assert h.done() and h.exception() is err
        with pytest.raises(errors.UnavailableError):
            h.result()
    with pytest.raises(errors.UnavailableError):
        await task
    await asyncio.sleep(0)
    assert called == [err]


async def test_cancelling_a_waiting_task_leaves_the_other_records_alone() -> None:
    b = PartitionBatch("t", 0)
    hs = _handles(b, 2)
    t0, t1 = asyncio.ensure_future(_await(hs[0])), asyncio.ensure_future(_await(hs[1]))
    await asyncio.sleep(0)
    t0.cancel()
    with pytest.raises(asyncio.CancelledError):
        await t0
    assert not hs[0].done(), "only the wait was cancelled, not the record"
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(hs[1], 0.01)
    b.complete(3)
    assert (await t1).offset == 4  # type: ignore[attr-defined]
    assert hs[0].result().offset == 3


def test_partition_for_key_matches_the_contract() -> None:
    assert codec.crc32c(b"123456789") == 0xE3069283
    assert codec.partition_for_key(b"123456789", 7) == 0xE3069283 % 7


# ---------------------------------------------------------------- decoding


def _stored(base: int, values: list[bytes], t0: int = 1000) -> bytes:
    raw = bytearray(codec.encode(values, timestamps_ms=[t0 + i for i in range(len(values))]))
    codec.stamp(raw, base, 1)
    return bytes(raw)


def test_decode_batches_skips_below_first_and_at_or_above_end() -> None:
    buf = _stored(0, [b"a", b"b", b"c"]) + _stored(3, [b"d", b"e"]) + _stored(5, [b"f"])
    got = decode_batches("t", 0, buf, first_offset=1, end_offset=5)
    assert [(b.first_offset, b.next_offset, b.values) for b in got] == [
        (1, 3, [b"b", b"c"]), (3, 5, [b"d", b"e"])]
    recs = [r for b in got for r in b]
    assert [(r.offset, r.value, r.timestamp_ms, r.key) for r in recs] == [
        (1, b"b", 1001, b""), (2, b"c", 1002, b""), (3, b"d", 1000, b""), (4, b"e", 1001, b"")]
    # Whole batches below the start are skipped, a start past everything yields nothing.
    assert [b.first_offset for b in decode_batches("t", 0, buf, 4)] == [4, 5]
    assert decode_batches("t", 0, buf, 6) == []


def test_decode_batches_skips_control_batches() -> None:
    noop = bytearray(codec.encode_control(b""))
    codec.stamp(noop, 0, 2, 1)
    conf = bytearray(codec.encode_control(b"\x00\x04", conf_change=True))
    codec.stamp(conf, 2, 2, 3)
    buf = bytes(noop) + _stored(0, [b"a", b"b"]) + bytes(conf) + _stored(2, [b"c"])
    got = decode_batches("t", 0, buf)
    assert [r.value for b in got for r in b] == [b"a", b"b", b"c"]
    assert [r.offset for b in decode_batches("t", 0, buf, 2) for r in b] == [2]


def test_decode_batches_rejects_damage() -> None:
    buf = bytearray(_stored(0, [b"hello", b"world"]))
    buf[-1] ^= 0xFF
    with pytest.raises(codec.CorruptBatchError, match="CRC"):
        decode_batches("t", 0, bytes(buf))


async def test_send_many_chunks_resolve_in_call_order() -> None:
    from rillet.client.accumulator import ManyFuture

    owner = ManyFuture(_future())
    b1, b2 = PartitionBatch("t", 0), PartitionBatch("t", 1)
    f = RecordFuture(b1, b1.append(b"single", None, 5, None, 30))
    b1.extend([b"a", b"b"], 7, 42, owner, 0)
    b2.extend([b"c"], 7, 21, owner, 1)
    owner.closed = True
    assert b1.values == [b"single", b"a", b"b"]
    b2.complete(100)
    assert not owner.future.done(), "waits for every chunk"
    b1.complete(10)
    assert f.result().offset == 10
    assert owner.future.result() == [("t", 0, 11, 2), ("t", 1, 100, 1)]
    failing = ManyFuture(_future())
    b3 = PartitionBatch("t", 0)
    b3.extend([b"x"], 1, 21, failing, 0)
    failing.closed = True
    b3.fail(errors.BrokerStorageError("disk"))
    with pytest.raises(errors.BrokerStorageError):
        failing.future.result()
