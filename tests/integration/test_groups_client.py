"""Consumer groups end to end with real processes on 127.0.0.1: the Python GroupConsumer and the
CLI against real nodes.

The rebalance test (issue 5) runs members as separate processes (group_member.py) that log
assignments, revocations and every batch they were handed, with wall-clock timestamps; the
test kills and starts them by PID and then checks, from those logs alone, that partitions
moved only as they had to, that no partition ever had two owners at once, and that every
record was processed at least once. It logs the measured rebalance times.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from rillet.client import Admin, Producer
from rillet.client.consumer import to_position
from rillet.client.errors import GroupNotEmptyError, UnknownGroupError
from rillet.client.group import GroupConsumer
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

log = logging.getLogger(__name__)

MEMBER_SCRIPT = Path(__file__).with_name("group_member.py")
ROOT = MEMBER_SCRIPT.parents[2]
TOPIC = "orders"
PARTITIONS = 6
SESSION_MS = 3000


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RILLET_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Member:
    """A group_member.py process and what it wrote."""

    name: str
    out: Path
    proc: subprocess.Popen[bytes]
    killed_at: float | None = None
    _events: list[dict[str, Any]] = field(default_factory=list)

    def events(self) -> list[dict[str, Any]]:
        try:
            lines = self.out.read_text().splitlines()
        except FileNotFoundError:
            return []
        # A line cut by kill -9 is not JSON yet: ignore it.
        out = []
        for ln in lines:
            try:
                out.append(json.loads(ln))
            except json.JSONDecodeError:
                pass
        return out

    def owned(self) -> set[int]:
        """Partitions owned now, from the assign/revoke events."""
        mine: set[int] = set()
        for e in self.events():
            if e["ev"] == "assign":
                mine |= {p for _, p in e["tps"]}
            elif e["ev"] == "revoke":
                mine -= {p for _, p in e["tps"]}
        return mine

    def ready(self) -> bool:
        return any(e["ev"] == "ready" for e in self.events())


class Members:
    def __init__(self, tmp: Path, bootstrap: str, group: str) -> None:
        self.tmp, self.bootstrap, self.group = tmp, bootstrap, group
        self.all: list[Member] = []

    def start(self, name: str) -> Member:
        out = self.tmp / f"member-{name}.jsonl"
        err = open(self.tmp / f"member-{name}.log", "ab")
        proc = subprocess.Popen(
            [sys.executable, str(MEMBER_SCRIPT), self.bootstrap, TOPIC, self.group, str(out),
             "--session-ms", str(SESSION_MS)], stdout=err, stderr=subprocess.STDOUT,
            env=_env(), cwd=ROOT)
        err.close()
        m = Member(name, out, proc)
        self.all.append(m)
        return m

    def kill(self, m: Member) -> None:
        m.killed_at = time.time()
        os.kill(m.proc.pid, signal.SIGKILL)
        m.proc.wait(timeout=10)

    def stop_all(self) -> None:
        for m in self.all:
            if m.proc.poll() is None:
                m.proc.send_signal(signal.SIGTERM)
        for m in self.all:
            try:
                m.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                m.proc.kill()
                m.proc.wait(timeout=10)

    def logs(self) -> str:
        return "\n".join(f"--- {m.name}\n" + (self.tmp / f"member-{m.name}.log").read_text(
            errors="replace")[-3000:] for m in self.all)


@pytest.fixture
def members_factory(tmp_path: Path) -> Iterator[Any]:
    made: list[Members] = []

    def make(bootstrap: str, group: str) -> Members:
        ms = Members(tmp_path, bootstrap, group)
        made.append(ms)
        return ms
    yield make
    for ms in made:
        ms.stop_all()


class _Load:
    """Produces to every partition in turn until stopped; counts what was acknowledged."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.stop = asyncio.Event()
        self.sent = 0

    async def run(self, per_second: float = 300.0) -> None:
        async with Producer(self.bootstrap, linger_ms=2) as producer:
            i = 0
            while not self.stop.is_set():
                futs = [await producer.send(TOPIC, b"v%d" % (i + k), partition=(i + k)
                                            % PARTITIONS) for k in range(PARTITIONS)]
                i += PARTITIONS
                await asyncio.gather(*futs)
                self.sent = i
                await asyncio.sleep(PARTITIONS / per_second)
            await producer.flush()


