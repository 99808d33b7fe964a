"""`make run`: start local nodes on 127.0.0.1, wait until they serve, say how to reach them.

`python -m rillet.devcluster --data-dir .rillet-data [--nodes N] [--base-port 9091]`
Node i listens on 127.0.0.1:(base_port + i) with data in <data-dir>/node-<i>. Today each node
runs alone (no replication yet), so the default is one node; the loop is ready for three.
Ctrl-C or SIGTERM stops every node by its PID (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import click
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

log = logging.getLogger(__name__)

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "268435456"}


@dataclass
class NodeProcess:
    node_id: int
    address: str
    data_dir: Path
    proc: subprocess.Popen[bytes]


def start_node(node_id: int, address: str, data_dir: Path) -> NodeProcess:
    """Spawn one node; its log goes to this terminal's stderr."""
    cmd = [sys.executable, "-m", "rillet.node", "--node-id", str(node_id), "--listen", address,
           "--data-dir", str(data_dir)]
    env = {**os.environ, **MALLOC_ENV}
    return NodeProcess(node_id, address, data_dir, subprocess.Popen(cmd, env=env))


def wait_serving(node: NodeProcess, timeout_s: float = START_TIMEOUT_S) -> None:
    """Poll the node's health service until SERVING; raise if it exits or the deadline passes."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(node.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if node.proc.poll() is not None:
                raise RuntimeError(f"node {node.node_id} exited with {node.proc.returncode}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"node {node.node_id} not serving after {timeout_s:.0f}s")
            try:
                resp = stub.Check(health_pb2.HealthCheckRequest(), timeout=min(1.0, remaining))
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.05)


def stop_nodes(nodes: list[NodeProcess]) -> None:
    """SIGTERM each node by PID, wait, and SIGKILL any that outlive the grace period."""
    for node in nodes:
        if node.proc.poll() is None:
            node.proc.send_signal(signal.SIGTERM)
    for node in nodes:
        try:
            node.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.warning("node %d did not stop in %ss; killing pid %d", node.node_id,
                        STOP_TIMEOUT_S, node.proc.pid)
            node.proc.kill()
            node.proc.wait()


def banner(nodes: list[NodeProcess]) -> str:
    bootstrap = ",".join(n.address for n in nodes)
    lines = [
        "",
        f"Rillet is running: {len(nodes)} node(s) at {bootstrap}",
        *(f"  node {n.node_id}: {n.address}  data in {n.data_dir}  pid {n.proc.pid}"
          for n in nodes),
        "",
        "In another shell (after `source .venv/bin/activate`):",
        "  rillet topic create events --partitions 3",
        "  seq 1 100000 | rillet produce events",
        "  rillet consume events --from earliest",
    ]
    if bootstrap != "127.0.0.1:9091":
        lines.append(f"  (add --bootstrap {bootstrap}, or export RILLET_BOOTSTRAP={bootstrap})")
    lines += ["", "Ctrl-C stops the cluster.", ""]
    return "\n".join(lines)


@click.command()
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path(".rillet-data"),
              show_default=True, help="Each node keeps its data in DATA_DIR/node-<id>.")
@click.option("--nodes", type=click.IntRange(1, 5), default=1, show_default=True,
              help="How many nodes to start.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--base-port", type=click.IntRange(1, 65535 - 5), default=9091, show_default=True,
              help="Node i listens on BASE_PORT + i.")
def main(data_dir: Path, nodes: int, host: str, base_port: int) -> None:
    """Start a local Rillet cluster and keep it running until Ctrl-C or SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s devcluster: %(message)s")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    started: list[NodeProcess] = []
    try:
        for i in range(nodes):
            node_dir = data_dir / f"node-{i}"
            node_dir.mkdir(parents=True, exist_ok=True)
            started.append(start_node(i, f"{host}:{base_port + i}", node_dir))
        for node in started:
            wait_serving(node)
        click.echo(banner(started), err=False)
        # Wake up now and then to notice a node that died on its own.
        while not stop.wait(0.5):
            dead = [n for n in started if n.proc.poll() is not None]
            if dead:
                log.error("node %d exited with %d; stopping the cluster", dead[0].node_id,
                          dead[0].proc.returncode)
                sys.exit(1)
    except (RuntimeError, TimeoutError) as exc:
        log.error("%s", exc)
        sys.exit(1)
    finally:
        stop_nodes(started)


if __name__ == "__main__":
    main(prog_name="python -m rillet.devcluster")
