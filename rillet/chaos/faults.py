"""The fault kinds of a chaos run: each injects one fault now and returns how to heal it.

A fault function takes the run's `FaultContext` and a `random.Random` (the schedule's, so a
seed replays the same choices as far as the cluster's own timing allows), injects, records a
`FaultEvent` in the history (start now, end when healed) and returns an `ActiveFault` whose
`heal()` undoes it. Faults that find nothing to act on (no partition has a leader right now)
return None and the schedule moves on.

Kinds (docs/chaos.md has the long form):

- kill-leader / kill-follower / kill-metadata-leader / kill-random: kill -9 that node (a
  partition leader, a follower of one, the metadata group's leader, any node); heal restarts it
  on its data.
- pause: SIGSTOP a node (half the time a partition leader), SIGCONT on heal. A paused leader
  wakes up believing it still leads; it must not acknowledge anything stale.
- isolate-node: every link to and from one node cut (reset) or black-holed (held).
- split: a minority (of size (n-1)//2, holding some partition leader) cut off from the
  majority, both directions. With three nodes this is a leader isolated.
- one-way-cut: only one direction: a node's outbound links, or its inbound ones.
- delay-link / slow-link: every link of one node delayed (50-400 ms per chunk) or limited to
  20-200 kB/s.
- corrupt-follower-segment: kill -9 a follower of a partition, flip one byte in (or truncate)
  its newest segment file of that partition, restart it; heal waits until it caught up with
  the leader again. The node must find the damage by CRC on open, cut it, and fetch again.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import struct
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from rillet.api.v1 import admin_pb2, admin_pb2_grpc
from rillet.batch import CRC_START, HEADER_SIZE, LENGTH_PREFIX_SIZE
from rillet.chaos.cluster import ChaosCluster
from rillet.chaos.history import FaultEvent, History, Op, Outcome

log = logging.getLogger(__name__)

#: How long the heal of a corruption waits for the damaged follower to catch up.
CATCH_UP_TIMEOUT_S = 30.0
_RECOVERY_LINE = re.compile(r"recovery cut (\d+) bytes|dropping \d+ segment")


@dataclass
class FaultContext:
    """What faults act on, and what they count."""

    cluster: ChaosCluster
    history: History
    topic: str
    partitions: int
    injected: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)


@dataclass
class ActiveFault:
    event: FaultEvent
    heal_fn: Callable[[], Awaitable[str | None]]
    healed: bool = False

    async def heal(self, history: History) -> None:
        """Undo the fault (once); a returned note is appended to the event's detail."""
        if self.healed:
            return
        self.healed = True
        try:
            note = await self.heal_fn()
        finally:
            history.end_fault(self.event)
        if note:
            self.event.detail = f"{self.event.detail}; {note}" if self.event.detail else note


FaultFn = Callable[[FaultContext, random.Random], Awaitable[ActiveFault | None]]


def _start(ctx: FaultContext, kind: str, target: str, detail: str = "") -> FaultEvent:
    ctx.injected[kind] += 1
    log.info("fault %s on %s%s", kind, target, f" ({detail})" if detail else "")
    return ctx.history.start_fault(kind, target, detail)


async def _leaders(ctx: FaultContext) -> dict[int, int]:
    return {p: n for p, n in (await ctx.cluster.leaders(ctx.topic)).items() if n >= 0}


def _up(ctx: FaultContext) -> list[int]:
    return [n.node_id for n in ctx.cluster.reachable()]


async def _kill_and_restart(ctx: FaultContext, kind: str, node: int, why: str
                            ) -> ActiveFault:
    event = _start(ctx, kind, f"node {node}", why)
    await ctx.cluster.kill(node)

    async def heal() -> str | None:
        await ctx.cluster.restart(node)
        return None
    return ActiveFault(event, heal)


async def kill_leader(ctx: FaultContext, rng: random.Random) -> ActiveFault | None:
    leaders = await _leaders(ctx)
    if not leaders:
        return None
    part = rng.choice(sorted(leaders))
    return await _kill_and_restart(ctx, "kill-leader", leaders[part],
                                   f"leader of partition {part}")