def _intervals(m: Member, end: float) -> dict[int, list[tuple[float, float]]]:
    """Per partition, the [assign, revoke) times of this member (open ones end at `end`, or
    when it was killed)."""
    stop = m.killed_at if m.killed_at is not None else end
    open_at: dict[int, float] = {}
    out: dict[int, list[tuple[float, float]]] = {}
    for e in m.events():
        if e["ev"] == "assign":
            for _, p in e["tps"]:
                open_at[p] = e["t"]
        elif e["ev"] == "revoke":
            for _, p in e["tps"]:
                out.setdefault(p, []).append((open_at.pop(p), e["t"]))
    for p, t in open_at.items():
        out.setdefault(p, []).append((t, stop))
    return out


def _check_no_two_owners(ms: list[Member], end: float) -> None:
    by_member = {m.name: _intervals(m, end) for m in ms}
    for p in range(PARTITIONS):
        spans = sorted((a, b, name) for name, iv in by_member.items() for a, b in iv.get(p, []))
        until, holder = 0.0, ""
        for a, b, name in spans:
            assert until <= a, f"partition {p}: {holder} owned it until {until}, {name} from {a}"
            until, holder = max(until, b), name
    # Every batch a member processed falls inside one of its ownership intervals.
    for m in ms:
        iv = by_member[m.name]
        for e in m.events():
            if e["ev"] == "batch":
                assert any(a <= e["t"] <= b for a, b in iv.get(e["p"], [])), (
                    f"{m.name} processed partition {e['p']} at {e['t']} without owning it")


@pytest.mark.chaos
async def test_three_members_share_six_partitions_through_a_kill_and_a_join(
        cluster_factory: Any, members_factory: Any) -> None:
    cluster = await cluster_factory(3)
    await cluster.create_topic(TOPIC, PARTITIONS, 3)
    load = _Load(cluster.bootstrap)
    loader = asyncio.get_running_loop().create_task(load.run())
    ms = members_factory(cluster.bootstrap, "billing")
    a, b, c = ms.start("a"), ms.start("b"), ms.start("c")
    try:
        await wait_for(lambda: [len(m.owned()) for m in (a, b, c)] == [2, 2, 2],
                       "three members owning two partitions each", 30.0, 0.05)
        assert a.owned() | b.owned() | c.owned() == set(range(PARTITIONS))

        # Kill -9 one member: its partitions are consumed again by the others.
        moved = c.owned()
        a_before, b_before = a.owned(), b.owned()
        ms.kill(c)
        t_kill = c.killed_at
        assert t_kill is not None

        def consumed_again() -> float | None:
            firsts = []
            for p in moved:
                ts = [e["t"] for m in (a, b) for e in m.events()
                      if e["ev"] == "batch" and e["p"] == p and e["t"] > t_kill]
                if not ts:
                    return None
                firsts.append(min(ts))
            return max(firsts)
        await wait_for(lambda: consumed_again() is not None,
                       "the killed member's partitions consumed again", SESSION_MS / 1000 + 10,
                       0.02)
        kill_to_consumed = (consumed_again() or 0) - t_kill
        assert kill_to_consumed < SESSION_MS / 1000 + 2, kill_to_consumed
        assert a.owned() | b.owned() == set(range(PARTITIONS))
        # The others kept theirs (nothing revoked), and kept reading them.
        for m, before in ((a, a_before), (b, b_before)):
            assert before <= m.owned()
            assert not [e for e in m.events() if e["ev"] == "revoke" and e["t"] > t_kill], (
                m.name)

        # A fourth joins: it takes one partition from each, nothing else moves.
        a_mid, b_mid = a.owned(), b.owned()
        d = ms.start("d")
        t_join = time.time()
        await wait_for(lambda: [len(m.owned()) for m in (a, b, d)] == [2, 2, 2],
                       "the new member taking two partitions", 20.0, 0.02)
        # Measured from the member's JoinGroup (process start-up not counted).
        joining = next(e["t"] for e in d.events() if e["ev"] == "joining")
        join_to_assigned = max(e["t"] for e in d.events() if e["ev"] == "assign") - joining
        taken = d.owned()
        assert len(a_mid - a.owned()) == 1 and len(b_mid - b.owned()) == 1
        assert (a_mid - a.owned()) | (b_mid - b.owned()) == taken
        for m in (a, b):
            revoked = {p for e in m.events() if e["ev"] == "revoke" and e["t"] > t_join
                       for _, p in e["tps"]}
            assert revoked == (a_mid if m is a else b_mid) - m.owned(), m.name
        # The old owner committed the moved partitions before releasing them: the newcomer
        # starts where it stopped (at most its last batch, not yet finished, comes again).
        await wait_for(lambda: all(any(e["ev"] == "batch" and e["p"] == p for e in d.events())
                                   for p in taken), "the newcomer reading what it took",
                       10.0, 0.02)
        for p in taken:
            old = sorted((e for m in (a, b, c) for e in m.events()
                          if e["ev"] == "batch" and e["p"] == p), key=lambda e: e["t"])
            first = min(e["first"] for e in d.events() if e["ev"] == "batch" and e["p"] == p)
            assert old and first <= old[-1]["next"], (p, first, old[-1])
            assert len(old) < 2 or first >= old[-2]["next"], (p, first, old[-2:])

        # Stop producing; everything gets processed.
        load.stop.set()
        await loader
        async with Admin(cluster.bootstrap) as admin:
            desc = await admin.describe_topic(TOPIC)
        hw = {p.partition: p.high_watermark for p in desc.partitions}
        assert sum(hw.values()) == load.sent

        def processed_to() -> dict[int, int]:
            top: dict[int, int] = {}
            for m in (a, b, c, d):
                for e in m.events():
                    if e["ev"] == "batch":
                        top[e["p"]] = max(top.get(e["p"], 0), e["next"])
            return top
        await wait_for(lambda: all(processed_to().get(p, 0) >= hw[p] for p in hw),
                       "every record processed", 20.0, 0.05)
        end = time.time()
        _covered([a, b, c, d], hw)
        _check_no_two_owners([a, b, c, d], end)
        log.warning("rebalance times: member kill -> partitions consumed again %.3f s; "
                    "member join -> new assignment %.3f s (session timeout %d ms, %d records)",
                    kill_to_consumed, join_to_assigned, SESSION_MS, load.sent)
        print(f"\nREBALANCE kill->consumed {kill_to_consumed:.3f}s "
              f"join->assigned {join_to_assigned:.3f}s records={load.sent}")
    except BaseException:
        log.error("member logs:\n%s", ms.logs())
        try:
            async with Admin(cluster.bootstrap, timeout=3) as admin:
                log.error("group as described: %s", await admin.describe_group("billing"))
        except Exception as exc:
            log.error("describe_group failed: %s", exc)
        raise
    finally:
        load.stop.set()
        await asyncio.gather(loader, return_exceptions=True)


