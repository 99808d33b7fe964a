"""Recovery: damage the files the way crashes and bad disks do, reopen, and check that every
batch flushed before the damage is still readable and nothing damaged is ever served."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from rillet import batch
from rillet.node.storage.log import CHECKPOINT_NAME, LogConfig, PartitionLog

from .helpers import make_batch, read_all

OpenLog = Callable[..., PartitionLog]
CONFIG = LogConfig(segment_bytes=2000, index_interval_bytes=300)


def _fill(log: PartitionLog, n: int, start_tag: int = 0) -> None:
    for i in range(n):
        log.append(make_batch(3, ts_ms=1000 + start_tag + i, tag=start_tag + i), leader_term=1)


def _segment_logs(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.log"))


def _flip(path: Path, pos: int) -> None:
    data = bytearray(path.read_bytes())
    data[pos] ^= 0x40
    path.write_bytes(bytes(data))


def _crash(log: PartitionLog) -> None:
    """Drop everything not fsynced, as a machine crash would."""
    sizes = log.flushed_file_sizes()
    log.abandon()
    for name, size in sizes.items():
        path = log.directory / name
        if path.exists() and path.stat().st_size > size:
            with open(path, "r+b") as f:
                f.truncate(size)


def _read_closed(open_log: OpenLog) -> list[tuple[batch.BatchHeader, bytes]]:
    """Open the log, read everything, close it again."""
    log = open_log(CONFIG)
    try:
        return read_all(log)
    finally:
        log.close()


def _check_prefix(log: PartitionLog, expected: list[tuple[batch.BatchHeader, bytes]]) -> None:
    """The log holds exactly `expected`, every batch CRC-intact."""
    got = read_all(log)
    assert got == expected
    assert log.log_end_offset == (expected[-1][0].next_offset if expected else 0)


def test_partial_batch_at_the_tail_is_cut_and_logged(
        open_log: OpenLog, caplog: pytest.LogCaptureFixture) -> None:
    log = open_log(CONFIG)
    _fill(log, 30)
    log.flush()
    expected = read_all(log)
    active = _segment_logs(log.directory)[-1]
    log.abandon()
    half = make_batch(3, tag=99)[:40]
    with open(active, "ab") as f:
        f.write(half)
    with caplog.at_level(logging.WARNING):
        log = open_log(CONFIG)
    _check_prefix(log, expected)
    assert any("cut 40 bytes" in r.getMessage() for r in caplog.records)
    assert log.append(make_batch(1)).base_offset == 90  # appends continue where it was cut


def test_flipped_byte_in_the_tail_drops_that_batch_and_everything_after(
        open_log: OpenLog, caplog: pytest.LogCaptureFixture) -> None:
    log = open_log(CONFIG)
    _fill(log, 30)
    log.flush()
    everything = read_all(log)
    active = _segment_logs(log.directory)[-1]
    active_base = int(active.stem)
    log.abandon()
    # Damage the record bytes (inside the CRC) of the third batch of the active segment.
    in_active = [(h, b) for h, b in everything if h.base_offset >= active_base]
    assert len(in_active) >= 4
    pos = sum(len(b) for _, b in in_active[:2]) + batch.HEADER_SIZE + 5
    _flip(active, pos)
    with caplog.at_level(logging.WARNING):
        log = open_log(CONFIG)
    keep = [x for x in everything if x[0].base_offset < in_active[2][0].base_offset]
    _check_prefix(log, keep)
    assert any("CRC mismatch" in r.getMessage() for r in caplog.records)


def test_a_valid_batch_with_the_wrong_base_offset_ends_the_log(open_log: OpenLog) -> None:
    log = open_log(CONFIG)
    _fill(log, 5)
    log.flush()
    expected = read_all(log)
    active = _segment_logs(log.directory)[-1]
    log.abandon()
    stray = bytearray(make_batch(2))
    batch.stamp(stray, 1000, 1)  # CRC intact, but it does not continue offset 15
    with open(active, "ab") as f:
        f.write(bytes(stray))
    log = open_log(CONFIG)
    _check_prefix(log, expected)


@pytest.mark.parametrize("suffix", [".index", ".timeindex"])
def test_deleted_index_is_rebuilt(open_log: OpenLog, suffix: str) -> None:
    log = open_log(CONFIG)
    _fill(log, 60)
    log.close()
    first = _segment_logs(log.directory)[0].with_suffix(suffix)
    original = first.read_bytes()
    assert original  # a closed segment of several batches has entries
    first.unlink()
    log = open_log(CONFIG)
    expected_ts = log.offset_for_timestamp(1005)
    assert expected_ts == 15
    assert first.read_bytes() == original  # rebuilt identically from the log
    assert len(read_all(log)) == 60
    for offset in range(0, 180, 7):
        header = batch.verify(log.read(offset, 1))
        assert header.base_offset <= offset < header.next_offset


def test_garbage_index_is_rebuilt_not_trusted(open_log: OpenLog) -> None:
    log = open_log(CONFIG)
    _fill(log, 60)
    log.close()
    index = _segment_logs(log.directory)[0].with_suffix(".index")
    good = index.read_bytes()
    # Entries that are well-formed and sorted but point at the wrong positions.
    index.write_bytes(bytes(b ^ 0x01 if i % 8 == 4 else b for i, b in enumerate(good)))
    log = open_log(CONFIG)
    assert index.read_bytes() == good
    assert len(read_all(log)) == 60


def test_deleted_checkpoint_checks_every_segment(
        open_log: OpenLog, caplog: pytest.LogCaptureFixture) -> None:
    log = open_log(CONFIG)
    _fill(log, 60)
    log.close()
    everything = _read_closed(open_log)
    logs = _segment_logs(log.directory)
    # Damage an old, closed segment: trusted while the checkpoint vouches for it, caught by
    # the full check once the checkpoint is gone. Everything from the bad batch on is dropped.
    (log.directory / CHECKPOINT_NAME).unlink()
    second_base = int(logs[1].stem)
    _flip(logs[1], batch.HEADER_SIZE + 3)
    with caplog.at_level(logging.WARNING):
        log = open_log(CONFIG)
    _check_prefix(log, [x for x in everything if x[0].base_offset < second_base])
    assert len(_segment_logs(log.directory)) == 2  # the later segments were deleted
    assert any("dropping" in r.getMessage() for r in caplog.records)


def test_checkpoint_lets_clean_segments_skip_the_crc_check(open_log: OpenLog) -> None:
    log = open_log(CONFIG)
    _fill(log, 60)
    log.close()
    everything = _read_closed(open_log)
    logs = _segment_logs(log.directory)
    # Same damage as above, but with the checkpoint in place the old segment is trusted;
    # the damage shows up only when that batch is read and verified by a client.
    _flip(logs[0], batch.HEADER_SIZE + 3)
    log = open_log(CONFIG)
    assert log.log_end_offset == everything[-1][0].next_offset
    with pytest.raises(batch.CorruptBatchError):
        read_all(log)


def test_crash_loses_only_unflushed_batches(open_log: OpenLog) -> None:
    log = open_log(CONFIG)
    _fill(log, 40)
    log.flush()
    flushed = read_all(log)
    _fill(log, 40, start_tag=40)  # rolls several segments, never flushed
    assert log.segment_count > 2
    _crash(log)
    log = open_log(CONFIG)
    _check_prefix(log, flushed)
    assert log.flushed_offset == log.log_end_offset == 120


def test_crash_right_after_a_roll_rebuilds_unsynced_indexes(open_log: OpenLog) -> None:
    log = open_log(CONFIG)
    _fill(log, 40)
    log.flush()
    _fill(log, 40, start_tag=40)
    log.flush()  # everything durable, indexes of the closed segments too
    _fill(log, 25, start_tag=80)
    sizes = log.flushed_file_sizes()
    assert any(name.endswith(".index") and size == 0 for name, size in sizes.items())
    expected = read_all(log)[:80]
    _crash(log)
    log = open_log(CONFIG)
    _check_prefix(log, expected)
    assert log.offset_for_timestamp(1079) == 237


def test_leftovers_are_cleaned_up(open_log: OpenLog, tmp_path: Path) -> None:
    log = open_log(CONFIG)
    _fill(log, 10)
    log.close()
    d = tmp_path / "p0"
    (d / "00000000000000000003.log.deleted").write_bytes(b"x")
    (d / (CHECKPOINT_NAME + ".tmp")).write_bytes(b"{")
    (d / "00000000000000009999.index").write_bytes(b"")
    (d / "notes.txt").write_bytes(b"kept")
    log = open_log(CONFIG)
    names = {p.name for p in d.iterdir()}
    assert "00000000000000000003.log.deleted" not in names
    assert CHECKPOINT_NAME + ".tmp" not in names
    assert "00000000000000009999.index" not in names
    assert "notes.txt" in names
    assert len(read_all(log)) == 10


def test_missing_middle_segment_drops_everything_after_it(open_log: OpenLog) -> None:
    log = open_log(CONFIG)
    _fill(log, 60)
    log.close()
    everything = _read_closed(open_log)
    logs = _segment_logs(log.directory)
    assert len(logs) >= 3
    for suffix in (".log", ".index", ".timeindex"):
        logs[1].with_suffix(suffix).unlink()
    log = open_log(CONFIG)
    _check_prefix(log, [x for x in everything if x[0].base_offset < int(logs[1].stem)])


def test_unreadable_checkpoint_falls_back_to_a_full_check(open_log: OpenLog) -> None:
    log = open_log(CONFIG)
    _fill(log, 30)
    log.close()
    (log.directory / CHECKPOINT_NAME).write_bytes(b"not json")
    log = open_log(CONFIG)
    assert len(read_all(log)) == 30


def test_a_damaged_leader_term_that_goes_back_drops_that_batch_and_everything_after(
        open_log: OpenLog, caplog: pytest.LogCaptureFixture) -> None:
    # The leader term is stamped outside the CRC (the broker writes it after the producer
    # computed the CRC), so recovery checks that terms never go back instead.
    log = open_log(CONFIG)
    for i in range(30):
        log.append(make_batch(3, ts_ms=1000 + i, tag=i), leader_term=2)
    log.flush()
    everything = read_all(log)
    active = _segment_logs(log.directory)[-1]
    active_base = int(active.stem)
    log.abandon()
    in_active = [(h, b) for h, b in everything if h.base_offset >= active_base]
    assert len(in_active) >= 4
    pos = sum(len(b) for _, b in in_active[:2]) + 12  # leader_term's low byte: 2 -> 0
    data = bytearray(active.read_bytes())
    assert data[pos] == 2
    data[pos] = 0
    active.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        log = open_log(CONFIG)
    keep = [x for x in everything if x[0].base_offset < in_active[2][0].base_offset]
    _check_prefix(log, keep)
    assert any("terms never go back" in r.getMessage() for r in caplog.records)
