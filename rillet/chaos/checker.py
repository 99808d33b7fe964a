"""Judge a chaos run from its History: what the log promised against what it holds.

`check(history)` returns a `Report`; `python -m rillet.chaos.checker HISTORY.json [--svg OUT]`
prints the report as JSON (and draws the timeline) and exits 1 when a safety property was
violated, 2 when the history cannot be read.

Terms. A write is *acknowledged* when its Op outcome is "ok". The *final log* of a partition
is what the final read (reader -1, `workload.final_read`) saw: offset -> value. If the history
has no final read at all, every read stands in for it and `Report.final_read` is False (then
"lost" means "never read by anyone", a weaker check). A value's *log offset* is the offset at
which it appears in the final log (else in any read). Values are unique per run, so a value
names one write.

Safety anomalies, per partition (any one makes `Report.ok` False):

- lost: an acknowledged write whose value is absent from the partition's final log.
- read_then_lost: a value a workload reader saw (readers see only committed records) that is
  absent from the final log of its partition, whatever its write's outcome: committed data
  went away. An acknowledged one counts as lost too. Needs a final read.
- duplicate: a value that appears at two or more different offsets (in any reads, this
  partition or another), i.e. stored twice.
- two_values_at_offset: an offset at which two reads (any readers, continuous or final) saw
  different values: committed data changed under a reader.
- reordered: two acknowledged writes a and b to one partition where a's acknowledgement
  arrived before b was sent (a.end_s < b.start_s) but b's log offset is lower than a's. This
  holds across writers, not only within one: the log is linearizable, so real-time order of
  acknowledgement must be log order. Reported once per b, naming the a with the highest
  offset.
- non_monotonic_reads: one reader's successive records of a partition where the offset does
  not increase (goes backwards, or repeats).
- offset_mismatch: an acknowledged write whose acknowledged offset differs from its log offset
  (the client was told the wrong place). Writes acknowledged without an offset (an idempotent
  resend answered "duplicate, offset unknown") are not compared.
- failed_landed: a write recorded as definitely failed whose value is in the log.
- unexpected_value: a value read that no write in the history produced (or produced for
  another partition).

Information, not violations:

- unknown_landed / unknown_not_landed: writes with outcome "unknown" whose value is / is not
  in the final log. Both are allowed; the split shows how often the client could not tell.
"""

from __future__ import annotations

import argparse
import bisect
import json
import logging
import sys
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rillet.chaos.history import FINAL_READER, History, Op, Read

log = logging.getLogger(__name__)

SAFETY = ("lost", "read_then_lost", "duplicate", "two_values_at_offset", "reordered",
          "non_monotonic_reads", "offset_mismatch", "failed_landed", "unexpected_value")
INFO = ("unknown_landed", "unknown_not_landed")
ANOMALIES = SAFETY + INFO
#: Examples kept per anomaly and partition: enough to start debugging, short enough to print.
MAX_EXAMPLES = 5


@dataclass
class PartitionReport:
    """One partition's figures and anomalies (counts by name, a few examples each)."""

    partition: int
    acknowledged: int = 0
    failed: int = 0
    unknown: int = 0
    final_log_records: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ANOMALIES, 0))
    examples: dict[str, list[str]] = field(default_factory=dict)
    #: Every lost value (not only the examples), for the timeline's marks; not in to_dict.
    lost_values: list[str] = field(default_factory=list)

    def add(self, anomaly: str, example: str) -> None:
        self.counts[anomaly] += 1
        kept = self.examples.setdefault(anomaly, [])
        if len(kept) < MAX_EXAMPLES:
            kept.append(example)

    def to_dict(self) -> dict[str, Any]:
        return {
            "acknowledged": self.acknowledged, "failed": self.failed, "unknown": self.unknown,
            "final_log_records": self.final_log_records,
            "anomalies": {name: n for name, n in self.counts.items() if n},
            "examples": {k: v for k, v in self.examples.items() if v},
        }