def _coordinator(cluster: Any) -> int:
    """The node that coordinates groups now, from the node logs (the last node to say it
    started coordinating and has not said it stopped)."""
    found: list[tuple[str, int]] = []
    for n in cluster.running():
        for line in n.log_text().splitlines():
            if "coordinating consumer groups" in line:
                found.append((line[:23], n.node_id if "no longer" not in line else -1))
    assert found, "no node says it coordinates groups"
    return sorted(found)[-1][1]


def _covered(ms: list[Member], hw: dict[int, int]) -> None:
    """Every offset below the high watermark was in some batch some member processed."""
    for p, top in hw.items():
        seen = sorted((e["first"], e["next"]) for m in ms for e in m.events()
                      if e["ev"] == "batch" and e["p"] == p)
        reach = 0
        for first, nxt in seen:
            assert first <= reach, f"partition {p}: offsets {reach}..{first} never processed"
            reach = max(reach, nxt)
        assert reach >= top, f"partition {p}: processed to {reach} of {top}"


@pytest.mark.chaos
@pytest.mark.slow
async def test_members_keep_their_partitions_when_the_coordinator_is_killed(
        cluster_factory: Any, members_factory: Any) -> None:
    cluster = await cluster_factory(3)
    await cluster.create_topic(TOPIC, PARTITIONS, 3)
    load = _Load(cluster.bootstrap)
    loader = asyncio.get_running_loop().create_task(load.run(150.0))
    ms = members_factory(cluster.bootstrap, "ledger")
    a, b = ms.start("a"), ms.start("b")
    try:
        await wait_for(lambda: [len(m.owned()) for m in (a, b)] == [3, 3],
                       "two members owning three partitions each", 30.0, 0.05)
        before = {m.name: m.owned() for m in (a, b)}
        victim = _coordinator(cluster)
        t_kill = time.time()
        await asyncio.to_thread(cluster.node(victim).kill)

        def all_read_after_kill() -> bool:
            return all(any(e["ev"] == "batch" and e["p"] == p and e["t"] > t_kill
                           for m in (a, b) for e in m.events()) for p in range(PARTITIONS))
        await wait_for(all_read_after_kill, "every partition read again after the kill",
                       30.0, 0.05)
        back = time.time() - t_kill
        # The members rejoined with what they owned: nothing moved.
        assert {m.name: m.owned() for m in (a, b)} == before
        for m in (a, b):
            assert not [e for e in m.events() if e["ev"] in ("revoke", "assign")
                        and e["t"] > t_kill], m.name
        # Commits go on under the new coordinator.
        async with Admin(",".join(n.address for n in cluster.running())) as admin:
            async def committed_after() -> bool:
                d = await admin.describe_group("ledger")
                return len(d.members) == 2 and all(p.committed_offset > 0
                                                   for p in d.partitions)
            deadline = time.monotonic() + 15
            while not await committed_after():
                assert time.monotonic() < deadline, "no commits under the new coordinator"
                await asyncio.sleep(0.2)
        load.stop.set()
        await loader
        async with Admin(",".join(n.address for n in cluster.running())) as admin:
            desc = await admin.describe_topic(TOPIC)
        hw = {p.partition: p.high_watermark for p in desc.partitions}

        def done() -> bool:
            try:
                _covered([a, b], hw)
            except AssertionError:
                return False
            return True
        await wait_for(done, "every record processed", 20.0, 0.1)
        _check_no_two_owners([a, b], time.time())
        log.warning("coordinator (node %d) killed: every partition read again after %.3f s, "
                    "no partition moved", victim, back)
        print(f"\nCOORDINATOR KILL node {victim}: partitions read again after {back:.3f}s")
    except BaseException:
        log.error("member logs:\n%s", ms.logs())
        raise
    finally:
        load.stop.set()
        await asyncio.gather(loader, return_exceptions=True)


