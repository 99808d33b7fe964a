"""Pod simulation: the dev overlay's StatefulSet, run as the kubelet would run it, on loopback.

Each pod is a `rillet serve` process (the image's entrypoint) with exactly the environment the
rendered StatefulSet gives it: the ConfigMap's keys (envFrom), then the container's `env`
(downward-API fields filled in for that pod: its name, its `pod-index` label), with `$(VAR)`
references expanded in order. What only a cluster provides is substituted and nothing else:
pod `i` gets the address 127.0.0.(i+1), the headless-service names `<pod>.<service>` resolve to
those addresses, the container port maps to one free port, and each volume mount to a
directory of its own. A pod is stopped as the kubelet stops it: SIGTERM, then SIGKILL after
`terminationGracePeriodSeconds`.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rillet import batch
from rillet.api.v1 import admin_pb2, admin_pb2_grpc, log_pb2, log_pb2_grpc
from tests.integration.conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.chaos, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]


def _render(overlay: str) -> list[dict[str, Any]]:
    spec = importlib.util.spec_from_file_location("render_k8s", ROOT / "tools" / "render_k8s.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    objects: list[dict[str, Any]] = module.render(ROOT / "k8s" / "overlays" / overlay)
    return objects


class Pods:
    """The StatefulSet's pods as local processes."""

    def __init__(self, objects: list[dict[str, Any]], root: Path) -> None:
        self.sts = next(o for o in objects if o["kind"] == "StatefulSet")
        self.configmaps = {o["metadata"]["name"]: o.get("data", {})
                           for o in objects if o["kind"] == "ConfigMap"}
        spec = self.sts["spec"]
        self.name = self.sts["metadata"]["name"]
        self.service = spec["serviceName"]
        self.replicas = int(spec["replicas"])
        pod_spec = spec["template"]["spec"]
        self.grace_s = float(pod_spec.get("terminationGracePeriodSeconds", 30))
        self.container = pod_spec["containers"][0]
        self.container_ports = [int(p["containerPort"]) for p in self.container["ports"]]
        self.ports = {p: free_port() for p in self.container_ports}
        self.port = self.ports[self.container_ports[0]]  # the first one is gRPC
        self.root = root
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def ip(self, i: int) -> str:
        return f"127.0.0.{i + 1}"

    def address(self, i: int) -> str:
        return f"{self.ip(i)}:{self.port}"

    def _resolve(self, value: str, i: int) -> str:
        """What cluster DNS and the pod network would do to a value: headless names to pod
        addresses, the wildcard listen address to the pod's own, the container port to ours."""
        for j in range(self.replicas):
            value = re.sub(rf"\b{self.name}-{j}\.{self.service}(\.[a-z0-9.-]+)?\b",
                           self.ip(j), value)
        value = value.replace("0.0.0.0", self.ip(i))
        for container_port, port in self.ports.items():
            value = re.sub(rf":{container_port}\b", f":{port}", value)
        return value

    def env(self, i: int) -> dict[str, str]:
        pod = f"{self.name}-{i}"
        fields = {"metadata.name": pod, "metadata.namespace": "default",
                  "metadata.labels['apps.kubernetes.io/pod-index']": str(i),
                  "status.podIP": self.ip(i)}
        env: dict[str, str] = {}
        for source in self.container.get("envFrom", []):
            env.update(self.configmaps[source["configMapRef"]["name"]])
        for item in self.container.get("env", []):
            if "value" in item:
                value = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                               lambda m: env.get(m.group(1), m.group(0)), item["value"])
            else:
                value = fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
            env[item["name"]] = value
        env = {k: self._resolve(str(v), i) for k, v in env.items()}
        for mount in self.container.get("volumeMounts", []):
            local = self.root / pod / mount["name"]
            local.mkdir(parents=True, exist_ok=True)
            env = {k: v.replace(mount["mountPath"], str(local)) for k, v in env.items()}
        return env

    def start(self, i: int) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith("RILLET_")}
        entrypoint = [str(Path(sys.executable).parent / "rillet"), "serve",
                      *self.container.get("args", [])]
        log_path = self.root / f"{self.name}-{i}.log"
        with open(log_path, "ab") as log_file:
            self.procs[i] = subprocess.Popen(entrypoint, env={**base, **self.env(i)},
                                             stdout=log_file, stderr=subprocess.STDOUT)

    def kubelet_stop(self, i: int) -> int:
        """SIGTERM, then SIGKILL once the grace period is over; the exit status."""
        proc = self.procs[i]
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=self.grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def log(self, i: int) -> str:
        return (self.root / f"{self.name}-{i}.log").read_text(errors="replace")

    def cleanup(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


async def poll(check: Any, what: str, timeout_s: float = 60.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    last: object = None
    while loop.time() < deadline:
        try:
            result = await check()
            if result is not None:
                return result
        except grpc.aio.AioRpcError as exc:
            last = exc
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last: {last})")


async def test_the_dev_statefulset_forms_a_cluster_and_survives_a_kubelet_stop(
        tmp_path: Path) -> None:
    pods = Pods(_render("dev"), tmp_path)
    assert pods.replicas == 3
    env0 = pods.env(0)
    assert env0["RILLET_NODE_ID"] == "0"
    assert env0["RILLET_ADVERTISED_ADDRESS"] == pods.address(0)
    assert env0["RILLET_PEERS"] == ",".join(f"{i}={pods.address(i)}" for i in range(3))
    metrics_port = pods.ports[9100]
    assert env0["RILLET_METRICS_LISTEN"] == f"{pods.ip(0)}:{metrics_port}"
    try:
        for i in range(3):
            pods.start(i)

        async def registered(i: int) -> bool | None:
            async with grpc.aio.insecure_channel(pods.address(i)) as ch:
                md = await admin_pb2_grpc.MetadataStub(ch).GetMetadata(
                    admin_pb2.MetadataRequest(), timeout=2)
            return True if {(b.node_id, b.address) for b in md.brokers} == {
                (j, pods.address(j)) for j in range(3)} else None
        for i in range(3):
            await poll(lambda i=i: registered(i), f"pod {i} to list every pod")
        # What the kubelet's probes ask: the plaintext health-only port of each pod.
        for i in range(3):
            async with grpc.aio.insecure_channel(f"{pods.ip(i)}:{pods.ports[9092]}") as ch:
                status = await health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(), timeout=5)
            assert status.status == health_pb2.HealthCheckResponse.SERVING

        async with grpc.aio.insecure_channel(pods.address(0)) as ch:
            await admin_pb2_grpc.AdminStub(ch).CreateTopic(admin_pb2.CreateTopicRequest(
                name="k8s", partitions=3, replication_factor=3), timeout=30)
            call = log_pb2_grpc.ProduceStub(ch).Produce()
            await call.write(log_pb2.ProduceRequest(
                topic="k8s", partition=2, batch=batch.encode([b"hello"], timestamps_ms=[1])))
            answer = await call.read()
            await call.done_writing()
        assert answer.error.code == 0 and answer.base_offset == 0

        async def read_back(i: int) -> list[bytes] | None:
            values: list[bytes] = []
            async with grpc.aio.insecure_channel(pods.address(i)) as ch:
                async for resp in log_pb2_grpc.ReplayStub(ch).Replay(
                        log_pb2.ReplayRequest(topic="k8s", partitions=[2]), timeout=10):
                    for pd in resp.partitions:
                        values += [r.value for h, mv in batch.iter_batches(pd.batches)
                                   if not h.is_control for r in batch.decode(bytes(mv))]
            return values or None
        assert await poll(lambda: read_back(1), "the record through pod 1") == [b"hello"]

        # The metrics port of the manifest serves the pod's Raft state.
        text = await asyncio.to_thread(_get, f"http://{pods.ip(1)}:{metrics_port}/metrics")
        assert "rillet_partitions_hosted 3.0" in text

        # Pod 2 leads the partitions it prefers once leaders settled; the kubelet stops it.
        async def leads_something() -> bool | None:
            async with grpc.aio.insecure_channel(pods.address(2)) as ch:
                d = await admin_pb2_grpc.AdminStub(ch).DescribeTopic(
                    admin_pb2.DescribeTopicRequest(name="k8s"), timeout=2)
            return True if any(p.leader_id == 2 for p in d.topic.partitions) else None
        await poll(leads_something, "pod 2 to lead a partition")
        assert pods.kubelet_stop(2) == 0
        assert "leaderships handed over (0 left)" in pods.log(2)

        # Restarted on the same volume, it rejoins and serves the record.
        pods.start(2)
        await poll(lambda: registered(2), "pod 2 to rejoin")
        assert await poll(lambda: read_back(2), "the record through pod 2") == [b"hello"]
    finally:
        pods.cleanup()