@dataclass
class Report:
    """The verdict on a run. `ok` is False when any SAFETY anomaly was found."""

    partitions: dict[int, PartitionReport]
    operations: int
    writes: int
    acknowledged: int
    failed: int
    unknown: int
    reads: int
    faults: int
    final_read: bool
    #: Consumer sessions of the workload's readers ("read" Ops) that broke off with an error.
    read_errors: int = 0

    def total(self, anomaly: str) -> int:
        return sum(p.counts[anomaly] for p in self.partitions.values())

    @property
    def totals(self) -> dict[str, int]:
        return {name: self.total(name) for name in ANOMALIES}

    @property
    def violations(self) -> list[str]:
        return [name for name in SAFETY if self.total(name)]

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "violations": self.violations,
            "totals": {
                "operations": self.operations, "writes": self.writes,
                "acknowledged": self.acknowledged, "failed": self.failed,
                "unknown": self.unknown, "reads": self.reads, "faults": self.faults,
                "read_errors": self.read_errors,
            },
            "final_read": self.final_read,
            "anomalies": self.totals,
            "partitions": {str(p): r.to_dict() for p, r in sorted(self.partitions.items())},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _fmt(op: Op) -> str:
    return (f"{op.value} (writer {op.process}, sent {op.start_s:.3f}s, "
            f"answered {op.end_s:.3f}s)")


def check(history: History) -> Report:
    """Check every property in the module docstring; see there for the exact definitions."""
    ops = history.ops
    reads = history.reads
    writes = [o for o in ops if o.kind == "write"]
    has_final = any(r.reader == FINAL_READER for r in reads)
    final = [r for r in reads if r.reader == FINAL_READER] if has_final else reads

    partitions = sorted({o.partition for o in writes} | {r.partition for r in reads})
    reports = {p: PartitionReport(p) for p in partitions}

    by_value: dict[str, Op] = {}
    for op in writes:
        if op.value is not None:
            by_value[op.value] = op
        rep = reports[op.partition]
        if op.outcome == "ok":
            rep.acknowledged += 1
        elif op.outcome == "failed":
            rep.failed += 1
        else:
            rep.unknown += 1

    # Where each value was seen and what each (partition, offset) held: the first sighting
    # in plain dicts, and sets only for the rare second place or second value (a history
    # holds hundreds of thousands of reads).
    first_at: dict[tuple[int, int], str] = {}
    conflicts: dict[tuple[int, int], set[str]] = {}
    first_place: dict[str, tuple[int, int]] = {}
    more_places: dict[str, set[tuple[int, int]]] = {}
    for r in reads:
        key = (r.partition, r.offset)
        value = r.value
        held = first_at.setdefault(key, value)
        if held != value:
            conflicts.setdefault(key, {held}).add(value)
        place = first_place.setdefault(value, key)
        if place != key:
            more_places.setdefault(value, {place}).add(key)
    final_log: dict[int, dict[int, str]] = defaultdict(dict)
    in_final: dict[str, int] = {}  # value -> its offset in the final log
    for r in final:
        final_log[r.partition][r.offset] = r.value
        in_final.setdefault(r.value, r.offset)
    for p, entries in final_log.items():
        reports[p].final_log_records = len(entries)

    for (p, offset), values in sorted(conflicts.items()):
        reports[p].add("two_values_at_offset", f"offset {offset}: {sorted(values)}")
    for value, where in sorted(more_places.items()):
        offsets = sorted(where)
        reports[offsets[0][0]].add("duplicate", f"{value} at " + ", ".join(
            f"{q}@{off}" for q, off in offsets))
    for value, place in first_place.items():
        source = by_value.get(value)
        if source is not None and source.partition == place[0] and value not in more_places:
            continue  # the common case: a known value, seen in its own partition only
        for q, off in sorted(more_places.get(value, {place})):
            if source is None or source.partition != q:
                where_to = "" if source is None else f" (written to partition {source.partition})"
                reports[q].add("unexpected_value", f"{value!r} at offset {off}{where_to}")

    def log_offset(value: str) -> int | None:
        if value in in_final:
            return in_final[value]
        if value in more_places:
            return min(off for _, off in more_places[value])
        place = first_place.get(value)
        return None if place is None else place[1]

    for op in writes:
        if op.value is None:
            continue
        rep = reports[op.partition]
        landed = op.value in in_final
        if op.outcome == "ok":
            if not landed:
                rep.add("lost", _fmt(op) + f", acked at offset {op.offset}")
                rep.lost_values.append(op.value)
            at = log_offset(op.value)
            if op.offset is not None and at is not None and at != op.offset:
                rep.add("offset_mismatch", _fmt(op) + f": acked {op.offset}, in log at {at}")
        elif op.outcome == "failed":
            if op.value in first_place:
                rep.add("failed_landed", _fmt(op) + f": {op.error}")
        elif landed:
            rep.add("unknown_landed", _fmt(op))
        else:
            rep.add("unknown_not_landed", _fmt(op))

    if has_final:
        gone: dict[str, Read] = {}  # value -> the first read of it
        for r in reads:
            if r.value not in in_final:
                gone.setdefault(r.value, r)
        for value, r in gone.items():
            reports[r.partition].add("read_then_lost", (
                f"{value} read at offset {r.offset} by reader {r.reader} at {r.at_s:.3f}s"))

    _check_order(writes, log_offset, reports)
    _check_monotonic(history, reports)

    return Report(
        partitions=reports,
        operations=len(ops),
        writes=len(writes),
        acknowledged=sum(r.acknowledged for r in reports.values()),
        failed=sum(r.failed for r in reports.values()),
        unknown=sum(r.unknown for r in reports.values()),
        reads=len(reads),
        faults=len(history.faults),
        final_read=has_final,
        read_errors=sum(1 for o in ops if o.kind == "read" and o.outcome != "ok"),
    )


