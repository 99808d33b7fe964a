"""The simulated network: one set of faults per directed link, deliveries as scheduled events.

Every message is encoded to bytes when sent and decoded when delivered, so sender and receiver
never share an object (and the codec is exercised on every message of every run).

Reordering comes from delay variance: each copy gets its own delay (minimum plus an
exponential), so on a link with `fifo=False` a later message overtakes an earlier one whenever
it draws a shorter delay. A `fifo=True` link (the default: Rillet's peers talk over one
long-lived gRPC stream) never delivers out of send order, but still drops and duplicates.

Fault vocabulary (all directed-link based, so every partition shape is a combination):
- `enabled=False`: the link drops everything (a partition).
- `drop`, `duplicate`: per-message probabilities.
- `clogged_until_ms`: messages are held, not lost, and sent on (with a fresh delay) when the
  clog clears; at most HELD_MAX per link are held, the oldest beyond that are dropped (a path
  has finite capacity).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from .scheduler import Describable, Scheduler

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Describable)

CLOG_FOREVER_MS = 1 << 62
HELD_MAX = 1024  # messages one clogged link holds before it starts dropping the oldest


@dataclass
class LinkFaults:
    """The fault settings of one directed link (frm -> to)."""

    enabled: bool = True
    drop: float = 0.0
    duplicate: float = 0.0
    delay_min_ms: int = 1
    delay_mean_ms: float = 2.0  # mean of the exponential part added to delay_min_ms
    clogged_until_ms: int = 0
    fifo: bool = True

    def describe(self) -> str:
        state = "up" if self.enabled else "CUT"
        return (f"{state} drop={self.drop:.2f} dup={self.duplicate:.2f} "
                f"delay={self.delay_min_ms}+exp({self.delay_mean_ms:.1f}) "
                f"clog<{self.clogged_until_ms}")


@dataclass
class NetworkStats:
    sent: int = 0
    delivered: int = 0
    dropped: int = 0
    duplicated: int = 0
    clogged: int = 0


class Network(Generic[M]):
    """Directed links between node ids, created on first use from `defaults`.

    `deliver(to, message)` is called from a scheduled event with a freshly decoded message;
    whether the destination is up is the caller's business (a down node drops it).
    """

    def __init__(self, scheduler: Scheduler, rng: random.Random, *,
                 encode: Callable[[M], bytes], decode: Callable[[bytes], M],
                 deliver: Callable[[int, M], None], defaults: LinkFaults | None = None) -> None:
        self._scheduler = scheduler
        self._rng = rng
        self._encode = encode
        self._decode = decode
        self._deliver = deliver
        self.defaults = defaults or LinkFaults()
        self._links: dict[tuple[int, int], LinkFaults] = {}
        self._held: dict[tuple[int, int], list[tuple[bytes, M]]] = {}
        self._last_due: dict[tuple[int, int], int] = {}  # per link, for fifo links
        self.stats = NetworkStats()

    # -- links -------------------------------------------------------------------------------

    def link(self, frm: int, to: int) -> LinkFaults:
        """The live fault settings of frm -> to (mutable: helpers below edit them)."""
        key = (frm, to)
        faults = self._links.get(key)
        if faults is None:
            d = self.defaults
            faults = LinkFaults(d.enabled, d.drop, d.duplicate, d.delay_min_ms,
                                d.delay_mean_ms, d.clogged_until_ms, d.fifo)
            self._links[key] = faults
        return faults

    # -- sending -----------------------------------------------------------------------------

    def send(self, frm: int, to: int, message: M) -> None:
        """Encode now, then schedule zero, one or two deliveries according to the link."""
        self.stats.sent += 1
        data = self._encode(message)
        faults = self.link(frm, to)
        if not faults.enabled or (faults.drop and self._rng.random() < faults.drop):
            self.stats.dropped += 1
            self._scheduler.note("drop", node=frm, subject=message)
            return
        if faults.clogged_until_ms > self._scheduler.now_ms:
            held = self._held.setdefault((frm, to), [])
            held.append((data, message))
            self.stats.clogged += 1
            if len(held) > HELD_MAX:
                held.pop(0)
                self.stats.dropped += 1
            return
        copies = 1
        if faults.duplicate and self._rng.random() < faults.duplicate:
            copies = 2
            self.stats.duplicated += 1
        for _ in range(copies):
            self._schedule_delivery(frm, to, data, message, faults)

    def _schedule_delivery(self, frm: int, to: int, data: bytes, message: M,
                           faults: LinkFaults) -> None:
        delay = faults.delay_min_ms
        if faults.delay_mean_ms > 0:
            delay += int(self._rng.expovariate(1.0 / faults.delay_mean_ms))
        if faults.fifo:
            due = max(self._scheduler.now_ms + delay, self._last_due.get((frm, to), 0))
            self._last_due[(frm, to)] = due
            delay = due - self._scheduler.now_ms
        self._scheduler.schedule(delay, "recv", self._make_delivery(frm, to, data), node=to,
                                 subject=message)

    def _release(self, frm: int, to: int) -> None:
        """Send on what a link held, if its clog has cleared by now."""
        faults = self.link(frm, to)
        if faults.clogged_until_ms > self._scheduler.now_ms:
            return
        held = self._held.pop((frm, to), [])
        for data, message in held:
            self._schedule_delivery(frm, to, data, message, faults)

    def _make_delivery(self, frm: int, to: int, data: bytes) -> Callable[[], None]:
        def deliver() -> None:
            # A link cut after the send also loses what was in flight on it.
            if not self.link(frm, to).enabled:
                self.stats.dropped += 1
                return
            self.stats.delivered += 1
            self._deliver(to, self._decode(data))
        return deliver

    # -- partitions and clogging -------------------------------------------------------------

    def cut(self, frm: int, to: int) -> None:
        """Asymmetric partition: frm can no longer reach to (the reverse still works)."""
        self.link(frm, to).enabled = False

    def partition(self, a: int, b: int) -> None:
        """Symmetric partition between a and b."""
        self.cut(a, b)
        self.cut(b, a)

    def isolate(self, node: int, nodes: Iterable[int]) -> None:
        """Cut `node` off from every other node, both directions."""
        for other in sorted(nodes):
            if other != node:
                self.partition(node, other)

    def split(self, side: Iterable[int], nodes: Iterable[int]) -> None:
        """Split into `side` and the rest (e.g. a majority and a minority)."""
        inside = set(side)
        everyone = sorted(nodes)
        for a in everyone:
            for b in everyone:
                if (a in inside) != (b in inside):
                    self.cut(a, b)

    def clog_link(self, frm: int, to: int, until_ms: int = CLOG_FOREVER_MS) -> None:
        """Hold messages on frm -> to until `until_ms` or until unclogged, whichever is first."""
        self.link(frm, to).clogged_until_ms = until_ms
        if until_ms < CLOG_FOREVER_MS:
            self._scheduler.schedule(until_ms - self._scheduler.now_ms, "unclog",
                                     lambda: self._release(frm, to), subject=f"{frm}->{to}")

    def unclog_link(self, frm: int, to: int) -> None:
        """Clear a clog now and send on what it held."""
        link = self.link(frm, to)
        link.clogged_until_ms = min(link.clogged_until_ms, self._scheduler.now_ms)
        self._release(frm, to)

    def clog_node(self, node: int, nodes: Iterable[int], until_ms: int = CLOG_FOREVER_MS) -> None:
        """Hold every message to and from `node` (held, not lost)."""
        for other in sorted(nodes):
            if other != node:
                self.clog_link(node, other, until_ms)
                self.clog_link(other, node, until_ms)

    def unclog_node(self, node: int, nodes: Iterable[int]) -> None:
        """Release the clogs around `node`."""
        for other in sorted(nodes):
            if other != node:
                self.unclog_link(node, other)
                self.unclog_link(other, node)

    def set_lossiness(self, drop: float, duplicate: float) -> None:
        """Apply drop and duplicate probabilities to every link (and to links made later)."""
        self.defaults.drop = drop
        self.defaults.duplicate = duplicate
        for key in sorted(self._links):
            self._links[key].drop = drop
            self._links[key].duplicate = duplicate

    def heal_partitions(self) -> None:
        """Re-enable every link and release every clog; lossiness is left as it is."""
        for key in sorted(self._links):
            self._links[key].enabled = True
            self.unclog_link(*key)

    def heal(self) -> None:
        """No partitions, no clogs, no loss, no duplicates: only the base delay remains."""
        self.heal_partitions()
        self.set_lossiness(0.0, 0.0)

    def faulty_links(self) -> list[str]:
        """One line per link that differs from a healthy link (for reports)."""
        out = []
        for (frm, to) in sorted(self._links):
            link = self._links[(frm, to)]
            if (not link.enabled or link.clogged_until_ms > self._scheduler.now_ms):
                out.append(f"{frm}->{to} {link.describe()}")
        return out
