"""One partition replica: the Raft group's state machine and its produce path (on one node as
on many: a lone node's partitions are groups of one replica).

The partition log is the group's Raft log (node/storage/raft_log.py); this module adds what the
log alone does not know:

- the **high watermark**: the record offset after the last APPLIED (so committed) entry. Every
  replica computes it the same way, from the record counts of the entries it applies, so a
  consumer on any replica only ever sees committed data;
- the **producer table** for idempotent producers (decision 0403): per producer id, the last
  ``REMEMBERED_BATCHES`` batches (base sequence, record count, base offset) and the next
  expected sequence. It is built by applying entries, so every replica has it, a restarted node
  rebuilds it by re-applying its log (the core re-delivers the committed log after a restart),
  and a new leader starts with exactly the table its predecessor had for the committed log;
- the **produce path** of the leader: check leadership and the sequence, propose, and answer
  with the batch's base offset once the entry is committed and applied here.

A new leader refuses produce requests (NOT_LEADER, retriable) until it has applied an entry of
its own term (its no-op): before that, it might not yet have applied committed batches of its
predecessor, and its producer table would miss them, so a retried batch could be stored twice.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rillet.batch import parse_header
from rillet.cluster import driver as raft_driver
from rillet.cluster.driver import RaftDriver
from rillet.cluster.raft import Entry, EntryKind, ProposalDroppedError, Role, Snapshot
from rillet.cluster.raft import NotLeaderError as RaftNotLeaderError
from rillet.node.errors import (
    BrokerError,
    DuplicateSequenceError,
    NotLeaderError,
    OutOfOrderSequenceError,
    UnavailableError,
    UnknownTopicError,
)
from rillet.node.storage.log import PartitionLog
from rillet.node.storage.raft_log import NEXT_OFFSET, PartitionRaftLog

log = logging.getLogger(__name__)

REMEMBERED_BATCHES = 5
"""Batches remembered per producer and partition: a producer keeps at most this many batches
of a partition in flight, so any retry it can send is still recognised (Kafka uses 5 too)."""

SEQUENCE_MODULUS = 2**31


def raft_id(broker_id: int) -> int:
    """Raft ids must be positive (0 means "nobody"); broker ids start at 0."""
    return broker_id + 1


def broker_id(raft_node: int) -> int:
    """The broker id of a Raft id; -1 for Raft's "nobody"."""
    return raft_node - 1 if raft_node > 0 else -1


def _seq_add(seq: int, n: int) -> int:
    return (seq + n) % SEQUENCE_MODULUS


def _seq_ahead(a: int, b: int) -> bool:
    """True when sequence ``a`` lies after ``b`` (within half the sequence space)."""
    return 0 < (a - b) % SEQUENCE_MODULUS < SEQUENCE_MODULUS // 2


@dataclass
class ProducerState:
    """What the log says about one producer on one partition."""

    epoch: int
    next_seq: int
    batches: collections.deque[tuple[int, int, int]] = field(
        default_factory=lambda: collections.deque(maxlen=REMEMBERED_BATCHES))

    def find(self, base_seq: int, count: int) -> int | None:
        """The base offset of a remembered batch with this sequence and size, if any."""
        for seq, n, offset in self.batches:
            if seq == base_seq and n == count:
                return offset
        return None


@dataclass
class _InFlight:
    base_seq: int
    count: int
    future: asyncio.Future[int]


