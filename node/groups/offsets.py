"""Where committed offsets and group generations live: the protocol the coordinator uses, and
``MetadataOffsetStore``: commands of the metadata Raft group (``CommitGroupOffsets``,
``BumpGroupGeneration``, ``DeleteGroup``), so offsets survive the loss of any minority of
nodes; reads come from this node's applied metadata state.

It keeps per group the last generation the coordinator handed out; a new coordinator (after a
restart or a leader change) continues from it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from rillet.cluster import metadata as md
from rillet.node.errors import UnavailableError

log = logging.getLogger(__name__)

TP = tuple[str, int]
PROPOSE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Committed:
    offset: int
    metadata: str
    commit_time_ms: int


class OffsetStore(Protocol):
    """What the coordinator and the servicers need from durable group storage."""

    def generation(self, group: str) -> int:
        """Last stored generation of ``group`` (0 when none)."""

    def offsets(self, group: str) -> dict[TP, Committed]:
        """The group's committed offsets (empty when none)."""

    def groups(self) -> list[str]:
        """Every group with stored state, sorted."""

    async def store_generation(self, group: str, generation: int) -> None:
        """Durably record that ``generation`` was handed out."""

    async def commit(self, group: str, generation: int, offsets: Mapping[TP, tuple[int, str]],
                     commit_time_ms: int) -> None:
        """Durably store offsets (all or none) before returning."""

    async def delete(self, group: str) -> None:
        """Forget the group (UnknownGroupError if there is nothing to forget)."""


class MetadataProposer(Protocol):
    """The part of ClusterNode this store uses."""

    @property
    def metadata_state(self) -> md.MetadataState: ...

    async def propose_metadata(self, command: md.Command) -> md.Accepted: ...


class MetadataOffsetStore:
    """Cluster store: every change is a metadata Raft command, proposed on the metadata
    leader (the coordinator) and answered once a majority has it. A proposal that a cut-off
    leader cannot commit fails after ``timeout_s`` (the coordinator's lock is held meanwhile,
    so it must not wait forever)."""

    def __init__(self, cluster: MetadataProposer, *, timeout_s: float = PROPOSE_TIMEOUT_S
                 ) -> None:
        self.cluster = cluster
        self.timeout_s = timeout_s

    async def _propose(self, command: md.Command) -> None:
        try:
            await asyncio.wait_for(self.cluster.propose_metadata(command), self.timeout_s)
        except TimeoutError:
            raise UnavailableError(
                f"the metadata group did not commit {type(command).__name__} within "
                f"{self.timeout_s:.0f} s; retry") from None

    def generation(self, group: str) -> int:
        info = self.cluster.metadata_state.group(group)
        return info.generation if info is not None else 0

    def offsets(self, group: str) -> dict[TP, Committed]:
        info = self.cluster.metadata_state.group(group)
        if info is None:
            return {}
        return {tp: Committed(c.offset, c.metadata, c.commit_time_ms)
                for tp, c in info.offsets.items()}

    def groups(self) -> list[str]:
        return self.cluster.metadata_state.groups()

    async def store_generation(self, group: str, generation: int) -> None:
        if generation > self.generation(group):
            await self._propose(md.BumpGroupGeneration(group, generation))

    async def commit(self, group: str, generation: int, offsets: Mapping[TP, tuple[int, str]],
                     commit_time_ms: int) -> None:
        await self._propose(md.CommitGroupOffsets(
            group, generation,
            {tp: md.OffsetAndMetadata(o, m) for tp, (o, m) in offsets.items()},
            commit_time_ms))

    async def delete(self, group: str) -> None:
        await self._propose(md.DeleteGroup(group))
