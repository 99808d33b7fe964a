"""Three RaftDrivers in one process, each behind its own grpc.aio server on 127.0.0.1,
127.0.0.2 and 127.0.0.3, talking through PeerClient/PeerService: 20 groups elect and commit;
with one node down the others keep committing; restarted, it catches up from its kept log.

Loopback only. Every wait polls a condition under a deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
import pytest

from rillet.cluster.driver import CountingSyncer, RaftDriver
from rillet.cluster.raft import Config, ConfState, Entry, EntryKind, MemoryStorage, Role, Snapshot
from rillet.internal.v1 import peer_pb2, peer_pb2_grpc
from rillet.node.peer_client import PeerClient
from rillet.node.services.peer import PeerService, peer_server_options
from tests import waiting

pytestmark = pytest.mark.timeout(90)

GROUPS = list(range(1, 21))
NODES = (1, 2, 3)
RAFT = Config(id=1, election_ticks=15, heartbeat_ticks=1)
TICK_MS = 20.0
DEADLINE_S = 20.0


class Machine:
    def __init__(self) -> None:
        self.applied: list[Entry] = []

    def apply(self, entries: list[Entry]) -> list[int]:
        self.applied.extend(entries)
        return [e.index for e in entries]  # each proposal resolves with its index

    def restore(self, snapshot: Snapshot) -> None:
        raise AssertionError("no snapshot expected")

    def data(self) -> list[bytes]:
        return [e.data for e in self.applied if e.kind == EntryKind.NORMAL and e.data]


class GrpcNode:
    """A driver + PeerClient + grpc.aio server; stop() keeps the storages (the disk)."""

    def __init__(self, node_id: int) -> None:
        self.id = node_id
        self.host = f"127.0.0.{node_id}"
        self.port = 0
        voters = ConfState(frozenset(NODES))
        self.storages = {g: MemoryStorage(voters) for g in GROUPS}
        self.machines: dict[int, Machine] = {}
        self.driver: RaftDriver | None = None
        self.server: grpc.aio.Server | None = None
        self.client: PeerClient | None = None

    def bind(self) -> None:
        """Pick a free port on this node's own loopback address (kept across restarts)."""
        server = grpc.aio.server(options=peer_server_options())
        self.port = server.add_insecure_port(f"{self.host}:0")
        assert self.port, f"no free port on {self.host}"
        self.server = server

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self, peers: dict[int, str]) -> None:
        self.machines = {g: Machine() for g in GROUPS}
        self.client = PeerClient(self.id, peers, backoff_max_s=0.5)
        self.driver = RaftDriver(self.id, self.client, CountingSyncer(), raft_config=RAFT,
                                 tick_ms=TICK_MS, seed=self.id)
        for g in GROUPS:
            self.driver.add_group(g, self.storages[g], self.machines[g])
        if self.server is None:
            self.server = grpc.aio.server(options=peer_server_options())
            port = self.server.add_insecure_port(self.address)
            assert port == self.port, f"could not rebind {self.address}"
        peer_pb2_grpc.add_PeerServicer_to_server(  # type: ignore[no-untyped-call]
            PeerService(self.id, self.driver.receive), self.server)
        await self.server.start()
        self.driver.start()
        self.client.connect()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)
            self.server = None
        if self.driver is not None:
            await self.driver.stop()  # closes the PeerClient


async def wait_for(pred: Callable[[], bool], what: str, timeout_s: float = DEADLINE_S) -> None:
    await waiting.wait_for(pred, what, timeout_s, interval_s=0.02)


def leader(nodes: dict[int, GrpcNode], group: int, among: tuple[int, ...]) -> int:
    seen = set()
    for i in among:
        driver = nodes[i].driver
        assert driver is not None
        seen.add(driver.core(group).leader)
    if len(seen) != 1:
        return 0
    (lead,) = seen
    ok = lead in among and nodes[lead].driver is not None and \
        nodes[lead].driver.core(group).role == Role.LEADER
    return lead if ok else 0


async def commit_everywhere(nodes: dict[int, GrpcNode], among: tuple[int, ...],
                            value: bytes) -> None:
    await wait_for(lambda: all(leader(nodes, g, among) for g in GROUPS),
                   f"a leader for all {len(GROUPS)} groups among nodes {among}")
    futures = []
    for g in GROUPS:
        lead = leader(nodes, g, among)
        driver = nodes[lead].driver
        assert driver is not None
        futures.append(driver.propose(g, value))
    indexes = await asyncio.wait_for(asyncio.gather(*futures), DEADLINE_S)
    assert all(i > 0 for i in indexes)
    await wait_for(lambda: all(value in nodes[i].machines[g].data()
                               for i in among for g in GROUPS),
                   f"nodes {among} to apply {value!r} in every group")


async def test_three_nodes_commit_survive_a_stop_and_catch_up() -> None:
    nodes = {i: GrpcNode(i) for i in NODES}
    for node in nodes.values():
        node.bind()
    peers = {i: n.address for i, n in nodes.items()}
    try:
        for node in nodes.values():
            await node.start(peers)
        await commit_everywhere(nodes, NODES, b"all-up")

        await nodes[3].stop()
        await commit_everywhere(nodes, (1, 2), b"node-3-down")
        assert all(b"node-3-down" not in n.data() for n in nodes[3].machines.values())

        await nodes[3].start(peers)
        await wait_for(lambda: all(nodes[3].machines[g].data() == [b"all-up", b"node-3-down"]
                                   for g in GROUPS),
                       "the restarted node to re-apply its log and catch up")
        await commit_everywhere(nodes, NODES, b"back")
        for g in GROUPS:
            logs = {tuple((e.index, e.term) for e in nodes[i].machines[g].applied)
                    for i in (1, 2)}
            assert len(logs) == 1, f"group {g}: nodes 1 and 2 applied different logs"
        # All groups' traffic shares one stream per ordered pair: far fewer stream messages
        # than Raft messages.
        d1 = nodes[1].driver
        c1 = nodes[1].client
        assert d1 is not None and c1 is not None
        batches = sum(s[0] for s in c1.link_stats().values())
        assert 0 < batches < d1.stats.messages_out
    finally:
        for node in nodes.values():
            await node.stop()


async def test_a_stream_meant_for_another_node_is_refused() -> None:
    server = grpc.aio.server(options=peer_server_options())
    got: list[tuple[int, list[tuple[int, bytes]]]] = []
    peer_pb2_grpc.add_PeerServicer_to_server(  # type: ignore[no-untyped-call]
        PeerService(1, lambda frm, msgs: got.append((frm, msgs))), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = peer_pb2_grpc.PeerStub(channel)  # type: ignore[no-untyped-call]
            ok = peer_pb2.PeerBatch(from_node=2, to_node=1, groups=[
                peer_pb2.GroupMessages(group_id=7, messages=[b"a", b"b"])])
            wrong = peer_pb2.PeerBatch(from_node=2, to_node=5)
            call = stub.Exchange(iter([ok, wrong]))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in call:
                    pass
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "not node 5" in (info.value.details() or "")
        assert got == [(2, [(7, b"a"), (7, b"b")])]
    finally:
        await server.stop(0)
