"""Golden transcripts: scripted scenarios whose every Ready is rendered with describe() and
compared with tests/unit/raft/testdata/*.txt.

A file holds commands (lines starting with ``> ``) each followed by the Readies it caused, one
per line. To regenerate after an intended change, run with ``RAFT_REWRITE=1`` and read the diff
before committing it: a changed transcript is a changed behaviour.

Commands (each followed by delivery until quiet, except ``isolate``/``heal``/``cut``):
``campaign N``, ``propose N DATA``, ``tick N [COUNT]``, ``tick-all [COUNT]``, ``transfer N M``,
``add-learner N M`` (leader N adds node M, started with the membership it joins),
``promote N M``, ``remove N M``, ``compact N`` (at N's applied index), ``isolate N``,
``cut A B``, ``heal``, ``status N``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from raftnet import Network

from rillet.cluster.raft import ConfChange, ConfChangeKind, ConfState, MemoryStorage

TESTDATA = Path(__file__).resolve().parent / "testdata"
_CONF_KINDS = {"add-learner": ConfChangeKind.ADD_LEARNER, "promote": ConfChangeKind.PROMOTE,
               "remove": ConfChangeKind.REMOVE}


def _run_command(net: Network, words: list[str], out: list[str]) -> None:
    cmd, args = words[0], words[1:]
    nums = [int(a) for a in args if a.isdigit()]
    deliver = True
    if cmd == "campaign":
        net.cores[nums[0]].campaign()
    elif cmd == "propose":
        net.cores[nums[0]].propose(args[1].encode())
    elif cmd == "tick":
        for _ in range(nums[1] if len(nums) > 1 else 1):
            net.cores[nums[0]].tick()
            net.stabilize()
    elif cmd == "tick-all":
        net.tick_all(nums[0] if nums else 1)
    elif cmd == "transfer":
        net.cores[nums[0]].transfer_leader(nums[1])
    elif cmd in _CONF_KINDS:
        leader = net.cores[nums[0]]
        if cmd == "add-learner":
            conf = leader.conf_state
            net.add(nums[1], MemoryStorage(ConfState(conf.voters, conf.learners | {nums[1]})))
        leader.propose_conf_change(ConfChange(_CONF_KINDS[cmd], nums[1]))
    elif cmd == "compact":
        core = net.cores[nums[0]]
        net.storages[nums[0]].compact(core.applied_index, core.conf_state)
        deliver = False
    elif cmd == "isolate":
        net.isolate(nums[0])
        deliver = False
    elif cmd == "cut":
        net.cut(nums[0], nums[1])
        deliver = False
    elif cmd == "heal":
        net.heal()
        deliver = False
    elif cmd == "status":
        out.append(net.cores[nums[0]].describe())
        deliver = False
    else:
        raise ValueError(f"unknown command {cmd!r}")
    if deliver:
        net.stabilize()


def _transcript(script: str) -> str:
    lines = script.splitlines()
    header = lines[0]
    assert header.startswith("# nodes: "), "first line: '# nodes: 1 2 3 [learners: 4]'"
    spec = header.removeprefix("# nodes: ").split(" learners: ")
    voters = [int(x) for x in spec[0].split()]
    learners = [int(x) for x in spec[1].split()] if len(spec) > 1 else []
    net = Network(voters, learners=learners, seed=1)
    out: list[str] = [header]
    net.trace = out
    for line in lines[1:]:
        if line.startswith("#") and not out[-1:] == [line]:
            out.append(line)
        if not line.startswith("> "):
            continue
        out.append(line)
        _run_command(net, line[2:].split(), out)
    return "\n".join(out) + "\n"


@pytest.mark.parametrize("path", sorted(TESTDATA.glob("*.txt")), ids=lambda p: p.stem)
def test_transcript(path: Path) -> None:
    expected = path.read_text()
    actual = _transcript(expected)
    if os.environ.get("RAFT_REWRITE") == "1":
        path.write_text(actual)
        return
    assert actual == expected, f"{path.name} changed; rerun with RAFT_REWRITE=1 and review"
