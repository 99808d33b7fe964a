"""A few RaftDrivers in one event loop, wired by an InMemoryNetwork, with in-memory logs.

``Cluster(n_nodes, n_groups)`` builds node ids 1..n and groups 1..G (each group over every
node); ``await cluster.wait_for(pred, what)`` polls a condition under a deadline and fails
with ``what`` when it does not hold in time. Nothing here sleeps and hopes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from rillet.cluster.driver import CountingSyncer, DurableLog, RaftDriver
from rillet.cluster.raft import Config, ConfState, Entry, EntryKind, MemoryStorage, Role, Snapshot
from rillet.cluster.transport import InMemoryNetwork
from tests.waiting import wait_for

DEADLINE_S = 10.0
TICK_MS = 10.0
RAFT = Config(id=1, election_ticks=10, heartbeat_ticks=1)


class Machine:
    """A state machine that records what it was given."""

    def __init__(self) -> None:
        self.applied: list[Entry] = []
        self.restored: list[Snapshot] = []

    def apply(self, entries: list[Entry]) -> list[int]:
        self.applied.extend(entries)
        return [e.index for e in entries]  # each proposal resolves with its index

    def restore(self, snapshot: Snapshot) -> None:
        self.restored.append(snapshot)

    def data(self) -> list[bytes]:
        """Application data applied so far (leader no-ops left out)."""
        return [e.data for e in self.applied if e.kind == EntryKind.NORMAL and e.data]


class GatedSyncer(CountingSyncer):
    """Counts syncs, records how many logs each covered, and can be held shut."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.waiting = asyncio.Event()

    async def sync(self, logs: Sequence[DurableLog]) -> None:
        await super().sync(logs)
        self.sizes.append(len(logs))
        if not self.gate.is_set():
            self.waiting.set()
            await self.gate.wait()
            self.waiting.clear()


class Node:
    def __init__(self, node_id: int, network: InMemoryNetwork, groups: Sequence[int],
                 voters: frozenset[int], raft: Config = RAFT) -> None:
        self.id = node_id
        self.raft = raft
        self.network = network
        self.syncer = GatedSyncer()
        self.storages = {g: MemoryStorage(ConfState(voters)) for g in groups}
        self.machines = {g: Machine() for g in groups}
        self.driver = self._new_driver()

    def _new_driver(self) -> RaftDriver:
        driver = RaftDriver(self.id, self.network.transport(self.id), self.syncer,
                            raft_config=self.raft, tick_ms=TICK_MS, seed=self.id)
        for g, storage in self.storages.items():
            driver.add_group(g, storage, self.machines[g])
        self.network.register(self.id, driver.receive)
        return driver

    def start(self) -> None:
        self.driver.start()

    async def crash(self) -> None:
        """Stop the driver; the storages (the 'disk') survive, the machines restart empty."""
        self.network.unregister(self.id)
        await self.driver.stop()

    def restart(self) -> None:
        self.machines = {g: Machine() for g in self.storages}
        self.driver = self._new_driver()
        self.driver.start()


class Cluster:
    def __init__(self, n_nodes: int = 3, n_groups: int = 1, raft: Config = RAFT) -> None:
        self.network = InMemoryNetwork()
        self.groups = list(range(1, n_groups + 1))
        ids = frozenset(range(1, n_nodes + 1))
        self.nodes = {i: Node(i, self.network, self.groups, ids, raft) for i in sorted(ids)}

    def start(self) -> None:
        for node in self.nodes.values():
            node.start()

    async def stop(self) -> None:
        for node in self.nodes.values():
            await node.driver.stop()

    def driver(self, node_id: int) -> RaftDriver:
        return self.nodes[node_id].driver

    def leader(self, group: int, among: Sequence[int] | None = None) -> int:
        """The node that leads ``group`` as every node in ``among`` sees it, or 0."""
        among = list(among or self.nodes)
        leaders = set()
        for i in among:
            core = self.driver(i).core(group)
            leaders.add(core.leader)
        if len(leaders) != 1:
            return 0
        (lead,) = leaders
        if lead not in among or self.driver(lead).core(group).role != Role.LEADER:
            return 0
        return lead

    async def wait_for(self, pred: Callable[[], bool], what: str,
                       timeout_s: float = DEADLINE_S) -> None:
        await wait_for(pred, what, timeout_s)

    async def wait_leaders(self, among: Sequence[int] | None = None) -> dict[int, int]:
        await self.wait_for(lambda: all(self.leader(g, among) for g in self.groups),
                            f"a leader in every group among {among or list(self.nodes)}")
        return {g: self.leader(g, among) for g in self.groups}
