"""The checker against synthetic histories: each anomaly planted alone must be reported, under
its own name and partition, and a clean history must pass. Histories are built by hand so each
test states exactly what happened."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rillet.chaos import checker
from rillet.chaos.checker import SAFETY, check
from rillet.chaos.history import FINAL_READER, FaultEvent, History, Op, Read


class Run:
    """A tiny history builder: writes by one worker, 0.1 s apart, each acked 0.05 s later."""

    def __init__(self) -> None:
        self.h = History()
        self.t = 0.0

    def write(self, value: str, partition: int = 0, offset: int | None = None,
              outcome: str = "ok", process: int = 0) -> Op:
        op = Op(process, "write", partition, value, self.t, self.t + 0.05,
                outcome, offset if outcome == "ok" else None)  # type: ignore[arg-type]
        self.t += 0.1
        self.h.add_op(op)
        return op

    def read(self, partition: int, offset: int, value: str, reader: int = 0) -> None:
        self.h.add_read(Read(partition, offset, value, self.t, reader))

    def final(self, partition: int, values: list[str]) -> None:
        for offset, value in enumerate(values):
            self.read(partition, offset, value, FINAL_READER)


def clean_run() -> Run:
    run = Run()
    for i in range(4):
        run.write(f"0-{i}", partition=i % 2, offset=i // 2)
    for p in (0, 1):
        run.read(p, 0, f"0-{p}")
        run.read(p, 1, f"0-{p + 2}")
    run.final(0, ["0-0", "0-2"])
    run.final(1, ["0-1", "0-3"])
    return run


def only(report: checker.Report, anomaly: str, partition: int = 0, count: int = 1) -> None:
    """`anomaly` was found `count` times on `partition`, and no other safety anomaly."""
    assert report.partitions[partition].counts[anomaly] == count, report.to_json()
    others = [a for a in report.violations if a != anomaly]
    assert not others, report.to_json()
    if anomaly in SAFETY:
        assert not report.ok
        assert report.violations == [anomaly]


def test_clean_history_is_ok() -> None:
    report = check(clean_run().h)
    assert report.ok, report.to_json()
    assert report.acknowledged == 4 and report.writes == 4 and report.final_read
    assert report.partitions[0].final_log_records == 2
    assert all(n == 0 for n in report.totals.values())


def test_lost_acked_write() -> None:
    run = clean_run()
    run.write("0-9", partition=1, offset=2)  # acked, never in the final log
    report = check(run.h)
    only(report, "lost", partition=1)
    assert "0-9" in report.partitions[1].examples["lost"][0]
    assert report.partitions[1].lost_values == ["0-9"]


def test_value_read_but_gone_from_final_log_is_lost() -> None:
    run = Run()
    run.write("0-0", offset=0)
    run.write("0-1", offset=1)
    run.read(0, 0, "0-0")
    run.read(0, 1, "0-1")
    run.final(0, ["0-0"])
    report = check(run.h)
    assert report.violations == ["lost", "read_then_lost"], report.to_json()


def test_duplicate_value_at_two_offsets() -> None:
    run = Run()
    run.write("0-0", offset=0)
    run.write("0-1", offset=1)
    run.final(0, ["0-0", "0-1", "0-0"])
    only(check(run.h), "duplicate")


def test_two_values_at_one_offset() -> None:
    run = Run()
    run.write("0-0", offset=0)
    run.write("0-1", outcome="unknown")
    run.read(0, 0, "0-1", reader=0)  # a reader saw 0-1 at offset 0...
    run.final(0, ["0-0"])            # ...the final log has 0-0 there
    report = check(run.h)
    assert report.partitions[0].counts["two_values_at_offset"] == 1
    assert "two_values_at_offset" in report.violations and not report.ok


def test_reordered_across_writers() -> None:
    run = Run()
    run.write("0-0", offset=1, process=0)  # acked at 0.05 s
    run.write("1-0", offset=0, process=1)  # sent at 0.1 s, after that ack, yet earlier in log
    run.final(0, ["1-0", "0-0"])
    report = check(run.h)
    only(report, "reordered")
    assert "1-0" in report.partitions[0].examples["reordered"][0]


def test_concurrent_writes_may_land_in_either_order() -> None:
    h = History()
    # Overlapping in time: neither was acked before the other was sent.
    h.add_op(Op(0, "write", 0, "0-0", 0.0, 1.0, "ok", 1))
    h.add_op(Op(1, "write", 0, "1-0", 0.5, 1.5, "ok", 0))
    h.add_reads([Read(0, 0, "1-0", 2.0, FINAL_READER), Read(0, 1, "0-0", 2.0, FINAL_READER)])
    assert check(h).ok


def test_non_monotonic_reads() -> None:
    run = clean_run()
    run.read(0, 0, "0-0", reader=0)  # reader 0 already read offsets 0 and 1 of partition 0
    only(check(run.h), "non_monotonic_reads")


def test_offset_mismatch() -> None:
    run = Run()
    run.write("0-0", offset=0)
    run.write("0-1", offset=5)
    run.final(0, ["0-0", "0-1"])
    only(check(run.h), "offset_mismatch")


def test_failed_write_that_landed() -> None:
    run = Run()
    run.write("0-0", offset=0)
    run.write("0-1", outcome="failed")
    run.final(0, ["0-0", "0-1"])
    only(check(run.h), "failed_landed")


def test_unexpected_value() -> None:
    run = Run()
    run.write("0-0", offset=0)
    run.final(0, ["0-0", "garbage"])
    only(check(run.h), "unexpected_value")


def test_unknown_writes_split_by_whether_they_landed() -> None:
    run = Run()
    run.write("0-0", offset=0)
    run.write("0-1", outcome="unknown")
    run.write("0-2", outcome="unknown")
    run.final(0, ["0-0", "0-1"])
    report = check(run.h)
    assert report.ok
    assert report.partitions[0].counts["unknown_landed"] == 1
    assert report.partitions[0].counts["unknown_not_landed"] == 1
    assert report.unknown == 2


def test_without_final_read_every_read_counts() -> None:
    run = Run()
    run.write("0-0", offset=0)
    run.write("0-1", offset=1)
    run.read(0, 0, "0-0")
    report = check(run.h)
    assert not report.final_read
    only(report, "lost")


def test_json_round_trip_and_main_exit_codes(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    good = clean_run().h
    good.add_fault(FaultEvent("kill", "node 1", 0.1, 0.3, "SIGKILL"))
    good.meta["seed"] = 7
    path = tmp_path / "good.json"
    good.to_json(path)
    again = History.from_json(path)
    assert again.ops == good.ops and again.reads == good.reads and again.faults == good.faults
    assert again.meta == {"seed": 7}

    svg = tmp_path / "good.svg"
    assert checker.main([str(path), "--svg", str(svg)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is True and out["totals"]["acknowledged"] == 4
    assert out["totals"]["faults"] == 1
    assert svg.read_text().startswith("<svg")

    bad = clean_run()
    bad.write("0-9", offset=2)
    bad.h.to_json(tmp_path / "bad.json")
    assert checker.main([str(tmp_path / "bad.json")]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["violations"] == ["lost"]
    assert out["partitions"]["0"]["anomalies"] == {"lost": 1}

    (tmp_path / "broken.json").write_text("{")
    assert checker.main([str(tmp_path / "broken.json")]) == 2


def test_read_sessions_are_counted_apart_from_writes() -> None:
    run = clean_run()
    run.h.add_op(Op(0, "read", 0, None, 0.0, 1.0, "ok", 1))
    run.h.add_op(Op(0, "read", 1, None, 0.0, 0.5, "failed", None, "UnavailableError: gone"))
    report = check(run.h)
    assert report.ok
    assert report.writes == report.acknowledged == 4
    assert report.operations == 6 and report.read_errors == 1
    assert report.to_dict()["totals"]["read_errors"] == 1


def test_value_a_reader_saw_must_stay_even_if_its_write_was_unknown() -> None:
    run = Run()
    run.write("0-0", offset=0)
    run.write("0-1", outcome="unknown")
    run.read(0, 0, "0-0")
    run.read(0, 1, "0-1")  # committed (a reader saw it)...
    run.final(0, ["0-0"])  # ...and gone
    report = check(run.h)
    only(report, "read_then_lost")
    assert report.partitions[0].counts["unknown_not_landed"] == 1
