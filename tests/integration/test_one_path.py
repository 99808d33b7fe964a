"""A lone node is a cluster of one (issue 13): it deduplicates an idempotent producer's
retried batch like a cluster does, also across kill -9; a data directory in the single-node
layout of an earlier version is refused at start, and left as it was."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

from rillet import batch
from rillet.api.v1 import admin_pb2, common_pb2, log_pb2

pytestmark = pytest.mark.integration

RETRY_S = 30.0


def _one_batch(pid: int, seq: int, values: list[bytes]) -> bytes:
    return batch.encode(values, timestamps_ms=[1_000] * len(values), producer_id=pid,
                        producer_epoch=0, base_sequence=seq)


async def _produce(stubs, data: bytes) -> log_pb2.ProduceResponse:  # type: ignore[no-untyped-def]
    """One batch; resent while the answer is NOT_LEADER (the partition's election after a
    start), as a producer does, for at most RETRY_S."""
    async def one() -> AsyncIterator[log_pb2.ProduceRequest]:
        yield log_pb2.ProduceRequest(topic="dedup", partition=0, batch=data,
                                     acks=log_pb2.ACKS_ALL)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RETRY_S
    while True:
        answers = [r async for r in stubs.produce.Produce(one(), timeout=30.0)]
        assert len(answers) == 1
        resp: log_pb2.ProduceResponse = answers[0]
        if resp.error.code != common_pb2.ERROR_CODE_NOT_LEADER or loop.time() > deadline:
            return resp
        await asyncio.sleep(0.1)


async def _high_watermark(stubs) -> int:  # type: ignore[no-untyped-def]
    resp = await stubs.admin.DescribeTopic(admin_pb2.DescribeTopicRequest(name="dedup"),
                                           timeout=10.0)
    return int(resp.topic.partitions[0].high_watermark)


async def test_a_lone_node_deduplicates_a_retry_across_kill_9(broker, connect) -> None:
    async with connect(broker) as s:
        await s.admin.CreateTopic(admin_pb2.CreateTopicRequest(name="dedup", partitions=1),
                                  timeout=30.0)
        pid = (await s.metadata.InitProducer(admin_pb2.InitProducerRequest(),
                                             timeout=10.0)).producer_id
        first = await _produce(s, _one_batch(pid, 0, [b"a", b"b"]))
        second = await _produce(s, _one_batch(pid, 2, [b"c"]))
        assert (first.error.code, first.base_offset) == (0, 0)
        assert (second.error.code, second.base_offset) == (0, 2)
        # A retry while the node runs: the original offset, nothing stored again.
        again = await _produce(s, _one_batch(pid, 2, [b"c"]))
        assert (again.error.code, again.base_offset) == (0, 2)
        assert await _high_watermark(s) == 3
    broker.kill()
    broker.start()
    async with connect(broker) as s:
        # After kill -9 the producer table is rebuilt from the log: the retried batch is
        # recognised and answered with its original offset.
        retried = await _produce(s, _one_batch(pid, 2, [b"c"]))
        assert (retried.error.code, retried.base_offset) == (0, 2)
        older = await _produce(s, _one_batch(pid, 0, [b"a", b"b"]))
        assert (older.error.code, older.base_offset) == (0, 0)
        assert await _high_watermark(s) == 3
        nxt = await _produce(s, _one_batch(pid, 3, [b"d"]))
        assert (nxt.error.code, nxt.base_offset) == (0, 3)
        values = []
        # Earliest to the high watermark: every record once.
        async for resp in s.replay.Replay(log_pb2.ReplayRequest(topic="dedup"), timeout=30.0):
            for part in resp.partitions:
                values += [r.value for r in batch.decode_range(part.batches, part.first_offset,
                                                               part.end_offset or None)]
        assert values == [b"a", b"b", b"c", b"d"]


@pytest.mark.parametrize("leftover", ["topics.json", "topics", "groups", "acls.json",
                                      "producer-ids"])
def test_the_single_node_layout_is_refused_and_left_alone(tmp_path, leftover: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    path = data / leftover
    if leftover in ("topics", "groups"):
        path.mkdir()
        (path / "keep").write_bytes(b"x")
    else:
        path.write_bytes(b"{}")
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    run = subprocess.run(
        [sys.executable, "-m", "rillet.node", "--node-id", "0", "--listen", "127.0.0.1:0",
         "--data-dir", str(data)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1, run.stderr
    assert f"holds the single-node layout of an earlier Rillet ({leftover})" in run.stderr
    assert "does not read that layout" in run.stderr
    # Nothing was added, moved or removed but the lock file the node takes first.
    after = sorted(p.relative_to(data) for p in data.rglob("*") if p.name != ".lock")
    assert after == before
