"""N node processes for a chaos run, their peer traffic through a `ProxyNetwork`.

Node i listens on 127.0.0.(i+1) at a free port; `--peers` names those real addresses (clients
are told them), and RILLET_PEER_DIAL sends node i's calls to node j through the proxy of link
i->j, so the harness can cut any directed link. Every process is started by this module and
stopped by its PID: `close()` (also registered with atexit, and called by the runner's
`finally`) resumes paused nodes and SIGKILLs every node still running, then reaps it. Each
node's stdout and stderr go to RUN_DIR/node-<i>.log (appended across restarts), its data to
RUN_DIR/node-<i>/.

Questions about the cluster (who leads a partition) go to every running, unpaused node with a
short deadline; a dead or partitioned node cannot stall the harness. The metadata leader is
what most reachable nodes name in GetMetadata (`metadata_leader_id`); when none answers, it is
read from the node logs: the latest "became leader" line of the metadata group (g0) with the
highest term among running nodes (Raft ids are broker id + 1, rillet.node.replica.raft_id).
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rillet.api.v1 import admin_pb2, admin_pb2_grpc
from rillet.chaos.proxy import ProxyNetwork
from rillet.node.replica import broker_id

log = logging.getLogger(__name__)

#: Elections after 0.5-1 s (as the integration tests use): the run spends its time on traffic.
FAST_RAFT_ENV = {"RILLET_RAFT_TICK_MS": "50", "RILLET_ELECTION_TICKS": "10"}
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "268435456"}
START_TIMEOUT_S = 45.0
STOP_TIMEOUT_S = 15.0
QUERY_TIMEOUT_S = 1.0
_META_LEADER = re.compile(r"rillet\.cluster\.driver\.g0: raft (\d+): became leader at term (\d+)")

_live: weakref.WeakSet[ChaosCluster] = weakref.WeakSet()


def _close_all_at_exit() -> None:
    for c in list(_live):
        c.close()


atexit.register(_close_all_at_exit)


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class Node:
    """One node of the run; `proc` is None before the first start."""

    node_id: int
    address: str
    data_dir: Path
    log_path: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    paused: bool = False
    starts: int = 0
    exits: list[int] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"node {self.node_id} never started"
        return self.proc.pid

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class ChaosCluster:
    """Start, kill -9, SIGSTOP/SIGCONT, SIGTERM and restart nodes by PID; ask who leads."""

    def __init__(self, run_dir: Path, nodes: int = 3, *, env: Mapping[str, str] | None = None,
                 node_env: Mapping[int, Mapping[str, str]] | None = None,
                 module: str = "rillet.node") -> None:
        """`module` is what the nodes run (`python -m`): rillet.node, or rillet.chaos.planted
        for the planted bug."""
        if not 1 <= nodes <= 9:
            raise ValueError("1 to 9 nodes")
        self.run_dir = run_dir
        self.module = module
        run_dir.mkdir(parents=True, exist_ok=True)
        hosts = [f"127.0.0.{i + 1}" for i in range(nodes)]
        self.addresses = [f"{h}:{free_port(h)}" for h in hosts]
        self.peers = ",".join(f"{i}={a}" for i, a in enumerate(self.addresses))
        self.proxies = ProxyNetwork(self.addresses)
        base = {**FAST_RAFT_ENV, **(env or {})}
        self.nodes = [Node(i, self.addresses[i], run_dir / f"node-{i}",
                           run_dir / f"node-{i}.log", {**base, **(node_env or {}).get(i, {})})
                      for i in range(nodes)]
        self._closed = False
        _live.add(self)

    @property
    def bootstrap(self) -> str:
        return ",".join(self.addresses)

    def node(self, node_id: int) -> Node:
        return self.nodes[node_id]

    def reachable(self) -> list[Node]:
        """Nodes running and not paused (those that can answer a question)."""
        return [n for n in self.nodes if n.running and not n.paused]

    # -- processes ------------------------------------------------------------------------------

    def _spawn(self, node: Node) -> None:
        assert not node.running, f"node {node.node_id} is already running"
        node.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", self.module, "--node-id", str(node.node_id),
               "--listen", node.address, "--data-dir", str(node.data_dir),
               "--peers", self.peers]
        env = {k: v for k, v in os.environ.items() if not k.startswith("RILLET_")}
        env.update(MALLOC_ENV)
        env["PYTHONUNBUFFERED"] = "1"
        env.update(node.env)
        if len(self.nodes) > 1:
            env["RILLET_PEER_DIAL"] = self.proxies.dial_env(node.node_id)
        node.starts += 1
        with open(node.log_path, "ab") as out:
            out.write(f"--- start #{node.starts}: {' '.join(cmd)}\n".encode())
            out.flush()
            # Own session: a Ctrl-C in the terminal reaches only the harness, which stops us.
            node.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        node.paused = False
        log.info("node %d started, pid %d", node.node_id, node.proc.pid)

    async def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start the proxies and every node; return once each lists every broker."""
        self.proxies.start()
        for n in self.nodes:
            self._spawn(n)
        for n in self.nodes:
            await self.wait_serving(n.node_id, timeout_s)
        await self.wait_registered(timeout_s)

    async def wait_serving(self, node_id: int, timeout_s: float = START_TIMEOUT_S) -> None:
        node = self.node(node_id)
        deadline = time.monotonic() + timeout_s
        async with grpc.aio.insecure_channel(node.address) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while True:
                if not node.running:
                    raise RuntimeError(f"node {node_id} exited while starting:\n"
                                       f"{node.log_tail()}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"node {node_id} not SERVING after {timeout_s:.0f}s:\n"
                                       f"{node.log_tail()}")
                try:
                    resp = await stub.Check(health_pb2.HealthCheckRequest(),
                                            timeout=QUERY_TIMEOUT_S)
                    if resp.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.05)

    async def wait_registered(self, timeout_s: float = START_TIMEOUT_S) -> None:
        want = {n.node_id for n in self.nodes}
        deadline = time.monotonic() + timeout_s
        for node in self.reachable():
            while True:
                resp = await self._metadata(node, ())
                if resp is not None and want <= {b.node_id for b in resp.brokers}:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"node {node.node_id} does not list brokers "
                                       f"{sorted(want)} after {timeout_s:.0f}s")
                await asyncio.sleep(0.1)

    def _signal(self, node: Node, sig: int) -> None:
        if node.running:
            os.kill(node.pid, sig)

    async def _reap(self, node: Node, timeout_s: float) -> int:
        assert node.proc is not None
        deadline = time.monotonic() + timeout_s
        while node.proc.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"node {node.node_id} (pid {node.pid}) did not exit")
            await asyncio.sleep(0.02)
        node.exits.append(node.proc.returncode)
        return node.proc.returncode

    async def kill(self, node_id: int) -> None:
        """kill -9: nothing flushed, nothing handed over."""
        node = self.node(node_id)
        self._signal(node, signal.SIGKILL)
        node.paused = False
        await self._reap(node, STOP_TIMEOUT_S)
        log.info("node %d killed (-9)", node_id)

    async def terminate(self, node_id: int) -> None:
        """SIGTERM (a graceful stop: leaderships handed over), SIGKILL if it hangs."""
        node = self.node(node_id)
        if node.paused:
            self.resume(node_id)
        self._signal(node, signal.SIGTERM)
        try:
            await self._reap(node, STOP_TIMEOUT_S)
        except TimeoutError:
            log.warning("node %d ignored SIGTERM for %.0fs; SIGKILL", node_id, STOP_TIMEOUT_S)
            await self.kill(node_id)

    def pause(self, node_id: int) -> None:
        node = self.node(node_id)
        self._signal(node, signal.SIGSTOP)
        node.paused = True
        log.info("node %d paused (SIGSTOP)", node_id)

    def resume(self, node_id: int) -> None:
        node = self.node(node_id)
        self._signal(node, signal.SIGCONT)
        node.paused = False
        log.info("node %d resumed (SIGCONT)", node_id)

    async def restart(self, node_id: int, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start a stopped node on its data again and wait until it serves."""
        self._spawn(self.node(node_id))
        await self.wait_serving(node_id, timeout_s)

    def close(self) -> None:
        """Stop everything this cluster started, by PID; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for n in self.nodes:
            if n.running:
                if n.paused:
                    os.kill(n.pid, signal.SIGCONT)
                os.kill(n.pid, signal.SIGKILL)
        for n in self.nodes:
            if n.proc is not None:
                try:
                    n.proc.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    log.error("node %d (pid %d) did not exit after SIGKILL", n.node_id, n.pid)
        self.proxies.stop()
        _live.discard(self)

    # -- questions ------------------------------------------------------------------------------

    async def _metadata(self, node: Node, topics: tuple[str, ...]
                        ) -> admin_pb2.MetadataResponse | None:
        try:
            async with grpc.aio.insecure_channel(node.address) as ch:
                stub = admin_pb2_grpc.MetadataStub(ch)  # type: ignore[no-untyped-call]
                resp: admin_pb2.MetadataResponse = await stub.GetMetadata(
                    admin_pb2.MetadataRequest(topics=list(topics)), timeout=QUERY_TIMEOUT_S)
                return resp
        except grpc.aio.AioRpcError:
            return None

    async def leaders(self, topic: str) -> dict[int, int]:
        """Partition -> leader id as most reachable nodes see it (-1: none or no answer)."""
        votes: dict[int, collections.Counter[int]] = collections.defaultdict(
            collections.Counter)
        answers = await asyncio.gather(*(self._metadata(n, (topic,)) for n in self.reachable()))
        alive = {n.node_id for n in self.reachable()}
        for resp in answers:
            if resp is None:
                continue
            for tm in resp.topics:
                if tm.name == topic:
                    for p in tm.partitions:
                        votes[p.partition][p.leader_id] += 1
        out: dict[int, int] = {}
        for part, counter in votes.items():
            # A node that has not heard of the new leader yet still names the dead one.
            live_votes = [(n, c) for n, c in counter.most_common() if n in alive]
            out[part] = live_votes[0][0] if live_votes else -1
        return out

    async def wait_leaders(self, topic: str, partitions: int, timeout_s: float = 30.0
                           ) -> dict[int, int]:
        """Until every partition has a leader among the reachable nodes."""
        deadline = time.monotonic() + timeout_s
        while True:
            got = await self.leaders(topic)
            if len(got) >= partitions and all(v >= 0 for v in got.values()):
                return got
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: no leader for every partition after "
                                   f"{timeout_s:.0f}s (last: {got})")
            await asyncio.sleep(0.1)

    async def create_topic(self, topic: str, partitions: int, replication_factor: int,
                           timeout_s: float = 30.0) -> dict[int, int]:
        """CreateTopic through the first node that takes it; wait for every leader."""
        deadline = time.monotonic() + timeout_s
        last = "no node answered"
        while time.monotonic() < deadline:
            for node in self.reachable():
                try:
                    async with grpc.aio.insecure_channel(node.address) as ch:
                        stub = admin_pb2_grpc.AdminStub(ch)  # type: ignore[no-untyped-call]
                        await stub.CreateTopic(admin_pb2.CreateTopicRequest(
                            name=topic, partitions=partitions,
                            replication_factor=replication_factor), timeout=10.0)
                    return await self.wait_leaders(topic, partitions,
                                                   max(1.0, deadline - time.monotonic()))
                except grpc.aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.ALREADY_EXISTS:
                        return await self.wait_leaders(topic, partitions,
                                                       max(1.0, deadline - time.monotonic()))
                    last = f"{exc.code().name}: {exc.details()}"
            await asyncio.sleep(0.2)
        raise TimeoutError(f"could not create {topic}: {last}")

    async def metadata_leader(self) -> int:
        """The metadata group's leader as most reachable nodes name it, else as the node logs
        say; -1 when neither knows (see the module doc)."""
        answers = await asyncio.gather(*(self._metadata(n, ()) for n in self.reachable()))
        alive = {n.node_id for n in self.reachable()}
        named = collections.Counter(r.metadata_leader_id for r in answers
                                    if r is not None and r.metadata_leader_id in alive)
        if named:
            return named.most_common(1)[0][0]
        return self.metadata_leader_from_logs()

    def metadata_leader_from_logs(self) -> int:
        """The metadata group's leader as the node logs say, or -1 when no running node has
        logged winning an election."""
        best = (-1, -1)  # (term, node)
        for n in self.nodes:
            if not n.running:
                continue
            try:
                text = n.log_path.read_text(errors="replace")
            except FileNotFoundError:
                continue
            # Only this incarnation's lines: a restarted node starts a new "--- start" block.
            text = text.rsplit("--- start #", 1)[-1]
            for m in _META_LEADER.finditer(text):
                term, leader = int(m.group(2)), broker_id(int(m.group(1)))
                if term > best[0] and leader == n.node_id:
                    best = (term, leader)
        return best[1]

    def partition_dir(self, node_id: int, topic: str, partition: int) -> Path | None:
        """Node's directory of one partition (data_dir/partitions/<group>-<topic>-<p>)."""
        root = self.node(node_id).data_dir / "partitions"
        if not root.is_dir():
            return None
        for d in root.iterdir():
            if d.is_dir() and d.name.endswith(f"-{topic}-{partition}") and d.name.split(
                    "-", 1)[0].isdigit() and d.name.split("-", 1)[1] == f"{topic}-{partition}":
                return d
        return None

    def log_tails(self, lines: int = 20) -> str:
        return "\n".join(f"--- node {n.node_id} ({n.address}, {n.log_path}):\n"
                         f"{n.log_tail(lines)}" for n in self.nodes)
