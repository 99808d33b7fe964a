"""The Groups service (consumer groups) and the coordinator's runtime around the pure
``Coordinator`` (node/groups/coordinator.py).

Where the coordinator runs: on the metadata Raft leader (a lone node is its own)
(``GroupsHost`` watches ``ClusterNode.metadata_ready()`` and starts a fresh runtime when this
node becomes the ready leader, and stops it, ending every member stream with UNAVAILABLE,
when it stops leading). Any other node passes calls on: unary calls through
``ClusterNode.on_metadata_leader``, the ``Join`` stream by opening the same stream to the
coordinator and pumping both ways, so a plain generated client works against any node.

Every event goes through ``GroupRuntime.apply`` under one lock: the coordinator computes, new
generations are stored (replicated) BEFORE any member hears of them, expired members' streams
end, assignments are queued to their streams. Commits take the same lock, so the fencing
check and the stored generation cannot change between the check and the write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from rillet import batch as batch_codec
from rillet.api.v1 import common_pb2, groups_pb2, groups_pb2_grpc, log_pb2, log_pb2_grpc
from rillet.node import errors
from rillet.node.cluster_node import ClusterNode
from rillet.node.errors import (
    Context,
    InvalidRequestError,
    UnavailableError,
)
from rillet.node.forward import FORWARDED_METADATA, is_forwarded
from rillet.node.groups.coordinator import (
    MAX_GROUP_NAME_LENGTH,
    TP,
    AssignmentOut,
    Coordinator,
    GroupView,
    JoinRequest,
    Output,
    validate_group,
)

__all__ = ["GroupRuntime", "GroupsHost", "GroupsService", "PartitionEnds",
           "check_offsets", "commit_checked", "describe_group", "ensure_empty",
           "fetch_offsets", "known_group", "list_groups", "timestamp_at", "validate_group"]
from rillet.node.groups.errors import (
    GroupNotEmptyError,
    UnknownGroupError,
)
from rillet.node.groups.offsets import (
    Committed,
    MetadataOffsetStore,
    OffsetStore,
)
from rillet.node.security.acl import Operation, ResourceType
from rillet.node.services.common import NodeContext

log = logging.getLogger(__name__)

TICK_S = 0.2
METRICS_INTERVAL_S = 5.0
REJOIN_GRACE_S = 3.0
LEADER_WATCH_S = 0.1
RUNTIME_WAIT_S = 5.0
FORWARD_TIMEOUT_S = 30.0
MAX_METADATA_CHARS = 4096
#: Events queued to one member stream that its transport has not taken yet (flow control
#: holds them); one more and the stream ends (docs/security.md, limits).
MAX_UNSENT_EVENTS = 64
LAG_READ_BYTES = 64 * 1024
REMOTE_READ_TIMEOUT_S = 5.0
_T = TypeVar("_T")


@dataclass(frozen=True)
class _End:
    """Queued to a member stream: end it with this status."""

    code: grpc.StatusCode
    details: str


class _Stream:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[groups_pb2.GroupEvent | _End] = asyncio.Queue()


def _event(a: AssignmentOut) -> groups_pb2.GroupEvent:
    by_topic: dict[str, list[int]] = {}
    for t, p in a.partitions:
        by_topic.setdefault(t, []).append(p)
    return groups_pb2.GroupEvent(assignment=groups_pb2.Assignment(
        member_id=a.member_id, generation=a.generation,
        partitions=[groups_pb2.TopicPartitions(topic=t, partitions=ps)
                    for t, ps in sorted(by_topic.items())],
        heartbeat_interval_ms=a.heartbeat_interval_ms))


def _tps(items: Any) -> set[TP]:
    return {(tp.topic, int(p)) for tp in items for p in tp.partitions}


class GroupRuntime:
    """One coordinator's life on this node: the pure state, its store, the member streams,
    the tick task."""

    def __init__(self, store: OffsetStore, partitions_of: Callable[[str], int | None], *,
                 rejoin_grace_s: float, clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[], None] | None = None,
                 max_name_length: int = MAX_GROUP_NAME_LENGTH) -> None:
        self.store = store
        self.clock = clock
        self.coordinator = Coordinator(partitions_of, store.generation, now=clock(),
                                       rejoin_grace_s=rejoin_grace_s,
                                       max_name_length=max_name_length)
        self.lock = asyncio.Lock()
        self.streams: dict[tuple[str, str], tuple[int, _Stream]] = {}
        self.stopped = False
        self.on_change = on_change
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._ticks(), name="group-ticks")

    async def _ticks(self) -> None:
        while not self.stopped:
            await asyncio.sleep(TICK_S)
            try:
                await self.apply(lambda c: c.tick(self.clock()))
            except Exception:
                log.exception("group coordinator tick failed; stopping it")
                await self.stop("the group coordinator failed; rejoin")
                return

    async def apply(self, step: Callable[[Coordinator], _T]) -> _T:
        """Run one event on the coordinator and carry out its output (see module doc)."""
        async with self.lock:
            if self.stopped:
                raise UnavailableError("this node stopped coordinating groups; retry")
            result = step(self.coordinator)
            out = result[1] if isinstance(result, tuple) else result
            if isinstance(out, Output):
                await self._carry_out(out)
            return result

    async def _carry_out(self, out: Output) -> None:
        for group, generation in sorted(out.generations.items()):
            try:
                await self.store.store_generation(group, generation)
            except Exception as exc:
                # Nothing may be sent under a generation that is not stored.
                self.stopped = True
                self._end_all(grpc.StatusCode.UNAVAILABLE,
                              f"group coordinator lost its store ({exc}); rejoin")
                raise UnavailableError(f"generation not stored: {exc}") from exc
        for group, member_id, why in out.expired:
            log.info("group %s: member %s removed: %s", group, member_id, why,
                     extra={"group": group})
            entry = self.streams.pop((group, member_id), None)
            if entry is not None:
                entry[1].queue.put_nowait(_End(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"ERROR_CODE_FENCED: member {member_id!r} removed from group {group!r}: "
                    f"{why}; join again"))
        for a in out.assignments:
            entry = self.streams.get((a.group, a.member_id))
            if entry is None:
                continue
            if entry[1].queue.qsize() >= MAX_UNSENT_EVENTS:
                # The member's transport takes nothing (its flow-control window is full):
                # end its stream rather than queue events for it without bound.
                del self.streams[(a.group, a.member_id)]
                entry[1].queue.put_nowait(_End(
                    grpc.StatusCode.UNAVAILABLE,
                    f"member {a.member_id!r} of group {a.group!r} left {MAX_UNSENT_EVENTS} "
                    "group events unread; its stream ends: join again"))
                continue
            entry[1].queue.put_nowait(_event(a))
        if self.on_change is not None and (out.generations or out.expired):
            self.on_change()

    def register(self, group: str, member_id: str, token: int) -> _Stream:
        stream = _Stream()
        old = self.streams.get((group, member_id))
        if old is not None:
            old[1].queue.put_nowait(_End(
                grpc.StatusCode.ABORTED,
                f"member {member_id!r} of group {group!r} joined again on another stream"))
        self.streams[(group, member_id)] = (token, stream)
        return stream

    def unregister(self, group: str, member_id: str, token: int) -> None:
        entry = self.streams.get((group, member_id))
        if entry is not None and entry[0] == token:
            del self.streams[(group, member_id)]

    def _end_all(self, code: grpc.StatusCode, details: str) -> None:
        for _token, stream in self.streams.values():
            stream.queue.put_nowait(_End(code, details))
        self.streams.clear()

    async def stop(self, why: str) -> None:
        """Stop coordinating: every member stream ends UNAVAILABLE (members rejoin the new
        coordinator with what they own)."""
        self.stopped = True
        self._end_all(grpc.StatusCode.UNAVAILABLE, why)
        self.coordinator.drop_all()
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class GroupsHost:
    """Owns the runtime while this node is the ready metadata leader."""

    def __init__(self, node: NodeContext) -> None:
        self.node = node
        self.runtime: GroupRuntime | None = None
        self._watch: asyncio.Task[None] | None = None
        self._metrics_task: asyncio.Task[None] | None = None

    def partitions_of(self, topic: str) -> int | None:
        try:
            return len(self.node.get_topic(topic).replicas)
        except Exception:
            return None

    def _new_runtime(self, store: OffsetStore, grace: float) -> GroupRuntime:
        rt = GroupRuntime(store, self.partitions_of, rejoin_grace_s=grace,
                          max_name_length=self.node.config.max_group_name_length)
        rt.start()
        return rt

    async def start(self) -> None:
        self._metrics_task = asyncio.create_task(self._metrics_loop(), name="group-metrics")
        self._watch = asyncio.create_task(self._watch_leader(), name="groups-leader")

    async def _watch_leader(self) -> None:
        """Coordinate while this node is the ready metadata leader (a runtime that stopped,
        its store failing, is started afresh)."""
        cluster = self.node.cluster
        while True:
            await asyncio.sleep(LEADER_WATCH_S)
            stopping = self.node.stopping.is_set()
            ready = cluster.metadata_ready() and not stopping
            if ready and (self.runtime is None or self.runtime.stopped):
                log.info("node %d: coordinating consumer groups", cluster.broker_id)
                self.runtime = self._new_runtime(MetadataOffsetStore(cluster), REJOIN_GRACE_S)
            elif not ready and self.runtime is not None:
                log.info("node %d: no longer coordinating consumer groups", cluster.broker_id)
                rt, self.runtime = self.runtime, None
                await rt.stop("the group coordinator moved (metadata leader changed); rejoin")
                self.node.metrics.forget_groups()

    async def stop(self) -> None:
        for task in (self._watch, self._metrics_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.runtime is not None:
            await self.runtime.stop("node is shutting down; rejoin")
            self.runtime = None

    def ends(self, topic: str, index: int) -> PartitionEnds | None:
        """Ends of a partition this node holds a replica of (None: it holds none)."""
        try:
            part = self.node.cluster.get_topic(topic).replicas[index]
            if part is None:
                return None
        except Exception:
            return None
        plog, hw = part.log, part.high_watermark
        return PartitionEnds(plog.log_start_offset, hw,
                             lambda off: timestamp_at(plog, off, hw))

    async def remote_ends(self, topic: str, index: int, committed: int
                          ) -> PartitionEnds | None:
        """Ends and the timestamp at ``committed`` of a partition this node holds no replica
        of, through its own read path (Consume, which passes the read to the leader)."""
        cluster = self.node.cluster
        stub = log_pb2_grpc.ConsumeStub(cluster.channel(cluster.broker_id))  # type: ignore[no-untyped-call]
        for pos in ([common_pb2.Position(offset=committed)] if committed >= 0 else []) + [
                common_pb2.Position(boundary=common_pb2.BOUNDARY_EARLIEST)]:
            call = stub.Consume(log_pb2.ConsumeRequest(
                topic=topic, partitions=[log_pb2.PartitionPosition(partition=index,
                                                                   position=pos)],
                max_bytes=LAG_READ_BYTES, max_wait_ms=1), timeout=REMOTE_READ_TIMEOUT_S)
            try:
                async for resp in call:
                    for pd in resp.partitions:
                        if pd.partition != index:
                            continue
                        ts = _first_timestamp(pd.batches, pd.first_offset)

                        def at(_offset: int, ts: int | None = ts) -> int | None:
                            return ts
                        return PartitionEnds(pd.log_start_offset, pd.high_watermark, at)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.OUT_OF_RANGE:
                    log.info("lag of %s-%d: read failed: %s", topic, index, exc.details(),
                             extra={"topic": topic, "partition": index})
                    return None
            finally:
                call.cancel()
        return None

    async def describe(self, rt: GroupRuntime, group: str) -> groups_pb2.DescribeGroupResponse:
        """DescribeGroup on the coordinator; refreshes the group's metrics too."""
        view = rt.coordinator.describe(group)
        stored = rt.store.offsets(group)
        topics = set(view.topics if view else ()) | {t for t, _ in stored}
        table: dict[TP, PartitionEnds | None] = {}
        for topic in sorted(topics):
            for p in range(self.partitions_of(topic) or 0):
                e = self.ends(topic, p)
                if e is None:
                    c = stored.get((topic, p))
                    e = await self.remote_ends(topic, p, c.offset if c else -1)
                table[(topic, p)] = e
        resp = describe_group(group, view, stored, rt.coordinator.generation(group),
                              lambda t, p: table.get((t, p)), self.partitions_of,
                              int(time.time() * 1000))
        self.node.metrics.record_group(resp)
        return resp

    async def _metrics_loop(self) -> None:
        """Every few seconds, lag and members of every group, while this node coordinates."""
        while True:
            await asyncio.sleep(METRICS_INTERVAL_S)
            rt = self.runtime
            if rt is None or rt.stopped:
                continue
            try:
                for group in sorted(set(rt.store.groups()) | set(rt.coordinator.groups)):
                    await self.describe(rt, group)
            except Exception:
                log.exception("group metrics update failed")

    def store(self) -> OffsetStore:
        """Read access to stored offsets on this node (any node)."""
        return MetadataOffsetStore(self.node.cluster)

    async def local_runtime(self) -> GroupRuntime | None:
        """The runtime if this node coordinates (waiting briefly while it takes over);
        None if another node does."""
        cluster = self.node.cluster
        leader = await cluster.wait_metadata_leader()
        if leader != cluster.broker_id:
            return None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RUNTIME_WAIT_S
        while self.runtime is None or self.runtime.stopped:
            if loop.time() > deadline or not cluster.metadata_ready():
                raise UnavailableError("this node is taking over group coordination; retry")
            await asyncio.sleep(LEADER_WATCH_S / 2)
        return self.runtime

    async def on_coordinator(self, context: Context, local: Callable[[GroupRuntime], Any],
                             forward: Callable[[grpc.aio.Channel], Any]) -> Any:
        """Run ``local(runtime)`` here if this node coordinates, else ``forward`` it."""
        rt = await self.local_runtime()
        if rt is not None:
            return await local(rt)
        cluster = self.node.cluster
        if is_forwarded(context):
            raise UnavailableError("the group coordinator moved while the call was forwarded; "
                                   "retry")
        return await cluster.forward_to(_other_leader(cluster), forward, "group coordinator")


