"""`make run`: start a local cluster, wait until it is usable, say how to reach it.

`python -m rillet.devcluster --data-dir .rillet-data [--nodes 3] [--port 9091]`

With the default three nodes, node i listens on 127.0.0.(i+1):PORT, so every node keeps the
port clients expect (9091) and the default bootstrap address 127.0.0.1:9091 reaches node 0.
Linux routes all of 127.0.0.0/8 to the loopback device, so no setup is needed; `--host H`
puts every node on H instead, node i on port PORT+i. Data lives in DATA_DIR/node-<i> and each
node's log in DATA_DIR/node-<i>.log. `--nodes 1` runs one node without `--peers` (a cluster
of one).

The cluster counts as up once the metadata group has a leader and every node registered
itself: `Metadata.GetMetadata` lists all the brokers. Ctrl-C or SIGTERM stops every node by
its PID (SIGTERM, so each hands its leaderships over, then SIGKILL after a grace period). The
nodes run in their own session, so a Ctrl-C in the terminal reaches only this launcher, which
then stops them; a node is never left running. A node that exits on its own (a kill -9 to
watch a failover) is reported and left down, or restarted on its data after
`--restart-after SECONDS`; the others keep running.

The helpers here (`start_node`, `wait_serving`, `wait_registered`, `create_topic`,
`wait_leaders`, `stop_nodes`) are also what the benchmark scripts use to run a cluster.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

import click
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rillet.api.v1 import admin_pb2, admin_pb2_grpc

log = logging.getLogger(__name__)

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
#: Without these, every message of 256 KiB or more page-faults (see the end-to-end bench notes).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "268435456"}
DEFAULT_PORT = 9091


@dataclass
class NodeProcess:
    """One node process started by this module; `proc` is the handle we stop it by."""

    node_id: int
    address: str
    data_dir: Path
    proc: subprocess.Popen[bytes]
    log_path: Path | None = None
    peers: str = ""
    env: dict[str, str] = field(default_factory=dict)

    def log_tail(self, lines: int = 30) -> str:
        """The end of the node's log file, for an error message ('' when it logs to stderr)."""
        if self.log_path is None:
            return ""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def node_addresses(nodes: int, port: int = DEFAULT_PORT, host: str | None = None) -> list[str]:
    """Where node i listens: 127.0.0.(i+1):PORT, or HOST:(PORT+i) when a host is given.

    One node alone always uses HOST (default 127.0.0.1) and PORT.
    """
    if host is not None or nodes == 1:
        h = host or "127.0.0.1"
        return [f"{h}:{port + i}" for i in range(nodes)]
    if nodes > 254:
        raise ValueError("at most 254 nodes fit on 127.0.0.1..127.0.0.254")
    return [f"127.0.0.{i + 1}:{port}" for i in range(nodes)]


def peers_arg(addresses: Sequence[str]) -> str:
    """The `--peers` value naming every node: "0=ADDR,1=ADDR,..." (node id = position)."""
    return ",".join(f"{i}={addr}" for i, addr in enumerate(addresses))


