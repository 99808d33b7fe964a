"""ReplicatedPartition on three RaftDrivers over an in-memory network, with real partition logs
and hard-state journals on disk: the leader answers produce with base offsets once committed,
every replica's high watermark follows the commit, and the idempotent producer's duplicates are
answered with the original offset: in flight, after apply, after a leader change and after a
restart of every node (the producer table is rebuilt from the log)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from rillet import batch
from rillet.cluster.driver import RaftDriver
from rillet.cluster.raft import Config, ConfState, Role
from rillet.cluster.rounds import Round
from rillet.cluster.transport import InMemoryNetwork
from rillet.node.errors import DuplicateSequenceError, NotLeaderError, OutOfOrderSequenceError
from rillet.node.replica import ReplicatedPartition
from rillet.node.storage.hardstate import HardStateJournal
from rillet.node.storage.log import LogConfig
from rillet.node.storage.raft_log import PartitionRaftLog, PartitionRaftLogSyncer
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(60)

NODES = (1, 2, 3)
GROUP = 7
# Elections after 200-400 ms of silence: loaded CI machines stall the loop for tens of ms.
RAFT = Config(id=1, election_ticks=20, heartbeat_ticks=1)
LOG = LogConfig(segment_bytes=4096, index_interval_bytes=256)


def make_batch(values: list[bytes], pid: int = -1, seq: int = -1) -> bytes:
    return batch.encode(values, timestamps_ms=[1_000] * len(values), producer_id=pid,
                        producer_epoch=0 if pid >= 0 else -1, base_sequence=seq)


class Replicas:
    """One partition's group on nodes 1-3; `stop()` then `start()` reopens every log."""

    def __init__(self, root: Path, log_config: LogConfig = LOG,
                 round_type: type[Round] = Round) -> None:
        self.root = root
        self.log_config = log_config
        self.round_type = round_type
        self.network = InMemoryNetwork()
        self.drivers: dict[int, RaftDriver] = {}
        self.parts: dict[int, ReplicatedPartition] = {}
        self.journals: dict[int, HardStateJournal] = {}
        self.advances = 0

    def start(self) -> None:
        for n in NODES:
            journal = self.journals[n] = HardStateJournal(self.root / f"hardstate-{n}")
            driver = RaftDriver(n, self.network.transport(n), PartitionRaftLogSyncer(journal),
                                raft_config=RAFT, tick_ms=10.0, seed=n,
                                round_type=self.round_type)
            rlog = PartitionRaftLog.open(self.root / f"n{n}", self.log_config,
                                         conf=ConfState(frozenset(NODES)), journal=journal,
                                         group=GROUP)
            part = ReplicatedPartition("t", 0, GROUP, rlog, driver, on_advance=self._advanced)
            driver.start()
            driver.add_group(GROUP, rlog, part)
            self.network.register(n, driver.receive)
            self.drivers[n] = driver
            self.parts[n] = part

    def _advanced(self) -> None:
        self.advances += 1

    async def stop(self) -> None:
        for n, driver in self.drivers.items():
            await driver.stop()
            self.network.unregister(n)
            self.parts[n].rlog.close()
            self.journals[n].close()
        self.drivers.clear()
        self.parts.clear()

    async def produce_retrying(self, data: bytes, attempts: int = 20) -> int:
        """Produce on whichever node leads, retrying NOT_LEADER as a producer does."""
        for _ in range(attempts):
            leader = await self.leader()
            try:
                return await self.parts[leader].produce(data)[0]
            except NotLeaderError:
                continue
        raise AssertionError(f"no leader took the batch in {attempts} attempts")

    async def leader(self) -> int:
        def find() -> int | None:
            for n, d in self.drivers.items():
                core = d.core(GROUP)
                if core.role == Role.LEADER and self.parts[n].applied_term == core.term:
                    return n
            return None
        await wait_for(lambda: find() is not None, "a leader that applied its no-op")
        found = find()
        assert found is not None
        return found


@pytest.fixture
async def replicas(tmp_path: Path) -> AsyncIterator[Replicas]:
    r = Replicas(tmp_path)
    r.start()
    yield r
    await r.stop()


def stored_values(part: ReplicatedPartition) -> list[bytes]:
    data = part.log.read(part.log.log_start_offset, 1 << 30, upper=part.high_watermark)
    return [rec.value for h, mv in batch.iter_batches(data) if not h.is_control
            for rec in batch.decode(bytes(mv))]


async def test_leader_answers_offsets_and_every_replica_reaches_the_commit(replicas) -> None:
    leader = await replicas.leader()
    part = replicas.parts[leader]
    futures = [part.produce(make_batch([b"a", b"b"]))[0], part.produce(make_batch([b"c"]))[0]]
    assert await asyncio.gather(*futures) == [0, 2]
    await wait_for(lambda: all(p.high_watermark == 3 for p in replicas.parts.values()),
                   "every replica's high watermark at 3")
    for p in replicas.parts.values():
        assert stored_values(p) == [b"a", b"b", b"c"]