async def test_a_static_member_restarting_gets_its_partitions_back_without_a_rebalance(
        broker_factory: Any) -> None:
    bs = broker_factory().address
    async with Admin(bs) as admin:
        await admin.create_topic(TOPIC, 4)
    changes: list[tuple[str, list[Any]]] = []
    other = GroupConsumer(bs, TOPIC, group_id="static", auto_offset_reset="earliest",
                          on_assign=lambda ps: changes.append(("assign", ps)),
                          on_revoke=lambda ps: changes.append(("revoke", ps)))
    await other.start()
    try:
        pod = GroupConsumer(bs, TOPIC, group_id="static", instance_id="pod-0",
                            session_timeout_ms=10_000)
        await pod.start()
        await wait_for(lambda: len(pod.assignment()) == 2 and len(other.assignment()) == 2,
                       "two partitions each", 10.0)
        mine, generation = pod.assignment(), pod.generation
        settled = len(changes)
        await pod.close()  # a static member closes without leaving: a restart

        async with Admin(bs) as admin:
            d = await admin.describe_group("static")
        [gone] = [m for m in d.members if m.instance_id == "pod-0"]
        assert gone.disconnected
        assert sorted((t.topic, p) for t in gone.assigned for p in t.partitions) == [
            (tp.topic, tp.partition) for tp in mine]

        again = GroupConsumer(bs, TOPIC, group_id="static", instance_id="pod-0",
                              session_timeout_ms=10_000)
        await again.start()
        try:
            assert again.assignment() == mine
            assert again.generation == generation
            assert changes[settled:] == [], "the other member saw a rebalance"
        finally:
            await again.close(leave=True)
        # Leaving for good moves the partitions at once.
        await wait_for(lambda: len(other.assignment()) == 4, "the leaver's partitions moved",
                       10.0)
    finally:
        await other.close()


# ---------------------------------------------------------------------------------- the CLI


def rillet(*args: str, bootstrap: str, timeout: float = 60.0,
           check: bool = True) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run([sys.executable, "-m", "rillet.cli", *args, "--bootstrap", bootstrap],
                          capture_output=True, timeout=timeout, check=False, env=_env(),
                          cwd=ROOT)
    if check:
        assert proc.returncode == 0, proc.stderr.decode()
    return proc


