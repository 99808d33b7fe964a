"""Real broker processes on 127.0.0.1 for integration tests.

`broker` (function scope) is one running node on a fresh data dir; `broker_factory(...)` starts
more, or with extra flags. Each is a `BrokerProcess`: `.address`, `.data_dir`, `.pid`,
`.kill()` (SIGKILL + wait), `.stop()` (SIGTERM + wait), `.start()` (same data dir and port,
returns once the health service says SERVING). Every process started is stopped by its PID at
teardown. Waits poll a condition under a deadline; nothing sleeps and hopes.

`cluster_factory(n, env={...}, node_env={i: {...}})` starts n nodes with `--peers` on
127.0.0.1, 127.0.0.2, 127.0.0.3, ... (Linux routes all of 127/8 to loopback) and returns a
`Cluster` once every node's metadata lists all n brokers; `cluster` is three such nodes with
fast Raft ticks. Node logs are `<tmp>/node-<i>-<k>.node-<i>.log`; teardown logs the end of
each, so a failed test shows what the nodes said.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

log = logging.getLogger(__name__)

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 20.0
# As PERFORMANCE.md says: without these, every message of 256 KiB or more page-faults.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "268435456"}


def free_port(host: str = "127.0.0.1") -> int:
    """A port on `host` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class BrokerProcess:
    """One `python -m rillet.node` process, restartable on the same port and data dir."""

    def __init__(self, data_dir: Path, port: int, *, node_id: int = 0,
                 extra_args: Sequence[str] = (), env: dict[str, str] | None = None,
                 host: str = "127.0.0.1", module: str = "rillet.node") -> None:
        self.data_dir = data_dir
        self.module = module  # what `python -m` runs: rillet.node, or rillet.chaos.planted
        self.host = host
        self.port = port
        self.node_id = node_id
        self.extra_args = list(extra_args)
        self.env = env or {}
        self.log_path = data_dir.parent / f"{data_dir.name}.node-{node_id}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "broker not started"
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self) -> list[str]:
        return [sys.executable, "-m", self.module, "--node-id", str(self.node_id),
                "--listen", self.address, "--data-dir", str(self.data_dir), *self.extra_args]

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self, timeout_s: float = START_TIMEOUT_S, *, wait: bool = True) -> None:
        """Start the process and wait until it reports SERVING (or fail with its log).

        `wait=False` returns at once (start several, then `wait_serving` each)."""
        assert not self.running, "broker already running"
        env = {**os.environ, **MALLOC_ENV, "PYTHONUNBUFFERED": "1", **self.env}
        for key in [k for k in env if k.startswith("RILLET_")]:
            if key not in self.env:
                del env[key]
        self.starts += 1
        with open(self.log_path, "ab") as log_file:
            log_file.write(f"--- start #{self.starts}: {' '.join(self.command())}\n".encode())
            log_file.flush()
            self.proc = subprocess.Popen(self.command(), stdout=log_file,
                                         stderr=subprocess.STDOUT, env=env)
        if wait:
            self.wait_serving(timeout_s)

    def wait_serving(self, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(
                        f"broker exited with {self.proc.returncode} while starting:\n"
                        f"{self.log_text()[-4000:]}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"broker at {self.address} not SERVING after {timeout_s}s:\n"
                        f"{self.log_text()[-4000:]}")
                try:
                    resp = stub.Check(health_pb2.HealthCheckRequest(),
                                      timeout=min(1.0, remaining))
                    if resp.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                # The port opens within milliseconds of the process being ready; a short
                # pause between probes keeps the loop from spinning on "connection refused".
                time.sleep(0.02)

    def _signal_and_wait(self, sig: int, timeout_s: float) -> int:
        assert self.proc is not None, "broker not started"
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        return self.proc.wait(timeout=timeout_s)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM and wait for the exit; returns the exit status."""
        return self._signal_and_wait(signal.SIGTERM, timeout_s)

    def kill(self) -> int:
        """SIGKILL (a crash: nothing is flushed or closed) and wait; returns the exit status."""
        return self._signal_and_wait(signal.SIGKILL, STOP_TIMEOUT_S)

    def cleanup(self) -> None:
        """Teardown: stop the process by PID, escalating to SIGKILL if it does not exit."""
        if not self.running:
            return
        try:
            self.stop(timeout_s=10.0)
        except subprocess.TimeoutExpired:
            self.kill()


BrokerFactory = Callable[..., BrokerProcess]


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[BrokerFactory]:
    """Start brokers: `broker_factory(extra_args=[...], env={...}, node_id=0, start=True)`."""
    started: list[BrokerProcess] = []

    def make(*, node_id: int = 0, extra_args: Sequence[str] = (),
             env: dict[str, str] | None = None, start: bool = True) -> BrokerProcess:
        data_dir = tmp_path / f"node-{node_id}-{len(started)}"
        proc = BrokerProcess(data_dir, free_port(), node_id=node_id, extra_args=extra_args,
                             env=env)
        started.append(proc)
        if start:
            proc.start()
        return proc

    try:
        yield make
    finally:
        for proc in started:
            proc.cleanup()


@pytest.fixture
def broker(broker_factory: BrokerFactory) -> BrokerProcess:
    """One running node with default settings on a fresh data dir."""
    return broker_factory()


class Stubs:
    """Generated stubs on one grpc.aio channel: what any plain gRPC client would use."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        from rillet.api.v1 import admin_pb2_grpc, log_pb2_grpc

        self.channel = channel
        self.admin = admin_pb2_grpc.AdminStub(channel)
        self.metadata = admin_pb2_grpc.MetadataStub(channel)
        self.produce = log_pb2_grpc.ProduceStub(channel)
        self.consume = log_pb2_grpc.ConsumeStub(channel)
        self.replay = log_pb2_grpc.ReplayStub(channel)
        self.health = health_pb2_grpc.HealthStub(channel)


CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024),
                   ("grpc.max_send_message_length", 64 * 1024 * 1024)]


