"""The fake clock and the single event heap that orders everything in a simulated run.

Time is an integer number of milliseconds and moves only when the scheduler pops an event.
Events are ordered by (due time, sequence number); the sequence number is the order in which
they were scheduled, so two events due at the same millisecond run in a fixed order and the
actions themselves are never compared.
"""

from __future__ import annotations

import heapq
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger(__name__)

HISTORY_EVENTS = 30  # how many recent events a failure report shows


class Describable(Protocol):
    """Anything with a stable one-line rendering (every core value has one)."""

    def describe(self) -> str: ...


@dataclass(order=True)
class Event:
    """One scheduled action. `label` and `subject` are only for the one-line rendering."""

    due_ms: int
    seq: int
    label: str = field(compare=False)
    node: int | None = field(compare=False)
    action: Callable[[], None] = field(compare=False, repr=False)
    subject: Describable | str | None = field(compare=False, default=None, repr=False)
    cancelled: bool = field(compare=False, default=False)

    def describe(self) -> str:
        """`<time>ms #<seq> n<node> <label> <subject>`: stable, so transcripts can be diffed."""
        who = "--" if self.node is None else f"n{self.node}"
        if self.subject is None:
            what = ""
        elif isinstance(self.subject, str):
            what = " " + self.subject
        else:
            what = " " + self.subject.describe()
        return f"{self.due_ms:>8}ms #{self.seq:<6} {who:>3} {self.label}{what}"


class Scheduler:
    """Owns the clock and the heap. Observers run after every event (the invariant checks)."""

    def __init__(self, *, verbose: Callable[[str], None] | None = None) -> None:
        self.now_ms = 0
        self.events_run = 0
        self._seq = 0
        self._heap: list[Event] = []
        self._observers: list[Callable[[Event], None]] = []
        self.history: deque[Event] = deque(maxlen=HISTORY_EVENTS)
        self._verbose = verbose

    def schedule(self, delay_ms: int, label: str, action: Callable[[], None], *,
                 node: int | None = None, subject: Describable | str | None = None) -> Event:
        """Run `action` `delay_ms` from now (never in the past: negative delays are clamped)."""
        self._seq += 1
        event = Event(self.now_ms + max(0, int(delay_ms)), self._seq, label, node, action,
                      subject)
        heapq.heappush(self._heap, event)
        return event

    def note(self, label: str, *, node: int | None = None,
             subject: Describable | str | None = None) -> None:
        """Record something that happened inside the current event (a crash, a violation)."""
        self._seq += 1
        event = Event(self.now_ms, self._seq, label, node, _noop, subject)
        self.history.append(event)
        if self._verbose is not None:
            self._verbose(event.describe())

    def observe(self, observer: Callable[[Event], None]) -> None:
        """Call `observer(event)` after each event; the invariant checker hooks in here."""
        self._observers.append(observer)

    @property
    def pending(self) -> int:
        return len(self._heap)

    def step(self) -> Event | None:
        """Pop and run the next live event; None when the heap is empty."""
        while self._heap:
            event = heapq.heappop(self._heap)
            if event.cancelled:
                continue
            self.now_ms = event.due_ms
            self.events_run += 1
            self.history.append(event)
            if self._verbose is not None:
                self._verbose(event.describe())
            event.action()
            for observer in self._observers:
                observer(event)
            return event
        return None

    def run_until(self, predicate: Callable[[], bool], max_events: int) -> bool:
        """Run events until `predicate()` holds; False if `max_events` ran out first."""
        for _ in range(max_events):
            if predicate():
                return True
            if self.step() is None:
                return predicate()
        return predicate()

    def run_for(self, duration_ms: int, max_events: int) -> bool:
        """Run every event due in the next `duration_ms`; False if `max_events` ran out first."""
        deadline = self.now_ms + duration_ms
        for _ in range(max_events):
            if not self._heap or self._heap[0].due_ms > deadline:
                self.now_ms = max(self.now_ms, deadline)
                return True
            self.step()
        return False

    def recent(self) -> list[str]:
        """The last events, oldest first, in their describe() form (for failure reports)."""
        return [event.describe() for event in self.history]


def _noop() -> None:
    return None
