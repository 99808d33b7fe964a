"""Consumer groups through real node processes and the generated stubs only (no client
library): join -> assignment -> commit -> fetch -> describe on one node, fencing, bad joins,
and offsets that survive a kill -9 of the metadata leader in a 3-node cluster."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from rillet import batch
from rillet.api.v1 import admin_pb2, common_pb2, groups_pb2, groups_pb2_grpc, log_pb2
from tests.integration.conftest import free_port
from tests.integration.test_metrics import scrape
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

_END = object()


class RawMember:
    """One member's Join stream, driven by hand: send messages, collect assignments."""

    def __init__(self, channel: grpc.aio.Channel, join: groups_pb2.JoinGroup, *,
                 beat_s: float = 0.0) -> None:
        """``beat_s``: heartbeat (with the last assignment) that often; 0: only by hand."""
        self.join = join
        self.requests: asyncio.Queue[Any] = asyncio.Queue()
        self.requests.put_nowait(groups_pb2.GroupRequest(join=join))
        self.assignments: list[groups_pb2.Assignment] = []
        self.error: grpc.aio.AioRpcError | None = None
        self.ended = False
        self.call = groups_pb2_grpc.GroupsStub(channel).Join(self._gen())
        self.task = asyncio.create_task(self._read())
        self.beater = asyncio.create_task(self._beat(beat_s)) if beat_s else None

    async def _beat(self, every_s: float) -> None:
        while not self.ended:
            await asyncio.sleep(every_s)
            if self.assignments:
                self.heartbeat()

    async def _gen(self) -> AsyncIterator[groups_pb2.GroupRequest]:
        while True:
            item = await self.requests.get()
            if item is _END:
                return
            yield item

    async def _read(self) -> None:
        try:
            async for ev in self.call:
                self.assignments.append(ev.assignment)
        except grpc.aio.AioRpcError as exc:
            self.error = exc
        finally:
            self.ended = True

    @property
    def last(self) -> groups_pb2.Assignment:
        return self.assignments[-1]

    def owned(self) -> set[tuple[str, int]]:
        return {(tp.topic, p) for tp in self.last.partitions for p in tp.partitions}

    def heartbeat(self) -> None:
        """Report exactly what the last assignment gave (revoked partitions released)."""
        by: dict[str, list[int]] = {}
        for t, p in sorted(self.owned()):
            by.setdefault(t, []).append(p)
        self.requests.put_nowait(groups_pb2.GroupRequest(heartbeat=groups_pb2.Heartbeat(
            owned=[groups_pb2.TopicPartitions(topic=t, partitions=ps) for t, ps in by.items()])))

    async def close(self) -> None:
        if self.beater is not None:
            self.beater.cancel()
        self.requests.put_nowait(_END)
        self.call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def _create(stubs: Any, name: str, partitions: int) -> None:
    await stubs.admin.CreateTopic(admin_pb2.CreateTopicRequest(name=name, partitions=partitions),
                                  timeout=10)


def _commit(group: str, member: str, generation: int, offsets: dict[tuple[str, int], int]
            ) -> groups_pb2.CommitOffsetsRequest:
    return groups_pb2.CommitOffsetsRequest(
        group=group, member_id=member, generation=generation,
        offsets=[groups_pb2.OffsetCommit(topic=t, partition=p, offset=o, metadata="m")
                 for (t, p), o in offsets.items()])


async def test_single_node_join_assign_commit_fetch_describe(broker_factory, connect) -> None:
    port = free_port()
    node = broker_factory(env={"RILLET_METRICS_LISTEN": f"127.0.0.1:{port}"})
    async with connect(node) as stubs:
        await _single_node_flow(stubs, port)


