"""The simulator's own parts, checked without the Raft core: if these lie, every seed lies."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from rillet.cluster.raft.types import ConfState, Entry, HardState, Role

from .disk import SimDisk
from .invariants import Invariants, InvariantViolation
from .network import LinkFaults, Network
from .scheduler import Scheduler
from .seeds import derive


@dataclass(frozen=True)
class Note:
    text: str

    def describe(self) -> str:
        return self.text


def _network(sched: Scheduler, seed: int = 1, **faults: object
             ) -> tuple[Network[Note], list[tuple[int, int, str]]]:
    got: list[tuple[int, int, str]] = []
    net: Network[Note] = Network(
        sched, random.Random(seed), encode=lambda n: n.text.encode(),
        decode=lambda b: Note(b.decode()),
        deliver=lambda to, n: got.append((sched.now_ms, to, n.text)),
        defaults=LinkFaults(**faults))  # type: ignore[arg-type]
    return net, got


def test_scheduler_orders_by_time_then_schedule_order() -> None:
    sched = Scheduler()
    order: list[str] = []
    sched.schedule(5, "b", lambda: order.append("b"))
    sched.schedule(1, "a", lambda: order.append("a"))
    sched.schedule(5, "c", lambda: order.append("c"))
    assert sched.run_until(lambda: len(order) == 3, 10)
    assert order == ["a", "b", "c"]
    assert sched.now_ms == 5


def test_run_until_stops_at_max_events() -> None:
    sched = Scheduler()

    def again() -> None:
        sched.schedule(1, "loop", again)

    again()
    assert not sched.run_until(lambda: False, 50)
    assert sched.events_run == 50


def test_run_for_advances_the_clock_to_the_deadline() -> None:
    sched = Scheduler()
    sched.schedule(30, "late", lambda: None)
    assert sched.run_for(10, 100)
    assert sched.now_ms == 10 and sched.events_run == 0


def test_derived_streams_are_stable_and_independent() -> None:
    assert derive(7, "network").random() == derive(7, "network").random()
    assert derive(7, "network").random() != derive(7, "disk").random()
    assert derive(7, "network").random() != derive(8, "network").random()


def test_network_is_deterministic_per_seed() -> None:
    def run(seed: int) -> list[tuple[int, int, str]]:
        sched = Scheduler()
        net, got = _network(sched, seed, drop=0.2, duplicate=0.2, delay_mean_ms=5.0)
        for i in range(50):
            net.send(1, 2, Note(f"m{i}"))
        sched.run_until(lambda: False, 1000)
        return got

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_network_drops_duplicates_and_reorders() -> None:
    sched = Scheduler()
    net, got = _network(sched, 5, drop=0.3, duplicate=0.3, delay_mean_ms=10.0, fifo=False)
    sent = [f"m{i}" for i in range(200)]
    for text in sent:
        net.send(1, 2, Note(text))
    sched.run_until(lambda: False, 10_000)
    texts = [t for _, _, t in got]
    assert net.stats.dropped > 0 and net.stats.duplicated > 0
    assert len(texts) != len(set(texts)), "some message arrived twice"
    assert set(texts) < set(sent), "some message was lost"
    firsts = list(dict.fromkeys(texts))
    assert firsts != sorted(firsts, key=sent.index), "nothing was reordered"


def test_fifo_links_keep_send_order_but_still_lose_and_duplicate() -> None:
    sched = Scheduler()
    net, got = _network(sched, 5, drop=0.3, duplicate=0.3, delay_mean_ms=10.0)
    sent = [f"m{i}" for i in range(200)]
    for text in sent:
        net.send(1, 2, Note(text))
    sched.run_until(lambda: False, 10_000)
    positions = [sent.index(t) for _, _, t in got]
    assert positions == sorted(positions)
    assert len(positions) != len(set(positions)) and set(positions) != set(range(200))


def test_partitions_are_directed_and_heal() -> None:
    sched = Scheduler()
    net, got = _network(sched)
    net.cut(1, 2)
    net.send(1, 2, Note("lost"))
    net.send(2, 1, Note("kept"))
    sched.run_until(lambda: False, 100)
    assert [t for _, _, t in got] == ["kept"]
    net.heal()
    net.send(1, 2, Note("after"))
    sched.run_until(lambda: False, 100)
    assert [t for _, _, t in got] == ["kept", "after"]


def test_split_cuts_only_across_sides() -> None:
    sched = Scheduler()
    net, _ = _network(sched)
    net.split([1], [1, 2, 3])
    assert not net.link(1, 2).enabled and not net.link(3, 1).enabled
    assert net.link(2, 3).enabled and net.link(3, 2).enabled


def test_clog_holds_messages_until_unclogged() -> None:
    sched = Scheduler()
    net, got = _network(sched)
    net.clog_node(2, [1, 2, 3])
    net.send(1, 2, Note("held"))
    net.send(1, 3, Note("free"))
    sched.run_until(lambda: False, 100)
    assert [t for _, _, t in got] == ["free"]
    sched.schedule(50, "later", lambda: net.unclog_node(2, [1, 2, 3]))
    sched.run_until(lambda: False, 100)
    assert got[-1][1:] == (2, "held") and got[-1][0] >= 50


def test_disk_crash_loses_unsynced_writes_only() -> None:
    disk = SimDisk(1, ConfState(frozenset({1})))
    disk.write(snapshot=None, entries=[Entry(1, 1), Entry(2, 1)],
               hard_state=HardState(1, 1, 0))
    disk.fsync()
    disk.write(snapshot=None, entries=[Entry(3, 2), Entry(4, 2)],
               hard_state=HardState(2, 1, 2))
    assert disk.storage.last_index() == 4
    disk.crash(random.Random(0), torn_probability=0.0)
    assert disk.storage.last_index() == 2
    assert disk.storage.initial_state()[0] == HardState(1, 1, 0)


def test_disk_torn_tail_keeps_a_prefix_of_the_pending_entries() -> None:
    kept = set()
    for seed in range(40):
        disk = SimDisk(1, ConfState(frozenset({1})))
        disk.write(snapshot=None, entries=[Entry(1, 1)], hard_state=HardState(1, 1, 0))
        disk.fsync()
        disk.write(snapshot=None, entries=[Entry(i, 1) for i in range(2, 6)],
                   hard_state=HardState(1, 1, 1))
        disk.crash(random.Random(seed), torn_probability=1.0)
        kept.add(disk.storage.last_index())
        assert disk.storage.initial_state()[0] == HardState(1, 1, 0)
        assert disk.storage.term(1) == 1
    assert kept == {1, 2, 3, 4, 5}, "every cut point, from nothing kept to all entries"


class FakeNode:
    """A NodeView with settable state, for checking the checker."""

    def __init__(self, node_id: int) -> None:
        self.id = node_id
        self.incarnation = 1
        self.up = True
        self.term = 0
        self.role = Role.FOLLOWER
        self.commit_index = 0
        self.log: list[Entry] = []

    def log_entry(self, index: int) -> Entry | None:
        return self.log[index - 1] if 0 < index <= len(self.log) else None

    def last_log_index(self) -> int:
        return len(self.log)


def test_checker_catches_two_leaders_in_one_term() -> None:
    inv = Invariants()
    a, b = FakeNode(1), FakeNode(2)
    for node in (a, b):
        node.term, node.role = 3, Role.LEADER
    inv.observe(a)
    with pytest.raises(InvariantViolation, match="two leaders in term 3"):
        inv.observe(b)


def test_checker_catches_a_changed_committed_entry() -> None:
    inv = Invariants()
    a, b = FakeNode(1), FakeNode(2)
    a.log, b.log = [Entry(1, 1, data=b"x")], [Entry(1, 1, data=b"y")]
    inv.on_write(a, a.log)
    with pytest.raises(InvariantViolation, match="log matching"):
        inv.on_write(b, b.log)
    inv.on_committed(a, 1)
    with pytest.raises(InvariantViolation, match="committed entry changed"):
        inv.on_committed(b, 1)


def test_checker_catches_a_leader_without_a_committed_entry() -> None:
    inv = Invariants()
    nodes = {1: FakeNode(1), 2: FakeNode(2)}
    inv.bind(lambda i: nodes[i])
    a, b = nodes[1], nodes[2]
    a.term, a.log, a.commit_index = 1, [Entry(1, 1, data=b"x")], 1
    inv.on_committed(a, 1)
    b.term, b.role = 2, Role.LEADER
    inv.observe(b)
    with pytest.raises(InvariantViolation, match="leader completeness"):
        inv.on_leader_log_current(b)


def test_checker_catches_commit_going_back_and_bad_apply() -> None:
    inv = Invariants()
    a = FakeNode(1)
    a.log, a.commit_index = [Entry(1, 1, data=b"x"), Entry(2, 1, data=b"y")], 2
    inv.observe(a)
    inv.on_committed(a, 2)
    inv.on_apply(1, 1, a.log[0])
    with pytest.raises(InvariantViolation, match="gap or repeat"):
        inv.on_apply(1, 1, a.log[0])
    a.commit_index = 1
    with pytest.raises(InvariantViolation, match="commit index went back"):
        inv.observe(a)
