"""GroupConsumer against an in-process fake coordinator (fake_groups.py): it reads its
assigned partitions from the committed offsets, gives revoked partitions up before they move,
commits what it handed out, rejoins after the stream breaks, and is fenced like the proto says."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from rillet.api.v1 import groups_pb2_grpc
from rillet.client import Consumer
from rillet.client import group as group_module
from rillet.client.errors import GroupFencedError
from rillet.client.group import GroupConsumer, TopicPartition
from tests.unit.client.fake_cluster import FakeCluster, stop_cluster
from tests.unit.client.fake_groups import FakeGroups, start_group_cluster
from tests.waiting import wait_for

T = "t"


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeCluster, FakeGroups]]:
    cluster, groups = await start_group_cluster(partitions=4)
    for p in range(4):
        cluster.store(p, [b"%d-%d" % (p, i) for i in range(5)])
    yield cluster, groups
    await stop_cluster(cluster)


def _member(cluster: FakeCluster, **kw: object) -> GroupConsumer:
    c = Consumer(cluster.nodes[0].address, T, group_id="g", auto_offset_reset="earliest",
                 auto_commit_interval_ms=50, **kw)
    assert isinstance(c, GroupConsumer)
    return c


async def _drain(c: GroupConsumer, n: int, got: list[tuple[int, int]]) -> None:
    while len(got) < n:
        for b in await c.getmany(5.0):
            got.extend((r.partition, r.offset) for r in b)


def _tps(*ps: int) -> list[TopicPartition]:
    return [TopicPartition(T, p) for p in ps]


async def test_single_member_owns_everything_and_starts_at_committed_offsets(
        fake: tuple[FakeCluster, FakeGroups]) -> None:
    cluster, groups = fake
    groups.offsets[(T, 0)] = 3
    assigned: list[list[TopicPartition]] = []
    async with _member(cluster, on_assign=assigned.append) as c:
        assert c.assignment() == _tps(0, 1, 2, 3)
        assert assigned == [_tps(0, 1, 2, 3)]
        got: list[tuple[int, int]] = []
        await _drain(c, 17, got)
        assert sorted(o for p, o in got if p == 0) == [3, 4]
        for p in (1, 2, 3):
            assert sorted(o for q, o in got if q == p) == list(range(5))
        # What was handed counts as finished once the caller asks again.
        assert await c.getmany(0.05) == []
        await wait_for(lambda: all(groups.offsets.get((T, p)) == 5 for p in range(4)),
                       "auto-commit of everything handed out", 5.0)
    assert not groups.members, "close() leaves the group"


async def test_a_second_member_takes_half_and_reads_from_the_commit(
        fake: tuple[FakeCluster, FakeGroups]) -> None:
    cluster, groups = fake
    revoked: list[list[TopicPartition]] = []
    async with _member(cluster, on_revoke=revoked.append) as a:
        got_a: list[tuple[int, int]] = []
        await _drain(a, 20, got_a)
        await a.getmany(0.01)  # marks the batches above finished
        async with _member(cluster) as b:
            await wait_for(lambda: len(b.assignment()) == 2 and len(a.assignment()) == 2,
                           "two partitions each", 5.0)
            assert set(a.assignment()).isdisjoint(b.assignment())
            assert revoked == [b.assignment()]
            assert all(groups.offsets[(T, tp.partition)] == 5 for tp in b.assignment())
            # The revoked partitions were committed before they moved: b reads nothing old.
            cluster.store(b.assignment()[0].partition, [b"new"])
            got_b: list[tuple[int, int]] = []
            await _drain(b, 1, got_b)
            assert got_b == [(b.assignment()[0].partition, 5)]


async def test_close_commits_what_was_printed_and_a_new_member_resumes(
        fake: tuple[FakeCluster, FakeGroups]) -> None:
    cluster, groups = fake
    c = _member(cluster, enable_auto_commit=False)
    await c.start()
    got: list[tuple[int, int]] = []
    await _drain(c, 20, got)
    await c.close()
    assert {tp: groups.offsets[tp] for tp in groups.offsets} == {(T, p): 5 for p in range(4)}
    cluster.store(2, [b"x", b"y"])
    async with _member(cluster) as again:
        got2: list[tuple[int, int]] = []
        await _drain(again, 2, got2)
        assert got2 == [(2, 5), (2, 6)]


async def test_record_iteration_commits_only_records_finished(
        fake: tuple[FakeCluster, FakeGroups]) -> None:
    cluster, groups = fake
    async with _member(cluster, enable_auto_commit=False) as c:
        r = await c.__anext__()
        await c.commit()
        # The one record handed out counts when the caller commits.
        assert groups.offsets == {(r.topic, r.partition): r.offset + 1}
        r2 = await c.__anext__()
        assert (r2.partition, r2.offset) != (r.partition, r.offset)


async def test_rejoins_with_member_id_and_owned_after_the_stream_breaks(
        fake: tuple[FakeCluster, FakeGroups]) -> None:
    cluster, groups = fake
    async with _member(cluster) as c:
        mid = c.member_id
        before = c.assignment()
        groups.break_streams = grpc.StatusCode.UNAVAILABLE
        # The coordinator ends the stream (it moved); the next Join is refused once.
        old = groups.members[mid]
        old.outbox.put_nowait(None)
        await wait_for(lambda: mid in groups.members and groups.members[mid] is not old,
                       "rejoin with the same member id", 10.0)
        assert groups.break_streams is None, "the refused attempt was retried"
        join = groups.members[mid].joins[-1]
        assert join.member_id == mid
        assert sorted(TopicPartition(t.topic, p) for t in join.owned for p in t.partitions) \
            == before
        assert c.assignment() == before
        cluster.store(1, [b"after"])
        got: list[tuple[int, int]] = []
        await _drain(c, 21, got)
        assert (1, 5) in got


async def test_explicit_commit_by_a_fenced_member_raises(
        fake: tuple[FakeCluster, FakeGroups]) -> None:
    cluster, groups = fake
    async with _member(cluster, enable_auto_commit=False) as c:
        groups.generation += 5  # the group moved on without this member
        with pytest.raises(GroupFencedError):
            await c.commit({TopicPartition(T, 0): 1})


async def test_blocking_wrapper_polls_commits_and_reports_its_assignment(
        fake: tuple[FakeCluster, FakeGroups]) -> None:
    from rillet.client import sync

    cluster, groups = fake

    def use() -> tuple[int, list[TopicPartition]]:
        with sync.Consumer(cluster.nodes[0].address, T, group_id="g",
                           auto_offset_reset="earliest", enable_auto_commit=False) as c:
            got = 0
            while got < 20:
                got += len(c.poll(5.0))
            c.commit()
            return got, c.assignment()

    got, assigned = await asyncio.to_thread(use)
    assert got == 20 and assigned == _tps(0, 1, 2, 3)
    assert groups.offsets == {(T, p): 5 for p in range(4)}
    assert not groups.members


class _Hung(groups_pb2_grpc.GroupsServicer):
    """A node that accepts the Join stream and never answers."""

    async def Join(self, request_iterator: object, context: object) -> AsyncIterator[object]:
        await asyncio.Event().wait()
        yield None  # pragma: no cover


async def test_a_node_that_never_answers_the_join_is_skipped(
        fake: tuple[FakeCluster, FakeGroups], monkeypatch: pytest.MonkeyPatch) -> None:
    cluster, _groups = fake
    monkeypatch.setattr(group_module, "JOIN_TIMEOUT_S", 0.3)
    server = grpc.aio.server()
    groups_pb2_grpc.add_GroupsServicer_to_server(_Hung(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        c = Consumer(f"127.0.0.1:{port},{cluster.nodes[0].address}", T, group_id="g")
        assert isinstance(c, GroupConsumer)
        async with c:
            assert c.assignment() == _tps(0, 1, 2, 3)
    finally:
        await server.stop(grace=None)
