"""HardStateJournal: one file, one fsync per round, for every group's term, vote and commit."""

from __future__ import annotations

from pathlib import Path

from rillet.cluster.raft import HardState
from rillet.node.storage.hardstate import RECORD_SIZE, HardStateJournal


def test_the_last_synced_state_of_each_group_survives_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "hs"
    j = HardStateJournal(path)
    j.stage(1, HardState(1, 2, 0))
    j.stage(2, HardState(3, 0, 5))
    j.sync()
    j.stage(1, HardState(2, 3, 4))
    j.sync()
    j.stage(2, HardState(9, 9, 9))  # staged, never synced: a crash loses it
    assert j.get(2) == HardState(9, 9, 9)
    assert j.syncs == 2
    again = HardStateJournal(path)
    assert again.get(1) == HardState(2, 3, 4)
    assert again.get(2) == HardState(3, 0, 5)
    assert again.get(3) is None
    again.close()


def test_a_torn_tail_is_cut_and_the_rest_kept(tmp_path: Path) -> None:
    path = tmp_path / "hs"
    j = HardStateJournal(path)
    j.stage(7, HardState(1, 1, 1))
    j.sync()
    j.close()
    with open(path, "ab") as fh:
        fh.write(b"\x01" * (RECORD_SIZE - 3))  # half a record: a crash mid-append
    again = HardStateJournal(path)
    assert again.get(7) == HardState(1, 1, 1)
    assert path.stat().st_size == RECORD_SIZE
    again.stage(7, HardState(2, 2, 2))
    again.close()
    assert HardStateJournal(path).get(7) == HardState(2, 2, 2)


def test_compaction_keeps_one_record_per_live_group_and_drops_forgotten_ones(
        tmp_path: Path) -> None:
    path = tmp_path / "hs"
    j = HardStateJournal(path, compact_bytes=RECORD_SIZE * 50)
    for term in range(1, 40):
        for group in (1, 2):
            j.stage(group, HardState(term, group, term))
        j.sync()
    j.forget(2)
    j.stage(1, HardState(100, 1, 100))
    j.sync()
    assert path.stat().st_size < RECORD_SIZE * 50
    j.close()
    again = HardStateJournal(path)
    assert again.get(1) == HardState(100, 1, 100)
    assert again.get(2) is None
    again.close()


def test_a_commit_alone_waits_for_a_later_sync_but_a_term_or_vote_never_does(
        tmp_path: Path) -> None:
    path = tmp_path / "hs"
    j = HardStateJournal(path)
    j.stage(1, HardState(1, 1, 0))
    j.sync()
    assert j.syncs == 1
    j.stage(1, HardState(1, 1, 5))  # commit only: may wait (Raft re-learns it)
    j.sync()
    assert j.syncs == 1 and HardStateJournal(path).get(1) == HardState(1, 1, 0)
    j.stage(2, HardState(3, 0, 0))  # a new group's term: durable at this sync, commit with it
    j.sync()
    assert j.syncs == 2
    reopened = HardStateJournal(path)
    assert reopened.get(1) == HardState(1, 1, 5) and reopened.get(2) == HardState(3, 0, 0)
    reopened.close()
    j.stage(1, HardState(1, 1, 9))
    j.close()  # close forces what waits
    assert HardStateJournal(path).get(1) == HardState(1, 1, 9)
