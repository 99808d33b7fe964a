"""A one-picture summary of a chaos run: throughput and latency over time, faults marked.

`render_svg(history, path, report)` writes a self-contained SVG (plain text, no plotting
library): two panels sharing the time axis -- acknowledged writes per second, and the p50 and
p99 acknowledgement latency of the writes answered in each time bin -- then a strip with a mark
for every failed (red cross) and unknown (orange bar) write and every lost write (purple dot,
at the time it was acknowledged). Each fault is a shaded band across all three, labelled with
its kind and target; a fault never healed runs to the end. The caption gives the verdict and
lists every anomaly the report found, with its first example, so a reader sees at a glance
whether throughput stopped during a fault, how long recovery took, and what went wrong.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from rillet.chaos.checker import ANOMALIES, SAFETY, Report
from rillet.chaos.history import History

WIDTH = 1000
LEFT, RIGHT = 84, 20
PLOT_W = WIDTH - LEFT - RIGHT
PANEL_H = 170
#: Target number of time bins; the bin width is rounded to a readable value.
BINS = 120
_NICE = (0.1, 0.2, 0.25, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600)
_FAULT_COLOURS = ("#e6550d", "#3182bd", "#31a354", "#756bb1", "#636363", "#d6616b",
                  "#8c6d31", "#17becf")


def _bin_width(span_s: float) -> float:
    raw = span_s / BINS
    for nice in _NICE:
        if nice >= raw:
            return float(nice)
    return float(math.ceil(raw / 600) * 600)


def _tick_step(top: float, ticks: int = 5) -> float:
    """A round step that gives about `ticks` ticks from 0 to `top`."""
    if top <= 0:
        return 1.0
    raw = top / ticks
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if m * mag >= raw:
            return float(m * mag)
    return float(10 * mag)


def _axis_top(top_value: float) -> float:
    """The round value a panel's y axis ends at (five ticks); 1 for an empty panel."""
    return _tick_step(top_value) * 5 if top_value > 0 else 1.0


def _percentile(sorted_values: list[float], q: float) -> float:
    i = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[i]


def _fmt_num(v: float) -> str:
    return f"{v:g}" if v < 1000 else f"{v:,.0f}"


class _Svg:
    def __init__(self) -> None:
        self.parts: list[str] = []

    def add(self, element: str) -> None:
        self.parts.append(element)

    def text(self, x: float, y: float, content: str, *, size: int = 11, anchor: str = "start",
             colour: str = "#222", weight: str = "normal", cls: str = "") -> None:
        klass = f" class={quoteattr(cls)}" if cls else ""
        self.add(f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" '
                 f'text-anchor="{anchor}" fill="{colour}" font-weight="{weight}"{klass}>'
                 f"{escape(content)}</text>")

    def line(self, x1: float, y1: float, x2: float, y2: float, colour: str = "#999",
             width: float = 1.0, dash: str = "") -> None:
        d = f' stroke-dasharray="{dash}"' if dash else ""
        self.add(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" '
                 f'stroke="{colour}" stroke-width="{width}"{d}/>')

    def series(self, points: list[tuple[int, float, float]], colour: str, cls: str,
               width: float = 1.5) -> None:
        """One line through (bin, x, y) points, broken where bins are missing (no data
        there: a line across the gap would invent values)."""
        commands = []
        prev: int | None = None
        for b, x, y in points:
            commands.append(f"{'L' if prev is not None and b == prev + 1 else 'M'}{x:.1f},{y:.1f}")
            prev = b
        self.add(f'<path class={quoteattr(cls)} d="{" ".join(commands)}" fill="none" '
                 f'stroke="{colour}" stroke-width="{width}"/>')