@pytest.fixture
async def stubs(broker: BrokerProcess) -> AsyncIterator[Stubs]:
    """Stubs connected to `broker`."""
    async with grpc.aio.insecure_channel(broker.address, options=CHANNEL_OPTIONS) as channel:
        yield Stubs(channel)


@pytest.fixture
def connect() -> Callable[[BrokerProcess], contextlib.AbstractAsyncContextManager[Stubs]]:
    """`async with connect(broker) as stubs:` a fresh channel (e.g. after a restart)."""

    @contextlib.asynccontextmanager
    async def open_stubs(proc: BrokerProcess) -> AsyncIterator[Stubs]:
        async with grpc.aio.insecure_channel(proc.address, options=CHANNEL_OPTIONS) as channel:
            yield Stubs(channel)

    return open_stubs


# ------------------------------------------------------------------------------ clusters

#: Raft timing the cluster tests give their nodes unless they ask otherwise: elections after
#: 0.5-1 s instead of 1-2 s, so a failover test spends its time on traffic, not on waiting.
FAST_RAFT_ENV = {"RILLET_RAFT_TICK_MS": "50", "RILLET_ELECTION_TICKS": "10"}
CLUSTER_START_TIMEOUT_S = 45.0
#: Channels that reconnect quickly after a node restarts (the default backoff reaches 120 s).
RECONNECT_OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024),
                     ("grpc.max_send_message_length", 64 * 1024 * 1024),
                     ("grpc.initial_reconnect_backoff_ms", 100),
                     ("grpc.min_reconnect_backoff_ms", 100),
                     ("grpc.max_reconnect_backoff_ms", 500),
                     ("grpc.use_local_subchannel_pool", 1)]


