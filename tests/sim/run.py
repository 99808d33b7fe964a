"""Run simulated seeds from the command line.

    .venv/bin/python -m tests.sim.run --seed 1234 -v        # one seed, every event printed
    .venv/bin/python -m tests.sim.run --first 0 --count 500 # a sweep, one line per seed
    .venv/bin/python -m tests.sim.run --seed 7 --bug vote_without_log_check
    .venv/bin/python -m tests.sim.run --scenario figure8 --bug commit_previous_term -v

The seed is printed first, before anything can go wrong. A failure prints the report (seed,
reproduce command, options, last events) and exits with status 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable

from .invariants import InvariantViolation
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
from .simulation import Simulation, SimulationFailure

SCENARIOS: dict[str, tuple[Callable[[Simulation], object], list[str]]] = {
    "figure8": (figure8, SCRIPTED_OPTIONS),
    "double_vote": (double_vote_after_reboot, SCRIPTED_OPTIONS),
    "quiesced_leader_crash": (quiesced_leader_crash, QUIESCE_OPTIONS),
    "quiesced_leader_cut_off": (quiesced_leader_cut_off, QUIESCE_OPTIONS),
    "quiesced_follower_rejoins": (quiesced_follower_rejoins, QUIESCE_OPTIONS),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.sim.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, help="run this one seed")
    parser.add_argument("--first", type=int, default=0, help="first seed of a sweep")
    parser.add_argument("--count", type=int, default=1, help="seeds in the sweep")
    parser.add_argument("--bug", choices=sorted(BUGS), help="run with a planted bug")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="print every event's one-line description")
    parser.add_argument("--keep-going", action="store_true",
                        help="in a sweep, report every failing seed instead of stopping")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS),
                        help="run a scripted scenario (scenarios.py) instead of random faults")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override one of the seed's swarm options (repeatable)")
    parser.add_argument("--log-level", default="ERROR",
                        help="level for the cores' own logs (default ERROR; INFO shows all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(name)s %(message)s")
    seeds = [args.seed] if args.seed is not None else list(
        range(args.first, args.first + args.count))
    verbose = print if args.verbose else None
    if args.scenario:
        seed = args.seed if args.seed is not None else 1
        print(f"seed {seed} scenario {args.scenario}", flush=True)
        script, options = SCENARIOS[args.scenario]
        sim = simulation_for(seed, args.bug, overrides=options + args.set, verbose=verbose)
        sim.overrides, sim.scenario = args.set, args.scenario  # for the reproduce line
        try:
            outcome = script(sim)
        except (InvariantViolation, AssertionError) as exc:
            print(f"FAIL {sim.report(f'{type(exc).__name__}: {exc}')}")
            return 1
        print(f"  ok: no invariant broken{'' if outcome is None else f'; returned {outcome}'}")
        return 0
    failures = 0
    started = time.perf_counter()  # wall time is only reported, never used by a run
    for seed in seeds:
        print(f"seed {seed}", flush=True)
        sim = simulation_for(seed, args.bug, overrides=args.set, verbose=verbose)
        try:
            result = sim.run()
        except SimulationFailure as exc:
            failures += 1
            print(f"FAIL {exc}", flush=True)
            if not args.keep_going:
                return 1
            continue
        print(f"  {result.describe()}")
        if args.verbose or len(seeds) == 1:
            print(f"  options: {result.options.describe()}")
    elapsed = time.perf_counter() - started
    print(f"{len(seeds)} seeds, {failures} failed, {elapsed:.1f}s wall")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
