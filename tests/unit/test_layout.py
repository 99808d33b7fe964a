"""The layout rules of ARCHITECTURE.md, checked so nobody has to remember them."""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = {"rillet": "rillet", "rillet.node": "node", "rillet.cluster": "cluster",
           "rillet.client": "client"}

# Which first-party modules each layer may import (prefix match). Anything else of ours is
# forbidden. Third-party imports are checked separately for the pure Raft core.
# rillet.batch (the record batch codec) is part of the contract, beside the generated stubs;
# so is rillet.credentials (how a caller shows its certificate or bearer token), which the
# client and a node dialing its peers share.
ALLOWED = {
    "rillet.cluster.raft": ("rillet.cluster.raft",),
    "rillet.cluster": ("rillet.cluster",),
    "rillet.node": ("rillet.node", "rillet.cluster", "rillet.api", "rillet.internal",
                    "rillet.batch", "rillet.credentials"),
    "rillet.client": ("rillet.client", "rillet.api", "rillet.batch", "rillet.credentials"),
}
# The pure core may use the standard library, but nothing that does I/O or reads a clock.
STDLIB_ONLY = "rillet.cluster.raft"
FORBIDDEN_IN_CORE = {"asyncio", "os", "time", "socket", "threading", "subprocess",
                     "selectors", "io", "pathlib", "shutil", "tempfile", "signal"}


def _modules() -> list[tuple[str, Path]]:
    out = []
    for prefix, folder in FOLDERS.items():
        base = ROOT / folder
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(base).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([prefix, *parts])
            if name.startswith(("rillet.api", "rillet.internal")):
                continue
            out.append((name, path))
    return out


def _imports(name: str, path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from rillet import batch` imports rillet.batch: check the qualified names.
            found.extend(f"{mod}.{a.name}" for a in node.names)
    return found


def _layer(name: str) -> str | None:
    for layer in sorted(ALLOWED, key=len, reverse=True):
        if name == layer or name.startswith(layer + "."):
            return layer
    return None


def test_every_package_is_listed_in_pyproject() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"])
    for prefix, folder in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            assert ".".join([prefix, *rel]) in listed, f"{init.parent} missing from pyproject"


@pytest.mark.parametrize(("name", "path"), _modules(), ids=lambda v: str(v))
def test_import_direction(name: str, path: Path) -> None:
    layer = _layer(name)
    if layer is None:
        return
    allowed = ALLOWED[layer]
    for mod in _imports(name, path):
        top = mod.split(".")[0]
        if top != "rillet":
            if layer == STDLIB_ONLY and top != "__future__":
                assert top in sys.stdlib_module_names, f"{name} imports non-stdlib {mod}"
                assert top not in FORBIDDEN_IN_CORE, f"{name} imports {mod}, which does I/O"
            continue
        ok = any(mod == a or mod.startswith(a + ".") for a in allowed)
        assert ok, f"{name} ({layer}) must not import {mod}"


def test_no_print_in_library_code() -> None:
    for name, path in _modules():
        if name == "rillet.cli" or name.startswith("rillet.cli."):
            continue
        tree = ast.parse(path.read_text())
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
                 and isinstance(n.func, ast.Name) and n.func.id == "print"]
        assert not calls, f"{name} calls print(); log through logging instead"


def test_no_module_imports_another_modules_private_names() -> None:
    """Seams, not reach-ins (STYLE.md habit 11): a name with a leading underscore is its
    module's own; a module that needs it asks the owner to make it public."""
    reach_ins = []
    for name, path in _modules():
        for mod in _imports(name, path):
            if not mod.startswith("rillet."):
                continue
            owner, _, imported = mod.rpartition(".")
            if imported.startswith("_") and not imported.startswith("__") and owner != name:
                reach_ins.append(f"{name} imports {mod}")
    assert reach_ins == []
