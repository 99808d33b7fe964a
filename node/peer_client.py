"""PeerClient: the gRPC implementation of ``rillet.cluster.transport.Transport``.

Per peer there is one ``_PeerLink``: a bounded queue of the driver's sends and one task that
owns ONE long-lived ``Peer.Exchange`` stream to that peer. The task's request generator takes
everything queued when the stream is ready for more and sends it as ONE ``PeerBatch`` (up to
``max_batch_bytes``; one oversized send still travels alone), so a busy node pays gRPC's
per-message cost once per peer per flush, not once per group or per Raft message.

Failure handling, chosen because Raft re-sends what it needs:

- ``send`` never blocks: past ``max_queued_sends`` sends or ``max_queued_bytes`` bytes it drops
  the new messages and counts them.
- While a link has no stream (connecting failed, the peer is down, backing off) sends to that
  peer are dropped at once, and a stream that breaks drops what was queued: after a gap those
  messages are stale (old heartbeats, appends the leader will re-probe anyway).
- Reconnection backs off exponentially from ``backoff_initial_s`` to ``backoff_max_s``; a fresh
  channel is built for every attempt so gRPC's own (much longer) reconnect backoff never applies.
- Message limits are set explicitly on the channel; the receiving server sets the same ones
  (``rillet.node.services.peer.peer_server_options``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping

import grpc

from rillet.cluster.transport import GroupMessage
from rillet.internal.v1 import peer_pb2, peer_pb2_grpc
from rillet.node.security.tls import PeerDialer, plaintext
from rillet.node.services.peer import MAX_PEER_MESSAGE_BYTES, MIB

log = logging.getLogger(__name__)


RECONNECT_OPTIONS: list[tuple[str, int]] = [
    # gRPC shares subchannels process-wide: without a pool of its own, the fresh channel of a
    # reconnect attempt inherits the old subchannel's exponential reconnect backoff (up to 2
    # minutes) and keeps failing with "connection refused" long after the peer is back. With
    # these, a node reaches a restarted peer within a second; every channel between nodes
    # (Raft streams, forwarded calls) uses them.
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class _PeerLink:
    """One peer: its queue, its stream task and its counters."""

    def __init__(self, client: PeerClient, peer_id: int, address: str) -> None:
        self.client = client
        self.peer_id = peer_id
        self.address = address
        self.pending: collections.deque[list[GroupMessage]] = collections.deque()
        self.pending_bytes = 0
        self.wake = asyncio.Event()
        self.connected = False
        self.task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.batches_sent = 0
        self.streams_opened = 0

    def enqueue(self, messages: list[GroupMessage]) -> None:
        if self.task is None:
            self.task = asyncio.create_task(self._run(),
                                            name=f"peer-{self.client.node_id}-{self.peer_id}")
        size = sum(len(buf) for _, buf in messages)
        c = self.client
        if (not self.connected or len(self.pending) >= c.max_queued_sends
                or (self.pending and self.pending_bytes + size > c.max_queued_bytes)):
            self.dropped += len(messages)
            return
        self.pending.append(messages)
        self.pending_bytes += size
        self.wake.set()

    def _clear(self) -> None:
        self.dropped += sum(len(m) for m in self.pending)
        self.pending.clear()
        self.pending_bytes = 0

    def _next_batch(self) -> peer_pb2.PeerBatch:
        """Everything queued (within ``max_batch_bytes``) as one PeerBatch, grouped by group
        and in order within each group."""
        by_group: dict[int, list[bytes]] = {}
        size = 0
        limit = self.client.max_batch_bytes
        while self.pending:
            send_size = sum(len(buf) for _, buf in self.pending[0])
            if size and size + send_size > limit:
                break
            messages = self.pending.popleft()
            self.pending_bytes -= send_size
            size += send_size
            for group_id, buf in messages:
                bucket = by_group.get(group_id)
                if bucket is None:
                    bucket = by_group[group_id] = []
                bucket.append(buf)
        return peer_pb2.PeerBatch(
            from_node=self.client.node_id, to_node=self.peer_id,
            groups=[peer_pb2.GroupMessages(group_id=g, messages=ms) for g, ms in by_group.items()])

    async def _requests(self) -> AsyncIterator[peer_pb2.PeerBatch]:
        while True:
            while not self.pending:
                self.wake.clear()
                await self.wake.wait()
            yield self._next_batch()
            self.batches_sent += 1

    async def _run(self) -> None:
        c = self.client
        backoff = c.backoff_initial_s
        while True:
            channel = c.dialer.channel(self.address, c.channel_options())
            sent_before = self.batches_sent
            try:
                stub = peer_pb2_grpc.PeerStub(channel)  # type: ignore[no-untyped-call]
                call = stub.Exchange(self._requests())
                self.connected = True
                self.streams_opened += 1
                async for _ack in call:
                    pass  # reserved: receivers send none today
                log.info("node %d: stream to peer %d at %s ended by the peer",
                         c.node_id, self.peer_id, self.address)
            except grpc.aio.AioRpcError as exc:
                log.info("node %d: stream to peer %d at %s failed: %s %s", c.node_id,
                         self.peer_id, self.address, exc.code().name, exc.details())
            finally:
                self.connected = False
                self._clear()
                await channel.close(None)
            if self.batches_sent > sent_before:
                backoff = c.backoff_initial_s  # the stream worked for a while: retry quickly
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, c.backoff_max_s)

    async def close(self) -> None:
        self._clear()
        self.connected = False
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None


class PeerClient:
    """The gRPC ``Transport`` of node ``node_id``; ``peers`` maps node ids to ``host:port``
    (this node's own id, if present, is ignored); ``dialer`` opens the channels (TLS, peer
    token). See the module docstring."""

    def __init__(self, node_id: int, peers: Mapping[int, str], *,
                 max_queued_sends: int = 1024, max_queued_bytes: int = 64 * MIB,
                 max_batch_bytes: int = 4 * MIB,
                 max_message_bytes: int = MAX_PEER_MESSAGE_BYTES,
                 backoff_initial_s: float = 0.05, backoff_max_s: float = 2.0,
                 dialer: PeerDialer | None = None) -> None:
        if not 0 < max_batch_bytes <= max_message_bytes:
            raise ValueError("max_batch_bytes must be positive and at most max_message_bytes")
        if max_queued_sends <= 0 or max_queued_bytes <= 0:
            raise ValueError("the queue bounds must be positive")
        if not 0 < backoff_initial_s <= backoff_max_s:
            raise ValueError("backoff must satisfy 0 < initial <= max")
        self.node_id = node_id
        self.max_queued_sends = max_queued_sends
        self.max_queued_bytes = max_queued_bytes
        self.max_batch_bytes = max_batch_bytes
        self.max_message_bytes = max_message_bytes
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        # TLS with this node's certificate and/or its peer token (plaintext by default).
        self.dialer = dialer or plaintext()
        self._links = {pid: _PeerLink(self, pid, addr) for pid, addr in peers.items()
                       if pid != node_id}
        self._closed = False
        self.dropped_unknown = 0

    def channel_options(self) -> list[tuple[str, int]]:
        return [
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            # A stream to a peer that vanished without a FIN (partition, power loss) is noticed
            # within keepalive time + timeout instead of hanging until TCP gives up.
            ("grpc.keepalive_time_ms", 20_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.enable_retries", 0),
            *RECONNECT_OPTIONS,
        ]

    def send(self, to: int, messages: list[GroupMessage]) -> None:
        """Queue ``messages`` for peer ``to``; never blocks, drops on overflow or no stream."""
        if self._closed or not messages:
            return
        link = self._links.get(to)
        if link is None:
            self.dropped_unknown += len(messages)
            return
        link.enqueue(messages)

    def connect(self) -> None:
        """Open the streams to every peer now rather than at the first send."""
        for link in self._links.values():
            if link.task is None:
                link.task = asyncio.create_task(
                    link._run(), name=f"peer-{self.node_id}-{link.peer_id}")

    def dropped(self) -> int:
        """Messages dropped so far (overflow, no stream, unknown peer)."""
        return self.dropped_unknown + sum(link.dropped for link in self._links.values())

    def link_stats(self) -> dict[int, tuple[int, int, int]]:
        """Per peer: (batches sent, streams opened, messages dropped)."""
        return {pid: (lk.batches_sent, lk.streams_opened, lk.dropped)
                for pid, lk in self._links.items()}

    async def close(self) -> None:
        """End every stream task; queued messages are dropped."""
        self._closed = True
        for link in self._links.values():
            await link.close()