def _other_leader(cluster: ClusterNode) -> int:
    """The metadata leader to pass a call on to; UNAVAILABLE if it just changed (an election,
    or this node took over meanwhile): the caller retries."""
    leader = cluster.metadata_leader()
    if leader < 0 or leader == cluster.broker_id or leader not in cluster.dial:
        raise UnavailableError("the group coordinator is changing; retry")
    return leader


def check_offsets(node: NodeContext, offsets: Any) -> dict[TP, tuple[int, str]]:
    """The commit's offsets, checked: known topics and partitions, offsets >= 0, short
    metadata, no partition twice."""
    out: dict[TP, tuple[int, str]] = {}
    if not offsets:
        raise InvalidRequestError("no offsets to commit")
    for o in offsets:
        count = len(node.get_topic(o.topic).replicas)
        if not 0 <= o.partition < count:
            raise errors.PartitionOutOfRangeError(
                f"partition {o.partition} of topic {o.topic!r} does not exist "
                f"(it has {count})")
        if o.offset < 0:
            raise InvalidRequestError(f"offset for {o.topic}-{o.partition} must be >= 0, "
                                      f"got {o.offset}")
        if len(o.metadata) > MAX_METADATA_CHARS:
            raise InvalidRequestError(f"offset metadata for {o.topic}-{o.partition} is longer "
                                      f"than {MAX_METADATA_CHARS} characters")
        if (o.topic, o.partition) in out:
            raise InvalidRequestError(f"{o.topic}-{o.partition} is given twice")
        out[(o.topic, o.partition)] = (o.offset, o.metadata)
    return out


