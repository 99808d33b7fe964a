"""The chaos runs' planted bug (rillet.chaos.planted.EarlyAckRound) changes when an acks=all
produce is answered, and nothing else.

Three replicas of a partition on RaftDrivers over an in-memory network; the leader is cut off
from both followers, so nothing it appends from then on can commit. With the round every node
runs, its producer's answer waits (no majority, no answer); with the planted round it comes
with the batch's base offset as soon as the leader staged the entry in its own log. The
end-to-end consequence (a kill -9 of that leader loses the acknowledged record, and the
checker says so) is in tests/integration/test_chaos_workload.py and tests/chaos.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from rillet.chaos.planted import EarlyAckRound
from rillet.cluster.rounds import Round
from tests.unit.node.test_replica import GROUP, NODES, Replicas, make_batch
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=[Round, EarlyAckRound], ids=["round", "planted"])
async def replicas(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Replicas]:
    r = Replicas(tmp_path, round_type=request.param)
    r.start()
    yield r
    await r.stop()


async def test_the_lone_leader_answers_only_with_the_planted_round(replicas: Replicas) -> None:
    first = await replicas.produce_retrying(make_batch([b"a", b"b"]))
    assert first == 0
    leader = await replicas.leader()
    await wait_for(lambda: all(p.high_watermark == 2 for p in replicas.parts.values()),
                   "every replica to apply the first batch")
    for n in NODES:
        if n != leader:
            replicas.network.cut(leader, n)
            replicas.network.cut(n, leader)
    part = replicas.parts[leader]
    core = replicas.drivers[leader].core(GROUP)
    commit = core.commit_index
    answer, _ = part.produce(make_batch([b"c"]))
    index = part.rlog.last_index() + 1
    syncs = replicas.drivers[leader].stats.syncs
    # The entry is staged and the round that staged it has synced and finished.
    await wait_for(lambda: part.rlog.last_index() >= index
                   and replicas.drivers[leader].stats.syncs > syncs,
                   "the leader to write the entry")
    assert core.commit_index == commit  # nobody else has it: not committed
    if replicas.round_type is EarlyAckRound:
        assert answer.done() and answer.result() == 2  # after a, b: acknowledged anyway
    else:
        assert not answer.done()
    assert part.high_watermark == 2  # readers never see it either way
