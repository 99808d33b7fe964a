"""Compaction throughput on this machine: one pass over a log of keyed updates.

    .venv/bin/python bench/compaction.py [--records 200000] [--keys 1000] [--value-bytes 100]
                                         [--batch 100] [--segment-mib 8] [--dir DIR] [--json]

Appends `records` updates spread round robin over `keys` keys (batches of `batch` records,
`segment-mib` segments, flushed), then times one compaction pass (PartitionLog.compact, the
same code the broker's Compactor runs in a worker thread) and a second, idle one. Prints the
input rewritten in MB/s and records/s, the bytes before and after, and the records kept.
The input figure counts every byte and record of the closed segments the pass read.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from rillet import batch
from rillet.node.storage.log import CLEANUP_COMPACT, LogConfig, PartitionLog


def fill(log: PartitionLog, records: int, keys: int, value_bytes: int, per_batch: int) -> None:
    now = int(time.time() * 1000)
    value = bytes(value_bytes)
    for start in range(0, records, per_batch):
        n = min(per_batch, records - start)
        ks = [b"key-%06d" % ((start + i) % keys) for i in range(n)]
        log.append(batch.encode([value] * n, keys=ks, timestamps_ms=[now] * n), leader_term=1)
    log.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--segment-mib", type=int, default=8)
    parser.add_argument("--dir", type=Path, default=None, help="parent for the scratch log")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rillet-compaction-", dir=args.dir))
    try:
        config = LogConfig(segment_bytes=args.segment_mib << 20, cleanup_policy=CLEANUP_COMPACT)
        log = PartitionLog.open(tmp / "p", config)
        fill(log, args.records, args.keys, args.value_bytes, args.batch)
        before = log.size_bytes
        stats = log.compact()
        idle = log.compact()
        after = log.size_bytes
        log.close()
        result = {
            "records": args.records, "keys": args.keys, "value_bytes": args.value_bytes,
            "segments_rewritten": stats.segments_rewritten,
            "input_mb": stats.bytes_read / 1e6, "output_mb": stats.bytes_written / 1e6,
            "seconds": stats.seconds,
            "mb_per_s": stats.bytes_read / 1e6 / stats.seconds if stats.seconds else 0.0,
            "records_per_s": stats.records_read / stats.seconds if stats.seconds else 0.0,
            "records_read": stats.records_read, "records_removed": stats.records_removed,
            "log_bytes_before": before, "log_bytes_after": after,
            "idle_pass_ms": idle.seconds * 1000,
        }
        if args.json:
            print(json.dumps(result))
        else:
            print(f"compaction: {result['input_mb']:.1f} MB / {stats.records_read} records of "
                  f"input in {stats.seconds:.2f}s = {result['mb_per_s']:.1f} MB/s, "
                  f"{result['records_per_s']:,.0f} records/s; {stats.segments_rewritten} "
                  f"segments rewritten, {stats.records_removed} records removed; log "
                  f"{before / 1e6:.1f} MB -> {after / 1e6:.1f} MB; idle pass "
                  f"{result['idle_pass_ms']:.2f} ms")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