async def kill_follower(ctx: FaultContext, rng: random.Random) -> ActiveFault | None:
    leaders = await _leaders(ctx)
    if not leaders:
        return None
    part = rng.choice(sorted(leaders))
    followers = [n for n in _up(ctx) if n != leaders[part]]
    if not followers:
        return None
    return await _kill_and_restart(ctx, "kill-follower", rng.choice(followers),
                                   f"follower of partition {part}")


async def kill_metadata_leader(ctx: FaultContext, rng: random.Random) -> ActiveFault | None:
    node = await ctx.cluster.metadata_leader()
    if node < 0 or node not in _up(ctx):
        return None
    return await _kill_and_restart(ctx, "kill-metadata-leader", node,
                                   "metadata leader (as GetMetadata names it)")


async def kill_random(ctx: FaultContext, rng: random.Random) -> ActiveFault | None:
    up = _up(ctx)
    if not up:
        return None
    return await _kill_and_restart(ctx, "kill-random", rng.choice(up), "")


async def pause(ctx: FaultContext, rng: random.Random) -> ActiveFault | None:
    leaders = await _leaders(ctx)
    up = _up(ctx)
    if not up:
        return None
    if leaders and rng.random() < 0.5:
        part = rng.choice(sorted(leaders))
        node, why = leaders[part], f"leader of partition {part}"
    else:
        node, why = rng.choice(up), ""
    event = _start(ctx, "pause", f"node {node}", why)
    ctx.cluster.pause(node)

    async def heal() -> str | None:
        ctx.cluster.resume(node)
        return None
    return ActiveFault(event, heal)


def _link_fault(ctx: FaultContext, kind: str, target: str, pairs: list[tuple[int, int]],
                hold: bool, detail: str) -> ActiveFault:
    mode = "black-holed" if hold else "reset"
    event = _start(ctx, kind, target, f"{detail}{'; ' if detail else ''}{mode}: "
                   + " ".join(f"{a}->{b}" for a, b in sorted(pairs)))
    ctx.cluster.proxies.cut(pairs, hold=hold)

    async def heal() -> str | None:
        ctx.cluster.proxies.heal(pairs)
        return None
    return ActiveFault(event, heal)


async def isolate_node(ctx: FaultContext, rng: random.Random) -> ActiveFault | None:
    n = len(ctx.cluster.nodes)
    node = rng.randrange(n)
    pairs = ctx.cluster.proxies.pairs_between([node], [j for j in range(n) if j != node])
    return _link_fault(ctx, "isolate-node", f"node {node}", pairs, rng.random() < 0.5, "")


async def split(ctx: FaultContext, rng: random.Random) -> ActiveFault | None:
    n = len(ctx.cluster.nodes)
    size = (n - 1) // 2
    if size < 1:
        return None
    leaders = await _leaders(ctx)
    seed_node = leaders[rng.choice(sorted(leaders))] if leaders else rng.randrange(n)
    others = [j for j in range(n) if j != seed_node]
    minority = sorted([seed_node, *rng.sample(others, size - 1)])
    majority = [j for j in range(n) if j not in minority]
    pairs = ctx.cluster.proxies.pairs_between(minority, majority)
    return _link_fault(ctx, "split", f"nodes {minority} | {majority}", pairs,
                       rng.random() < 0.5, f"minority {minority} holds a leader")


async def one_way_cut(ctx: FaultContext, rng: random.Random) -> ActiveFault | None:
    n = len(ctx.cluster.nodes)
    leaders = await _leaders(ctx)
    node = leaders[rng.choice(sorted(leaders))] if leaders and rng.random() < 0.5 \
        else rng.randrange(n)
    outbound = rng.random() < 0.5
    pairs = [(node, j) if outbound else (j, node) for j in range(n) if j != node]
    return _link_fault(ctx, "one-way-cut", f"node {node} {'out' if outbound else 'in'}",
                       pairs, rng.random() < 0.5, "")


async def delay_link(ctx: FaultContext, rng: random.Random) -> ActiveFault | None:
    n = len(ctx.cluster.nodes)
    node = rng.randrange(n)
    pairs = ctx.cluster.proxies.pairs_between([node], [j for j in range(n) if j != node])
    ms = rng.choice([50, 100, 200, 400])
    event = _start(ctx, "delay-link", f"node {node}", f"{ms} ms each way on all its links")
    ctx.cluster.proxies.delay(pairs, ms)

    async def heal() -> str | None:
        ctx.cluster.proxies.heal(pairs)
        return None
    return ActiveFault(event, heal)


