"""Group commit: acks=all waits for the fsync, many batches share one, failures fail waiters.

Runs Partition and GroupCommitter against a scripted log whose flush blocks until the test
releases it, so "not acknowledged before the fsync" is observed directly rather than inferred.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from rillet.node.errors import StorageFailureError, UnknownTopicError
from rillet.node.partition import GroupCommitter, Partition
from rillet.node.storage.log import AppendInfo
from tests.waiting import wait_for


class ScriptedLog:
    """Just enough of PartitionLog: appends count records; flush waits for `release`."""

    def __init__(self) -> None:
        self.log_end_offset = 0
        self.log_start_offset = 0
        self.flushed_offset = 0
        self.flush_calls = 0
        self.release = threading.Event()
        self.fail_next_flush: Exception | None = None
        self.closed = False

    def append(self, batch: bytes) -> AppendInfo:
        base = self.log_end_offset
        self.log_end_offset += len(batch)  # one "record" per byte keeps the test arithmetic easy
        return AppendInfo(base, self.log_end_offset - 1, 0)

    def flush(self) -> int:
        end = self.log_end_offset  # what was appended when the fsync began
        self.flush_calls += 1
        assert self.release.wait(10), "test never released the flush"
        if self.fail_next_flush is not None:
            exc, self.fail_next_flush = self.fail_next_flush, None
            raise exc
        self.flushed_offset = end
        return end

    def close(self) -> None:
        self.closed = True


async def wait_until(predicate, timeout_s: float = 5.0) -> None:
    """Poll a condition the committer's worker thread will make true, under a deadline."""
    await wait_for(predicate, "the committer", timeout_s, interval_s=0.001)


@pytest.fixture
async def committer():
    c = GroupCommitter()
    c.start()
    yield c
    await c.stop()


def make_partition(committer: GroupCommitter, plog: ScriptedLog, wakeups: list[int]):
    return Partition("t", 0, plog, on_append=committer.mark_dirty,  # type: ignore[arg-type]
                     on_advance=lambda: wakeups.append(1))


async def test_acks_all_resolves_only_after_the_fsync_covering_it(committer) -> None:
    plog, wakeups = ScriptedLog(), []
    part = make_partition(committer, plog, wakeups)
    _, fut = part.append(b"abc", wait_durable=True)
    assert fut is not None
    await wait_until(lambda: plog.flush_calls == 1)
    # The fsync is running: not acknowledged, not visible to consumers.
    await asyncio.sleep(0.01)
    assert not fut.done() and part.high_watermark == 0 and not wakeups
    # Appended during that fsync: a later round covers it.
    _, fut2 = part.append(b"de", wait_durable=True)
    _, fut3 = part.append(b"f", wait_durable=True)
    plog.release.set()
    await asyncio.wait_for(fut, 5)
    assert part.high_watermark in (3, 6)
    await asyncio.wait_for(asyncio.gather(fut2, fut3), 5)
    assert part.high_watermark == 6
    # Two batches appended during one fsync shared the next one.
    assert plog.flush_calls == 2
    assert wakeups


async def test_acks_leader_answers_at_once_but_is_flushed_promptly(committer) -> None:
    plog, wakeups = ScriptedLog(), []
    plog.release.set()
    part = make_partition(committer, plog, wakeups)
    _, fut = part.append(b"xy", wait_durable=False)
    assert fut is None
    await wait_until(lambda: part.high_watermark == 2)


async def test_failed_fsync_fails_waiters_and_refuses_later_appends(committer) -> None:
    plog, wakeups = ScriptedLog(), []
    plog.fail_next_flush = OSError(5, "Input/output error")
    plog.release.set()
    part = make_partition(committer, plog, wakeups)
    _, fut = part.append(b"abc", wait_durable=True)
    with pytest.raises(StorageFailureError, match="Input/output error"):
        await asyncio.wait_for(fut, 5)
    assert part.high_watermark == 0
    with pytest.raises(StorageFailureError, match="cannot be written"):
        part.append(b"z", wait_durable=True)


async def test_close_fails_waiters_with_the_reason(committer) -> None:
    plog, wakeups = ScriptedLog(), []
    part = make_partition(committer, plog, wakeups)
    _, fut = part.append(b"abc", wait_durable=True)
    await wait_until(lambda: plog.flush_calls == 1)
    part.close(UnknownTopicError("topic 't' was deleted"))
    plog.release.set()
    with pytest.raises(UnknownTopicError):
        await asyncio.wait_for(fut, 5)
    assert plog.closed
    with pytest.raises(UnknownTopicError):
        part.append(b"z", wait_durable=False)
