"""`Table` against an in-process fake node: applying sets and tombstones, catching up over
offsets that hold no records (compacted gaps), waiting for writes acknowledged before the call,
and what happens when brokers fail."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest

from rillet import batch as codec
from rillet.api.v1 import admin_pb2, admin_pb2_grpc, common_pb2, log_pb2, log_pb2_grpc
from rillet.client.errors import UnknownTopicError
from rillet.client.table import SyncTable, Table
from tests.waiting import wait_for

TOPIC = "t"


class FakeLog:
    """Stored batches of one partition and its high watermark (which may lie past the last
    batch: the offsets between were compacted away)."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, int, bytes]] = []  # (base, next, raw)
        self.hw = 0
        #: Consume serves nothing at or above this offset while set (a slow replica).
        self.hold: int | None = None

    def append(self, records: list[tuple[bytes, bytes]], *, base: int | None = None,
               keep: list[int] | None = None) -> None:
        """Store one batch; with `keep`, as the compactor leaves it: only the records at
        those indexes survive, the batch still spans all of their offsets."""
        base = self.hw if base is None else base
        raw = bytearray(codec.encode([v for _, v in records], keys=[k for k, _ in records],
                                     timestamps_ms=[1] * len(records)))
        codec.stamp(raw, base, 1)
        stored = bytes(raw) if keep is None else codec.compact_records(raw, keep)
        self.batches.append((base, base + len(records), stored))
        self.hw = base + len(records)


class FakeNode(log_pb2_grpc.ConsumeServicer, admin_pb2_grpc.MetadataServicer,
               admin_pb2_grpc.AdminServicer):
    def __init__(self, partitions: int, node_id: int = 0,
                 others: list[FakeNode] | None = None) -> None:
        self.logs = [FakeLog() for _ in range(partitions)]
        self.node_id = node_id
        #: Further nodes the metadata lists (they lead nothing; only DescribeTopic is asked).
        self.others = others if others is not None else []
        self.address = ""
        self.server: grpc.aio.Server | None = None
        #: DescribeTopic answers UNAVAILABLE while set.
        self.describe_down = False
        #: DescribeTopic never answers while set (a hung node).
        self.describe_hangs = False
        #: Consume answers this status at once while set.
        self.consume_error: grpc.StatusCode | None = None
        self.changed = asyncio.Event()

    def touch(self) -> None:
        self.changed.set()

    async def GetMetadata(self, request: Any, context: Any) -> admin_pb2.MetadataResponse:
        return admin_pb2.MetadataResponse(
            brokers=[admin_pb2.Broker(node_id=n.node_id, address=n.address)
                     for n in (self, *self.others)],
            topics=[admin_pb2.TopicMetadata(name=TOPIC, partitions=[
                admin_pb2.PartitionMetadata(partition=p, leader_id=0, replicas=[0])
                for p in range(len(self.logs))])])

    async def DescribeTopic(self, request: Any, context: Any
                            ) -> admin_pb2.DescribeTopicResponse:
        if self.describe_down:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "describe is down")
        if self.describe_hangs:
            await asyncio.Event().wait()
        return admin_pb2.DescribeTopicResponse(topic=admin_pb2.TopicDescription(
            name=TOPIC, partitions=[
                admin_pb2.PartitionDescription(partition=p, high_watermark=lg.hw)
                for p, lg in enumerate(self.logs)]))

    async def Consume(self, request: log_pb2.ConsumeRequest, context: Any
                      ) -> AsyncIterator[log_pb2.ConsumeResponse]:
        if self.consume_error is not None:
            await context.abort(self.consume_error, "consume refused")
        pos = {pp.partition: (pp.position.offset if pp.position.WhichOneof("kind") == "offset"
                              else 0)
               for pp in request.partitions}
        while True:
            self.changed.clear()
            data = []
            for p, at in pos.items():
                lg = self.logs[p]
                end = lg.hw if lg.hold is None else min(lg.hold, lg.hw)
                if at >= end:
                    continue
                # Everything up to `end`; offsets past the last batch hold nothing for readers.
                sent = b"".join(raw for b, n, raw in lg.batches if n > at and b < end)
                data.append(common_pb2.PartitionData(
                    partition=p, batches=sent, first_offset=at, high_watermark=lg.hw,
                    next_offset=end))
                pos[p] = end
            if data:
                yield log_pb2.ConsumeResponse(partitions=data)
                continue
            try:
                await asyncio.wait_for(self.changed.wait(), 0.05)
            except TimeoutError:
                pass
            yield log_pb2.ConsumeResponse(partitions=[  # a heartbeat
                common_pb2.PartitionData(partition=p, first_offset=at, next_offset=at,
                                         high_watermark=self.logs[p].hw)
                for p, at in pos.items()])