async def slow_link(ctx: FaultContext, rng: random.Random) -> ActiveFault | None:
    n = len(ctx.cluster.nodes)
    node = rng.randrange(n)
    pairs = ctx.cluster.proxies.pairs_between([node], [j for j in range(n) if j != node])
    rate = rng.choice([20_000, 50_000, 200_000])
    event = _start(ctx, "slow-link", f"node {node}", f"{rate // 1000} kB/s on all its links")
    ctx.cluster.proxies.slow(pairs, rate)

    async def heal() -> str | None:
        ctx.cluster.proxies.heal(pairs)
        return None
    return ActiveFault(event, heal)


# -- disk corruption -----------------------------------------------------------------------------

_HEADER_FIELDS = (("base_offset", 0), ("batch_length", 8), ("leader_term", 12),
                  ("raft_index", 20), ("magic", 28), ("crc", 29))


def where_in_batches(data: bytes, pos: int) -> str:
    """Name the place of byte `pos` in a segment file: which batch, which header field (or
    "CRC-covered"), found by walking the length prefixes."""
    start, k = 0, 0
    while start + LENGTH_PREFIX_SIZE <= len(data):
        (length,) = struct.unpack_from("<i", data, start + 8)
        end = start + LENGTH_PREFIX_SIZE + length
        if length <= 0 or pos < end:
            rel = pos - start
            if rel >= CRC_START:
                return f"batch {k} (at {start}), byte {rel}: CRC-covered"
            name = [f for f, off in _HEADER_FIELDS if off <= rel][-1]
            return f"batch {k} (at {start}), byte {rel}: header field {name}"
        start, k = end, k + 1
    return f"after the last whole batch (at {start})"


