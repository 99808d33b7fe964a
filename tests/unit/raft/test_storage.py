"""MemoryStorage keeps the ranges the Storage protocol documents."""

from __future__ import annotations

import pytest

from rillet.cluster.raft import (
    CompactedError,
    ConfState,
    Entry,
    HardState,
    MemoryStorage,
    Snapshot,
    SnapshotMeta,
    SnapshotOutOfDateError,
    UnavailableError,
)

CONF = ConfState(frozenset({1, 2, 3}))


def _storage(terms: list[int]) -> MemoryStorage:
    s = MemoryStorage(CONF)
    s.append([Entry(i, t, data=b"x" * 10) for i, t in enumerate(terms, start=1)])
    return s


def test_fresh_storage_is_empty_at_log_start_zero() -> None:
    s = MemoryStorage(CONF)
    assert (s.first_index(), s.last_index(), s.term(0)) == (1, 0, 0)
    assert s.initial_state() == (HardState(), CONF)
    assert s.entries(1, 1) == []


def test_entries_range_and_errors() -> None:
    """[lo, hi) half-open; below the first index: compacted; past the end: unavailable."""
    s = _storage([1, 1, 2, 3, 3])
    s.compact(2)
    assert [e.index for e in s.entries(3, 6)] == [3, 4, 5]
    with pytest.raises(CompactedError):
        s.entries(2, 4)
    with pytest.raises(UnavailableError):
        s.entries(3, 7)
    assert s.term(2) == 1  # the log start's term is kept for log matching
    with pytest.raises(CompactedError):
        s.term(1)
    with pytest.raises(UnavailableError):
        s.term(6)


def test_max_bytes_returns_at_least_one_entry() -> None:
    s = _storage([1, 1, 1, 1])
    assert len(s.entries(1, 5, max_bytes=25)) == 2
    assert len(s.entries(1, 5, max_bytes=1)) == 1
    assert len(s.entries(1, 5, max_bytes=None)) == 4


def test_append_truncates_conflicting_suffix() -> None:
    s = _storage([1, 1, 1, 1])
    s.append([Entry(3, 2), Entry(4, 2), Entry(5, 2)])
    assert [(e.index, e.term) for e in s.entries(1, 6)] == [(1, 1), (2, 1), (3, 2), (4, 2),
                                                            (5, 2)]
    with pytest.raises(AssertionError, match="gap"):
        s.append([Entry(9, 2)])


def test_append_ignores_entries_below_log_start() -> None:
    s = _storage([1, 1, 1, 1])
    s.compact(3)
    s.append([Entry(2, 1), Entry(3, 1), Entry(4, 1), Entry(5, 1)])
    assert (s.first_index(), s.last_index()) == (4, 5)


def test_compact_records_the_snapshot_at_log_start() -> None:
    s = _storage([1, 2, 2])
    s.compact(2, data=b"state")
    assert s.snapshot() == Snapshot(SnapshotMeta(2, 2, CONF), b"state")
    assert s.first_index() == 3
    with pytest.raises(CompactedError):
        s.compact(2)


def test_apply_snapshot_replaces_the_log() -> None:
    s = _storage([1, 1, 1])
    other = ConfState(frozenset({1, 2}), frozenset({4}))
    s.apply_snapshot(Snapshot(SnapshotMeta(10, 4, other), b"s"))
    assert (s.first_index(), s.last_index(), s.term(10)) == (11, 10, 4)
    assert s.initial_state()[1] == other
    with pytest.raises(SnapshotOutOfDateError):
        s.apply_snapshot(Snapshot(SnapshotMeta(5, 4, other)))


def test_initial_conf_follows_log_start_unless_saved() -> None:
    """A restart that re-applies from the log start must begin with the membership AT the log
    start (changes before it are gone from the log); a caller persisting its applied index
    saves the membership there with set_conf_state."""
    s = _storage([1, 1, 1])
    later = ConfState(frozenset({1, 2, 3, 4}))
    s.compact(2, later)
    assert s.initial_state()[1] == later
    applied = ConfState(frozenset({1, 2, 3, 4}), frozenset({5}))
    s.set_conf_state(applied)
    assert s.initial_state()[1] == applied
    s.compact(3)
    assert s.snapshot().meta.conf == applied