async def serve(n: FakeNode) -> FakeNode:
    server = grpc.aio.server()
    log_pb2_grpc.add_ConsumeServicer_to_server(n, server)
    admin_pb2_grpc.add_MetadataServicer_to_server(n, server)
    admin_pb2_grpc.add_AdminServicer_to_server(n, server)
    n.address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    n.server = server
    await server.start()
    return n


@pytest.fixture
async def node() -> AsyncIterator[FakeNode]:
    n = await serve(FakeNode(partitions=2))
    yield n
    for m in (n, *n.others):
        if m.server is not None:
            await m.server.stop(grace=None)


async def test_sets_and_tombstones_apply_in_offset_order(node: FakeNode) -> None:
    node.logs[0].append([(b"a", b"1"), (b"b", b"1"), (b"a", b"2")])
    node.logs[0].append([(b"b", b""), (b"c", b"1"), (b"", b"keyless")])
    node.logs[1].append([(b"x", b"1"), (b"x", b""), (b"x", b"3")])
    async with Table(node.address, TOPIC) as table:
        assert await table.wait_caught_up(timeout_s=5) == {0: 6, 1: 3}
        assert table.snapshot() == {b"a": b"2", b"c": b"1", b"x": b"3"}
        assert b"b" not in table and table.get(b"b", b"-") == b"-"
        assert len(table) == 3 and sorted(table) == [b"a", b"c", b"x"]
        assert table[b"a"] == b"2" and dict(table.items())[b"x"] == b"3"
        assert table.keyless_records == 1
        assert table.version == 8  # every keyed record, deletes included
        assert table.lag() == {0: 0, 1: 0} and table.caught_up


async def test_caught_up_across_offsets_that_hold_no_records(node: FakeNode) -> None:
    """Compacted batches skip offsets, and the high watermark may be past the last batch:
    being caught up follows the fetch position, not the last record seen."""
    node.logs[0].append([(b"a", b"1")], base=0)
    node.logs[0].append([(b"a", b"2"), (b"b", b"1")], base=7)
    node.logs[0].hw = 20
    async with Table(node.address, TOPIC) as table:
        assert await table.wait_caught_up(timeout_s=5) == {0: 20, 1: 0}
        assert table.snapshot() == {b"a": b"2", b"b": b"1"}


async def test_reads_compacted_batches(node: FakeNode) -> None:
    """Batches as the compactor rewrites them (records.proto: survivors keep their offsets);
    the last one lost every record, so nothing is delivered for offsets 7 and 8."""
    node.logs[0].append([(b"a", b"1"), (b"b", b"1"), (b"a", b"2"), (b"c", b"1")], keep=[1, 2])
    node.logs[0].append([(b"b", b""), (b"d", b"1"), (b"d", b"2")], keep=[0, 2])
    node.logs[0].append([(b"e", b"1"), (b"e", b"")], keep=[])
    node.logs[0].append([(b"c", b"")])  # the active segment: as written
    changes: list[tuple[bytes, Any, Any]] = []
    async with Table(node.address, TOPIC,
                     on_change=lambda k, old, new: changes.append((k, old, new))) as table:
        assert await table.wait_caught_up(timeout_s=5) == {0: 10, 1: 0}
        assert table.snapshot() == {b"a": b"2", b"d": b"2"}
        assert table.version == 5
    assert changes == [(b"b", None, b"1"), (b"a", None, b"2"), (b"b", b"1", None),
                       (b"d", None, b"2"), (b"c", None, None)]


