"""Fault-injection runs on real 3-node clusters (issue 6), judged by the chaos checker.

- test_short_schedule: a couple of fixed seeds of a short random schedule (default suite).
- test_sweep: many seeds (`RILLET_CHAOS_SEEDS=100`, or `=5-9`, `=1,7`), slow-marked; each
  run's summary.json and timeline.svg stay in pytest's tmp dir, and a one-line verdict per seed
  is logged. RILLET_CHAOS_DISK=0 leaves disk damage out of the kinds drawn.
- test_planted_early_ack_loses_writes: with the planted bug on, a leader that appended alone
  (its followers frozen) acknowledges; kill -9 it, and the checker must report lost writes.
- test_corrupt_follower_refetches: a follower's segment damaged while it is down is found on
  restart, cut, fetched again, and never served.

Every process is started by rillet.chaos.cluster and stopped there by PID (the runner's
`finally`, atexit as a last resort). Every wait has a deadline.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import pytest

from rillet.chaos.cluster import ChaosCluster
from rillet.chaos.faults import (
    DISK_KINDS,
    RANDOM_KINDS,
    FaultContext,
    corrupt_follower_segment,
    describe_partition,
    recovery_lines,
    wait_caught_up,
)
from rillet.chaos.history import History
from rillet.chaos.runner import run_schedule, seeds_from_env
from rillet.chaos.schedule import PlannedFault, Schedule
from rillet.client import Producer, Replay

pytestmark = [pytest.mark.chaos, pytest.mark.integration]
log = logging.getLogger(__name__)

SHORT_SEEDS = [11, 12]
SHORT_DURATION_S = 12.0
SWEEP_DURATION_S = float(os.environ.get("RILLET_CHAOS_DURATION", "20"))


def _verdict(result_summary: dict[str, object]) -> str:
    return (f"seed {result_summary['seed']}: ok={result_summary['ok']} "
            f"faults={result_summary['faults_by_kind']} "
            f"unavailable={result_summary['longest_unavailability_s']}s "
            f"errors={result_summary['errors']}")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", SHORT_SEEDS)
async def test_short_schedule(seed: int, tmp_path: Path) -> None:
    result = await run_schedule(seed, SHORT_DURATION_S, tmp_path)
    log.info("%s", _verdict(result.summary))
    assert result.report.acknowledged > 0
    assert result.report.final_read
    assert result.ok, (f"{_verdict(result.summary)}\nviolations "
                       f"{result.report.to_json()}\nrun in {result.run_dir}")
    assert (result.run_dir / "summary.json").is_file()
    assert (result.run_dir / "timeline.svg").is_file()


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("seed", seeds_from_env(range(100, 110)))
async def test_sweep(seed: int, tmp_path: Path) -> None:
    kinds = tuple(k for k in RANDOM_KINDS
                  if os.environ.get("RILLET_CHAOS_DISK") != "0" or k not in DISK_KINDS)
    out = Path(os.environ.get("RILLET_CHAOS_OUT", str(tmp_path)))
    result = await run_schedule(seed, SWEEP_DURATION_S, out, kinds=kinds)
    log.info("%s", _verdict(result.summary))
    assert result.ok, f"{_verdict(result.summary)}\nrun in {result.run_dir}"


@pytest.mark.timeout(120)
async def test_planted_early_ack_loses_writes(tmp_path: Path) -> None:
    """The checker's proof: the same fault is harmless without the bug (test_freeze_...)."""
    schedule = Schedule.scripted(
        7, [PlannedFault("freeze-followers-kill-leader", hold_s=2.0, gap_s=0.5)])
    result = await run_schedule(7, schedule.duration_s, tmp_path, schedule=schedule,
                                plant_early_ack=True, require_recovery=False)
    assert not result.report.ok
    assert result.report.total("lost") > 0, result.report.to_json()


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_freeze_followers_kill_leader_is_safe_without_the_bug(tmp_path: Path) -> None:
    schedule = Schedule.scripted(
        7, [PlannedFault("freeze-followers-kill-leader", hold_s=2.0, gap_s=0.5)])
    result = await run_schedule(7, schedule.duration_s, tmp_path, schedule=schedule)
    assert result.report.ok, result.report.to_json()
    assert result.report.total("lost") == 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["flip", pytest.param("truncate", marks=pytest.mark.slow)])
async def test_corrupt_follower_refetches(mode: str, tmp_path: Path) -> None:
    """Damage a follower's newest segment while it is down (flip a CRC-covered byte of the
    last batch, or cut the file in its second half), restart it: it finds the damage on open,
    cuts it, fetches the lost entries from the leader, and then serves exactly what the
    others hold."""
    topic, values = "damaged", [f"v{i}".encode() for i in range(300)]
    cluster = ChaosCluster(tmp_path / "run", 3)
    try:
        await cluster.start()
        await cluster.create_topic(topic, 1, 3)
        async with Producer(cluster.bootstrap, acks="all") as producer:
            for chunk in range(0, len(values), 10):
                handles = [await producer.send(topic, v, partition=0)
                           for v in values[chunk:chunk + 10]]
                for h in handles:
                    await h
        ctx = FaultContext(cluster, History(), topic, 1)
        fault = await corrupt_follower_segment(ctx, random.Random(3), mode=mode,
                                               crc_covered=True, partition=0)
        assert fault is not None
        node = int(fault.event.target.split()[-1])
        assert ("flipped byte" if mode == "flip" else "truncated") in fault.event.detail
        await cluster.restart(node)
        assert recovery_lines(cluster, node), cluster.node(node).log_tail(40)
        note = await wait_caught_up(cluster, node, topic, 0, timeout_s=15.0)
        assert note.startswith("caught up"), note + "\n" + cluster.node(node).log_tail(40)
        desc = await describe_partition(cluster.node(node).address, topic, 0)
        assert desc is not None and desc.high_watermark == len(values)
        # Read the partition through the damaged node only: every value, each once, in order.
        got: list[bytes] = []
        async with Replay(cluster.node(node).address, topic, start="earliest", end="latest",
                          partitions=[0]) as replay:
            async for b in replay.batches():
                got.extend(b.values)
        assert got == values
    finally:
        cluster.close()
