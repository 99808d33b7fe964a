"""Planted bugs: test-only variants of the core and of the node's Ready handling.

Each one is a real mistake a Raft implementation (or its driver) makes, reduced to the
smallest override. test_sim.py asserts the simulator catches every one of them on the default
seeds; if one ever survives, the simulator has gone blind somewhere.

- `reply_before_persist`: the ROUND sends a Ready's persisted messages with the ones that
  may leave at once, before its fsync (a vote or an append acknowledgement promises state that
  a crash can still take away).
- `ack_before_commit`: the ROUND answers a leader's proposals once the leader has the entry
  on its own disk, before a majority has it (what the chaos runs plant in real nodes,
  rillet.chaos.planted).
- `apply_uncommitted`: the ROUND applies the entries a Ready hands out to persist, before
  they are committed.

The round bugs are subclasses of rillet.cluster.rounds.Round overriding one step; a node
class runs them (`round_type`), exactly where production runs the real round.
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

from rillet.cluster.raft.types import Role
from rillet.cluster.rounds import Round, settle, settle_snapshot

from .node import SimNode
from .options import Options
from .seeds import derive
from .simulation import Simulation, core_factory, default_core_factory


class SendBeforeFsyncRound(Round):
    """Planted bug: every message leaves before the Ready's writes are durable."""

    def send_early(self) -> None:
        self.send_messages([(group, rd.all_messages()) for group, rd in self.work])

    def send_persisted(self) -> None:
        pass


class AckBeforeCommitRound(Round):
    """Planted bug: a leader answers its proposals once its own write of the entry is
    durable, without waiting for a majority (the answer a future resolves with is the
    entry's index, as the simulated state machine's apply returns)."""

    def send_persisted(self) -> None:
        super().send_persisted()
        for group, rd in self.work:
            if not rd.entries or group.core.role != Role.LEADER:
                continue
            last = rd.entries[-1].index
            for p in group.pending:
                if p.index > last:
                    break
                if not p.future.done():
                    p.future.set_result(p.index)


class ApplyUncommittedRound(Round):
    """Planted bug: the entries a Ready hands out to persist are applied at once, as if
    committed (a driver that applies its log instead of its committed entries)."""

    def apply(self) -> None:
        for group, rd in self.work:
            if rd.snapshot is not None:
                group.machine.restore(rd.snapshot)
                settle_snapshot(group, rd.snapshot)
            done = rd.committed_entries[-1].index if rd.committed_entries else 0
            entries = rd.committed_entries + [e for e in rd.entries if e.index > done]
            if entries:
                settle(group, entries, group.machine.apply(entries))


def _node_with(round_type: type[Round]) -> type[SimNode]:
    return type(f"{round_type.__name__}Node", (SimNode,), {"round_type": round_type})


ROUND_BUGS: dict[str, type[Round]] = {
    "reply_before_persist": SendBeforeFsyncRound,
    "ack_before_commit": AckBeforeCommitRound,
    "apply_uncommitted": ApplyUncommittedRound,
}


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
    "reply_before_persist": "the round sends votes and acknowledgements before its fsync",
    "ack_before_commit": "the round answers a leader's proposal before a majority has it",
    "apply_uncommitted": "the round applies entries before they are committed",
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
    if bug in ROUND_BUGS:
        return Simulation(seed, options, core_factory=default_core_factory(options),
                          node_class=_node_with(ROUND_BUGS[bug]), bug=bug,
                          overrides=overrides, verbose=verbose)
    cores = _planted_cores()
    if bug not in cores:
        raise ValueError(f"unknown planted bug {bug!r}; known: {sorted(BUGS)}")
    return Simulation(seed, options, core_factory=core_factory(cores[bug], options), bug=bug,
                      overrides=overrides, verbose=verbose)