class ReplicatedPartition:
    """This node's replica of one partition; the driver's StateMachine for its group.

    Readers use ``log``, ``high_watermark``, ``partition``, ``name`` and ``closed``; the produce
    service calls ``produce``.
    """

    def __init__(self, topic: str, partition: int, group_id: int, rlog: PartitionRaftLog,
                 driver: RaftDriver, *, on_advance: Callable[[], None]) -> None:
        self.topic = topic
        self.partition = partition  # the partition number in its topic (not a Raft index)
        self.group_id = group_id
        self.rlog = rlog
        self.log: PartitionLog = rlog.plog
        self.driver = driver
        self._on_advance = on_advance
        # The record offset after the last applied entry; the high watermark.
        self.next_offset = rlog.plog.log_start_offset
        self.high_watermark = self.next_offset
        self.applied_term = 0
        self.closed = False
        self.producers: dict[int, ProducerState] = {}
        self._in_flight: dict[int, list[_InFlight]] = {}

    @property
    def name(self) -> str:
        return f"{self.topic}-{self.partition}"

    def check_open(self) -> None:
        if self.closed:
            raise UnknownTopicError(f"topic {self.topic!r} was deleted")

    # -- the state machine --------------------------------------------------------------------

    def apply(self, entries: list[Entry]) -> list[int | None]:
        """Committed entries, in order: advance the high watermark, record producers. Each
        entry's result is the base offset of its batch (None for a no-op or a membership
        change): the proposing producer is answered with it."""
        results: list[int | None] = []
        for e in entries:
            self.applied_term = e.term
            if e.kind != EntryKind.NORMAL or not e.data:
                results.append(None)  # a leader's no-op or a membership change: no records
                continue
            h = parse_header(e.data)
            base = self.next_offset
            self.next_offset = base + h.record_count
            results.append(base)
            if h.producer_id >= 0:
                st = self.producers.get(h.producer_id)
                if st is None or st.epoch != h.producer_epoch:
                    st = self.producers[h.producer_id] = ProducerState(h.producer_epoch, 0)
                st.batches.append((h.base_sequence, h.record_count, base))
                st.next_seq = _seq_add(h.base_sequence, h.record_count)
        if self.next_offset != self.high_watermark:
            self.high_watermark = self.next_offset
            self._on_advance()
        return results

    def restore(self, snapshot: Snapshot) -> None:
        """The leader sent its log start: the log restarts at the record offset it carries.
        Producer state of the skipped part is lost; those producers are treated as new."""
        (next_offset,) = NEXT_OFFSET.unpack(snapshot.data)
        self.next_offset = self.high_watermark = next_offset
        self.producers.clear()
        self.applied_term = snapshot.meta.term
        self._on_advance()

    # -- leadership -----------------------------------------------------------------------------

    def leader_id(self) -> int:
        """Broker id of the leader as this replica knows it; -1 when unknown."""
        try:
            leader = self.driver.core(self.group_id).leader
        except Exception:
            return -1
        if leader != self.driver.node_id and self.driver.peer_down(leader):
            return -1  # silent for an election timeout: an election is due, don't send there
        return broker_id(leader)

    def _check_leader(self) -> None:
        core = self.driver.core(self.group_id)
        if core.role != Role.LEADER:
            leader = broker_id(core.leader)
            where = f"node {leader} leads it" if leader >= 0 else "it has no leader right now"
            raise NotLeaderError(
                f"node {broker_id(self.driver.node_id)} does not lead partition {self.name}; "
                f"{where}")
        if self.applied_term != core.term:
            raise NotLeaderError(
                f"node {broker_id(self.driver.node_id)} was just elected leader of partition "
                f"{self.name} and is still applying its predecessor's entries; retry")

    # -- produce --------------------------------------------------------------------------------

    def produce(self, batch: bytes) -> tuple[asyncio.Future[int], int]:
        """Propose one validated batch; returns (future of its base offset, append time ms).

        The future resolves once the entry is committed (a majority fsynced it) and applied
        here. A retried duplicate of an idempotent producer resolves with the original offset
        and is not stored again."""
        self.check_open()
        self._check_leader()
        now_ms = int(time.time() * 1000)
        h = parse_header(batch)
        loop = asyncio.get_running_loop()
        pid = h.producer_id
        if pid >= 0:
            dup = self._check_sequence(pid, h.producer_epoch, h.base_sequence, h.record_count)
            if isinstance(dup, int):
                done: asyncio.Future[int] = loop.create_future()
                done.set_result(dup)
                return done, now_ms
            if dup is not None:
                return dup, now_ms
        try:
            applied = self.driver.propose(self.group_id, batch)
        except RaftNotLeaderError as exc:
            raise NotLeaderError(f"partition {self.name}: {exc}") from exc
        except ProposalDroppedError as exc:
            raise UnavailableError(f"partition {self.name} is overloaded ({exc}); retry") from exc
        except raft_driver.DriverError as exc:
            raise UnavailableError(f"partition {self.name}: {exc}") from exc
        out: asyncio.Future[int] = loop.create_future()
        applied.add_done_callback(lambda f: self._settle(f, out))
        if pid >= 0:
            self._in_flight.setdefault(pid, []).append(
                _InFlight(h.base_sequence, h.record_count, out))
            out.add_done_callback(lambda f: self._forget(pid, f))
        return out, now_ms

    def _check_sequence(self, pid: int, epoch: int, base_seq: int,
                        count: int) -> int | asyncio.Future[int] | None:
        """None: append it. An int: a stored duplicate's base offset. A future: the same batch
        is in flight; share its answer. Raises for a gap or an old forgotten batch."""
        flights = [f for f in self._in_flight.get(pid, ()) if not f.future.done()]
        for f in flights:
            if f.base_seq == base_seq and f.count == count:
                return f.future
        st = self.producers.get(pid)
        if st is not None and st.epoch == epoch:
            offset = st.find(base_seq, count)
            if offset is not None:
                return offset
        if flights:
            expected: int | None = _seq_add(flights[-1].base_seq, flights[-1].count)
        elif st is not None and st.epoch == epoch:
            expected = st.next_seq
        else:
            expected = None  # a producer this partition does not know: any start is fine
        if expected is None or base_seq == expected:
            return None
        if _seq_ahead(base_seq, expected):
            raise OutOfOrderSequenceError(
                f"producer {pid} sent sequence {base_seq} to partition {self.name}, expected "
                f"{expected}: an earlier batch is missing; resend in order")
        raise DuplicateSequenceError(
            f"producer {pid} sent sequence {base_seq} to partition {self.name}, which was "
            f"stored long ago (expected {expected}); not stored again")

    def _forget(self, pid: int, fut: asyncio.Future[int]) -> None:
        flights = self._in_flight.get(pid)
        if flights is None:
            return
        flights[:] = [f for f in flights if f.future is not fut]
        if not flights:
            del self._in_flight[pid]

    def _settle(self, applied: asyncio.Future[int], out: asyncio.Future[int]) -> None:
        """Answer the producer: the base offset apply() gave the batch, or what failed."""
        if out.done():
            return
        if applied.cancelled():
            out.cancel()
            return
        exc = applied.exception()
        if exc is not None:
            out.set_exception(_broker_error(self.name, exc))
            return
        out.set_result(applied.result())

    # -- closing --------------------------------------------------------------------------------

    def close(self, reason: BaseException) -> None:
        """Fail the producers waiting here; the log is closed by the owner."""
        if self.closed:
            return
        self.closed = True
        for flights in self._in_flight.values():
            for f in flights:
                if not f.future.done():
                    f.future.set_exception(reason)
        self._in_flight.clear()
        self._on_advance()


def _broker_error(name: str, exc: BaseException) -> BaseException:
    """What a failed proposal means to the producer: retriable, and, when leadership moved,
    a hint to refresh metadata. The outcome may be unknown: idempotent producers resend."""
    if isinstance(exc, BrokerError):
        return exc
    if isinstance(exc, (raft_driver.LeadershipLostError, raft_driver.EntryOverwrittenError)):
        return NotLeaderError(f"partition {name}: leadership moved before the batch was "
                              f"committed ({exc}); resend to the new leader")
    return UnavailableError(f"partition {name}: {exc}")