async def commit_checked(rt: GroupRuntime, group: str, member_id: str, generation: int,
                         offsets: dict[TP, tuple[int, str]]) -> None:
    """Fence, then store, under the runtime's lock (nothing moves in between)."""
    async with rt.lock:
        if rt.stopped:
            raise UnavailableError("this node stopped coordinating groups; retry")
        rt.coordinator.check_commit(group, member_id, generation, offsets)
        stored = -1 if not member_id else rt.coordinator.generation(group)
        await rt.store.commit(group, stored, offsets, int(time.time() * 1000))


class GroupsService(groups_pb2_grpc.GroupsServicer):
    def __init__(self, node: NodeContext, host: GroupsHost) -> None:
        self.node = node
        self.host = host
        self._cleanups: set[asyncio.Task[Any]] = set()

    async def Join(self, request_iterator: AsyncIterator[groups_pb2.GroupRequest],
                   context: Context) -> AsyncIterator[groups_pb2.GroupEvent]:
        try:
            first = await anext(aiter(request_iterator))
        except StopAsyncIteration:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "ERROR_CODE_INVALID_GROUP: the stream ended before a JoinGroup")
            return
        if first.WhichOneof("kind") != "join":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "ERROR_CODE_INVALID_GROUP: the first message must be a JoinGroup")
        try:
            self._authorize(first.join.group, first.join.topics)
            rt = await self.host.local_runtime()
        except Exception as exc:
            await errors.abort(context, exc, where="join")
            return
        if rt is None:
            async for ev in self._proxy(first, request_iterator, context):
                yield ev
            return
        async for ev in self._serve(rt, first.join, request_iterator, context):
            yield ev

    async def _serve(self, rt: GroupRuntime, join: groups_pb2.JoinGroup,
                     requests: AsyncIterator[groups_pb2.GroupRequest],
                     context: Context) -> AsyncIterator[groups_pb2.GroupEvent]:
        req = JoinRequest(
            group=join.group, topics=tuple(join.topics), instance_id=join.instance_id,
            session_timeout_ms=join.session_timeout_ms,
            rebalance_timeout_ms=join.rebalance_timeout_ms, member_id=join.member_id,
            owned=frozenset(_tps(join.owned)), client_id=join.client_id)
        try:
            for t in req.topics:
                self.node.get_topic(t)
            stream_box: list[_Stream] = []

            def step(c: Coordinator) -> tuple[Any, Output]:
                member, out = c.join(req, rt.clock())
                stream_box.append(rt.register(req.group, member.member_id, member.token))
                return member, out

            member, _out = await rt.apply(step)
        except Exception as exc:
            await errors.abort(context, exc, where=f"join group {join.group!r}")
            return
        stream = stream_box[0]
        member_id, token = member.member_id, member.token
        log.info("group %s: member %s joined (instance %r, client %r)", req.group, member_id,
                 req.instance_id, req.client_id, extra={"group": req.group})
        reader = asyncio.create_task(self._read(rt, req.group, member_id, requests, stream))
        done = False

        def closed(_ctx: object = None) -> None:
            """The member's stream is over (however it ended): tell the coordinator. No await
            here: this runs from a cancelled handler or from gRPC's done callback."""
            nonlocal done
            if done:
                return
            done = True
            log.info("group %s: member %s stream ended", req.group, member_id,
                     extra={"group": req.group})
            reader.cancel()
            rt.unregister(req.group, member_id, token)
            if not rt.stopped:
                self._spawn(rt.apply(lambda c: c.stream_closed(req.group, member_id, token,
                                                               rt.clock())))

        context.add_done_callback(closed)  # type: ignore[arg-type]
        try:
            while True:
                item = await stream.queue.get()
                if isinstance(item, _End):
                    if item.code == grpc.StatusCode.OK:
                        return
                    await context.abort(item.code, item.details)
                yield item
        finally:
            closed()

    def _authorize(self, group: str, topics: Any) -> None:
        """Operation group on the group and consume on each topic (PermissionDeniedError),
        checked on the node the member called, before anything is passed on."""
        authz = self.node.authorizer
        authz.require(Operation.GROUP, ResourceType.GROUP, group)
        for topic in sorted(set(topics)):
            authz.require(Operation.CONSUME, ResourceType.TOPIC, topic)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._cleanups.add(task)

        def finished(t: asyncio.Task[Any]) -> None:
            self._cleanups.discard(t)
            if not t.cancelled() and t.exception() is not None and not isinstance(
                    t.exception(), (UnavailableError, UnknownGroupError)):
                log.warning("group stream cleanup failed: %s", t.exception())
        task.add_done_callback(finished)

    async def _read(self, rt: GroupRuntime, group: str, member_id: str,
                    requests: AsyncIterator[groups_pb2.GroupRequest], stream: _Stream) -> None:
        """Heartbeats and leave from the member; the end of its requests ends the stream."""
        try:
            async for msg in requests:
                kind = msg.WhichOneof("kind")
                if kind == "heartbeat":
                    owned = _tps(msg.heartbeat.owned)

                    def beat(c: Coordinator, owned: set[TP] = owned) -> Output:
                        return c.heartbeat(group, member_id, owned, rt.clock())

                    await rt.apply(beat)
                elif kind == "leave":
                    await rt.apply(lambda c: c.leave(group, member_id, rt.clock()))
                    log.info("group %s: member %s left", group, member_id,
                             extra={"group": group})
                    stream.queue.put_nowait(_End(grpc.StatusCode.OK, ""))
                    return
                else:
                    stream.queue.put_nowait(_End(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        "ERROR_CODE_INVALID_GROUP: only Heartbeat or LeaveGroup may follow "
                        "JoinGroup"))
                    return
            stream.queue.put_nowait(_End(grpc.StatusCode.OK, ""))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if errors.lookup(exc) is None:
                log.error("unexpected error in group %s, member %s", group, member_id,
                          exc_info=exc, extra={"group": group})
            code, details = errors.status_for(exc)
            stream.queue.put_nowait(_End(code, details))

    async def _proxy(self, first: groups_pb2.GroupRequest,
                     requests: AsyncIterator[groups_pb2.GroupRequest],
                     context: Context) -> AsyncIterator[groups_pb2.GroupEvent]:
        cluster = self.node.cluster
        if is_forwarded(context):
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                "the group coordinator moved; join again")
        try:
            leader = _other_leader(cluster)
        except UnavailableError as exc:
            await errors.abort(context, exc)

        call: Any = None

        async def upstream_requests() -> AsyncIterator[groups_pb2.GroupRequest]:
            yield first
            try:
                async for msg in requests:
                    yield msg
            except Exception as exc:
                # The member went away (killed, connection reset): gRPC's request pump would
                # swallow this, and the coordinator would only notice at session timeout.
                log.info("proxied group stream: member side failed (%s); ending upstream",
                         type(exc).__name__)
                if call is not None:
                    call.cancel()

        call = groups_pb2_grpc.GroupsStub(cluster.channel(leader)).Join(  # type: ignore[no-untyped-call]
            upstream_requests(), metadata=FORWARDED_METADATA)
        # However the member's call ends (cancelled, deadline, connection lost), end ours.
        context.add_done_callback(lambda _ctx: call.cancel())  # type: ignore[arg-type]
        try:
            async for ev in call:
                yield ev
        except grpc.aio.AioRpcError as exc:
            if context.cancelled():
                return
            code = exc.code()
            if code in (grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED):
                code = grpc.StatusCode.UNAVAILABLE
            await context.abort(code, exc.details() or "group coordinator unreachable")
        finally:
            call.cancel()

    async def CommitOffsets(self, request: groups_pb2.CommitOffsetsRequest,
                            context: Context) -> groups_pb2.CommitOffsetsResponse:
        try:
            self._authorize(request.group, (o.topic for o in request.offsets))
            validate_group(request.group, self.node.config.max_group_name_length)
            offsets = check_offsets(self.node, request.offsets)

            async def local(rt: GroupRuntime) -> None:
                await commit_checked(rt, request.group, request.member_id,
                                     request.generation, offsets)

            async def forward(ch: grpc.aio.Channel) -> None:
                await groups_pb2_grpc.GroupsStub(ch).CommitOffsets(  # type: ignore[no-untyped-call]
                    request, timeout=FORWARD_TIMEOUT_S, metadata=FORWARDED_METADATA)

            await self.host.on_coordinator(context, local, forward)
            return groups_pb2.CommitOffsetsResponse()
        except Exception as exc:
            await errors.abort(context, exc, where=f"commit offsets of {request.group!r}")

    async def FetchOffsets(self, request: groups_pb2.FetchOffsetsRequest,
                           context: Context) -> groups_pb2.FetchOffsetsResponse:
        try:
            self._authorize(request.group, (tp.topic for tp in request.partitions))
            validate_group(request.group, self.node.config.max_group_name_length)

            async def local(rt: GroupRuntime) -> groups_pb2.FetchOffsetsResponse:
                return fetch_offsets(rt.store, request)

            async def forward(ch: grpc.aio.Channel) -> groups_pb2.FetchOffsetsResponse:
                resp: groups_pb2.FetchOffsetsResponse = await groups_pb2_grpc.GroupsStub(
                    ch).FetchOffsets(  # type: ignore[no-untyped-call]
                    request, timeout=FORWARD_TIMEOUT_S, metadata=FORWARDED_METADATA)
                return resp

            result: groups_pb2.FetchOffsetsResponse = await self.host.on_coordinator(
                context, local, forward)
            if request.partitions:
                return result
            # Every stored offset: only those of topics the principal may consume.
            may = self.node.authorizer.allowed
            return groups_pb2.FetchOffsetsResponse(offsets=[
                o for o in result.offsets if may(Operation.CONSUME, ResourceType.TOPIC, o.topic)])
        except Exception as exc:
            await errors.abort(context, exc, where=f"fetch offsets of {request.group!r}")


