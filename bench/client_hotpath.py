"""Client hot paths without a broker: batch encoding, send()/send_many() and decoding.

    .venv/bin/python bench/client_hotpath.py [--records 200000] [--size 100]

Prints microseconds per record for each stage so a change can be measured against a baseline
in the same run (the machine is shared and noisy). The producer runs against a stand-in sender
that acknowledges each sealed batch at once, so the figures are the client's own CPU cost; the
producer lines also give this process's CPU time per record, which other jobs on the machine
disturb less than wall-clock time.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from rillet import batch as codec
from rillet.api.v1 import admin_pb2
from rillet.client import producer as producer_mod
from rillet.client.records import decode_batches


class _AckAtOnce:
    """Stands in for the network sender: every sealed batch is acked with offset 0."""

    def __init__(self, producer: producer_mod.Producer, address: str) -> None:
        self.producer = producer

    def enqueue(self, b: Any) -> None:
        b.encode()
        self.producer._batch_done(b, None, 0)


def _per_record(start: float, n: int) -> float:
    return (time.perf_counter() - start) / n * 1e6


def _cpu_per_record(start: float, n: int) -> float:
    return (time.process_time() - start) / n * 1e6


async def _producer_costs(n: int, size: int) -> dict[str, tuple[float, float]]:
    """(wall, CPU) microseconds per record of send() and send_many()."""
    producer_mod._Sender = _AckAtOnce  # type: ignore[assignment,misc]
    p = producer_mod.Producer("127.0.0.1:1")
    p._loop, p._started = asyncio.get_running_loop(), True
    p._metadata.update(admin_pb2.MetadataResponse(
        brokers=[admin_pb2.Broker(node_id=0, address="127.0.0.1:1")],
        topics=[admin_pb2.TopicMetadata(name="t", partitions=[
            admin_pb2.PartitionMetadata(partition=0, leader_id=0)])]))
    value = b"x" * size
    out = {}
    t, c = time.perf_counter(), time.process_time()
    for _ in range(n):
        await p.send("t", value)
    await p.flush()
    out["send() per record"] = (_per_record(t, n), _cpu_per_record(c, n))
    values = [value] * 1000
    t, c = time.perf_counter(), time.process_time()
    for _ in range(0, n, 1000):
        await p.send_many("t", values)
    await p.flush()
    out["send_many() per record"] = (_per_record(t, n), _cpu_per_record(c, n))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--size", type=int, default=100)
    args = ap.parse_args()
    n, size = args.records, args.size
    per_batch = max(1, 1_000_000 // (size + 8))
    values = [b"x" * size] * per_batch
    ts = [1_700_000_000_000] * per_batch
    rounds = max(1, n // per_batch)

    t = time.perf_counter()
    for _ in range(rounds):
        raw = codec.encode(values, timestamps_ms=ts)
    print(f"encode (rillet.batch.encode, columns): {_per_record(t, rounds * per_batch):.3f} us")

    stored = bytearray(raw)
    codec.stamp(stored, 0, 1)
    buf = bytes(stored)
    t = time.perf_counter()
    for _ in range(rounds):
        got = decode_batches("t", 0, buf)
    print(f"decode to columns (CRC + parse): {_per_record(t, rounds * per_batch):.3f} us")
    t = time.perf_counter()
    for _ in range(rounds):
        total = sum(map(len, got[0].values))
    print(f"read every value from columns: {_per_record(t, rounds * per_batch):.3f} us "
          f"({total} bytes)")
    t = time.perf_counter()
    for _ in range(rounds):
        for _rec in got[0]:
            pass
    print(f"iterate ConsumerRecord objects: {_per_record(t, rounds * per_batch):.3f} us")

    for name, (us, cpu) in asyncio.run(_producer_costs(n, size)).items():
        print(f"{name} (send + seal + encode + ack): {us:.3f} us (CPU {cpu:.3f} us)")


if __name__ == "__main__":
    main()
