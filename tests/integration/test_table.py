"""`rillet.client.Table` against real node processes: a compacted topic with 100,000 updates
over 1,000 keys reads back as the last write per key, deletes included, after the compactor has
rewritten most of it; a restarted table rebuilds the same view; the table follows updates made
while it tails, on one node and on three through a leader kill -9."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

import pytest

from rillet.client import Admin, Producer, Replay
from rillet.client.table import Table

pytestmark = pytest.mark.integration

log = logging.getLogger(__name__)

KEYS = 1_000
UPDATES = 100_000
#: Small segments, so the log has many closed segments for the compactor to work on.
SEGMENT_BYTES = 64 * 1024
#: The compactor visits compact topics this often on the single-node tests.
FAST_COMPACTION = {"RILLET_COMPACTION_INTERVAL_MS": "100"}


def key(i: int) -> bytes:
    return b"k%04d" % i


def updates(n: int, *, seed: int, tag: str) -> list[tuple[bytes, bytes]]:
    """`n` updates over KEYS keys in a seeded random order, about 2% of them tombstones."""
    rng = random.Random(seed)
    return [(key(rng.randrange(KEYS)), b"" if rng.random() < 0.02 else f"{tag}-{i}".encode())
            for i in range(n)]


def view(*runs: list[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """What a table must hold after `runs`: the last write per key, deleted keys absent."""
    last: dict[bytes, bytes] = {}
    for run in runs:
        last.update(run)
    return {k: v for k, v in last.items() if v}


async def produce(bootstrap: str, topic: str, run: list[tuple[bytes, bytes]]) -> None:
    # Small batches: a tight send loop otherwise fills one batch per partition, and a batch
    # never spans segments, so there would be no closed segment to compact.
    async with Producer(bootstrap, linger_ms=5, batch_bytes=16 * 1024) as producer:
        for k, v in run:
            await producer.send(topic, v, key=k)
        await producer.flush()


async def stored_records(bootstrap: str, topic: str) -> int:
    """How many records the topic holds now (compaction lowers it; offsets stay)."""
    n = 0
    async with Replay(bootstrap, topic) as replay:
        async for b in replay.batches():
            n += len(b)
    return n


async def wait_compacted(bootstrap: str, topic: str, below: int, timeout_s: float = 20.0
                         ) -> int:
    """Poll (bounded) until the compactor has left fewer than `below` records stored."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while (n := await stored_records(bootstrap, topic)) >= below:
        assert loop.time() < deadline, f"{topic} still holds {n} records after {timeout_s} s"
        await asyncio.sleep(0.2)
    return n


