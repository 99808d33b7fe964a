"""Compaction against an oracle: the list of every Raft entry and record ever appended.

A hypothesis state machine drives a PartitionRaftLog of a compact topic (small segments) with
keyed records, tombstones, keyless records and no-op entries, conflicting-suffix truncation
above the commit index, commits, syncs, a moving clock, compaction passes (some crashed at
one of the swap steps), clean reopens, and crashes that drop every unsynced byte. After every
step it checks what a compacted topic promises:
- every batch keeps its Raft index, term, base offset and offset span;
- offsets never change: every record read is the one the oracle holds at that offset, and
  reads never return an offset that was removed (offsets strictly increase, nothing new);
- the latest record of every key is readable, except a tombstone older than
  delete.retention.ms at the time of a pass; keyless records always stay;
- a record is gone only if a later record has its key, or it is such a tombstone;
- nothing above the commit index is ever rewritten.
"""

from __future__ import annotations

import itertools
import os
import random
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from rillet import batch
from rillet.cluster.raft import ConfState, Entry, EntryKind, HardState
from rillet.node.storage.compactor import STEPS
from rillet.node.storage.log import CLEANUP_COMPACT, LogConfig
from rillet.node.storage.raft_log import PartitionRaftLog

from .helpers import FakeClock

CONF = ConfState(frozenset({1, 2, 3}))
DELETE_RETENTION_MS = 1000
_CASES = itertools.count()


class Crash(BaseException):
    """Raised by the hook: the process dies here (a BaseException, as SystemExit: the
    compactor leaves its files as they are, as a real crash would)."""


@dataclass
class ModelEntry:
    index: int
    term: int
    # (key, value, timestamp) per record; None for a no-op (control) entry.
    records: list[tuple[bytes, bytes, int]] | None


record = st.tuples(st.sampled_from([b"", b"a", b"b", b"c", b"d"]),
                   st.sampled_from([b"", b"1", b"22", b"333"]))


