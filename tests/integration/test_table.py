"""`rillet.client.Table` against real node processes: a compacted topic with 100,000 updates
over 1,000 keys reads back as the last write per key, deletes included, and the table follows
updates made while it tails."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from typing import Any

import pytest

from rillet.client import Admin, Producer
from rillet.client.table import Table
from rillet.node.config import BrokerConfig

pytestmark = pytest.mark.integration

log = logging.getLogger(__name__)

KEYS = 1_000
UPDATES = 100_000
#: Small segments, so the log has many closed segments for the compactor to work on.
SEGMENT_BYTES = 64 * 1024


def key(i: int) -> bytes:
    return b"k%04d" % i


async def produce_updates(bootstrap: str, topic: str, n: int, *, seed: int,
                          tag: str) -> dict[bytes, bytes]:
    """`n` keyed updates over KEYS keys in a seeded random order, ~2% tombstones; returns
    the expected view (last write per key, deleted keys absent)."""
    rng = random.Random(seed)
    last: dict[bytes, bytes] = {}
    async with Producer(bootstrap, linger_ms=5) as producer:
        for i in range(n):
            k = key(rng.randrange(KEYS))
            v = b"" if rng.random() < 0.02 else f"{tag}-{i}".encode()
            await producer.send(topic, v, key=k)
            last[k] = v
        await producer.flush()
    return {k: v for k, v in last.items() if v}


async def check_table_follows(bootstrap: str, topic: str) -> None:
    t0 = time.monotonic()
    expected = await produce_updates(bootstrap, topic, UPDATES, seed=1, tag="a")
    # Every key gets a final write, except 50 deleted last: those must be absent.
    async with Producer(bootstrap) as producer:
        for i in range(KEYS):
            v = b"" if i % 20 == 0 else b"final-%d" % i
            await producer.send(topic, v, key=key(i))
        await producer.flush()
    expected = {key(i): b"final-%d" % i for i in range(KEYS) if i % 20}
    t1 = time.monotonic()

    changes: list[tuple[bytes, bytes | None, bytes | None]] = []
    async with Table(bootstrap, topic) as table:
        offsets = await table.wait_caught_up(timeout_s=30)
        t2 = time.monotonic()
        log.info("produced %d updates in %.2f s; table caught up in %.2f s (%s)",
                 UPDATES + KEYS, t1 - t0, t2 - t1, offsets)
        assert len(table) == len(expected) == KEYS - KEYS // 20
        assert table.snapshot() == expected
        assert key(0) not in table and table.get(key(0)) is None
        assert table.get(key(1)) == b"final-1"

        # Tailing: updates after the catch-up show up; a caught-up wait covers acked writes.
        table.on_change = lambda k, old, new: changes.append((k, old, new))
        async with Producer(bootstrap) as producer:
            await producer.send_and_wait(topic, b"back", key=key(0))
            await producer.send_and_wait(topic, b"", key=key(1))
            await producer.send_and_wait(topic, b"again", key=key(2))
        await table.wait_caught_up(timeout_s=10)
        assert table.get(key(0)) == b"back"
        assert key(1) not in table
        assert table.get(key(2)) == b"again"
        assert changes == [(key(0), None, b"back"), (key(1), b"final-1", None),
                           (key(2), b"final-2", b"again")]
        lag = table.lag()
        assert all(v == 0 for v in lag.values()), lag


async def test_table_reads_last_write_per_key_on_one_node(broker_factory: Any) -> None:
    broker = broker_factory()
    async with Admin(broker.address) as admin:
        await admin.create_topic("table", partitions=3, config={
            "cleanup.policy": "compact", "segment.bytes": SEGMENT_BYTES})
    await check_table_follows(broker.address, "table")


HAS_COMPACTOR = any(f.name == "compaction_interval_ms" for f in dataclasses.fields(BrokerConfig))


# Slow until the compactor runs in the node (node/storage/compactor.py is being wired in):
# without it the test waits out its 20 s deadline for the topic to shrink and fails.
@pytest.mark.slow
@pytest.mark.skipif(not HAS_COMPACTOR, reason="this build has no compactor")
async def test_table_reads_a_compacted_log(broker_factory: Any) -> None:
    """The same view from a log the compactor has rewritten: fewer records, same answer."""
    broker = broker_factory(env={"RILLET_COMPACTION_INTERVAL_MS": "100"})
    async with Admin(broker.address) as admin:
        await admin.create_topic("ctab", partitions=2, config={
            "cleanup.policy": "compact", "segment.bytes": SEGMENT_BYTES,
            "delete.retention.ms": 0})
        expected = await produce_updates(broker.address, "ctab", UPDATES // 2, seed=3, tag="c")
        before = sum(p.size_bytes for p in (await admin.describe_topic("ctab")).partitions)
        # Poll (bounded) until the compactor has rewritten the closed segments.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while True:
            after = sum(p.size_bytes for p in (await admin.describe_topic("ctab")).partitions)
            if after < before // 2:
                break
            assert loop.time() < deadline, f"topic still {after} bytes (was {before})"
            await asyncio.sleep(0.1)
    async with Table(broker.address, "ctab") as table:
        await table.wait_caught_up(timeout_s=30)
        assert table.snapshot() == expected
        assert table.version < UPDATES // 2, "the table read a compacted log"
    log.info("compacted %d -> %d bytes; table applied %d records", before, after,
             table.version)


async def test_table_restart_replays_to_the_same_view(broker_factory: Any) -> None:
    """A new Table on the same topic (a restarted process) rebuilds the same view, and an
    empty partition counts as caught up at once."""
    broker = broker_factory()
    async with Admin(broker.address) as admin:
        await admin.create_topic("t2", partitions=2, config={"cleanup.policy": "compact"})
    async with Table(broker.address, "t2") as empty:
        assert await empty.wait_caught_up(timeout_s=10) == {0: 0, 1: 0}
        assert len(empty) == 0
        expected = await produce_updates(broker.address, "t2", 5_000, seed=7, tag="r")
        await empty.wait_caught_up(timeout_s=10)
        assert empty.snapshot() == expected
        version = empty.version
    async with Table(broker.address, "t2", key_decoder=bytes.decode,
                     value_decoder=bytes.decode) as again:
        await again.wait_caught_up(timeout_s=10)
        assert again.snapshot() == {k.decode(): v.decode() for k, v in expected.items()}
        assert again.version == version == 5_000
        assert again.offsets() == empty.offsets()


async def test_table_on_a_three_node_cluster(cluster_factory: Any) -> None:
    cluster = await cluster_factory(3)
    async with Admin(cluster.bootstrap) as admin:
        await admin.create_topic("ctable", partitions=3, replication_factor=3, config={
            "cleanup.policy": "compact", "segment.bytes": SEGMENT_BYTES})
    await cluster.wait_leaders("ctable")
    await check_table_follows(cluster.bootstrap, "ctable")
