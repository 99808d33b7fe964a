"""Consume and Replay for partitions this node holds no replica of.

Any node serves any client. A node serves reads of the partitions it holds a replica of itself
(committed data only, leader or follower). When a request names a partition it does not hold,
the node proxies the whole request instead: it splits the partitions by their leader, opens one
upstream stream per leader (tagged ``rillet-forwarded``, so it is never forwarded again), and
merges the upstream responses into the client's stream as they come. An upstream error ends
the client's stream with the same status; a Replay ends once every upstream ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc

from rillet.api.v1 import log_pb2, log_pb2_grpc
from rillet.node.cluster_node import ClusterNode, ClusterTopic
from rillet.node.errors import NotLeaderError
from rillet.node.forward import FORWARDED_METADATA

log = logging.getLogger(__name__)

_DONE = object()


def needs_proxy(cluster: ClusterNode, topic: ClusterTopic, partitions: Sequence[int],
                forwarded: bool) -> bool:
    """True when this node must proxy: a request from a client (not another node), and some
    requested partition has no replica here."""
    if forwarded:
        return False
    wanted = partitions or range(len(topic.replicas))
    return any(0 <= i < len(topic.replicas) and topic.replicas[i] is None for i in wanted)


def split_by_leader(cluster: ClusterNode, topic: ClusterTopic,
                    partitions: Sequence[int]) -> dict[int, list[int]]:
    """Leader broker id -> the requested partitions it leads; NOT_LEADER if one has none."""
    out: dict[int, list[int]] = {}
    for i in partitions or range(len(topic.replicas)):
        leader = cluster.leader_of(topic, i)
        if leader < 0 or leader not in cluster.peers:
            raise NotLeaderError(f"partition {topic.name}-{i} has no leader right now; retry")
        out.setdefault(leader, []).append(i)
    return out


async def merge(calls: list[Any], context: Any) -> AsyncIterator[Any]:
    """Yield the responses of every upstream call as they arrive; end when all ended; on an
    upstream error abort with its status (cancelling the others)."""
    # One slot: a response can be max_fetch_bytes, and a client that stops reading must make
    # this node hold no more than one queued plus one in each pump's hands (each pump then
    # stops reading its upstream, whose flow control stops the leader). 16 slots held ~150 MB
    # for one stalled consumer (tests/security/test_slow_client_cluster.py).
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)

    async def pump(call: Any) -> None:
        try:
            async for resp in call:
                await queue.put(resp)
            await queue.put(_DONE)
        except grpc.aio.AioRpcError as exc:
            await queue.put(exc)

    tasks = [asyncio.create_task(pump(c), name="read-proxy") for c in calls]
    try:
        open_calls = len(calls)
        while open_calls:
            item = await queue.get()
            if item is _DONE:
                open_calls -= 1
                continue
            if isinstance(item, grpc.aio.AioRpcError):
                await context.abort(item.code(), item.details() or "upstream read failed")
            yield item
    finally:
        for t in tasks:
            t.cancel()
        for c in calls:
            c.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t


def consume_calls(cluster: ClusterNode, topic: ClusterTopic,
                  request: log_pb2.ConsumeRequest) -> list[Any]:
    """One upstream Consume per leader, each with its partitions and their positions."""
    positions = {pp.partition: pp.position for pp in request.partitions}
    groups = split_by_leader(cluster, topic, list(positions))
    calls = []
    for leader, parts in groups.items():
        sub = log_pb2.ConsumeRequest(
            topic=request.topic, default_position=request.default_position,
            max_bytes=request.max_bytes, max_wait_ms=request.max_wait_ms,
            partitions=[log_pb2.PartitionPosition(partition=i, position=positions[i])
                        if i in positions else log_pb2.PartitionPosition(
                            partition=i, position=request.default_position)
                        for i in parts])
        stub = log_pb2_grpc.ConsumeStub(cluster.channel(leader))  # type: ignore[no-untyped-call]
        calls.append(stub.Consume(sub, metadata=FORWARDED_METADATA))
    return calls


def replay_calls(cluster: ClusterNode, topic: ClusterTopic,
                 request: log_pb2.ReplayRequest) -> list[Any]:
    """One upstream Replay per leader, each over its partitions with the same range."""
    groups = split_by_leader(cluster, topic, list(request.partitions))
    calls = []
    for leader, parts in groups.items():
        sub = log_pb2.ReplayRequest()
        sub.CopyFrom(request)
        del sub.partitions[:]
        sub.partitions.extend(parts)
        stub = log_pb2_grpc.ReplayStub(cluster.channel(leader))  # type: ignore[no-untyped-call]
        calls.append(stub.Replay(sub, metadata=FORWARDED_METADATA))
    return calls
