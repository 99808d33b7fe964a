"""Schedules, disk damage and the sweep helpers, without a cluster (fast; default suite)."""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import pytest

from rillet import batch
from rillet.chaos.faults import DISK_KINDS, KINDS, RANDOM_KINDS, corrupt_file, where_in_batches
from rillet.chaos.history import History, Op
from rillet.chaos.runner import aggregate, seeds_from_env, unavailability
from rillet.chaos.schedule import GAP_S, HOLD_S, MIN_RECOVERY_S, PlannedFault, Schedule


def test_same_seed_same_plan_and_phases_add_up() -> None:
    a, b = Schedule.generate(42, 60), Schedule.generate(42, 60)
    assert a == b
    assert a.describe() == b.describe()
    assert a.describe().startswith("chaos schedule seed=42")
    assert Schedule.generate(43, 60).faults != a.faults
    assert a.duration_s == pytest.approx(60)
    assert a.recovery_s >= MIN_RECOVERY_S and a.steady_s > 0
    planned = sum(f.hold_s + f.gap_s for f in a.faults)
    assert planned >= a.fault_s  # enough faults to fill the phase
    for f in a.faults:
        assert f.kind in RANDOM_KINDS
        assert HOLD_S[0] <= f.hold_s <= HOLD_S[1] and GAP_S[0] <= f.gap_s <= GAP_S[1]
    assert json.loads(json.dumps(a.to_dict()))["seed"] == 42


def test_random_kinds_are_every_one_node_fault() -> None:
    assert set(RANDOM_KINDS) | {"freeze-followers-kill-leader"} == set(KINDS)
    assert set(DISK_KINDS) <= set(RANDOM_KINDS)
    assert "freeze-followers-kill-leader" not in RANDOM_KINDS
    with pytest.raises(ValueError, match="unknown fault kinds"):
        Schedule.generate(1, 30, ["no-such-fault"])
    only = Schedule.generate(1, 30, ["pause"])
    assert {f.kind for f in only.faults} == {"pause"}


def test_scripted_runs_every_fault() -> None:
    s = Schedule.scripted(3, [PlannedFault("kill-leader", 1.0, 0.5)])
    assert s.run_all and s.fault_s == 1.5 and len(s.faults) == 1


def _segment(counts: list[int]) -> bytes:
    out = b""
    base = 0
    for i, n in enumerate(counts):
        values = [f"value-{base + k}".encode() for k in range(n)]
        raw = bytearray(batch.encode(values, timestamps_ms=[0] * n))
        # Stamp base offset and raft index as the broker would, so the headers walk.
        struct.pack_into("<q", raw, 0, base)
        struct.pack_into("<q", raw, 20, i + 1)
        out += bytes(raw)
        base += n
    return out


def test_where_in_batches_names_header_fields_and_crc_covered_bytes() -> None:
    data = _segment([3, 4])
    (length0,) = struct.unpack_from("<i", data, 8)
    second = length0 + batch.LENGTH_PREFIX_SIZE
    assert "batch 0" in where_in_batches(data, 0) and "base_offset" in where_in_batches(data, 0)
    assert "leader_term" in where_in_batches(data, 13)
    assert "raft_index" in where_in_batches(data, 21)
    assert "CRC-covered" in where_in_batches(data, batch.CRC_START)
    assert where_in_batches(data, second + 12).startswith("batch 1")


def test_corrupt_file_flips_one_byte_or_truncates(tmp_path: Path) -> None:
    data = _segment([3, 4, 5])
    path = tmp_path / "00000000000000000000.log"
    path.write_bytes(data)
    what = corrupt_file(path, random.Random(1), "flip", crc_covered=True)
    after = path.read_bytes()
    diff = [i for i in range(len(data)) if data[i] != after[i]]
    assert len(diff) == 1 and after[diff[0]] == data[diff[0]] ^ 0xFF
    assert "CRC-covered" in what and "batch 2" in what
    with pytest.raises(batch.BatchError):  # the codec's own check finds it
        start = len(_segment([3, 4]))
        batch.verify(after, start)
    path.write_bytes(data)
    what = corrupt_file(path, random.Random(1), "truncate")
    assert len(data) // 2 <= path.stat().st_size < len(data)
    assert "truncated" in what


def _op(partition: int, end: float, outcome: str = "ok") -> Op:
    return Op(0, "write", partition, f"v{end}", end - 0.01, end, outcome,  # type: ignore[arg-type]
              0 if outcome == "ok" else None)


def test_unavailability_is_the_longest_gap_between_acks() -> None:
    h = History()
    for p, t in [(0, 1.0), (1, 1.5), (0, 2.0), (1, 6.0), (0, 6.5)]:
        h.add_op(_op(p, t))
    h.add_op(_op(0, 4.0, "unknown"))  # not acknowledged: does not end a gap
    assert unavailability(h, 0.0, 7.0) == (4.0, 2.0, 6.0)
    assert unavailability(h, 0.0, 7.0, partition=1)[0] == pytest.approx(4.5)
    assert unavailability(History(), 0.0, 3.0)[0] == 3.0


def test_seeds_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RILLET_CHAOS_SEEDS", raising=False)
    assert seeds_from_env([4, 5]) == [4, 5]
    monkeypatch.setenv("RILLET_CHAOS_SEEDS", "3")
    assert seeds_from_env([]) == [0, 1, 2]
    monkeypatch.setenv("RILLET_CHAOS_SEEDS", "5-7")
    assert seeds_from_env([]) == [5, 6, 7]
    monkeypatch.setenv("RILLET_CHAOS_SEEDS", "1,9")
    assert seeds_from_env([]) == [1, 9]


def test_aggregate_adds_up_summaries(tmp_path: Path) -> None:
    def summary(seed: int, ok: bool, lost: int, window: float) -> dict[str, object]:
        return {"seed": seed, "ok": ok, "errors": [] if ok else ["x"], "run_dir": "d",
                "longest_unavailability_s": window, "faults_by_kind": {"pause": 1},
                "report": {"totals": {"operations": 10, "writes": 9, "acknowledged": 8,
                                      "failed": 0,
                                      "unknown": 2},
                           "anomalies": {"lost": lost}, "violations": ["lost"] if lost else []}}
    for s in (summary(1, True, 0, 0.5), summary(2, False, 3, 2.5)):
        d = tmp_path / f"seed-{s['seed']}"
        d.mkdir()
        (d / "summary.json").write_text(json.dumps(s))
    out = aggregate(tmp_path)
    assert out["runs"] == 2 and out["ok_runs"] == 1
    assert out["operations"] == 20 and out["writes"] == 18 and out["acknowledged"] == 16
    assert out["faults_by_kind"] == {"pause": 2} and out["faults_total"] == 2
    assert out["anomalies"]["lost"] == 3
    assert out["longest_unavailability_s"] == 2.5 and out["longest_unavailability_seed"] == 2
    assert [r["seed"] for r in out["not_ok"]] == [2]
