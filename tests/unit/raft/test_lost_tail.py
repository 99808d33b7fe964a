"""A follower whose disk lost acknowledged entries (a damaged tail cut on recovery) with
``Config.repair_lost_tail``: it starts, commits only what survived, and the leader sends the lost
entries again. Without the setting the same start refuses (the simulator's strict mode)."""

from __future__ import annotations

import pytest

from rillet.cluster.raft import MemoryStorage

from .raftnet import Network


def _lose_tail(net: Network, node_id: int, lost: int) -> MemoryStorage:
    """A copy of ``node_id``'s storage without its last ``lost`` entries, hard state kept."""
    old = net.storages[node_id]
    hs, conf = old.initial_state()
    ents = old.entries(old.first_index(), old.last_index() + 1)
    damaged = MemoryStorage(conf)
    damaged.append(ents[:-lost])
    damaged.set_hard_state(hs)
    return damaged


def _cluster(**config: object) -> Network:
    net = Network([1, 2, 3], **config)
    net.elect(1)
    for i in range(6):
        net.propose(1, b"v%d" % i)
    net.stabilize()
    assert net.cores[3].commit_index == net.cores[1].commit_index
    return net


def test_a_follower_that_lost_its_tail_fetches_it_again() -> None:
    net = _cluster(repair_lost_tail=True)
    leader_log = net.log_of(1)
    commit = net.cores[1].commit_index
    damaged = _lose_tail(net, 3, 3)

    core = net.add(3, damaged)
    assert core.commit_index == commit - 3  # clamped to what survived, not refused

    # The leader's next heartbeat names the old commit; the follower answers with its last
    # index, the leader probes back and sends the three entries again.
    net.tick(1, net.cores[1].config.heartbeat_ticks)
    net.stabilize()
    assert net.log_of(3) == leader_log
    assert net.cores[3].commit_index == commit
    assert net.cores[1].progress[3].match == net.cores[1].progress[2].match

    # And the group keeps committing with it.
    net.propose(1, b"after")
    net.stabilize()
    assert net.log_of(3) == net.log_of(1)
    assert net.cores[3].commit_index == net.cores[1].commit_index == commit + 1


def test_the_lost_tail_is_refused_without_repair() -> None:
    net = _cluster()
    damaged = _lose_tail(net, 3, 2)
    with pytest.raises(ValueError, match="past the last index"):
        net.add(3, damaged)