async def test_wait_covers_writes_acknowledged_before_the_call(node: FakeNode) -> None:
    """The target is the high watermark the broker reports at the call, even while the
    consumer has not heard of those writes yet."""
    async with Table(node.address, TOPIC) as table:
        await table.wait_caught_up(timeout_s=5)
        node.logs[1].hold = 0  # the stream serves nothing new
        node.logs[1].append([(b"k", b"v1")])
        node.logs[1].append([(b"k", b"v2")])
        node.touch()
        waiter = asyncio.ensure_future(table.wait_caught_up(timeout_s=5))
        await wait_for(lambda: table.lag() == {0: 0, 1: 2} or waiter.done(),
                       "the consumer to hear the new high watermark")
        assert not waiter.done() and b"k" not in table and not table.caught_up
        node.logs[1].hold = None
        node.touch()
        assert await waiter == {0: 0, 1: 2}
        assert table.get(b"k") == b"v2"


async def test_decoders_and_on_change(node: FakeNode, caplog: pytest.LogCaptureFixture
                                      ) -> None:
    node.logs[0].append([(b"a", b'{"n": 1}'), (b"b", b'{"n": 2}'), (b"a", b'{"n": 3}')])
    node.logs[0].append([(b"b", b""), (b"boom", b'{"n": 0}')])
    seen: list[tuple[Any, Any, Any]] = []

    def on_change(key: str, old: Any, new: Any) -> None:
        seen.append((key, old, new))
        if key == "boom":
            raise RuntimeError("callback bug")
    async with Table(node.address, TOPIC, key_decoder=bytes.decode, value_decoder=json.loads,
                     on_change=on_change) as table:
        with caplog.at_level(logging.ERROR, logger="rillet.client.table"):
            await table.wait_caught_up(timeout_s=5)
        assert table.snapshot() == {"a": {"n": 3}, "boom": {"n": 0}}
    assert seen == [("a", None, {"n": 1}), ("b", None, {"n": 2}), ("a", {"n": 1}, {"n": 3}),
                    ("b", {"n": 2}, None), ("boom", None, {"n": 0})]
    assert "on_change failed" in caplog.text, "a failing callback is logged, not fatal"


async def test_a_hung_broker_that_leads_nothing_does_not_hold_the_wait(node: FakeNode) -> None:
    hung = await serve(FakeNode(partitions=2, node_id=1))
    hung.describe_hangs = True
    node.others.append(hung)
    node.logs[0].append([(b"a", b"1")])
    async with Table(node.address, TOPIC, request_timeout_s=30) as table:
        assert await table.wait_caught_up(timeout_s=5) == {0: 1, 1: 0}
        node.logs[1].append([(b"b", b"1")])
        node.touch()
        assert await table.wait_caught_up(timeout_s=5) == {0: 1, 1: 1}


async def test_falls_back_to_the_consumers_high_watermarks(node: FakeNode) -> None:
    node.describe_down = True
    node.logs[0].append([(b"a", b"1")])
    async with Table(node.address, TOPIC) as table:
        assert await table.wait_caught_up(timeout_s=5) == {0: 1, 1: 0}
        assert table.get(b"a") == b"1"


async def test_a_failed_consumer_stops_the_table_and_wait_raises(node: FakeNode) -> None:
    node.consume_error = grpc.StatusCode.NOT_FOUND
    node.logs[0].append([(b"a", b"1")])  # so it cannot count as caught up without reading
    async with Table(node.address, TOPIC) as table:
        with pytest.raises(UnknownTopicError):
            await table.wait_caught_up(timeout_s=5)
        assert isinstance(table.error, UnknownTopicError)


async def test_wait_times_out_while_behind(node: FakeNode) -> None:
    node.logs[0].append([(b"a", b"1")])
    node.logs[0].hold = 0
    async with Table(node.address, TOPIC) as table:
        with pytest.raises(TimeoutError):
            await table.wait_caught_up(timeout_s=0.3)
        assert len(table) == 0


async def test_unknown_topic_fails_at_start(node: FakeNode) -> None:
    with pytest.raises(UnknownTopicError):
        async with Table(node.address, "nope"):
            pass


async def test_sync_table(node: FakeNode) -> None:
    node.logs[0].append([(b"a", b"1"), (b"b", b"2")])

    def use() -> tuple[dict[int, int], list[tuple[bytes, bytes]], bytes | None, bool, int]:
        with SyncTable[bytes, bytes](node.address, TOPIC) as t:
            offsets = t.wait_caught_up(5)
            return offsets, sorted(t.items()), t.get(b"a"), b"b" in t, len(t)
    assert await asyncio.to_thread(use) == (
        {0: 2, 1: 0}, [(b"a", b"1"), (b"b", b"2")], b"1", True, 2)
