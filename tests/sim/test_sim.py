"""Seed sweeps of the real core, the simulator's determinism, and the planted bugs.

The default suite runs DEFAULT_SEEDS (fixed, so a red build is red for everyone). `-m slow`
runs RILLET_SIM_SEEDS more (default 2000) starting at RILLET_SIM_FIRST_SEED. A failing seed's
message starts with the seed and the one command that replays it event for event.
"""

from __future__ import annotations

import hashlib
import os

import pytest

pytest.importorskip("rillet.cluster.raft.core",
                    reason="the Raft core (cluster/raft/core.py) has not landed yet")

from .invariants import InvariantViolation
from .options import Options
from .planted import BUGS, simulation_for
from .scenarios import (
    QUIESCE_OPTIONS,
    SCRIPTED_OPTIONS,
    double_vote_after_reboot,
    figure8,
    quiesced_follower_rejoins,
    quiesced_leader_crash,
    quiesced_leader_cut_off,
)
from .seeds import derive
from .simulation import Simulation, SimulationFailure

DEFAULT_SEEDS = range(100)
SLOW_SEEDS = int(os.environ.get("RILLET_SIM_SEEDS", "2000"))
SLOW_FIRST_SEED = int(os.environ.get("RILLET_SIM_FIRST_SEED", "100000"))


@pytest.mark.parametrize("seed", DEFAULT_SEEDS)
def test_seed(seed: int) -> None:
    print(f"seed {seed}")
    result = Simulation(seed).run()
    assert result.acked > 0 or result.proposals == 0 or result.options.nodes > 0


SLOW_CHUNK = 100  # seeds per slow test item: each item stays well inside the 300 s timeout


