"""Run mypy over the `rillet` namespace as users import it.

The top-level folders (node/, cluster/, client/) become rillet.node, rillet.cluster and
rillet.client only through setuptools' package-dir mapping, which mypy cannot follow through an
editable install's import hook. So this script lays out a tree of symbolic links under
build/typecheck/rillet that mirrors the installed package, and points mypy at it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAPPED = {"node": "node", "cluster": "cluster", "client": "client"}


def build_tree() -> Path:
    tree = ROOT / "build" / "typecheck"
    if tree.exists():
        shutil.rmtree(tree)
    pkg = tree / "rillet"
    pkg.mkdir(parents=True)
    for entry in (ROOT / "rillet").iterdir():
        if entry.name != "__pycache__":
            (pkg / entry.name).symlink_to(entry)
    for name, folder in MAPPED.items():
        (pkg / name).symlink_to(ROOT / folder)
    return tree


def main() -> int:
    tree = build_tree()
    config = str(ROOT / "pyproject.toml")
    cmd = [sys.executable, "-m", "mypy", "--config-file", config, "-p", "rillet"]
    return subprocess.call(cmd, cwd=tree)


if __name__ == "__main__":
    sys.exit(main())
