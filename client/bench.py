"""Load generators behind `rillet bench produce|consume`.

They drive the public client API exactly as an application would, so the figures include the
client's own costs (record handles, batching, encoding, decoding). Ack latency is sampled: one
record in `sample_every` gets a done-callback that records send-to-ack time, which keeps the
measurement from becoming the workload.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from rillet.client.admin import Admin
from rillet.client.connection import Credentials
from rillet.client.consumer import Consumer
from rillet.client.errors import TopicExistsError, UnknownTopicError
from rillet.client.producer import Producer

log = logging.getLogger(__name__)


@dataclass
class BenchResult:
    """What one bench run measured; `as_dict()` is the --json output."""

    mode: str
    topic: str
    records: int
    record_bytes: int
    seconds: float
    records_per_s: float
    mb_per_s: float
    latency_ms: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        line = (f"{self.mode}: {self.records} records of {self.record_bytes} B in "
                f"{self.seconds:.2f} s: {self.records_per_s:,.0f} records/s, "
                f"{self.mb_per_s:.1f} MB/s")
        if self.latency_ms:
            line += ", ack latency " + ", ".join(
                f"{k} {v:.1f} ms" for k, v in self.latency_ms.items())
        return line


class _Sample:
    """Done-callback recording one record's send-to-ack time."""

    __slots__ = ("clock", "out", "sent")

    def __init__(self, sent: float, out: list[float], clock: Callable[[], float]) -> None:
        self.sent, self.out, self.clock = sent, out, clock

    def __call__(self, _fut: object) -> None:
        self.out.append(self.clock() - self.sent)


def percentiles(samples: Sequence[float], points: Sequence[float] = (50, 99, 99.9)
                ) -> dict[str, float]:
    """Nearest-rank percentiles, keyed "p50", "p99", "p999"."""
    if not samples:
        return {}
    ordered = sorted(samples)
    out = {}
    for p in points:
        rank = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))
        out["p" + f"{p:g}".replace(".", "")] = ordered[rank]
    return out


async def ensure_topic(bootstrap: str, topic: str, partitions: int,
                       credentials: Credentials | None = None) -> int:
    """Create the bench topic unless it exists; returns its partition count."""
    async with Admin(bootstrap, credentials=credentials) as admin:
        try:
            desc = await admin.describe_topic(topic)
            return len(desc.partitions)
        except UnknownTopicError:
            pass
        try:
            await admin.create_topic(topic, partitions, config={"retention.ms": -1})
        except TopicExistsError:
            pass
        return len((await admin.describe_topic(topic)).partitions)


async def bench_produce(
    bootstrap: str, topic: str, *, count: int, record_bytes: int, acks: str = "all",
    partitions: int = 1, linger_ms: float = 5.0, batch_bytes: int = 1_000_000,
    max_in_flight: int = 5, sample_every: int = 10, api: str = "record",
    chunk: int = 1000, buffer_bytes: int = 8 * 1024 * 1024, idempotent: bool = True,
    credentials: Credentials | None = None,
) -> BenchResult:
    """Produce `count` records; `api` is "record" (`send()` per record, a RecordFuture each) or
    "many" (`send_many()` with `chunk` records per call, one future per call).

    The load is open-loop up to `buffer_bytes` of unacknowledged records, so ack latency
    includes the time a record waits in that buffer; a smaller buffer shows the pipeline's
    own latency at some cost in throughput."""
    n_parts = await ensure_topic(bootstrap, topic, partitions, credentials)
    value = os.urandom(record_bytes)
    latencies: list[float] = []
    clock = time.perf_counter

    async with Producer(bootstrap, acks=acks, linger_ms=linger_ms, batch_bytes=batch_bytes,
                        max_in_flight=max_in_flight, buffer_bytes=buffer_bytes,
                        idempotent=idempotent, credentials=credentials) as producer:
        # Warm the metadata cache and the stream so the timing starts with a live connection.
        await (await producer.send(topic, value))
        start = clock()
        if api == "many":
            values = [value] * chunk
            for i in range(0, count, chunk):
                many = await producer.send_many(topic, values[:min(chunk, count - i)])
                many.add_done_callback(_Sample(clock(), latencies, clock))
        else:
            for i in range(count):
                fut = await producer.send(topic, value)
                if i % sample_every == 0:
                    fut.add_done_callback(_Sample(clock(), latencies, clock))
        await producer.flush()
        elapsed = clock() - start
    return BenchResult(
        mode="produce", topic=topic, records=count, record_bytes=record_bytes,
        seconds=elapsed, records_per_s=count / elapsed,
        mb_per_s=count * record_bytes / elapsed / 1e6,
        latency_ms={k: v * 1000 for k, v in percentiles(latencies).items()},
        settings={"api": api, "acks": acks, "partitions": n_parts,
                  "buffer_bytes": buffer_bytes, "linger_ms": linger_ms,
                  "batch_bytes": batch_bytes, "max_in_flight": producer.max_in_flight,
                  "idempotent": producer.producer_id >= 0,
                  "latency_samples": len(latencies)})


async def bench_consume(
    bootstrap: str, topic: str, *, count: int, record_bytes: int, partitions: int = 1,
    max_bytes: int = 1024 * 1024, read_values: bool = True, timeout_s: float = 60.0,
    credentials: Credentials | None = None,
) -> BenchResult:
    """Consume `count` records from earliest, producing them first if the topic has fewer."""
    n_parts = await ensure_topic(bootstrap, topic, partitions, credentials)
    async with Admin(bootstrap, credentials=credentials) as admin:
        desc = await admin.describe_topic(topic)
    stored = sum(p.high_watermark - p.log_start_offset for p in desc.partitions)
    if stored < count:
        log.info("bench consume: producing %d records first", count - stored)
        await bench_produce(bootstrap, topic, count=count - stored, record_bytes=record_bytes,
                            acks="leader", partitions=partitions, credentials=credentials)
    got = 0
    value_bytes = 0
    clock = time.perf_counter
    async with Consumer(bootstrap, topic, start="earliest", max_bytes=max_bytes,
                        credentials=credentials) as consumer:
        start = clock()
        deadline = start + timeout_s
        while got < count and clock() < deadline:
            for b in await consumer.getmany(max(deadline - clock(), 0.0)):
                take = min(len(b), count - got)
                if read_values:
                    value_bytes += sum(map(len, b.values[:take]))
                got += take
                if got >= count:
                    break
        elapsed = clock() - start
    return BenchResult(
        mode="consume", topic=topic, records=got, record_bytes=record_bytes,
        seconds=elapsed, records_per_s=got / elapsed,
        mb_per_s=(value_bytes or got * record_bytes) / elapsed / 1e6,
        settings={"partitions": n_parts, "max_bytes": max_bytes, "read_values": read_values,
                  "wanted": count})
