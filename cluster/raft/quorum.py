"""Pure majority arithmetic: the commit index a majority has reached, and election results.

Kept apart from the core so it can be checked against a deliberately simple oracle
(tests/unit/raft/test_quorum.py). Only voters count; learners never reach this module.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping


class VoteResult(enum.IntEnum):
    """The outcome of an election so far."""

    PENDING = 0
    """Neither side has a majority yet; wait for more responses."""
    LOST = 1
    """A majority refused (or can no longer grant): give up this campaign."""
    WON = 2
    """A majority granted."""


def majority_commit_index(match_indexes: Collection[int]) -> int:
    """The largest index that a majority of voters has reached, given each voter's match index.

    With n voters a majority is ``n // 2 + 1``: sorted in descending order, the entry at
    position ``n // 2`` is the highest index at least that many voters hold. No voters means
    nothing can be committed: 0.
    """
    if not match_indexes:
        return 0
    ordered = sorted(match_indexes, reverse=True)
    return ordered[len(ordered) // 2]


def vote_result(voters: Collection[int], votes: Mapping[int, bool]) -> VoteResult:
    """Tally ``votes`` (voter id -> granted) over ``voters``; votes of non-voters are ignored.

    WON when a majority granted, LOST when even all missing votes could not make a majority,
    PENDING otherwise. An empty voter set wins trivially (nobody can object).
    """
    if not voters:
        return VoteResult.WON
    granted = sum(1 for v in voters if votes.get(v) is True)
    missing = sum(1 for v in voters if v not in votes)
    majority = len(voters) // 2 + 1
    if granted >= majority:
        return VoteResult.WON
    if granted + missing >= majority:
        return VoteResult.PENDING
    return VoteResult.LOST
