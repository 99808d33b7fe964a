"""A small in-process Groups coordinator for client tests, next to fake_cluster's log nodes.

It follows groups.proto's cooperative rules, simply: balanced counts, current owners keep what
they may, a partition is given to its new owner only once no member lists it as owned, commits
are fenced by generation and ownership. It records every assignment it sends so tests can check
that no partition ever had two owners. Not a model of the real coordinator's timing.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio

from rillet.api.v1 import (
    admin_pb2_grpc,
    groups_pb2,
    groups_pb2_grpc,
    log_pb2_grpc,
)
from tests.unit.client.fake_cluster import FakeCluster, FakeNode

TP = tuple[str, int]


@dataclass
class FakeMember:
    member_id: str
    instance_id: str
    outbox: asyncio.Queue[groups_pb2.GroupEvent | None] = field(default_factory=asyncio.Queue)
    #: What the member says it reads (join.owned, then each heartbeat).
    owned: set[TP] = field(default_factory=set)
    #: The last assignment sent.
    sent: set[TP] | None = None
    heartbeats: int = 0
    joins: list[groups_pb2.JoinGroup] = field(default_factory=list)


class FakeGroups(groups_pb2_grpc.GroupsServicer):
    """One group's coordinator (any group name is accepted and shares the state)."""

    def __init__(self, cluster: FakeCluster, heartbeat_interval_ms: int = 100) -> None:
        self.cluster = cluster
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.members: dict[str, FakeMember] = {}
        self.generation = 0
        self.offsets: dict[TP, int] = {}
        self.commits: list[tuple[str, int, dict[TP, int]]] = []
        self._ids = itertools.count(1)
        #: Calls to Join get aborted with this status while set (then it is cleared).
        self.break_streams: grpc.StatusCode | None = None

    def partitions(self) -> list[TP]:
        return [(self.cluster.topic, p) for p in range(self.cluster.partitions)]

    def owners(self) -> dict[TP, set[str]]:
        out: dict[TP, set[str]] = {}
        for m in self.members.values():
            for tp in m.owned:
                out.setdefault(tp, set()).add(m.member_id)
        return out

    def rebalance(self) -> None:
        members = sorted(self.members.values(), key=lambda m: m.member_id)
        if not members:
            return
        parts = self.partitions()
        quota, extra = divmod(len(parts), len(members))
        desired: dict[str, set[TP]] = {}
        taken: set[TP] = set()
        for i, m in enumerate(members):
            cap = quota + (1 if i < extra else 0)
            keep = sorted(m.owned - taken)[:cap]
            desired[m.member_id] = set(keep)
            taken |= set(keep)
        free = [tp for tp in parts if tp not in taken]
        for i, m in enumerate(members):
            cap = quota + (1 if i < extra else 0)
            while len(desired[m.member_id]) < cap and free:
                desired[m.member_id].add(free.pop(0))
        owned_by: dict[TP, str] = {tp: m.member_id for m in members for tp in m.owned}
        changes = []
        for m in members:
            give = {tp for tp in desired[m.member_id]
                    if owned_by.get(tp) in (None, m.member_id)}
            if give != m.sent:
                changes.append((m, give))
        if changes:
            self.generation += 1
            for m, give in changes:
                m.sent = give
                m.owned |= give
                m.outbox.put_nowait(groups_pb2.GroupEvent(assignment=groups_pb2.Assignment(
                    member_id=m.member_id, generation=self.generation,
                    heartbeat_interval_ms=self.heartbeat_interval_ms,
                    partitions=[groups_pb2.TopicPartitions(
                        topic=self.cluster.topic, partitions=sorted(p for _, p in give))])))

    async def Join(self, request_iterator: Any, context: Any
                   ) -> AsyncIterator[groups_pb2.GroupEvent]:
        if self.break_streams is not None:
            code, self.break_streams = self.break_streams, None
            await context.abort(code, "coordinator moved")
        first = await request_iterator.__anext__()
        if not first.HasField("join"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "first message must be join")
        join = first.join
        mid = join.member_id or f"m{next(self._ids)}"
        m = self.members.get(mid) or FakeMember(mid, join.instance_id)
        m.joins.append(join)
        m.owned = {(t.topic, p) for t in join.owned for p in t.partitions}
        m.sent = None
        self.members[mid] = m
        self.rebalance()

        async def reader() -> None:
            try:
                async for req in request_iterator:
                    if req.HasField("heartbeat"):
                        m.heartbeats += 1
                        owned = {(t.topic, p) for t in req.heartbeat.owned for p in t.partitions}
                        # What was just sent counts as owned even if this heartbeat crossed it.
                        owned |= m.sent or set()
                        if owned != m.owned:
                            m.owned = owned
                            self.rebalance()
                    elif req.HasField("leave"):
                        break
            finally:
                m.outbox.put_nowait(None)

        task = asyncio.get_running_loop().create_task(reader())
        try:
            while True:
                event = await m.outbox.get()
                if event is None:
                    return
                yield event
        finally:
            task.cancel()
            if self.members.get(mid) is m:
                del self.members[mid]
                self.rebalance()

    async def CommitOffsets(self, request: groups_pb2.CommitOffsetsRequest, context: Any
                            ) -> groups_pb2.CommitOffsetsResponse:
        m = self.members.get(request.member_id)
        tps = {(o.topic, o.partition): o.offset for o in request.offsets}
        if request.generation == -1 and not request.member_id:
            if self.members:
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                    "ERROR_CODE_GROUP_NOT_EMPTY: group has members")
        elif m is None or request.generation != self.generation or not set(tps) <= (
                m.owned | (m.sent or set())):
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"ERROR_CODE_FENCED: generation {request.generation} / "
                                f"{self.generation}, partitions {sorted(tps)}")
        self.offsets.update(tps)
        self.commits.append((request.member_id, request.generation, tps))
        return groups_pb2.CommitOffsetsResponse()

    async def FetchOffsets(self, request: groups_pb2.FetchOffsetsRequest, context: Any
                           ) -> groups_pb2.FetchOffsetsResponse:
        wanted = [(t.topic, p) for t in request.partitions for p in t.partitions] or list(
            self.offsets)
        return groups_pb2.FetchOffsetsResponse(offsets=[
            groups_pb2.CommittedPartitionOffset(topic=t, partition=p,
                                                offset=self.offsets.get((t, p), -1))
            for t, p in wanted])


async def start_group_cluster(partitions: int = 4, heartbeat_interval_ms: int = 100,
                              ) -> tuple[FakeCluster, FakeGroups]:
    """One fake node serving Metadata, Consume and Groups."""
    cluster = FakeCluster(partitions)
    groups = FakeGroups(cluster, heartbeat_interval_ms)
    node = FakeNode(cluster, 0)
    server = grpc.aio.server()
    log_pb2_grpc.add_ConsumeServicer_to_server(node, server)
    admin_pb2_grpc.add_MetadataServicer_to_server(node, server)
    groups_pb2_grpc.add_GroupsServicer_to_server(groups, server)
    port = server.add_insecure_port("127.0.0.1:0")
    node.address = f"127.0.0.1:{port}"
    node.server = server
    await server.start()
    cluster.nodes.append(node)
    return cluster, groups
