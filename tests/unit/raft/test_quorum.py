"""Quorum arithmetic against a deliberately plain oracle (hypothesis)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from rillet.cluster.raft.quorum import VoteResult, majority_commit_index, vote_result


def _oracle_commit(matches: list[int]) -> int:
    """The largest index held by at least a majority: try every candidate index."""
    if not matches:
        return 0
    majority = len(matches) // 2 + 1
    return max((i for i in [0, *matches] if sum(m >= i for m in matches) >= majority), default=0)


def _oracle_vote(voters: set[int], votes: dict[int, bool]) -> VoteResult:
    """Count yes and no among voters; whatever is left could still go either way."""
    if not voters:
        return VoteResult.WON
    yes = len([v for v in voters if votes.get(v) is True])
    no = len([v for v in voters if votes.get(v) is False])
    need = len(voters) // 2 + 1
    if yes >= need:
        return VoteResult.WON
    if len(voters) - no < need:
        return VoteResult.LOST
    return VoteResult.PENDING


@given(st.lists(st.integers(min_value=0, max_value=50), max_size=9))
def test_majority_commit_index_matches_oracle(matches: list[int]) -> None:
    """Raft paper §5.3: the commit point is the highest index a majority holds."""
    assert majority_commit_index(matches) == _oracle_commit(matches)


@given(st.sets(st.integers(min_value=1, max_value=9), max_size=7),
       st.dictionaries(st.integers(min_value=1, max_value=12), st.booleans()))
def test_vote_result_matches_oracle(voters: set[int], votes: dict[int, bool]) -> None:
    """Raft paper §5.2: a candidate wins with a majority of the voters; non-voters' answers
    (learners, removed nodes) do not count."""
    assert vote_result(voters, votes) == _oracle_vote(voters, votes)


def test_examples() -> None:
    """A few cases to read."""
    assert majority_commit_index([5, 4, 1]) == 4
    assert majority_commit_index([5, 4, 3, 1]) == 3
    assert majority_commit_index([]) == 0
    assert vote_result({1, 2, 3}, {1: True, 2: True}) == VoteResult.WON
    assert vote_result({1, 2, 3}, {1: True, 2: False}) == VoteResult.PENDING
    assert vote_result({1, 2, 3}, {1: True, 2: False, 3: False}) == VoteResult.LOST
    assert vote_result({1, 2, 3}, {1: True, 7: True}) == VoteResult.PENDING