def render_svg(history: History, path: Path, report: Report | None = None) -> None:
    """Draw the run's timeline to `path` (SVG); see the module docstring for what is drawn."""
    ops = [o for o in history.ops if o.kind == "write"]
    faults = history.faults
    span = max([1.0, *(o.end_s for o in ops), *(f.start_s for f in faults),
                *(f.end_s for f in faults if f.end_s is not None)])
    width_s = _bin_width(span)
    nbins = max(1, math.ceil(span / width_s))
    span = nbins * width_s

    acked_per_bin = [0] * nbins
    latencies: dict[int, list[float]] = defaultdict(list)
    for o in ops:
        if o.outcome == "ok":
            b = min(nbins - 1, int(o.end_s / width_s))
            acked_per_bin[b] += 1
            latencies[b].append(max(0.0, o.end_s - o.start_s) * 1000)
    rate = [n / width_s for n in acked_per_bin]
    p50 = {b: _percentile(sorted(v), 0.50) for b, v in latencies.items()}
    p99 = {b: _percentile(sorted(v), 0.99) for b, v in latencies.items()}

    def x_of(t: float) -> float:
        return LEFT + PLOT_W * min(max(t, 0.0), span) / span

    top_a = 72.0
    top_b = top_a + PANEL_H + 40
    strip_y = top_b + PANEL_H + 30
    strip_h = 36.0
    caption_y = strip_y + strip_h + 45

    anomaly_lines: list[tuple[str, str]] = []
    lost_values: set[str] = set()
    if report is not None:
        for rep in report.partitions.values():
            lost_values.update(rep.lost_values)
    if report is not None:
        for name in ANOMALIES:
            n = report.total(name)
            if not n:
                continue
            first = next((ex[0] for p in sorted(report.partitions)
                          if (ex := report.partitions[p].examples.get(name))), "")
            colour = "#b30000" if name in SAFETY else "#555"
            anomaly_lines.append((f"{name}: {n}" + (f"  e.g. {first}" if first else ""),
                                  colour))
    height = caption_y + 20 + 16 * (len(anomaly_lines) + 1)

    svg = _Svg()
    svg.add(f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0f}" '
            f'viewBox="0 0 {WIDTH} {height:.0f}" font-family="sans-serif">')
    svg.add(f'<rect width="{WIDTH}" height="{height:.0f}" fill="white"/>')
    n_ok = sum(1 for o in ops if o.outcome == "ok")
    n_failed = sum(1 for o in ops if o.outcome == "failed")
    n_unknown = sum(1 for o in ops if o.outcome == "unknown")
    title = (f"Chaos run: {len(ops)} writes ({n_ok} acknowledged, {n_failed} failed, "
             f"{n_unknown} unknown), {len(faults)} faults, {span:g} s")
    svg.text(LEFT, 22, title, size=14, weight="bold")
    if report is not None:
        verdict = "OK: no safety violation" if report.ok else (
            "VIOLATIONS: " + ", ".join(f"{v} {report.total(v)}" for v in report.violations))
        svg.text(LEFT, 40, verdict, size=12, weight="bold",
                 colour="#1a7f37" if report.ok else "#b30000", cls="verdict")

    # Fault bands under everything, labels stacked in lanes so they do not overlap.
    band_top, band_bottom = top_a, strip_y + strip_h
    colours: dict[str, str] = {}
    lanes_end: list[float] = []
    for f in sorted(faults, key=lambda f: f.start_s):
        colour = colours.setdefault(f.kind, _FAULT_COLOURS[len(colours) % len(_FAULT_COLOURS)])
        x1 = x_of(f.start_s)
        x2 = max(x_of(span if f.end_s is None else f.end_s), x1 + 2)
        label = f"{f.kind} {f.target}".strip()
        lane = next((i for i, end in enumerate(lanes_end) if end < x1), len(lanes_end))
        label_end = x1 + 6.2 * len(label) + 4
        if lane == len(lanes_end):
            lanes_end.append(label_end)
        else:
            lanes_end[lane] = label_end
        tip = escape(f"{label}: {f.start_s:.2f}s - "
                     + ("never healed" if f.end_s is None else f"{f.end_s:.2f}s")
                     + (f" ({f.detail})" if f.detail else ""))
        svg.add(f'<g class="fault" data-kind={quoteattr(f.kind)}><title>{tip}</title>'
                f'<rect x="{x1:.1f}" y="{band_top:.1f}" width="{x2 - x1:.1f}" '
                f'height="{band_bottom - band_top:.1f}" fill="{colour}" fill-opacity="0.15" '
                f'stroke="{colour}" stroke-opacity="0.5"/></g>')
        svg.text(x1 + 2, top_a + 11 + 12 * lane, label, size=10, colour=colour,
                 cls="fault-label")

    _panel(svg, top_a, "acknowledged writes / s", max(rate, default=0.0))
    top_rate = _axis_top(max(rate, default=0.0))
    svg.series([(b, x_of((b + 0.5) * width_s), top_a + PANEL_H * (1 - r / top_rate))
                for b, r in enumerate(rate)], "#1f77b4", "throughput")

    top_lat_raw = max(p99.values(), default=0.0)
    _panel(svg, top_b, "ack latency (ms): p50 green, p99 red", top_lat_raw)
    top_lat = _axis_top(top_lat_raw)
    for series, colour, cls in ((p50, "#2ca02c", "latency-p50"), (p99, "#d62728", "latency-p99")):
        svg.series([(b, x_of((b + 0.5) * width_s),
                     top_b + PANEL_H * (1 - min(v, top_lat) / top_lat))
                    for b, v in sorted(series.items())], colour, cls)

    # Strip: failed / unknown / lost writes.
    svg.add(f'<rect x="{LEFT}" y="{strip_y:.1f}" width="{PLOT_W}" height="{strip_h}" '
            f'fill="none" stroke="#ccc"/>')
    n_lost = sum(1 for o in ops if o.value in lost_values)
    svg.text(LEFT - 6, strip_y + 14, f"failed {n_failed}", size=9, anchor="end",
             colour="#d62728")
    svg.text(LEFT - 6, strip_y + 25, f"unknown {n_unknown}", size=9, anchor="end",
             colour="#ff7f0e")
    svg.text(LEFT - 6, strip_y + 35, f"lost {n_lost}" if report is not None else "lost",
             size=9, anchor="end", colour="#6a3d9a")
    for o in ops:
        x = x_of(o.end_s)
        if o.outcome == "failed":
            y = strip_y + 10
            svg.add(f'<path class="failed" d="M{x - 3:.1f},{y - 3:.1f}L{x + 3:.1f},{y + 3:.1f}'
                    f'M{x - 3:.1f},{y + 3:.1f}L{x + 3:.1f},{y - 3:.1f}" stroke="#d62728"/>')
        elif o.outcome == "unknown":
            svg.add(f'<line class="unknown" x1="{x:.1f}" y1="{strip_y + 17:.1f}" '
                    f'x2="{x:.1f}" y2="{strip_y + 26:.1f}" stroke="#ff7f0e"/>')
        if o.value in lost_values:
            svg.add(f'<circle class="lost" cx="{x:.1f}" cy="{strip_y + 31:.1f}" r="2.5" '
                    f'fill="#6a3d9a"/>')

    # Time axis.
    axis_y = strip_y + strip_h
    step = _tick_step(span, 10)
    t = 0.0
    while t <= span + 1e-9:
        x = x_of(t)
        svg.line(x, axis_y, x, axis_y + 4, "#444")
        svg.text(x, axis_y + 16, f"{t:g}", size=10, anchor="middle")
        t += step
    svg.text(LEFT + PLOT_W, axis_y + 30, "seconds since start", size=10, anchor="end")

    y = caption_y
    svg.text(LEFT, y, "Anomalies" if anomaly_lines else
             ("No anomalies." if report is not None else "(not checked)"), size=12,
             weight="bold")
    for line, colour in anomaly_lines:
        y += 16
        svg.text(LEFT, y, line[:160], size=11, colour=colour, cls="anomaly")
    svg.add("</svg>")
    Path(path).write_text("\n".join(svg.parts) + "\n")


def _panel(svg: _Svg, top: float, label: str, top_value: float) -> None:
    """Frame, y ticks and label of one panel whose y axis runs from 0 to a round top."""
    step = _tick_step(top_value)
    y_max = _axis_top(top_value)
    svg.add(f'<rect x="{LEFT}" y="{top:.1f}" width="{PLOT_W}" height="{PANEL_H}" '
            f'fill="none" stroke="#ccc"/>')
    svg.text(LEFT, top - 6, label, size=11, weight="bold")
    v = 0.0
    while v <= y_max + 1e-9:
        y = top + PANEL_H * (1 - v / y_max)
        svg.line(LEFT, y, LEFT + PLOT_W, y, "#eee")
        svg.text(LEFT - 6, y + 4, _fmt_num(v), size=10, anchor="end")
        v += step
