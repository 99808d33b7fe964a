"""Consume (tail from a position until cancelled) and Replay (a bounded range that ends).

Both only serve data below each partition's high watermark, the end of what a majority of its
replicas fsynced (on a lone node: what it fsynced): a consumer never sees a record that a
crash of a minority could take back. Batches go out
byte-for-byte as stored; the broker reads only their length and count fields.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from rillet.api.v1 import common_pb2, log_pb2, log_pb2_grpc
from rillet.node import errors
from rillet.node.cluster_node import ClusterNode, ClusterTopic
from rillet.node.errors import Context, InvalidRequestError, UnavailableError, UnknownTopicError
from rillet.node.forward import is_forwarded
from rillet.node.read_proxy import consume_calls, merge, needs_proxy, replay_calls
from rillet.node.replica import ReplicatedPartition
from rillet.node.security.acl import Operation, ResourceType
from rillet.node.services.common import (
    DEFAULT_MAX_WAIT_MS,
    MAX_WAIT_MS_LIMIT,
    NodeContext,
    batches_end,
    clamp_max_bytes,
    resolve_position,
)

log = logging.getLogger(__name__)


class _Cursor:
    """Where one partition's read continues, and (Replay) where it stops."""

    __slots__ = ("end", "next", "part")

    def __init__(self, part: ReplicatedPartition, next_offset: int, end: int | None = None) -> None:
        self.part = part
        self.next = next_offset
        self.end = end

    @property
    def done(self) -> bool:
        return self.end is not None and self.next >= self.end


def _check_live(node: NodeContext, topic: ClusterTopic) -> None:
    if node.stopping.is_set():
        raise UnavailableError("node is shutting down; reconnect to continue")
    if topic.deleted:
        raise UnknownTopicError(f"topic {topic.name!r} was deleted")


def _fill(cursors: Sequence[_Cursor], start: int, max_bytes: int,
          bounded: bool, count: Callable[[int, int], None]) -> list[common_pb2.PartitionData]:
    """Read up to `max_bytes` (at least one batch) across partitions, from `start` round robin."""
    out: list[common_pb2.PartitionData] = []
    remaining = max_bytes
    n = len(cursors)
    for k in range(n):
        cur = cursors[(start + k) % n]
        part = cur.part
        hw = part.high_watermark
        if cur.done or cur.next >= hw:
            continue
        data = part.log.read(cur.next, remaining, upper=hw)
        if not data:
            continue
        keep, next_offset = batches_end(data, cur.end)
        if keep != len(data):
            data = data[:keep]
        out.append(common_pb2.PartitionData(
            partition=part.partition, batches=data, first_offset=cur.next,
            end_offset=cur.end if bounded and cur.end is not None else 0,
            high_watermark=hw, log_start_offset=part.log.log_start_offset,
            next_offset=next_offset))
        count(next_offset - cur.next, len(data))
        cur.next = next_offset
        remaining -= len(data)
        if remaining <= 0:
            break
    return out


def _partitions(topic: ClusterTopic, indexes: Sequence[int]) -> list[ReplicatedPartition]:
    if not indexes:
        return list(topic.partitions)
    seen = set()
    out: list[ReplicatedPartition] = []
    for index in indexes:
        if index in seen:
            raise InvalidRequestError(f"partition {index} is listed twice")
        seen.add(index)
        out.append(topic.partition(index))
    return out


def _upstream(node: NodeContext, topic: ClusterTopic, partitions: list[int],
              context: Context,
              calls: Callable[[ClusterNode, ClusterTopic], list[Any]]) -> list[Any] | None:
    """The upstream calls of a read this node proxies (node/read_proxy.py), or None when it
    serves the read itself."""
    if not needs_proxy(node.cluster, topic, partitions, is_forwarded(context)):
        return None
    return calls(node.cluster, topic)


def _counter(node: NodeContext, topic: str) -> Callable[[int, int], None]:
    """Adds records and bytes sent to the node's consume metrics of `topic`."""
    records = node.metrics.consume_records.labels(topic)
    nbytes = node.metrics.consume_bytes.labels(topic)

    def count(n: int, size: int) -> None:
        records.inc(n)
        nbytes.inc(size)
    return count


