"""Run one chaos schedule against a fresh local cluster and judge it.

`run_schedule(seed, duration_s, workdir)`:

1. starts N nodes (default 3) whose peer traffic runs through the fault proxies, creates the
   topic (3 partitions, replication factor 3; the workload writes with acks=all, idempotent);
2. runs the workload (rillet.chaos.workload) through all three phases;
3. steady phase: no faults; fault phase: the schedule's faults one after the other, each
   healed after its hold; then everything is healed (links, paused and stopped nodes);
4. recovery phase: waits (bounded) until every partition has an acknowledged write that was
   sent after the heal, then lets the workload run out the phase;
5. stops the workload, reads every partition back (final read), runs the checker, and writes
   into RUN_DIR (WORKDIR/seed-<seed>): history.json, summary.json, timeline.svg, the node logs
   and data.

The unavailability window is the longest stretch, from the start of the workload to its stop,
in which no write was acknowledged on any partition. Harness errors (a node that would not
restart, a recovery that never came) are reported in the summary and make the run not ok:
an unavailable cluster after the heal is a failure even when no data was lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rillet.chaos.checker import Report, check
from rillet.chaos.cluster import ChaosCluster
from rillet.chaos.faults import KINDS, ActiveFault, FaultContext
from rillet.chaos.history import History
from rillet.chaos.schedule import Schedule

log = logging.getLogger(__name__)

TOPIC = "chaos"
#: How long the recovery phase may take to see every partition acknowledge a write again.
RECOVERY_TIMEOUT_S = 45.0
WORKLOAD_STOP_TIMEOUT_S = 30.0
FINAL_READ_TIMEOUT_S = 60.0


@dataclass
class RunResult:
    """What one run found: the checker's report plus the harness's own figures."""

    seed: int
    run_dir: Path
    report: Report
    summary: dict[str, Any]
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No safety violation, and the cluster recovered (no harness error)."""
        return self.report.ok and not self.errors


def unavailability(history: History, start_s: float, end_s: float,
                   partition: int | None = None) -> tuple[float, float, float]:
    """(longest window without an acknowledged write, its start, its end) in [start, end],
    on any partition, or on `partition` only."""
    acks = sorted(op.end_s for op in history.ops
                  if op.kind == "write" and op.outcome == "ok" and start_s <= op.end_s <= end_s
                  and (partition is None or op.partition == partition))
    points = [start_s, *acks, end_s]
    best = (0.0, start_s, start_s)
    for a, b in itertools.pairwise(points):
        if b - a > best[0]:
            best = (b - a, a, b)
    return best