class Cluster:
    """Nodes started with `--peers` naming each other; node i has node id i.

    The helpers ask whichever nodes are running, so they keep working while a test has a
    node down. Every wait has a deadline and says what it waited for.
    """

    def __init__(self, nodes: list[BrokerProcess]) -> None:
        self.nodes = nodes

    @property
    def bootstrap(self) -> str:
        return ",".join(n.address for n in self.nodes)

    def node(self, node_id: int) -> BrokerProcess:
        return self.nodes[node_id]

    def running(self) -> list[BrokerProcess]:
        return [n for n in self.nodes if n.running]

    def start(self, timeout_s: float = CLUSTER_START_TIMEOUT_S) -> None:
        """Start every node that is not running, then wait until each is SERVING."""
        stopped = [n for n in self.nodes if not n.running]
        for n in stopped:
            n.start(wait=False)
        for n in stopped:
            n.wait_serving(timeout_s)

    @contextlib.asynccontextmanager
    async def stubs(self, node: BrokerProcess | int) -> AsyncIterator[Stubs]:
        """Generated stubs on a fresh channel to one node."""
        proc = self.node(node) if isinstance(node, int) else node
        async with grpc.aio.insecure_channel(proc.address, options=RECONNECT_OPTIONS) as ch:
            yield Stubs(ch)

    async def metadata(self, topics: Sequence[str] = (), *, node: int | None = None,
                       timeout_s: float = 2.0) -> Any:
        """GetMetadata from `node`, or from the first running node that answers."""
        from rillet.api.v1 import admin_pb2

        candidates = [self.node(node)] if node is not None else self.running()
        last: Exception | None = None
        for proc in candidates:
            try:
                async with self.stubs(proc) as s:
                    return await s.metadata.GetMetadata(
                        admin_pb2.MetadataRequest(topics=list(topics)), timeout=timeout_s)
            except grpc.aio.AioRpcError as exc:
                last = exc
        raise AssertionError(f"no running node answered GetMetadata: {last}")

    async def poll(self, check: Callable[[], Any], what: str, timeout_s: float) -> Any:
        """Await `check()` until it returns something other than None; fail naming `what`
        and the last thing seen (a value or an error) after `timeout_s`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        last: object = "nothing yet"
        while True:
            try:
                result = await check()
                if result is not None:
                    return result
            except (grpc.aio.AioRpcError, AssertionError) as exc:
                last = exc
            for n in self.nodes:
                if n.proc is not None and n.starts and not n.running and n.proc.returncode not in (
                        0, -signal.SIGKILL, -signal.SIGTERM):
                    raise AssertionError(f"node {n.node_id} died with {n.proc.returncode} "
                                         f"while waiting for {what}:\n{n.log_text()[-3000:]}")
            if loop.time() > deadline:
                raise AssertionError(f"timed out after {timeout_s}s waiting for {what} "
                                     f"(last: {last})\n{self.log_tails(15)}")
            await asyncio.sleep(0.1)

    async def wait_registered(self, timeout_s: float = CLUSTER_START_TIMEOUT_S) -> None:
        """Until every running node's metadata lists all the cluster's brokers."""
        want = {n.node_id for n in self.nodes}
        for proc in self.running():
            async def check(proc: BrokerProcess = proc) -> bool | None:
                resp = await self.metadata(node=proc.node_id)
                return True if want <= {b.node_id for b in resp.brokers} else None
            await self.poll(check, f"node {proc.node_id} to list brokers {sorted(want)}",
                             timeout_s)

    async def wait_leaders(self, topic: str, *, exclude: Sequence[int] = (),
                           timeout_s: float = 30.0) -> dict[int, int]:
        """Until every partition of `topic` has a leader that is running and not in
        `exclude`, as the running nodes' metadata says; returns partition -> leader id."""
        alive = {n.node_id for n in self.running()} - set(exclude)

        async def check() -> dict[int, int] | None:
            resp = await self.metadata([topic])
            for tm in resp.topics:
                if tm.name == topic and tm.partitions and all(
                        p.leader_id in alive for p in tm.partitions):
                    return {p.partition: p.leader_id for p in tm.partitions}
            return None
        result: dict[int, int] = await self.poll(
            check, f"a running leader (one of {sorted(alive)}) for every partition of {topic}",
            timeout_s)
        return result

    async def create_topic(self, name: str, partitions: int, replication_factor: int = 3,
                           timeout_s: float = 30.0) -> dict[int, int]:
        """CreateTopic through a running node, then wait for a leader per partition."""
        from rillet.api.v1 import admin_pb2

        async with self.stubs(self.running()[0]) as s:
            await s.admin.CreateTopic(admin_pb2.CreateTopicRequest(
                name=name, partitions=partitions, replication_factor=replication_factor),
                timeout=timeout_s)
        return await self.wait_leaders(name, timeout_s=timeout_s)

    async def describe(self, node: int, topic: str, timeout_s: float = 5.0) -> Any:
        """DescribeTopic answered by one node: its own replicas' offsets and sizes."""
        from rillet.api.v1 import admin_pb2

        async with self.stubs(node) as s:
            resp = await s.admin.DescribeTopic(admin_pb2.DescribeTopicRequest(name=topic),
                                               timeout=timeout_s)
            return resp.topic

    def log_tails(self, lines: int = 40) -> str:
        out = []
        for n in self.nodes:
            tail = n.log_text().splitlines()[-lines:]
            out.append(f"--- node {n.node_id} ({n.address}, log {n.log_path}):\n"
                       + "\n".join(tail))
        return "\n".join(out)

    def cleanup(self) -> None:
        """Teardown: SIGKILL every node by PID and reap it.

        Not SIGTERM: when every node stops at once, each one's leadership hand-over waits out
        its timeout (no peer is left to take over), which costs ~10 s per test. Tests of the
        graceful stop send SIGTERM themselves (`node.stop()`).
        """
        for n in self.nodes:
            if n.running:
                os.kill(n.pid, signal.SIGKILL)
        for n in self.nodes:
            if n.proc is not None:
                n.proc.wait(timeout=STOP_TIMEOUT_S)


