"""Planted bugs: test-only variants of the core and of the node's Ready handling.

Each one is a real mistake a Raft implementation (or its driver) makes, reduced to the
smallest override. test_sim.py asserts the simulator catches every one of them on the default
seeds; if one ever survives, the simulator has gone blind somewhere.

- `reply_before_persist`: the DRIVER sends a Ready's messages before its fsync (a vote or an
  append acknowledgement promises state that a crash can still take away). This is a node
  variant, not a core variant, because the Ready contract puts that ordering in the driver.
- `vote_without_log_check`, `commit_previous_term`: core subclasses, defined where the core's
  method names are known (see below).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

from rillet.cluster.raft.storage import Storage

from .node import Core, CoreFactory, SimNode
from .options import Options
from .seeds import derive
from .simulation import Simulation, default_core_factory


class SendBeforeFsyncNode(SimNode):
    """Planted bug: messages leave before the Ready's writes are durable."""

    SEND_BEFORE_FSYNC = True


def _core_factory(core_class: type, options: Options) -> CoreFactory:
    from rillet.cluster.raft.core import Config

    def make(node_id: int, storage: Storage, rng: random.Random,
             logger: logging.Logger) -> Core:
        config = Config(id=node_id, pre_vote=options.pre_vote,
                        check_quorum=options.check_quorum)
        core: Core = core_class(config, storage, rng, logger)
        return core

    return make


def _planted_cores() -> dict[str, type]:
    """Core subclasses with one planted bug each (imported lazily: the core is optional)."""
    return {}


BUGS: dict[str, str] = {
    "reply_before_persist": "node sends a Ready's messages before fsyncing its writes",
}


def simulation_for(seed: int, bug: str | None = None, *,
                   verbose: Callable[[str], None] | None = None) -> Simulation:
    """The Simulation for `seed`, with the real core or with planted bug `bug`."""
    options = Options.swarm(seed, derive(seed, "options"))
    if bug is None:
        return Simulation(seed, options, verbose=verbose)
    if bug == "reply_before_persist":
        return Simulation(seed, options, core_factory=default_core_factory(options),
                          node_class=SendBeforeFsyncNode, bug=bug, verbose=verbose)
    cores = _planted_cores()
    if bug not in cores:
        raise ValueError(f"unknown planted bug {bug!r}; known: {sorted(BUGS)}")
    return Simulation(seed, options, core_factory=_core_factory(cores[bug], options), bug=bug,
                      verbose=verbose)
