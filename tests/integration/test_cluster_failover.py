"""Three real nodes, one of them killed, stopped or restarted under acks=all traffic.

The promise under test (issue 4): a minority of nodes may crash at any moment and no
acknowledged batch is lost. A `Workload` writes unique values to every partition, one batch
at a time per partition, each to the partition's current leader with acks=all; it never
resends a value (a batch whose answer was lost counts as "unknown", and the next attempt
carries new values), so any value that shows up twice in a log is the broker's doing.
Afterwards each partition is read back from its leader and must hold every acknowledged
value exactly once, at the offset its acknowledgement named, in acknowledgement order, with
no offset used twice.

Every case runs in `make test`; the longer fault runs (follower kill, SIGTERM, the full 30 s
catch-up, the client Producer through faults) carry the `chaos` mark so `make chaos` selects
them alone.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from rillet import batch
from rillet.api.v1 import common_pb2, log_pb2

pytestmark = pytest.mark.integration
log = logging.getLogger(__name__)

PARTITIONS = 6
#: How long one produce answer may take before the attempt counts as lost (unknown outcome).
ANSWER_TIMEOUT_S = 5.0
#: How long the workload may go without progress on a partition before a wait fails.
PROGRESS_TIMEOUT_S = 30.0


def make_batch(values: list[bytes]) -> bytes:
    return batch.encode(values, timestamps_ms=[int(time.time() * 1000)] * len(values))


@dataclass
class Ack:
    base_offset: int
    values: list[bytes]


@dataclass
class Workload:
    """One producer loop per partition: a batch, wait for its answer, the next batch.

    Waiting for each answer keeps the acknowledgement order equal to the send order, so the
    check can demand offsets that grow with it. Leaders come from GetMetadata of a running
    node; a NOT_LEADER answer, a broken stream or a timeout drops the cached leader.
    """

    cluster: Any
    topic: str
    partitions: int = PARTITIONS
    values_per_batch: int = 4
    acked: dict[int, list[Ack]] = field(default_factory=dict)
    unknown: collections.Counter[int] = field(default_factory=collections.Counter)
    failures: collections.Counter[str] = field(default_factory=collections.Counter)
    _leaders: dict[int, int] = field(default_factory=dict)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.acked = {p: [] for p in range(self.partitions)}

    def counts(self) -> list[int]:
        return [len(self.acked[p]) for p in range(self.partitions)]

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="workload")

    async def stop(self) -> None:
        self._stop.set()
        assert self._task is not None
        await asyncio.wait_for(self._task, ANSWER_TIMEOUT_S + 10)

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for p in range(self.partitions):
                tg.create_task(self._partition_loop(p), name=f"produce-{p}")

    async def _leader(self, p: int) -> int | None:
        cluster = self.cluster
        leader = self._leaders.get(p)
        if leader is not None and cluster.node(leader).running:
            return leader
        try:
            resp = await cluster.metadata([self.topic], timeout_s=1.0)
        except AssertionError:
            return None
        for tm in resp.topics:
            for pm in tm.partitions:
                if pm.leader_id >= 0 and cluster.node(pm.leader_id).running:
                    self._leaders[pm.partition] = pm.leader_id
        return self._leaders.get(p)

    async def _partition_loop(self, p: int) -> None:
        seq = 0
        while not self._stop.is_set():
            leader = await self._leader(p)
            if leader is None:
                self.failures["no leader in metadata"] += 1
                await asyncio.sleep(0.05)
                continue
            try:
                async with self.cluster.stubs(leader) as s:
                    call = s.produce.Produce()
                    try:
                        while not self._stop.is_set():
                            values = [f"p{p}-{seq}-{j}".encode() for j in
                                      range(self.values_per_batch)]
                            seq += 1
                            await call.write(log_pb2.ProduceRequest(
                                topic=self.topic, partition=p, batch=make_batch(values),
                                acks=log_pb2.ACKS_ALL))
                            try:
                                async with asyncio.timeout(ANSWER_TIMEOUT_S):
                                    resp = await call.read()
                            except TimeoutError:
                                self.unknown[p] += 1
                                self.failures[f"no answer from node {leader} in "
                                              f"{ANSWER_TIMEOUT_S}s"] += 1
                                break
                            if resp is grpc.aio.EOF:
                                self.unknown[p] += 1
                                self.failures["stream ended"] += 1
                                break
                            if resp.HasField("error"):
                                self.unknown[p] += 1
                                self.failures[common_pb2.ErrorCode.Name(resp.error.code)] += 1
                                assert resp.error.retriable, resp.error
                                break
                            self.acked[p].append(Ack(resp.base_offset, values))
                    finally:
                        call.cancel()
            except grpc.aio.AioRpcError as exc:
                self.unknown[p] += 1
                self.failures[f"rpc {exc.code().name}"] += 1
            self._leaders.pop(p, None)
            await asyncio.sleep(0.02)

    async def wait_progress(self, more: int, what: str, timeout_s: float = PROGRESS_TIMEOUT_S
                            ) -> None:
        """Until every partition has `more` acknowledgements beyond its count now."""
        target = [c + more for c in self.counts()]

        async def check() -> bool | None:
            assert self._task is not None and not self._task.done(), "workload task ended"
            return True if all(c >= t for c, t in zip(self.counts(), target,
                                                      strict=True)) else None
        try:
            await self.cluster.poll(check, f"{more} more acks per partition {what}",
                                    timeout_s)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nacks per partition {self.counts()} (wanted "
                                 f"{target}); failures {dict(self.failures)}") from None


async def read_partition(cluster, topic: str, p: int, leader: int) -> list[batch.Record]:
    """Every record of partition `p` from earliest to the high watermark, from its leader."""
    out: list[batch.Record] = []
    async with cluster.stubs(leader) as s, asyncio.timeout(60):
        request = log_pb2.ReplayRequest(
            topic=topic, partitions=[p],
            **{"from": common_pb2.Position(boundary=common_pb2.BOUNDARY_EARLIEST)})
        async for resp in s.replay.Replay(request):
            for pd in resp.partitions:
                out.extend(batch.decode_range(pd.batches, pd.first_offset, pd.end_offset))
    return out


def check_partition(p: int, acks: list[Ack], records: list[batch.Record]) -> None:
    """The acknowledged values of one partition, against what its log holds."""
    offsets = [r.offset for r in records]
    assert offsets == list(range(offsets[0], offsets[0] + len(offsets))) if offsets else True, \
        f"partition {p}: offsets not contiguous and unique"
    dupes = [v for v, n in collections.Counter(r.value for r in records).items() if n > 1]
    assert not dupes, f"partition {p}: values stored twice: {dupes[:5]}"
    at = {r.offset: r.value for r in records}
    previous_end = -1
    for i, ack in enumerate(acks):
        assert ack.base_offset >= previous_end, (
            f"partition {p}: ack {i} at offset {ack.base_offset} is not after the previous "
            f"ack's end {previous_end}")
        for j, value in enumerate(ack.values):
            got = at.get(ack.base_offset + j)
            assert got == value, (f"partition {p}: offset {ack.base_offset + j} holds {got!r}, "
                                  f"acknowledged as {value!r}")
        previous_end = ack.base_offset + len(ack.values)


async def wait_high_watermarks(cluster, topic: str, workload: Workload,
                               timeout_s: float = 30.0) -> dict[int, int]:
    """Until each partition's leader reports a high watermark past its last acknowledged
    batch (a new leader learns the commit point with its first entry), returns the leaders."""
    leaders = await cluster.wait_leaders(topic, timeout_s=timeout_s)
    need = {p: (acks[-1].base_offset + len(acks[-1].values) if acks else 0)
            for p, acks in workload.acked.items()}

    async def check() -> dict[int, int] | None:
        current = await cluster.wait_leaders(topic, timeout_s=timeout_s)
        for leader in set(current.values()):
            desc = await cluster.describe(leader, topic)
            for pd in desc.partitions:
                if current[pd.partition] == leader and pd.high_watermark < need[pd.partition]:
                    return None
        return current
    leaders = await cluster.poll(check, f"high watermarks of {topic} to reach {need}",
                                 timeout_s)
    return leaders


async def verify(cluster, workload: Workload) -> None:
    leaders = await wait_high_watermarks(cluster, workload.topic, workload)
    for p in range(workload.partitions):
        records = await read_partition(cluster, workload.topic, p, leaders[p])
        check_partition(p, workload.acked[p], records)
    log.info("verified: acks per partition %s, unknown outcomes %s, failures %s",
             workload.counts(), dict(workload.unknown), dict(workload.failures))


@contextlib.asynccontextmanager
async def running(workload: Workload) -> AsyncIterator[Workload]:
    workload.start()
    try:
        yield workload
    finally:
        if not workload._stop.is_set():
            with contextlib.suppress(Exception):
                await workload.stop()


async def fault_run(cluster, fault: str, acks_between: int) -> None:
    topic = f"f-{fault}"
    await cluster.create_topic(topic, PARTITIONS, 3)
    wl = Workload(cluster, topic)
    async with running(wl):
        await wl.wait_progress(acks_between, "before the fault")
        leaders = await cluster.wait_leaders(topic)
        if fault.startswith("leader"):
            victim = leaders[0]
        else:
            victim = next(n.node_id for n in cluster.nodes if n.node_id != leaders[0])
        node = cluster.node(victim)
        log.info("%s: node %d (partition 0 led by %d)", fault, victim, leaders[0])
        if fault.endswith("sigterm"):
            status = await asyncio.to_thread(node.stop)
            assert status == 0, f"SIGTERM exit status {status}\n{node.log_text()[-3000:]}"
        else:
            await asyncio.to_thread(node.kill)
        await wl.wait_progress(acks_between, f"with node {victim} down")
        await asyncio.to_thread(node.start)
        await wl.wait_progress(acks_between, f"after node {victim} restarted")
        await wl.stop()
    assert sum(wl.counts()) >= 3 * acks_between * PARTITIONS
    await verify(cluster, wl)


async def test_leader_kill_9_under_acks_all_loses_nothing(cluster) -> None:
    await fault_run(cluster, "leader-kill9", acks_between=15)


@pytest.mark.chaos
@pytest.mark.parametrize("fault", ["leader-kill9", "follower-kill9", "leader-sigterm",
                                   "follower-sigterm"])
async def test_fault_under_acks_all_loses_nothing(cluster, fault: str) -> None:
    await fault_run(cluster, fault, acks_between=100)


async def replicas_in_sync(cluster, topic: str, node_id: int) -> bool | None:
    """True once `node_id`'s replica of every partition has its leader's high watermark and
    size (the traffic has stopped, so the leader's figures hold still)."""
    leaders = await cluster.wait_leaders(topic)
    mine = {p.partition: p for p in (await cluster.describe(node_id, topic)).partitions}
    for leader in set(leaders.values()):
        for pd in (await cluster.describe(leader, topic)).partitions:
            if leaders[pd.partition] != leader:
                continue
            own = mine[pd.partition]
            if (own.high_watermark, own.size_bytes) != (pd.high_watermark, pd.size_bytes):
                return None
    return True


@pytest.mark.parametrize("traffic_s", [
    pytest.param(3.0, id="3s"), pytest.param(30.0, id="30s", marks=pytest.mark.chaos)])
async def test_restarted_node_catches_up_and_can_lead_again(cluster, traffic_s: float) -> None:
    topic = "catch-up"
    partitions = 3
    await cluster.create_topic(topic, partitions, 3)
    wl = Workload(cluster, topic, partitions=partitions)
    victim = cluster.node(2)
    async with running(wl):
        await wl.wait_progress(10, "before the kill")
        await asyncio.to_thread(victim.kill)
        before = sum(wl.counts())
        # The scenario is "traffic for traffic_s while the node is down": a duration, not a
        # guess at how long something takes; progress is checked after it.
        await asyncio.sleep(traffic_s)
        assert sum(wl.counts()) > before, f"no acks while node 2 was down: {wl.failures}"
        await asyncio.to_thread(victim.start)
        await wl.wait_progress(10, "after the restart")
        await wl.stop()
    await cluster.poll(lambda: replicas_in_sync(cluster, topic, 2),
                       "node 2's replicas to reach their leaders' high watermark and size", 60.0)
    await verify(cluster, wl)

    # Can lead again: kill -9 the other nodes' leaders (one at a time, restarting each) until
    # an election makes node 2 the leader of some partition.
    for _ in range(12):
        leaders = await cluster.wait_leaders(topic)
        if 2 in leaders.values():
            break
        busiest = collections.Counter(leaders.values()).most_common(1)[0][0]
        await asyncio.to_thread(cluster.node(busiest).kill)
        await cluster.wait_leaders(topic, exclude=[busiest])
        await asyncio.to_thread(cluster.node(busiest).start)
    leaders = await cluster.wait_leaders(topic)
    led = [p for p, n in leaders.items() if n == 2]
    assert led, f"node 2 never became a leader: {leaders}"

    # And it serves as one: a batch acknowledged by node 2 is read back from it.
    async with cluster.stubs(2) as s:
        values = [b"led-by-2-a", b"led-by-2-b"]
        call = s.produce.Produce()
        await call.write(log_pb2.ProduceRequest(topic=topic, partition=led[0],
                                                batch=make_batch(values), acks=log_pb2.ACKS_ALL))
        resp = await asyncio.wait_for(call.read(), ANSWER_TIMEOUT_S)
        call.cancel()
    assert not resp.HasField("error"), resp.error
    records = await read_partition(cluster, topic, led[0], 2)
    check_partition(led[0], [*wl.acked[led[0]], Ack(resp.base_offset, values)], records)


class ClientWorkload:
    """The Python client's idempotent Producer under the same faults: it retries what it
    did not hear back about, so here every value sent must end up stored exactly once, in
    the order sent, and every send must succeed."""

    def __init__(self, topic: str, partitions: int = PARTITIONS, max_outstanding: int = 500
                 ) -> None:
        self.topic = topic
        self.partitions = partitions
        self.max_outstanding = max_outstanding
        self.sent: dict[int, list[bytes]] = {p: [] for p in range(partitions)}
        self.acked: dict[int, list[tuple[int, bytes]]] = {p: [] for p in range(partitions)}
        self.errors: list[BaseException] = []
        self._done = 0
        self._sent_total = 0
        self._stop = asyncio.Event()
        self._room = asyncio.Event()

    def counts(self) -> list[int]:
        return [len(self.acked[p]) for p in range(self.partitions)]

    def _on_done(self, p: int, value: bytes, fut: Any) -> None:
        self._done += 1
        if self._sent_total - self._done <= self.max_outstanding // 2:
            self._room.set()
        exc = fut.exception()
        if exc is not None:
            self.errors.append(exc)
        else:
            self.acked[p].append((fut.result().offset, value))

    async def run(self, producer: Any) -> None:
        i = 0
        while not self._stop.is_set():
            p = i % self.partitions
            value = f"c{p}-{i}".encode()
            fut = await producer.send(self.topic, value, partition=p)
            self.sent[p].append(value)
            fut.add_done_callback(lambda f, p=p, v=value: self._on_done(p, v, f))
            i += 1
            self._sent_total = i
            # A steady trickle, not a flood: the faults matter here, not the throughput.
            if i - self._done > self.max_outstanding:
                self._room.clear()
                await self._room.wait()
            if i % 20 == 0:
                await asyncio.sleep(0.002)

    async def wait_progress(self, cluster: Any, more: int, what: str) -> None:
        target = [c + more for c in self.counts()]

        async def check() -> bool | None:
            assert not self.errors, f"sends failed: {self.errors[:3]}"
            return True if all(c >= t for c, t in zip(self.counts(), target,
                                                      strict=True)) else None
        await cluster.poll(check, f"{more} more acks per partition {what} (now "
                           f"{self.counts()})", PROGRESS_TIMEOUT_S)


def first_difference(a: list[bytes], b: list[bytes]) -> int | None:
    for i in range(min(len(a), len(b))):
        if a[i] != b[i]:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


@pytest.mark.chaos
@pytest.mark.parametrize("fault", ["leader-kill9", "leader-sigterm", "follower-kill9"])
async def test_idempotent_producer_stores_every_value_once_through_faults(cluster,
                                                                          fault: str) -> None:
    from rillet.client import Producer

    topic = f"c-{fault}"
    await cluster.create_topic(topic, PARTITIONS, 3)
    wl = ClientWorkload(topic)
    async with Producer(cluster.bootstrap, acks="all", request_timeout_s=5.0) as producer:
        task = asyncio.create_task(wl.run(producer))
        try:
            await wl.wait_progress(cluster, 200, "before the fault")
            leaders = await cluster.wait_leaders(topic)
            victim = leaders[0] if fault.startswith("leader") else next(
                n.node_id for n in cluster.nodes if n.node_id != leaders[0])
            node = cluster.node(victim)
            if fault.endswith("sigterm"):
                assert await asyncio.to_thread(node.stop) == 0
            else:
                await asyncio.to_thread(node.kill)
            await wl.wait_progress(cluster, 200, f"with node {victim} down")
            await asyncio.to_thread(node.start)
            await wl.wait_progress(cluster, 200, f"after node {victim} restarted")
        finally:
            wl._stop.set()
            wl._room.set()
            await task
        await producer.flush(timeout_s=60)
    assert not wl.errors, f"{len(wl.errors)} sends failed: {wl.errors[:3]}"
    assert [len(wl.acked[p]) for p in range(PARTITIONS)] == [
        len(wl.sent[p]) for p in range(PARTITIONS)]

    async def caught_up() -> dict[int, int] | None:
        current = await cluster.wait_leaders(topic)
        for leader in set(current.values()):
            for pd in (await cluster.describe(leader, topic)).partitions:
                if current[pd.partition] == leader and \
                        pd.high_watermark < len(wl.sent[pd.partition]):
                    return None
        return current
    leaders = await cluster.poll(caught_up, "every sent value to be committed", 30.0)
    for p in range(PARTITIONS):
        records = await read_partition(cluster, topic, p, leaders[p])
        values = [r.value for r in records]
        assert values == wl.sent[p], (
            f"partition {p}: {len(values)} stored, {len(wl.sent[p])} sent; first difference at "
            f"{first_difference(values, wl.sent[p])}")
        at = {r.offset: r.value for r in records}
        for offset, value in wl.acked[p]:
            assert offset == -1 or at[offset] == value, (p, offset, value)
    log.info("client workload: %s records per partition, faults fine", wl.counts())