def start_node(node_id: int, address: str, data_dir: Path, *, peers: str = "",
               env: Mapping[str, str] | None = None, log_path: Path | None = None,
               extra_args: Sequence[str] = ()) -> NodeProcess:
    """Spawn one node in its own session (so a terminal's Ctrl-C does not reach it).

    Its log goes to `log_path` (appended) when given, else to this process's stderr. `env`
    adds to (and overrides) this process's environment, e.g. RILLET_RAFT_TICK_MS.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "rillet.node", "--node-id", str(node_id), "--listen", address,
           "--data-dir", str(data_dir), *extra_args]
    if peers:
        cmd += ["--peers", peers]
    full_env = {**os.environ, **MALLOC_ENV, "PYTHONUNBUFFERED": "1", **(env or {})}
    out: IO[bytes] | None = None
    try:
        if log_path is not None:
            out = open(log_path, "ab")
            out.write(f"--- start: {' '.join(cmd)}\n".encode())
            out.flush()
        proc = subprocess.Popen(cmd, env=full_env, stdout=out, stderr=subprocess.STDOUT
                                if out is not None else None, start_new_session=True)
    finally:
        if out is not None:
            out.close()  # the child holds its own descriptor
    return NodeProcess(node_id, address, data_dir, proc, log_path, peers, dict(env or {}))


def restart_node(node: NodeProcess) -> None:
    """Start a stopped node again: same id, address, data dir, peers, env and log file."""
    assert node.proc.poll() is not None, f"node {node.node_id} is still running"
    fresh = start_node(node.node_id, node.address, node.data_dir, peers=node.peers,
                       env=node.env, log_path=node.log_path)
    node.proc = fresh.proc


def _died(node: NodeProcess) -> RuntimeError:
    tail = node.log_tail()
    return RuntimeError(f"node {node.node_id} exited with {node.proc.returncode}"
                        + (f"; its log ends:\n{tail}" if tail else ""))


def wait_serving(node: NodeProcess, timeout_s: float = START_TIMEOUT_S) -> None:
    """Poll the node's health service until SERVING; raise if it exits or the deadline passes."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(node.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if node.proc.poll() is not None:
                raise _died(node)
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


def get_metadata(address: str, topics: Sequence[str] = (), timeout_s: float = 2.0
                 ) -> admin_pb2.MetadataResponse:
    """One Metadata.GetMetadata call to one node (raises grpc.RpcError)."""
    with grpc.insecure_channel(address) as channel:
        stub = admin_pb2_grpc.MetadataStub(channel)  # type: ignore[no-untyped-call]
        resp: admin_pb2.MetadataResponse = stub.GetMetadata(
            admin_pb2.MetadataRequest(topics=list(topics)), timeout=timeout_s)
        return resp


def wait_registered(nodes: Sequence[NodeProcess], timeout_s: float = START_TIMEOUT_S) -> None:
    """Wait until every node's GetMetadata lists all `nodes` as brokers.

    That is the contract's "usable" point: the metadata group has a leader and each node
    registered itself through it. Asking every node (not just one) also proves each has
    applied the registrations, so a client may bootstrap from any of them.
    """
    want = {n.node_id for n in nodes}
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    pending = list(nodes)
    while pending:
        node = pending[0]
        if node.proc.poll() is not None:
            raise _died(node)
        if time.monotonic() > deadline:
            raise TimeoutError(f"after {timeout_s:.0f}s node {node.node_id} does not list every "
                               f"broker {sorted(want)}: {last}")
        try:
            resp = get_metadata(node.address, timeout_s=1.0)
            have = {b.node_id for b in resp.brokers}
            last = f"it lists {sorted(have)}"
            if want <= have:
                pending.pop(0)
                continue
        except grpc.RpcError as exc:
            last = f"{exc.code().name}: {exc.details()}"
        time.sleep(0.1)


def create_topic(address: str, name: str, partitions: int, replication_factor: int,
                 timeout_s: float = 30.0) -> None:
    """CreateTopic through any node; ALREADY_EXISTS counts as done (a retried create)."""
    with grpc.insecure_channel(address) as channel:
        stub = admin_pb2_grpc.AdminStub(channel)  # type: ignore[no-untyped-call]
        try:
            stub.CreateTopic(admin_pb2.CreateTopicRequest(
                name=name, partitions=partitions, replication_factor=replication_factor),
                timeout=timeout_s)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise


def wait_leaders(address: str, topic: str, timeout_s: float = 60.0
                 ) -> admin_pb2.TopicMetadata:
    """Poll GetMetadata until every partition of `topic` has a leader; return the topic."""
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while True:
        try:
            resp = get_metadata(address, [topic], timeout_s=5.0)
            for tm in resp.topics:
                if tm.name == topic:
                    missing = [p.partition for p in tm.partitions if p.leader_id < 0]
                    if tm.partitions and not missing:
                        return tm
                    last = f"{len(missing)} of {len(tm.partitions)} partitions have no leader"
        except grpc.RpcError as exc:
            last = f"{exc.code().name}: {exc.details()}"
        if time.monotonic() > deadline:
            raise TimeoutError(f"topic {topic}: not every partition has a leader after "
                               f"{timeout_s:.0f}s ({last})")
        time.sleep(0.2)


