"""The issue's produce and consume figures in one command: run `rillet bench` against nodes.

`python bench/end_to_end.py [--nodes 1|3] [--bootstrap HOST:PORT,...] [--count 2000000]`

With --nodes N (default 1) it starts N local nodes with the launcher's settings
(rillet.devcluster: node i on 127.0.0.(i+1):PORT with --peers when N > 1), creates the bench
topics with replication factor min(N, 3) unless --replication-factor says otherwise, runs
`rillet bench produce` for 100 B and 1 KiB records (send() per record, then send_many) and
`rillet bench consume` on what was written, prints each JSON line, and stops the nodes by PID.
With --bootstrap it starts nothing and measures the cluster already running there (e.g.
`make run`); topic names then carry the replication factor, so reruns reuse nothing stale.
Client and nodes share this machine's cores, which is what the targets assume.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from rillet.devcluster import start_cluster, stop_nodes

log = logging.getLogger("bench.end_to_end")


def run(bootstrap: str, *args: str) -> None:
    cmd = [sys.executable, "-m", "rillet.cli", "bench", *args, "--bootstrap", bootstrap, "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {out.stderr.strip()}")
    print(out.stdout.strip(), flush=True)


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
