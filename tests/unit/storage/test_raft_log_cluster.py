"""The real Raft core and RaftDriver running on PartitionRaftLogs: 3 nodes x 3 groups.

Elect, commit proposals of real record batches, restart one node from its directories, let it
catch up; then every node's partition log holds identical bytes for the committed prefix and a
consumer's decode of it skips the control batches and yields the records in order.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from rillet import batch
from rillet.cluster.driver import RaftDriver
from rillet.cluster.raft import Config, ConfState, Entry, Role, Snapshot
from rillet.cluster.transport import InMemoryNetwork
from rillet.node.storage.log import LogConfig
from rillet.node.storage.raft_log import PartitionRaftLog, PartitionRaftLogSyncer
from tests.waiting import wait_for

NODES = (1, 2, 3)
GROUPS = (1, 2, 3)
CONF = ConfState(frozenset(NODES))
RAFT = Config(id=1, election_ticks=10, heartbeat_ticks=1)
LOG = LogConfig(segment_bytes=2000, index_interval_bytes=200)


class Applied:
    def __init__(self) -> None:
        self.entries: list[Entry] = []

    def apply(self, entries: list[Entry]) -> list[int]:
        self.entries.extend(entries)
        return [e.index for e in entries]  # each proposal resolves with its index

    def restore(self, snapshot: Snapshot) -> None:
        pass


class Node:
    def __init__(self, node_id: int, root: Path, network: InMemoryNetwork) -> None:
        self.id = node_id
        self.root = root
        self.network = network
        self.logs: dict[int, PartitionRaftLog] = {}
        self.driver = self._start()

    def _start(self) -> RaftDriver:
        driver = RaftDriver(self.id, self.network.transport(self.id), PartitionRaftLogSyncer(),
                            raft_config=RAFT, tick_ms=10, seed=self.id)
        for g in GROUPS:
            self.logs[g] = PartitionRaftLog.open(self.root / f"n{self.id}" / f"p{g}", LOG,
                                                 conf=CONF)
            driver.add_group(g, self.logs[g], Applied())
        self.network.register(self.id, driver.receive)
        driver.start()
        return driver

    async def stop(self) -> None:
        await self.driver.stop()
        self.network.unregister(self.id)
        for lg in self.logs.values():
            lg.close()

    async def restart(self) -> None:
        await self.stop()
        self.driver = self._start()


def leader_of(nodes: dict[int, Node], g: int) -> Node | None:
    for n in nodes.values():
        if n.driver.running and n.driver.core(g).role == Role.LEADER:
            return n
    return None


def records(rlog: PartitionRaftLog, upto_offset: int) -> list[bytes]:
    buf = rlog.plog.read(0, 1 << 30)
    return [r.value for r in batch.decode_range(buf, 0, upto_offset)]


async def test_three_nodes_replicate_identical_partition_logs(tmp_path: Path) -> None:
    network = InMemoryNetwork()
    nodes = {i: Node(i, tmp_path, network) for i in NODES}
    try:
        for g in GROUPS:
            nodes[1 + g % 3].driver.campaign(g)
        await wait_for(lambda: all(leader_of(nodes, g) for g in GROUPS), "leaders elected")
        sent: dict[int, list[bytes]] = {g: [] for g in GROUPS}

        async def produce(rounds: int) -> None:
            for r in range(rounds):
                await wait_for(lambda: all(leader_of(nodes, g) for g in GROUPS), "leaders")
                futs = []
                for g in GROUPS:
                    leader = leader_of(nodes, g)
                    assert leader is not None
                    values = [b"g%d-r%d-%d" % (g, r, k) for k in range(1 + r % 4)]
                    data = batch.encode(values, timestamps_ms=[1000 + r] * len(values))
                    futs.append(leader.driver.propose(g, data))
                    sent[g].extend(values)
                await asyncio.gather(*futs)

        await produce(15)
        # Restart a follower of group 1 from disk; traffic continues meanwhile.
        lead1 = leader_of(nodes, 1)
        assert lead1 is not None
        victim = nodes[next(i for i in NODES if i != lead1.id)]
        await victim.stop()
        await produce(10)
        victim.driver = victim._start()
        await produce(5)

        for g in GROUPS:
            leader = leader_of(nodes, g)
            assert leader is not None
            commit = leader.driver.core(g).commit_index
            await wait_for(lambda g=g, c=commit: all(
                n.driver.core(g).commit_index >= c and n.logs[g].last_index() >= c
                for n in nodes.values()), f"group {g} caught up to {commit}")
            # Identical stored bytes (control batches included) for the committed prefix.
            lead_log = leader.logs[g]
            prefix = lead_log.plog.read_raft(1, commit + 1, None)
            assert len(prefix) == commit
            for n in nodes.values():
                assert n.logs[g].plog.read_raft(1, commit + 1, None) == prefix
            headers = [batch.parse_header(b) for b in prefix]
            assert [h.raft_index for h in headers] == list(range(1, commit + 1))
            assert any(h.is_control for h in headers)  # the leaders' no-ops are in the log
            # Consumers see exactly the produced records, in order, no control batches.
            end = lead_log.plog.log_end_offset
            for n in nodes.values():
                assert records(n.logs[g], end) == sent[g]
    finally:
        for n in nodes.values():
            if n.driver.running:
                await n.stop()
