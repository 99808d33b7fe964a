"""The client's view of the cluster: brokers, topics, partition counts and leaders.

Pure state, no I/O: it is updated from `MetadataResponse` messages and answers lookups, so it
can be tested without a broker. The producer and consumer own the network calls that refresh
it (see `rillet.client.connection.fetch_metadata`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

from rillet.api.v1 import admin_pb2

log = logging.getLogger(__name__)

NO_LEADER = -1


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    """One partition as the cluster last described it."""

    topic: str
    partition: int
    #: Node id of the leader, or -1 when there is none right now.
    leader_id: int
    replicas: tuple[int, ...]


class ClusterMetadata:
    """Leader and partition cache, replaced wholesale or per topic by each update."""

    def __init__(self, bootstrap: Iterable[str] = ()) -> None:
        self._bootstrap = tuple(bootstrap)
        self._brokers: dict[int, str] = {}
        self._topics: dict[str, tuple[PartitionInfo, ...]] = {}
        self.cluster_id = ""
        #: time.monotonic() of the last update; 0.0 before the first.
        self.updated_at = 0.0
        self._stale = True

    @property
    def bootstrap(self) -> tuple[str, ...]:
        return self._bootstrap

    def update(self, response: admin_pb2.MetadataResponse, *, now: float | None = None) -> None:
        """Apply a metadata response; topics it describes replace what we knew of them.

        A response for a subset of topics leaves the other topics cached: the producer asks
        only for the topics it is sending to.
        """
        self._brokers = {b.node_id: b.address for b in response.brokers}
        for tm in response.topics:
            parts = sorted(
                (PartitionInfo(tm.name, p.partition, p.leader_id, tuple(p.replicas))
                 for p in tm.partitions),
                key=lambda p: p.partition)
            self._topics[tm.name] = tuple(parts)
        self.cluster_id = response.cluster_id
        self.updated_at = time.monotonic() if now is None else now
        self._stale = False
        log.debug("metadata: %d brokers, %d topics", len(self._brokers), len(self._topics))

    def forget_topic(self, topic: str) -> None:
        self._topics.pop(topic, None)

    def mark_stale(self) -> None:
        """Record that a leader moved or a node failed; the owner refreshes before reuse."""
        self._stale = True

    @property
    def stale(self) -> bool:
        return self._stale

    @property
    def brokers(self) -> dict[int, str]:
        return dict(self._brokers)

    def topics(self) -> list[str]:
        return sorted(self._topics)

    def partitions(self, topic: str) -> tuple[PartitionInfo, ...] | None:
        """Every partition of `topic`, or None when the topic is not known."""
        return self._topics.get(topic)

    def partition_count(self, topic: str) -> int | None:
        parts = self._topics.get(topic)
        return None if parts is None else len(parts)

    def leader(self, topic: str, partition: int) -> int:
        """Node id of the partition's leader, or -1 when unknown or leaderless."""
        parts = self._topics.get(topic)
        if parts is None or not 0 <= partition < len(parts):
            return NO_LEADER
        return parts[partition].leader_id

    def address(self, node_id: int) -> str | None:
        return self._brokers.get(node_id)

    def leader_address(self, topic: str, partition: int) -> str | None:
        """Where to send requests for a partition.

        Falls back to the first bootstrap address when the leader is unknown or the broker list
        is empty: any node answers any request (it forwards), so this is slower, never wrong.
        """
        node = self.leader(topic, partition)
        addr = self._brokers.get(node) if node != NO_LEADER else None
        if addr:
            return addr
        return self._bootstrap[0] if self._bootstrap else None

    def partitions_by_address(self, topic: str, partitions: Iterable[int]) -> dict[str, list[int]]:
        """Group partitions by the address of their leader, for one stream per node."""
        out: dict[str, list[int]] = {}
        for p in partitions:
            addr = self.leader_address(topic, p)
            if addr is None:
                continue
            out.setdefault(addr, []).append(p)
        return out