async def _wait_progress(history: History, partitions: int, since_s: float,
                         timeout_s: float) -> float | None:
    """Seconds until every partition has an acknowledged write sent after `since_s`."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        done = {op.partition for op in history.ops if op.kind == "write"
                and op.outcome == "ok" and op.start_s >= since_s}
        if len(done) >= partitions:
            return time.monotonic() - t0
        await asyncio.sleep(0.1)
    return None


async def heal_everything(cluster: ChaosCluster, active: Sequence[ActiveFault],
                          history: History, errors: list[str]) -> None:
    """Heal what is still active, then make sure every link is healthy and every node runs."""
    for fault in active:
        try:
            await fault.heal(history)
        except Exception as exc:  # keep healing the rest; the error is reported
            errors.append(f"healing {fault.event.kind} on {fault.event.target}: {exc!r}")
    cluster.proxies.heal()
    for node in cluster.nodes:
        if node.paused:
            cluster.resume(node.node_id)
        if not node.running:
            try:
                await cluster.restart(node.node_id)
            except Exception as exc:
                errors.append(f"restarting node {node.node_id}: {exc!r}")


async def run_schedule(seed: int, duration_s: float, workdir: Path, *, nodes: int = 3,
                       partitions: int = 3, schedule: Schedule | None = None,
                       kinds: Sequence[str] | None = None, plant_early_ack: bool = False,
                       writers: int = 2, readers: int = 1, rate_per_writer: float = 100.0,
                       require_recovery: bool = True) -> RunResult:
    """Run one schedule (generated from `seed` unless given) and return what it found.

    `require_recovery=False` skips waiting for progress after the heal (and does not count
    its absence as an error): for the planted bug, whose lost writes leave the idempotent
    producer's sequence numbers with a gap that stalls a partition until delivery times out.
    """
    from rillet.chaos.workload import final_read, run_workload

    schedule = schedule or (Schedule.generate(seed, duration_s, kinds) if kinds
                            else Schedule.generate(seed, duration_s))
    run_dir = workdir / f"seed-{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    log.info("%s", schedule.describe())
    rng = schedule.choices_rng()
    cluster = ChaosCluster(run_dir, nodes,
                           module="rillet.chaos.planted" if plant_early_ack else "rillet.node")
    history = History(meta={"seed": seed, "topic": TOPIC, "partitions": partitions,
                            "nodes": nodes, "planted_early_ack": plant_early_ack,
                            "schedule": schedule.to_dict()})
    errors: list[str] = []
    phases: dict[str, float] = {}
    recovered_after: float | None = None
    ctx = FaultContext(cluster, history, TOPIC, partitions)
    stop = asyncio.Event()
    workload: asyncio.Task[None] | None = None
    wall0 = time.monotonic()
    try:
        await cluster.start()
        rf = min(3, nodes)
        await cluster.create_topic(TOPIC, partitions, rf)
        phases["workload_start"] = history.clock()
        workload = asyncio.create_task(run_workload(
            cluster.bootstrap, TOPIC, partitions, history, stop, writers=writers,
            readers=readers, rate_per_writer=rate_per_writer), name="chaos-workload")
        await asyncio.sleep(schedule.steady_s)
        phases["fault_start"] = history.clock()
        fault_end = phases["fault_start"] + schedule.fault_s
        active: list[ActiveFault] = []
        try:
            for planned in schedule.faults:
                if not schedule.run_all and history.clock() >= fault_end:
                    break
                if workload.done():
                    errors.append("the workload ended during the fault phase")
                    break
                fault = await KINDS[planned.kind](ctx, rng)
                if fault is None:
                    log.info("fault %s: nothing to act on right now; skipped", planned.kind)
                    await asyncio.sleep(planned.gap_s)
                    continue
                active.append(fault)
                await asyncio.sleep(planned.hold_s)
                await fault.heal(history)
                active.remove(fault)
                await asyncio.sleep(planned.gap_s)
        except Exception as exc:
            log.exception("fault phase stopped")
            errors.append(f"fault phase: {exc!r}")
        finally:
            await heal_everything(cluster, active, history, errors)
        phases["heal"] = history.clock()
        if require_recovery:
            recovered_after = await _wait_progress(
                history, partitions, phases["heal"], max(RECOVERY_TIMEOUT_S,
                                                         schedule.recovery_s))
        if require_recovery and recovered_after is None:
            errors.append(f"no acknowledged write on every partition within "
                          f"{RECOVERY_TIMEOUT_S:.0f}s of the heal")
        rest = schedule.recovery_s - (history.clock() - phases["heal"])
        if rest > 0:
            await asyncio.sleep(rest)
        phases["workload_stop"] = history.clock()
        stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(workload), WORKLOAD_STOP_TIMEOUT_S)
        except TimeoutError:
            errors.append(f"the workload did not stop within {WORKLOAD_STOP_TIMEOUT_S:.0f}s")
            workload.cancel()
            with contextlib.suppress(BaseException):
                await workload
        try:
            await final_read(cluster.bootstrap, TOPIC, partitions, history,
                             FINAL_READ_TIMEOUT_S)
            phases["final_read_done"] = history.clock()
        except Exception as exc:
            errors.append(f"final read: {exc!r}")
    except Exception as exc:
        log.exception("chaos run %d failed", seed)
        errors.append(f"harness: {exc!r}")
    finally:
        stop.set()
        if workload is not None and not workload.done():
            workload.cancel()
            with contextlib.suppress(BaseException):
                await workload
        cluster.close()
    report = check(history)
    start = phases.get("workload_start", 0.0)
    end = phases.get("workload_stop", history.clock())
    longest, w_start, w_end = unavailability(history, start, end)
    faults_by_kind = Counter(f.kind for f in history.faults)
    summary = {
        "seed": seed,
        "ok": report.ok and not errors,
        "safety_ok": report.ok,
        "errors": errors,
        "duration_s": round(time.monotonic() - wall0, 2),
        "phases_s": {k: round(v, 2) for k, v in phases.items()},
        "recovered_after_heal_s": None if recovered_after is None else round(
            recovered_after, 2),
        "longest_unavailability_s": round(longest, 3),
        "longest_unavailability_at_s": [round(w_start, 2), round(w_end, 2)],
        "longest_unavailability_by_partition_s": {
            str(p): round(unavailability(history, start, end, p)[0], 3)
            for p in range(partitions)},
        "faults_by_kind": dict(sorted(faults_by_kind.items())),
        "faults": [{"kind": f.kind, "target": f.target, "start_s": round(f.start_s, 2),
                    "end_s": None if f.end_s is None else round(f.end_s, 2),
                    "detail": f.detail} for f in history.faults],
        "notes": ctx.notes,
        "planted_early_ack": plant_early_ack,
        "report": report.to_dict(),
        "run_dir": str(run_dir),
    }
    history.meta["summary_errors"] = errors
    history.to_json(run_dir / "history.json")
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    try:
        from rillet.chaos.timeline import render_svg
        render_svg(history, run_dir / "timeline.svg", report)
    except Exception as exc:  # a picture must never hide the verdict
        log.warning("timeline not drawn: %r", exc)
    log.info("seed %d: %s; %d ops, %d acknowledged, faults %s, longest unavailability %.2fs, "
             "violations %s%s", seed, "ok" if summary["ok"] else "NOT OK", report.operations,
             report.acknowledged, dict(faults_by_kind), longest, report.violations or "none",
             f", errors {errors}" if errors else "")
    return RunResult(seed, run_dir, report, summary, errors)


def seeds_from_env(default: Sequence[int], var: str = "RILLET_CHAOS_SEEDS") -> list[int]:
    """Seeds for a sweep: RILLET_CHAOS_SEEDS=100 (0..99), =5-9 (5..9), =1,7,42; else default."""
    raw = os.environ.get(var, "").strip()
    if not raw:
        return list(default)
    if "," in raw:
        return [int(x) for x in raw.split(",") if x.strip()]
    if "-" in raw:
        lo, hi = raw.split("-", 1)
        return list(range(int(lo), int(hi) + 1))
    return list(range(int(raw)))


def aggregate(root: Path) -> dict[str, Any]:
    """Add up every RUN/summary.json under `root` (a sweep's output folder).

    Totals of operations, acknowledged writes, faults by kind and anomalies by kind; the
    runs that were not ok (with their errors); the longest unavailability window of all runs
    and the seed it came from: on any partition (no write acknowledged anywhere) and on one
    partition (the longest single-partition gap of a run, its failover time).
    """
    runs = sorted(root.rglob("summary.json"))
    out: dict[str, Any] = {"runs": 0, "ok_runs": 0, "operations": 0, "writes": 0,
                           "acknowledged": 0,
                           "failed": 0, "unknown": 0, "faults_by_kind": Counter(),
                           "anomalies": Counter(), "not_ok": [],
                           "longest_unavailability_s": 0.0, "longest_unavailability_seed": None,
                           "unavailability_p50_s": 0.0, "unavailability_p95_s": 0.0}
    out["longest_partition_unavailability_s"] = 0.0
    out["longest_partition_unavailability_seed"] = None
    windows: list[float] = []
    part_windows: list[float] = []
    for path in runs:
        s = json.loads(path.read_text())
        totals = s["report"]["totals"]
        out["runs"] += 1
        out["ok_runs"] += 1 if s["ok"] else 0
        for k in ("operations", "writes", "acknowledged", "failed", "unknown"):
            out[k] += totals.get(k, 0)
        out["faults_by_kind"].update(s["faults_by_kind"])
        out["anomalies"].update(s["report"]["anomalies"])
        if not s["ok"]:
            out["not_ok"].append({"seed": s["seed"], "violations": s["report"]["violations"],
                                  "errors": s["errors"], "run_dir": s["run_dir"]})
        per_part = s.get("longest_unavailability_by_partition_s") or {}
        if per_part:
            pw = max(float(v) for v in per_part.values())
            part_windows.append(pw)
            if pw > out["longest_partition_unavailability_s"]:
                out["longest_partition_unavailability_s"] = pw
                out["longest_partition_unavailability_seed"] = s["seed"]
        w = float(s["longest_unavailability_s"])
        windows.append(w)
        if w > out["longest_unavailability_s"]:
            out["longest_unavailability_s"], out["longest_unavailability_seed"] = w, s["seed"]
    if windows:
        windows.sort()
        out["unavailability_p50_s"] = windows[len(windows) // 2]
        out["unavailability_p95_s"] = windows[min(len(windows) - 1,
                                                  int(0.95 * len(windows)))]
    if part_windows:
        part_windows.sort()
        out["partition_unavailability_p50_s"] = part_windows[len(part_windows) // 2]
    out["faults_total"] = sum(out["faults_by_kind"].values())
    out["faults_by_kind"] = dict(sorted(out["faults_by_kind"].items()))
    out["anomalies"] = dict(out["anomalies"])
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m rillet.chaos.runner summarize DIR`: the sweep's totals as JSON."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m rillet.chaos.runner")
    sub = parser.add_subparsers(dest="cmd", required=True)
    summ = sub.add_parser("summarize", help="add up the summary.json files under DIR")
    summ.add_argument("dir", type=Path)
    args = parser.parse_args(argv)
    result = aggregate(args.dir)
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0 if result["runs"] and not result["not_ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
