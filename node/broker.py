"""The composition root of a node: settings, storage, topics, servicers, background tasks.

Lifecycle:
  start: lock the data dir, open (recover) every partition log, start the group-commit task,
         start the gRPC server, then report SERVING on the health service.
  stop:  health NOT_SERVING, open Consume/Replay streams end with UNAVAILABLE, the server stops
         accepting calls and gives in-flight ones `shutdown_grace_s` to finish (so acks=all
         producers still get their answers), the committer flushes one last time, every log
         closes clean.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
from pathlib import Path
from typing import IO, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from rillet.api.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    groups_pb2,
    groups_pb2_grpc,
    log_pb2,
    log_pb2_grpc,
)
from rillet.cluster.rounds import Round
from rillet.internal.v1 import peer_pb2_grpc
from rillet.node.cluster_node import ClusterNode
from rillet.node.config import MIB, BrokerConfig
from rillet.node.security import tls
from rillet.node.security.authn import AuthInterceptor, authenticator_for
from rillet.node.security.malformed import MalformedRequestInterceptor
from rillet.node.services.admin import AdminService, MetadataService
from rillet.node.services.common import NodeContext
from rillet.node.services.groups import GroupsHost, GroupsService
from rillet.node.services.peer import MAX_PEER_MESSAGE_BYTES, PeerService
from rillet.node.services.produce import ProduceService
from rillet.node.services.read import ConsumeService, ReplayService
from rillet.node.storage.compactor import Compactable, Compactor

HAND_OVER_TIMEOUT_S = 5.0

log = logging.getLogger(__name__)

SERVICE_NAMES = tuple(
    desc.full_name for desc in (
        log_pb2.DESCRIPTOR.services_by_name["Produce"],
        log_pb2.DESCRIPTOR.services_by_name["Consume"],
        log_pb2.DESCRIPTOR.services_by_name["Replay"],
        admin_pb2.DESCRIPTOR.services_by_name["Admin"],
        admin_pb2.DESCRIPTOR.services_by_name["Metadata"],
        groups_pb2.DESCRIPTOR.services_by_name["Groups"],
    ))


class _Health(health.aio.HealthServicer):  # type: ignore[misc,name-defined]
    """The standard health service, with List answered plainly: the library leaves it
    unimplemented and logs a traceback at ERROR on every call, which anyone may make."""

    async def List(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                            "grpc.health.v1.Health/List is not served; use Check or Watch")


class DataDirLockedError(RuntimeError):
    """Another process already serves this data directory."""


class DataDirLayoutError(RuntimeError):
    """The data directory holds a layout this version does not run; it is left untouched."""


#: What a data directory written by a single node before one path (issue 13) holds.
SINGLE_NODE_LAYOUT = ("topics.json", "topics", "groups", "acls.json", "producer-ids")


def check_layout(data_dir: Path) -> None:
    """Refuse a data directory in the old single-node layout: never reinterpret it."""
    found = [name for name in SINGLE_NODE_LAYOUT if (data_dir / name).exists()]
    if found:
        raise DataDirLayoutError(
            f"data directory {data_dir} holds the single-node layout of an earlier Rillet "
            f"({', '.join(found)}): this version runs a lone node as a cluster of one and "
            f"does not read that layout. Start this node on an empty --data-dir, and copy the "
            f"old topics over with the earlier version running (rillet replay ... | rillet "
            f"produce ...); the old directory is left as it is")


class Broker:
    """One node. `start()` then `stop()`; or `run()` until SIGTERM/SIGINT."""

    def __init__(self, config: BrokerConfig, *, round_type: type[Round] = Round) -> None:
        """`round_type`: the Raft round every group runs (rounds.Round; a test plants a bug
        in a subclass)."""
        config.validate()
        self.config = config
        # One path for one node and for many: a node without peers is a cluster of one.
        self.cluster = ClusterNode(config, round_type=round_type)
        self.node = NodeContext(config, self.cluster)
        self.health = _Health()
        self._server: grpc.aio.Server | None = None
        self._retention_task: asyncio.Task[None] | None = None
        self.compactor = Compactor(self._compactable_logs,
                                   config.compaction_interval_ms / 1000.0)
        self._lock_file: IO[bytes] | None = None
        self._peer_service: PeerService | None = None
        self._produce: ProduceService | None = None
        self.groups = GroupsHost(self.node)
        self.port = 0
        self.metrics_port = 0
        self.health_port = 0
        self._health_server: grpc.aio.Server | None = None
        # Read every certificate, key and token file now: a mistake stops the node before it
        # opens its port, with a ConfigError naming the setting and the file.
        self._server_credentials = tls.server_credentials(config)
        self._authenticator = authenticator_for(config)

    def _server_options(self) -> list[tuple[str, int]]:
        # Receive: a batch above the limit must still arrive whole so it can be refused with
        # BATCH_TOO_LARGE and a message, rather than a transport error that ends the stream.
        receive = self.config.max_batch_bytes * 2 + MIB
        # Send: max_fetch_bytes plus one batch beyond it (a read always carries one batch).
        send = self.config.max_fetch_bytes + max(self.config.max_batch_bytes * 2, 4 * MIB) + MIB
        # Peers send coalesced Raft traffic of every group on this port too.
        receive = max(receive, MAX_PEER_MESSAGE_BYTES)
        send = max(send, MAX_PEER_MESSAGE_BYTES)
        return [
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.max_receive_message_length", receive),
            ("grpc.max_send_message_length", send),
            ("grpc.so_reuseport", 0),
            # Streams beyond this wait in the client's transport: a connection cannot make the
            # node hold unbounded calls.
            ("grpc.max_concurrent_streams", self.config.max_streams_per_connection),
        ]

    def _lock_data_dir(self) -> None:
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        fh = open(self.config.data_dir / ".lock", "ab")  # held until stop()
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise DataDirLockedError(
                f"data directory {self.config.data_dir} is in use by another node") from None
        self._lock_file = fh

    async def start(self) -> None:
        cfg = self.config
        self._lock_data_dir()
        check_layout(self.config.data_dir)
        await self.cluster.start()
        # Always: request bytes that do not parse end INVALID_ARGUMENT, not UNKNOWN
        # (malformed.py). Authentication, when on, runs first (outermost), so a stranger is
        # UNAUTHENTICATED whatever it sent; a node that authenticates no one has no AuthInterceptor.
        interceptors: list[Any] = [MalformedRequestInterceptor()]
        if self._authenticator is not None:
            interceptors.insert(0, AuthInterceptor(self._authenticator))
        server = grpc.aio.server(options=self._server_options(), interceptors=interceptors)
        self._peer_service = PeerService(self.cluster.raft_id, self.cluster.driver.receive)
        peer_pb2_grpc.add_PeerServicer_to_server(  # type: ignore[no-untyped-call]
            self._peer_service, server)
        self._produce = ProduceService(self.node)
        log_pb2_grpc.add_ProduceServicer_to_server(self._produce, server)  # type: ignore[no-untyped-call]
        log_pb2_grpc.add_ConsumeServicer_to_server(ConsumeService(self.node), server)  # type: ignore[no-untyped-call]
        log_pb2_grpc.add_ReplayServicer_to_server(ReplayService(self.node), server)  # type: ignore[no-untyped-call]
        admin_pb2_grpc.add_AdminServicer_to_server(  # type: ignore[no-untyped-call]
            AdminService(self.node, self.groups), server)
        groups_pb2_grpc.add_GroupsServicer_to_server(  # type: ignore[no-untyped-call]
            GroupsService(self.node, self.groups), server)
        admin_pb2_grpc.add_MetadataServicer_to_server(MetadataService(self.node), server)  # type: ignore[no-untyped-call]
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME), server)
        try:
            if self._server_credentials is not None:
                self.port = server.add_secure_port(cfg.listen, self._server_credentials)
            else:
                self.port = server.add_insecure_port(cfg.listen)
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {cfg.listen}: {exc}") from exc
        if self.port == 0:
            raise OSError(f"cannot listen on {cfg.listen} (address in use?)")
        await self.groups.start()
        await server.start()
        self._server = server
        await self._start_health_port()
        self._start_metrics()
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._retention_task = asyncio.create_task(self._retention_loop(), name="retention")
        self.compactor.start()
        log.info("node %d listening on %s:%d (%s; data in %s, pid %d)", cfg.node_id, cfg.host,
                 self.port, self._security_text(), cfg.data_dir, os.getpid())

    async def _start_health_port(self) -> None:
        """The plaintext health-only port (health_listen), sharing the health servicer and so
        its statuses: probes that cannot speak TLS learn what the main port would say, and
        nothing else is reachable there."""
        address = self.config.health_listen
        if not address:
            return
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        try:
            self.health_port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"cannot serve health on {address}: {exc}") from exc
        if self.health_port == 0:
            raise OSError(f"cannot serve health on {address} (address in use?)")
        await server.start()
        self._health_server = server
        log.info("node %d serves health only, in plaintext, on %s", self.config.node_id,
                 address.rpartition(":")[0] + f":{self.health_port}")

    def _security_text(self) -> str:
        cfg = self.config
        transport = ("mutual TLS" if cfg.tls_client_ca else "TLS") if cfg.tls_cert \
            else "plaintext"
        if cfg.tls_client_ca:
            return f"{transport}, principals from client certificates"
        return f"{transport}, {'bearer tokens' if cfg.token_file else 'no authentication'}"

    def _start_metrics(self) -> None:
        metrics = self.node.metrics
        self.cluster.syncer.observe = metrics.fsync_seconds.observe
        metrics.watch_state(self.cluster.partition_states, self.cluster.under_replicated)
        if self.config.metrics_listen:
            try:
                self.metrics_port = metrics.start_server(self.config.metrics_listen)
            except OSError as exc:
                raise OSError(f"cannot serve metrics on {self.config.metrics_listen}: "
                              f"{exc}") from exc

    async def stop(self) -> None:
        """Graceful stop; safe to call once after start (or after a failed start)."""
        log.info("node %d stopping", self.config.node_id)
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.node.stopping.set()
        # Members rejoin elsewhere (or after the restart) with what they own.
        await self.groups.stop()
        if self._server is not None:
            left = await self.cluster.hand_over_leadership(HAND_OVER_TIMEOUT_S)
            log.info("node %d: leaderships handed over (%d left)", self.config.node_id, left)
        if self._peer_service is not None:
            self._peer_service.close()
        if self._server is not None:
            await self._server.stop(self.config.shutdown_grace_s)
            self._server = None
        if self._health_server is not None:
            await self._health_server.stop(None)
            self._health_server = None
        if self._retention_task is not None:
            self._retention_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retention_task
            self._retention_task = None
        await self.compactor.stop()
        if self._produce is not None:
            await self._produce.forwarder.close()
        await self.cluster.stop()
        self.node.metrics.stop_server()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None
        log.info("node %d stopped", self.config.node_id)

    async def run(self) -> None:
        """Serve until SIGTERM or SIGINT, then stop gracefully."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await self.start()
            await stop.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self.stop()

    async def _retention_loop(self) -> None:
        interval_s = self.config.retention_check_interval_ms / 1000.0
        while True:
            await asyncio.sleep(interval_s)
            self.enforce_retention()

    def _compactable_logs(self) -> list[tuple[str, Compactable]]:
        """(name, log) of every open partition this node holds, for the compactor (it skips
        logs whose topic is not cleanup.policy compact)."""
        return [(r.name, r.rlog) for r in list(self.cluster.replicas.values()) if not r.closed]

    def enforce_retention(self) -> int:
        """One retention pass over every partition; returns segments deleted."""
        deleted = 0
        for rep in list(self.cluster.replicas.values()):
            if rep.closed:
                continue
            try:
                n = rep.rlog.enforce_retention()
            except Exception:
                log.exception("partition %s: retention failed", rep.name)
                continue
            if n:
                log.info("partition %s: retention deleted %d segments, log start now %d",
                         rep.name, n, rep.log.log_start_offset)
                deleted += n
        return deleted