async def _single_node_flow(stubs: Any, metrics_port: int) -> None:
    await _create(stubs, "orders", 4)
    md = await stubs.metadata.GetMetadata(admin_pb2.MetadataRequest(), timeout=10)
    assert md.metadata_leader_id == 0
    now = int(time.time() * 1000)
    for p in range(4):
        values = [f"{p}-{i}".encode() for i in range(10)]
        async with asyncio.timeout(20):
            _ = [r async for r in stubs.produce.Produce(iter([log_pb2.ProduceRequest(
                topic="orders", partition=p,
                batch=batch.encode(values, timestamps_ms=[now - 5000] * 10))]))]
    groups = groups_pb2_grpc.GroupsStub(stubs.channel)
    a = RawMember(stubs.channel, groups_pb2.JoinGroup(group="g1", topics=["orders"],
                                                      client_id="a"))
    try:
        await wait_for(lambda: a.assignments and len(a.owned()) == 4, "a owns all 4")
        assert a.last.member_id and a.last.heartbeat_interval_ms > 0
        b = RawMember(stubs.channel, groups_pb2.JoinGroup(group="g1", topics=["orders"],
                                                          client_id="b"))
        # a is asked to give two up; it heartbeats without them; then b gets them.
        await wait_for(lambda: a.assignments and len(a.owned()) == 2, "a revoked to 2")
        assert not b.assignments or not b.owned()
        a.heartbeat()
        await wait_for(lambda: b.assignments and len(b.owned()) == 2, "b gets 2")
        assert a.owned().isdisjoint(b.owned())
        gen_a, gen_b = a.last.generation, b.last.generation
        # Commits: own partitions accepted; another member's partition FENCED.
        mine = dict.fromkeys(sorted(a.owned()), 7)
        await groups.CommitOffsets(_commit("g1", a.last.member_id, gen_a, mine), timeout=10)
        theirs = dict.fromkeys(sorted(b.owned()), 3)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await groups.CommitOffsets(_commit("g1", a.last.member_id, gen_a, theirs),
                                       timeout=10)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "ERROR_CODE_FENCED" in (err.value.details() or "")
        await groups.CommitOffsets(_commit("g1", b.last.member_id, gen_b, theirs), timeout=10)
        # An outsider commit while members exist: GROUP_NOT_EMPTY.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await groups.CommitOffsets(_commit("g1", "", -1, theirs), timeout=10)
        assert "ERROR_CODE_GROUP_NOT_EMPTY" in (err.value.details() or "")

        fetched = await groups.FetchOffsets(groups_pb2.FetchOffsetsRequest(group="g1"),
                                            timeout=10)
        got = {(o.topic, o.partition): o.offset for o in fetched.offsets}
        assert got == {**mine, **theirs}
        assert all(o.metadata == "m" and o.commit_time_ms > 0 for o in fetched.offsets)

        desc = await stubs.admin.DescribeGroup(groups_pb2.DescribeGroupRequest(group="g1"),
                                               timeout=10)
        assert desc.state == "stable" and len(desc.members) == 2
        lag = {(p.topic, p.partition): p for p in desc.partitions}
        assert len(lag) == 4
        for tp, p in lag.items():
            expected = 10 - got[tp]
            assert p.high_watermark == 10 and p.lag_offsets == expected
            assert 4000 <= p.lag_ms <= 60_000, p
            assert p.owner in (a.last.member_id, b.last.member_id)
        # DescribeGroup refreshed the group's metrics.
        m = scrape(metrics_port)
        assert m[("rillet_group_members", (("group", "g1"),))] == 2
        for (t, p), expected in got.items():
            labels = (("group", "g1"), ("partition", str(p)), ("topic", t))
            assert m[("rillet_group_lag_offsets", labels)] == 10 - expected
            assert 4.0 <= m[("rillet_group_lag_seconds", labels)] <= 60.0
        listed = await stubs.admin.ListGroups(groups_pb2.ListGroupsRequest(), timeout=10)
        assert [(g.group, g.members) for g in listed.groups] == [("g1", 2)]

        # Reset refused while members exist; after they leave, dry run then reset.
        reset = groups_pb2.ResetGroupOffsetsRequest(
            group="g1", topic="orders", to=common_pb2.Position(
                boundary=common_pb2.BOUNDARY_EARLIEST))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stubs.admin.ResetGroupOffsets(reset, timeout=10)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        a.requests.put_nowait(groups_pb2.GroupRequest(leave=groups_pb2.LeaveGroup()))
        await wait_for(lambda: a.ended, "a's stream ends after LeaveGroup")
        assert a.error is None
        await b.close()
        await wait_for(lambda: b.ended, "b closed")

        async def empty() -> bool:
            d = await stubs.admin.DescribeGroup(groups_pb2.DescribeGroupRequest(group="g1"),
                                                timeout=10)
            return d.state == "empty"
        for _ in range(200):
            if await empty():
                break
            await asyncio.sleep(0.05)
        assert await empty()
        reset.dry_run = True
        dry = await stubs.admin.ResetGroupOffsets(reset, timeout=10)
        assert {o.offset for o in dry.offsets} == {0}
        fetched = await groups.FetchOffsets(groups_pb2.FetchOffsetsRequest(group="g1"),
                                            timeout=10)
        assert {(o.topic, o.partition): o.offset for o in fetched.offsets} == got
        reset.dry_run = False
        reset.to.CopyFrom(common_pb2.Position(offset=99))  # clamped to the high watermark
        done = await stubs.admin.ResetGroupOffsets(reset, timeout=10)
        assert {o.offset for o in done.offsets} == {10}
        # By time: the first record at or after it (all records carry now - 5000).
        reset.to.CopyFrom(common_pb2.Position(timestamp_ms=now - 6000))
        reset.partitions[:] = [1]
        done = await stubs.admin.ResetGroupOffsets(reset, timeout=10)
        assert [(o.partition, o.offset) for o in done.offsets] == [(1, 0)]
        reset.to.CopyFrom(common_pb2.Position(timestamp_ms=now + 60_000))
        done = await stubs.admin.ResetGroupOffsets(reset, timeout=10)
        assert [(o.partition, o.offset) for o in done.offsets] == [(1, 10)]
        fetched = await groups.FetchOffsets(groups_pb2.FetchOffsetsRequest(
            group="g1", partitions=[groups_pb2.TopicPartitions(topic="orders",
                                                               partitions=[0, 1])]), timeout=10)
        assert [(o.partition, o.offset) for o in fetched.offsets] == [(0, 10), (1, 10)]
        await _static_member_comes_back(stubs)
        await stubs.admin.DeleteGroup(groups_pb2.DeleteGroupRequest(group="g1"), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stubs.admin.DescribeGroup(groups_pb2.DescribeGroupRequest(group="g1"),
                                            timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await a.close()


BAD_FIRST_MESSAGES = [
    (groups_pb2.GroupRequest(heartbeat=groups_pb2.Heartbeat()),
     grpc.StatusCode.INVALID_ARGUMENT),
    (groups_pb2.GroupRequest(join=groups_pb2.JoinGroup(group="", topics=["t"])),
     grpc.StatusCode.INVALID_ARGUMENT),
    (groups_pb2.GroupRequest(join=groups_pb2.JoinGroup(group="g", topics=[])),
     grpc.StatusCode.INVALID_ARGUMENT),
    (groups_pb2.GroupRequest(join=groups_pb2.JoinGroup(group="g", topics=["nope"])),
     grpc.StatusCode.NOT_FOUND),
    (groups_pb2.GroupRequest(join=groups_pb2.JoinGroup(group="g", topics=["t"],
                                                       session_timeout_ms=5)),
     grpc.StatusCode.INVALID_ARGUMENT),
    (groups_pb2.GroupRequest(join=groups_pb2.JoinGroup(group="g", topics=["t"],
                                                       rebalance_timeout_ms=10**7)),
     grpc.StatusCode.INVALID_ARGUMENT),
]


async def test_bad_joins_end_the_stream_with_a_clear_status(stubs) -> None:
    await _create(stubs, "t", 1)
    for first, code in [*BAD_FIRST_MESSAGES, (None, grpc.StatusCode.INVALID_ARGUMENT)]:
        call = groups_pb2_grpc.GroupsStub(stubs.channel).Join(
            iter([first] if first is not None else []))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async with asyncio.timeout(10):
                async for _ev in call:
                    pass
        assert err.value.code() == code, (first, err.value.details())
        assert err.value.details()
    # A heartbeat after the join is fine, anything else after it ends the stream.
    m = RawMember(stubs.channel, groups_pb2.JoinGroup(group="g", topics=["t"]))
    await wait_for(lambda: m.assignments, "assignment")
    m.requests.put_nowait(groups_pb2.GroupRequest(join=groups_pb2.JoinGroup(group="g")))
    await wait_for(lambda: m.ended, "stream ends")
    assert m.error is not None and m.error.code() == grpc.StatusCode.INVALID_ARGUMENT
    await m.close()
    # The node is still fine.
    await stubs.admin.ListTopics(admin_pb2.ListTopicsRequest(), timeout=5)


async def _static_member_comes_back(stubs: Any) -> None:
    """A static member's stream ends; within its session it is listed disconnected with its
    partitions; the same instance id joining again gets the same member id, partitions and
    generation."""
    join = groups_pb2.JoinGroup(group="static", topics=["orders"], instance_id="pod-0",
                                session_timeout_ms=20_000)
    m = RawMember(stubs.channel, join)
    await wait_for(lambda: m.assignments and len(m.owned()) == 4, "static member owns 4")
    first = m.last
    await m.close()

    async def disconnected() -> bool:
        d = await stubs.admin.DescribeGroup(groups_pb2.DescribeGroupRequest(group="static"),
                                            timeout=10)
        return len(d.members) == 1 and d.members[0].disconnected
    for _ in range(200):
        if await disconnected():
            break
        await asyncio.sleep(0.02)
    assert await disconnected()
    again = RawMember(stubs.channel, join)
    try:
        await wait_for(lambda: again.assignments, "static member's assignment")
        assert again.last.member_id == first.member_id
        assert again.last.generation == first.generation
        assert again.owned() == {("orders", p) for p in range(4)}
    finally:
        await again.close()


@pytest.mark.slow
async def test_offsets_and_generation_survive_restart(broker, connect) -> None:
    async with connect(broker) as stubs:
        await _create(stubs, "t", 2)
        m = RawMember(stubs.channel, groups_pb2.JoinGroup(group="g", topics=["t"]))
        await wait_for(lambda: m.assignments and len(m.owned()) == 2, "m owns both")
        gen = m.last.generation
        await groups_pb2_grpc.GroupsStub(stubs.channel).CommitOffsets(
            _commit("g", m.last.member_id, gen, {("t", 0): 5, ("t", 1): 6}), timeout=10)
        await m.close()
    broker.kill()
    broker.start()
    async with connect(broker) as stubs:
        fetched = await groups_pb2_grpc.GroupsStub(stubs.channel).FetchOffsets(
            groups_pb2.FetchOffsetsRequest(group="g"), timeout=10)
        assert {(o.topic, o.partition): o.offset for o in fetched.offsets} == {
            ("t", 0): 5, ("t", 1): 6}
        m = RawMember(stubs.channel, groups_pb2.JoinGroup(group="g", topics=["t"]))
        try:
            await wait_for(lambda: m.assignments and len(m.owned()) == 2, "m owns both again")
            assert m.last.generation > gen
        finally:
            await m.close()


async def _coordinator(cluster: Any) -> int | None:
    """The metadata leader (the group coordinator) as every running node reports it."""
    leaders = set()
    for n in cluster.running():
        resp = await cluster.metadata(node=n.node_id)
        leaders.add(resp.metadata_leader_id)
    return leaders.pop() if len(leaders) == 1 and -1 not in leaders else None


async def test_cluster_commits_survive_kill_of_metadata_leader_and_stale_commit_is_fenced(
        cluster_factory) -> None:
    cluster = await cluster_factory(3)
    await cluster.create_topic("t", 4)
    coord = await cluster.poll(lambda: _coordinator(cluster), "one metadata leader", 20.0)
    other = next(n.node_id for n in cluster.running() if n.node_id != coord)
    # Lag of partitions the coordinator holds no replica of (replication factor 1): read
    # through its read path.
    await cluster.create_topic("r", 3, replication_factor=1)
    old = int(time.time() * 1000) - 8000
    async with cluster.stubs(other) as stubs:
        async with asyncio.timeout(30):
            _ = [r async for r in stubs.produce.Produce(iter([
                log_pb2.ProduceRequest(topic="r", partition=p, batch=batch.encode(
                    [b"x"] * 5, timestamps_ms=[old] * 5)) for p in range(3)]))]
        await groups_pb2_grpc.GroupsStub(stubs.channel).CommitOffsets(
            _commit("lagger", "", -1, {("r", p): 2 for p in range(3)}), timeout=20)

        async def lagging() -> Any:
            desc = await stubs.admin.DescribeGroup(
                groups_pb2.DescribeGroupRequest(group="lagger"), timeout=20)
            got = [(p.partition, p.high_watermark, p.lag_offsets) for p in desc.partitions]
            assert got == [(0, 5, 3), (1, 5, 3), (2, 5, 3)], desc.partitions
            return desc
        desc = await cluster.poll(lagging, "lag of every partition of r", 15.0)
        assert all(7000 <= p.lag_ms <= 60_000 for p in desc.partitions), desc.partitions
    async with cluster.stubs(other) as stubs:
        groups = groups_pb2_grpc.GroupsStub(stubs.channel)
        # Through a node that does not coordinate: the Join stream is proxied.
        m = RawMember(stubs.channel, groups_pb2.JoinGroup(group="g", topics=["t"],
                                                          client_id="m"), beat_s=1.0)
        try:
            await wait_for(lambda: m.assignments and len(m.owned()) == 4, "m owns all 4",
                           timeout_s=20)
            # A second member through the same proxy takes half; when its process goes away
            # (its channel drops), the proxy ends the upstream stream at once: its partitions
            # come back well within the 10 s session timeout.
            async with grpc.aio.insecure_channel(cluster.node(other).address) as ch2:
                m2 = RawMember(ch2, groups_pb2.JoinGroup(group="g", topics=["t"]), beat_s=1.0)
                await wait_for(lambda: m2.assignments and len(m2.owned()) == 2, "m2 gets 2",
                               timeout_s=20)
            started = time.monotonic()
            await wait_for(lambda: len(m.owned()) == 4, "m owns all 4 again", timeout_s=20)
            assert time.monotonic() - started < 5.0
            await m2.close()
            member_id, gen = m.last.member_id, m.last.generation
            committed = {("t", p): 10 + p for p in range(4)}
            await groups.CommitOffsets(_commit("g", member_id, gen, committed), timeout=20)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await groups.CommitOffsets(_commit("g", member_id, gen - 1, committed),
                                           timeout=20)
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "ERROR_CODE_FENCED" in (err.value.details() or "")
            cluster.node(coord).kill()
            # The member's stream ends: the coordinator is gone.
            await wait_for(lambda: m.ended, "member stream ends after the kill", timeout_s=20)
            assert m.error is not None and m.error.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            await m.close()

    async def fetched() -> dict[tuple[str, int], int] | None:
        async with cluster.stubs(other) as s:
            resp = await groups_pb2_grpc.GroupsStub(s.channel).FetchOffsets(
                groups_pb2.FetchOffsetsRequest(group="g"), timeout=5)
        return {(o.topic, o.partition): o.offset for o in resp.offsets}
    assert await cluster.poll(fetched, "offsets from the new coordinator", 30.0) == committed

    async with cluster.stubs(other) as stubs:
        groups = groups_pb2_grpc.GroupsStub(stubs.channel)
        # The member comes back with what it owned: it keeps it, in a newer generation.
        m = RawMember(stubs.channel, groups_pb2.JoinGroup(
            group="g", topics=["t"], member_id=member_id,
            owned=[groups_pb2.TopicPartitions(topic="t", partitions=[0, 1, 2, 3])]), beat_s=1.0)
        try:
            await wait_for(lambda: m.assignments and len(m.owned()) == 4, "m owns all 4 again",
                           timeout_s=20)
            assert m.last.member_id == member_id and m.last.generation > gen
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await groups.CommitOffsets(_commit("g", member_id, gen, committed), timeout=20)
            assert "ERROR_CODE_FENCED" in (err.value.details() or "")
            await groups.CommitOffsets(
                _commit("g", member_id, m.last.generation, {("t", 0): 50}), timeout=20)
            desc = await stubs.admin.DescribeGroup(
                groups_pb2.DescribeGroupRequest(group="g"), timeout=20)
            assert desc.generation == m.last.generation and len(desc.members) == 1
            assert {p.partition: p.committed_offset for p in desc.partitions} == {
                0: 50, 1: 11, 2: 12, 3: 13}
        finally:
            await m.close()