def corrupt_file(path: Path, rng: random.Random, mode: str, *, crc_covered: bool = False
                 ) -> str:
    """Flip one byte of, or truncate, `path`; return what was done.

    flip: a byte in the second half of the file (with `crc_covered`, one in the CRC-covered
    part of the last batch, which a CRC check must catch); truncate: cut the file somewhere in
    its second half.
    """
    data = path.read_bytes()
    size = len(data)
    if size < HEADER_SIZE:
        raise ValueError(f"{path} has only {size} bytes")
    if mode == "truncate":
        new_size = rng.randrange(size // 2, size)
        with open(path, "r+b") as f:
            f.truncate(new_size)
        return f"{path.name}: truncated {size} -> {new_size} bytes"
    if crc_covered:
        start = 0
        while True:
            (length,) = struct.unpack_from("<i", data, start + 8)
            end = start + LENGTH_PREFIX_SIZE + length
            if end >= size:
                break
            start = end
        pos = rng.randrange(start + CRC_START, size)
    else:
        pos = rng.randrange(size // 2, size)
    where = where_in_batches(data, pos)
    with open(path, "r+b") as f:
        f.seek(pos)
        f.write(bytes([data[pos] ^ 0xFF]))
    return f"{path.name}: flipped byte {pos} of {size} ({where})"


async def describe_partition(address: str, topic: str, partition: int
                             ) -> admin_pb2.PartitionDescription | None:
    """This node's own view of one partition (DescribeTopic is answered locally)."""
    try:
        async with grpc.aio.insecure_channel(address) as ch:
            stub = admin_pb2_grpc.AdminStub(ch)  # type: ignore[no-untyped-call]
            resp = await stub.DescribeTopic(admin_pb2.DescribeTopicRequest(name=topic),
                                            timeout=2.0)
    except grpc.aio.AioRpcError:
        return None
    for p in resp.topic.partitions:
        if p.partition == partition:
            desc: admin_pb2.PartitionDescription = p
            return desc
    return None


def recovery_lines(cluster: ChaosCluster, node: int) -> list[str]:
    """The node's recovery warnings (bytes cut, segments dropped) since its latest start."""
    text = cluster.node(node).log_path.read_text(errors="replace").rsplit("--- start #", 1)[-1]
    return [line for line in text.splitlines() if _RECOVERY_LINE.search(line)]


async def wait_caught_up(cluster: ChaosCluster, node: int, topic: str, partition: int,
                         timeout_s: float = CATCH_UP_TIMEOUT_S) -> str:
    """Until `node`'s high watermark of the partition reaches the leader's (as it was when
    we started waiting); returns a note of how long it took or that it did not."""
    t0 = time.monotonic()
    target = -1
    while time.monotonic() - t0 < timeout_s:
        leaders = await cluster.leaders(topic)
        leader = leaders.get(partition, -1)
        if target < 0 and leader >= 0 and leader != node:
            desc = await describe_partition(cluster.node(leader).address, topic, partition)
            if desc is not None:
                target = desc.high_watermark
        if target >= 0 or leader == node:
            mine = await describe_partition(cluster.node(node).address, topic, partition)
            if mine is not None and (leader == node or mine.high_watermark >= target):
                return f"caught up in {time.monotonic() - t0:.1f}s"
        await asyncio.sleep(0.2)
    return f"NOT caught up after {timeout_s:.0f}s"


async def corrupt_follower_segment(ctx: FaultContext, rng: random.Random, *,
                                   mode: str | None = None, crc_covered: bool = False,
                                   partition: int | None = None) -> ActiveFault | None:
    leaders = await _leaders(ctx)
    candidates = sorted(leaders) if partition is None else [p for p in leaders
                                                            if p == partition]
    if not candidates:
        return None
    part = rng.choice(candidates)
    followers = [n for n in _up(ctx) if n != leaders[part]]
    if not followers:
        return None
    node = rng.choice(followers)
    mode = mode or rng.choice(["flip", "truncate"])
    event = _start(ctx, "corrupt-follower-segment", f"node {node}",
                   f"partition {part}, {mode}")
    await ctx.cluster.kill(node)
    pdir = ctx.cluster.partition_dir(node, ctx.topic, part)
    segments = sorted(pdir.glob("*.log")) if pdir is not None else []
    segments = [s for s in segments if s.stat().st_size >= HEADER_SIZE]
    if not segments:
        what = f"no segment with data in {pdir}; nothing corrupted"
    else:
        what = corrupt_file(segments[-1], rng, mode, crc_covered=crc_covered)
    event.detail = f"{event.detail}: {what}"
    log.info("node %d partition %d: %s", node, part, what)

    async def heal() -> str | None:
        await ctx.cluster.restart(node)
        found = recovery_lines(ctx.cluster, node)
        caught = await wait_caught_up(ctx.cluster, node, ctx.topic, part)
        note = (f"detected on restart: {found[0].split(': ', 1)[-1]}" if found
                else "no recovery cut logged") + f"; {caught}"
        ctx.notes.append(f"node {node} p{part}: {what}; {note}")
        return note
    return ActiveFault(event, heal)


KINDS: dict[str, FaultFn] = {
    "kill-leader": kill_leader,
    "kill-follower": kill_follower,
    "kill-metadata-leader": kill_metadata_leader,
    "kill-random": kill_random,
    "pause": pause,
    "isolate-node": isolate_node,
    "split": split,
    "one-way-cut": one_way_cut,
    "delay-link": delay_link,
    "slow-link": slow_link,
    "corrupt-follower-segment": corrupt_follower_segment,
}


async def freeze_followers_kill_leader(ctx: FaultContext, rng: random.Random
                                       ) -> ActiveFault | None:
    """Leave one partition leader alone with what it appends, then let the others move on
    without it: what it appended alone must vanish. A correct node acknowledged none of it (no
    majority); the planted early-ack bug did, so the checker must report those writes lost.
    Beyond a one-node fault on purpose: it costs availability, never safety.

    Every step closes a path by which the lone appends could survive, so the loss does not
    depend on timing or on who wins an election:
    - the links between the leader and the others are black-holed (held, so the leader sees no
      reset and keeps leading until check-quorum deposes it), then the others are frozen
      (SIGSTOP), so nobody else can be elected meanwhile;
    - heal waits (bounded) until a write sent after both steps was acknowledged (with the bug:
      by the lone leader), kills -9 the leader, then resets the held links, which discards
      every byte the leader sent after the hold (an append it sent then reaches nobody, not
      even later out of a socket buffer), wakes the others and heals the links;
    - the leader stays down until the others elected one of them and it acknowledged a write
      of its own (`acks=all`, so committed on both in a newer term): from then on the old
      leader can never win an election with its longer log, and on restart it must cut it.
    """
    leaders = await _leaders(ctx)
    if not leaders:
        return None
    part = rng.choice(sorted(leaders))
    leader = leaders[part]
    others = [n for n in _up(ctx) if n != leader]
    event = _start(ctx, "freeze-followers-kill-leader", f"node {leader}",
                   f"leader of partition {part}; links to {others} held, nodes {others} "
                   f"frozen")
    pairs = ctx.cluster.proxies.pairs_between([leader], others)
    ctx.cluster.proxies.cut(pairs, hold=True)
    for n in others:
        ctx.cluster.pause(n)
    alone_since_s = ctx.history.clock()

    async def heal() -> str | None:
        notes = [await _wait_acknowledged_after(ctx, part, alone_since_s, LONE_ACK_WAIT_S)]
        await ctx.cluster.kill(leader)
        ctx.cluster.proxies.cut(pairs)
        for n in others:
            ctx.cluster.resume(n)
        ctx.cluster.proxies.heal(pairs)
        value = f"fault-{part}-{event.start_s:.3f}"
        notes.append(await _write_through(ctx, part, others, value))
        await ctx.cluster.restart(leader)
        return "; ".join(notes)
    return ActiveFault(event, heal)


#: How long heal waits for a write sent while the leader was alone to be acknowledged.
LONE_ACK_WAIT_S = 5.0
#: How long heal tries to get a write acknowledged by the nodes left behind.
FRESH_WRITE_TIMEOUT_S = 30.0
#: The history's process number of writes made by fault code (not a workload writer).
FAULT_WRITER = 1000


async def _wait_acknowledged_after(ctx: FaultContext, partition: int, since_s: float,
                                   timeout_s: float) -> str:
    """Until some write to `partition` sent after `since_s` is acknowledged (bounded)."""
    deadline = time.monotonic() + timeout_s
    while True:
        acked = [op for op in ctx.history.ops
                 if op.kind == "write" and op.partition == partition
                 and op.outcome == "ok" and op.start_s >= since_s]
        if acked:
            return f"{len(acked)} writes sent after it was alone acknowledged"
        if time.monotonic() >= deadline:
            return f"no write sent after it was alone acknowledged within {timeout_s:.0f}s"
        await asyncio.sleep(0.1)


async def _write_through(ctx: FaultContext, partition: int, nodes: list[int], value: str
                         ) -> str:
    """Write `value` to `partition` through `nodes` only, `acks=all`, until acknowledged
    (bounded); recorded in the history like a workload write, so the checker expects it."""
    from rillet.client import Producer

    bootstrap = ",".join(ctx.cluster.node(n).address for n in nodes)
    start_s = ctx.history.clock()
    outcome: Outcome = "unknown"
    offset: int | None = None
    error = ""
    try:
        async with Producer(bootstrap, acks="all",
                            delivery_timeout_ms=int(FRESH_WRITE_TIMEOUT_S * 1000)) as producer:
            handle = await producer.send(ctx.topic, value.encode(), partition=partition)
            offset = (await asyncio.wait_for(handle, FRESH_WRITE_TIMEOUT_S + 5.0)).offset
            outcome = "ok"
    except Exception as exc:  # recorded as unknown; the run's verdict shows the rest
        error = repr(exc)
    ctx.history.add_op(Op(FAULT_WRITER, "write", partition, value, start_s,
                          ctx.history.clock(), outcome, offset, error))
    if outcome == "ok":
        return f"nodes {nodes} acknowledged a write of their own at offset {offset}"
    return f"nodes {nodes} did not acknowledge a write of their own: {error}"


KINDS["freeze-followers-kill-leader"] = freeze_followers_kill_leader
#: Disk damage (`RILLET_CHAOS_DISK=0` leaves it out of a sweep).
DISK_KINDS = ("corrupt-follower-segment",)
#: What a random schedule draws from by default: every kind that faults one node at a time.
RANDOM_KINDS = tuple(k for k in KINDS if k != "freeze-followers-kill-leader")
