"""The idempotent producer against in-process fake nodes that follow the broker contract.

Sequence stamping, resends in order after a leader change, duplicates answered with the
original offset, DUPLICATE_SEQUENCE, the delivery timeout, the fallback for a broker without
InitProducer, and the reset after a batch is given up on (docs/decisions/0403).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from rillet import batch as codec
from rillet.api.v1 import common_pb2, log_pb2
from rillet.client import Producer, errors
from rillet.client import producer as producer_mod
from tests.unit.client.fake_cluster import (
    FakeCluster,
    FakeNode,
    error,
    start_cluster,
    stop_cluster,
)
from tests.waiting import wait_for


@pytest.fixture
async def cluster3() -> AsyncIterator[FakeCluster]:
    c = await start_cluster(nodes=3, partitions=2)
    yield c
    await stop_cluster(c)


@pytest.fixture
async def cluster1() -> AsyncIterator[FakeCluster]:
    c = await start_cluster(nodes=1, partitions=2)
    yield c
    await stop_cluster(c)


def _addresses(c: FakeCluster) -> str:
    return ",".join(n.address for n in c.nodes)


async def _wait(fut: Any) -> Any:
    return await fut


def test_sequences_advance_by_record_count_and_wrap() -> None:
    st = producer_mod._PartitionState("t", 0, 7, 0.05)
    assert [st.next_sequence(n) for n in (3, 5, 1)] == [0, 3, 8]
    st.next_seq = producer_mod.SEQUENCE_MODULUS - 2
    assert st.next_sequence(5) == 2 ** 31 - 2
    assert st.next_sequence(1) == 3


async def test_batches_carry_producer_id_and_per_partition_sequences(
        cluster1: FakeCluster) -> None:
    async with Producer(_addresses(cluster1), linger_ms=0) as producer:
        assert producer.producer_id == 1001
        for p, n in [(0, 3), (1, 2), (0, 4), (0, 1), (1, 5)]:
            for i in range(n):
                await producer.send("t", b"%d" % i, partition=p)
            await producer.flush()
        # Near the wrap: the next batch of partition 1 starts 2 below 2**31.
        producer._states[("t", 1)].next_seq = producer_mod.SEQUENCE_MODULUS - 2
        cluster1.producers[(1, 1001)].expected = producer_mod.SEQUENCE_MODULUS - 2
        for v in (b"a", b"b", b"c"):
            await producer.send("t", v, partition=1)
        await producer.flush()
        await producer.send("t", b"d", partition=1)
        await producer.flush()
    seqs = [(p, pid, seq) for _, p, pid, seq in cluster1.requests]
    assert seqs == [(0, 1001, 0), (1, 1001, 0), (0, 1001, 3), (0, 1001, 7), (1, 1001, 2),
                    (1, 1001, 2 ** 31 - 2), (1, 1001, 1)]
    assert cluster1.values(1)[-4:] == [b"a", b"b", b"c", b"d"]


async def test_leader_change_resends_every_unacked_batch_in_order(
        cluster3: FakeCluster) -> None:
    moved = False

    def script(node: FakeNode, req: log_pb2.ProduceRequest, header: codec.BatchHeader) -> Any:
        nonlocal moved
        # The 4th batch to partition 0: leadership moves to node 2 before node 0 handles it;
        # node 0 refuses it and every later batch already in flight to it.
        if not moved and req.partition == 0 and header.base_sequence == 3:
            moved = True
            cluster3.leaders[0] = 2
        return None

    cluster3.script = script
    async with Producer(_addresses(cluster3), linger_ms=0, max_in_flight=5,
                        batch_bytes=300) as producer:
        futs = [await producer.send("t", b"v%03d" % i + b"x" * 100, partition=0)
                for i in range(30)]
        await producer.flush(timeout_s=10)
    stored = cluster3.values(0)
    assert [v[:4] for v in stored] == [b"v%03d" % i for i in range(30)], "once, in order"
    assert [f.result().offset for f in futs] == list(range(30))
    nodes = [n for n, p, _, _ in cluster3.requests if p == 0]
    assert nodes[0] == 0 and nodes[-1] == 2 and 2 in nodes


async def test_stream_broken_after_store_resend_is_deduplicated_with_original_offsets(
        cluster1: FakeCluster) -> None:
    broken = False

    def script(node: FakeNode, req: log_pb2.ProduceRequest, header: codec.BatchHeader) -> Any:
        nonlocal broken
        if not broken and header.base_sequence > 0:
            broken = True
            return "store-then-break"  # stored, never answered: the outcome is unknown
        return None

    cluster1.script = script
    async with Producer(_addresses(cluster1), linger_ms=0) as producer:
        futs = []
        for i in range(5):
            futs.append(await producer.send("t", b"%d" % i, partition=1))
            await asyncio.sleep(0)
        await producer.flush(timeout_s=10)
        waiter = await producer.send("t", b"5", partition=1)
        await producer.flush(timeout_s=10)
    assert cluster1.values(1) == [b"%d" % i for i in range(5)] + [b"5"]
    assert [f.result().offset for f in futs] == [0, 1, 2, 3, 4]
    assert waiter.result().offset == 5
    seqs = [seq for _, p, _, seq in cluster1.requests if p == 1]
    assert seqs.count(seqs[1]) == 2, "the second batch was sent twice and stored once"


async def test_duplicate_sequence_resolves_as_stored_at_unknown_offset(
        cluster1: FakeCluster) -> None:
    def script(node: FakeNode, req: log_pb2.ProduceRequest, header: codec.BatchHeader) -> Any:
        if header.base_sequence == 1:
            # Stored, then forgotten: the leader only knows the sequence is behind it.
            cluster1.append(req.partition, header, [r.value for r in codec.decode(req.batch)])
            return error(common_pb2.ERROR_CODE_DUPLICATE_SEQUENCE, "stored long ago")
        return None

    cluster1.script = script
    async with Producer(_addresses(cluster1), linger_ms=0) as producer:
        first = await producer.send("t", b"a", partition=0)
        await producer.flush()
        dup = [await producer.send("t", b"b", partition=0),
               await producer.send("t", b"c", partition=0)]
        await producer.flush()
        many = await producer.send_many("t", [b"d"], partition=0)
        await producer.flush()
    assert first.result().offset == 0
    assert [f.result().offset for f in dup] == [-1, -1]
    assert (await many)[0].base_offset == 3
    assert cluster1.values(0) == [b"a", b"b", b"c", b"d"]


async def test_out_of_order_resends_after_backoff(cluster1: FakeCluster) -> None:
    refused = 0

    def script(node: FakeNode, req: log_pb2.ProduceRequest, header: codec.BatchHeader) -> Any:
        nonlocal refused
        if header.base_sequence == 0 and refused < 2:
            refused += 1
            return error(common_pb2.ERROR_CODE_NOT_LEADER, "election", retriable=True,
                         refresh=True)
        return None

    cluster1.script = script
    async with Producer(_addresses(cluster1), linger_ms=0, max_in_flight=5,
                        batch_bytes=200) as producer:
        futs = [await producer.send("t", b"%03d" % i + b"y" * 100, partition=0)
                for i in range(10)]
        await producer.flush(timeout_s=10)
    assert [v[:3] for v in cluster1.values(0)] == [b"%03d" % i for i in range(10)]
    assert [f.result().offset for f in futs] == list(range(10))
    codes = [seq for _, p, _, seq in cluster1.requests if p == 0]
    assert codes[0] == 0 and codes.count(0) == 3


async def test_non_retriable_failure_fails_only_its_batch_and_later_ones_continue(
        cluster1: FakeCluster) -> None:
    def script(node: FakeNode, req: log_pb2.ProduceRequest, header: codec.BatchHeader) -> Any:
        if codec.decode(req.batch)[0].value == b"bad":
            return error(common_pb2.ERROR_CODE_INVALID_BATCH, "bad batch")
        return None

    cluster1.script = script
    async with Producer(_addresses(cluster1), linger_ms=0, retry_backoff_ms=5) as producer:
        ok1 = await producer.send("t", b"good1", partition=0)
        await producer.flush()
        bad = await producer.send("t", b"bad", partition=0)
        await asyncio.sleep(0)  # its own batch
        later = []
        for i in range(3):
            later.append(await producer.send("t", b"later%d" % i, partition=0))
            await asyncio.sleep(0)
        await producer.flush(timeout_s=10)
    with pytest.raises(errors.InvalidBatchError):
        bad.result()
    assert ok1.result().offset == 0
    assert [f.result().offset for f in later] == [1, 2, 3]
    assert cluster1.values(0) == [b"good1", b"later0", b"later1", b"later2"]
    # The gap the failed batch left made the partition continue under a new producer id.
    assert {pid for _, p, pid, _ in cluster1.requests if p == 0} == {1001, 1002}


async def test_silent_leader_times_out_batches_and_a_new_leader_takes_the_rest(
        cluster3: FakeCluster) -> None:
    def script(node: FakeNode, req: log_pb2.ProduceRequest, header: codec.BatchHeader) -> Any:
        return "silent" if node.node_id == 0 else None

    cluster3.script = script
    async with Producer(_addresses(cluster3), linger_ms=0, delivery_timeout_ms=400,
                        request_timeout_s=0.2) as producer:
        lost = await producer.send("t", b"lost", partition=0)
        with pytest.raises(errors.RequestTimeoutError):
            await asyncio.wait_for(_wait(lost), 5)
        cluster3.leaders[0] = 1
        kept = await producer.send("t", b"kept", partition=0)
        assert (await asyncio.wait_for(_wait(kept), 5)).offset == 0
    assert cluster3.values(0) == [b"kept"]


async def test_falls_back_to_at_least_once_without_init_producer(
        cluster1: FakeCluster, caplog: pytest.LogCaptureFixture) -> None:
    cluster1.init_producer = False
    producer_mod._warned_no_idempotence = False
    caplog.set_level(logging.WARNING, logger="rillet.client.producer")
    for _ in range(2):
        async with Producer(_addresses(cluster1), linger_ms=0) as producer:
            assert producer.producer_id == -1
            fut = await producer.send("t", b"x", partition=0)
            await producer.flush()
            assert fut.result().offset >= 0
    warnings = [r for r in caplog.records if "InitProducer" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert {pid for _, _, pid, _ in cluster1.requests} == {-1}


async def test_not_idempotent_sends_no_producer_fields(cluster1: FakeCluster) -> None:
    async with Producer(_addresses(cluster1), linger_ms=0, idempotent=False) as producer:
        await producer.send("t", b"x", partition=1)
        await producer.flush()
    assert cluster1.requests == [(0, 1, -1, -1)]
    await wait_for(lambda: cluster1.values(1) == [b"x"], "the record stored")


async def test_stream_breaking_while_a_partition_waits_for_answers_still_resends(
        cluster1: FakeCluster) -> None:
    step = 0

    def script(node: FakeNode, req: log_pb2.ProduceRequest, header: codec.BatchHeader) -> Any:
        nonlocal step
        if header.base_sequence > 0 and step < 2:
            step += 1
            if step == 1:  # refused: the partition pauses and waits for the next answer...
                return error(common_pb2.ERROR_CODE_NOT_LEADER, "moving", retriable=True,
                             refresh=True)
            return "break"  # ...which never comes
        return None

    cluster1.script = script
    async with Producer(_addresses(cluster1), linger_ms=0, batch_bytes=300) as producer:
        first = await producer.send("t", b"000" + b"z" * 100, partition=0)
        await producer.flush()
        futs = [await producer.send("t", b"%03d" % i + b"z" * 100, partition=0)
                for i in range(1, 9)]
        await producer.flush(timeout_s=10)
    assert step == 2
    assert first.result().offset == 0
    assert [f.result().offset for f in futs] == list(range(1, 9))
    assert [v[:3] for v in cluster1.values(0)] == [b"%03d" % i for i in range(9)]


async def test_a_moved_leader_is_followed_even_while_the_old_one_forwards(
        cluster3: FakeCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(producer_mod, "METADATA_MAX_AGE_S", 0.05)
    cluster3.forwarding = True
    async with Producer(_addresses(cluster3), linger_ms=0) as producer:
        futs = [await producer.send("t", b"%03d" % i, partition=0) for i in range(3)]
        await producer.flush()
        cluster3.leaders[0] = 1
        i = 3
        async with asyncio.timeout(10):
            while cluster3.requests[-1][0] != 1:
                futs.append(await producer.send("t", b"%03d" % i, partition=0))
                i += 1
                await asyncio.sleep(0.01)
        await producer.flush()
    assert [f.result().offset for f in futs] == list(range(i))
    assert cluster3.values(0) == [b"%03d" % k for k in range(i)]


async def test_a_sender_that_dies_fails_its_batches_and_a_new_one_takes_over(
        cluster1: FakeCluster, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    async with Producer(_addresses(cluster1), linger_ms=0) as producer:
        real = producer._answered_ok
        calls = 0

        def boom(st: Any, b: Any, base_offset: int) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise ZeroDivisionError("bug in the sender")
            real(st, b, base_offset)

        monkeypatch.setattr(producer, "_answered_ok", boom)
        lost = await producer.send("t", b"a", partition=0)
        with pytest.raises(ZeroDivisionError):
            await asyncio.wait_for(_wait(lost), 5)
        kept = await producer.send("t", b"b", partition=0)
        assert (await asyncio.wait_for(_wait(kept), 5)).offset == 1
    assert "died" in caplog.text


async def test_a_partition_routed_while_its_leader_was_unknown_finds_it_soon(
        cluster3: FakeCluster) -> None:
    """Routed during an election, a partition goes through a node that forwards it; a busy
    partition never turns idle to be routed again, so the producer polls metadata until it
    knows the leader, well before the periodic refresh (METADATA_MAX_AGE_S)."""
    assert producer_mod.METADATA_MAX_AGE_S >= 10
    cluster3.forwarding = True
    cluster3.leaders[0] = -1  # an election is running: metadata names no leader
    async with Producer(_addresses(cluster3), linger_ms=0) as producer:
        first = await producer.send("t", b"000", partition=0)
        await producer.flush()
        assert first.result().offset == 0
        assert cluster3.requests[-1][0] == 0  # the first bootstrap node, which forwards
        cluster3.leaders[0] = 2
        st = producer._state("t", 0)
        leader = cluster3.nodes[2].address
        await wait_for(lambda: st.sender is not None and st.sender.address == leader,
                       "the partition to be routed to its leader", timeout_s=5.0)
        second = await producer.send("t", b"001", partition=0)
        await producer.flush()
        assert second.result().offset == 1
        assert cluster3.requests[-1][0] == 2
