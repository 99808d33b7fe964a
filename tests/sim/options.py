"""Per-seed run options, drawn at random from the seed (swarm testing).

Each seed gets its own cluster size and its own fault mix, so one sweep covers calm runs, lossy
runs, crash-heavy runs and partition-heavy runs instead of one average mix that is never
extreme in any direction. Every field can be overridden from the command line to narrow a
failure down.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

TICK_MS = 10  # one core tick of simulated time
SAFETY_MS = 3_000  # length of the faulty phase
LIVENESS_TICKS = 400  # the healed cluster must converge within this many ticks (4 s)


@dataclass
class Options:
    """Everything that shapes one run besides the seed's random streams."""

    seed: int
    nodes: int = 3
    # network
    drop: float = 0.0
    duplicate: float = 0.0
    delay_min_ms: int = 1
    delay_mean_ms: float = 2.0
    reorder: bool = False  # False: every link delivers in send order (a gRPC stream)
    # faults
    partitions: bool = True
    swizzle: bool = True
    crashes: bool = True
    torn_probability: float = 0.5
    fault_mean_ms: float = 200.0  # mean time between fault actions
    down_mean_ms: float = 300.0  # mean time a crashed node stays down
    reboot_after_vote: float = 0.0  # chance a node reboots right after granting a vote
    # disk and time
    fsync_mean_ms: float = 2.0
    tick_jitter_ms: int = 2
    # workload
    propose_mean_ms: float = 20.0
    membership: bool = False
    transfers: bool = False
    compact_every: int = 0  # compact a node's log each time this many entries were applied
    atomic_snapshot: bool = True  # write a Ready's snapshot and hard state as one record
    # core configuration
    pre_vote: bool = True
    check_quorum: bool = True
    election_ticks: int = 10
    max_size_per_msg: int = 1 << 20  # 1 byte = one entry per APPEND: acks come entry by entry
    max_inflight_msgs: int = 256
    max_committed_bytes_per_ready: int = 64 << 20
    quiesce: bool = False  # idle groups go quiet; nodes ping each other (decision 0404)
    safety_ms: int = SAFETY_MS

    @classmethod
    def swarm(cls, seed: int, rng: random.Random) -> Options:
        """Draw the options of `seed` (from the seed's "options" stream only)."""
        options = cls(
            seed=seed,
            nodes=rng.choice((1, 3, 3, 3, 5, 5)),
            drop=rng.choice((0.0, 0.01, 0.05, 0.15)),
            duplicate=rng.choice((0.0, 0.02, 0.1)),
            delay_min_ms=rng.choice((0, 1, 2)),
            delay_mean_ms=rng.choice((1.0, 3.0, 8.0)),
            reorder=rng.random() < 0.3,
            partitions=rng.random() < 0.8,
            swizzle=rng.random() < 0.5,
            crashes=rng.random() < 0.8,
            torn_probability=rng.choice((0.0, 0.5, 0.9)),
            fault_mean_ms=rng.choice((60.0, 150.0, 400.0)),
            down_mean_ms=rng.choice((50.0, 300.0, 1000.0)),
            reboot_after_vote=rng.choice((0.0, 0.0, 0.2, 0.5)),
            fsync_mean_ms=rng.choice((0.5, 2.0, 6.0)),
            tick_jitter_ms=rng.choice((0, 2, 4)),
            propose_mean_ms=rng.choice((5.0, 20.0, 60.0)),
            membership=rng.random() < 0.4,
            transfers=rng.random() < 0.4,
            pre_vote=rng.random() < 0.8,
            check_quorum=rng.random() < 0.8,
            election_ticks=rng.choice((5, 10, 10, 20)),
            max_committed_bytes_per_ready=rng.choice((1, 64 << 20, 64 << 20)),
            compact_every=rng.choice((0, 0, 5, 40)),
        )
        # (bytes per APPEND, APPENDs in flight): tiny messages only with a deep pipeline and
        # one message in flight only with big messages, so a lagging node can still catch
        # up within the liveness budget.
        options.max_size_per_msg, options.max_inflight_msgs = rng.choice(
            ((1 << 20, 256), (1 << 20, 256), (1, 256), (16, 8), (1 << 20, 1), (1, 1)))
        if options.max_inflight_msgs == 1 and options.max_size_per_msg == 1:
            # One entry per round trip: slow to catch up, so a light workload. This is the
            # shape that holds a new leader's old-term entries acknowledged but its own
            # entries not yet, for many round trips (Raft Figure 8's window).
            options.propose_mean_ms = max(options.propose_mean_ms, 60.0)
        # Drawn last so that adding it moved no other field of any seed: a Ready's snapshot
        # and hard state as one record, or as two that a crash can separate.
        options.atomic_snapshot = rng.random() < 0.5
        # Drawn after it for the same reason: quiescence (and the node pings and liveness
        # reports it needs) on half the seeds.
        options.quiesce = rng.random() < 0.5
        return options

    def replace(self, **changes: object) -> Options:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def override(self, assignments: list[str]) -> Options:
        """Apply `name=value` strings from the command line (typed by the field's default)."""
        changes: dict[str, object] = {}
        types = {f.name: type(getattr(self, f.name)) for f in dataclasses.fields(self)}
        for item in assignments:
            name, _, text = item.partition("=")
            if name not in types:
                raise ValueError(f"unknown option {name!r}; known: {sorted(types)}")
            kind = types[name]
            changes[name] = (text.lower() in ("1", "true", "yes")) if kind is bool \
                else kind(text)
        return self.replace(**changes)

    def describe(self) -> str:
        """One line with every field, in declaration order."""
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            parts.append(f"{f.name}={value:g}" if isinstance(value, float)
                         else f"{f.name}={value}")
        return " ".join(parts)
