"""The metadata state machine, command by command: what each does, every rejection (and that a
rejection changes nothing), snapshots, the codec, the rebalance plan, and the state running
as the apply callback of three RaftDrivers over an in-memory network."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from rillet.cluster.driver import CountingSyncer, RaftDriver
from rillet.cluster.metadata import (
    Accepted,
    AllocateProducerIds,
    AlterTopicConfig,
    BumpGroupGeneration,
    Command,
    CommitGroupOffsets,
    CreateTopic,
    DecodeError,
    DeleteGroup,
    DeleteTopic,
    MarkBrokerDraining,
    MetadataMachine,
    MetadataState,
    OffsetAndMetadata,
    ReassignPartition,
    RegisterBroker,
    RejectCode,
    Rejected,
    Result,
    SnapshotError,
    UnregisterBroker,
    decode_command,
    encode_command,
    plan_rebalance,
)
from rillet.cluster.raft import Config, ConfState, Entry, EntryKind, MemoryStorage, Role
from rillet.cluster.raft.types import Snapshot, SnapshotMeta
from rillet.cluster.transport import InMemoryNetwork
from tests.waiting import wait_for


class Harness:
    """A state plus the next index, so tests read as a list of commands."""

    def __init__(self, brokers: int = 0) -> None:
        self.state = MetadataState()
        self.index = 0
        for i in range(brokers):
            self.ok(RegisterBroker(i, f"10.0.0.{i}:9091"))

    def apply(self, cmd: Command) -> Result:
        self.index += 1
        return self.state.apply(self.index, cmd)

    def ok(self, cmd: Command) -> Accepted:
        result = self.apply(cmd)
        assert isinstance(result, Accepted), result.describe()
        return result

    def rejected(self, cmd: Command, code: RejectCode, *words: str) -> Rejected:
        """Apply ``cmd``, expect a rejection with ``code`` whose message has ``words``, and
        check that nothing but applied_index moved."""
        before = self.state.snapshot()
        result = self.apply(cmd)
        assert isinstance(result, Rejected), result.describe()
        assert result.code == code, result.describe()
        for w in words:
            assert w in result.message, result.describe()
        assert self.state.applied_index == self.index
        unchanged = MetadataState.restore(before)
        unchanged.skip(self.index)
        assert self.state.snapshot() == unchanged.snapshot()
        return result


# -- brokers --------------------------------------------------------------------------------------


def test_register_broker_then_reregister_updates_address_and_keeps_draining() -> None:
    h = Harness()
    h.ok(RegisterBroker(1, "a:1", rack="r1"))
    h.ok(MarkBrokerDraining(1))
    res = h.ok(RegisterBroker(1, "b:2"))
    assert "re-registered" in res.message
    broker = h.state.broker(1)
    assert broker is not None
    assert (broker.address, broker.rack, broker.draining, broker.registered_index) == (
        "b:2", None, True, 1)
    assert h.state.live_brokers() == []


@pytest.mark.parametrize(("cmd", "code", "words"), [
    (RegisterBroker(-1, "a:1"), RejectCode.INVALID_BROKER, ("node id",)),
    (RegisterBroker(2**31, "a:1"), RejectCode.INVALID_BROKER, ("node id",)),
    (RegisterBroker(1, "nohost"), RejectCode.INVALID_BROKER, ("HOST:PORT",)),
    (RegisterBroker(1, "a:0"), RejectCode.INVALID_BROKER, ("port",)),
    (RegisterBroker(1, "a:70000"), RejectCode.INVALID_BROKER, ("port",)),
    (RegisterBroker(1, "a b:1"), RejectCode.INVALID_BROKER, ("HOST:PORT",)),
    (RegisterBroker(1, "a:" + "9" * 5000), RejectCode.INVALID_BROKER, ("HOST:PORT",)),
    (RegisterBroker(1, "a:1", rack=""), RejectCode.INVALID_BROKER, ("rack",)),
    (RegisterBroker(1, "10.0.0.0:9091"), RejectCode.ADDRESS_IN_USE, ("broker 0",)),
])
def test_register_broker_rejections(cmd: Command, code: RejectCode, words: tuple[str]) -> None:
    Harness(1).rejected(cmd, code, *words)


def test_unregister_broker_only_when_it_holds_no_replicas() -> None:
    h = Harness(2)
    h.rejected(UnregisterBroker(7), RejectCode.UNKNOWN_BROKER, "7")
    h.ok(CreateTopic("t", 2, 1))
    holder = h.state.partitions_of_broker(0)
    assert holder
    h.rejected(UnregisterBroker(0), RejectCode.BROKER_IN_USE, "t/", "drain")
    h.ok(MarkBrokerDraining(0))
    for cmd in plan_rebalance(h.state):
        h.ok(cmd)
    assert h.state.partitions_of_broker(0) == []
    h.ok(AllocateProducerIds(0, 10))
    h.ok(UnregisterBroker(0))
    assert [b.node_id for b in h.state.brokers()] == [1]
    assert [b.node_id for b in h.state.producer_id_blocks()] == []


def test_mark_draining_and_back() -> None:
    h = Harness(3)
    h.rejected(MarkBrokerDraining(9), RejectCode.UNKNOWN_BROKER)
    h.ok(MarkBrokerDraining(1))
    assert h.state.live_brokers() == [0, 2]
    assert "already" in h.ok(MarkBrokerDraining(1)).message
    h.rejected(CreateTopic("t", 1, 3), RejectCode.NOT_ENOUGH_BROKERS, "2 are live", "[0 2]")
    h.ok(CreateTopic("t", 4, 1))
    assert all(1 not in p.replicas for p in h.state.partitions("t"))
    h.ok(MarkBrokerDraining(1, draining=False))
    assert h.state.live_brokers() == [0, 1, 2]


# -- topics ---------------------------------------------------------------------------------------


def test_create_topic_places_replicas_and_allocates_group_ids() -> None:
    h = Harness(3)
    h.ok(CreateTopic("orders", 6, 3, {"retention_ms": 1000}))
    topic = h.state.topic("orders")
    assert topic is not None
    assert topic.topic_id == 4  # the creating entry's index
    assert topic.config == {"retention_ms": 1000}
    assert [p.partition for p in topic.partitions] == list(range(6))
    assert [p.group_id for p in topic.partitions] == list(range(1, 7))
    for p in topic.partitions:
        assert sorted(p.replicas) == [0, 1, 2]
        assert p.epoch == 0
    # Leaders spread evenly: each of the 3 brokers prefers 2 of the 6 partitions.
    assert sorted(p.preferred_leader for p in topic.partitions) == [0, 0, 1, 1, 2, 2]
    h.ok(CreateTopic("events", 1, 1))
    events = h.state.topic("events")
    assert events is not None and events.partitions[0].group_id == 7
    assert [t.name for t in h.state.topics()] == ["events", "orders"]


def test_two_single_partition_topics_start_on_different_brokers() -> None:
    h = Harness(3)
    h.ok(CreateTopic("a", 1, 1))
    h.ok(CreateTopic("b", 1, 1))
    h.ok(CreateTopic("c", 1, 1))
    leaders = {t.name: t.partitions[0].preferred_leader for t in h.state.topics()}
    assert sorted(leaders.values()) == [0, 1, 2]


@pytest.mark.parametrize(("cmd", "code", "words"), [
    (CreateTopic("", 1, 1), RejectCode.INVALID_TOPIC, ("empty",)),
    (CreateTopic(".", 1, 1), RejectCode.INVALID_TOPIC, ("not allowed",)),
    (CreateTopic("..", 1, 1), RejectCode.INVALID_TOPIC, ("not allowed",)),
    (CreateTopic("x" * 250, 1, 1), RejectCode.INVALID_TOPIC, ("250", "249")),
    (CreateTopic("a/b", 1, 1), RejectCode.INVALID_TOPIC, ("letters, digits",)),
    (CreateTopic("t", 0, 1), RejectCode.INVALID_CONFIG, ("partitions", "[1, 1000]")),
    (CreateTopic("t", 1001, 1), RejectCode.INVALID_CONFIG, ("partitions",)),
    (CreateTopic("t", 1, 2), RejectCode.INVALID_CONFIG, ("1, 3 or 5",)),
    (CreateTopic("t", 1, 0), RejectCode.INVALID_CONFIG, ("1, 3 or 5",)),
    (CreateTopic("t", 1, 5), RejectCode.NOT_ENOUGH_BROKERS, ("needs 5", "3 are live")),
    (CreateTopic("t", 1, 1, {"retention_ms": 0}), RejectCode.INVALID_CONFIG,
     ("retention.ms must be -1",)),
    (CreateTopic("t", 1, 1, {"retention_bytes": -2}), RejectCode.INVALID_CONFIG,
     ("retention.bytes",)),
    (CreateTopic("t", 1, 1, {"segment_bytes": 4095}), RejectCode.INVALID_CONFIG,
     ("segment.bytes must be in [4096",)),
    (CreateTopic("t", 1, 1, {"segment_bytes": 2**31}), RejectCode.INVALID_CONFIG,
     ("segment.bytes",)),
    (CreateTopic("t", 1, 1, {"segment_ms": 0}), RejectCode.INVALID_CONFIG, ("segment.ms",)),
    (CreateTopic("t", 1, 1, {"delete_retention_ms": -1}), RejectCode.INVALID_CONFIG,
     ("delete.retention.ms must be in [0",)),
    (CreateTopic("t", 1, 1, {"cleanup_policy": 9}), RejectCode.INVALID_CONFIG,
     ("unknown cleanup.policy 9",)),
    (CreateTopic("t", 1, 1, {"colour": 1}), RejectCode.INVALID_CONFIG,
     ("unknown topic settings: colour",)),
    (CreateTopic("t", "3", 1), RejectCode.INVALID_REQUEST,  # type: ignore[arg-type]
     ("CreateTopic.partitions must be an integer",)),
    (CreateTopic("t", True, 1), RejectCode.INVALID_REQUEST,  # type: ignore[arg-type]
     ("integer",)),
])
def test_create_topic_rejections(cmd: Command, code: RejectCode, words: tuple[str]) -> None:
    Harness(3).rejected(cmd, code, *words)


def test_create_topic_accepts_the_edges_of_every_range() -> None:
    h = Harness(5)
    h.ok(CreateTopic("a." + "x" * 247, 1000, 5, {
        "retention_ms": -1, "retention_bytes": 1, "segment_bytes": 4096,
        "segment_ms": 2**62, "cleanup_policy": 1}))
    h.rejected(CreateTopic("a." + "x" * 247, 1, 1), RejectCode.TOPIC_EXISTS, "already exists")


def test_delete_topic_drops_its_offsets_and_a_recreated_topic_is_new() -> None:
    h = Harness(1)
    h.ok(CreateTopic("t", 2, 1))
    h.ok(CreateTopic("u", 1, 1))
    h.ok(CommitGroupOffsets("g", 1, {("t", 0): OffsetAndMetadata(5),
                                     ("u", 0): OffsetAndMetadata(7)}))
    h.rejected(DeleteTopic("nope"), RejectCode.UNKNOWN_TOPIC, "'nope'")
    h.rejected(DeleteTopic("a/b"), RejectCode.INVALID_TOPIC)
    res = h.ok(DeleteTopic("t"))
    assert "1 committed offsets" in res.message
    assert h.state.topic("t") is None
    assert h.state.committed_offset("g", "t", 0) is None
    assert h.state.committed_offset("g", "u", 0) is not None
    h.ok(CreateTopic("t", 1, 1))
    topic = h.state.topic("t")
    assert topic is not None and topic.topic_id == h.index
    assert topic.partitions[0].group_id == 4  # group ids are never reused


def test_alter_topic_config_sets_and_removes_overrides() -> None:
    h = Harness(1)
    h.ok(CreateTopic("t", 1, 1, {"retention_ms": 5, "segment_ms": 10}))
    h.ok(AlterTopicConfig("t", {"retention_bytes": 4096}, ("segment_ms",)))
    topic = h.state.topic("t")
    assert topic is not None and topic.config == {"retention_ms": 5, "retention_bytes": 4096}
    h.rejected(AlterTopicConfig("x", {"retention_ms": 1}), RejectCode.UNKNOWN_TOPIC)
    h.rejected(AlterTopicConfig("t"), RejectCode.INVALID_REQUEST, "nothing to change")
    h.rejected(AlterTopicConfig("t", {"segment_bytes": 1}), RejectCode.INVALID_CONFIG,
               "segment.bytes")
    h.rejected(AlterTopicConfig("t", {}, ("size",)), RejectCode.INVALID_CONFIG, "size")
    h.rejected(AlterTopicConfig("t", {"retention_ms": 1}, ("retention_ms",)),
               RejectCode.INVALID_REQUEST, "both")


def test_reassign_partition_sets_the_target_and_bumps_the_epoch() -> None:
    h = Harness(5)
    h.ok(CreateTopic("t", 2, 3))
    p0 = h.state.topic("t").partitions[0]  # type: ignore[union-attr]
    target = (*[b for b in range(5) if b not in p0.replicas][:2], p0.replicas[0])
    h.ok(ReassignPartition("t", 0, target))
    new = h.state.topic("t").partitions[0]  # type: ignore[union-attr]
    assert (new.replicas, new.epoch, new.preferred_leader) == (target, 1, target[0])
    assert "already" in h.ok(ReassignPartition("t", 0, target)).message
    assert h.state.topic("t").partitions[0].epoch == 1  # type: ignore[union-attr]
    h.rejected(ReassignPartition("x", 0, (0, 1, 2)), RejectCode.UNKNOWN_TOPIC)
    h.rejected(ReassignPartition("t", 2, (0, 1, 2)), RejectCode.PARTITION_OUT_OF_RANGE,
               "0 to 1", "no partition 2")
    h.rejected(ReassignPartition("t", -1, (0, 1, 2)), RejectCode.PARTITION_OUT_OF_RANGE)
    h.rejected(ReassignPartition("t", 0, (0, 1)), RejectCode.INVALID_REQUEST,
               "replication factor 3")
    h.rejected(ReassignPartition("t", 0, (0, 0, 1)), RejectCode.INVALID_REQUEST, "twice")
    h.rejected(ReassignPartition("t", 0, (0, 1, 9)), RejectCode.UNKNOWN_BROKER, "9")
    outsider = next(b for b in range(5) if b not in target)
    h.ok(MarkBrokerDraining(outsider))
    h.rejected(ReassignPartition("t", 0, (target[0], target[1], outsider)),
               RejectCode.INVALID_BROKER, "draining")
    # A draining broker may keep the replica it already has.
    h.ok(MarkBrokerDraining(target[2]))
    h.ok(ReassignPartition("t", 0, (target[2], target[0], target[1])))


# -- producer ids ---------------------------------------------------------------------------------


def test_producer_id_blocks_are_consecutive_and_never_overlap() -> None:
    h = Harness(2)
    a = h.ok(AllocateProducerIds(0, 1000)).producer_ids
    b = h.ok(AllocateProducerIds(1, 10)).producer_ids
    c = h.ok(AllocateProducerIds(0, 5)).producer_ids
    assert a is not None and b is not None and c is not None
    assert (a.first, a.last, b.first, b.last, c.first, c.last) == (0, 999, 1000, 1009, 1010, 1014)
    assert h.state.producer_id_blocks() == [c, b]
    assert h.state.next_producer_id == 1015
    h.rejected(AllocateProducerIds(5, 1), RejectCode.UNKNOWN_BROKER)
    h.rejected(AllocateProducerIds(0, 0), RejectCode.INVALID_REQUEST, "count")
    h.rejected(AllocateProducerIds(0, 1_000_001), RejectCode.INVALID_REQUEST, "count")
    h.state.next_producer_id = 2**63 - 5
    h.rejected(AllocateProducerIds(0, 6), RejectCode.PRODUCER_IDS_EXHAUSTED, "only 5")
    last = h.ok(AllocateProducerIds(0, 5)).producer_ids
    assert last is not None and last.last == 2**63 - 1


# -- groups ---------------------------------------------------------------------------------------


def test_commit_group_offsets_stores_and_overwrites() -> None:
    h = Harness(1)
    h.ok(CreateTopic("t", 3, 1))
    h.ok(CommitGroupOffsets("g", 1, {("t", 0): OffsetAndMetadata(10, "m"),
                                     ("t", 2): OffsetAndMetadata(3)}, commit_time_ms=111))
    h.ok(CommitGroupOffsets("g", 2, {("t", 0): OffsetAndMetadata(12)}, commit_time_ms=222))
    group = h.state.group("g")
    assert group is not None and group.generation == 2
    assert {k: (c.offset, c.metadata, c.commit_time_ms, c.index)
            for k, c in group.offsets.items()} == {("t", 0): (12, "", 222, 4),
                                                   ("t", 2): (3, "", 111, 3)}
    assert h.state.groups() == ["g"]


def test_group_generation_fences_commits_and_only_moves_up() -> None:
    h = Harness(1)
    h.ok(CreateTopic("t", 2, 1))
    h.ok(BumpGroupGeneration("g", 5))
    h.rejected(BumpGroupGeneration("g", 5), RejectCode.FENCED, "not above")
    h.rejected(BumpGroupGeneration("g", 0), RejectCode.INVALID_REQUEST, "generation")
    # A deposed coordinator's commit (older generation) is refused, all of it.
    h.rejected(CommitGroupOffsets("g", 4, {("t", 0): OffsetAndMetadata(1)}), RejectCode.FENCED,
               "older")
    assert h.state.committed_offset("g", "t", 0) is None
    h.ok(CommitGroupOffsets("g", 5, {("t", 0): OffsetAndMetadata(2)}))
    # An admin commit (-1) is allowed and leaves the generation alone.
    h.ok(CommitGroupOffsets("g", -1, {("t", 1): OffsetAndMetadata(3)}))
    group = h.state.group("g")
    assert group is not None and group.generation == 5
    h.ok(BumpGroupGeneration("g", 6))
    h.rejected(CommitGroupOffsets("g", 5, {("t", 0): OffsetAndMetadata(9)}), RejectCode.FENCED)
    # A new group starts at the generation it is first given.
    h.ok(BumpGroupGeneration("h", 1))
    assert h.state.groups() == ["g", "h"]
    snap = h.state.snapshot()
    assert MetadataState.restore(snap) == h.state


@pytest.mark.parametrize(("cmd", "code", "words"), [
    (CommitGroupOffsets("", 1, {("t", 0): OffsetAndMetadata(1)}), RejectCode.INVALID_GROUP, ()),
    (CommitGroupOffsets("a b", 1, {("t", 0): OffsetAndMetadata(1)}), RejectCode.INVALID_GROUP,
     ("group id",)),
    (CommitGroupOffsets("g", 1, {}), RejectCode.INVALID_REQUEST, ("no offsets",)),
    (CommitGroupOffsets("g", -2, {("t", 0): OffsetAndMetadata(1)}), RejectCode.INVALID_REQUEST,
     ("generation",)),
    (CommitGroupOffsets("g", 1, {("x", 0): OffsetAndMetadata(1)}), RejectCode.UNKNOWN_TOPIC,
     ("'x'",)),
    (CommitGroupOffsets("g", 1, {("t", 0): OffsetAndMetadata(1),
                                 ("t", 1): OffsetAndMetadata(1)}),
     RejectCode.PARTITION_OUT_OF_RANGE, ("no partition 1",)),
    (CommitGroupOffsets("g", 1, {("t", 0): OffsetAndMetadata(-1)}), RejectCode.INVALID_REQUEST,
     ("offset for t/0",)),
    (CommitGroupOffsets("g", 1, {("t", 0): OffsetAndMetadata(1, "m" * 4097)}),
     RejectCode.INVALID_REQUEST, ("4097",)),
    (CommitGroupOffsets("g", 1, {("t", 0): OffsetAndMetadata(1)}, commit_time_ms=-1),
     RejectCode.INVALID_REQUEST, ("commit_time_ms",)),
    (CommitGroupOffsets("g", 1, {("t", 0): 5}),  # type: ignore[dict-item]
     RejectCode.INVALID_REQUEST, ("OffsetAndMetadata",)),
])
def test_commit_group_offsets_rejections_are_all_or_nothing(
        cmd: Command, code: RejectCode, words: tuple[str]) -> None:
    h = Harness(1)
    h.ok(CreateTopic("t", 1, 1))
    h.ok(CommitGroupOffsets("g", 1, {("t", 0): OffsetAndMetadata(4)}))
    h.rejected(cmd, code, *words)
    assert h.state.committed_offset("g", "t", 0).offset == 4  # type: ignore[union-attr]


def test_delete_group() -> None:
    h = Harness(1)
    h.ok(CreateTopic("t", 1, 1))
    h.ok(CommitGroupOffsets("g", 1, {("t", 0): OffsetAndMetadata(4)}))
    h.rejected(DeleteGroup("h"), RejectCode.UNKNOWN_GROUP, "'h'")
    h.rejected(DeleteGroup(""), RejectCode.INVALID_GROUP)
    h.ok(DeleteGroup("g"))
    assert h.state.group("g") is None and h.state.groups() == []


# -- apply contract -------------------------------------------------------------------------------


def test_stale_index_changes_nothing_and_gaps_are_allowed() -> None:
    h = Harness(1)
    before = h.state.snapshot()
    res = h.state.apply(1, CreateTopic("t", 1, 1))
    assert isinstance(res, Rejected) and res.code == RejectCode.ALREADY_APPLIED
    assert h.state.snapshot() == before
    assert h.state.apply(10, CreateTopic("t", 1, 1)).ok
    assert h.state.applied_index == 10
    h.state.skip(5)
    assert h.state.applied_index == 10
    h.state.skip(11)
    assert h.state.applied_index == 11


def test_undecodable_and_unknown_inputs_are_rejections_not_exceptions() -> None:
    s = MetadataState()
    for i, data in enumerate([b"", b"\xff", b"[]", b'{"v":2,"t":"DeleteGroup","group":"g"}',
                              b'{"v":1,"t":"Nope"}', b'{"v":1,"t":"DeleteGroup"}',
                              b'{"v":1,"t":"DeleteGroup","group":"g","x":1}',
                              b'{"v":1,"t":"DeleteGroup","group":5}', b"[" * 100_000],
                             start=1):
        res = s.apply_bytes(i, data)
        assert isinstance(res, Rejected) and res.code == RejectCode.UNDECODABLE, res
        assert s.applied_index == i
    res = s.apply(100, "CreateTopic")  # type: ignore[arg-type]
    assert isinstance(res, Rejected) and res.code == RejectCode.INVALID_REQUEST
    assert s.snapshot() == MetadataState.restore(s.snapshot()).snapshot()


def test_encoding_is_canonical_and_versioned() -> None:
    cmd = CommitGroupOffsets("g", 3, {("b", 1): OffsetAndMetadata(2, "x"),
                                      ("a", 0): OffsetAndMetadata(1)}, commit_time_ms=9)
    same = CommitGroupOffsets("g", 3, {("a", 0): OffsetAndMetadata(1),
                                       ("b", 1): OffsetAndMetadata(2, "x")}, commit_time_ms=9)
    data = encode_command(cmd)
    assert data == encode_command(same)
    assert data == (b'{"commit_time_ms":9,"generation":3,"group":"g",'
                    b'"offsets":[["a",0,1,""],["b",1,2,"x"]],"t":"CommitGroupOffsets","v":1}')
    assert decode_command(data) == cmd
    with pytest.raises(ValueError, match="integer"):
        encode_command(CreateTopic("t", 1.5, 1))  # type: ignore[arg-type]
    with pytest.raises(DecodeError, match="twice"):
        decode_command(b'{"commit_time_ms":0,"generation":3,"group":"g","offsets":'
                       b'[["a",0,1,""],["a",0,2,""]],"t":"CommitGroupOffsets","v":1}')


def test_describe_lines() -> None:
    h = Harness(3)
    cmd = CreateTopic("orders", 3, 3, {"retention_ms": 5})
    assert cmd.describe() == ("CreateTopic name='orders' partitions=3 replication_factor=3 "
                              "config={'retention_ms': 5}")
    assert h.ok(cmd).describe().startswith("4 ok CreateTopic: created topic 'orders'")
    assert h.apply(cmd).describe() == (
        "5 rejected CreateTopic TOPIC_EXISTS: topic 'orders' already exists")
    assert h.state.describe() == ("applied=5 brokers=3 topics=1 partitions=3 groups=0 "
                                  "next_pid=0")


# -- snapshots ------------------------------------------------------------------------------------


def test_snapshot_restore_round_trip_with_everything() -> None:
    h = Harness(5)
    h.ok(RegisterBroker(9, "rack.host:1", rack="eu-1"))
    h.ok(MarkBrokerDraining(9))
    h.ok(CreateTopic("t", 4, 3, {"segment_bytes": 8192}))
    h.ok(ReassignPartition("t", 0, (4, 3, 2)))
    h.ok(AllocateProducerIds(2, 100))
    h.ok(CommitGroupOffsets("g", 1, {("t", 3): OffsetAndMetadata(7, "meta")}, 55))
    data = h.state.snapshot()
    copy = MetadataState.restore(data)
    assert copy == h.state
    assert copy.snapshot() == data
    assert copy.topics() == h.state.topics()
    assert copy.brokers() == h.state.brokers()
    assert copy.group("g") == h.state.group("g")
    assert copy.producer_id_blocks() == h.state.producer_id_blocks()
    for bad in (b"", b"{}", b'{"v":2}', data.replace(b'"applied_index":', b'"applied_index":"'),
                data[:-5]):
        with pytest.raises(SnapshotError):
            MetadataState.restore(bad)


# -- rebalance ------------------------------------------------------------------------------------


def test_rebalance_after_adding_brokers_evens_replicas_and_leaders() -> None:
    h = Harness(3)
    h.ok(CreateTopic("a", 12, 3))
    h.ok(CreateTopic("b", 5, 1))
    for i in (3, 4, 5):
        h.ok(RegisterBroker(i, f"new{i}:1"))
    plan = plan_rebalance(h.state)
    assert plan and all(isinstance(c, ReassignPartition) for c in plan)
    for cmd in plan:
        h.ok(cmd)
    reps, leads = h.state.loads()
    assert max(reps.values()) - min(reps.values()) <= 1, reps
    assert max(leads.values()) - min(leads.values()) <= 1, leads
    assert plan_rebalance(h.state) == []


def test_rebalance_drains_a_broker_completely() -> None:
    h = Harness(4)
    h.ok(CreateTopic("a", 8, 3))
    h.ok(MarkBrokerDraining(2))
    for cmd in plan_rebalance(h.state):
        h.ok(cmd)
    assert h.state.partitions_of_broker(2) == []
    reps, _ = h.state.loads()
    assert max(reps[b] for b in (0, 1, 3)) == min(reps[b] for b in (0, 1, 3)) == 8


# -- the state machine under three RaftDrivers ----------------------------------------------------


async def test_three_drivers_apply_the_same_commands_to_byte_identical_states() -> None:
    network = InMemoryNetwork()
    raft = Config(id=1, election_ticks=10, heartbeat_ticks=1)
    ids = (1, 2, 3)
    machines = {i: MetadataMachine() for i in ids}
    drivers: dict[int, RaftDriver] = {}
    for i in ids:
        driver = RaftDriver(i, network.transport(i), CountingSyncer(), raft_config=raft,
                            tick_ms=10.0, seed=i)
        driver.add_group(0, MemoryStorage(ConfState(frozenset(ids))), machines[i])
        network.register(i, driver.receive)
        drivers[i] = driver
    for driver in drivers.values():
        driver.start()

    try:
        drivers[1].campaign(0)
        await wait_for(lambda: drivers[1].core(0).role == Role.LEADER, "node 1 to lead")
        commands: list[Command] = [RegisterBroker(i, f"127.0.0.1:{9090 + i}") for i in ids]
        commands += [CreateTopic("orders", 6, 3), CreateTopic("orders", 1, 1),
                     AllocateProducerIds(1, 1000), CreateTopic("logs", 3, 1),
                     CommitGroupOffsets("g", 1, {("orders", 5): OffsetAndMetadata(42)}),
                     DeleteTopic("logs")]
        futures = [drivers[1].propose(0, encode_command(c)) for c in commands]
        # Each future resolves with what the leader's machine returned for its entry.
        results = await asyncio.gather(*futures)
        assert [r.ok if r else None for r in results] == [
            True, True, True, True, False, True, True, True, True]
        rejected = results[4]
        assert isinstance(rejected, Rejected) and rejected.code == RejectCode.TOPIC_EXISTS
        last = machines[1].state.applied_index
        await wait_for(lambda: all(m.state.applied_index >= last for m in machines.values()),
                       "every node to apply the last command")
        snaps = {i: m.state.snapshot() for i, m in machines.items()}
        assert snaps[1] == snaps[2] == snaps[3]
        state = machines[2].state
        assert [t.name for t in state.topics()] == ["orders"]
        assert state.committed_offset("g", "orders", 5).offset == 42  # type: ignore[union-attr]
        assert sorted(p.preferred_leader for p in state.partitions("orders")) == [1, 1, 2, 2,
                                                                                  3, 3]
    finally:
        for driver in drivers.values():
            await driver.stop()


def test_machine_adapter_skips_non_commands_and_restores_snapshots() -> None:
    seen: list[Result] = []
    m = MetadataMachine(on_result=seen.append)
    results = m.apply([
        Entry(1, 1), Entry(2, 1, EntryKind.NORMAL, encode_command(RegisterBroker(0, "a:1"))),
        Entry(3, 1, EntryKind.CONF_CHANGE, b"\x00\x01"),
        Entry(4, 1, EntryKind.NORMAL, encode_command(CreateTopic("t", 1, 1))),
        Entry(5, 1, EntryKind.NORMAL, b"junk")])
    assert m.state.applied_index == 5
    assert [r.index for r in seen] == [2, 4, 5]
    # One result per entry, None for the no-op and the membership change.
    assert [(r.index, r.ok) if r else None for r in results] == [
        None, (2, True), None, (4, True), (5, False)]
    data = m.state.snapshot()
    other = MetadataMachine()
    other.restore(Snapshot(SnapshotMeta(index=5, term=1), data))
    assert other.state == m.state
    other.restore(Snapshot(SnapshotMeta(index=7, term=2), b""))
    assert other.state.applied_index == 7 and other.state.topics() == []
    assert dataclasses.is_dataclass(seen[0])
