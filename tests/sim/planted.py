"""Planted bugs: test-only variants of the core and of the node's Ready handling.

Each one is a real mistake a Raft implementation (or its driver) makes, reduced to the
smallest override. test_sim.py asserts the simulator catches every one of them on the default
seeds; if one ever survives, the simulator has gone blind somewhere.

- `reply_before_persist`: the DRIVER sends a Ready's messages before its fsync (a vote or an
  append acknowledgement promises state that a crash can still take away). This is a node
  variant, not a core variant, because the Ready contract puts that ordering in the driver.
- `vote_without_log_check`: a core that grants votes without Raft §5.4.1's "candidate's log
  is at least as up to date" check (overrides `handle_vote_request` only).
- `commit_previous_term`: a core whose leader commits any entry a majority holds, also one of
  an earlier term (the Figure 8 mistake; overrides `maybe_commit` only).
- `forget_vote`: a core that never puts its vote into the hard state, so a restart in the
  same term can vote twice (overrides `hard_state` only).
- `quorum_off_by_one`: a leader that counts an entry as committed once `n // 2` voters hold
  it instead of `n // 2 + 1` (the classic `>=` for `>` slip): with 3 voters the leader alone
  commits, with 5 any two (overrides `maybe_commit` only).
"""

from __future__ import annotations

from collections.abc import Callable

from .node import SimNode
from .options import Options
from .seeds import derive
from .simulation import Simulation, core_factory, default_core_factory


class SendBeforeFsyncNode(SimNode):
    """Planted bug: messages leave before the Ready's writes are durable."""

    SEND_BEFORE_FSYNC = True


def _planted_cores() -> dict[str, type]:
    """Core subclasses with one planted bug each (imported lazily, beside the core)."""
    from rillet.cluster.raft.core import RaftCore
    from rillet.cluster.raft.log import RaftLog
    from rillet.cluster.raft.quorum import majority_commit_index
    from rillet.cluster.raft.types import NONE, HardState, Message

    class _AnyLogIsUpToDate(RaftLog):
        def is_up_to_date(self, last_index: int, last_term: int) -> bool:
            return True

    class VoteWithoutLogCheck(RaftCore):
        """Planted bug: (pre-)votes go to candidates with shorter or older logs."""

        def handle_vote_request(self, m: Message) -> None:
            real = type(self.log)
            self.log.__class__ = _AnyLogIsUpToDate  # only for this one call
            try:
                super().handle_vote_request(m)
            finally:
                self.log.__class__ = real

    class CommitPreviousTerm(RaftCore):
        """Planted bug: commit by counting replicas regardless of the entry's term."""

        def maybe_commit(self) -> bool:
            index = majority_commit_index(
                [self.progress[v].match for v in self.conf.voters if v in self.progress])
            if index > self.log.committed:
                self.log.commit_to(index)
                return True
            return False

    class ForgetVote(RaftCore):
        """Planted bug: the vote is kept in memory only, never persisted."""

        def hard_state(self) -> HardState:
            hs: HardState = super().hard_state()
            return HardState(hs.term, NONE, hs.commit)

    class QuorumOffByOne(RaftCore):
        """Planted bug: commit once n // 2 voters (a minority for odd n) hold the entry."""

        def maybe_commit(self) -> bool:
            matches = sorted((self.progress[v].match for v in self.conf.voters
                              if v in self.progress), reverse=True)
            if not matches:
                return False
            index = matches[max(0, len(matches) // 2 - 1)]
            if index > self.log.committed and self.log.term_or_zero(index) == self.term:
                self.log.commit_to(index)
                return True
            return False

    return {"vote_without_log_check": VoteWithoutLogCheck,
            "commit_previous_term": CommitPreviousTerm,
            "forget_vote": ForgetVote,
            "quorum_off_by_one": QuorumOffByOne}


BUGS: dict[str, str] = {
    "reply_before_persist": "node sends a Ready's messages before fsyncing its writes",
    "vote_without_log_check": "votes granted without the log up-to-date check",
    "commit_previous_term": "leader commits an earlier term's entry by counting replicas",
    "forget_vote": "the vote is never persisted",
    "quorum_off_by_one": "leader commits once n // 2 voters (not a majority) hold an entry",
}


def simulation_for(seed: int, bug: str | None = None, *, overrides: list[str] | None = None,
                   verbose: Callable[[str], None] | None = None) -> Simulation:
    """The Simulation for `seed`, with the real core or with planted bug `bug`."""
    overrides = overrides or []
    options = Options.swarm(seed, derive(seed, "options")).override(overrides)
    if bug is None:
        return Simulation(seed, options, overrides=overrides, verbose=verbose)
    if bug == "reply_before_persist":
        return Simulation(seed, options, core_factory=default_core_factory(options),
                          node_class=SendBeforeFsyncNode, bug=bug, overrides=overrides,
                          verbose=verbose)
    cores = _planted_cores()
    if bug not in cores:
        raise ValueError(f"unknown planted bug {bug!r}; known: {sorted(BUGS)}")
    return Simulation(seed, options, core_factory=core_factory(cores[bug], options), bug=bug,
                      overrides=overrides, verbose=verbose)