def fetch_offsets(store: OffsetStore, request: groups_pb2.FetchOffsetsRequest
                  ) -> groups_pb2.FetchOffsetsResponse:
    stored = store.offsets(request.group)
    wanted = sorted(_tps(request.partitions)) if request.partitions else sorted(stored)
    out = []
    for tp in wanted:
        c = stored.get(tp)
        out.append(groups_pb2.CommittedPartitionOffset(
            topic=tp[0], partition=tp[1], offset=c.offset if c else -1,
            metadata=c.metadata if c else "", commit_time_ms=c.commit_time_ms if c else 0))
    return groups_pb2.FetchOffsetsResponse(offsets=out)


# -- admin views (called by node/services/admin.py on the coordinator) ---------------------------


def list_groups(rt: GroupRuntime) -> groups_pb2.ListGroupsResponse:
    names = sorted(set(rt.store.groups()) | set(rt.coordinator.groups))
    out = []
    for name in names:
        view = rt.coordinator.describe(name)
        out.append(groups_pb2.GroupSummary(
            group=name, state=view.state if view else "empty",
            members=len(view.members) if view else 0))
    return groups_pb2.ListGroupsResponse(groups=out)


@dataclass(frozen=True)
class PartitionEnds:
    """What describe needs of one partition: its ends and the timestamp at an offset."""

    log_start: int
    high_watermark: int
    timestamp_at: Callable[[int], int | None]