async def check_table_follows(bootstrap: str, topic: str, *, compacted: bool) -> None:
    # The test: 100,000 updates over 1,000 keys, tombstones among them; the last
    # 1,000 set every key (in random order), so 1,000 live values are expected.
    final = [(key(i), b"final-%d" % i) for i in random.Random(2).sample(range(KEYS), KEYS)]
    history = updates(UPDATES - KEYS, seed=1, tag="a") + final
    t0 = time.monotonic()
    await produce(bootstrap, topic, history)
    t1 = time.monotonic()
    if compacted:
        left = await wait_compacted(bootstrap, topic, below=UPDATES // 4)
        log.info("%s: %d of %d records left after compaction", topic, left, UPDATES)
    async with Table(bootstrap, topic) as table:
        t2 = time.monotonic()
        offsets = await table.wait_caught_up(timeout_s=30)
        t3 = time.monotonic()
        log.info("produced %d updates in %.2f s; table applied %d records and caught up in "
                 "%.2f s (%s)", UPDATES, t1 - t0, table.version, t3 - t2, offsets)
        assert len(table) == KEYS
        assert table.snapshot() == view(history) == dict(final)
        assert sum(offsets.values()) == UPDATES  # compaction never moves offsets
        if compacted:
            assert table.version < UPDATES // 4, "the table read a compacted log"

        # Tailing: 10,000 more updates (deletes among them) made while the table is live.
        more = updates(10_000, seed=3, tag="b")
        await produce(bootstrap, topic, more)
        await table.wait_caught_up(timeout_s=30)
        expected = view(history, more)
        assert len(expected) < KEYS, "some keys end deleted"
        assert table.snapshot() == expected

        # on_change sees each change in order; a wait covers writes acked before it.
        changes: list[tuple[bytes, bytes | None, bytes | None]] = []
        table.on_change = lambda k, old, new: changes.append((k, old, new))
        gone = next(k for k in map(key, range(KEYS)) if k not in expected)
        there = next(k for k in map(key, range(KEYS)) if k in expected)
        async with Producer(bootstrap) as producer:
            await producer.send_and_wait(topic, b"back", key=gone)
            await producer.send_and_wait(topic, b"", key=there)
        await table.wait_caught_up(timeout_s=10)
        assert table.get(gone) == b"back" and there not in table
        assert changes == [(gone, None, b"back"), (there, expected[there], None)]
        assert table.lag() == dict.fromkeys(table.partitions, 0)


async def test_table_reads_last_write_per_key_on_one_node(broker_factory: Any) -> None:
    broker = broker_factory(env=FAST_COMPACTION)
    async with Admin(broker.address) as admin:
        await admin.create_topic("table", partitions=3, config={
            "cleanup.policy": "compact", "segment.bytes": SEGMENT_BYTES})
    await check_table_follows(broker.address, "table", compacted=True)


async def test_table_restart_rebuilds_the_same_view_from_the_compacted_log(
        broker_factory: Any) -> None:
    """A table that read the topic as it was written, and a new one (a restarted process)
    that reads it after compaction with tombstones dropped, hold the same view; an empty
    partition counts as caught up at once; both keep tailing across compaction."""
    broker = broker_factory(env=FAST_COMPACTION)
    async with Admin(broker.address) as admin:
        await admin.create_topic("t2", partitions=2, config={
            "cleanup.policy": "compact", "segment.bytes": SEGMENT_BYTES,
            "delete.retention.ms": 0})
    run = updates(30_000, seed=7, tag="r")
    async with Table(broker.address, "t2") as live:
        assert await live.wait_caught_up(timeout_s=10) == {0: 0, 1: 0}
        assert len(live) == 0
        await produce(broker.address, "t2", run)
        await live.wait_caught_up(timeout_s=10)
        assert live.snapshot() == view(run)
        left = await wait_compacted(broker.address, "t2", below=len(run) // 4)
        async with Table(broker.address, "t2", key_decoder=bytes.decode,
                         value_decoder=bytes.decode) as again:
            await again.wait_caught_up(timeout_s=10)
            assert again.snapshot() == {k.decode(): v.decode() for k, v in view(run).items()}
            assert again.offsets() == live.offsets()
            # The compactor may have removed more since it was counted.
            assert again.version <= left < live.version
            more = updates(2_000, seed=8, tag="s")
            await produce(broker.address, "t2", more)
            await live.wait_caught_up(timeout_s=10)
            await again.wait_caught_up(timeout_s=10)
            assert live.snapshot() == view(run, more)
            assert again.snapshot() == {k.decode(): v.decode()
                                        for k, v in view(run, more).items()}


@pytest.mark.chaos
async def test_table_on_three_nodes_and_through_a_leader_kill_9(cluster_factory: Any) -> None:
    """The issue's test on a cluster; then, on a second topic, the table's reads move to the
    new leaders after a kill -9, and a wait still covers every acked write although one
    broker no longer answers for high watermarks."""
    cluster = await cluster_factory(3)
    async with Admin(cluster.bootstrap) as admin:
        await admin.create_topic("ctable", partitions=3, replication_factor=3, config={
            "cleanup.policy": "compact", "segment.bytes": SEGMENT_BYTES})
        await admin.create_topic("ktable", partitions=2, replication_factor=3,
                                 config={"cleanup.policy": "compact"})
    await cluster.wait_leaders("ctable")
    await check_table_follows(cluster.bootstrap, "ctable", compacted=False)

    leaders = await cluster.wait_leaders("ktable")
    before = updates(20_000, seed=5, tag="k")
    await produce(cluster.bootstrap, "ktable", before)
    async with Table(cluster.bootstrap, "ktable") as table:
        await table.wait_caught_up(timeout_s=30)
        assert table.snapshot() == view(before)
        victim = leaders[0]
        cluster.node(victim).kill()
        await cluster.wait_leaders("ktable", exclude=[victim])
        after = updates(5_000, seed=6, tag="l")
        await produce(",".join(n.address for n in cluster.running()), "ktable", after)
        await table.wait_caught_up(timeout_s=30)
        assert table.snapshot() == view(before, after)
        assert table.error is None
