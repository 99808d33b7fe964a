"""The timeline SVG: well-formed XML with the throughput and latency lines, one shaded band
per fault, marks for failed/unknown/lost writes, and the anomalies in the caption."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from rillet.chaos.checker import check
from rillet.chaos.history import FINAL_READER, FaultEvent, History, Op, Read
from rillet.chaos.timeline import render_svg

NS = "{http://www.w3.org/2000/svg}"


def run_with_faults() -> History:
    h = History()
    offset = 0
    final = []
    for i in range(300):  # 30 s at 10 writes/s
        t = i * 0.1
        outcome = "ok"
        if 100 <= i < 110:
            outcome = "unknown"
        elif i == 150:
            outcome = "failed"
        latency = 0.8 if 100 <= i < 120 else 0.01
        value = f"0-{i}"
        h.add_op(Op(0, "write", 0, value, t, t + latency, outcome,  # type: ignore[arg-type]
                    offset if outcome == "ok" else None))
        if outcome == "ok":
            if i not in (200, 201):  # two acknowledged writes lost
                final.append(Read(0, offset, value, 31.0, FINAL_READER))
            offset += 1
    h.add_reads(final)
    h.add_fault(FaultEvent("kill", "node 1", 10.0, 12.5, "SIGKILL"))
    h.add_fault(FaultEvent("partition", "link 0->2", 11.0, 20.0))
    h.add_fault(FaultEvent("pause", "node 2", 25.0, None))
    return h


def parse(path: Path) -> ET.Element:
    return ET.fromstring(path.read_text())


def test_svg_has_fault_bands_series_and_marks(tmp_path: Path) -> None:
    h = run_with_faults()
    report = check(h)
    assert report.total("lost") == 2
    out = tmp_path / "run.svg"
    render_svg(h, out, report)
    root = parse(out)
    assert root.tag == f"{NS}svg"

    faults = root.findall(f".//{NS}g[@class='fault']")
    assert [g.get("data-kind") for g in faults] == ["kill", "partition", "pause"]
    assert all(g.find(f"{NS}rect") is not None for g in faults)
    labels = [t.text for t in root.iter(f"{NS}text") if t.get("class") == "fault-label"]
    assert labels == ["kill node 1", "partition link 0->2", "pause node 2"]
    # The never-healed pause runs to the right edge of the plot.
    pause = faults[2].find(f"{NS}rect")
    assert pause is not None
    assert float(pause.get("x", 0)) + float(pause.get("width", 0)) >= 979

    classes = [e.get("class") for e in root.iter()]
    for cls in ("throughput", "latency-p50", "latency-p99"):
        assert classes.count(cls) == 1, cls
    assert classes.count("unknown") == 10
    assert classes.count("failed") == 1
    assert classes.count("lost") == 2

    verdict = next(t.text for t in root.iter(f"{NS}text") if t.get("class") == "verdict")
    assert verdict is not None and verdict.startswith("VIOLATIONS: lost 2")
    caption = [t.text or "" for t in root.iter(f"{NS}text") if t.get("class") == "anomaly"]
    assert any(line.startswith("lost: 2") for line in caption)
    assert any(line.startswith("unknown_not_landed: 10") for line in caption)


def test_empty_history_renders(tmp_path: Path) -> None:
    out = tmp_path / "empty.svg"
    render_svg(History(), out)
    assert parse(out).tag == f"{NS}svg"
