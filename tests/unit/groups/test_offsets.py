"""The single-node offset store: durable across reopen, all-or-nothing per commit, and the
stored generation only moves up."""

from __future__ import annotations

from pathlib import Path

import pytest

from rillet.node.groups.errors import UnknownGroupError
from rillet.node.groups.offsets import Committed, FileOffsetStore


async def test_commit_generation_delete_survive_reopen(tmp_path: Path) -> None:
    store = FileOffsetStore(tmp_path / "groups")
    store.load()
    await store.commit("g", 3, {("t", 0): (5, "m"), ("t", 1): (6, "")}, 1000)
    await store.store_generation("g", 7)
    await store.store_generation("g", 4)  # never backwards
    await store.commit("h", -1, {("t", 0): (1, "")}, 2000)
    again = FileOffsetStore(tmp_path / "groups")
    again.load()
    assert again.generation("g") == 7
    assert again.offsets("g") == {("t", 0): Committed(5, "m", 1000),
                                  ("t", 1): Committed(6, "", 1000)}
    assert again.groups() == ["g", "h"]
    await again.delete("h")
    with pytest.raises(UnknownGroupError):
        await again.delete("h")
    third = FileOffsetStore(tmp_path / "groups")
    third.load()
    assert third.groups() == ["g"] and third.generation("h") == 0


async def test_failed_write_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    store = FileOffsetStore(tmp_path / "groups")
    store.load()
    await store.commit("g", 1, {("t", 0): (5, "")}, 1)

    def broken(path: Path, data: bytes) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("rillet.node.groups.offsets.write_atomic", broken)
    with pytest.raises(OSError):
        await store.commit("g", 1, {("t", 0): (9, "")}, 2)
    assert store.offsets("g")[("t", 0)].offset == 5