ClusterFactory = Callable[..., Awaitable[Cluster]]


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[ClusterFactory]:
    """`await cluster_factory(3, env={...}, node_env={0: {...}}, extra_args=[...])`.

    `env` goes to every node (default FAST_RAFT_ENV), `node_env[i]` adds to node i's;
    `module` is what the nodes run (`python -m`; rillet.chaos.planted: the planted bug). Nodes
    listen on 127.0.0.(i+1) at a free port. Returns once every node lists all brokers.
    """
    clusters: list[Cluster] = []

    async def make(n: int = 3, *, env: Mapping[str, str] | None = None,
             node_env: Mapping[int, Mapping[str, str]] | None = None,
             extra_args: Sequence[str] = (), start: bool = True,
             module: str = "rillet.node") -> Cluster:
        base_env = dict(FAST_RAFT_ENV if env is None else env)
        hosts = [f"127.0.0.{i + 1}" for i in range(n)]
        ports = [free_port(h) for h in hosts]
        peers = ",".join(f"{i}={h}:{p}" for i, (h, p) in enumerate(zip(hosts, ports,
                                                                      strict=True)))
        nodes = [BrokerProcess(tmp_path / f"c{len(clusters)}-node-{i}", ports[i], node_id=i,
                               host=hosts[i], extra_args=[*extra_args, "--peers", peers],
                               env={**base_env, **((node_env or {}).get(i, {}))},
                               module=module)
                 for i in range(n)]
        cluster = Cluster(nodes)
        clusters.append(cluster)
        if start:
            cluster.start()
            await cluster.wait_registered()
        return cluster

    try:
        yield make
    finally:
        for c in clusters:
            for n in c.nodes:
                if n.starts:
                    log.info("node %d log tail:\n%s", n.node_id,
                             "\n".join(n.log_text().splitlines()[-60:]))
            c.cleanup()


@pytest.fixture
async def cluster(cluster_factory: ClusterFactory) -> Cluster:
    """Three running nodes with fast Raft ticks, every broker registered."""
    return await cluster_factory(3)
