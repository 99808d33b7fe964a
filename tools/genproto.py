"""Generate the Python gRPC stubs from proto/ into rillet/ (the proto path mirrors the package).

`python tools/genproto.py` writes them in place; `--out DIR` writes them elsewhere, which the
staleness test uses to compare the committed stubs with a fresh generation.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto"


def generate(out: Path) -> int:
    files = sorted(str(p.relative_to(PROTO)) for p in PROTO.rglob("*.proto"))
    include = str(Path(protoc.__file__).parent / "_proto")
    args = [
        "protoc",
        f"-I{PROTO}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *files,
    ]
    return int(protoc.main(args))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=ROOT)
    ns = parser.parse_args()
    return generate(ns.out)


if __name__ == "__main__":
    sys.exit(main())
