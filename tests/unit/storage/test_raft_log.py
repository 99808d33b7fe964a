"""PartitionRaftLog against cluster.raft.storage.MemoryStorage as the oracle.

A hypothesis state machine drives both with the same writes (append with conflicting-suffix
truncation, hard state, retention of the log start, snapshots, close+reopen, crashes that drop
unflushed bytes) and compares every read the Raft core makes. Plus recovery tests: a torn tail
after the last sync comes back at the last synced entry with the hard state intact.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from rillet import batch
from rillet.cluster.raft import (
    CompactedError,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    MemoryStorage,
    Snapshot,
    SnapshotMeta,
    UnavailableError,
)
from rillet.cluster.raft.codec import encode_conf_change
from rillet.cluster.raft.types import ConfChange, ConfChangeKind
from rillet.node.storage.log import CHECKPOINT_NAME, LogConfig
from rillet.node.storage.raft_log import PartitionRaftLog, entry_of
from tests.unit.storage.helpers import FakeClock

CONF = ConfState(frozenset({1, 2, 3}))
_CASES = itertools.count()


def data_batch(n: int, ts_ms: int) -> bytes:
    return batch.encode([b"v%d" % i for i in range(n)], timestamps_ms=[ts_ms] * n)


def crash(rlog: PartitionRaftLog) -> None:
    """Drop everything not fsynced, as a power cut would."""
    sizes = rlog.plog.flushed_file_sizes()
    rlog.abandon()
    for name, size in sizes.items():
        path = rlog.directory / name
        if path.exists() and path.stat().st_size > size:
            os.truncate(path, size)


def records_of(rlog: PartitionRaftLog) -> list[tuple[int, bytes]]:
    """Every record in the log, as a consumer decodes it (control batches skipped)."""
    buf = rlog.plog.read(rlog.plog.log_start_offset, 1 << 30)
    return [(r.offset, r.value) for r in batch.decode_range(buf)]


class RaftLogModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(os.environ["RAFT_LOG_TMP"])
        self.n = 0

    @initialize(segment_bytes=st.sampled_from([300, 1200, 1 << 20]))
    def setup(self, segment_bytes: int) -> None:
        self.n += 1
        self.dir = self.tmp / f"case{next(_CASES)}"
        self.clock = FakeClock()
        self.config = LogConfig(segment_bytes=segment_bytes, retention_ms=-1,
                                index_interval_bytes=150)
        self.rlog = PartitionRaftLog.open(self.dir, self.config, conf=CONF, clock_ms=self.clock)
        self.mem = MemoryStorage(CONF)
        # What a crash must keep: entries up to durable_last (synced and not truncated since)
        # and the hard state of the last sync.
        self.durable_last = 0
        self.synced_hs = HardState()
        self.term = 1

    def teardown(self) -> None:
        if hasattr(self, "rlog"):
            self.rlog.close()

    # -- writes ------------------------------------------------------------------------------

    @rule(back=st.integers(0, 4), kinds=st.lists(st.sampled_from(["data", "noop", "conf"]),
                                                 min_size=1, max_size=4),
          bump=st.booleans())
    def append(self, back: int, kinds: list[str], bump: bool) -> None:
        # A new leader may overwrite an uncommitted suffix: start at most `back` below the end,
        # never at or below the commit index or the log start.
        floor = max(self.mem.first_index(), self.mem.initial_state()[0].commit + 1)
        start = max(floor, self.mem.last_index() + 1 - back)
        if bump:
            # A node moves to a term (and records it) before it holds entries of that term.
            self.term += 1
            old = self.mem.initial_state()[0]
            hs = HardState(self.term, 0, old.commit)
            self.rlog.set_hard_state(hs)
            self.mem.set_hard_state(hs)
        ents = []
        for i, kind in enumerate(kinds):
            idx = start + i
            if kind == "data":
                ents.append(Entry(idx, self.term, EntryKind.NORMAL,
                                  data_batch(1 + idx % 3, 1000 + idx)))
            elif kind == "noop":
                ents.append(Entry(idx, self.term))
            else:
                ents.append(Entry(idx, self.term, EntryKind.CONF_CHANGE, encode_conf_change(
                    ConfChange(ConfChangeKind.ADD_LEARNER, 4 + idx % 3))))
        self.rlog.append(ents)
        self.mem.append(ents)
        self.durable_last = min(self.durable_last, start - 1)

    @rule(commit_back=st.integers(0, 3), vote=st.sampled_from([0, 1, 2]))
    def set_hard_state(self, commit_back: int, vote: int) -> None:
        old = self.mem.initial_state()[0]
        commit = max(old.commit, self.mem.last_index() - commit_back)
        hs = HardState(max(old.term, self.term), vote, commit)
        self.rlog.set_hard_state(hs)
        self.mem.set_hard_state(hs)

    @rule()
    def sync(self) -> None:
        self.rlog.sync_now()
        self.durable_last = self.mem.last_index()
        self.synced_hs = self.mem.initial_state()[0]

    @rule()
    def retention(self) -> None:
        """Retention everything it may: whole segments up to the commit index."""
        old_first = self.rlog.first_index()
        self.rlog.plog.config = LogConfig(  # retention by size 0 = delete all it may
            segment_bytes=self.config.segment_bytes, retention_ms=-1, retention_bytes=0,
            index_interval_bytes=150)
        self.rlog.enforce_retention(self.clock())
        self.rlog.plog.config = self.config
        new_first = self.rlog.first_index()
        assert new_first <= self.mem.initial_state()[0].commit + 1
        if new_first > old_first:
            conf = self.mem.initial_state()[1]
            for e in self.mem.entries(old_first, new_first):
                if e.kind == EntryKind.CONF_CHANGE:
                    from rillet.cluster.raft.codec import decode_conf_change
                    conf = conf.changed_by(decode_conf_change(e.data)) or conf
            self.mem.compact(new_first - 1, conf)

    @rule(ahead=st.integers(1, 5), offset_gap=st.integers(0, 100))
    def install_snapshot(self, ahead: int, offset_gap: int) -> None:
        index = self.mem.last_index() + ahead
        self.term += 1
        snap = Snapshot(SnapshotMeta(index, self.term, CONF),
                        (self.rlog.plog.log_end_offset + offset_gap).to_bytes(8, "little"))
        self.rlog.apply_snapshot(snap)
        self.mem.apply_snapshot(snap)
        hs = HardState(self.term, 0, index)
        self.rlog.set_hard_state(hs)
        self.mem.set_hard_state(hs)
        self.sync()

    @rule()
    def reopen(self) -> None:
        self.rlog.close()
        self.rlog = PartitionRaftLog.open(self.dir, self.config, conf=CONF, clock_ms=self.clock)
        self.durable_last = self.mem.last_index()
        self.synced_hs = self.mem.initial_state()[0]

    @rule()
    def crash_and_recover(self) -> None:
        crash(self.rlog)
        self.rlog = PartitionRaftLog.open(self.dir, self.config, conf=CONF, clock_ms=self.clock)
        # Every synced (and not since truncated) entry survives, the hard state is the last
        # synced one, and whatever else survived is exactly the model's prefix.
        r = self.rlog
        assert r.initial_state()[0] == self.synced_hs
        assert r.first_index() == self.mem.first_index()
        last = r.last_index()
        assert self.durable_last <= last <= self.mem.last_index()
        got = r.entries(r.first_index(), last + 1)
        want = self.mem.entries(self.mem.first_index(), last + 1)
        assert [_key(e) for e in got] == [_key(e) for e in want]
        del self.mem._ents[last - self.mem._ents[0].index + 1:]
        self.mem.set_hard_state(self.synced_hs)
        self.durable_last = last

    # -- reads -------------------------------------------------------------------------------

    @rule(data=st.data())
    def read_entries(self, data: st.DataObject) -> None:
        first, last = self.mem.first_index(), self.mem.last_index()
        lo = data.draw(st.integers(max(1, first - 2), last + 2))
        hi = data.draw(st.integers(lo, last + 3))
        max_bytes = data.draw(st.sampled_from([None, 0, 100, 400]))
        try:
            want = self.mem.entries(lo, hi, max_bytes)
        except (CompactedError, UnavailableError) as exc:
            with pytest.raises(type(exc)):
                self.rlog.entries(lo, hi, max_bytes)
            return
        got = self.rlog.entries(lo, hi, max_bytes)
        assert [_key(e) for e in got] == [_key(e) for e in want]

    @invariant()
    def same_shape(self) -> None:
        if not hasattr(self, "rlog"):
            return
        r, m = self.rlog, self.mem
        assert (r.first_index(), r.last_index()) == (m.first_index(), m.last_index())
        assert r.initial_state() == m.initial_state()
        for i in {m.first_index() - 1, m.last_index(), (m.first_index() + m.last_index()) // 2}:
            if m.first_index() - 1 <= i <= m.last_index():
                assert r.term(i) == m.term(i), i
        # Every entry, as the core would read it back (from the recent entries or the disk).
        got = r.entries(m.first_index(), m.last_index() + 1)
        assert [_key(e) for e in got] == [_key(e) for e in m.entries(m.first_index(),
                                                                      m.last_index() + 1)]
        snap = r.snapshot()
        assert (snap.meta.index, snap.meta.term, snap.meta.conf) == (
            m.snapshot().meta.index, m.snapshot().meta.term, m.snapshot().meta.conf)

    @precondition(lambda self: hasattr(self, "rlog"))
    @invariant()
    def offsets_are_dense(self) -> None:
        recs = records_of(self.rlog)
        start = self.rlog.plog.log_start_offset
        assert [o for o, _ in recs] == list(range(start, start + len(recs)))


def _key(e: Entry) -> tuple[int, int, int, bytes]:
    """Compare entries by what the core sees; data batches compare by their records (the
    stored copy is stamped, the model holds what was proposed)."""
    data = e.data
    if e.kind == EntryKind.NORMAL and data:
        data = b"|".join(r.value for r in batch.decode(data))
    return e.index, e.term, int(e.kind), data


@pytest.fixture
def model_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAFT_LOG_TMP", str(tmp_path))


def test_partition_raft_log_matches_memory_storage(model_tmp: None) -> None:
    RaftLogModel.TestCase.settings = settings(
        max_examples=40, stateful_step_count=30, deadline=None, database=None,
        suppress_health_check=list(HealthCheck))
    RaftLogModel.TestCase().runTest()


# -- direct tests -------------------------------------------------------------------------------


def test_entries_round_trip_and_follower_keeps_the_leaders_bytes(tmp_path: Path) -> None:
    leader = PartitionRaftLog.open(tmp_path / "a", conf=CONF)
    follower = PartitionRaftLog.open(tmp_path / "b", conf=CONF)
    ents = [Entry(1, 1), Entry(2, 1, data=data_batch(3, 5)),
            Entry(3, 1, EntryKind.CONF_CHANGE, encode_conf_change(
                ConfChange(ConfChangeKind.ADD_LEARNER, 4))),
            Entry(4, 1, data=data_batch(2, 6))]
    leader.append(ents)
    stored = leader.entries(1, 5)
    assert [(e.index, e.term, e.kind) for e in stored] == [(e.index, e.term, e.kind)
                                                          for e in ents]
    assert stored[0].data == b"" and stored[2].data == ents[2].data
    follower.append(stored)  # the leader's stamped bytes, appended unchanged
    assert follower.plog.read(0, 1 << 20) == leader.plog.read(0, 1 << 20)
    assert records_of(follower) == [(0, b"v0"), (1, b"v1"), (2, b"v2"), (3, b"v0"), (4, b"v1")]
    h = batch.parse_header(stored[3].data)
    assert (h.base_offset, h.leader_term, h.raft_index) == (3, 1, 4)
    leader.close()
    follower.close()


def test_reads_after_a_conflicting_suffix_see_the_new_entries(tmp_path: Path) -> None:
    """After a truncation and after a snapshot the core never reads back an entry a new
    leader replaced."""
    rlog = PartitionRaftLog.open(tmp_path / "p", conf=CONF)
    rlog.set_hard_state(HardState(1, 0, 0))
    rlog.append([Entry(1, 1), Entry(2, 1), Entry(3, 1)])
    rlog.set_hard_state(HardState(2, 0, 0))
    rlog.append([Entry(2, 2), Entry(3, 2)])
    assert [(e.index, e.term) for e in rlog.entries(1, 4)] == [(1, 1), (2, 2), (3, 2)]
    rlog.apply_snapshot(Snapshot(SnapshotMeta(10, 3, CONF), (50).to_bytes(8, "little")))
    rlog.append([Entry(11, 3)])
    assert [(e.index, e.term) for e in rlog.entries(11, 12)] == [(11, 3)]
    with pytest.raises(CompactedError):
        rlog.entries(3, 12)
    rlog.close()


def test_conflicting_suffix_is_replaced_durably(tmp_path: Path) -> None:
    rlog = PartitionRaftLog.open(tmp_path, conf=CONF)
    rlog.append([Entry(i, 1, data=data_batch(2, i)) for i in range(1, 6)])
    rlog.sync_now()
    rlog.append([Entry(3, 2), Entry(4, 2, data=data_batch(1, 9))])  # a new leader's no-op
    assert [(e.index, e.term) for e in rlog.entries(1, 5)] == [(1, 1), (2, 1), (3, 2), (4, 2)]
    assert records_of(rlog) == [(0, b"v0"), (1, b"v1"), (2, b"v0"), (3, b"v1"), (4, b"v0")]
    crash(rlog)  # the truncation was durable; the new entries were not synced
    back = PartitionRaftLog.open(tmp_path, conf=CONF)
    assert back.last_index() == 2 and back.term(2) == 1
    back.close()


def test_torn_tail_after_the_last_sync_comes_back_at_the_last_synced_entry(
        tmp_path: Path) -> None:
    rlog = PartitionRaftLog.open(tmp_path, conf=CONF)
    rlog.append([Entry(1, 1)] + [Entry(i, 1, data=data_batch(2, i)) for i in range(2, 8)])
    rlog.set_hard_state(HardState(1, 1, 5))
    rlog.sync_now()
    rlog.append([Entry(i, 1, data=data_batch(2, i)) for i in range(8, 11)])
    rlog.set_hard_state(HardState(2, 3, 9))  # staged, never synced
    seg = rlog.plog._segments[-1]
    flushed = seg.flushed_size
    rlog.abandon()
    os.truncate(seg.log_path, flushed + 30)  # a torn part of entry 8 survived
    back = PartitionRaftLog.open(tmp_path, conf=CONF)
    assert back.last_index() == 7 and back.term(7) == 1
    assert back.initial_state() == (HardState(1, 1, 5), CONF)
    assert [r[0] for r in records_of(back)] == list(range(12))
    back.close()


def test_retention_keeps_the_term_before_the_log_start_and_the_membership(
        tmp_path: Path) -> None:
    clock = FakeClock()
    cfg = LogConfig(segment_bytes=400, retention_ms=-1, retention_bytes=0)
    rlog = PartitionRaftLog.open(tmp_path, cfg, conf=CONF, clock_ms=clock)
    add4 = encode_conf_change(ConfChange(ConfChangeKind.ADD_LEARNER, 4))
    rlog.append([Entry(1, 1), Entry(2, 1, EntryKind.CONF_CHANGE, add4)]
                + [Entry(i, 2, data=data_batch(3, i)) for i in range(3, 20)])
    rlog.set_hard_state(HardState(2, 1, 12))
    assert rlog.enforce_retention() > 0
    first = rlog.first_index()
    assert 3 < first <= 13  # never past the commit index
    assert rlog.term(first - 1) == 2
    snap = rlog.snapshot()
    assert snap.meta.index == first - 1
    assert snap.meta.conf == ConfState(frozenset({1, 2, 3}), frozenset({4}))
    assert int.from_bytes(snap.data, "little") == rlog.plog.log_start_offset
    with pytest.raises(CompactedError):
        rlog.entries(first - 1, first)
    rlog.close()
    back = PartitionRaftLog.open(tmp_path, cfg, conf=CONF, clock_ms=clock)
    assert back.first_index() == first and back.term(first - 1) == 2
    assert back.initial_state()[1] == snap.meta.conf
    back.close()


def test_snapshot_restarts_the_log_at_the_leaders_offset(tmp_path: Path) -> None:
    rlog = PartitionRaftLog.open(tmp_path, conf=CONF)
    rlog.append([Entry(1, 1, data=data_batch(2, 1))])
    conf = ConfState(frozenset({1, 2}))
    rlog.apply_snapshot(Snapshot(SnapshotMeta(50, 3, conf), (700).to_bytes(8, "little")))
    assert (rlog.first_index(), rlog.last_index(), rlog.term(50)) == (51, 50, 3)
    rlog.append([Entry(51, 3, data=data_batch(2, 2))])
    crash(rlog)
    back = PartitionRaftLog.open(tmp_path, conf=CONF)
    assert (back.first_index(), back.term(50), back.initial_state()[1]) == (51, 3, conf)
    assert back.plog.log_start_offset == 700
    back.append([Entry(51, 3, data=data_batch(1, 3))])
    assert records_of(back) == [(700, b"v0")]
    back.close()


def test_corrupt_state_file_is_refused(tmp_path: Path) -> None:
    rlog = PartitionRaftLog.open(tmp_path, conf=CONF)
    rlog.set_hard_state(HardState(3, 2, 0))
    rlog.close()
    path = tmp_path / "raft-state"
    raw = bytearray(path.read_bytes())
    raw[-2] ^= 1
    path.write_bytes(bytes(raw))
    from rillet.node.storage.errors import LogCorruptionError
    with pytest.raises(LogCorruptionError, match="CRC"):
        PartitionRaftLog.open(tmp_path, conf=CONF)


def test_entry_of_control_batches() -> None:
    b = bytearray(batch.encode_control(b"cc", conf_change=True))
    batch.stamp(b, 7, 2, 9)
    assert entry_of(bytes(b)) == Entry(9, 2, EntryKind.CONF_CHANGE, b"cc")


def test_a_damaged_leader_term_is_cut_with_everything_after_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # The leader term is stamped outside the batch CRC. Damage that raises the term of entry 5
    # (its later entries then look as if the term went back) must not leave this node a log
    # that looks newer than its peers': recovery cuts at entry 6 (terms never go back), and
    # the open cuts entry 5 too, whose term is above the recorded term.
    rlog = PartitionRaftLog.open(tmp_path, conf=CONF)
    rlog.append([Entry(1, 1)] + [Entry(i, 1, data=data_batch(2, i)) for i in range(2, 9)])
    rlog.set_hard_state(HardState(1, 1, 8))
    rlog.sync_now()
    seg = rlog.plog._segments[-1]
    pos = seg.position_of_raft(5)
    rlog.close()
    data = bytearray(seg.log_path.read_bytes())
    assert data[pos + 12] == 1  # leader_term's low byte
    data[pos + 17] = 0xFE       # a high byte: term 1 becomes enormous
    seg.log_path.write_bytes(bytes(data))
    # Make the open check the tail as after an unclean stop (a clean checkpoint trusts it).
    (tmp_path / CHECKPOINT_NAME).unlink()
    with caplog.at_level("WARNING"):
        back = PartitionRaftLog.open(tmp_path, conf=CONF)
    assert back.last_index() == 4 and back.term(4) == 1
    assert back.initial_state()[0] == HardState(1, 1, 8)
    assert any("damaged leader terms" in r.getMessage() for r in caplog.records)
    back.close()