@pytest.mark.slow
@pytest.mark.parametrize("chunk", range((SLOW_SEEDS + SLOW_CHUNK - 1) // SLOW_CHUNK))
def test_slow_sweep(chunk: int, request: pytest.FixtureRequest) -> None:
    """Thousands of seeds, in chunks. Each chunk runs all its seeds and lists every failure,
    so one known bug does not hide the next; the first failure's full report comes last."""
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("the long sweep runs only when selected: pytest -m slow")
    first = SLOW_FIRST_SEED + chunk * SLOW_CHUNK
    last = min(first + SLOW_CHUNK, SLOW_FIRST_SEED + SLOW_SEEDS)
    failures: list[str] = []
    for seed in range(first, last):
        print(f"seed {seed}")
        try:
            Simulation(seed).run()
        except SimulationFailure as exc:
            failures.append(str(exc))
    if failures:
        headlines = "\n".join(f.splitlines()[0] + "  |  " + _reproduce_line(f)
                              for f in failures)
        pytest.fail(f"{len(failures)} of seeds {first}..{last - 1} failed:\n{headlines}\n\n"
                    f"first failure:\n{failures[0]}")


def _reproduce_line(report: str) -> str:
    for line in report.splitlines():
        if line.startswith("reproduce: "):
            return line
    return "reproduce: (not found)"


def _transcript(seed: int, bug: str | None = None) -> str:
    lines: list[str] = []
    sim = simulation_for(seed, bug, verbose=lines.append)
    try:
        sim.run()
    except SimulationFailure as exc:
        lines.append(str(exc))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


@pytest.mark.parametrize("seed", [3, 11])
def test_a_seed_replays_event_for_event(seed: int) -> None:
    assert _transcript(seed) == _transcript(seed)


NOT_CAUGHT_BY_SEEDS = {
    "commit_previous_term": "random seeds do not reach Raft Figure 8's history within the "
                            "default budget (none of seeds 0-699 caught it when measured); the "
                            "scripted test_figure8_catches_commit_by_counting does",
    "forget_vote": "random seeds catch it only rarely (about 2 in 100, and none in 0-99 with "
                   "the current swarm); the scripted test_double_vote_catches_forgotten_vote "
                   "does",
}


@pytest.mark.parametrize("bug", [
    # The strict xfails run with the slow sweep: 100 seeds each, to learn nothing by default.
    pytest.param(b, marks=[pytest.mark.slow,
                           pytest.mark.xfail(strict=True, reason=NOT_CAUGHT_BY_SEEDS[b])])
    if b in NOT_CAUGHT_BY_SEEDS else b for b in sorted(BUGS)])
def test_planted_bug_is_caught(bug: str) -> None:
    """The simulator is not vacuous: each planted bug breaks a safety invariant on some
    default seed (and test_seed shows the real core passes those same seeds). A safety
    invariant is the simulator's checker or an assertion of the core itself (a core that
    notices its log was corrupted); a missed liveness budget does not count."""
    for seed in DEFAULT_SEEDS:
        try:
            simulation_for(seed, bug).run()
        except SimulationFailure as exc:
            if "liveness failure" not in str(exc).splitlines()[0]:
                print(f"{bug}: caught by seed {seed}: {str(exc).splitlines()[0]}")
                return
    pytest.fail(f"planted bug {bug} survived seeds {DEFAULT_SEEDS}")


def test_figure8_real_core_keeps_the_committed_prefix() -> None:
    """Raft §5.4.2 / Figure 8: the real core does not commit an earlier term's entry by
    counting, so the scripted history breaks nothing."""
    figure8(simulation_for(1, overrides=SCRIPTED_OPTIONS))


def test_figure8_catches_commit_by_counting() -> None:
    with pytest.raises(InvariantViolation, match="leader completeness"):
        figure8(simulation_for(1, "commit_previous_term", overrides=SCRIPTED_OPTIONS))


def test_double_vote_real_core_remembers_its_vote() -> None:
    """Raft §5.2: a vote survives a reboot, so the same term never gets a second leader."""
    double_vote_after_reboot(simulation_for(1, overrides=SCRIPTED_OPTIONS))


def test_double_vote_catches_forgotten_vote() -> None:
    with pytest.raises(InvariantViolation, match="two leaders in term"):
        double_vote_after_reboot(simulation_for(1, "forget_vote", overrides=SCRIPTED_OPTIONS))


# -- quiescence (decision 0404) ------------------------------------------------------------------

QUIESCE_SCRIPTS = {"leader_crash": quiesced_leader_crash,
                   "leader_cut_off": quiesced_leader_cut_off,
                   "follower_rejoins": quiesced_follower_rejoins}


def test_default_seeds_cover_quiescence() -> None:
    """About half the swarm quiesces (with node pings and liveness reports), so the default
    seeds check quiescence under every fault the swarm draws, and the rest check Raft without
    it."""
    quiet = [s for s in DEFAULT_SEEDS if Options.swarm(s, derive(s, "options")).quiesce]
    assert 30 <= len(quiet) <= 70, len(quiet)


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("script", sorted(QUIESCE_SCRIPTS))
def test_quiesced_group_fails_over_and_rejoins(script: str, seed: int) -> None:
    """A quiesced group whose leader crashes or is cut off elects another within
    FAILOVER_TICKS_MAX ticks; a cut-off follower rejoins without a new term (scenarios.py)."""
    print(f"seed {seed} scenario quiesced_{script}")
    sim = simulation_for(seed, overrides=QUIESCE_OPTIONS)
    print(f"returned {QUIESCE_SCRIPTS[script](sim)}")


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(QUIESCE_SCRIPTS))
def test_quiesce_scripts_sweep(script: str) -> None:
    failures = []
    for seed in range(SLOW_FIRST_SEED, SLOW_FIRST_SEED + 300):
        try:
            QUIESCE_SCRIPTS[script](simulation_for(seed, overrides=QUIESCE_OPTIONS))
        except AssertionError as exc:
            failures.append(f"seed {seed}: {exc}")
    assert not failures, "\n".join(failures)
