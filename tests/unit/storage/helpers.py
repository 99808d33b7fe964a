"""Helpers for the storage tests: batch builders, a fake clock, reading everything back."""

from __future__ import annotations

from rillet import batch
from rillet.node.storage.log import PartitionLog


class FakeClock:
    """Milliseconds that move only when a test says so."""

    def __init__(self, now_ms: int = 1_700_000_000_000) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, ms: int) -> None:
        self.now_ms += ms


def make_batch(n_records: int = 3, *, ts_ms: int = 1_000, value_size: int = 10,
               tag: int = 0) -> bytes:
    """A valid batch whose values encode `tag` so tests can tell batches apart."""
    values = [tag.to_bytes(8, "little") + bytes(max(0, value_size - 8))] * n_records
    return batch.encode(values, timestamps_ms=[ts_ms] * n_records)


def read_all(log: PartitionLog, start: int | None = None) -> list[tuple[batch.BatchHeader, bytes]]:
    """Every batch from `start` to the log end, each CRC-verified, via small reads."""
    out: list[tuple[batch.BatchHeader, bytes]] = []
    offset = log.log_start_offset if start is None else start
    for _ in range(100_000):
        data = log.read(offset, 4096)
        if not data:
            break
        for header, view in batch.iter_batches(data):
            out.append((header, bytes(view)))
            offset = header.next_offset
    return out
