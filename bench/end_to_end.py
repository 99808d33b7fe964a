"""The issue's produce and consume figures in one command: run `rillet bench` against nodes.

`python bench/end_to_end.py [--nodes 1|3] [--bootstrap HOST:PORT,...] [--count 2000000]`

With --nodes N (default 1) it starts N local nodes with the launcher's settings
(rillet.devcluster: node i on 127.0.0.(i+1):PORT with --peers when N > 1), creates the bench
topics with replication factor min(N, 3) unless --replication-factor says otherwise, runs
`rillet bench produce` for 100 B and 1 KiB records (send() per record, then send_many) and
`rillet bench consume` on what was written, prints each JSON line, and stops the nodes by PID.
With --bootstrap it starts nothing and measures the cluster already running there (e.g.
`make run`); topic names carry the replication factor either way.

`--latency-rate R` adds a paced run: the producer sends R records/s (100 B, acks=all) for
`--latency-seconds` and reports the ack latency of every 10th record, measured from the time
the record was due to be sent (not when the loop got to it), so a stall counts against every
record it delayed. The issue's target is p99 <= 10 ms at half the 250,000 records/s target.
Client and nodes share this machine's cores, which is what the targets assume.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rillet.client import Admin, Producer
from rillet.client.bench import percentiles
from rillet.client.errors import TopicExistsError
from rillet.devcluster import start_cluster, stop_nodes

log = logging.getLogger("bench.end_to_end")


def run(bootstrap: str, *args: str) -> None:
    cmd = [sys.executable, "-m", "rillet.cli", "bench", *args, "--bootstrap", bootstrap, "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {out.stderr.strip()}")
    print(out.stdout.strip(), flush=True)


async def paced_latency(bootstrap: str, topic: str, rate: float, seconds: float,
                        partitions: int, replication_factor: int, linger_ms: float) -> None:
    """Send `rate` records/s for `seconds`; print one JSON line with the ack latencies."""
    async with Admin(bootstrap, timeout=30.0) as admin:
        try:
            await admin.create_topic(topic, partitions, replication_factor,
                                     {"retention.ms": -1})
        except TopicExistsError:
            pass
    value = b"x" * 100
    latencies: list[float] = []
    clock = time.perf_counter
    sample_every = 10
    async with Producer(bootstrap, acks="all", linger_ms=linger_ms) as producer:
        await (await producer.send(topic, value))  # metadata and streams warm
        start = clock()
        total = int(rate * seconds)
        sent = 0
        while sent < total:
            due = int((clock() - start) * rate) + 1
            while sent < min(due, total):
                fut = await producer.send(topic, value)
                if sent % sample_every == 0:
                    intended = start + sent / rate
                    fut.add_done_callback(
                        lambda _f, t0=intended: latencies.append(clock() - t0))
                sent += 1
            await asyncio.sleep(0.0005)
        send_s = clock() - start
        await producer.flush()
    lat = {k: round(v * 1000, 2) for k, v in percentiles(latencies).items()}
    print(json.dumps({"mode": "paced-produce", "topic": topic, "target_records_per_s": rate,
                      "achieved_records_per_s": round(total / send_s), "records": total,
                      "latency_ms": lat, "settings": {"acks": "all", "linger_ms": linger_ms,
                      "partitions": partitions, "replication_factor": replication_factor,
                      "latency_samples": len(latencies)}}), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1, help="local nodes to start (1, 3, 5)")
    parser.add_argument("--bootstrap", default=None,
                        help="measure a running cluster instead of starting nodes")
    parser.add_argument("--port", type=int, default=19911)
    parser.add_argument("--count", type=int, default=2_000_000)
    parser.add_argument("--partitions", type=int, default=None,
                        help="partitions per bench topic [1 for one node, else 6]")
    parser.add_argument("--replication-factor", type=int, default=None,
                        help="[min(nodes, 3); with --bootstrap 3]")
    parser.add_argument("--latency-rate", type=float, default=None,
                        help="also run a paced produce at this many records/s")
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument("--latency-linger-ms", type=float, default=1.0)
    parser.add_argument("--skip-throughput", action="store_true",
                        help="only the paced run (with --latency-rate)")
    ns = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    clustered = ns.bootstrap is not None or ns.nodes > 1
    rf = ns.replication_factor or (3 if ns.bootstrap else min(ns.nodes, 3))
    partitions = ns.partitions or (6 if clustered else 1)
    data = Path(tempfile.mkdtemp(prefix="rillet-bench-"))
    nodes = []
    try:
        if ns.bootstrap:
            bootstrap = ns.bootstrap
        else:
            nodes = start_cluster(data, ns.nodes, port=ns.port)
            bootstrap = ",".join(n.address for n in nodes)
        log.info("bench against %s: %d partitions, replication factor %d", bootstrap,
                 partitions, rf)
        topic_args = ["--partitions", str(partitions)]
        if clustered:
            topic_args += ["--replication-factor", str(rf)]
        if ns.latency_rate:
            asyncio.run(paced_latency(bootstrap, f"e2e-paced-rf{rf}", ns.latency_rate,
                                      ns.latency_seconds, partitions, rf,
                                      ns.latency_linger_ms))
        if ns.skip_throughput:
            return 0
        small, large = str(ns.count), str(max(1, ns.count // 7))
        t100, t1k = f"e2e-100-rf{rf}", f"e2e-1k-rf{rf}"
        run(bootstrap, "produce", "--topic", t100, "--record-size", "100",
            "--count", small, "--api", "record", *topic_args)
        run(bootstrap, "produce", "--topic", t100, "--record-size", "100",
            "--count", small, "--api", "many", *topic_args)
        run(bootstrap, "produce", "--topic", t1k, "--record-size", "1024",
            "--count", large, "--api", "record", *topic_args)
        run(bootstrap, "consume", "--topic", t100, "--record-size", "100",
            "--count", small, *topic_args)
        run(bootstrap, "consume", "--topic", t1k, "--record-size", "1024",
            "--count", large, *topic_args)
    finally:
        stop_nodes(nodes)
        shutil.rmtree(data, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
