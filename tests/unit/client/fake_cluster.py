"""An in-process stand-in for a Rillet cluster, for client tests that need no broker.

Several `FakeNode` gRPC servers on 127.0.0.1 share one `FakeCluster`: partition logs, the
leader of each partition, and the idempotent-producer state the broker contract describes
(per partition and producer id: the last 5 batches and the next expected sequence). A node that
does not lead a partition answers NOT_LEADER naming the leader. Tests move leaders, make nodes
refuse or drop streams, and script per-request answers with `FakeCluster.script`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio

from rillet import batch as codec
from rillet.api.v1 import admin_pb2, admin_pb2_grpc, common_pb2, log_pb2, log_pb2_grpc

#: What a script may answer for one produce request: None (handle it normally), an Error to
#: answer with (nothing stored), "store-then-break" (store it, then kill the stream without
#: answering), "break" (kill the stream, nothing stored) or "silent" (neither store nor answer).
Action = common_pb2.Error | str | None
Script = Callable[["FakeNode", log_pb2.ProduceRequest, codec.BatchHeader], Action]

SEQ_MOD = 2 ** 31


@dataclass
class _ProducerState:
    expected: int = 0
    #: (base_sequence, record_count, base_offset) of the last 5 batches appended.
    recent: deque[tuple[int, int, int]] = field(default_factory=lambda: deque(maxlen=5))


@dataclass
class Stored:
    """One appended batch as the fake keeps it."""

    base_offset: int
    values: list[bytes]
    producer_id: int
    base_sequence: int


def error(code: int, message: str = "", *, retriable: bool = False,
          refresh: bool = False) -> common_pb2.Error:
    return common_pb2.Error(code=code, message=message or common_pb2.ErrorCode.Name(code),
                            retriable=retriable, refresh_metadata=refresh)


class FakeCluster:
    def __init__(self, partitions: int = 2, topic: str = "t") -> None:
        self.topic = topic
        self.partitions = partitions
        self.nodes: list[FakeNode] = []
        self.leaders: dict[int, int] = dict.fromkeys(range(partitions), 0)
        self.logs: dict[int, list[Stored]] = {p: [] for p in range(partitions)}
        self.producers: dict[tuple[int, int], _ProducerState] = {}
        self.next_producer_id = 1000
        #: InitProducer answers UNIMPLEMENTED when False (an older broker).
        self.init_producer = True
        #: A node that does not lead a partition stores the batch anyway, as a real node
        #: that forwards to the leader would, instead of answering NOT_LEADER.
        self.forwarding = False
        self.script: Script = lambda node, req, header: None
        #: Every produce request received: (node id, partition, producer id, base sequence).
        self.requests: list[tuple[int, int, int, int]] = []
        self.changed = asyncio.Event()

    # -- state a test inspects

    def values(self, partition: int) -> list[bytes]:
        return [v for s in self.logs[partition] for v in s.values]

    def end_offset(self, partition: int) -> int:
        log = self.logs[partition]
        return log[-1].base_offset + len(log[-1].values) if log else 0

    # -- the broker contract

    def append(self, partition: int, header: codec.BatchHeader, values: list[bytes]
               ) -> tuple[int, common_pb2.Error | None]:
        """(base offset, None) when stored or recognised as a duplicate, else (-1, error)."""
        pid, seq, n = header.producer_id, header.base_sequence, header.record_count
        log = self.logs[partition]
        base = self.end_offset(partition)
        if pid >= 0:
            st = self.producers.get((partition, pid))
            if st is not None:
                for s, c, off in st.recent:
                    if s == seq and c == n:
                        return off, None
                if seq != st.expected:
                    if (seq - st.expected) % SEQ_MOD < SEQ_MOD // 2:
                        return -1, error(common_pb2.ERROR_CODE_OUT_OF_ORDER_SEQUENCE,
                                         f"expected sequence {st.expected}, got {seq}",
                                         retriable=True)
                    return -1, error(common_pb2.ERROR_CODE_DUPLICATE_SEQUENCE)
            else:
                st = self.producers[(partition, pid)] = _ProducerState()
            st.recent.append((seq, n, base))
            st.expected = (seq + n) % SEQ_MOD
        log.append(Stored(base, values, pid, seq))
        return base, None

    def response(self) -> admin_pb2.MetadataResponse:
        return admin_pb2.MetadataResponse(
            brokers=[admin_pb2.Broker(node_id=n.node_id, address=n.address)
                     for n in self.nodes],
            topics=[admin_pb2.TopicMetadata(name=self.topic, partitions=[
                admin_pb2.PartitionMetadata(partition=p, leader_id=self.leaders[p],
                                            replicas=[n.node_id for n in self.nodes])
                for p in range(self.partitions)])])

    def store(self, partition: int, values: list[bytes]) -> None:
        """Append a batch as a non-idempotent producer would."""
        self.logs[partition].append(Stored(self.end_offset(partition), values, -1, -1))


class FakeNode(log_pb2_grpc.ProduceServicer, log_pb2_grpc.ConsumeServicer,
               log_pb2_grpc.ReplayServicer, admin_pb2_grpc.MetadataServicer):
    def __init__(self, cluster: FakeCluster, node_id: int) -> None:
        self.cluster = cluster
        self.node_id = node_id
        self.address = ""
        self.server: grpc.aio.Server | None = None
        #: While set, Consume/Replay calls end with UNAVAILABLE after this many responses.
        self.fail_reads_after: int | None = None

    async def GetMetadata(self, request: Any, context: Any) -> admin_pb2.MetadataResponse:
        return self.cluster.response()

    async def InitProducer(self, request: Any, context: Any) -> admin_pb2.InitProducerResponse:
        if not self.cluster.init_producer:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!")
        self.cluster.next_producer_id += 1
        return admin_pb2.InitProducerResponse(producer_id=self.cluster.next_producer_id)

    async def Produce(self, request_iterator: Any, context: Any
                      ) -> AsyncIterator[log_pb2.ProduceResponse]:
        c = self.cluster
        async for req in request_iterator:
            header = codec.validate(req.batch)
            c.requests.append((self.node_id, req.partition, header.producer_id,
                               header.base_sequence))
            c.changed.set()
            action = c.script(self, req, header)
            if action == "silent":
                continue
            if action == "break":
                await context.abort(grpc.StatusCode.UNAVAILABLE, "node killed")
            if isinstance(action, common_pb2.Error):
                yield log_pb2.ProduceResponse(topic=req.topic, partition=req.partition,
                                              base_offset=-1, error=action)
                continue
            if c.leaders[req.partition] != self.node_id and not c.forwarding:
                yield log_pb2.ProduceResponse(
                    topic=req.topic, partition=req.partition, base_offset=-1,
                    error=error(common_pb2.ERROR_CODE_NOT_LEADER,
                                f"node {self.node_id} does not lead partition "
                                f"{req.partition}; node {c.leaders[req.partition]} does",
                                retriable=True, refresh=True))
                continue
            values = [r.value for r in codec.decode(req.batch)]
            base, err = c.append(req.partition, header, values)
            if action == "store-then-break":
                await context.abort(grpc.StatusCode.UNAVAILABLE, "node killed")
            yield log_pb2.ProduceResponse(topic=req.topic, partition=req.partition,
                                          base_offset=base, error=err)

    def _not_leader(self, partitions: list[int]) -> str | None:
        for p in partitions:
            if self.cluster.leaders[p] != self.node_id:
                return f"node {self.node_id} does not lead partition {p}"
        return None

    async def Consume(self, request: log_pb2.ConsumeRequest, context: Any
                      ) -> AsyncIterator[log_pb2.ConsumeResponse]:
        c = self.cluster
        parts = [pp.partition for pp in request.partitions]
        if (msg := self._not_leader(parts)) is not None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, msg)
        pos = {}
        for pp in request.partitions:
            kind = pp.position.WhichOneof("kind")
            if kind == "offset":
                pos[pp.partition] = pp.position.offset
            elif pp.position.boundary == common_pb2.BOUNDARY_LATEST:
                pos[pp.partition] = c.end_offset(pp.partition)
            else:
                pos[pp.partition] = 0
        sent = 0
        while True:
            if self.fail_reads_after is not None and sent >= self.fail_reads_after:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "node killed")
            if (msg := self._not_leader(parts)) is not None:
                await context.abort(grpc.StatusCode.UNAVAILABLE, msg)
            data = []
            for p in parts:
                end = c.end_offset(p)
                if pos[p] < end:
                    # One stored batch per response, so a failure can fall between batches.
                    s = next(s for s in c.logs[p] if s.base_offset + len(s.values) > pos[p])
                    raw = bytearray(codec.encode(s.values, timestamps_ms=[1] * len(s.values)))
                    codec.stamp(raw, s.base_offset, 1)
                    nxt = s.base_offset + len(s.values)
                    data.append(common_pb2.PartitionData(
                        partition=p, batches=bytes(raw), first_offset=pos[p],
                        high_watermark=end, next_offset=nxt))
                    pos[p] = nxt
            if data:
                sent += 1
                yield log_pb2.ConsumeResponse(partitions=data)
            else:
                await asyncio.sleep(0.02)
                yield log_pb2.ConsumeResponse()  # a heartbeat

    async def Replay(self, request: log_pb2.ReplayRequest, context: Any
                     ) -> AsyncIterator[log_pb2.ReplayResponse]:
        c = self.cluster
        parts = list(request.partitions) or list(range(c.partitions))
        if (msg := self._not_leader(parts)) is not None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, msg)
        start = getattr(request, "from")
        pos = {p: start.offset if start.WhichOneof("kind") == "offset" else 0 for p in parts}
        end = {p: (min(request.to.offset, c.end_offset(p))
                   if request.to.WhichOneof("kind") == "offset" else c.end_offset(p))
               for p in parts}
        sent = 0
        while any(pos[p] < end[p] for p in parts):
            if self.fail_reads_after is not None and sent >= self.fail_reads_after:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "node killed")
            data = []
            for p in parts:
                if pos[p] >= end[p]:
                    continue
                s = next(s for s in c.logs[p] if s.base_offset + len(s.values) > pos[p])
                raw = bytearray(codec.encode(s.values, timestamps_ms=[1] * len(s.values)))
                codec.stamp(raw, s.base_offset, 1)
                nxt = s.base_offset + len(s.values)
                data.append(common_pb2.PartitionData(
                    partition=p, batches=bytes(raw), first_offset=pos[p], end_offset=end[p],
                    high_watermark=c.end_offset(p), next_offset=nxt))
                pos[p] = nxt
            sent += 1
            yield log_pb2.ReplayResponse(partitions=data)


async def start_cluster(nodes: int = 1, partitions: int = 2) -> FakeCluster:
    cluster = FakeCluster(partitions)
    for i in range(nodes):
        node = FakeNode(cluster, i)
        server = grpc.aio.server()
        log_pb2_grpc.add_ProduceServicer_to_server(node, server)
        log_pb2_grpc.add_ConsumeServicer_to_server(node, server)
        log_pb2_grpc.add_ReplayServicer_to_server(node, server)
        admin_pb2_grpc.add_MetadataServicer_to_server(node, server)
        port = server.add_insecure_port("127.0.0.1:0")
        node.address = f"127.0.0.1:{port}"
        node.server = server
        await server.start()
        cluster.nodes.append(node)
    return cluster


async def stop_cluster(cluster: FakeCluster) -> None:
    for node in cluster.nodes:
        if node.server is not None:
            await node.server.stop(grace=None)
