"""Benchmark of the multi-Raft driver: three RaftDrivers in one process over an
InMemoryNetwork (no gRPC, no disk: CountingSyncer), so the figures are the driver's and the
core's own cost.

1. Replication: ``--groups`` groups (leaders spread over the 3 nodes), 16 KiB entries,
   ``--window`` proposals in flight per group. Prints proposals committed (future resolved on
   the leader) per second, MiB/s, and rounds/syncs per node.
2. Idle: ``--idle-groups`` groups (default 1,000) on each of the 3 nodes, every group with a
   leader, nothing proposed, a heartbeat every ``--heartbeat-ticks`` ticks. Prints CPU per
   node per tick and the share of a core per node at ``--tick-ms``. All three nodes share
   this process, so the CPU is divided by three. Idle groups quiesce (decision 0404) unless
   ``--no-quiesce`` (the cost before quiescence).

Figures only: nothing here asserts on time. Run: .venv/bin/python bench/raft_driver.py
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import time

from rillet.cluster.driver import CountingSyncer, RaftDriver
from rillet.cluster.raft import (
    Config,
    ConfState,
    Entry,
    MemoryStorage,
    ProposalDroppedError,
    Role,
    Snapshot,
)
from rillet.cluster.transport import InMemoryNetwork

NODES = (1, 2, 3)


class NullMachine:
    def apply(self, entries: list[Entry]) -> list[int]:
        return [e.index for e in entries]

    def restore(self, snapshot: Snapshot) -> None:
        pass


def build(groups: int, tick_ms: float, raft: Config, quiesce: bool = True) -> tuple[
        InMemoryNetwork, dict[int, RaftDriver], dict[int, dict[int, MemoryStorage]]]:
    net = InMemoryNetwork()
    drivers: dict[int, RaftDriver] = {}
    storages: dict[int, dict[int, MemoryStorage]] = {}
    conf = ConfState(frozenset(NODES))
    for n in NODES:
        d = RaftDriver(n, net.transport(n), CountingSyncer(), raft_config=raft, tick_ms=tick_ms,
                       seed=n, quiesce=quiesce)
        storages[n] = {}
        for g in range(1, groups + 1):
            storages[n][g] = MemoryStorage(conf)
            d.add_group(g, storages[n][g], NullMachine())
        net.register(n, d.receive)
        drivers[n] = d
    return net, drivers, storages


async def elect(drivers: dict[int, RaftDriver], groups: int, timeout_s: float = 120.0) -> None:
    for g in range(1, groups + 1):
        drivers[NODES[g % 3]].campaign(g)
    deadline = time.monotonic() + timeout_s
    while True:
        missing = [g for g in range(1, groups + 1)
                   if not any(d.core(g).role == Role.LEADER for d in drivers.values())]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"{len(missing)} groups without a leader after {timeout_s}s")
        await asyncio.sleep(0.05)


def leader_of(drivers: dict[int, RaftDriver], g: int) -> RaftDriver:
    for d in drivers.values():
        if d.core(g).role == Role.LEADER:
            return d
    raise LookupError(g)


async def bench_replication(groups: int, entry_bytes: int, window: int, seconds: float,
                            tick_ms: float, quiesce: bool) -> None:
    raft = Config(id=1, election_ticks=20, heartbeat_ticks=2)
    _, drivers, storages = build(groups, tick_ms, raft, quiesce)
    for d in drivers.values():
        d.start()
    await elect(drivers, groups)
    payload = os.urandom(entry_bytes)
    done = 0
    lost = 0
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + seconds

    async def pump(g: int) -> None:
        nonlocal done, lost
        sem = asyncio.Semaphore(window)

        def finished(fut: asyncio.Future[int]) -> None:
            nonlocal done, lost
            sem.release()
            if fut.exception() is None:
                done += 1
            else:
                lost += 1

        while loop.time() < stop_at:
            await sem.acquire()
            try:
                fut = leader_of(drivers, g).propose(g, payload)
            except (ProposalDroppedError, LookupError):
                sem.release()
                await asyncio.sleep(0.001)
                continue
            fut.add_done_callback(finished)
        for _ in range(window):  # wait for the window to drain
            await sem.acquire()

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(pump(g) for g in range(1, groups + 1)))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    for d in drivers.values():
        await d.stop()
    print(f"replication: {groups} groups x 3 nodes, {entry_bytes} B entries, window {window}, "
          f"tick {tick_ms:g} ms, quiescence {'on' if quiesce else 'off'}")
    print(f"  {done / wall:,.0f} proposals committed/s ({done * entry_bytes / wall / 2**20:,.1f} "
          f"MiB/s), {done} in {wall:.2f} s, {lost} lost; process CPU {cpu / wall:.0%} of a core, "
          f"{cpu / max(1, done) * 1e6:,.0f} us CPU per proposal (all 3 nodes)")
    for n, d in drivers.items():
        s = d.stats
        print(f"  node {n}: {s.rounds} rounds, {s.syncs} syncs, {s.readies} readies, "
              f"{s.sends} sends carrying {s.messages_out} messages")
    del storages


async def bench_idle(groups: int, seconds: float, tick_ms: float, heartbeat_ticks: int,
                     quiesce: bool) -> None:
    raft = Config(id=1, election_ticks=10 * heartbeat_ticks, heartbeat_ticks=heartbeat_ticks)
    _, drivers, _ = build(groups, tick_ms, raft, quiesce)
    for d in drivers.values():
        d.start()
    t_elect = time.perf_counter()
    await elect(drivers, groups)
    elect_s = time.perf_counter() - t_elect
    t_quiet = time.perf_counter()
    if quiesce:
        deadline = t_quiet + 60.0
        while sum(len(d.quiesced_groups()) for d in drivers.values()) < 3 * groups:
            if time.perf_counter() > deadline:
                raise SystemExit("groups did not all quiesce within 60 s")
            await asyncio.sleep(0.05)
    quiet_s = time.perf_counter() - t_quiet
    await asyncio.sleep(1.0)  # let the campaign traffic settle
    ticks0 = sum(d.stats.ticks for d in drivers.values())
    msgs0 = sum(d.stats.messages_out for d in drivers.values())
    pings0 = sum(d.stats.pings_out for d in drivers.values())
    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    ticks = sum(d.stats.ticks for d in drivers.values()) - ticks0
    msgs = sum(d.stats.messages_out for d in drivers.values()) - msgs0
    pings = sum(d.stats.pings_out for d in drivers.values()) - pings0
    leaders = sum(1 for g in range(1, groups + 1) for d in drivers.values()
                  if d.core(g).role == Role.LEADER)
    quiet = sum(len(d.quiesced_groups()) for d in drivers.values())
    for d in drivers.values():
        await d.stop()
    per_tick_ms = cpu / ticks * 1000 if ticks else float("nan")
    print(f"idle: {groups} groups on each of 3 nodes ({leaders} leaders), tick {tick_ms:g} ms, "
          f"heartbeat every {heartbeat_ticks} tick(s), quiescence "
          f"{'on' if quiesce else 'off'}; elected in {elect_s:.1f} s"
          + (f", all quiesced {quiet_s:.1f} s later" if quiesce else ""))
    print(f"  CPU per node per tick: {per_tick_ms:.3f} ms "
          f"({per_tick_ms * 1000 / groups:.2f} us per group); "
          f"per node {cpu / wall / 3:.2%} of a core; {msgs / wall / 3:,.0f} raft messages/s "
          f"and {pings / wall / 3:,.0f} node pings/s per node; {quiet} of {3 * groups} "
          f"group members quiesced at the end")


async def main_async(ns: argparse.Namespace) -> None:
    if ns.what in ("all", "replication"):
        await bench_replication(ns.groups, ns.entry_bytes, ns.window, ns.seconds, ns.tick_ms,
                                not ns.no_quiesce)
    if ns.what in ("all", "idle"):
        await bench_idle(ns.idle_groups, ns.seconds, ns.idle_tick_ms, ns.heartbeat_ticks,
                         not ns.no_quiesce)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", choices=("all", "replication", "idle"), default="all")
    parser.add_argument("--groups", type=int, default=6)
    parser.add_argument("--entry-bytes", type=int, default=16 * 1024)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--tick-ms", type=float, default=50.0)
    parser.add_argument("--idle-groups", type=int, default=1000)
    parser.add_argument("--idle-tick-ms", type=float, default=100.0)
    parser.add_argument("--heartbeat-ticks", type=int, default=1,
                        help="idle run: heartbeat interval in ticks (election = 10x this)")
    parser.add_argument("--no-quiesce", action="store_true",
                        help="run the groups without quiescence (the cost before 0404)")
    ns = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main_async(ns))


if __name__ == "__main__":
    main()