class CompactionModel(RuleBasedStateMachine):
    # Across the run: segment rewrites started, and the swap steps a crash hit.
    rewrites = 0
    crashed_steps: set[str] = set()

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(os.environ["COMPACTION_MODEL_TMP"])

    @initialize(segment_bytes=st.sampled_from([200, 400, 1000]))
    def setup(self, segment_bytes: int) -> None:
        self.dir = self.tmp / f"case{next(_CASES)}"
        self.clock = FakeClock(100_000)
        self.config = LogConfig(segment_bytes=segment_bytes, index_interval_bytes=100,
                                cleanup_policy=CLEANUP_COMPACT,
                                delete_retention_ms=DELETE_RETENTION_MS)
        self.rlog = PartitionRaftLog.open(self.dir, self.config, conf=CONF, clock_ms=self.clock)
        self.entries: list[ModelEntry] = []
        self.term = 1
        self.commit = 0  # the hard state's commit index
        self.committed = 0  # the highest commit ever: never truncated, even after a crash
        self.synced_hs = HardState()
        self.last_pass_ms: int | None = None  # latest clock reading of any compaction pass
        self.compacted = False

    def teardown(self) -> None:
        if hasattr(self, "rlog"):
            self.rlog.close()

    # -- writes ------------------------------------------------------------------------------

    @rule(back=st.integers(0, 2), recs=st.lists(st.lists(record, max_size=4), min_size=1,
                                                max_size=6), bump=st.booleans())
    def append(self, back: int, recs: list[list[tuple[bytes, bytes]]], bump: bool) -> None:
        last = len(self.entries)
        start = max(self.committed + 1, last + 1 - back)
        if bump:
            # A node records a new term before it holds entries of that term.
            self.term += 1
            self.rlog.set_hard_state(HardState(self.term, 0, self.commit))
        del self.entries[start - 1:]
        ents = []
        for i, rs in enumerate(recs):
            idx = start + i
            ts = self.clock.now_ms
            if rs:
                data = batch.encode([v for _, v in rs], keys=[k for k, _ in rs],
                                    timestamps_ms=[ts] * len(rs))
                ents.append(Entry(idx, self.term, EntryKind.NORMAL, data))
                self.entries.append(ModelEntry(idx, self.term, [(k, v, ts) for k, v in rs]))
            else:
                ents.append(Entry(idx, self.term))
                self.entries.append(ModelEntry(idx, self.term, None))
        self.rlog.append(ents)

    @rule(seed=st.integers(0, 2**16), tombstones=st.booleans())
    def burst(self, seed: int, tombstones: bool) -> None:
        """Many keyed updates at once, committed: enough to close a few segments."""
        rng = random.Random(seed)
        values = [b"", b"1", b"22"] if tombstones else [b"1", b"22", b"333"]
        recs = [[(rng.choice([b"", b"a", b"b", b"c", b"d"]), rng.choice(values))
                 for _ in range(rng.randint(1, 4))] for _ in range(8)]
        self.append(0, recs, False)
        self.commit_and_sync(0)

    @rule(back=st.integers(0, 3))
    def commit_and_sync(self, back: int) -> None:
        self.commit = max(self.commit, len(self.entries) - back)
        self.committed = max(self.committed, self.commit)
        hs = HardState(self.term, 0, self.commit)
        self.rlog.set_hard_state(hs)
        self.rlog.sync_now()
        self.synced_hs = hs

    @rule(ms=st.sampled_from([1, 300, 1000]))
    def tick(self, ms: int) -> None:
        self.clock.advance(ms)

    @rule(step=st.sampled_from([None, *STEPS]), nth=st.integers(0, 2), commit=st.booleans())
    def compact(self, step: str | None, nth: int, commit: bool) -> None:
        if commit:
            self.commit_and_sync(1)
        calls = itertools.count()
        commit_before = self.rlog._hard_state.commit
        shape_above = self._stored_shape(commit_before + 1)

        def hook(at: str, _base: int) -> None:
            CompactionModel.rewrites += at == STEPS[0]
            if at == step and next(calls) == nth:
                CompactionModel.crashed_steps.add(at)
                raise Crash

        self.last_pass_ms = self.clock.now_ms
        try:
            self.rlog.compact(hook=hook)
        except Crash:
            self._crash()
            return
        # Nothing above the commit index was touched.
        assert self._stored_shape(commit_before + 1) == shape_above
        self.compacted = True

    @rule()
    def reopen(self) -> None:
        self.rlog.close()
        self.rlog = PartitionRaftLog.open(self.dir, self.config, conf=CONF, clock_ms=self.clock)

    @rule()
    def crash(self) -> None:
        self._crash()

    def _crash(self) -> None:
        sizes = self.rlog.plog.flushed_file_sizes()
        self.rlog.abandon()
        for name, size in sizes.items():
            path = self.dir / name
            if path.exists() and path.stat().st_size > size:
                os.truncate(path, size)
        self.rlog = PartitionRaftLog.open(self.dir, self.config, conf=CONF, clock_ms=self.clock)
        last = self.rlog.last_index()
        assert self.committed <= last <= len(self.entries)  # committed entries were synced
        del self.entries[last:]
        hard = self.rlog.initial_state()[0]
        self.commit = hard.commit
        # A restarted node is at the term its disk recorded (a term bump that was not synced
        # is gone, as on a real node); new entries are of that term or a later recorded one.
        self.term = hard.term

    # -- checks ------------------------------------------------------------------------------

    def _stored_shape(self, from_index: int) -> list[bytes]:
        r = self.rlog
        lo, hi = max(from_index, r.first_index()), r.last_index() + 1
        return [e.data for e in r.entries(lo, hi)] if lo < hi else []

    def _oracle(self) -> tuple[list[tuple[int, int, int, int, bool]],
                               dict[int, tuple[bytes, bytes, int]]]:
        shape: list[tuple[int, int, int, int, bool]] = []
        recs: dict[int, tuple[bytes, bytes, int]] = {}
        offset = 0
        for e in self.entries:
            n = len(e.records) if e.records is not None else 0
            shape.append((offset, n, e.index, e.term, e.records is None))
            for i, r in enumerate(e.records or []):
                recs[offset + i] = r
            offset += n
        return shape, recs

    @invariant()
    def compaction_kept_its_promises(self) -> None:
        if not hasattr(self, "rlog"):
            return
        shape, oracle = self._oracle()
        plog = self.rlog.plog
        # read_raft: every stored batch, a trailing no-op included (read() stops at the log end).
        lo, hi = plog.first_raft_index, plog.next_raft_index
        data = b"".join(plog.read_raft(lo, hi, None)) if lo < hi else b""
        got_shape = [(h.base_offset, h.record_count, h.raft_index, h.leader_term, h.is_control)
                     for h, _ in batch.iter_batches(data)]
        assert got_shape == shape
        got = batch.decode_range(data)
        offsets = [r.offset for r in got]
        assert offsets == sorted(set(offsets))
        for r in got:
            assert oracle[r.offset] == (r.key, r.value, r.timestamp_ms), r.offset
        present = set(offsets)
        latest: dict[bytes, int] = {}
        for off, (k, _v, _ts) in sorted(oracle.items()):
            if k:
                latest[k] = off
        for off, (k, v, ts) in oracle.items():
            if off in present:
                continue
            assert k, f"keyless record at {off} was removed"
            if latest[k] != off:
                continue  # superseded by a later record of its key
            assert v == b"", f"the latest value of {k!r} (offset {off}) was removed"
            assert self.last_pass_ms is not None
            assert self.last_pass_ms - ts >= DELETE_RETENTION_MS, (
                f"tombstone of {k!r} at {off} removed before delete.retention.ms")


