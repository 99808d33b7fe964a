"""Benchmark of the pure Raft core, in one process, with no network or disk.

1. Replication: a 3-node group proposes 16 KiB opaque entries in batches; every message goes
   through the codec (as on the wire) and every Ready is handled by the contract (persist to
   MemoryStorage, send, apply, advance). Prints entries (and MiB) committed per second.
2. Idle groups: 1,000 groups on one node, each a follower hearing a heartbeat from its leader
   every heartbeat tick. Prints node-wide tick rounds per second (one tick of all 1,000
   groups) and group ticks per second.

Figures only: nothing here asserts on time. Run: .venv/bin/python bench/raft_core.py
"""

from __future__ import annotations

import argparse
import logging
import random
import time
from collections import deque

from rillet.cluster.raft import (
    Config,
    ConfState,
    MemoryStorage,
    Message,
    MessageType,
    RaftCore,
    Role,
)
from rillet.cluster.raft.codec import decode_message, encode_message
from rillet.cluster.raft.storage import persist_ready

log = logging.getLogger("bench.raft_core")


def _handle_ready(core: RaftCore, storage: MemoryStorage) -> tuple[list[bytes], int]:
    """The apply-path contract; returns encoded messages and the number of entries applied."""
    if not core.has_ready():
        return [], 0
    rd = core.ready()
    persist_ready(storage, rd)
    out = [encode_message(m) for m in rd.all_messages()]
    applied = len(rd.committed_entries)
    core.advance(rd)
    return out, applied


def bench_replication(entries_total: int, entry_bytes: int, batch: int) -> None:
    ids = (1, 2, 3)
    conf = ConfState(frozenset(ids))
    storages = {i: MemoryStorage(conf) for i in ids}
    cores = {i: RaftCore(Config(id=i), storages[i], random.Random(i), log) for i in ids}
    payload = bytes(random.Random(0).getrandbits(8) for _ in range(entry_bytes))
    queue: deque[bytes] = deque()

    def pump() -> int:
        applied_on_leader = 0
        for _ in range(1_000_000):
            progressed = False
            for i in ids:
                out, applied = _handle_ready(cores[i], storages[i])
                if i == 1:
                    applied_on_leader += applied
                queue.extend(out)
                progressed = progressed or bool(out) or bool(applied)
            while queue:
                m = decode_message(queue.popleft())
                cores[m.to].step(m)
                progressed = True
            if not progressed:
                return applied_on_leader
        raise RuntimeError("cluster did not settle")

    cores[1].campaign()
    pump()
    assert cores[1].role == Role.LEADER
    # Keep a window of uncommitted proposals bounded; after it fills, wait for commits.
    start = time.perf_counter()
    proposed = committed = 0
    while committed < entries_total:
        n = min(batch, entries_total - proposed)
        if n > 0:
            cores[1].propose_batch([payload] * n)
            proposed += n
        committed += pump()
        # Data entries only: the leader's election no-op was applied before the clock.
    elapsed = time.perf_counter() - start
    rate = committed / elapsed
    print(f"replication: 3 nodes, {committed} entries of {entry_bytes // 1024} KiB in batches "
          f"of {batch}, all messages through the codec")
    print(f"  {rate:,.0f} entries committed/s, {rate * entry_bytes / 2**20:,.1f} MiB/s "
          f"({elapsed:.2f} s)")


def bench_idle_groups(groups: int, rounds: int) -> None:
    cores: list[tuple[RaftCore, MemoryStorage, Message]] = []
    conf = ConfState(frozenset({1, 2, 3}))
    for g in range(groups):
        storage = MemoryStorage(conf)
        core = RaftCore(Config(id=1), storage, random.Random(g), log)
        beat = Message(MessageType.HEARTBEAT, to=1, frm=2, term=1)
        core.step(Message(MessageType.APPEND, to=1, frm=2, term=1))
        _handle_ready(core, storage)
        cores.append((core, storage, beat))
    start = time.perf_counter()
    for _ in range(rounds):
        for core, storage, beat in cores:
            core.tick()
            core.step(beat)  # the leader's heartbeat for this tick (heartbeat_ticks=1)
            _handle_ready(core, storage)
    elapsed = time.perf_counter() - start
    assert all(c.role == Role.FOLLOWER and c.term == 1 for c, _, _ in cores)
    print(f"idle groups: {groups} follower groups on one node, a heartbeat per group per tick")
    print(f"  {rounds / elapsed:,.1f} node tick rounds/s, {groups * rounds / elapsed:,.0f} "
          f"group ticks/s (tick + heartbeat step + Ready handling; {elapsed:.2f} s)")
    start = time.perf_counter()
    for _ in range(rounds):
        for core, _, _ in cores:
            core.tick()
    elapsed = time.perf_counter() - start
    print(f"  bare tick(): {groups * rounds / elapsed:,.0f} group ticks/s "
          f"({rounds / elapsed:,.1f} rounds/s over {groups} groups)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=20_000)
    parser.add_argument("--entry-bytes", type=int, default=16 * 1024)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--groups", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    bench_replication(args.entries, args.entry_bytes, args.batch)
    bench_idle_groups(args.groups, args.rounds)


if __name__ == "__main__":
    main()
