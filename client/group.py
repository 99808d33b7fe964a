"""Consumer groups on the client: the member protocol and a consumer that reads what it owns.

`GroupMember` speaks the membership protocol of groups.proto: one `Join` stream, a heartbeat
every `heartbeat_interval_ms` listing what the member still reads, and on each `Assignment` a
cooperative change: revoked partitions are released (reading stopped, offsets committed) BEFORE
the next heartbeat leaves them out, and only then does the coordinator give them to someone
else. When the stream breaks it rejoins through any bootstrap node with its member id and what
it owns, after a backoff that doubles up to `MAX_BACKOFF_S`; a coordinator that moved answers
UNAVAILABLE, which is the normal way to find the new one. Past the session timeout without a
stream its partitions are surely someone else's: they are dropped as lost.

`GroupConsumer` puts one tailing `Consumer` per owned partition behind one queue, so a partition
that moves starts or stops alone and the others never pause. It starts each partition at the
group's committed offset (or `auto_offset_reset` when none), commits what the caller has
finished with (at least once: a record counts as finished once the caller asks for more, or
calls `commit()` or `close()`), every `auto_commit_interval_ms` and when partitions are revoked.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import os
import socket
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Self

import grpc
import grpc.aio

from rillet.api.v1 import groups_pb2, groups_pb2_grpc
from rillet.client.connection import (
    AsyncResource,
    ChannelPool,
    Credentials,
    make_stub,
    parse_bootstrap,
)
from rillet.client.consumer import Consumer
from rillet.client.errors import (
    ClientClosedError,
    ClusterUnreachableError,
    GroupFencedError,
    OffsetOutOfRangeError,
    RilletError,
    from_rpc_error,
)
from rillet.client.records import ConsumerRecord, RecordBatch

log = logging.getLogger(__name__)

__all__ = ["GroupConsumer", "GroupMember", "TopicPartition"]

#: Longest pause between two rejoin attempts.
MAX_BACKOFF_S = 2.0
#: Heartbeat interval until the first Assignment names one.
DEFAULT_HEARTBEAT_MS = 1000
#: Longest wait for the answer to a JoinGroup before trying the next address.
JOIN_TIMEOUT_S = 5.0
#: What the coordinator assumes when the member does not say (groups.proto).
DEFAULT_SESSION_TIMEOUT_MS = 10_000


@dataclass(frozen=True, slots=True, order=True)
class TopicPartition:
    topic: str
    partition: int

    def __str__(self) -> str:
        return f"{self.topic}/{self.partition}"


def to_wire(tps: Iterable[TopicPartition]) -> list[groups_pb2.TopicPartitions]:
    """Group (topic, partition) pairs by topic, sorted, as the proto lists them."""
    by_topic: dict[str, list[int]] = {}
    for tp in sorted(tps):
        by_topic.setdefault(tp.topic, []).append(tp.partition)
    return [groups_pb2.TopicPartitions(topic=t, partitions=ps) for t, ps in by_topic.items()]


def from_wire(items: Iterable[groups_pb2.TopicPartitions]) -> frozenset[TopicPartition]:
    return frozenset(TopicPartition(i.topic, p) for i in items for p in i.partitions)


Callback = Callable[[list[TopicPartition]], Awaitable[None] | None]


async def _call_back(cb: Callback | None, tps: Iterable[TopicPartition]) -> None:
    """Run a user callback (sync or async); its failure is logged, never breaks the member."""
    if cb is None:
        return
    try:
        result = cb(sorted(tps))
        if inspect.isawaitable(result):
            await result
    except Exception:
        log.exception("partition callback %r failed", cb)


class _Retry(Exception):
    """Internal: the stream ended in a way that a rejoin may fix."""


class GroupMember:
    """One member of a group: the Join stream, heartbeats, assignment changes, rejoin.

    `release(revoked)` must stop reading and commit the revoked partitions; `acquire(added)`
    starts reading the new ones; `lost(tps)` drops partitions that may already be someone
    else's (no commit). They run one at a time, in the order the assignments arrive.
    """

    def __init__(
        self,
        bootstrap: str | Sequence[str],
        group: str,
        topics: Sequence[str],
        *,
        release: Callable[[frozenset[TopicPartition]], Awaitable[None]],
        acquire: Callable[[frozenset[TopicPartition]], Awaitable[None]],
        lost: Callable[[frozenset[TopicPartition]], Awaitable[None]],
        instance_id: str = "",
        client_id: str = "",
        session_timeout_ms: int | None = None,
        rebalance_timeout_ms: int | None = None,
        reconnect_timeout_s: float = 30.0,
        pool: ChannelPool | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        self.addresses = parse_bootstrap(bootstrap)
        self.group = group
        self.topics = list(topics)
        self.instance_id = instance_id
        self.client_id = client_id or f"rillet-python@{socket.gethostname()}:{os.getpid()}"
        self.session_timeout_ms = session_timeout_ms
        self.rebalance_timeout_ms = rebalance_timeout_ms
        self.reconnect_timeout_s = reconnect_timeout_s
        self._release, self._acquire, self._lost = release, acquire, lost
        self._pool = pool or ChannelPool(credentials)
        self._own_pool = pool is None
        self.member_id = ""
        self.generation = -1
        #: Partitions this member reads (revoked ones stay here until released).
        self.owned: frozenset[TopicPartition] = frozenset()
        self.heartbeat_interval_s = DEFAULT_HEARTBEAT_MS / 1000
        self._call: Any = None
        self._write_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._assigned = asyncio.Event()
        self._closing = False
        #: The current stream has delivered an Assignment.
        self._session_ok = False
        #: A failure no rejoin fixes; raised to whoever waits on the member.
        self.error: BaseException | None = None
        self._next_address = itertools.cycle(range(len(self.addresses)))
        #: Why the last stream ended, for the error a caller sees.
        self.last_failure = ""
        #: Count of Assignment messages applied (for tests and callers that wait on changes).
        self.assignments = 0

    async def start(self, timeout_s: float = 10.0) -> None:
        """Join, and return once the first Assignment has been applied (or raise)."""
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"rillet-group-{self.group}")
        waiter = asyncio.ensure_future(self._assigned.wait())
        try:
            done, _ = await asyncio.wait({waiter, self._task}, timeout=timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if self._task in done:
            exc = self._task.exception() if not self._task.cancelled() else None
            raise exc or ClientClosedError("group member stopped")
        if not done:
            await self.close(leave=False)
            raise ClusterUnreachableError(
                f"group {self.group!r}: no assignment within {timeout_s:g} s from "
                f"{','.join(self.addresses)}"
                + (f" (last failure: {self.last_failure})" if self.last_failure else ""))

    # -- the stream

    def _join_request(self) -> groups_pb2.GroupRequest:
        join = groups_pb2.JoinGroup(
            group=self.group, topics=self.topics, instance_id=self.instance_id,
            member_id=self.member_id, owned=to_wire(self.owned), client_id=self.client_id)
        if self.session_timeout_ms:
            join.session_timeout_ms = self.session_timeout_ms
        if self.rebalance_timeout_ms:
            join.rebalance_timeout_ms = self.rebalance_timeout_ms
        return groups_pb2.GroupRequest(join=join)

    async def _write(self, request: groups_pb2.GroupRequest) -> None:
        call = self._call
        if call is None:
            return
        async with self._write_lock:
            await call.write(request)

    async def heartbeat(self) -> None:
        """Send a Heartbeat now with what this member still reads."""
        try:
            await self._write(groups_pb2.GroupRequest(
                heartbeat=groups_pb2.Heartbeat(owned=to_wire(self.owned))))
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError, RuntimeError) as exc:
            # The reading side sees the same failure and rejoins.
            log.debug("group %s: heartbeat not sent: %s", self.group, exc)

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval_s)
            await self.heartbeat()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = 0.1
        failing_since: float | None = None
        lost_at: float | None = None
        while not self._closing:
            address = self.addresses[next(self._next_address)]
            self._session_ok = False
            try:
                await self._session(address)
            except _Retry as exc:
                if self._closing:
                    return
                now = loop.time()
                if self._session_ok:
                    # The stream worked until now: a fresh run of failures.
                    backoff, failing_since, lost_at = 0.1, None, None
                failing_since = failing_since if failing_since is not None else now
                if lost_at is None:
                    session = (self.session_timeout_ms or DEFAULT_SESSION_TIMEOUT_MS) / 1000
                    lost_at = now + session
                if self.owned and now >= lost_at:
                    log.warning("group %s: no coordinator for a session timeout; %d "
                                "partitions lost", self.group, len(self.owned))
                    gone, self.owned = self.owned, frozenset()
                    await self._lost(gone)
                if now - failing_since > self.reconnect_timeout_s:
                    self.error = ClusterUnreachableError(
                        f"group {self.group!r}: no coordinator for "
                        f"{self.reconnect_timeout_s:.0f} s: {exc}")
                    raise self.error from exc
                self.last_failure = str(exc)
                log.info("group %s: stream to %s ended (%s); rejoining in %.2f s",
                         self.group, address, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
            except BaseException as exc:
                if not isinstance(exc, asyncio.CancelledError):
                    self.error = exc
                raise

    async def _session(self, address: str) -> None:
        """One Join stream, from the join to its end; raises _Retry when rejoining may help."""
        stub = make_stub(groups_pb2_grpc.GroupsStub, self._pool.get(address))
        call = stub.Join()
        self._call = call
        beats: asyncio.Task[None] | None = None
        try:
            await call.write(self._join_request())
            beats = asyncio.get_running_loop().create_task(self._heartbeats())
            while True:
                if self._session_ok:
                    event = await call.read()
                else:
                    # The coordinator answers a join at once; a node that does not (hung,
                    # black-holed) must not hold the member: try the next address.
                    try:
                        event = await asyncio.wait_for(call.read(), JOIN_TIMEOUT_S)
                    except TimeoutError:
                        raise _Retry(f"no answer to JoinGroup from {address} within "
                                     f"{JOIN_TIMEOUT_S:.0f} s") from None
                if event is grpc.aio.EOF:  # type: ignore[attr-defined]
                    raise _Retry(f"stream from {address} ended")
                if event.HasField("assignment"):
                    self._session_ok = True
                    await self._apply(event.assignment)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                        grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL,
                        grpc.StatusCode.ABORTED, grpc.StatusCode.CANCELLED):
                raise _Retry(f"{exc.details()} ({code.name})") from exc
            if code == grpc.StatusCode.FAILED_PRECONDITION and self.member_id:
                # The coordinator no longer knows this member (fenced): what it owned is
                # someone else's by now. Drop it and join again as a new member.
                log.warning("group %s: member %s fenced (%s); rejoining as new", self.group,
                            self.member_id, exc.details())
                gone, self.owned = self.owned, frozenset()
                self.member_id, self.generation = "", -1
                await self._lost(gone)
                raise _Retry(exc.details()) from exc
            raise from_rpc_error(exc) from exc
        finally:
            self._call = None
            if beats is not None:
                beats.cancel()
            call.cancel()

    async def _apply(self, a: groups_pb2.Assignment) -> None:
        """Cooperative change: release what was revoked, tell the coordinator, take the new."""
        new = from_wire(a.partitions)
        revoked = self.owned - new
        added = new - self.owned
        self.member_id = a.member_id or self.member_id
        self.generation = a.generation
        if a.heartbeat_interval_ms:
            self.heartbeat_interval_s = a.heartbeat_interval_ms / 1000
        log.info("group %s: generation %d, member %s: %d partitions (+%d -%d)", self.group,
                 a.generation, self.member_id, len(new), len(added), len(revoked))
        if revoked:
            await self._release(revoked)
        self.owned = new
        if revoked:
            await self.heartbeat()  # released: the coordinator may give them away now
        if added:
            await self._acquire(added)
            await self.heartbeat()
        self.assignments += 1
        self._assigned.set()

    async def close(self, *, leave: bool = True) -> None:
        """Send LeaveGroup (so the partitions move at once) and end the stream."""
        self._closing = True
        call = self._call
        if leave and call is not None:
            try:
                await asyncio.wait_for(self._write(groups_pb2.GroupRequest(
                    leave=groups_pb2.LeaveGroup())), 2.0)
                await asyncio.wait_for(call.done_writing(), 2.0)
                # Let the coordinator end the stream: cancelling it now could drop the
                # LeaveGroup on the way (a static member would then keep its partitions).
                if self._task is not None:
                    await asyncio.wait({self._task}, timeout=2.0)
            except (grpc.aio.AioRpcError, TimeoutError, asyncio.InvalidStateError,
                    RuntimeError) as exc:
                log.debug("group %s: leave not sent: %s", self.group, exc)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._own_pool:
            await self._pool.close()


# ------------------------------------------------------------------------------------ offsets


async def _unary(pool: ChannelPool, addresses: Sequence[str],
                 invoke: Callable[[Any], Awaitable[Any]]) -> Any:
    """Call the Groups service at the first address that answers (any node passes it on)."""
    last: grpc.aio.AioRpcError | None = None
    for attempt in range(3):
        if attempt:
            await asyncio.sleep(0.1 * 3 ** (attempt - 1))
        for addr in addresses:
            try:
                return await invoke(make_stub(groups_pb2_grpc.GroupsStub, pool.get(addr)))
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise from_rpc_error(exc) from exc
                last = exc
    raise ClusterUnreachableError(
        f"cannot reach cluster at {','.join(addresses)}: "
        f"{last.details() if last else 'no address'}")


async def fetch_offsets(pool: ChannelPool, addresses: Sequence[str], group: str,
                        tps: Iterable[TopicPartition] = (), timeout_s: float = 10.0,
                        ) -> dict[TopicPartition, groups_pb2.CommittedPartitionOffset]:
    """Committed offsets of a group (every one it has when `tps` is empty)."""
    request = groups_pb2.FetchOffsetsRequest(group=group, partitions=to_wire(tps))
    response: groups_pb2.FetchOffsetsResponse = await _unary(
        pool, addresses, lambda stub: stub.FetchOffsets(request, timeout=timeout_s))
    return {TopicPartition(o.topic, o.partition): o for o in response.offsets}


async def commit_offsets(pool: ChannelPool, addresses: Sequence[str], group: str,
                         member_id: str, generation: int,
                         offsets: Mapping[TopicPartition, int], timeout_s: float = 10.0,
                         ) -> None:
    request = groups_pb2.CommitOffsetsRequest(
        group=group, member_id=member_id, generation=generation,
        offsets=[groups_pb2.OffsetCommit(topic=tp.topic, partition=tp.partition, offset=o)
                 for tp, o in sorted(offsets.items())])
    await _unary(pool, addresses, lambda stub: stub.CommitOffsets(request, timeout=timeout_s))


# ------------------------------------------------------------------------------------ consumer


class _Partition:
    """One owned partition: its tailing Consumer and the task moving batches to the queue."""

    __slots__ = ("consumer", "task", "tp")

    def __init__(self, tp: TopicPartition, consumer: Consumer) -> None:
        self.tp = tp
        self.consumer = consumer
        self.task: asyncio.Task[None] | None = None


OffsetReset = Literal["earliest", "latest"]


class GroupConsumer(AsyncResource):
    """Reads the partitions a consumer group gives this process; commits how far it got.

        async with Consumer("127.0.0.1:9091", "events", group_id="billing") as c:
            async for record in c:
                handle(record)          # committed once the next record is asked for

    Records of one partition come in order; partitions interleave. `assignment()` is what this
    member owns now; `on_assign`/`on_revoke` (sync or async, given a sorted list of
    TopicPartition) run when that changes: `on_revoke` after reading stopped and before the
    offsets are committed, so it can commit its own work first.
    """

    def __init__(
        self,
        bootstrap: str | Sequence[str],
        topics: str | Sequence[str],
        *,
        group_id: str,
        instance_id: str | None = None,
        client_id: str = "",
        auto_offset_reset: OffsetReset = "latest",
        enable_auto_commit: bool = True,
        auto_commit_interval_ms: int = 5000,
        on_assign: Callback | None = None,
        on_revoke: Callback | None = None,
        session_timeout_ms: int | None = None,
        rebalance_timeout_ms: int | None = None,
        max_bytes: int = 1024 * 1024,
        max_wait_ms: int = 500,
        queue_size: int = 256,
        request_timeout_s: float = 10.0,
        reconnect_timeout_s: float = 30.0,
        credentials: Credentials | None = None,
    ) -> None:
        if not group_id:
            raise ValueError("group_id must not be empty")
        if auto_offset_reset not in ("earliest", "latest"):
            raise ValueError(f"auto_offset_reset must be earliest or latest, "
                             f"not {auto_offset_reset!r}")
        self.bootstrap = bootstrap
        self.addresses = parse_bootstrap(bootstrap)
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        if not self.topics:
            raise ValueError("subscribe to at least one topic")
        self.group_id = group_id
        self.auto_offset_reset: OffsetReset = auto_offset_reset
        self.enable_auto_commit = enable_auto_commit
        self.auto_commit_interval_ms = auto_commit_interval_ms
        self.on_assign, self.on_revoke = on_assign, on_revoke
        self.max_bytes, self.max_wait_ms = max_bytes, max_wait_ms
        self.request_timeout_s = request_timeout_s
        self.reconnect_timeout_s = reconnect_timeout_s
        # One pool (one set of credentials) for the membership stream and every reader.
        self._pool = ChannelPool(credentials)
        self._member = GroupMember(
            bootstrap, group_id, self.topics, release=self._release, acquire=self._acquire,
            lost=self._drop_lost, instance_id=instance_id or "", client_id=client_id,
            session_timeout_ms=session_timeout_ms, rebalance_timeout_ms=rebalance_timeout_ms,
            reconnect_timeout_s=reconnect_timeout_s, pool=self._pool)
        self._queue: asyncio.Queue[tuple[_Partition, RecordBatch | BaseException]] = (
            asyncio.Queue(queue_size))
        self._parts: dict[TopicPartition, _Partition] = {}
        #: Handed to the caller by the latest call, not yet known finished: next offsets.
        self._handed: dict[TopicPartition, int] = {}
        #: Finished by the caller (committable): next offsets.
        self._done: dict[TopicPartition, int] = {}
        #: What the group has stored, as far as this member knows.
        self._committed: dict[TopicPartition, int] = {}
        self._records: list[ConsumerRecord] = []
        #: Items taken off the queue but not yet handed out (see _next_item).
        self._stash: deque[tuple[_Partition, RecordBatch | BaseException]] = deque()
        self._commit_task: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False

    # -- lifecycle

    async def start(self) -> None:
        """Join the group; returns once the first assignment is applied."""
        self._started = True
        await self._member.start(self.request_timeout_s)
        if self.enable_auto_commit:
            self._commit_task = asyncio.get_running_loop().create_task(
                self._auto_commit(), name=f"rillet-autocommit-{self.group_id}")

    async def close(self, *, commit: bool = True, leave: bool | None = None) -> None:
        """Stop reading, commit everything handed to the caller (unless `commit` is False:
        the caller committed exactly what it finished itself), and end the membership.

        `leave` (default: True for dynamic members, False with an `instance_id`) sends
        LeaveGroup so the partitions move at once. A static member closes without it: its
        partitions wait, unread, for the session timeout, and a process that joins again with
        the same instance_id in that time gets them back with no rebalance (a restart).
        """
        if self._closed:
            return
        self._closed = True
        if self._commit_task is not None:
            self._commit_task.cancel()
            await asyncio.gather(self._commit_task, return_exceptions=True)
        parts = list(self._parts.values())
        self._parts = {}
        await asyncio.gather(*(self._stop(p) for p in parts), return_exceptions=True)
        self._finish_handed()
        if commit and self._started and self._member.member_id:
            try:
                await self._commit(self._done, strict=False)
            except RilletError as exc:
                log.warning("group %s: final commit failed: %s", self.group_id, exc)
        await self._member.close(leave=not self._member.instance_id if leave is None
                                 else leave)
        await self._pool.close()

    # -- what the caller sees

    @property
    def member_id(self) -> str:
        return self._member.member_id

    @property
    def generation(self) -> int:
        return self._member.generation

    def assignment(self) -> list[TopicPartition]:
        """Partitions this member owns now (a revoked one leaves once released)."""
        return sorted(self._member.owned)

    def committed(self) -> dict[TopicPartition, int]:
        """Offsets this member has committed (next offset to read), per partition."""
        return dict(self._committed)

    def position(self, tp: TopicPartition) -> int | None:
        """The next offset after the last record handed to the caller, if any."""
        return self._handed.get(tp, self._done.get(tp))

    async def getmany(self, timeout_s: float | None = None) -> list[RecordBatch]:
        """Column batches available now, waiting up to `timeout_s` for the first; [] if none.

        Calling it again marks everything it returned before as finished (committable).
        """
        self._check()
        self._finish_handed()
        out: list[RecordBatch] = []
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        while not out:
            remaining = None if deadline is None else max(deadline - loop.time(), 0)
            got = await self._next_item(remaining)
            if got is None:
                return out
            part, item = got
            while True:
                if self._parts.get(part.tp) is part:  # else revoked meanwhile: drop
                    if isinstance(item, BaseException):
                        if out:
                            self._stash.appendleft((part, item))
                            break
                        raise item
                    self._handed[part.tp] = item.next_offset
                    out.append(item)
                nxt = self._take_nowait()
                if nxt is None:
                    break
                part, item = nxt
        return out

    def _take_nowait(self) -> tuple[_Partition, RecordBatch | BaseException] | None:
        if self._stash:
            return self._stash.popleft()
        if self._queue.empty():
            return None
        return self._queue.get_nowait()

    async def _next_item(self, timeout_s: float | None,
                         ) -> tuple[_Partition, RecordBatch | BaseException] | None:
        """The next queued item, or None after `timeout_s`; a membership failure no rejoin
        fixes is raised here.

        Never loses an item: one taken off the queue just as the wait ends (a timeout, or the
        caller cancelled) is kept in `_stash` for the next call, so no batch is skipped.
        """
        now = self._take_nowait()
        if now is not None:
            return now
        waits: set[asyncio.Future[Any]] = set()
        getter = asyncio.ensure_future(self._queue.get())
        waits.add(getter)
        member_task = self._member._task
        if member_task is not None:
            waits.add(member_task)
        try:
            await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not getter.done():
                getter.cancel()
                await asyncio.gather(getter, return_exceptions=True)
            if getter.done() and not getter.cancelled() and getter.exception() is None:
                item = getter.result()
                if asyncio.current_task() is not None and \
                        asyncio.current_task().cancelling():  # type: ignore[union-attr]
                    self._stash.appendleft(item)
        if getter.cancelled():
            if member_task is not None and member_task.done():
                raise self._member.error or ClientClosedError("group member stopped")
            return None
        return getter.result()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> ConsumerRecord:
        while True:
            self._finish_handed()
            while not self._records:
                got = await self.getmany()
                self._handed.clear()  # records count one by one below
                for b in reversed(got):
                    self._records.extend(reversed(list(b)))
            r = self._records.pop()
            tp = TopicPartition(r.topic, r.partition)
            if tp not in self._parts:
                continue  # revoked after it was queued
            self._handed[tp] = r.offset + 1
            return r

    async def batches(self) -> AsyncIterator[RecordBatch]:
        while True:
            for b in await self.getmany():
                yield b

    def _finish_handed(self) -> None:
        """The caller asked for more (or is closing): what it was handed is finished."""
        for tp, off in self._handed.items():
            if off > self._done.get(tp, -1):
                self._done[tp] = off
        self._handed.clear()

    def _check(self) -> None:
        if self._closed:
            raise ClientClosedError("consumer closed")
        if not self._started:
            raise ClientClosedError("consumer not started")

    # -- committing

    async def commit(self, offsets: Mapping[TopicPartition, int] | None = None) -> None:
        """Commit `offsets` (next offsets to read), or everything handed to the caller so far.

        Raises GroupFencedError when this member no longer owns a partition in the current
        generation (another member has it: its records will be read again there).
        """
        self._check()
        if offsets is None:
            for tp, off in self._handed.items():
                if off > self._done.get(tp, -1):
                    self._done[tp] = off
            offsets = self._done
        await self._commit(offsets, strict=True)

    async def _commit(self, offsets: Mapping[TopicPartition, int], *, strict: bool) -> None:
        mine = {tp: o for tp, o in offsets.items()
                if tp in self._member.owned and o != self._committed.get(tp)}
        if not mine:
            return
        try:
            await commit_offsets(self._pool, self.addresses, self.group_id,
                                 self._member.member_id, self._member.generation, mine,
                                 self.request_timeout_s)
        except GroupFencedError as exc:
            if strict:
                raise
            log.warning("group %s: commit fenced (generation %d): %s", self.group_id,
                        self._member.generation, exc)
            return
        self._committed.update(mine)
        log.debug("group %s: committed %s", self.group_id,
                  {str(tp): o for tp, o in sorted(mine.items())})

    async def _auto_commit(self) -> None:
        while True:
            await asyncio.sleep(self.auto_commit_interval_ms / 1000)
            try:
                await self._commit(self._done, strict=False)
            except RilletError as exc:
                log.warning("group %s: auto-commit failed: %s", self.group_id, exc)

    # -- assignment changes (called by the member, one at a time)

    async def _acquire(self, added: frozenset[TopicPartition]) -> None:
        try:
            stored = await fetch_offsets(self._pool, self.addresses, self.group_id, added,
                                         self.request_timeout_s)
        except RilletError as exc:
            log.warning("group %s: fetching committed offsets failed (%s); using %s",
                        self.group_id, exc, self.auto_offset_reset)
            stored = {}
        await _call_back(self.on_assign, added)
        for tp in sorted(added):
            o = stored.get(tp)
            offset = o.offset if o is not None and o.offset >= 0 else None
            if offset is not None:
                self._committed[tp] = offset
                self._done[tp] = offset
            else:
                self._done.pop(tp, None)
            await self._begin(tp, offset)

    async def _begin(self, tp: TopicPartition, offset: int | None) -> None:
        c = Consumer(self.bootstrap, tp.topic, partitions=[tp.partition],
                     start=self.auto_offset_reset if offset is None else offset,
                     max_bytes=self.max_bytes, max_wait_ms=self.max_wait_ms, queue_size=8,
                     request_timeout_s=self.request_timeout_s,
                     reconnect_timeout_s=self.reconnect_timeout_s,
                     credentials=self._pool.credentials)
        c.share_pool(self._pool)
        part = _Partition(tp, c)
        self._parts[tp] = part
        part.task = asyncio.get_running_loop().create_task(
            self._pump(part), name=f"rillet-group-read-{tp}")

    async def _pump(self, part: _Partition) -> None:
        """Move one partition's batches to the shared queue until it is stopped."""
        try:
            await part.consumer.start()
            while True:
                for b in await part.consumer.getmany(None):
                    await self._queue.put((part, b))
        except asyncio.CancelledError:
            raise
        except OffsetOutOfRangeError as exc:
            # The committed offset fell out of retention: start over from the reset policy.
            log.warning("%s: committed offset out of range (%s); reading from %s",
                        part.tp, exc, self.auto_offset_reset)
            if self._parts.get(part.tp) is part:
                await part.consumer.close()
                await self._begin(part.tp, None)
        except BaseException as exc:
            await self._queue.put((part, exc))

    async def _stop(self, part: _Partition) -> None:
        if part.task is not None:
            part.task.cancel()
            await asyncio.gather(part.task, return_exceptions=True)
        await part.consumer.close()

    async def _release(self, revoked: frozenset[TopicPartition]) -> None:
        parts = [self._parts.pop(tp) for tp in sorted(revoked) if tp in self._parts]
        await asyncio.gather(*(self._stop(p) for p in parts))
        await _call_back(self.on_revoke, revoked)
        if self.enable_auto_commit:
            try:
                await self._commit({tp: o for tp, o in self._done.items() if tp in revoked},
                                   strict=False)
            except RilletError as exc:
                log.warning("group %s: commit on revoke failed: %s", self.group_id, exc)
        for tp in revoked:
            self._handed.pop(tp, None)
            self._done.pop(tp, None)

    async def _drop_lost(self, gone: frozenset[TopicPartition]) -> None:
        parts = [self._parts.pop(tp) for tp in sorted(gone) if tp in self._parts]
        await asyncio.gather(*(self._stop(p) for p in parts))
        await _call_back(self.on_revoke, gone)
        for tp in gone:
            self._handed.pop(tp, None)
            self._done.pop(tp, None)
