"""The generated stubs are committed; this fails when they no longer match proto/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_stubs_match_proto(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "tools" / "genproto.py"), "--out", str(tmp_path)],
                   check=True)
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert fresh, "protoc generated nothing"
    for rel in fresh:
        committed = ROOT / rel
        assert committed.exists(), f"{rel} is not committed: run `make proto`"
        assert committed.read_bytes() == (tmp_path / rel).read_bytes(), (
            f"{rel} is stale: run `make proto` and commit the result")
    generated = {p.relative_to(ROOT) for p in (ROOT / "rillet").rglob("*_pb2*.py*")}
    assert generated <= set(fresh), f"stubs without a .proto: {generated - set(fresh)}"
