"""The planted bug RILLET_TEST_UNSAFE_EARLY_ACK changes when an acks=all produce is answered.

A ReplicatedPartition over a fake driver whose proposals never commit: normally the producer's
future stays pending (no majority, no answer); with the switch on it resolves with the batch's
base offset as soon as the entry is in the leader's own log. The end-to-end consequence (a
kill -9 of that leader loses the acknowledged record, and the checker says so) is in
tests/integration/test_chaos_workload.py.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

import pytest

from rillet import batch as codec
from rillet.cluster.raft import Role
from rillet.node import replica
from rillet.node.replica import ReplicatedPartition
from tests.waiting import wait_for

GROUP = 7
TERM = 3


class FakeCore:
    def __init__(self) -> None:
        self.role = Role.LEADER
        self.term = TERM
        self.leader = 1
        self.last = 4  # entries 1..4 exist; the next proposal gets index 5
        self.log = self

    def last_index(self) -> int:
        return self.last


class FakeDriver:
    """Accepts proposals (the core appends them) and never commits one."""

    node_id = 1

    def __init__(self) -> None:
        self._core = FakeCore()
        self.commits: list[asyncio.Future[int]] = []

    def core(self, group_id: int) -> FakeCore:
        assert group_id == GROUP
        return self._core

    def propose(self, group_id: int, data: bytes) -> asyncio.Future[int]:
        self._core.last += 1
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.commits.append(fut)
        return fut


class FakeRaftLog:
    """The leader's local log: entries appear only when the test says they were written."""

    def __init__(self) -> None:
        self.plog = self
        self.log_start_offset = 0
        self.stored: dict[int, bytes] = {}

    def last_index(self) -> int:
        return max(self.stored, default=4)

    def term(self, index: int) -> int:
        return TERM

    def read_raft(self, lo: int, hi: int, max_bytes: int) -> list[bytes]:
        return [self.stored[lo]]

    def write(self, index: int, data: bytes, base_offset: int) -> None:
        buf = bytearray(data)
        codec.stamp(buf, base_offset, TERM, index)
        self.stored[index] = bytes(buf)


def make_partition() -> tuple[ReplicatedPartition, FakeDriver, FakeRaftLog]:
    driver, rlog = FakeDriver(), FakeRaftLog()
    part = ReplicatedPartition("t", 0, GROUP, rlog, driver,  # type: ignore[arg-type]
                               on_advance=lambda: None)
    part.applied_term = TERM
    return part, driver, rlog


def a_batch() -> bytes:
    return codec.encode([b"a", b"b"], timestamps_ms=[1, 1])


async def produce_and_append(monkeypatch: pytest.MonkeyPatch, unsafe: bool) -> Any:
    monkeypatch.setattr(replica, "UNSAFE_EARLY_ACK", unsafe)
    part, driver, rlog = make_partition()
    data = a_batch()
    answer, _ = part.produce(data)
    assert driver._core.last == 5
    await asyncio.sleep(0.02)
    assert not answer.done()  # not even in the leader's log yet
    rlog.write(5, data, base_offset=42)  # the leader appended it; no follower has it
    return answer, driver


async def test_safe_mode_waits_for_the_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    answer, driver = await produce_and_append(monkeypatch, unsafe=False)
    await asyncio.sleep(0.05)
    assert not answer.done()
    driver.commits[0].cancel()
    await wait_for(answer.done, "the answer after the proposal was dropped", 1.0)
    assert answer.cancelled()


async def test_unsafe_mode_acks_once_the_leader_appended(
        monkeypatch: pytest.MonkeyPatch) -> None:
    answer, driver = await produce_and_append(monkeypatch, unsafe=True)
    await wait_for(answer.done, "the early acknowledgement", 1.0)
    assert answer.result() == 42
    assert not driver.commits[0].done()  # acknowledged, yet not committed


def test_the_switch_is_read_from_the_environment_only() -> None:
    """Off unless the environment says exactly "1" when the module is imported."""
    if os.environ.get("RILLET_TEST_UNSAFE_EARLY_ACK") is None:
        assert replica.UNSAFE_EARLY_ACK is False
    code = "from rillet.node import replica; print(replica.UNSAFE_EARLY_ACK)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "RILLET_TEST_UNSAFE_EARLY_ACK": "1"}, check=True,
                         timeout=60)
    assert out.stdout.strip() == "True"
