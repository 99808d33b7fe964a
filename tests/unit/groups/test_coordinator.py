"""The pure group coordinator: cooperative sticky assignment, sessions, static members,
fencing. Simulated members behave as the protocol asks (stop reading revoked partitions and
say so in the next heartbeat); the checks hold after every event of random sequences."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rillet.node.groups.coordinator import (
    TP,
    Coordinator,
    JoinRequest,
    Output,
    heartbeat_interval_ms,
)
from rillet.node.groups.errors import (
    FencedError,
    GroupNotEmptyError,
    InvalidGroupError,
    UnknownGroupError,
)

G = "g"


@dataclass
class SimMember:
    """A well-behaved member process: what it reads and what it was told."""

    name: str
    instance_id: str = ""
    member_id: str = ""
    token: int = 0
    alive: bool = False
    generation: int = -1
    assigned: set[TP] = field(default_factory=set)
    # Partitions it still reads: its assignment plus revoked ones not yet reported released.
    reading: set[TP] = field(default_factory=set)


class Sim:
    def __init__(self, topics: dict[str, int], *, grace: float = 0.0,
                 stored: int = 0) -> None:
        self.topics = dict(topics)
        ids = itertools.count()
        self.stored_generations: list[int] = []
        self.coord = Coordinator(self.topics.get, self.stored, now=0.0,
                                 rejoin_grace_s=grace,
                                 new_member_id=lambda c: f"{c}-{next(ids)}")
        self.now = 0.0
        self.members: dict[str, SimMember] = {}
        self.initial = stored

    def stored(self, group: str) -> int:
        return self.stored_generations[-1] if self.stored_generations else self.initial

    # -- driving ------------------------------------------------------------------------

    def deliver(self, out: Output) -> None:
        for g, gen in out.generations.items():
            assert g == G
            if self.stored_generations:
                assert gen > self.stored_generations[-1]
            self.stored_generations.append(gen)
        by_id = {m.member_id: m for m in self.members.values() if m.alive}
        for _g, mid, _why in out.expired:
            m = by_id.pop(mid)
            m.alive, m.reading, m.assigned = False, set(), set()
        for a in out.assignments:
            m = by_id.get(a.member_id)
            if m is None:
                continue
            new = set(a.partitions)
            # Generations only move forward for a member, and it is told the stored one.
            assert a.generation >= m.generation
            assert a.generation == self.stored_generations[-1] if self.stored_generations else True
            m.generation = a.generation
            m.assigned = new
            m.reading |= new  # revoked ones: still read until the next heartbeat
        self.check()

    def join(self, name: str, *, instance_id: str = "", topics: tuple[str, ...] = ("a",),
             owned: frozenset[TP] = frozenset(), member_id: str = "") -> SimMember:
        m = self.members.setdefault(name, SimMember(name, instance_id))
        member, out = self.coord.join(JoinRequest(
            G, topics, instance_id=instance_id, member_id=member_id, owned=owned,
            client_id=name), self.now)
        m.member_id, m.token, m.alive = member.member_id, member.token, True
        m.generation = -1
        self.deliver(out)
        return m

    def heartbeat(self, name: str) -> None:
        m = self.members[name]
        m.reading = set(m.assigned)
        self.deliver(self.coord.heartbeat(G, m.member_id, set(m.assigned), self.now))

    def leave(self, name: str) -> None:
        m = self.members[name]
        m.alive, m.reading, m.assigned = False, set(), set()
        self.deliver(self.coord.leave(G, m.member_id, self.now))

    def crash(self, name: str) -> None:
        """The process dies: its stream closes."""
        m = self.members[name]
        m.alive, m.reading, m.assigned = False, set(), set()
        self.deliver(self.coord.stream_closed(G, m.member_id, m.token, self.now))

    def tick(self, dt: float) -> None:
        self.now += dt
        self.deliver(self.coord.tick(self.now))

    def settle(self, rounds: int = 10) -> None:
        """Every live member heartbeats until nothing changes."""
        for _ in range(rounds):
            before = self.snapshot()
            for name, m in sorted(self.members.items()):
                if m.alive:
                    self.heartbeat(name)
            if self.snapshot() == before:
                return

    # -- views and checks ---------------------------------------------------------------

    def snapshot(self) -> dict[str, frozenset[TP]]:
        return {n: frozenset(m.assigned) for n, m in self.members.items() if m.alive}

    def check(self) -> None:
        # No partition read by two live members at once.
        seen: dict[TP, str] = {}
        for name, m in self.members.items():
            if not m.alive:
                continue
            for tp in m.reading:
                assert tp not in seen, f"{tp} read by {seen[tp]} and {name}"
                seen[tp] = name
        # The coordinator's own view: held by at most one member.
        view = self.coord.describe(G)
        if view is not None:
            held: dict[TP, str] = {}
            for mv in view.members:
                for tp in mv.assigned:
                    assert tp not in held
                    held[tp] = mv.member_id

    def counts(self) -> list[int]:
        return [len(m.assigned) for m in self.members.values() if m.alive]


def test_three_members_six_partitions_each_own_two_and_moves_are_minimal() -> None:
    sim = Sim({"a": 6})
    for name in ("x", "y", "z"):
        sim.join(name)
        sim.settle()
    assert sorted(sim.counts()) == [2, 2, 2]
    before = sim.snapshot()
    # One crashes: only its two partitions move, the others keep theirs.
    sim.crash("z")
    sim.settle()
    after = sim.snapshot()
    assert sorted(sim.counts()) == [3, 3]
    for name in ("x", "y"):
        assert before[name] <= after[name]
    # One joins: only what it takes moves.
    before = sim.snapshot()
    sim.join("w")
    sim.settle()
    after = sim.snapshot()
    assert sorted(sim.counts()) == [2, 2, 2]
    moved = set().union(*(before[n] - after[n] for n in ("x", "y")))
    assert moved == set(after["w"])


def test_partition_is_assigned_only_after_the_old_owner_released_it() -> None:
    sim = Sim({"a": 2})
    sim.join("x")
    sim.settle()
    assert len(sim.members["x"].assigned) == 2
    sim.join("y")
    # x has been asked to give one up, y has nothing yet.
    assert len(sim.members["x"].assigned) == 1 and not sim.members["y"].assigned
    assert sim.coord.describe(G).state == "rebalancing"
    sim.heartbeat("y")
    assert not sim.members["y"].assigned
    sim.heartbeat("x")  # releases it
    assert len(sim.members["y"].assigned) == 1
    assert sim.coord.describe(G).state == "stable"


def test_revocation_is_forced_after_the_rebalance_timeout() -> None:
    sim = Sim({"a": 2})
    x = sim.join("x")
    sim.settle()
    sim.join("y")
    stuck = {("a", 0), ("a", 1)}
    # x keeps heartbeating but never gives the revoked partition up.
    for _ in range(29):
        sim.now += 1.0
        sim.deliver(sim.coord.heartbeat(G, x.member_id, stuck, sim.now))
        sim.heartbeat("y")
        sim.deliver(sim.coord.tick(sim.now))
    assert not sim.members["y"].assigned
    x.reading = set(x.assigned)  # (the simulated process does stop, as it was told)
    sim.now += 1.5
    sim.deliver(sim.coord.heartbeat(G, x.member_id, stuck, sim.now))
    sim.deliver(sim.coord.tick(sim.now))
    assert len(sim.members["y"].assigned) == 1


def test_session_timeout_removes_silent_member_and_ends_its_stream() -> None:
    sim = Sim({"a": 4})
    sim.join("x")
    sim.join("y")
    sim.settle()
    for _ in range(12):
        sim.tick(1.0)
        sim.heartbeat("x")
    assert not sim.members["y"].alive  # expired by the coordinator
    sim.settle()
    assert sim.counts() == [4]


def test_static_member_keeps_partitions_across_restart_without_rebalance() -> None:
    sim = Sim({"a": 4})
    sim.join("x", instance_id="pod-0")
    sim.join("y", instance_id="pod-1")
    sim.settle()
    before = sim.snapshot()
    gen = sim.coord.generation(G)
    old_id = sim.members["y"].member_id
    sim.crash("y")
    sim.tick(5.0)
    sim.heartbeat("x")
    view = sim.coord.describe(G)
    assert any(m.disconnected for m in view.members)
    assert sim.snapshot()["x"] == before["x"]
    sim.join("y", instance_id="pod-1")
    assert sim.members["y"].member_id == old_id
    assert sim.members["y"].assigned == before["y"]
    assert sim.coord.generation(G) == gen  # no rebalance
    sim.settle()
    assert sim.snapshot() == before


def test_static_member_expires_after_session_timeout() -> None:
    sim = Sim({"a": 4})
    sim.join("x", instance_id="pod-0")
    sim.join("y", instance_id="pod-1")
    sim.settle()
    sim.crash("y")
    for _ in range(11):
        sim.tick(1.0)
        sim.heartbeat("x")
    sim.settle()
    assert sim.counts() == [4]


def test_rejoin_with_owned_after_coordinator_moved_keeps_everything() -> None:
    sim = Sim({"a": 6}, grace=3.0, stored=41)
    x = sim.join("x", member_id="x-old", owned=frozenset({("a", 0), ("a", 1), ("a", 2)}))
    assert x.member_id == "x-old" and len(x.assigned) == 3
    assert sim.coord.generation(G) == 42  # continues above the stored one
    y = sim.join("y", member_id="y-old", owned=frozenset({("a", 3), ("a", 4), ("a", 5)}))
    sim.settle()
    assert x.assigned == {("a", 0), ("a", 1), ("a", 2)}
    assert y.assigned == {("a", 3), ("a", 4), ("a", 5)}
    # A claim on something another member holds is not granted.
    z = sim.join("z", member_id="z-old", owned=frozenset({("a", 0)}))
    assert ("a", 0) not in z.assigned


def test_grace_holds_unclaimed_partitions_until_it_ends() -> None:
    sim = Sim({"a": 4}, grace=3.0, stored=5)
    x = sim.join("x", member_id="x-old", owned=frozenset({("a", 0)}))
    sim.settle()
    assert x.assigned == {("a", 0)}
    sim.tick(3.5)
    sim.settle()
    assert len(x.assigned) == 4


def test_commit_fencing() -> None:
    sim = Sim({"a": 2})
    x = sim.join("x")
    sim.settle()
    gen_x = x.generation
    sim.coord.check_commit(G, x.member_id, gen_x, [("a", 0), ("a", 1)])
    with pytest.raises(FencedError):
        sim.coord.check_commit(G, x.member_id, gen_x + 1, [("a", 0)])  # future generation
    with pytest.raises(GroupNotEmptyError):
        sim.coord.check_commit(G, "", -1, [("a", 0)])
    with pytest.raises(FencedError):
        sim.coord.check_commit(G, "nobody", gen_x, [("a", 0)])
    y = sim.join("y")
    # x is revoking one; it may still commit it (with the newest generation it knows).
    revoked = ({("a", 0), ("a", 1)} - x.assigned).pop()
    sim.coord.check_commit(G, x.member_id, x.generation, [revoked])
    sim.heartbeat("x")
    with pytest.raises(FencedError):
        sim.coord.check_commit(G, x.member_id, x.generation, [revoked])
    # y got it in a newer generation: a commit from before is stale.
    assert revoked in y.assigned
    with pytest.raises(FencedError):
        sim.coord.check_commit(G, y.member_id, gen_x, [revoked])
    sim.coord.check_commit(G, y.member_id, y.generation, [revoked])
    sim.leave("x")
    sim.leave("y")
    sim.coord.check_commit(G, "", -1, [("a", 0)])


@pytest.mark.parametrize("req, why", [
    (JoinRequest("", ("a",)), "group id"),
    (JoinRequest("a b", ("a",)), "group id"),
    (JoinRequest(G, ()), "no topics"),
    (JoinRequest(G, ("a", "a")), "distinct"),
    (JoinRequest(G, ("a",), session_timeout_ms=999), "session_timeout_ms"),
    (JoinRequest(G, ("a",), session_timeout_ms=300_001), "session_timeout_ms"),
    (JoinRequest(G, ("a",), rebalance_timeout_ms=600_001), "rebalance_timeout_ms"),
    (JoinRequest(G, ("a",), member_id="x" * 256), "member_id"),
])
def test_bad_joins_are_refused(req: JoinRequest, why: str) -> None:
    coord = Coordinator({"a": 1}.get, lambda g: 0)
    with pytest.raises(InvalidGroupError, match=why):
        coord.join(req, 0.0)
    assert coord.describe(G) is None


def test_unknown_member_heartbeat() -> None:
    coord = Coordinator({"a": 1}.get, lambda g: 0)
    with pytest.raises(UnknownGroupError):
        coord.heartbeat(G, "x", set(), 0.0)


def test_heartbeat_interval() -> None:
    assert heartbeat_interval_ms(10_000) == 3_000
    assert heartbeat_interval_ms(3_000) == 1_000
    assert heartbeat_interval_ms(1_000) == 333


def test_mixed_subscriptions_only_assign_subscribed_topics() -> None:
    sim = Sim({"a": 2, "b": 2})
    x = sim.join("x", topics=("a",))
    y = sim.join("y", topics=("a", "b"))
    sim.settle()
    assert all(t == "a" for t, _ in x.assigned)
    assert {tp for tp in y.assigned if tp[0] == "b"} == {("b", 0), ("b", 1)}


def test_deleted_topic_partitions_disappear() -> None:
    sim = Sim({"a": 2, "b": 2})
    x = sim.join("x", topics=("a", "b"))
    sim.settle()
    assert len(x.assigned) == 4
    del sim.topics["b"]
    sim.tick(0.1)  # noticed without any member event
    assert x.assigned == {("a", 0), ("a", 1)}
    sim.topics["a"] = 3
    sim.tick(0.1)
    assert x.assigned == {("a", 0), ("a", 1), ("a", 2)}


_NAMES = ("m0", "m1", "m2", "m3")
_ops = st.lists(st.tuples(
    st.sampled_from(["join", "join_static", "heartbeat", "leave", "crash", "tick", "settle"]),
    st.sampled_from(_NAMES), st.floats(0.1, 12.0)), max_size=40)


@settings(max_examples=150, deadline=None)
@given(ops=_ops, partitions=st.integers(1, 9))
def test_random_event_sequences_keep_single_ownership_and_balance(
        ops: list[tuple[str, str, float]], partitions: int) -> None:
    sim = Sim({"a": partitions})
    for op, name, dt in ops:
        m = sim.members.get(name)
        alive = m is not None and m.alive
        if op == "join" and not alive:
            sim.join(name)
        elif op == "join_static" and not alive:
            sim.join(name, instance_id=f"pod-{name}")
        elif op == "heartbeat" and alive:
            sim.heartbeat(name)
        elif op == "leave" and alive:
            sim.leave(name)
        elif op == "crash" and alive:
            sim.crash(name)
        elif op == "tick":
            sim.tick(dt)
            sim.settle()  # everyone alive heartbeats meanwhile, so nobody live expires
        elif op == "settle":
            sim.settle()
    # Once stable, with disconnected static members gone: balanced and complete.
    sim.tick(301.0)
    sim.settle()
    live = [m for m in sim.members.values() if m.alive]
    sim.tick(0.1)
    sim.settle()
    live = [m for m in sim.members.values() if m.alive]
    if live:
        counts = [len(m.assigned) for m in live]
        assert max(counts) - min(counts) <= 1, counts
        assert sum(counts) == partitions
        assert sim.coord.describe(G).state == "stable"


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 5), partitions=st.integers(1, 12), joiner=st.booleans())
def test_join_or_leave_moves_only_what_must_move(n: int, partitions: int,
                                                 joiner: bool) -> None:
    sim = Sim({"a": partitions})
    for i in range(n):
        sim.join(f"m{i}")
        sim.settle()
    before = sim.snapshot()
    if joiner:
        sim.join("new")
        sim.settle()
        after = sim.snapshot()
        for name in before:
            assert after[name] <= before[name]
        moved = set().union(*(before[k] - after[k] for k in before))
        assert moved == set(after["new"])
    else:
        sim.crash("m0")
        sim.settle()
        after = sim.snapshot()
        for name in after:
            assert before[name] <= after[name]
    counts = [len(v) for v in after.values()] or [0]
    assert max(counts) - min(counts) <= 1


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 5), partitions=st.integers(1, 12), order=st.randoms())
def test_coordinator_failover_with_rejoins_moves_nothing(n: int, partitions: int,
                                                         order: object) -> None:
    old = Sim({"a": partitions})
    for i in range(n):
        old.join(f"m{i}")
        old.settle()
    before = {m.member_id: frozenset(m.assigned) for m in old.members.values()}
    stored = old.stored_generations[-1]
    # A new coordinator: members come back in any order with what they own.
    new = Sim({"a": partitions}, grace=3.0, stored=stored)
    names = sorted(old.members)
    order.shuffle(names)  # type: ignore[attr-defined]
    for name in names:
        prev = old.members[name]
        new.join(name, member_id=prev.member_id, owned=frozenset(prev.assigned))
        new.now += 0.1
    new.settle()
    new.tick(3.0)
    new.settle()
    after = {m.member_id: frozenset(m.assigned) for m in new.members.values()}
    assert after == before
    assert new.coord.generation(G) > stored
