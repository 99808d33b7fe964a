"""`rillet chaos`: run one fault schedule against a fresh local cluster, by hand.

    rillet chaos --seed 7 --duration 60 [--out DIR] [--nodes 3] [--plant-early-ack]

Prints the seed and the plan first (so any run can be repeated), then the summary JSON. Exits
0 when the checker found no safety violation and the cluster recovered, 1 on a safety
violation or a harness error (a node that would not come back, no progress after the heal).
Everything the run produced stays in OUT/seed-<seed>/: summary.json, timeline.svg,
history.json (re-check it with `python -m rillet.chaos.checker`), node logs and data.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import tempfile
from pathlib import Path

import click

PLANTED_KINDS = ("freeze-followers-kill-leader", "kill-leader")


@click.command("chaos")
@click.option("--seed", type=int, default=None,
              help="Seed of the schedule [default: a random one, printed].")
@click.option("--duration", "duration_s", type=click.FloatRange(5, 3600), default=60.0,
              show_default=True, help="Seconds of workload: steady, fault and recovery "
              "phases together (starting and reading back come on top).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Keep the run here (OUT/seed-<seed>/) [default: a new temporary folder].")
@click.option("--nodes", type=click.IntRange(3, 5), default=3, show_default=True)
@click.option("--partitions", type=click.IntRange(1, 64), default=3, show_default=True)
@click.option("--faults", "kinds", default="",
              help="Comma-separated fault kinds to draw from [default: every one-node kind].")
@click.option("--plant-early-ack", is_flag=True,
              help="Start the nodes with the planted bug (rillet.chaos.planted: "
              "acks=all answered before the majority has the record) to see the checker "
              "catch it; the faults default to freeze-followers-kill-leader and kill-leader, "
              "and no progress after the heal is not an error.")
@click.option("-v", "--verbose", is_flag=True, help="Log every fault and node event.")
def chaos(seed: int | None, duration_s: float, out_dir: Path | None, nodes: int,
          partitions: int, kinds: str, plant_early_ack: bool, verbose: bool) -> None:
    """Run one chaos schedule (kills, pauses, partitions, slow links, disk damage) on a local
    3-node cluster under a checked workload; exit 1 on a safety violation."""
    import random

    from rillet.chaos.faults import KINDS, RANDOM_KINDS
    from rillet.chaos.runner import run_schedule
    from rillet.chaos.schedule import Schedule

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if seed is None:
        seed = random.SystemRandom().randrange(1_000_000)
    chosen = tuple(k.strip() for k in kinds.split(",") if k.strip())
    if not chosen:
        # With the planted bug, draw the faults that make its losses certain.
        chosen = PLANTED_KINDS if plant_early_ack else RANDOM_KINDS
    bad = [k for k in chosen if k not in KINDS]
    if bad:
        raise click.BadParameter(f"unknown {bad}; known: {', '.join(sorted(KINDS))}",
                                 param_hint="--faults")
    schedule = Schedule.generate(seed, duration_s, chosen)
    out = out_dir or Path(tempfile.mkdtemp(prefix="rillet-chaos-"))
    click.echo(f"seed {seed} (repeat with: rillet chaos --seed {seed} --duration "
               f"{duration_s:g}); run folder {out / f'seed-{seed}'}")
    click.echo(schedule.describe())
    result = asyncio.run(run_schedule(seed, duration_s, out, nodes=nodes,
                                      partitions=partitions, schedule=schedule,
                                      plant_early_ack=plant_early_ack,
                                      require_recovery=not plant_early_ack))
    s = result.summary
    click.echo(json.dumps({k: s[k] for k in ("seed", "ok", "safety_ok", "errors",
                                             "longest_unavailability_s", "faults_by_kind",
                                             "notes")}
                          | {"totals": s["report"]["totals"],
                             "anomalies": s["report"]["anomalies"]}, indent=2))
    click.echo(f"summary: {result.run_dir / 'summary.json'}; timeline: "
               f"{result.run_dir / 'timeline.svg'}")
    if not result.ok:
        click.echo("NOT OK: " + "; ".join(result.report.violations + result.errors),
                   err=True)
        sys.exit(1)


if __name__ == "__main__":
    chaos()
