"""Where committed offsets and group generations live: one protocol, two stores.

- ``FileOffsetStore`` (single node): one JSON file under ``<data_dir>/groups``, replaced
  atomically (tmp, fsync, rename, fsync dir) before a commit is answered.
- ``MetadataOffsetStore`` (cluster): commands of the metadata Raft group
  (``CommitGroupOffsets``, ``BumpGroupGeneration``, ``DeleteGroup``), so offsets survive the
  loss of any minority of nodes; reads come from this node's applied metadata state.

Both keep per group the last generation the coordinator handed out; a new coordinator (after a
restart or a leader change) continues from it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from rillet.cluster import metadata as md
from rillet.node.errors import UnavailableError
from rillet.node.groups.errors import UnknownGroupError
from rillet.node.storage.atomic import write_atomic

log = logging.getLogger(__name__)

TP = tuple[str, int]
FILE_NAME = "offsets.json"
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


class FileOffsetStore:
    """Single-node store: the whole state in one small file, rewritten per change."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / FILE_NAME
        self._generations: dict[str, int] = {}
        self._offsets: dict[str, dict[TP, Committed]] = {}
        self._lock = asyncio.Lock()

    def load(self) -> None:
        """Read the file (if any); leftovers of an interrupted write are ignored."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            return
        doc = json.loads(self.path.read_text())
        for name, g in doc["groups"].items():
            self._generations[name] = int(g["generation"])
            self._offsets[name] = {(t, int(p)): Committed(int(o), str(m), int(ts))
                                   for t, p, o, m, ts in g["offsets"]}

    def _encode(self, generations: dict[str, int],
                offsets: dict[str, dict[TP, Committed]]) -> bytes:
        names = sorted(set(generations) | set(offsets))
        doc = {"groups": {
            name: {"generation": generations.get(name, 0),
                   "offsets": [[t, p, c.offset, c.metadata, c.commit_time_ms]
                               for (t, p), c in sorted(offsets.get(name, {}).items())]}
            for name in names}}
        return json.dumps(doc, sort_keys=True).encode()

    async def _write(self, generations: dict[str, int],
                     offsets: dict[str, dict[TP, Committed]]) -> None:
        data = self._encode(generations, offsets)
        await asyncio.to_thread(write_atomic, self.path, data)
        self._generations, self._offsets = generations, offsets

    def generation(self, group: str) -> int:
        return self._generations.get(group, 0)

    def offsets(self, group: str) -> dict[TP, Committed]:
        return dict(self._offsets.get(group, {}))

    def groups(self) -> list[str]:
        return sorted(set(self._generations) | set(self._offsets))

    async def store_generation(self, group: str, generation: int) -> None:
        async with self._lock:
            if generation <= self._generations.get(group, 0):
                return
            gens = dict(self._generations)
            gens[group] = generation
            await self._write(gens, self._offsets)

    async def commit(self, group: str, generation: int, offsets: Mapping[TP, tuple[int, str]],
                     commit_time_ms: int) -> None:
        async with self._lock:
            table = {name: dict(v) for name, v in self._offsets.items()}
            mine = table.setdefault(group, {})
            for tp, (offset, meta) in offsets.items():
                mine[tp] = Committed(offset, meta, commit_time_ms)
            gens = dict(self._generations)
            gens.setdefault(group, max(generation, 0))
            await self._write(gens, table)

    async def delete(self, group: str) -> None:
        async with self._lock:
            if group not in self._generations and group not in self._offsets:
                raise UnknownGroupError(f"unknown group {group!r}")
            gens = {k: v for k, v in self._generations.items() if k != group}
            table = {k: v for k, v in self._offsets.items() if k != group}
            await self._write(gens, table)


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
