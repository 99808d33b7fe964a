"""The Python client against a real broker process: produce, consume, replay, admin, restarts."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from rillet import batch as codec
from rillet.client import Admin, Consumer, ConsumerRecord, Producer, Replay, Timestamp, errors
from rillet.client import sync as rsync

pytestmark = pytest.mark.integration


async def read_n(consumer: Consumer | Replay, n: int, timeout_s: float = 20.0
                 ) -> list[ConsumerRecord]:
    out: list[ConsumerRecord] = []
    async with asyncio.timeout(timeout_s):
        while len(out) < n:
            for b in await consumer.getmany(timeout_s):
                out.extend(b)
    return out


async def test_round_trip_keys_headers_and_partitioning(broker: Any) -> None:
    async with Admin(broker.address) as admin:
        await admin.create_topic("rt", partitions=3)
    sent = []
    async with Producer(broker.address, linger_ms=2) as producer:
        for i in range(600):
            key = f"key-{i % 17}".encode() if i % 3 else None
            headers = [("i", str(i).encode())] if i % 5 == 0 else None
            fut = await producer.send("rt", f"value-{i}".encode(), key=key, headers=headers)
            sent.append((key, f"value-{i}".encode(), headers, fut))
        await producer.flush()
    metas = [s[3].result() for s in sent]
    for (key, _, _, _), md in zip(sent, metas, strict=True):
        if key:
            assert md.partition == codec.partition_for_key(key, 3)
    # Offsets per partition are dense and unique.
    for p in range(3):
        offs = sorted(md.offset for md in metas if md.partition == p)
        assert offs == list(range(len(offs)))
    assert {md.partition for md in metas} == {0, 1, 2}, "keyless records are spread"

    async with Consumer(broker.address, "rt", start="earliest") as consumer:
        got = await read_n(consumer, 600)
    by_value = {r.value: r for r in got}
    assert len(got) == 600 and len(by_value) == 600
    for (key, value, headers, _), md in zip(sent, metas, strict=True):
        r = by_value[value]
        assert (r.partition, r.offset, r.timestamp_ms) == (md.partition, md.offset,
                                                          md.timestamp_ms)
        assert r.key == (key or b"")
        assert r.headers == tuple(headers or ())
    # Order within a partition is the send order.
    for p in range(3):
        in_p = [r.value for r in got if r.partition == p]
        sent_p = [v for (_, v, _, _), md in zip(sent, metas, strict=True) if md.partition == p]
        assert in_p == sent_p


async def test_consume_from_offset_timestamp_and_latest(broker: Any) -> None:
    async with Admin(broker.address) as admin:
        await admin.create_topic("pos", partitions=1)
    async with Producer(broker.address) as producer:
        # Three batches with distinct timestamps: flush seals each one.
        for t in (1_000, 2_000, 3_000):
            for j in range(4):
                await producer.send("pos", f"{t}-{j}".encode(), timestamp_ms=t + j)
            await producer.flush()

        async with Consumer(broker.address, "pos", start=6) as c:
            got = await read_n(c, 6)
        assert [r.offset for r in got] == list(range(6, 12))

        async with Consumer(broker.address, "pos", start=Timestamp(2_002)) as c:
            got = await read_n(c, 8)
        assert got[0].offset == 4 and got[0].value == b"2000-0"

        async with Consumer(broker.address, "pos", start="latest") as c:
            # Nothing old arrives...
            assert await c.getmany(0.5) == []
            # ...and tailing sees what is produced now.
            md = await producer.send_and_wait("pos", b"new")
            got = await read_n(c, 1)
        assert got[0].value == b"new" and got[0].offset == md.offset == 12


async def test_replay_of_a_bounded_range_ends(broker: Any) -> None:
    async with Admin(broker.address) as admin:
        await admin.create_topic("rp", partitions=2)
    async with Producer(broker.address) as producer:
        for i in range(40):
            await producer.send("rp", str(i).encode(), partition=i % 2)
    async with asyncio.timeout(20), Replay(broker.address, "rp", start=3, end=9,
                                           partitions=[1]) as r:
        got = [rec async for rec in r]
    assert [(x.partition, x.offset) for x in got] == [(1, o) for o in range(3, 9)]
    assert [x.value for x in got] == [str(2 * o + 1).encode() for o in range(3, 9)]
    async with asyncio.timeout(20), Replay(broker.address, "rp") as r:
        n = sum([len(b) async for b in r.batches()])
    assert n == 40


async def test_admin_and_errors(broker: Any) -> None:
    async with Admin(broker.address) as admin:
        desc = await admin.create_topic("adm", partitions=2, config={"retention.ms": 60_000})
        assert len(desc.partitions) == 2 and desc.config.retention_ms == 60_000
        with pytest.raises(errors.TopicExistsError):
            await admin.create_topic("adm")
        with pytest.raises(errors.InvalidRequestError):
            await admin.create_topic("bad/name")
        assert "adm" in [t.name for t in await admin.list_topics()]
        md = await admin.metadata()
        assert md.partition_count("adm") == 2 and md.leader_address("adm", 0) == broker.address
        async with Producer(broker.address) as producer:
            with pytest.raises(errors.UnknownTopicError):
                await producer.send("nope", b"x")
            with pytest.raises(errors.PartitionOutOfRangeError):
                await producer.send("adm", b"x", partition=2)
            with pytest.raises(errors.BatchTooLargeError):
                await producer.send("adm", b"x" * (2 * 1024 * 1024))
        await admin.delete_topic("adm")
        with pytest.raises(errors.UnknownTopicError):
            await admin.describe_topic("adm")
    with pytest.raises(errors.UnknownTopicError):
        await Consumer(broker.address, "adm").start()


async def test_unreachable_bootstrap_fails_fast() -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(errors.ClusterUnreachableError, match="cannot reach"):
        async with Producer("127.0.0.1:1", request_timeout_s=2.0):
            pass
    assert loop.time() - start < 5


async def test_producer_resends_across_a_broker_restart(broker: Any) -> None:
    async with Admin(broker.address) as admin:
        await admin.create_topic("rs", partitions=1)
    async with Producer(broker.address, linger_ms=1, delivery_timeout_ms=60_000) as producer:
        first = [await producer.send("rs", f"a{i}".encode()) for i in range(100)]
        await producer.flush()
        await asyncio.to_thread(broker.kill)
        # Records sent while the broker is down wait, then go out once it is back.
        second = [await producer.send("rs", f"b{i}".encode()) for i in range(100)]
        await asyncio.to_thread(broker.start)
        async with asyncio.timeout(60):
            await producer.flush()
        assert all(f.exception() is None for f in first + second)
    async with Consumer(broker.address, "rs", start="earliest") as c:
        got = await read_n(c, 200)
    values = [r.value for r in got]
    assert values[:100] == [f"a{i}".encode() for i in range(100)]
    assert [v for v in values if v.startswith(b"b")] == [f"b{i}".encode() for i in range(100)]


async def test_close_without_flush_fails_pending_futures(broker: Any) -> None:
    async with Admin(broker.address) as admin:
        await admin.create_topic("cl", partitions=1)
    producer = Producer(broker.address, linger_ms=60_000)
    await producer.start()
    fut = await producer.send("cl", b"never sent")
    await producer.close(flush=False)
    with pytest.raises(errors.ClientClosedError):
        fut.result()
    with pytest.raises(errors.ClientClosedError):
        await producer.send("cl", b"after close")


def test_sync_wrappers(broker: Any) -> None:
    with rsync.Admin(broker.address) as admin:
        admin.create_topic("sy", partitions=2)
        assert [p.partition for p in admin.describe_topic("sy").partitions] == [0, 1]
    with rsync.Producer(broker.address) as producer:
        futs = [producer.send("sy", f"v{i}".encode(), key=b"k") for i in range(50)]
        producer.flush()
        metas = [f.result(timeout=10) for f in futs]
    assert [m.offset for m in metas] == list(range(50))
    with rsync.Consumer(broker.address, "sy", start="earliest") as consumer:
        got: list[ConsumerRecord] = []
        for _ in range(50):
            got.extend(consumer.poll(5.0))
            if len(got) >= 50:
                break
    assert [r.value for r in got] == [f"v{i}".encode() for i in range(50)]
    with rsync.Replay(broker.address, "sy") as r:
        assert len(list(r)) == 50


async def test_send_many_spans_batches_and_partitions_in_order(broker: Any) -> None:
    async with Admin(broker.address) as admin:
        await admin.create_topic("many", partitions=2)
    values = [b"%06d" % i + b"x" * 200 for i in range(5000)]
    async with Producer(broker.address, batch_bytes=64 * 1024) as producer:
        acks = await (await producer.send_many("many", values))
        pinned = await (await producer.send_many("many", [b"p1", b"p2"], partition=1))
        with pytest.raises(errors.PartitionOutOfRangeError):
            await producer.send_many("many", [b"x"], partition=5)
    assert sum(a.record_count for a in acks) == 5000
    assert {a.partition for a in acks} == {0, 1}, "64 KiB batches rotate partitions"
    assert len(pinned) == 1 and pinned[0].partition == 1 and pinned[0].record_count == 2
    async with Consumer(broker.address, "many", start="earliest") as c:
        got = await read_n(c, 5002)
    stored = {(r.partition, r.offset): r.value for r in got}
    # Each acked run holds exactly the values in call order.
    i = 0
    for a in acks:
        for k in range(a.record_count):
            assert stored[(a.partition, a.base_offset + k)] == values[i]
            i += 1


async def test_consumer_resumes_after_a_broker_restart(broker: Any) -> None:
    async with Admin(broker.address) as admin:
        await admin.create_topic("cr", partitions=2)
    async with Producer(broker.address) as producer:
        await (await producer.send_many("cr", [b"%d" % i for i in range(100)]))
    async with Consumer(broker.address, "cr", start="earliest",
                        reconnect_timeout_s=60) as consumer:
        before = await read_n(consumer, 100)
        await asyncio.to_thread(broker.kill)
        await asyncio.to_thread(broker.start)
        async with Producer(broker.address) as producer:
            await (await producer.send_many("cr", [b"%d" % i for i in range(100, 150)]))
        after = await read_n(consumer, 50, timeout_s=60)
    # Nothing is delivered twice and nothing is missed: the fetcher resumed at next offsets.
    values = sorted(int(r.value) for r in before + after)
    assert values == list(range(150))
    assert sum(consumer.positions.values()) == 150
    for p, pos in consumer.positions.items():
        assert pos == consumer.high_watermarks[p]