def timestamp_at(plog: Any, offset: int, high_watermark: int) -> int | None:
    """Timestamp (ms) of the batch holding ``offset``: the first record of that batch, so
    the age is at most one batch's span too old. None when nothing is there."""
    if offset >= high_watermark or offset < plog.log_start_offset:
        return None
    data = plog.read(offset, LAG_READ_BYTES, upper=high_watermark)
    for header, _view in batch_codec.iter_batches(data):
        if header.is_control or header.next_offset <= offset:
            continue
        return int(header.first_timestamp_ms)
    return None


def _first_timestamp(batches: bytes, offset: int) -> int | None:
    for header, _view in batch_codec.iter_batches(batches):
        if not header.is_control and header.next_offset > offset:
            return int(header.first_timestamp_ms)
    return None


def describe_group(group: str, view: GroupView | None, stored: dict[TP, Committed],
                   generation: int, ends: Callable[[str, int], PartitionEnds | None],
                   partitions_of: Callable[[str], int | None],
                   now_ms: int) -> groups_pb2.DescribeGroupResponse:
    """The DescribeGroup answer; lag from ``ends`` (None: this node cannot see it)."""
    topics = set(view.topics if view else ()) | {t for t, _ in stored}
    owners = view.owners if view else {}
    parts = []
    for topic in sorted(topics):
        count = partitions_of(topic)
        if count is None:
            continue
        for p in range(count):
            c = stored.get((topic, p))
            committed = c.offset if c else -1
            e = ends(topic, p)
            hw = e.high_watermark if e else 0
            start = e.log_start if e else 0
            lag = max(0, hw - (committed if committed >= 0 else start)) if e else 0
            lag_ms = 0
            if e and lag > 0:
                ts = e.timestamp_at(max(committed, start))
                lag_ms = max(0, now_ms - ts) if ts is not None else 0
            parts.append(groups_pb2.PartitionLag(
                topic=topic, partition=p, committed_offset=committed, high_watermark=hw,
                log_start_offset=start, lag_offsets=lag, lag_ms=lag_ms,
                owner=owners.get((topic, p), "")))
    members = []
    for m in view.members if view else ():
        by_topic: dict[str, list[int]] = {}
        for t, p in m.assigned:
            by_topic.setdefault(t, []).append(p)
        members.append(groups_pb2.GroupMember(
            member_id=m.member_id, instance_id=m.instance_id, client_id=m.client_id,
            assigned=[groups_pb2.TopicPartitions(topic=t, partitions=ps)
                      for t, ps in sorted(by_topic.items())],
            disconnected=m.disconnected))
    return groups_pb2.DescribeGroupResponse(
        group=group, state=view.state if view else "empty", generation=generation,
        members=members, partitions=parts)


def known_group(rt: GroupRuntime, group: str) -> None:
    validate_group(group, rt.coordinator.max_name_length)
    if group not in rt.coordinator.groups and group not in rt.store.groups():
        raise UnknownGroupError(f"unknown group {group!r}")


def ensure_empty(rt: GroupRuntime, group: str) -> None:
    if not rt.coordinator.is_empty(group):
        view = rt.coordinator.describe(group)
        n = len(view.members) if view else 0
        raise GroupNotEmptyError(f"group {group!r} has {n} members; stop them first")

