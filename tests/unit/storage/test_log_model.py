"""The partition log against an obviously correct model: a Python list of batches.

Random sequences of append, read (by offset and by timestamp), roll (small segments and a
moving clock), retention, truncate_to, flush, close+reopen and crash+reopen. A crash keeps
only what was fsynced (files cut back to the sizes the log reports durable) and may leave a
torn or garbage tail on the active segment. After every step the log and the model agree.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from dataclasses import dataclass
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
    run_state_machine_as_test,
)

from rillet import batch
from rillet.node.storage.log import LogConfig, PartitionLog

from .helpers import FakeClock, make_batch


@dataclass
class Stored:
    base_offset: int
    record_count: int
    max_ts: int
    data: bytes  # exactly what the log must return: stamped with offset and term

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.record_count


class LogMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.term = 0
        self.tmp = Path(tempfile.mkdtemp(prefix="rillet-model-"))
        self.dir = self.tmp / "p"
        self.clock = FakeClock(10_000)
        self.model: list[Stored] = []
        self.start = 0  # model log start offset
        self.end = 0
        self.log: PartitionLog | None = None
        self.config = LogConfig()
        self.flushed = 0
        self.tag = 0
        self.next_raft = 1  # the Raft index the next batch gets (the single-node entry count)

    @initialize(segment_bytes=st.sampled_from([150, 700, 2500, 8000]),
                interval=st.integers(0, 400),
                segment_ms=st.sampled_from([50, 1000, 10**9]),
                retention_ms=st.sampled_from([-1, 100, 1000, 3000]),
                retention_bytes=st.sampled_from([-1, -1, 0, 1500, 5000]))
    def open_log(self, segment_bytes: int, interval: int, segment_ms: int, retention_ms: int,
                 retention_bytes: int) -> None:
        self.config = LogConfig(segment_bytes=segment_bytes, index_interval_bytes=interval,
                                segment_ms=segment_ms, retention_ms=retention_ms,
                                retention_bytes=retention_bytes)
        self.log = PartitionLog.open(self.dir, self.config, clock_ms=self.clock)

    def teardown(self) -> None:
        if self.log is not None:
            self.log.abandon()
        shutil.rmtree(self.tmp, ignore_errors=True)

    @property
    def plog(self) -> PartitionLog:
        assert self.log is not None
        return self.log

    def _reopen(self) -> None:
        self.log = PartitionLog.open(self.dir, self.config, clock_ms=self.clock)

    def _boundaries(self) -> list[int]:
        return [s.base_offset for s in self.model] + [self.end]

    # ---------------------------------------------------------------- rules
    @rule(batches=st.lists(st.tuples(st.integers(1, 5), st.integers(0, 300),
                                     st.integers(-20, 60)), min_size=1, max_size=8),
          term_step=st.integers(0, 1), advance=st.integers(0, 60))
    def append(self, batches: list[tuple[int, int, int]], term_step: int, advance: int) -> None:
        # Leader terms never go back along a log (Raft), and recovery relies on it.
        self.term += term_step
        term = self.term
        for n, value_size, ts_step in batches:
            self.clock.advance(advance)
            prev = self.model[-1].max_ts if self.model else 1000
            ts = max(0, prev + ts_step)
            raw = make_batch(n, ts_ms=ts, value_size=value_size, tag=self.tag)
            self.tag += 1
            info = self.plog.append(raw, leader_term=term)
            assert info.base_offset == self.end and info.last_offset == self.end + n - 1
            stamped = bytearray(raw)
            batch.stamp(stamped, self.end, term, self.next_raft)  # Raft index = entry count
            self.next_raft += 1
            self.model.append(Stored(self.end, n, ts, bytes(stamped)))
            self.end += n

    @rule(data=st.data())
    def read(self, data: st.DataObject) -> None:
        for _ in range(data.draw(st.integers(1, 4), label="reads")):
            offset = data.draw(st.integers(self.start, self.end), label="offset")
            max_bytes = data.draw(st.integers(0, 3000), label="max_bytes")
            upper = None
            if data.draw(st.booleans(), label="bounded"):
                upper = data.draw(
                    st.sampled_from([b for b in self._boundaries() if b >= offset]),
                    label="upper")
            self._check_read(offset, max_bytes, upper)

    def _check_read(self, offset: int, max_bytes: int, upper: int | None) -> None:
        got = self.plog.read(offset, max_bytes, upper=upper)
        limit = self.end if upper is None else upper
        expected = b""
        if offset < limit:
            i = next(i for i, s in enumerate(self.model) if offset < s.next_offset)
            parts: list[bytes] = []
            total = 0
            for s in self.model[i:]:
                if s.base_offset >= limit or (parts and total + len(s.data) > max_bytes):
                    break
                parts.append(s.data)
                total += len(s.data)
            expected = b"".join(parts)
        assert got == expected
        for _header, _view in batch.iter_batches(got):  # every batch served verifies
            pass

    @rule(data=st.data())
    def read_out_of_range(self, data: st.DataObject) -> None:
        offset = data.draw(st.one_of(st.integers(self.end + 1, self.end + 100),
                                     st.integers(-100, self.start - 1)))
        with pytest.raises(Exception, match="out of range"):
            self.plog.read(offset, 100)

    @rule(ts=st.integers(900, 3000))
    def by_timestamp(self, ts: int) -> None:
        expected = next((s.base_offset for s in self.model if s.max_ts >= ts), None)
        assert self.plog.offset_for_timestamp(ts) == expected

    @rule()
    def flush(self) -> None:
        assert self.plog.flush() == self.end
        self.flushed = self.end

    @precondition(lambda self: self.end > self.start)
    @rule(data=st.data())
    def truncate(self, data: st.DataObject) -> None:
        offset = data.draw(st.sampled_from(self._boundaries()), label="truncate_to")
        self.plog.truncate_to(offset)
        self._cut(offset)
        self.end = offset
        self.flushed = min(self.flushed, offset)

    @rule(now_ms=st.integers(1000, 6000))
    def retention(self, now_ms: int) -> None:
        bases = sorted(int(p.stem) for p in self.dir.glob("*.log"))
        cfg = self.config
        # Predict from the segment boundaries on disk and the model's timestamps.
        size = sum(len(s.data) for s in self.model)
        new_start = self.start
        for lo, hi in itertools.pairwise(bases):
            seg = [s for s in self.model if lo <= s.base_offset < hi]
            newest = max((s.max_ts for s in seg), default=None)
            expired = cfg.retention_ms >= 0 and (
                newest is None or now_ms - newest > cfg.retention_ms)
            over = cfg.retention_bytes >= 0 and size > cfg.retention_bytes
            if not (expired or over):
                break
            size -= sum(len(s.data) for s in seg)
            new_start = hi
        deleted = self.plog.enforce_retention(now_ms)
        assert deleted == sum(1 for b in bases if b < new_start)
        self.model = [s for s in self.model if s.base_offset >= new_start]
        self.start = new_start

    @rule()
    def close_and_reopen(self) -> None:
        self.plog.close()
        self._reopen()
        self.flushed = self.end

    @rule(garbage=st.sampled_from(["none", "torn", "random"]), data=st.data())
    def crash_and_reopen(self, garbage: str, data: st.DataObject) -> None:
        log = self.plog
        sizes = log.flushed_file_sizes()
        log.abandon()
        for name, size in sizes.items():
            path = self.dir / name
            if path.exists() and path.stat().st_size > size:
                with open(path, "r+b") as f:
                    f.truncate(size)
        last = sorted(self.dir.glob("*.log"))[-1]
        if garbage != "none":
            junk = (make_batch(2, value_size=50)[: data.draw(st.integers(1, 100))]
                    if garbage == "torn" else data.draw(st.binary(min_size=1, max_size=200)))
            with open(last, "ab") as f:
                f.write(junk)
        self._reopen()
        new_end = self.plog.log_end_offset
        assert self.flushed <= new_end <= self.end
        self._cut(new_end)
        self.end = new_end
        self.flushed = new_end

    def _cut(self, end: int) -> None:
        """Drop the model's batches at or above offset `end`; Raft indexes continue from the
        first one dropped."""
        gone = [s for s in self.model if s.base_offset >= end]
        if gone:
            self.next_raft = batch.parse_header(gone[0].data).raft_index
        self.model = [s for s in self.model if s.base_offset < end]

    # ---------------------------------------------------------------- invariants
    @invariant()
    def agrees_with_model(self) -> None:
        if self.log is None:
            return
        assert self.plog.log_start_offset == self.start
        assert self.plog.log_end_offset == self.end
        assert self.plog.size_bytes == sum(len(s.data) for s in self.model)
        assert self.plog.flushed_offset >= self.flushed
        assert self.plog.segment_count == len(list(self.dir.glob("*.log")))


LogMachine.TestCase.settings = settings(
    max_examples=80, stateful_step_count=50, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TestLogModel = LogMachine.TestCase


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_log_model_long_run() -> None:
    run_state_machine_as_test(LogMachine, settings=settings(
        max_examples=600, stateful_step_count=80, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]))
