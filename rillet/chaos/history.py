"""The record of one chaos run: what the workload did, what it read back, which faults ran.

A run is judged only from this record, never from the live cluster, so the same verdict can be
reached offline later (`python -m rillet.chaos.checker history.json`). Everything is therefore
plain data with a JSON form, and every time is seconds since the run started on one monotonic
clock (`History.clock`), so operations, reads and faults line up on one axis.

Appends come from asyncio tasks and from the harness's threads (fault scheduler, process
watchers), so they take a lock; the lists are only read after the run, through `snapshot`-style
copies (`ops`, `reads`, `faults` properties).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

OpKind = Literal["write", "read"]
Outcome = Literal["ok", "failed", "unknown"]

FORMAT_VERSION = 1


@dataclass(slots=True)
class Op:
    """One client operation and what the client learned about it.

    `outcome` is "ok" when the broker acknowledged it (for a write: `offset` is the acked
    offset), "failed" when the error proves the broker never stored it, and "unknown" when the
    client cannot tell (timeout, connection lost, cancelled at stop): such a write may or may
    not be in the log, and the checker reports which.
    """

    process: int
    kind: OpKind
    partition: int
    value: str | None
    start_s: float
    end_s: float
    outcome: Outcome
    offset: int | None
    error: str = ""


@dataclass(slots=True)
class Read:
    """One record a consumer saw. `reader` is the workload reader id; -1 is the final read."""

    partition: int
    offset: int
    value: str
    at_s: float
    reader: int


@dataclass(slots=True)
class FaultEvent:
    """One injected fault, from when it began to when it was healed (None: never healed)."""

    kind: str
    target: str
    start_s: float
    end_s: float | None
    detail: str = ""


FINAL_READER = -1


class History:
    """Append-only, thread-safe log of a run's operations, reads and faults.

    `clock()` is the run's time axis: seconds since this History was made (or since `t0`).
    """

    def __init__(self, t0: float | None = None, meta: dict[str, Any] | None = None) -> None:
        self._t0 = time.monotonic() if t0 is None else t0
        self._lock = threading.Lock()
        self._ops: list[Op] = []
        self._reads: list[Read] = []
        self._faults: list[FaultEvent] = []
        # Free-form facts about the run (seed, topic, schedule name...), kept in the JSON.
        self.meta: dict[str, Any] = dict(meta or {})

    def clock(self) -> float:
        """Seconds since the run started, on the monotonic clock."""
        return time.monotonic() - self._t0

    def add_op(self, op: Op) -> None:
        with self._lock:
            self._ops.append(op)

    def add_read(self, read: Read) -> None:
        with self._lock:
            self._reads.append(read)

    def add_reads(self, reads: list[Read]) -> None:
        with self._lock:
            self._reads.extend(reads)

    def add_fault(self, fault: FaultEvent) -> None:
        with self._lock:
            self._faults.append(fault)

    def start_fault(self, kind: str, target: str, detail: str = "") -> FaultEvent:
        """Record a fault beginning now; pass the result to `end_fault` when it is healed."""
        fault = FaultEvent(kind, target, start_s=self.clock(), end_s=None, detail=detail)
        self.add_fault(fault)
        return fault

    def end_fault(self, fault: FaultEvent) -> None:
        with self._lock:
            fault.end_s = self.clock()

    @property
    def ops(self) -> list[Op]:
        with self._lock:
            return list(self._ops)

    @property
    def reads(self) -> list[Read]:
        with self._lock:
            return list(self._reads)

    @property
    def faults(self) -> list[FaultEvent]:
        with self._lock:
            return list(self._faults)

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "format": FORMAT_VERSION,
                "meta": dict(self.meta),
                # By hand, not dataclasses.asdict: that deep-copies every field and is ten
                # times slower on the hundreds of thousands of records of a long run.
                "ops": [{"process": o.process, "kind": o.kind, "partition": o.partition,
                         "value": o.value, "start_s": o.start_s, "end_s": o.end_s,
                         "outcome": o.outcome, "offset": o.offset, "error": o.error}
                        for o in self._ops],
                "reads": [{"partition": r.partition, "offset": r.offset, "value": r.value,
                           "at_s": r.at_s, "reader": r.reader} for r in self._reads],
                "faults": [asdict(f) for f in self._faults],
            }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> History:
        if data.get("format") != FORMAT_VERSION:
            raise ValueError(f"unsupported history format {data.get('format')!r}")
        history = cls(meta=data.get("meta") or {})
        history._ops = [Op(**o) for o in data["ops"]]
        history._reads = [Read(**r) for r in data["reads"]]
        history._faults = [FaultEvent(**f) for f in data["faults"]]
        return history

    def to_json(self, path: Path | str) -> None:
        """Write the history so a failing run can be re-checked offline."""
        Path(path).write_text(json.dumps(self.to_dict(), separators=(",", ":")) + "\n")

    @classmethod
    def from_json(cls, path: Path | str) -> History:
        return cls.from_dict(json.loads(Path(path).read_text()))
