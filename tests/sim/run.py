"""Run simulated seeds from the command line.

    .venv/bin/python -m tests.sim.run --seed 1234 -v        # one seed, every event printed
    .venv/bin/python -m tests.sim.run --first 0 --count 500 # a sweep, one line per seed
    .venv/bin/python -m tests.sim.run --seed 7 --bug vote_without_log_check

The seed is printed first, before anything can go wrong. A failure prints the report (seed,
reproduce command, options, last events) and exits with status 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from .planted import BUGS, simulation_for
from .simulation import SimulationFailure


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
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override one of the seed's swarm options (repeatable)")
    parser.add_argument("--log-level", default="ERROR",
                        help="level for the cores' own logs (default ERROR; INFO shows all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(name)s %(message)s")
    seeds = [args.seed] if args.seed is not None else list(
        range(args.first, args.first + args.count))
    verbose = print if args.verbose else None
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