async def test_a_follower_refuses_produce_and_names_the_leader(replicas) -> None:
    leader = await replicas.leader()
    follower = next(n for n in NODES if n != leader)
    await wait_for(lambda: replicas.parts[follower].leader_id() == leader - 1,
                   "the follower to know its leader")
    with pytest.raises(NotLeaderError, match=f"node {leader - 1} leads it"):
        replicas.parts[follower].produce(make_batch([b"x"]))


async def test_idempotent_duplicates_gaps_and_old_sequences(replicas) -> None:
    leader = await replicas.leader()
    part = replicas.parts[leader]
    first = make_batch([b"1", b"2"], pid=5, seq=0)
    f1, _ = part.produce(first)
    f1_again, _ = part.produce(first)  # in flight: shares the original's answer
    assert await f1 == 0 and await f1_again == 0
    again, _ = part.produce(first)  # applied: answered from the producer table
    assert await again == 0
    with pytest.raises(OutOfOrderSequenceError, match="expected 2"):
        part.produce(make_batch([b"5"], pid=5, seq=4))
    for seq in range(2, 2 + 6):  # push seq 0 out of the five remembered batches
        fut, _ = part.produce(make_batch([str(seq).encode()], pid=5, seq=seq))
        await fut
    with pytest.raises(DuplicateSequenceError):
        part.produce(first)
    # A producer the partition has not seen may start anywhere (its history was retained away).
    fut, _ = part.produce(make_batch([b"new"], pid=9, seq=1234))
    assert await fut == 8
    await wait_for(lambda: part.high_watermark == 9, "hw at 9")
    assert stored_values(part) == [b"1", b"2", b"2", b"3", b"4", b"5", b"6", b"7", b"new"]


async def test_dedup_survives_a_leader_change_and_a_restart_of_every_node(replicas) -> None:
    leader = await replicas.leader()
    b0 = make_batch([b"p", b"q"], pid=3, seq=0)
    b1 = make_batch([b"r"], pid=3, seq=2)
    assert await replicas.parts[leader].produce(b0)[0] == 0
    assert await replicas.parts[leader].produce(b1)[0] == 2
    target = next(n for n in NODES if n != leader)
    await wait_for(lambda: replicas.parts[target].high_watermark == 3, "the target caught up")
    replicas.drivers[leader].transfer_leader(GROUP, target)
    await wait_for(lambda: replicas.drivers[target].core(GROUP).role == Role.LEADER,
                   "the transfer to complete")
    new_leader = await replicas.leader()
    assert new_leader == target
    # The producer retries b1 on the new leader (say its answer was lost): not stored again.
    assert await replicas.parts[new_leader].produce(b1)[0] == 2
    await replicas.stop()
    replicas.start()
    leader = await replicas.leader()
    part = replicas.parts[leader]
    assert await part.produce(b1)[0] == 2
    assert await part.produce(make_batch([b"s"], pid=3, seq=3))[0] == 3
    await wait_for(lambda: all(p.high_watermark == 4 for p in replicas.parts.values()),
                   "every replica at 4 after the restart")
    assert stored_values(part) == [b"p", b"q", b"r", b"s"]


async def test_a_follower_behind_the_log_start_restarts_from_it(tmp_path: Path) -> None:
    """Retention on the leader removed entries a cut-off follower still needs: the leader
    sends its log start, the follower restarts its log there and catches up; its log then
    holds exactly the leader's records from that start on."""
    replicas = Replicas(tmp_path, LogConfig(segment_bytes=1024, retention_bytes=2048,
                                            index_interval_bytes=128))
    replicas.start()
    try:
        leader = await replicas.leader()
        lagging = next(n for n in NODES if n != leader)
        replicas.network.isolate(lagging)
        values = [f"value-{i:04d}".encode() * 8 for i in range(60)]
        for seq, v in enumerate(values):
            # Idempotent, retried through a leader change (a loaded machine can depose the
            # leader that hears from one follower only): stored exactly once either way.
            await replicas.produce_retrying(make_batch([v], pid=1, seq=seq))
        leader = await replicas.leader()
        part = replicas.parts[leader]
        others = [n for n in NODES if n != lagging]
        await wait_for(lambda: all(replicas.parts[n].high_watermark == 60 for n in others),
                       "the two connected replicas at 60")
        for n in others:
            assert replicas.parts[n].rlog.enforce_retention() > 0
        start = part.log.log_start_offset
        assert start > 0 and replicas.parts[lagging].high_watermark < start
        replicas.network.heal_all()
        behind = replicas.parts[lagging]
        await wait_for(lambda: behind.high_watermark == 60, "the lagging replica at 60",
                       timeout_s=20)
        assert behind.log.log_start_offset == start
        assert stored_values(behind) == values[start:]
        # It can lead: hand it the leadership and produce through it.
        replicas.drivers[leader].transfer_leader(GROUP, lagging)
        await wait_for(lambda: replicas.drivers[lagging].core(GROUP).role == Role.LEADER,
                       "the caught-up replica to lead")
        assert await replicas.leader() == lagging
        assert await behind.produce(make_batch([b"after"]))[0] == 60
    finally:
        await replicas.stop()