def start_cluster(data_dir: Path, nodes: int = 3, *, port: int = DEFAULT_PORT,
                  host: str | None = None, env: Mapping[str, str] | None = None,
                  logs: bool = True, timeout_s: float = START_TIMEOUT_S) -> list[NodeProcess]:
    """Start `nodes` nodes (with --peers when more than one) and wait until usable.

    On any failure the nodes already started are stopped before the error propagates.
    """
    addresses = node_addresses(nodes, port, host)
    peers = peers_arg(addresses) if nodes > 1 else ""
    started: list[NodeProcess] = []
    try:
        for i, addr in enumerate(addresses):
            started.append(start_node(i, addr, data_dir / f"node-{i}", peers=peers, env=env,
                                      log_path=data_dir / f"node-{i}.log" if logs else None))
        for node in started:
            wait_serving(node, timeout_s)
        wait_registered(started, timeout_s)
    except BaseException:
        stop_nodes(started)
        raise
    return started


def stop_nodes(nodes: Sequence[NodeProcess], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM each node by PID, wait, and SIGKILL any that outlive the grace period."""
    for node in nodes:
        if node.proc.poll() is None:
            node.proc.send_signal(signal.SIGTERM)
    for node in nodes:
        try:
            node.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("node %d did not stop in %ss; killing pid %d", node.node_id,
                        timeout_s, node.proc.pid)
            node.proc.kill()
            node.proc.wait()


@contextlib.contextmanager
def temporary_cluster(prefix: str, nodes: int = 3, *, port: int = DEFAULT_PORT,
                      env: Mapping[str, str] | None = None,
                      keep_data: bool = False) -> Iterator[list[NodeProcess]]:
    """A cluster in a fresh temporary directory for a benchmark: started and registered on
    entry; on the way out every node is stopped by PID, each node's log tail is logged if the
    body failed, and the directory is removed unless ``keep_data``."""
    data = Path(tempfile.mkdtemp(prefix=prefix))
    started: list[NodeProcess] = []
    try:
        started = start_cluster(data, nodes, port=port, env=dict(env or {}))
        yield started
    except Exception:
        for n in started:
            log.error("node %d log ends:\n%s", n.node_id, n.log_tail(15))
        raise
    finally:
        stop_nodes(started)
        if keep_data:
            log.info("data and logs kept in %s", data)
        else:
            shutil.rmtree(data, ignore_errors=True)


def watch_nodes(nodes: Sequence[NodeProcess], stop: threading.Event,
                restart_after_s: float | None) -> None:
    """Until `stop` is set: say when a node exits on its own (the others keep running, so a
    kill -9 shows a failover), restart it after `restart_after_s` when that is set, and
    return when every node is gone."""
    down_since: dict[int, float] = {}
    while not stop.wait(0.5):
        now = time.monotonic()
        for node in nodes:
            if node.proc.poll() is None:
                down_since.pop(node.node_id, None)
                continue
            if node.node_id not in down_since:
                down_since[node.node_id] = now
                log.warning("%s", _died(node))
                log.warning("the other nodes keep running%s", "" if restart_after_s is None
                            else f"; restarting node {node.node_id} in {restart_after_s:.0f}s")
            elif restart_after_s is not None and now - down_since[node.node_id] >= \
                    restart_after_s:
                restart_node(node)
                log.info("node %d restarted, pid %d", node.node_id, node.proc.pid)
        if len(down_since) == len(nodes) and restart_after_s is None:
            log.error("every node has exited")
            sys.exit(1)


def banner(nodes: Sequence[NodeProcess]) -> str:
    bootstrap = ",".join(n.address for n in nodes)
    rf = 3 if len(nodes) >= 3 else 1
    lines = [
        "",
        f"Rillet is running: {len(nodes)} node(s) at {bootstrap}",
        *(f"  node {n.node_id}: {n.address}  data in {n.data_dir}  pid {n.proc.pid}"
          + (f"  log {n.log_path}" if n.log_path else "") for n in nodes),
        "",
        "In another shell (after `source .venv/bin/activate`):",
        "  rillet cluster status",
        f"  rillet topic create events --partitions 6 --replication-factor {rf}",
        "  seq 1 100000 | rillet produce events",
        "  rillet consume events --from earliest",
        "  rillet topic describe events --format json",
        *(["  kill -9 <pid of a leader>   # then `rillet cluster status`: a failover"]
          if len(nodes) > 1 else []),
        f"  rillet bench produce --topic bench --partitions 6 --replication-factor {rf}",
    ]
    if nodes[0].address != "127.0.0.1:9091":
        lines.append(f"  (add --bootstrap {bootstrap}, or export RILLET_BOOTSTRAP={bootstrap})")
    lines += ["", "Ctrl-C stops the cluster.", ""]
    return "\n".join(lines)


@click.command()
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path(".rillet-data"),
              show_default=True, help="Node i keeps its data in DATA_DIR/node-<i> and its log "
              "in DATA_DIR/node-<i>.log.")
@click.option("--nodes", type=click.IntRange(1, 5), default=3, show_default=True,
              help="How many nodes to start; 1 runs one node without --peers (a cluster of one).")
@click.option("--port", "--base-port", "port", type=click.IntRange(1, 65535 - 5),
              default=DEFAULT_PORT, show_default=True, help="Port of every node (node i on "
              "127.0.0.(i+1)); with --host, node i listens on PORT+i.")
@click.option("--host", default=None,
              help="Put every node on this host instead of 127.0.0.1, .2, .3 ...")
@click.option("--raft-tick-ms", type=click.IntRange(1, 10_000), default=None,
              help="Passed to the nodes as RILLET_RAFT_TICK_MS [node default 100].")
@click.option("--election-ticks", type=click.IntRange(2, 1000), default=None,
              help="Passed to the nodes as RILLET_ELECTION_TICKS [node default 10].")
@click.option("--restart-after", "restart_after_s", type=click.FloatRange(0), default=None,
              metavar="SECONDS", help="Restart a node that exited (say, after a kill -9) this "
              "many seconds later, on its data [default: leave it down].")
def main(data_dir: Path, nodes: int, port: int, host: str | None, raft_tick_ms: int | None,
         election_ticks: int | None, restart_after_s: float | None) -> None:
    """Start a local Rillet cluster and keep it running until Ctrl-C or SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s devcluster: %(message)s")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()
        # The first signal may arrive while we still wait for the cluster to come up.
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    env: dict[str, str] = {}
    if raft_tick_ms is not None:
        env["RILLET_RAFT_TICK_MS"] = str(raft_tick_ms)
    if election_ticks is not None:
        env["RILLET_ELECTION_TICKS"] = str(election_ticks)
    addresses = node_addresses(nodes, port, host)
    log.info("starting %d node(s) at %s; logs in %s/node-<i>.log", nodes, ",".join(addresses),
             data_dir)
    started: list[NodeProcess] = []
    try:
        # start_cluster stops what it started if it fails; keep our own list for Ctrl-C.
        started = start_cluster(data_dir, nodes, port=port, host=host, env=env)
        click.echo(banner(started))
        watch_nodes(started, stop, restart_after_s)
    except KeyboardInterrupt:
        log.info("stopping the cluster")
    except (RuntimeError, TimeoutError) as exc:
        log.error("%s", exc)
        sys.exit(1)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stop_nodes(started)


if __name__ == "__main__":
    main(prog_name="python -m rillet.devcluster")