def _check_order(writes: list[Op], log_offset: Callable[[str], int | None],
                 reports: dict[int, PartitionReport]) -> None:
    """reordered: sweep each partition's acknowledged writes by send time, keeping the
    highest log offset among writes acknowledged before the current one was sent."""
    by_partition: dict[int, list[tuple[Op, int]]] = defaultdict(list)
    for op in writes:
        if op.outcome == "ok" and op.value is not None:
            at = log_offset(op.value)
            if at is not None:
                by_partition[op.partition].append((op, at))
    for p, placed in by_partition.items():
        by_end = sorted(placed, key=lambda x: x[0].end_s)
        ends = [op.end_s for op, _ in by_end]
        best: tuple[Op, int] | None = None
        taken = 0
        for op, at in sorted(placed, key=lambda x: x[0].start_s):
            limit = bisect.bisect_left(ends, op.start_s)  # acked strictly before op was sent
            while taken < limit:
                cand = by_end[taken]
                if best is None or cand[1] > best[1]:
                    best = cand
                taken += 1
            if best is not None and best[1] > at:
                earlier, earlier_at = best
                reports[p].add("reordered", (
                    f"{earlier.value} acked at {earlier.end_s:.3f}s is at offset {earlier_at}, "
                    f"but {op.value} sent later at {op.start_s:.3f}s is at offset {at}"))


def _check_monotonic(history: History, reports: dict[int, PartitionReport]) -> None:
    last: dict[tuple[int, int], int] = {}
    for r in history.reads:  # in the order the readers recorded them
        key = (r.reader, r.partition)
        prev = last.get(key)
        if prev is not None and r.offset <= prev:
            reports[r.partition].add("non_monotonic_reads", (
                f"reader {r.reader} read offset {r.offset} after {prev} at {r.at_s:.3f}s"))
        last[key] = r.offset


def main(argv: list[str] | None = None) -> int:
    """Check a saved history: print the report as JSON, exit 1 on any safety violation."""
    parser = argparse.ArgumentParser(
        prog="python -m rillet.chaos.checker",
        description="Check a chaos run's history (JSON) for lost, duplicated, reordered "
                    "or inconsistent records.")
    parser.add_argument("history", type=Path, help="history JSON written by the chaos runner")
    parser.add_argument("--svg", type=Path, help="also draw the timeline to this SVG file")
    args = parser.parse_args(argv)
    try:
        history = History.from_json(args.history)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        sys.stderr.write(f"cannot read history {args.history}: {exc}\n")
        return 2
    report = check(history)
    if args.svg is not None:
        from rillet.chaos.timeline import render_svg

        render_svg(history, args.svg, report)
    sys.stdout.write(report.to_json() + "\n")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
