"""Partition log throughput on this machine: append (with a flush every N batches) and read.

    .venv/bin/python bench/storage.py [--total-mib 512] [--batch-kib 1024] [--dir DIR]

Appends `total-mib` of identical pre-built batches to a fresh log (default 256 MiB segments,
so it rolls), once flushing after every batch and once every 16, then reads the log back
sequentially. Prints one line per run; `--json` prints them as JSON. The batch is built once:
this measures the log, not the encoder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from rillet import batch
from rillet.node.storage.log import LogConfig, PartitionLog


def build_batch(batch_kib: int) -> bytes:
    record = 1024
    n = max(1, batch_kib * 1024 // (record + 4))
    return batch.encode([bytes(record)] * n, timestamps_ms=[1_700_000_000_000] * n)


def bench_append(directory: Path, payload: bytes, count: int, flush_every: int) -> dict[str, float]:
    log = PartitionLog.open(directory, LogConfig())
    flush_ms: list[float] = []
    t0 = time.perf_counter()
    for i in range(count):
        log.append(payload, leader_term=1)
        if (i + 1) % flush_every == 0:
            f0 = time.perf_counter()
            log.flush()
            flush_ms.append((time.perf_counter() - f0) * 1000)
    log.flush()
    elapsed = time.perf_counter() - t0
    log.close()
    mb = len(payload) * count / 1e6
    return {"flush_every": flush_every, "batches": count, "MB": round(mb, 1),
            "MB_per_s": round(mb / elapsed, 1), "batches_per_s": round(count / elapsed, 1),
            "flush_p50_ms": round(statistics.median(flush_ms), 2),
            "flush_p99_ms": round(sorted(flush_ms)[int(len(flush_ms) * 0.99)], 2)}


def bench_raw(directory: Path, payload: bytes, count: int, flush_every: int) -> dict[str, float]:
    """The floor to compare against: plain os.write + fdatasync of the same bytes, no log."""
    directory.mkdir(parents=True)
    fd = os.open(directory / "raw", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    t0 = time.perf_counter()
    try:
        for i in range(count):
            os.write(fd, payload)
            if (i + 1) % flush_every == 0:
                os.fdatasync(fd)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - t0
    mb = len(payload) * count / 1e6
    return {"raw_write_fdatasync_every": flush_every, "MB": round(mb, 1),
            "MB_per_s": round(mb / elapsed, 1)}


def bench_read(directory: Path, max_bytes: int) -> dict[str, float]:
    log = PartitionLog.open(directory, LogConfig())
    offset, total, calls = log.log_start_offset, 0, 0
    t0 = time.perf_counter()
    while True:
        data = log.read(offset, max_bytes)
        if not data:
            break
        calls += 1
        total += len(data)
        # Advance by the last batch's header without decoding records (what a consumer
        # service does): walk the headers of the returned bytes.
        pos = 0
        while pos < len(data):
            size = batch.batch_size_at(data, pos)
            assert size is not None
            last = pos
            pos += size
        offset = batch.parse_header(data, last).next_offset
    elapsed = time.perf_counter() - t0
    log.close()
    return {"read_max_bytes": max_bytes, "MB": round(total / 1e6, 1),
            "MB_per_s": round(total / 1e6 / elapsed, 1), "reads": calls}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total-mib", type=int, default=512)
    parser.add_argument("--batch-kib", type=int, default=1024)
    parser.add_argument("--dir", type=Path, default=None, help="parent for the scratch logs")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    payload = build_batch(args.batch_kib)
    count = max(16, args.total_mib * 1024 * 1024 // len(payload))
    scratch = Path(tempfile.mkdtemp(prefix="rillet-bench-", dir=args.dir))
    results = []
    try:
        for flush_every in (1, 16):
            results.append(bench_raw(scratch / f"raw{flush_every}", payload, count,
                                     flush_every))
            d = scratch / f"flush{flush_every}"
            results.append(bench_append(d, payload, count, flush_every))
        for max_bytes in (1024 * 1024, 4 * 1024 * 1024):
            results.append(bench_read(scratch / "flush16", max_bytes))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for r in results:
        print(json.dumps(r) if args.json else "  ".join(f"{k}={v}" for k, v in r.items()))


if __name__ == "__main__":
    main()
