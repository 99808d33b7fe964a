"""`rillet cluster status` and `rillet topic describe --format json` against three real nodes,
and `python -m rillet.devcluster` (what `make run` starts) as a user runs it."""

from __future__ import annotations

import asyncio
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration


def rillet(*args: str, bootstrap: str, timeout: float = 60.0) -> Any:
    """Run the CLI; return its stdout parsed as JSON (the command must succeed)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RILLET_")}
    proc = subprocess.run([sys.executable, "-m", "rillet.cli", *args, "--bootstrap", bootstrap],
                          capture_output=True, timeout=timeout, check=False, env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)


async def test_status_and_describe_json_follow_the_cluster(cluster) -> None:
    leaders = await cluster.create_topic("events", 6, 3)
    # Placement: replication factor 3 on three distinct nodes, leaders spread over nodes.
    assert len(set(leaders.values())) > 1, leaders
    status = await asyncio.to_thread(rillet, "cluster", "status", "--format", "json",
                                     bootstrap=cluster.bootstrap)
    assert [(n["id"], n["address"], n["health"]) for n in status["nodes"]] == [
        (n.node_id, n.address, "SERVING") for n in cluster.nodes]
    [topic] = status["topics"]
    assert topic["name"] == "events" and topic["replication_factor"] == 3
    for p in topic["partitions"]:
        assert sorted(p["replicas"]) == [0, 1, 2], p
        assert p["leader_id"] in p["replicas"] and p["high_watermark"] == 0

    desc = await asyncio.to_thread(rillet, "topic", "describe", "events", "--format", "json",
                                   bootstrap=cluster.bootstrap)
    assert [p["partition"] for p in desc["partitions"]] == list(range(6))
    assert all({"leader_id", "replicas", "high_watermark"} <= set(p)
               for p in desc["partitions"])

    # A dead node shows as unreachable, and no partition keeps it as leader.
    victim = desc["partitions"][0]["leader_id"]
    await asyncio.to_thread(cluster.node(victim).kill)
    await cluster.wait_leaders("events", exclude=[victim])
    status = await asyncio.to_thread(rillet, "cluster", "status", "--format", "json",
                                     bootstrap=cluster.bootstrap)
    health = {n["id"]: n["health"] for n in status["nodes"]}
    assert health[victim].startswith("UNREACHABLE"), health
    assert all(h == "SERVING" for n, h in health.items() if n != victim), health
    assert all(p["leader_id"] != victim for p in status["topics"][0]["partitions"])


def _free_port_everywhere(hosts: list[str]) -> int:
    """A port free on every host right now (devcluster gives all nodes the same port)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind((hosts[0], 0))
            port = int(first.getsockname()[1])
        try:
            for h in hosts[1:]:
                with socket.socket() as s:
                    s.bind((h, port))
            return port
        except OSError:
            continue
    raise AssertionError("no port free on all of " + ",".join(hosts))


@pytest.mark.chaos
def test_devcluster_starts_three_nodes_and_stops_them_all(tmp_path: Path) -> None:
    """What `make run` runs: it prints the banner once every broker is registered, and a
    SIGTERM (as from Ctrl-C) stops every node it started, by PID.

    About 8 s: when all nodes stop at once, each tries to hand its leaderships over until it
    sees no progress (1.5 s), as no peer is left to take over."""
    port = _free_port_everywhere(["127.0.0.1", "127.0.0.2", "127.0.0.3"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("RILLET_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rillet.devcluster", "--data-dir", str(tmp_path / "data"),
         "--nodes", "3", "--port", str(port), "--raft-tick-ms", "50"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    pids: list[int] = []
    try:
        assert proc.stdout is not None
        out = b""
        deadline = time.monotonic() + 60
        while b"Ctrl-C stops the cluster" not in out:
            assert time.monotonic() < deadline, f"no banner after 60 s:\n{out.decode()}"
            assert proc.poll() is None, f"devcluster exited:\n{out.decode()}"
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if ready:
                out += os.read(proc.stdout.fileno(), 65536)
        text = out.decode()
        pids = [int(p) for p in re.findall(r"pid (\d+)", text)]
        assert len(pids) == 3, text
        for i in range(3):
            assert f"node {i}: 127.0.0.{i + 1}:{port}" in text
        status = rillet("cluster", "status", "--format", "json",
                        bootstrap=f"127.0.0.1:{port}")
        assert [n["health"] for n in status["nodes"]] == ["SERVING"] * 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        for pid in pids:
            assert not Path(f"/proc/{pid}").exists() or _zombie(pid), f"node pid {pid} alive"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        for pid in pids:  # never leave a node behind, even when an assertion failed
            if Path(f"/proc/{pid}").exists() and not _zombie(pid):
                os.kill(pid, signal.SIGKILL)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (FileNotFoundError, IndexError):
        return False