class ConsumeService(log_pb2_grpc.ConsumeServicer):
    def __init__(self, node: NodeContext) -> None:
        self.node = node

    async def Consume(
        self, request: log_pb2.ConsumeRequest, context: Context
    ) -> AsyncIterator[log_pb2.ConsumeResponse]:
        node = self.node
        try:
            node.authorizer.require(Operation.CONSUME, ResourceType.TOPIC, request.topic)
            topic = node.get_topic(request.topic)
            upstream = _upstream(node, topic, [pp.partition for pp in request.partitions],
                                 context, lambda c, t: consume_calls(c, t, request))
        except Exception as exc:
            await errors.abort(context, exc, where=f"consume {request.topic}")
        if upstream is not None:
            async for resp in merge(upstream, context):
                yield resp
            return
        try:
            if request.partitions:
                parts = _partitions(topic, [pp.partition for pp in request.partitions])
                cursors = [
                    _Cursor(p, resolve_position(p, pp.position, common_pb2.BOUNDARY_EARLIEST))
                    for p, pp in zip(parts, request.partitions, strict=True)]
            else:
                cursors = [
                    _Cursor(p, resolve_position(p, request.default_position,
                                                common_pb2.BOUNDARY_EARLIEST))
                    for p in topic.partitions]
            if request.max_wait_ms > MAX_WAIT_MS_LIMIT:
                raise InvalidRequestError(
                    f"max_wait_ms must be at most {MAX_WAIT_MS_LIMIT}, got {request.max_wait_ms}")
        except Exception as exc:
            await errors.abort(context, exc, where=f"consume {request.topic}")
        max_bytes = clamp_max_bytes(request.max_bytes, node.config.max_fetch_bytes)
        counter = _counter(node, topic.name)
        max_wait_s = (request.max_wait_ms or DEFAULT_MAX_WAIT_MS) / 1000.0
        start = 0
        last_sent = time.monotonic()
        while True:
            event = topic.data_event
            try:
                _check_live(node, topic)
                data = _fill(cursors, start, max_bytes, bounded=False, count=counter)
            except Exception as exc:
                await errors.abort(context, exc, where=f"consume {topic.name}")
            start += 1
            if data:
                yield log_pb2.ConsumeResponse(partitions=data)
                last_sent = time.monotonic()
                continue
            wait_s = last_sent + max_wait_s - time.monotonic()
            if wait_s > 0:
                stop_wait = asyncio.ensure_future(node.stopping.wait())
                data_wait = asyncio.ensure_future(event.wait())
                try:
                    await asyncio.wait((stop_wait, data_wait), timeout=wait_s,
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stop_wait.cancel()
                    data_wait.cancel()
                continue
            yield log_pb2.ConsumeResponse(partitions=[
                common_pb2.PartitionData(
                    partition=c.part.partition, first_offset=c.next, next_offset=c.next,
                    high_watermark=c.part.high_watermark,
                    log_start_offset=c.part.log.log_start_offset if not c.part.closed else 0)
                for c in cursors])
            last_sent = time.monotonic()


class ReplayService(log_pb2_grpc.ReplayServicer):
    def __init__(self, node: NodeContext) -> None:
        self.node = node

    async def Replay(
        self, request: log_pb2.ReplayRequest, context: Context
    ) -> AsyncIterator[log_pb2.ReplayResponse]:
        node = self.node
        try:
            node.authorizer.require(Operation.REPLAY, ResourceType.TOPIC, request.topic)
            topic = node.get_topic(request.topic)
            upstream = _upstream(node, topic, list(request.partitions), context,
                                 lambda c, t: replay_calls(c, t, request))
        except Exception as exc:
            await errors.abort(context, exc, where=f"replay {request.topic}")
        if upstream is not None:
            async for resp in merge(upstream, context):
                yield resp
            return
        try:
            parts = _partitions(topic, list(request.partitions))
            cursors = []
            for p in parts:
                begin = resolve_position(p, getattr(request, "from"), common_pb2.BOUNDARY_EARLIEST)
                cursors.append(_Cursor(p, begin, _resolve_end(p, request.to)))
        except Exception as exc:
            await errors.abort(context, exc, where=f"replay {request.topic}")
        max_bytes = clamp_max_bytes(request.max_bytes, node.config.max_fetch_bytes)
        counter = _counter(node, topic.name)
        start = 0
        # Bounded: each round sends at least one batch of some unfinished partition, because
        # every end is at or below a high watermark that never goes down.
        while not all(c.done for c in cursors):
            try:
                _check_live(node, topic)
                data = _fill(cursors, start, max_bytes, bounded=True, count=counter)
            except Exception as exc:
                await errors.abort(context, exc, where=f"replay {topic.name}")
            start += 1
            if not data:
                # Only possible if the range ends inside a gap (e.g. retention moved the start
                # past it); nothing more can come.
                break
            yield log_pb2.ReplayResponse(partitions=data)


def _resolve_end(part: ReplicatedPartition, position: common_pb2.Position) -> int:
    """Exclusive end of a replay, fixed when the request arrives (never above the hw)."""
    hw = part.high_watermark
    kind = position.WhichOneof("kind")
    if kind == "offset":
        if position.offset < 0:
            raise InvalidRequestError(f"replay end offset must not be negative, got "
                                      f"{position.offset}")
        return min(position.offset, hw)
    if kind == "timestamp_ms":
        found = part.log.offset_for_timestamp(position.timestamp_ms)
        return hw if found is None else min(found, hw)
    if kind == "boundary" and position.boundary == common_pb2.BOUNDARY_EARLIEST:
        return part.log.log_start_offset
    return hw
