"""Real broker processes on 127.0.0.1 for integration tests.

`broker` (function scope) is one running node on a fresh data dir; `broker_factory(...)` starts
more, or with extra flags. Each is a `BrokerProcess`: `.address`, `.data_dir`, `.pid`,
`.kill()` (SIGKILL + wait), `.stop()` (SIGTERM + wait), `.start()` (same data dir and port,
returns once the health service says SERVING). Every process started is stopped by its PID at
teardown. Waits poll a condition under a deadline; nothing sleeps and hopes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 20.0
# As PERFORMANCE.md says: without these, every message of 256 KiB or more page-faults.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "268435456"}


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BrokerProcess:
    """One `python -m rillet.node` process, restartable on the same port and data dir."""

    def __init__(self, data_dir: Path, port: int, *, node_id: int = 0,
                 extra_args: Sequence[str] = (), env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = port
        self.node_id = node_id
        self.extra_args = list(extra_args)
        self.env = env or {}
        self.log_path = data_dir.parent / f"{data_dir.name}.node-{node_id}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "broker not started"
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "rillet.node", "--node-id", str(self.node_id),
                "--listen", self.address, "--data-dir", str(self.data_dir), *self.extra_args]

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start the process and wait until it reports SERVING (or fail with its log)."""
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
