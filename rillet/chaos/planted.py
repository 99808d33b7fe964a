"""The planted bug of the chaos runs: a Raft round that acknowledges too early.

`EarlyAckRound` answers a leader's produce proposals as soon as the leader has staged the
entry in its own log, before a majority has it on disk: a kill -9 of that leader can then lose
acknowledged writes, and the chaos checker must say so (tests/chaos/test_chaos.py). It is a
subclass of the round every node runs (rillet.cluster.rounds.Round) overriding one step, as
the simulator's planted bugs are; the broker itself has no switch for it. Nodes run it only
when started through this module:

    python -m rillet.chaos.planted --node-id N --listen HOST:PORT --data-dir DIR --peers ...

which takes `rillet serve`'s flags (`ChaosCluster(..., planted=True)` does that).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from rillet.batch import parse_header
from rillet.cluster.raft import Role
from rillet.cluster.rounds import DurableLog, RaftGroup, Round
from rillet.node.cli import run, serve
from rillet.node.replica import ReplicatedPartition

log = logging.getLogger(__name__)

#: What the node logs at start, so a run's log shows the bug was on.
WARNING = ("PLANTED BUG (rillet.chaos.planted): THIS NODE ACKNOWLEDGES WRITES BEFORE A "
           "MAJORITY HAS THEM AND WILL LOSE ACKNOWLEDGED DATA; test use only")


class EarlyAckRound(Round):
    """Planted bug: a leader resolves its partitions' proposals once the entry is staged in
    its own log, with the base offset stamped there, instead of once it is committed."""

    def persist(self) -> list[DurableLog]:
        to_sync = super().persist()
        for group, rd in self.work:
            if (rd.entries and group.pending and group.core.role == Role.LEADER
                    and isinstance(group.machine, ReplicatedPartition)):
                _ack_staged(group, rd.entries[-1].index)
        return to_sync


def _ack_staged(group: RaftGroup, last: int) -> None:
    for p in group.pending:
        if p.index > last:
            break
        if not p.future.done():
            (entry,) = group.log.entries(p.index, p.index + 1)
            if entry.term == p.term:
                p.future.set_result(parse_header(entry.data).base_offset)


def _run_planted(config_file: Path | None, **flags: Any) -> None:
    log.warning("%s", WARNING)
    run(config_file, flags, round_type=EarlyAckRound)


#: `rillet serve` with the planted round: the same flags, the same environment.
planted_serve = click.Command("serve-planted", params=serve.params, callback=_run_planted,
                              help="Run one node whose Raft round acknowledges too early.")

if __name__ == "__main__":
    planted_serve(prog_name="python -m rillet.chaos.planted")
