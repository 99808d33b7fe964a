"""Produce: a bidi stream answered in order, one response per batch.

A reader task takes requests off the stream, checks and appends each batch at once, and queues
its (future) response; the handler answers from the queue in order. So batch N+1 is appended
while batch N still waits for its fsync, and several batches share one fsync (group commit).
The queue is bounded (`produce_max_pending`): when it is full the reader stops reading, and
HTTP/2 flow control pushes back on the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from rillet import batch as batch_codec
from rillet.api.v1 import log_pb2, log_pb2_grpc
from rillet.node import errors
from rillet.node.errors import (
    BatchTooLargeError,
    Context,
    InvalidRequestError,
    NotLeaderError,
    UnavailableError,
)
from rillet.node.forward import Forwarder, is_forwarded
from rillet.node.replica import ReplicatedPartition
from rillet.node.security.acl import Operation, ResourceType
from rillet.node.services.common import NodeContext

log = logging.getLogger(__name__)

_KNOWN_ACKS = (log_pb2.ACKS_UNSPECIFIED, log_pb2.ACKS_NONE, log_pb2.ACKS_LEADER, log_pb2.ACKS_ALL)

# One queued answer: the response, and what it still waits for (None: answer now): the
# commit, which resolves to the base offset.
_Pending = tuple[log_pb2.ProduceResponse, "asyncio.Future[Any] | None"]
# What the reader queues: the pending answer, when the request was read, and for the metrics
# its acks level, batch bytes and record count.
_Queued = tuple[_Pending, float, int, int, int]
_COUNT = struct.Struct("<i")
_ACKS_NAMES: dict[int, str] = {
    log_pb2.ACKS_UNSPECIFIED: "all", log_pb2.ACKS_ALL: "all", log_pb2.ACKS_LEADER: "leader",
    log_pb2.ACKS_NONE: "none"}


class ProduceService(log_pb2_grpc.ProduceServicer):
    def __init__(self, node: NodeContext) -> None:
        self.node = node
        self.max_batch_bytes = node.config.max_batch_bytes
        cfg = node.config
        self.limits = batch_codec.Limits(cfg.max_batch_records, cfg.max_record_headers,
                                         cfg.max_record_header_bytes)
        self.forwarder = Forwarder()

    async def Produce(
        self,
        request_iterator: AsyncIterator[log_pb2.ProduceRequest],
        context: Context,
    ) -> AsyncIterator[log_pb2.ProduceResponse]:
        queue: asyncio.Queue[_Queued | None] = asyncio.Queue(
            maxsize=self.node.config.produce_max_pending)
        forwarded = is_forwarded(context)
        # Authorization per batch, cached per topic for this stream (a no-op with ACLs off).
        check = self.node.authorizer.stream_checker(Operation.PRODUCE, ResourceType.TOPIC)
        reader = asyncio.create_task(self._read(request_iterator, queue, forwarded, check),
                                     name="produce-reader")
        try:
            while True:
                item = await queue.get()
                if item is None:
                    break
                (resp, fut), t0, acks, nbytes, records = item
                if fut is not None:
                    try:
                        result = await fut
                        if isinstance(result, log_pb2.ProduceResponse):
                            resp = result  # the leader's answer to a forwarded batch
                        elif result is not None:
                            resp.base_offset = result
                    except Exception as exc:
                        resp = _error_response(resp.topic, resp.partition, exc)
                self._observe(resp, t0, acks, nbytes, records)
                yield resp
            await reader
        finally:
            if not reader.done():
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader

    async def _read(self, requests: AsyncIterator[log_pb2.ProduceRequest],
                    queue: asyncio.Queue[_Queued | None], forwarded: bool,
                    check: Callable[[str], None]) -> None:
        # The end-of-stream marker must reach the handler whether the stream ended or broke;
        # the put cannot block for long because the handler keeps draining the queue. When
        # the handler itself cancels this task it is no longer draining, so no marker then.
        try:
            async for req in requests:
                t0 = time.perf_counter()
                data = req.batch
                records = (_COUNT.unpack_from(data, batch_codec.RECORD_COUNT_FIELD)[0]
                           if len(data) >= batch_codec.HEADER_SIZE else 0)
                await queue.put((self._handle(req, forwarded, check), t0, req.acks, len(data),
                                 records))
        except asyncio.CancelledError:
            raise
        except BaseException:
            await queue.put(None)
            raise
        await queue.put(None)

    def _observe(self, resp: log_pb2.ProduceResponse, t0: float, acks: int, nbytes: int,
                 records: int) -> None:
        metrics = self.node.metrics
        metrics.produce_latency.labels(_ACKS_NAMES.get(acks, "unknown")).observe(
            time.perf_counter() - t0)
        if resp.error.code:
            metrics.produce_errors.labels(resp.topic).inc()
        else:
            metrics.record_produce(resp.topic, records, nbytes)

    def _handle(self, req: log_pb2.ProduceRequest, forwarded: bool,
                check: Callable[[str], None]) -> _Pending:
        """Check and append one batch; never raises (errors become the batch's response)."""
        try:
            return self._handle_here(req, check)
        except NotLeaderError as exc:
            cluster = self.node.cluster
            if forwarded or self.node.stopping.is_set():
                return _error_response(req.topic, req.partition, exc), None
            try:
                leader = cluster.leader_of(cluster.get_topic(req.topic), req.partition)
            except Exception:
                leader = -1
            if leader < 0 or leader == cluster.broker_id or leader not in cluster.peers:
                return _error_response(req.topic, req.partition, exc), None
            return (log_pb2.ProduceResponse(topic=req.topic, partition=req.partition),
                    asyncio.ensure_future(self._forward(req, leader)))

    async def _forward(self, req: log_pb2.ProduceRequest, leader: int) -> log_pb2.ProduceResponse:
        cluster = self.node.cluster
        answer = await self.forwarder.produce(cluster.channel(leader), cluster.peers[leader], req)
        return await answer

    def _handle_here(self, req: log_pb2.ProduceRequest, check: Callable[[str], None]
                     ) -> _Pending:
        try:
            check(req.topic)  # here, before any forward: PERMISSION_DENIED for this batch
            if self.node.stopping.is_set():
                raise UnavailableError("node is shutting down; send to another node or retry")
            if req.acks not in _KNOWN_ACKS:
                raise InvalidRequestError(f"unknown acks value {req.acks}")
            part = self.node.get_topic(req.topic).partition(req.partition)
            data = req.batch
            if len(data) > self.max_batch_bytes:
                raise BatchTooLargeError(
                    f"batch of {len(data)} bytes is above this broker's limit of "
                    f"{self.max_batch_bytes} bytes (max_batch_bytes)")
            batch_codec.validate(data, self.limits)
            return self._propose(req, part)
        except NotLeaderError:
            raise
        except Exception as exc:
            return _error_response(req.topic, req.partition, exc), None

    @staticmethod
    def _propose(req: log_pb2.ProduceRequest, part: ReplicatedPartition) -> _Pending:
        """The batch is a Raft proposal. acks=all and acks=leader are both answered once a
        majority fsynced it (committed); acks=none at once, offset unknown."""
        committed, append_ms = part.produce(req.batch)
        resp = log_pb2.ProduceResponse(
            topic=req.topic, partition=req.partition, base_offset=-1,
            log_append_time_ms=append_ms, log_start_offset=part.log.log_start_offset)
        if req.acks == log_pb2.ACKS_NONE:
            committed.add_done_callback(_consume_outcome)
            return resp, None
        return resp, committed


def _consume_outcome(fut: asyncio.Future[int]) -> None:
    """acks=none: nobody waits for the outcome; fetch it so asyncio does not log it unseen."""
    if not fut.cancelled():
        fut.exception()


def _error_response(topic: str, partition: int, exc: BaseException) -> log_pb2.ProduceResponse:
    return log_pb2.ProduceResponse(
        topic=topic, partition=partition, base_offset=-1,
        error=errors.to_error(exc, where=f"producing to {topic}-{partition}"))

