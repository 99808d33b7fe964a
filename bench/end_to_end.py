"""The issue's produce and consume figures in one command: start a node, run `rillet bench`.

`python bench/end_to_end.py [--port 19901] [--count 2000000]` starts one broker on 127.0.0.1 with
the launcher's malloc settings (rillet.devcluster), runs `rillet bench produce` for 100 B and
1 KiB records (send() per record, then send_many) and `rillet bench consume` on what was
written, prints each JSON line, and stops the node by its PID. Client and node share this
machine's cores, which is what the targets assume.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from rillet.devcluster import start_node, stop_nodes, wait_serving


def run(bootstrap: str, *args: str) -> None:
    cmd = [sys.executable, "-m", "rillet.cli", "bench", *args, "--bootstrap", bootstrap, "--json"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
    print(out.stdout.strip(), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=19901)
    parser.add_argument("--count", type=int, default=2_000_000)
    ns = parser.parse_args()
    data = Path(tempfile.mkdtemp(prefix="rillet-bench-"))
    node = start_node(0, f"127.0.0.1:{ns.port}", data / "node-0")
    try:
        wait_serving(node)
        small, large = str(ns.count), str(max(1, ns.count // 7))
        run(node.address, "produce", "--topic", "e2e-100", "--record-size", "100",
            "--count", small, "--api", "record")
        run(node.address, "produce", "--topic", "e2e-100", "--record-size", "100",
            "--count", small, "--api", "many")
        run(node.address, "produce", "--topic", "e2e-1k", "--record-size", "1024",
            "--count", large, "--api", "record")
        run(node.address, "consume", "--topic", "e2e-100", "--record-size", "100",
            "--count", small)
        run(node.address, "consume", "--topic", "e2e-1k", "--record-size", "1024",
            "--count", large)
    finally:
        stop_nodes([node])
        shutil.rmtree(data, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
