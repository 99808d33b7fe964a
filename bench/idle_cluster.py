"""Idle CPU per node: three local nodes, first with no topic, then with 1,000 partitions RF 3.

`python bench/idle_cluster.py [--partitions 1000] [--topics 1] [--seconds 10] [--settle 5]`

Starts three nodes (rillet.devcluster: 127.0.0.1-3, --peers), measures each node's CPU while
the cluster holds no topic (the baseline: metadata group, peer streams), then creates
`--topics` topics sharing `--partitions` partitions with replication factor 3, waits until
every partition has a leader, waits until no partition's leader changed for `--settle`
seconds (creating many groups at once sets off a wave of elections), and measures again with
no traffic; it also reports how many leaders changed during the measurement. CPU is
utime+stime from /proc/<pid>/stat over `--seconds`, printed as % of one core per node. The
issue's target: <= 5% per node at 1,000 partitions; the cost of an idle cluster should grow
with nodes, not with partitions.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from rillet.devcluster import (
    NodeProcess,
    create_topic,
    get_metadata,
    temporary_cluster,
    wait_leaders,
)

log = logging.getLogger("bench.idle_cluster")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far, in seconds (fields 14 and 15 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as fh:
        stat = fh.read()
    # The command name (field 2) may hold spaces; the fields after its ")" are fixed.
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def measure(nodes: list[NodeProcess], seconds: float) -> list[float]:
    """% of one core each node used over `seconds` of wall time."""
    before = [cpu_seconds(n.proc.pid) for n in nodes]
    t0 = time.monotonic()
    time.sleep(seconds)  # the measurement window itself
    elapsed = time.monotonic() - t0
    after = [cpu_seconds(n.proc.pid) for n in nodes]
    for n in nodes:
        if n.proc.poll() is not None:
            raise RuntimeError(f"node {n.node_id} exited with {n.proc.returncode}")
    return [100.0 * (a - b) / elapsed for a, b in zip(after, before, strict=True)]


def leader_map(address: str, topics: list[str]) -> dict[tuple[str, int], int]:
    resp = get_metadata(address, topics, timeout_s=10.0)
    return {(t.name, p.partition): p.leader_id for t in resp.topics for p in t.partitions}


def wait_stable(address: str, topics: list[str], quiet_s: float, timeout_s: float = 300.0
                ) -> float:
    """Until no leader changed for `quiet_s` seconds (polled each second); returns how long
    that took. Raises TimeoutError when the leaders keep moving."""
    t0 = time.monotonic()
    last = leader_map(address, topics)
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < quiet_s:
        if time.monotonic() - t0 > timeout_s:
            raise TimeoutError(f"leaders still moving after {timeout_s:.0f}s")
        time.sleep(1.0)
        now = leader_map(address, topics)
        if now != last or any(v < 0 for v in now.values()):
            quiet_since = time.monotonic()
            last = now
    return time.monotonic() - t0


def report(label: str, nodes: list[NodeProcess], pct: list[float]) -> None:
    per_node = ", ".join(f"node {n.node_id} {p:.1f}%" for n, p in zip(nodes, pct, strict=True))
    print(f"{label}: {per_node} of a core (max {max(pct):.1f}%)", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", type=int, default=1000)
    parser.add_argument("--topics", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--settle", type=float, default=5.0)
    parser.add_argument("--port", type=int, default=19961)
    parser.add_argument("--raft-tick-ms", type=int, default=None)
    parser.add_argument("--keep-data", action="store_true")
    ns = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    env = {"RILLET_RAFT_TICK_MS": str(ns.raft_tick_ms)} if ns.raft_tick_ms else {}
    with temporary_cluster("rillet-idle-", 3, port=ns.port, env=env,
                           keep_data=ns.keep_data) as nodes:
        time.sleep(ns.settle)  # the metadata group's first heartbeats and registrations
        report("idle, no topics", nodes, measure(nodes, ns.seconds))
        per_topic = [ns.partitions // ns.topics + (1 if i < ns.partitions % ns.topics else 0)
                     for i in range(ns.topics)]
        t0 = time.monotonic()
        for i, count in enumerate(per_topic):
            create_topic(nodes[0].address, f"idle-{i}", count, 3, timeout_s=120.0)
        for i in range(ns.topics):
            wait_leaders(nodes[0].address, f"idle-{i}", timeout_s=300.0)
        log.info("%d partitions (RF 3) created and led after %.1f s", ns.partitions,
                 time.monotonic() - t0)
        topics = [f"idle-{i}" for i in range(ns.topics)]
        took = wait_stable(nodes[0].address, topics, ns.settle)
        log.info("leaders unchanged for %.0f s, %.1f s after all had one (%.1f s after the "
                 "first CreateTopic)", ns.settle, took, time.monotonic() - t0)
        before = leader_map(nodes[0].address, topics)
        pct = measure(nodes, ns.seconds)
        moved = sum(1 for k, v in leader_map(nodes[0].address, topics).items()
                    if before.get(k) != v)
        report(f"idle, {ns.partitions} partitions RF 3", nodes, pct)
        print(f"leaders that changed during the measurement: {moved}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
