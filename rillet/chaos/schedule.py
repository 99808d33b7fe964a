"""A chaos schedule: from one printed seed, a steady phase, a fault phase, a recovery phase.

`Schedule.generate(seed, duration_s)` draws everything with `random.Random(seed)`: the phase
lengths follow from the duration (15% steady, 60% faults, 25% recovery, recovery at least a
few seconds), and the fault phase is a list of `PlannedFault`s (kind, how long it is held,
the pause after its heal) long enough to fill the phase. The runner executes them one after
the other until the phase's time is up, so the printed plan is an upper bound; what really ran
is in the history's fault events. One fault at a time keeps every run inside what the cluster
promises to survive (any one node down, paused, cut off or damaged); overlapping faults would
measure a different promise.

The per-fault choices (which partition, which node, cut or black-hole) come from a second
`random.Random` seeded from the same seed, so the same seed replays the same plan and, as far
as the cluster's own timing lets it, the same targets.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from rillet.chaos.faults import KINDS, RANDOM_KINDS

#: Bounds of a fault's hold (seconds from injection to heal) and of the quiet gap after it.
HOLD_S = (0.5, 3.0)
GAP_S = (0.3, 1.5)
MIN_RECOVERY_S = 3.0


@dataclass(frozen=True)
class PlannedFault:
    kind: str
    hold_s: float
    gap_s: float


@dataclass
class Schedule:
    seed: int
    steady_s: float
    fault_s: float
    recovery_s: float
    faults: list[PlannedFault] = field(default_factory=list)
    #: Run every planned fault even past `fault_s` (scripted schedules); else stop at the end.
    run_all: bool = False

    @property
    def duration_s(self) -> float:
        return self.steady_s + self.fault_s + self.recovery_s

    def choices_rng(self) -> random.Random:
        """The RNG for per-fault choices (targets): independent of the plan's draws."""
        return random.Random(f"targets-{self.seed}")

    @classmethod
    def generate(cls, seed: int, duration_s: float,
                 kinds: Sequence[str] = RANDOM_KINDS) -> Schedule:
        if duration_s <= 0:
            raise ValueError("duration must be positive")
        unknown = [k for k in kinds if k not in KINDS]
        if unknown or not kinds:
            raise ValueError(f"unknown fault kinds {unknown}; known: {sorted(KINDS)}")
        rng = random.Random(seed)
        recovery = max(MIN_RECOVERY_S, 0.25 * duration_s)
        steady = 0.15 * duration_s
        faults_s = max(0.0, duration_s - steady - recovery)
        plan: list[PlannedFault] = []
        t = 0.0
        while t < faults_s:
            f = PlannedFault(rng.choice(list(kinds)), round(rng.uniform(*HOLD_S), 2),
                             round(rng.uniform(*GAP_S), 2))
            plan.append(f)
            t += f.hold_s + f.gap_s
        return cls(seed, round(steady, 2), round(faults_s, 2), round(recovery, 2), plan)

    @classmethod
    def scripted(cls, seed: int, faults: Sequence[PlannedFault], *, steady_s: float = 2.0,
                 recovery_s: float = MIN_RECOVERY_S) -> Schedule:
        """A fixed list of faults (tests): the fault phase lasts as long as they need."""
        return cls(seed, steady_s, sum(f.hold_s + f.gap_s for f in faults), recovery_s,
                   list(faults), run_all=True)

    def describe(self) -> str:
        lines = [f"chaos schedule seed={self.seed}: steady {self.steady_s:.1f}s, faults "
                 f"{self.fault_s:.1f}s, recovery {self.recovery_s:.1f}s"]
        lines += [f"  {i + 1:2d}. {f.kind:<26} hold {f.hold_s:.2f}s, then {f.gap_s:.2f}s quiet"
                  for i, f in enumerate(self.faults)]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "steady_s": self.steady_s, "fault_s": self.fault_s,
                "recovery_s": self.recovery_s, "planned": [asdict(f) for f in self.faults]}
