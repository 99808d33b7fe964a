"""PartitionLog behaviour through its public API: append, read, roll, timestamps, truncation,
retention, flush and reopen."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from rillet import batch
from rillet.node.storage.errors import OffsetOutOfRangeError, StorageError
from rillet.node.storage.log import CHECKPOINT_NAME, LogConfig, PartitionLog

from .helpers import FakeClock, make_batch, read_all

OpenLog = Callable[..., PartitionLog]
SMALL = LogConfig(segment_bytes=1000, index_interval_bytes=200)


def test_append_assigns_dense_offsets_and_stamps_term(open_log: OpenLog, clock: FakeClock) -> None:
    log = open_log()
    a = log.append(make_batch(3), leader_term=7)
    b = log.append(make_batch(2), leader_term=8)
    assert (a.base_offset, a.last_offset, b.base_offset, b.last_offset) == (0, 2, 3, 4)
    assert a.log_append_time_ms == clock.now_ms
    assert log.log_end_offset == 5
    got = read_all(log)
    assert [(h.base_offset, h.record_count, h.leader_term) for h, _ in got] == [
        (0, 3, 7), (3, 2, 8)]
    # Records come back with their offsets; the producer's bytes are otherwise unchanged.
    assert [r.offset for r in batch.decode_range(log.read(0, 10**6))] == [0, 1, 2, 3, 4]


def test_append_does_not_modify_the_callers_batch(open_log: OpenLog) -> None:
    log = open_log()
    original = bytearray(make_batch(2))
    before = bytes(original)
    log.append(original, leader_term=3)
    log.append(original, leader_term=3)
    assert bytes(original) == before


def test_append_rejects_a_batch_whose_length_does_not_match(open_log: OpenLog) -> None:
    log = open_log()
    good = make_batch(2)
    with pytest.raises(batch.InvalidBatchError, match="declares"):
        log.append(good + b"x")
    with pytest.raises(batch.InvalidBatchError, match="at least"):
        log.append(good[:20])
    assert log.log_end_offset == 0


def test_read_from_the_middle_of_a_batch_starts_at_that_batch(open_log: OpenLog) -> None:
    log = open_log(SMALL)
    for i in range(30):
        log.append(make_batch(4, tag=i))
    for offset in (0, 1, 5, 57, 119):
        data = log.read(offset, 1)
        header = batch.verify(data)
        assert header.base_offset <= offset < header.next_offset
        assert header.size == len(data)  # exactly one batch: max_bytes is below one batch


def test_read_respects_max_bytes_and_upper(open_log: OpenLog) -> None:
    log = open_log(SMALL)
    size = len(make_batch(2))
    for i in range(40):
        log.append(make_batch(2, tag=i))
    data = log.read(0, size * 5 + size // 2)
    assert len(data) == size * 5
    assert log.read(0, 10**6, upper=6) == log.read(0, size * 3)
    assert log.read(6, 10**6, upper=6) == b""
    assert log.read(80, 10**6) == b""
    everything = log.read(0, 10**9)  # spans several segments in one call
    assert log.segment_count > 3
    assert [h.base_offset for h, _ in batch.iter_batches(everything)] == list(range(0, 80, 2))


def test_read_out_of_range_names_the_valid_range(open_log: OpenLog) -> None:
    log = open_log()
    log.append(make_batch(3))
    with pytest.raises(OffsetOutOfRangeError, match="valid offsets are 0 to 3") as info:
        log.read(4, 100)
    assert (info.value.offset, info.value.log_start, info.value.log_end) == (4, 0, 3)
    with pytest.raises(OffsetOutOfRangeError):
        log.read(-1, 100)


def test_roll_by_size_names_segments_by_base_offset(open_log: OpenLog, tmp_path: Path) -> None:
    log = open_log(SMALL)
    size = len(make_batch(2))
    for i in range(20):
        log.append(make_batch(2, tag=i))
    per_segment = 1000 // size
    assert log.segment_count == -(-20 // per_segment)
    logs = sorted(p.name for p in (tmp_path / "p0").glob("*.log"))
    assert logs[0] == "00000000000000000000.log"
    assert logs[1] == f"{2 * per_segment:020d}.log"


def test_a_batch_larger_than_segment_bytes_gets_a_segment_of_its_own(open_log: OpenLog) -> None:
    log = open_log(LogConfig(segment_bytes=100))
    for i in range(3):
        log.append(make_batch(5, value_size=50, tag=i))
    assert log.segment_count == 3
    assert [h.base_offset for h, _ in read_all(log)] == [0, 5, 10]


def test_roll_by_age_uses_the_injected_clock(open_log: OpenLog, clock: FakeClock) -> None:
    log = open_log(LogConfig(segment_ms=1000))
    log.append(make_batch())
    clock.advance(999)
    log.append(make_batch())
    assert log.segment_count == 1
    clock.advance(1)
    log.append(make_batch())
    assert log.segment_count == 2
    clock.advance(5000)  # the new segment's age counts from its first append
    log.append(make_batch())
    assert log.segment_count == 3


def test_offset_for_timestamp(open_log: OpenLog) -> None:
    log = open_log(SMALL)
    # Timestamps mostly grow, with one late batch, across several segments.
    stamps = [100, 200, 200, 150, 300, 400, 350, 500] * 3
    stamps = [t + 1000 * (i // 8) for i, t in enumerate(stamps)]
    for i, ts in enumerate(stamps):
        log.append(make_batch(2, ts_ms=ts, tag=i))
    assert log.segment_count > 1
    for target in [0, 100, 101, 150, 199, 200, 201, 1350, 2499, 2500, 2501]:
        expected = next((2 * i for i, ts in enumerate(stamps) if ts >= target), None)
        assert log.offset_for_timestamp(target) == expected, target


def test_truncate_to_drops_the_tail_and_appends_continue(open_log: OpenLog) -> None:
    log = open_log(SMALL)
    for i in range(30):
        log.append(make_batch(2, ts_ms=i, tag=i))
    segments = log.segment_count
    log.truncate_to(20)
    assert log.log_end_offset == 20 and log.segment_count < segments
    assert log.offset_for_timestamp(10) is None  # batch with ts 10 (offset 20) is gone
    info = log.append(make_batch(2, ts_ms=99, tag=99), leader_term=2)
    assert info.base_offset == 20
    got = read_all(log)
    assert [h.base_offset for h, _ in got] == list(range(0, 22, 2))
    assert got[-1][0].leader_term == 2
    assert log.offset_for_timestamp(50) == 20


def test_truncate_to_a_segment_boundary_and_to_the_start(open_log: OpenLog) -> None:
    log = open_log(SMALL)
    for i in range(30):
        log.append(make_batch(2, tag=i))
    boundary = log.read(0, 10**9)  # find the second segment's base from the files
    assert boundary
    second = sorted(int(p.stem) for p in log.directory.glob("*.log"))[1]
    log.truncate_to(second)
    assert log.log_end_offset == second and log.segment_count == 1
    log.truncate_to(0)
    assert log.log_end_offset == 0 and read_all(log) == []
    assert log.append(make_batch()).base_offset == 0


def test_truncate_inside_a_batch_is_refused(open_log: OpenLog) -> None:
    log = open_log()
    log.append(make_batch(3))
    with pytest.raises(StorageError, match="inside the batch"):
        log.truncate_to(1)
    with pytest.raises(OffsetOutOfRangeError):
        log.truncate_to(4)
    assert log.log_end_offset == 3


def test_retention_by_size_never_deletes_the_active_segment(open_log: OpenLog) -> None:
    log = open_log(LogConfig(segment_bytes=1000, retention_bytes=0, retention_ms=-1))
    for i in range(30):
        log.append(make_batch(2, tag=i))
    assert log.segment_count > 1
    deleted = log.enforce_retention()
    assert deleted > 0 and log.segment_count == 1
    assert log.log_start_offset == sorted(int(p.stem) for p in log.directory.glob("*.log"))[0]
    with pytest.raises(OffsetOutOfRangeError):
        log.read(0, 100)
    assert read_all(log)[0][0].base_offset == log.log_start_offset
    assert not list(log.directory.glob("*.deleted"))


def test_retention_by_size_keeps_the_newest_data_under_the_limit(open_log: OpenLog) -> None:
    log = open_log(LogConfig(segment_bytes=1000, retention_bytes=2500, retention_ms=-1))
    for i in range(60):
        log.append(make_batch(2, tag=i))
    log.enforce_retention()
    assert log.size_bytes <= 2500 or log.segment_count == 1
    assert log.size_bytes + 1000 > 2500  # it stopped as soon as it was under the limit


def test_retention_by_time_uses_each_segments_largest_timestamp(open_log: OpenLog) -> None:
    log = open_log(LogConfig(segment_bytes=500, retention_ms=1000))
    for i in range(20):
        log.append(make_batch(2, ts_ms=i * 100, tag=i))
    per_segment = 500 // len(make_batch(2))  # 5 batches: newest timestamps 400, 900, 1400...
    assert per_segment == 5 and log.segment_count == 4
    assert log.enforce_retention(now_ms=1400) == 0  # 1400 - 400 is not past 1000
    assert log.enforce_retention(now_ms=1401) == 1
    assert log.log_start_offset == 10
    assert log.enforce_retention(now_ms=1901) == 1  # second segment: newest 900
    assert read_all(log)[0][0].base_offset == log.log_start_offset == 20
    assert log.enforce_retention(now_ms=10**9) == 1  # never the active segment
    assert log.segment_count == 1


def test_retention_stops_at_the_first_segment_that_must_stay(open_log: OpenLog) -> None:
    # Segment maxima 5000, 100, 100, ...: the second segment has expired, but retention only
    # ever removes a prefix, so nothing goes while the first one is still young.
    log = open_log(LogConfig(segment_bytes=500, retention_ms=1000))
    stamps = [5000] + [100] * 19
    for i, ts in enumerate(stamps):
        log.append(make_batch(2, ts_ms=ts, tag=i))
    assert log.segment_count == 4
    assert log.enforce_retention(now_ms=2000) == 0
    assert log.log_start_offset == 0
    assert log.enforce_retention(now_ms=6001) == 3


def test_flush_reports_the_flushed_offset_and_reopen_keeps_everything(
        open_log: OpenLog, tmp_path: Path) -> None:
    log = open_log(SMALL)
    for i in range(25):
        log.append(make_batch(2, tag=i))
    assert log.flushed_offset == 0
    assert log.flush() == 50 == log.flushed_offset
    before = read_all(log)
    log.close()
    log.close()  # idempotent
    with pytest.raises(StorageError, match="closed"):
        log.read(0, 1)
    again = open_log(SMALL)
    assert read_all(again) == before
    assert again.append(make_batch()).base_offset == 50


def test_flush_from_another_thread_while_appending(open_log: OpenLog) -> None:
    log = open_log(LogConfig(segment_bytes=20_000))
    stop = threading.Event()
    results: list[int] = []
    errors: list[BaseException] = []

    def flusher() -> None:
        try:
            while not stop.is_set():
                results.append(log.flush())
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    t = threading.Thread(target=flusher)
    t.start()
    try:
        for i in range(2000):
            log.append(make_batch(2, tag=i))
            if i % 100 == 0:
                log.read(0, 5000)
    finally:
        stop.set()
        t.join(timeout=30)
    assert not t.is_alive() and not errors
    assert results == sorted(results)  # the flushed offset never goes back
    assert log.flush() == 4000
    assert len(read_all(log)) == 2000


def test_checkpoint_is_written_atomically_and_marks_clean_close(
        open_log: OpenLog, tmp_path: Path) -> None:
    log = open_log(SMALL)
    for i in range(25):
        log.append(make_batch(2, tag=i))
    log.close()
    text = (tmp_path / "p0" / CHECKPOINT_NAME).read_text()
    assert '"clean": true' in text and '"recovery_point": 50' in text
    assert not list((tmp_path / "p0").glob("*.tmp"))


def test_open_creates_the_directory_and_an_empty_log(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path / "a" / "b", LogConfig())
    try:
        assert (log.log_start_offset, log.log_end_offset, log.segment_count) == (0, 0, 1)
        assert log.read(0, 100) == b""
        assert log.offset_for_timestamp(0) is None
    finally:
        log.close()


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="segment_bytes"):
        LogConfig(segment_bytes=2**31)
    with pytest.raises(ValueError, match="retention"):
        LogConfig(retention_ms=-2)


def test_flush_is_one_fdatasync_however_many_batches(
        open_log: OpenLog, monkeypatch: pytest.MonkeyPatch) -> None:
    log = open_log()
    log.append(make_batch())
    log.flush()  # the first flush after open may also sync the directory
    calls: list[str] = []
    real_fdatasync, real_fsync = os.fdatasync, os.fsync

    def count_fdatasync(fd: int) -> None:
        calls.append("fdatasync")
        real_fdatasync(fd)

    def count_fsync(fd: int) -> None:
        calls.append("fsync")
        real_fsync(fd)

    monkeypatch.setattr(os, "fdatasync", count_fdatasync)
    monkeypatch.setattr(os, "fsync", count_fsync)
    for i in range(50):
        log.append(make_batch(tag=i))
    assert log.flush() == 153
    assert calls == ["fdatasync"]
    calls.clear()
    assert log.flush() == 153  # nothing new: nothing to sync
    assert calls == []


def test_flush_after_close_is_refused(open_log: OpenLog) -> None:
    log = open_log()
    log.append(make_batch())
    log.close()
    with pytest.raises(StorageError, match="closed"):
        log.flush()


def test_a_flush_that_straddles_a_truncation_claims_nothing(
        open_log: OpenLog, monkeypatch: pytest.MonkeyPatch) -> None:
    log = open_log()
    for i in range(10):
        log.append(make_batch(tag=i))
    real_fdatasync = os.fdatasync

    def truncate_during_sync(fd: int) -> None:
        real_fdatasync(fd)
        monkeypatch.setattr(os, "fdatasync", real_fdatasync)
        log.truncate_to(15)  # as if the event loop ran while the worker thread synced

    monkeypatch.setattr(os, "fdatasync", truncate_during_sync)
    assert log.flush() == 0  # claims nothing: what it synced is partly gone
    assert log.flushed_offset == 0 and log.log_end_offset == 15
    assert log.flush() == 15  # the next flush claims what survived the truncation
    log.append(make_batch(tag=99))
    assert log.flush() == 18
