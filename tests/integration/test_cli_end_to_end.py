"""The `rillet` command line end to end, as a user runs it, against a real broker process."""

from __future__ import annotations

import contextlib
import json
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration


def rillet(*args: str, stdin: bytes | None = None, timeout: float = 60.0,
           bootstrap: str | None = None) -> subprocess.CompletedProcess[bytes]:
    cmd = [sys.executable, "-m", "rillet.cli", *args]
    if bootstrap is not None:
        cmd += ["--bootstrap", bootstrap]
    return subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout, check=False)


def ok(proc: subprocess.CompletedProcess[bytes]) -> subprocess.CompletedProcess[bytes]:
    assert proc.returncode == 0, proc.stderr.decode()
    return proc


def test_topic_commands(broker: Any) -> None:
    b = broker.address
    ok(rillet("topic", "create", "t1", "--partitions", "3", "--config", "retention.ms=60000",
              "--config", "cleanup.policy=delete", bootstrap=b))
    listed = ok(rillet("topic", "list", bootstrap=b)).stdout.decode()
    assert "t1\tpartitions=3\treplication_factor=1" in listed
    desc = json.loads(ok(rillet("topic", "describe", "t1", "--json", bootstrap=b)).stdout)
    assert desc["config"]["retention.ms"] == 60000
    assert [p["partition"] for p in desc["partitions"]] == [0, 1, 2]
    dup = rillet("topic", "create", "t1", bootstrap=b)
    assert dup.returncode == 1 and dup.stderr.decode().startswith("rillet: error:")
    bad = rillet("topic", "create", "t2", "--config", "retention.hours=1", bootstrap=b)
    assert bad.returncode == 1 and b"unknown topic setting" in bad.stderr
    ok(rillet("topic", "delete", "t1", bootstrap=b))
    gone = rillet("topic", "describe", "t1", bootstrap=b)
    assert gone.returncode == 1 and len(gone.stderr.decode().strip().splitlines()) == 1


def test_produce_consume_text_and_json(broker: Any) -> None:
    b = broker.address
    ok(rillet("topic", "create", "lines", "--partitions", "2", bootstrap=b))
    lines = b"".join(f"k{i % 4}:value {i}\n".encode() for i in range(200))
    proc = ok(rillet("produce", "lines", "--key-separator", ":", stdin=lines, bootstrap=b))
    assert b"200 of 200 records acknowledged" in proc.stderr

    out = ok(rillet("consume", "lines", "--from", "earliest", "--idle-timeout", "2",
                    bootstrap=b)).stdout.splitlines()
    assert sorted(out) == sorted(f"value {i}".encode() for i in range(200))

    two = ok(rillet("consume", "lines", "--from", "earliest", "--max-records", "5",
                    "--format", "json", "--partition", "1", bootstrap=b)).stdout.splitlines()
    assert len(two) == 5
    recs = [json.loads(x) for x in two]
    assert [r["offset"] for r in recs] == [0, 1, 2, 3, 4]
    assert all(r["partition"] == 1 and r["key"].startswith("k") for r in recs)
    assert set(recs[0]) == {"key", "value", "headers", "partition", "offset", "timestamp"}


def test_consume_from_latest_idles_out_and_replay_ends(broker: Any, tmp_path: Path) -> None:
    b = broker.address
    ok(rillet("topic", "create", "r", bootstrap=b))
    ok(rillet("produce", "r", stdin=b"".join(b"%d\n" % i for i in range(30)), bootstrap=b))
    start = time.monotonic()
    latest = ok(rillet("consume", "r", "--from", "latest", "--idle-timeout", "1", bootstrap=b))
    assert latest.stdout == b"" and time.monotonic() - start < 15
    out_file = tmp_path / "range.txt"
    ok(rillet("replay", "r", "--from", "10", "--to", "20", "--output", str(out_file),
              bootstrap=b))
    assert out_file.read_bytes().splitlines() == [b"%d" % i for i in range(10, 20)]
    whole = ok(rillet("replay", "r", bootstrap=b))
    assert len(whole.stdout.splitlines()) == 30 and b"replayed 30 records" in whole.stderr


def test_unreachable_bootstrap_exits_quickly_with_one_line() -> None:
    for args in (["topic", "list"], ["produce", "x"], ["consume", "x"],
                 ["bench", "produce", "--count", "10"]):
        start = time.monotonic()
        proc = rillet(*args, stdin=b"a\n", bootstrap="127.0.0.1:1", timeout=30)
        assert proc.returncode != 0
        lines = proc.stderr.decode().strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("rillet: error:"), proc.stderr
        assert "cannot reach" in lines[0]
        assert time.monotonic() - start < 15
    bad = rillet("topic", "list", bootstrap="nonsense")
    assert bad.returncode == 2 and b"host:port" in bad.stderr


def test_done_when_scenario_scaled_down(broker: Any) -> None:
    """10,000 lines produced, kill -9 and restart the node, every line consumed."""
    b = broker.address
    ok(rillet("topic", "create", "events", "--partitions", "3", bootstrap=b))
    data = b"".join(b"%d\n" % i for i in range(1, 10_001))
    proc = ok(rillet("produce", "events", stdin=data, bootstrap=b))
    assert b"10000 of 10000 records acknowledged" in proc.stderr
    broker.kill()
    broker.start()
    out = ok(rillet("consume", "events", "--from", "earliest", "--max-records", "10000",
                    bootstrap=b)).stdout.splitlines()
    assert sorted(int(x) for x in out) == list(range(1, 10_001))


def test_bench_json(broker: Any) -> None:
    proc = ok(rillet("bench", "produce", "--count", "20000", "--json", "--topic", "bn",
                     bootstrap=broker.address))
    result = json.loads(proc.stdout)
    assert result["records"] == 20000 and result["records_per_s"] > 0
    assert set(result["latency_ms"]) == {"p50", "p99", "p999"}
    proc = ok(rillet("bench", "consume", "--count", "20000", "--json", "--topic", "bn",
                     bootstrap=broker.address))
    assert json.loads(proc.stdout)["records"] == 20000


def _readline(proc: subprocess.Popen[bytes], deadline_s: float) -> bytes:
    """One line of the child's stdout, or fail once the deadline passes."""
    assert proc.stdout is not None
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            line = proc.stdout.readline()
            if not line:  # end of output: say why the command stopped
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
                ended = proc.poll() is not None and proc.stderr is not None
                err = proc.stderr.read().decode() if ended and proc.stderr else "(still running)"
                raise AssertionError(f"output ended (status {proc.poll()}): {err}")
            return line
    raise AssertionError("no output before the deadline")


def test_consume_tails_until_ctrl_c(broker: Any) -> None:
    b = broker.address
    ok(rillet("topic", "create", "tail", bootstrap=b))
    ok(rillet("produce", "tail", stdin=b"first\n", bootstrap=b))
    # Python ignores SIGINT in a child when its parent shell did; restore the default so the
    # child behaves as in a terminal.
    proc = subprocess.Popen(
        [sys.executable, "-m", "rillet.cli", "consume", "tail", "--from", "earliest",
         "--bootstrap", b],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert _readline(proc, 20) == b"first\n"
        ok(rillet("produce", "tail", stdin=b"second\n", bootstrap=b))
        assert _readline(proc, 20) == b"second\n"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()
