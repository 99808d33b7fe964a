"""The core reads no clock, touches no event loop, and draws randomness only from its rng.

tests/unit/test_layout.py already forbids importing time, asyncio, os and friends in
rillet.cluster.raft; this checks the behaviour too: a cluster runs with those functions
booby-trapped, and two runs with the same seed produce identical transcripts.
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from raftnet import Network


def _boom(*_args: object, **_kwargs: object) -> object:
    raise AssertionError("the Raft core must not read clocks or touch asyncio")


def _run(seed: int) -> list[str]:
    net = Network([1, 2, 3], seed=seed)
    for i in range(60):
        net.tick_all()
        leaders = net.leaders()
        if leaders:
            net.cores[leaders[0]].propose(b"e%d" % i)
            net.stabilize()
    return [m.describe() for m in net.delivered]


def test_core_uses_no_clock_asyncio_or_global_random(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("time", "monotonic", "perf_counter", "time_ns", "monotonic_ns", "sleep"):
        monkeypatch.setattr(time, name, _boom)
    monkeypatch.setattr(asyncio, "get_event_loop", _boom)
    monkeypatch.setattr(asyncio, "get_running_loop", _boom)
    for name in ("random", "randrange", "randint", "choice", "shuffle", "uniform"):
        monkeypatch.setattr(random, name, _boom)

    transcript = _run(seed=3)

    assert any("APPEND" in line for line in transcript)


def test_same_seed_same_transcript() -> None:
    assert _run(seed=5) == _run(seed=5)
    assert _run(seed=5) != _run(seed=6)
