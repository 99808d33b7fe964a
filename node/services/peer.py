"""Peer: the server side of the node-to-node Raft transport.

Each peer opens one long-lived ``Exchange`` stream to this node and sends ``PeerBatch``
messages on it (see proto/rillet/internal/v1/peer.proto). Each batch is unpacked into
``(group id, encoded message)`` pairs and handed to the Raft driver's ``receive`` as it
arrives; the driver decodes, steps the cores and wakes its ready loop. Nothing is answered
per batch: Raft's own replies travel back on the stream this node opened to the sender.

Back-pressure: ``receive`` is synchronous and cheap (decode and step), so the handler reads the
next batch only after the previous one was handed over, and HTTP/2 flow control slows a sender
that outruns the driver.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from rillet.cluster.transport import GroupMessage, Receiver
from rillet.internal.v1 import peer_pb2, peer_pb2_grpc
from rillet.node.errors import Context

log = logging.getLogger(__name__)

MIB = 1024 * 1024
MAX_PEER_MESSAGE_BYTES = 64 * MIB
"""The largest PeerBatch either side accepts. A sender coalesces far less than this per
message (``PeerClient.max_batch_bytes``); the margin lets one large Raft message (a snapshot of
the metadata group, an APPEND of big batches) travel alone."""


def peer_server_options(max_message_bytes: int = MAX_PEER_MESSAGE_BYTES) -> list[tuple[str, int]]:
    """Options a server carrying the Peer service needs: explicit message limits (the 4 MiB
    default counts framing) and tolerance of the clients' keepalive pings."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


class PeerService(peer_pb2_grpc.PeerServicer):
    """Feeds every received batch into ``receive`` (``RaftDriver.receive`` of ``node_id``)."""

    def __init__(self, node_id: int, receive: Receiver) -> None:
        self.node_id = node_id
        self.receive = receive
        self.batches = 0
        self._handlers: set[asyncio.Task[Any]] = set()

    def close(self) -> None:
        """End every open peer stream (a stopping node: they would otherwise hold the server's
        shutdown grace period open, since peers never end them)."""
        for task in list(self._handlers):
            task.cancel()

    async def Exchange(
        self,
        request_iterator: AsyncIterator[peer_pb2.PeerBatch],
        context: Context,
    ) -> AsyncIterator[peer_pb2.PeerAck]:
        peer = "?"
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        async for batch in request_iterator:
            if batch.to_node != self.node_id:
                log.warning("node %d: refused a peer stream from node %d meant for node %d",
                            self.node_id, batch.from_node, batch.to_node)
                await context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"this is node {self.node_id}, not node {batch.to_node}")
            if peer == "?":
                peer = str(batch.from_node)
                log.info("node %d: peer stream from node %s opened", self.node_id, peer)
            messages: list[GroupMessage] = [
                (group.group_id, buf) for group in batch.groups for buf in group.messages]
            self.batches += 1
            self.receive(batch.from_node, messages)
        log.info("node %d: peer stream from node %s ended", self.node_id, peer)
        return
        yield  # an async generator that sends nothing (PeerAck is reserved)
