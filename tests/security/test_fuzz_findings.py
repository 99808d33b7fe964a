"""Regression tests for what the fuzz (test_fuzz.py) found, each reduced to its request."""

from __future__ import annotations

import time

import grpc
import pytest

from rillet import batch
from rillet.api.v1 import log_pb2
from tests.integration.conftest import ClusterFactory

pytestmark = pytest.mark.integration


async def test_replay_from_a_timestamp_at_or_below_zero_in_cluster_mode(
        cluster_factory: ClusterFactory) -> None:
    """In cluster mode a partition's log starts with the leader's no-op, a control batch with
    timestamp 0 and no records. A search for a timestamp <= 0 stopped in that segment and
    failed INTERNAL "no batch holds offset 0 (segment covers 0 to -1)"; it must find nothing
    (an empty partition) or the first record."""
    cluster = await cluster_factory(1)
    await cluster.create_topic("e", partitions=1, replication_factor=1)

    async def replay_from(ts: int) -> list[int]:
        async with cluster.stubs(0) as s:
            req = log_pb2.ReplayRequest(topic="e")
            getattr(req, "from").timestamp_ms = ts
            offsets = []
            async for resp in s.replay.Replay(req, timeout=10):
                for pd in resp.partitions:
                    offsets += [r.offset for r in batch.decode_range(pd.batches)]
            return offsets

    for ts in (0, -1, -(2**63)):
        assert await replay_from(ts) == []
    now = int(time.time() * 1000)
    async with cluster.stubs(0) as s:
        resps = [r async for r in s.produce.Produce(iter([log_pb2.ProduceRequest(
            topic="e", batch=batch.encode([b"a", b"b"], timestamps_ms=[now, now]))]),
            timeout=10)]
    assert not resps[0].error.code, resps[0].error
    for ts in (0, -1, now):
        assert await replay_from(ts) == [0, 1]
    try:
        assert await replay_from(now + 1) == []
    except grpc.aio.AioRpcError as exc:  # pragma: no cover - shown if it ever fails
        raise AssertionError(exc.details()) from exc
