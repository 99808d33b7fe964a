"""Compaction passes on a real partition log: what survives, what stays unchanged, the swap."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from rillet import batch
from rillet.client.records import decode_batches
from rillet.node.storage.compactor import CLEANED_SUFFIX, STEPS
from rillet.node.storage.log import (
    CLEANUP_COMPACT,
    CLEANUP_COMPACT_DELETE,
    LogConfig,
    PartitionLog,
)

from .helpers import FakeClock

DAY = 86_400_000
COMPACT = LogConfig(segment_bytes=600, cleanup_policy=CLEANUP_COMPACT, index_interval_bytes=100,
                    delete_retention_ms=DAY, retention_ms=1, retention_bytes=1)


def keyed(pairs: list[tuple[bytes, bytes]], ts: int) -> bytes:
    return batch.encode([v for _, v in pairs], keys=[k for k, _ in pairs],
                        timestamps_ms=[ts] * len(pairs))


def records(log: PartitionLog) -> list[batch.Record]:
    data = log.read(log.log_start_offset, 1 << 30)
    return batch.decode_range(data, log.log_start_offset)


def headers(log: PartitionLog) -> list[tuple[int, int, int, int, bool]]:
    """(base offset, offset span, Raft index, term, control) of every stored batch."""
    data = log.read(log.log_start_offset, 1 << 30)
    return [(h.base_offset, h.record_count, h.raft_index, h.leader_term, h.is_control)
            for h, _ in batch.iter_batches(data)]


def fill(log: PartitionLog, rounds: int, keys: int, clock: FakeClock) -> dict[bytes, bytes]:
    """`rounds` updates of each of `keys` keys, two records per batch; returns the latest."""
    last: dict[bytes, bytes] = {}
    for r in range(rounds):
        for k in range(0, keys, 2):
            pairs = [(b"k%d" % j, b"v%d-%d" % (j, r)) for j in (k, k + 1)]
            log.append(keyed(pairs, clock.now_ms), leader_term=1 + r // 3)
            last.update(pairs)
            clock.advance(1)
    log.flush()
    return last


def closed_end(log: PartitionLog) -> int:
    return log._segments[-1].base_offset


def test_compaction_keeps_the_latest_value_per_key_and_every_offset(
        open_log: Callable[..., PartitionLog], clock: FakeClock) -> None:
    log = open_log(COMPACT)
    last = fill(log, 10, 6, clock)
    before = records(log)
    shape = headers(log)
    stats = log.compact()
    assert stats.segments_rewritten >= 2 and stats.records_removed > 0
    after = records(log)
    # Offsets never change, and batches keep their span, Raft index and term.
    assert headers(log) == shape
    by_offset = {r.offset: r for r in before}
    assert all(by_offset[r.offset] == r for r in after)
    assert [r.offset for r in after] == sorted({r.offset for r in after})
    # Below the cleanable point one record per key; the latest of each key is always there.
    end = closed_end(log)
    cleaned = [r for r in after if r.offset < end]
    assert len({r.key for r in cleaned}) == len(cleaned)
    latest = {r.key: r for r in after}
    assert {k: r.value for k, r in latest.items()} == last
    assert log.size_bytes < sum(len(b) for b in [log.read(0, 1 << 30)]) + 1
    # A second pass has nothing to do.
    assert log.compact().skipped == "nothing new since the last pass"


def test_compacted_log_survives_reopen_and_clean_recovery(
        tmp_path: Path, clock: FakeClock) -> None:
    log = PartitionLog.open(tmp_path / "p", COMPACT, clock_ms=clock)
    fill(log, 8, 4, clock)
    log.compact()
    want, shape = records(log), headers(log)
    log.abandon()  # unclean: every segment after the recovery point is re-read in full
    log = PartitionLog.open(tmp_path / "p", COMPACT, clock_ms=clock)
    assert records(log) == want and headers(log) == shape
    log.close()
    log = PartitionLog.open(tmp_path / "p", COMPACT, clock_ms=clock)  # clean: indexes loaded
    assert records(log) == want and headers(log) == shape
    for r in want:  # every surviving offset is found through the rebuilt indexes
        got = batch.decode_range(log.read(r.offset, 1), r.offset)
        assert got[0] == r
    log.close()


def test_tombstones_go_only_after_delete_retention(
        open_log: Callable[..., PartitionLog], clock: FakeClock) -> None:
    log = open_log(COMPACT)
    fill(log, 3, 4, clock)
    tomb_ts = clock.now_ms
    log.append(keyed([(b"k2", b""), (b"k3", b"")], tomb_ts))
    fill(log, 6, 2, clock)  # k0 and k1 only: pushes the tombstones into a closed segment
    log.compact()
    by_key = {r.key: r for r in records(log)}
    assert by_key[b"k2"].value == b"" and by_key[b"k3"].value == b""
    assert [r.key for r in records(log)].count(b"k2") == 1  # older values are gone
    assert log.compact(tomb_ts + DAY - 1).tombstones_removed == 0
    assert b"k2" in {r.key for r in records(log)}
    stats = log.compact(tomb_ts + DAY)
    assert stats.tombstones_removed == 2
    keys = {r.key for r in records(log)}
    assert {b"k2", b"k3"}.isdisjoint(keys) and {b"k0", b"k1"} <= keys


def test_retention_never_deletes_a_compact_only_topic(
        open_log: Callable[..., PartitionLog], clock: FakeClock) -> None:
    log = open_log(COMPACT)
    fill(log, 6, 4, clock)
    clock.advance(10 * DAY)
    assert log.enforce_retention() == 0
    mixed = open_log(LogConfig(segment_bytes=600, cleanup_policy=CLEANUP_COMPACT_DELETE,
                               retention_ms=1), directory=log.directory.parent / "mixed")
    fill(mixed, 6, 4, clock)
    clock.advance(10 * DAY)
    assert mixed.enforce_retention() > 0


@pytest.mark.parametrize("step", STEPS)
def test_a_crash_at_each_swap_step_leaves_old_or_new_segment(
        tmp_path: Path, clock: FakeClock, step: str) -> None:
    log = PartitionLog.open(tmp_path / "p", COMPACT, clock_ms=clock)
    last = fill(log, 10, 4, clock)
    before = {r.offset: r for r in records(log)}
    shape = headers(log)
    crashed_at: list[int] = []

    def crash(at: str, base: int) -> None:
        if at == step and not crashed_at and base > 0:
            crashed_at.append(base)
            raise SystemExit("simulated crash")

    with pytest.raises(SystemExit):
        log.compact(hook=crash)
    log.abandon()
    leftovers = list((tmp_path / "p").glob("*" + CLEANED_SUFFIX))
    assert len(leftovers) == (1 if step in STEPS[:2] else 0)  # as a crash leaves them
    log = PartitionLog.open(tmp_path / "p", COMPACT, clock_ms=clock)
    assert not list((tmp_path / "p").glob("*" + CLEANED_SUFFIX))
    after = records(log)
    assert headers(log) == shape
    assert all(before[r.offset] == r for r in after)
    assert {r.key: r.value for r in after} == last
    # The segment being swapped is either wholly old or wholly new; the one before it is new.
    first = [r for r in after if r.offset < crashed_at[0]]
    assert len({r.key for r in first}) == len(first)
    # A later pass finishes the job.
    log.compact()
    end = closed_end(log)
    cleaned = [r for r in records(log) if r.offset < end]
    assert len({r.key for r in cleaned}) == len(cleaned)
    log.close()


def test_reads_and_appends_run_during_a_pass(
        open_log: Callable[..., PartitionLog], clock: FakeClock) -> None:
    log = open_log(COMPACT)
    fill(log, 20, 8, clock)
    shape = headers(log)
    done = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            log.compact()
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            done.set()

    t = threading.Thread(target=run)
    t.start()
    appended = 0
    while not done.is_set() or appended < 5:
        log.append(keyed([(b"x", b"y")], clock.now_ms))
        appended += 1
        recs = records(log)  # every read sees whole batches with intact CRCs
        assert [r.offset for r in recs] == sorted({r.offset for r in recs})
    t.join()
    assert not errors
    assert headers(log)[:len(shape)] == shape


def test_compacted_batches_decode_with_true_offsets() -> None:
    data = bytearray(keyed([(b"a", b"1"), (b"b", b"2"), (b"a", b"3"), (b"c", b"")], 10))
    batch.stamp(data, 100, 2, 7)
    compacted = batch.compact_records(data, [1, 2])
    header = batch.verify(compacted)
    assert header.is_compacted and header.record_count == 4 and header.raft_index == 7
    assert header.next_offset == 104
    assert [(r.offset, r.key, r.value) for r in batch.decode(compacted)] == [
        (101, b"b", b"2"), (102, b"a", b"3")]
    # Again: compacting a compacted batch keeps the true offsets.
    twice = batch.compact_records(compacted, [1])
    assert [r.offset for r in batch.decode(twice)] == [102]
    empty = batch.compact_records(compacted, [])
    assert batch.decode(empty) == [] and batch.verify(empty).next_offset == 104
    # The consumer's column decoder: true offsets, and positions resume past removed ones.
    (rb,) = decode_batches("t", 0, compacted, 0)
    assert rb.offsets == [101, 102] and [r.offset for r in rb] == [101, 102]
    assert rb.first_offset == 101 and rb.next_offset == 104 and len(rb) == 2
    (rb,) = decode_batches("t", 0, compacted, 102)
    assert [r.offset for r in rb] == [102] and rb.next_offset == 104
    (rb,) = decode_batches("t", 0, compacted, 0, 102)
    assert [r.offset for r in rb] == [101] and rb.next_offset == 102
    assert decode_batches("t", 0, empty, 0) == []
    assert batch.decode_range(bytes(compacted) + bytes(empty), 102) == batch.decode(twice)


def test_producers_may_not_send_compacted_batches() -> None:
    compacted = batch.compact_records(keyed([(b"a", b"1"), (b"a", b"2")], 1), [1])
    with pytest.raises(batch.InvalidBatchError, match="compactor"):
        batch.validate(compacted)
    # The column alone, without the attribute bit, is refused too.
    from rillet.api.v1 import records_pb2
    body = records_pb2.Records(values=[b"x"], timestamp_deltas_ms=[0], offset_deltas=[0])
    raw = bytearray(batch.encode([b"x"], timestamps_ms=[1])[:batch.HEADER_SIZE])
    raw += body.SerializeToString()
    import struct
    struct.pack_into("<i", raw, 8, len(raw) - batch.LENGTH_PREFIX_SIZE)
    struct.pack_into("<I", raw, batch.CRC_FIELD, batch.crc32c(bytes(raw[batch.CRC_START:])))
    with pytest.raises(batch.InvalidBatchError, match="offset_deltas"):
        batch.validate(raw)


def test_bad_offset_deltas_are_rejected_by_readers() -> None:
    from rillet.api.v1 import records_pb2
    header = batch.parse_header(batch.compact_records(keyed([(b"a", b"1"), (b"a", b"2")], 1),
                                                      [1]))
    bad = records_pb2.Records(values=[b"x", b"y"], timestamp_deltas_ms=[0, 0],
                              offset_deltas=[1, 1])
    with pytest.raises(batch.InvalidBatchError, match="out of order"):
        batch.record_offsets(header, bad)
    beyond = records_pb2.Records(values=[b"x"], timestamp_deltas_ms=[0], offset_deltas=[2])
    with pytest.raises(batch.InvalidBatchError, match="span"):
        batch.record_offsets(header, beyond)


async def test_the_compactor_loop_cleans_compact_logs_only_and_survives_failures(
        open_log: Callable[..., PartitionLog], clock: FakeClock, tmp_path: Path) -> None:
    from rillet.node.storage.compactor import Compactor

    compact = open_log(COMPACT)
    plain = open_log(LogConfig(segment_bytes=600), directory=tmp_path / "plain")
    broken = open_log(COMPACT, directory=tmp_path / "broken")
    for lg in (compact, plain, broken):
        fill(lg, 6, 4, clock)
    broken.close()  # its pass raises StorageError: logged, the others still run
    plain_size = plain.size_bytes
    compactor = Compactor(lambda: [("broken", broken), ("c", compact), ("p", plain)],
                          interval_s=3600, clock_ms=clock)
    compactor.start()
    compactor.trigger()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10  # tests.waiting is not importable from this package
    while compactor.rounds < 1:
        assert loop.time() < deadline, "timed out waiting for a compactor round"
        await asyncio.sleep(0.01)
    await compactor.stop()
    assert compactor.totals.segments_rewritten >= 1
    assert plain.size_bytes == plain_size
    end = closed_end(compact)
    cleaned = [r for r in records(compact) if r.offset < end]
    assert len({r.key for r in cleaned}) == len(cleaned)
    await compactor.stop()  # idempotent
