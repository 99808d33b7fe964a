"""How a node's Raft driver reaches its peers: the ``Transport`` protocol and an in-memory one.

The driver (``cluster.driver``) owns this protocol: it is the caller, and the gRPC client in
``rillet.node.peer_client`` and the in-memory network below implement it. There is no grpc
here, so the cluster package stays free of the wire.

What crosses a transport is a list of ``(group id, encoded message)`` pairs: many Raft groups'
messages for one peer, produced in one driver round and encoded with
``rillet.cluster.raft.codec.encode_message``. One ``send`` per peer per round, so the cost
follows the number of peers, not the number of groups.

The rules every implementation keeps:

- ``send`` never blocks and never raises for a network problem. It queues; a background task
  delivers. The queue per peer is bounded, and on overflow the NEWEST messages are dropped and
  counted: Raft retries everything it needs (appends are re-sent after a probe, heartbeats
  recur, elections time out), so losing a message costs latency, never safety.
- Messages to one peer are delivered in the order they were sent, or dropped; never reordered.
- Delivery calls the receiving node's ``Receiver`` (``RaftDriver.receive``) with the sender's
  node id and the pairs, possibly coalescing several sends into one call.
- ``close()`` ends every background task and drops whatever is still queued.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)

GroupMessage = tuple[int, bytes]
"""``(group id, codec-encoded raft Message)``: the unit a transport carries."""

Receiver = Callable[[int, list[GroupMessage]], None]
"""What a transport calls on the receiving node: ``receive(from_node, messages)``."""


class Transport(Protocol):
    """Send encoded Raft messages to peers; see the module docstring for the rules."""

    def send(self, to: int, messages: list[GroupMessage]) -> None:
        """Queue ``messages`` for node ``to``. Never blocks; drops (and counts) on overflow."""
        ...

    async def close(self) -> None:
        """Stop delivering, end background tasks, drop what is queued."""
        ...


class _Link:
    """One directed link ``frm -> to`` of the in-memory network: a bounded FIFO of pending
    sends and the task that delivers them."""

    def __init__(self, network: InMemoryNetwork, frm: int, to: int, max_pending: int) -> None:
        self.network = network
        self.frm = frm
        self.to = to
        self.max_pending = max_pending
        self.pending: collections.deque[list[GroupMessage]] = collections.deque()
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.delivered = 0

    def enqueue(self, messages: list[GroupMessage]) -> None:
        if not self.network.link_up(self.frm, self.to):
            self.dropped += len(messages)
            return
        if len(self.pending) >= self.max_pending:
            self.dropped += len(messages)
            log.debug("link %d->%d: queue full, dropped %d messages", self.frm, self.to,
                      len(messages))
            return
        self.pending.append(messages)
        self.wake.set()
        if self.task is None:
            self.task = asyncio.create_task(self._run(), name=f"link-{self.frm}-{self.to}")

    async def _run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            # Coalesce whatever is queued into one delivery, as the gRPC client does into one
            # stream message. Bounded: at most max_pending sends are ever queued.
            batch: list[GroupMessage] = []
            while self.pending:
                batch.extend(self.pending.popleft())
            receiver = self.network.receivers.get(self.to)
            if receiver is None or not self.network.link_up(self.frm, self.to):
                self.dropped += len(batch)
                continue
            self.delivered += len(batch)
            receiver(self.frm, batch)
            # Let the receiver's driver and the other links run between deliveries.
            await asyncio.sleep(0)

    async def close(self) -> None:
        self.pending.clear()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None


class InMemoryNetwork:
    """Nodes in one process connected by in-memory links, for tests and benchmarks.

    Each directed link can be cut and healed on its own (``cut(1, 2)`` stops 1 -> 2 only), and
    ``isolate(n)`` cuts every link to and from ``n``. Messages stay bytes end to end, so no
    object is shared between nodes. Delivery is asynchronous (a task per link), as on a real
    network: a send never re-enters the receiving driver.
    """

    def __init__(self, *, max_pending_per_link: int = 1024) -> None:
        self.max_pending_per_link = max_pending_per_link
        self.receivers: dict[int, Receiver] = {}
        self._cut: set[tuple[int, int]] = set()
        self._links: dict[tuple[int, int], _Link] = {}

    def register(self, node_id: int, receiver: Receiver) -> None:
        """Deliver messages addressed to ``node_id`` to ``receiver`` from now on."""
        self.receivers[node_id] = receiver

    def unregister(self, node_id: int) -> None:
        """Messages to ``node_id`` are dropped from now on (the node is down)."""
        self.receivers.pop(node_id, None)

    def transport(self, node_id: int) -> InMemoryTransport:
        """The transport node ``node_id`` sends through."""
        return InMemoryTransport(self, node_id)

    def link(self, frm: int, to: int) -> _Link:
        key = (frm, to)
        link = self._links.get(key)
        if link is None:
            link = self._links[key] = _Link(self, frm, to, self.max_pending_per_link)
        return link

    def link_up(self, frm: int, to: int) -> bool:
        return (frm, to) not in self._cut

    def cut(self, frm: int, to: int) -> None:
        """Drop everything sent ``frm -> to`` (including what is queued) until healed."""
        self._cut.add((frm, to))

    def heal(self, frm: int, to: int) -> None:
        """Carry ``frm -> to`` again."""
        self._cut.discard((frm, to))

    def isolate(self, node_id: int) -> None:
        """Cut every link to and from ``node_id`` (among the nodes registered so far)."""
        for other in self.receivers:
            if other != node_id:
                self.cut(node_id, other)
                self.cut(other, node_id)

    def heal_all(self) -> None:
        """Heal every link."""
        self._cut.clear()

    def dropped(self) -> int:
        """Messages dropped so far on all links (cut or overflow)."""
        return sum(link.dropped for link in self._links.values())

    async def close_links_from(self, node_id: int) -> None:
        for (frm, _), link in list(self._links.items()):
            if frm == node_id:
                await link.close()


class InMemoryTransport:
    """One node's ``Transport`` onto an ``InMemoryNetwork``."""

    def __init__(self, network: InMemoryNetwork, node_id: int) -> None:
        self.network = network
        self.node_id = node_id
        self.sends = 0
        self._closed = False

    def send(self, to: int, messages: list[GroupMessage]) -> None:
        """Queue for ``to`` on the directed link; drops when cut, closed or full."""
        if self._closed or not messages:
            return
        self.sends += 1
        self.network.link(self.node_id, to).enqueue(messages)

    async def close(self) -> None:
        """Stop this node's outgoing links."""
        self._closed = True
        await self.network.close_links_from(self.node_id)