async def test_cli_consume_group_prints_only_what_is_new_and_reset_replays(
        broker_factory: Any) -> None:
    broker = broker_factory()
    bs = broker.address
    async with Admin(bs) as admin:
        await admin.create_topic(TOPIC, 3)
    async with Producer(bs) as producer:
        for i in range(30):
            await producer.send(TOPIC, b"first-%d" % i, partition=i % 3)
        await producer.flush()

    def consume(*extra: str) -> list[str]:
        # --max-records ends a run as soon as the expected records are printed; the idle
        # timeout ends one that expects nothing (or that would get fewer than expected).
        out = rillet("consume", TOPIC, "--group", "cli", "--from", "earliest",
                     "--idle-timeout", "1.5", *extra, bootstrap=bs)
        return out.stdout.decode().splitlines()

    first = await asyncio.to_thread(consume, "--max-records", "30")
    assert sorted(first) == sorted(f"first-{i}" for i in range(30))
    assert await asyncio.to_thread(consume) == []

    # Record timestamps are the producer's clock, in ms: let one pass between the two runs.
    t_second = int(time.time() * 1000) + 1
    await wait_for(lambda: time.time() * 1000 > t_second + 1, "a millisecond to pass", 1.0)
    async with Producer(bs) as producer:
        for i in range(6):
            await producer.send(TOPIC, b"second-%d" % i, partition=i % 3)
        await producer.flush()
    # --max-records stops in the middle: exactly what was printed is committed.
    part = await asyncio.to_thread(consume, "--max-records", "4")
    rest = await asyncio.to_thread(consume, "--max-records", "3")
    assert len(part) == 4
    assert sorted(part + rest) == sorted(f"second-{i}" for i in range(6))

    # Lag shows in describe once records arrive that the group has not read.
    async with Producer(bs) as producer:
        for i in range(5):
            await producer.send(TOPIC, b"third-%d" % i, partition=0)
        await producer.flush()
    desc = json.loads((await asyncio.to_thread(
        rillet, "group", "describe", "cli", "--format", "json", bootstrap=bs)).stdout)
    lag = {p["partition"]: p for p in desc["partitions"] if p["topic"] == TOPIC}
    assert lag[0]["lag"] == 5 and lag[1]["lag"] == 0 and lag[2]["lag"] == 0, lag
    assert lag[0]["committed_offset"] == 12 and lag[0]["high_watermark"] == 17
    assert lag[0]["lag_seconds"] >= 0
    text = (await asyncio.to_thread(rillet, "group", "describe", "cli",
                                    bootstrap=bs)).stdout.decode().splitlines()
    assert text[0].startswith("group cli: empty")
    assert text[1].split() == ["topic", "partition", "committed", "high_watermark", "lag",
                               "lag_seconds", "owner"]
    assert text[2].split()[:5] == [TOPIC, "0", "12", "17", "5"]
    # Reset to a time: the first offset written at or after it, per partition (dry run).
    at = (await asyncio.to_thread(
        rillet, "group", "reset-offsets", "cli", "--topic", TOPIC, "--to", f"{t_second}ms",
        "--dry-run", "--format", "json", bootstrap=bs)).stdout
    assert [(o["partition"], o["offset"]) for o in json.loads(at)] == [(0, 10), (1, 10),
                                                                        (2, 10)]
    async with Admin(bs) as admin:
        assert [(g.group, g.state, g.members) for g in await admin.list_groups()] == [
            ("cli", "empty", 0)]
        dry = await admin.reset_group_offsets("cli", TOPIC, to_position("earliest"),
                                              dry_run=True)
        assert [(o.partition, o.offset) for o in dry] == [(0, 0), (1, 0), (2, 0)]
        assert (await admin.describe_group("cli")).partitions[0].committed_offset == 12

    # Reset to earliest: the next run replays everything.
    await asyncio.to_thread(rillet, "group", "reset-offsets", "cli", "--topic", TOPIC,
                            "--to", "earliest", bootstrap=bs)
    replayed = await asyncio.to_thread(consume, "--max-records", "41")
    assert sorted(replayed) == sorted([f"first-{i}" for i in range(30)]
                                      + [f"second-{i}" for i in range(6)]
                                      + [f"third-{i}" for i in range(5)])

    # Delete forgets the group: describing it is then an error with one line.
    async with Admin(bs) as admin:
        with pytest.raises(GroupNotEmptyError):
            # A member is still in the group: delete is refused.
            async with GroupConsumer(bs, TOPIC, group_id="cli"):
                await admin.delete_group("cli")
        await admin.delete_group("cli")
        with pytest.raises(UnknownGroupError):
            await admin.describe_group("cli")