@pytest.fixture
def model_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMPACTION_MODEL_TMP", str(tmp_path))


def _run(max_examples: int) -> None:
    CompactionModel.rewrites = 0
    CompactionModel.crashed_steps = set()
    CompactionModel.TestCase.settings = settings(
        max_examples=max_examples, stateful_step_count=40, deadline=None, database=None,
        suppress_health_check=list(HealthCheck))
    CompactionModel.TestCase().runTest()


def test_compaction_matches_the_oracle(model_tmp: None) -> None:
    _run(12)


@pytest.mark.slow
def test_compaction_matches_the_oracle_at_length(model_tmp: None) -> None:
    _run(150)
    # Not vacuous: passes rewrote segments, and crashes hit the swap.
    assert CompactionModel.rewrites > 0 and CompactionModel.crashed_steps, (
        CompactionModel.rewrites, CompactionModel.crashed_steps)


def test_scripted_run_crashing_at_every_swap_step(model_tmp: None) -> None:
    """The same machine and checks on a fixed script: bursts of updates with tombstones, a
    pass crashed at each swap step in turn, restarts, expiring tombstones."""
    CompactionModel.rewrites = 0
    CompactionModel.crashed_steps = set()
    m = CompactionModel()
    m.setup(segment_bytes=300)
    try:
        seed = 0
        for step in (*STEPS, None):
            for _ in range(3):
                seed += 1
                m.burst(seed, tombstones=seed % 2 == 0)
                m.compaction_kept_its_promises()
            m.compact(step, 0, commit=True)
            m.compaction_kept_its_promises()
            m.tick(DELETE_RETENTION_MS // 2)
            m.reopen()
            m.compaction_kept_its_promises()
        m.tick(DELETE_RETENTION_MS)
        m.compact(None, 0, commit=True)
        m.compaction_kept_its_promises()
    finally:
        m.teardown()
    assert CompactionModel.crashed_steps == set(STEPS)
    assert CompactionModel.rewrites > len(STEPS)
