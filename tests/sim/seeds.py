"""Per-subsystem random streams derived from one seed.

Each subsystem (network, disk, workload, tick jitter, faults, swarm options) draws from its own
`random.Random`, so extra draws in one subsystem never shift another subsystem's choices: a
change to the workload does not silently change the fault schedule of a seed.
"""

from __future__ import annotations

import random

SUBSYSTEMS = ("options", "network", "disk", "workload", "ticks", "faults", "nodes")


def derive(seed: int, subsystem: str) -> random.Random:
    """A stream for `subsystem` that depends only on `seed` and the subsystem's name.

    Seeding `random.Random` with a str hashes it with SHA-512 (seed version 2), never with the
    per-process `hash(str)`, so the stream is the same under any PYTHONHASHSEED.
    """
    return random.Random(f"rillet-sim/{seed}/{subsystem}")
