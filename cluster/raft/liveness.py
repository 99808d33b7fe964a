"""Node-to-node liveness in ticks: what lets idle Raft groups quiesce (decision 0404).

A quiesced group sends nothing, so its followers can no longer tell from the group's own
heartbeats that the leader's node died. The node tells them instead, once for all its groups:
it hears from each peer at least every ``ping_ticks`` (a tiny node-level heartbeat whenever
nothing else was sent), and a peer silent for ``timeout_ticks`` is reported down once, which
the caller passes on with ``RaftCore.report_unreachable(peer)``. The cost follows the number
of peers, not the number of groups.

Pure and tick-driven, like the core: the asyncio driver and the simulator both run it.
"""

from __future__ import annotations

from collections.abc import Iterable


class PeerLiveness:
    """When each peer was last heard from and last sent to, counted in ticks.

    ``tick()`` advances time by one tick and returns the peers owed a ping and the peers
    newly gone silent. A peer counts as down from the tick it has been silent for
    ``timeout_ticks`` until anything arrives from it (``heard``)."""

    def __init__(self, timeout_ticks: int, ping_ticks: int) -> None:
        if timeout_ticks <= 0 or ping_ticks <= 0:
            raise ValueError(f"timeout_ticks ({timeout_ticks}) and ping_ticks ({ping_ticks}) "
                             "must be positive")
        if ping_ticks >= timeout_ticks:
            raise ValueError(f"ping_ticks ({ping_ticks}) must be below timeout_ticks "
                             f"({timeout_ticks}), or a live peer looks dead")
        self.timeout_ticks = timeout_ticks
        self.ping_ticks = ping_ticks
        self.now = 0
        self._heard: dict[int, int] = {}
        self._sent: dict[int, int] = {}
        self._down: set[int] = set()

    def peers(self) -> list[int]:
        """The peers tracked, ascending."""
        return sorted(self._heard)

    def set_peers(self, peers: Iterable[int]) -> None:
        """Track exactly ``peers``. A new peer starts as heard from and sent to now (it gets
        a full timeout before it can be judged); a peer no longer listed is forgotten."""
        wanted = set(peers)
        for peer in list(self._heard):
            if peer not in wanted:
                del self._heard[peer]
                del self._sent[peer]
                self._down.discard(peer)
        for peer in wanted:
            if peer not in self._heard:
                self._heard[peer] = self.now
                self._sent[peer] = self.now

    def heard(self, peer: int) -> None:
        """Something arrived from ``peer`` (a Raft message or a ping): it is alive now.
        Unknown peers are ignored (``set_peers`` decides who is tracked)."""
        if peer in self._heard:
            self._heard[peer] = self.now
            self._down.discard(peer)

    def sent(self, peer: int) -> None:
        """Something was sent to ``peer``: no ping is owed before ``ping_ticks`` from now."""
        if peer in self._sent:
            self._sent[peer] = self.now

    def is_down(self, peer: int) -> bool:
        """Whether ``peer`` has been silent for ``timeout_ticks`` and not heard from since."""
        return peer in self._down

    def down(self) -> list[int]:
        """The peers currently down, ascending."""
        return sorted(self._down)

    def tick(self) -> tuple[list[int], list[int]]:
        """One tick passed: ``(peers to ping now, peers newly down)``, each ascending. The
        pings count as sent."""
        self.now = now = self.now + 1
        pings = [p for p, at in sorted(self._sent.items()) if now - at >= self.ping_ticks]
        for peer in pings:
            self._sent[peer] = now
        newly_down = [p for p, at in sorted(self._heard.items())
                      if now - at >= self.timeout_ticks and p not in self._down]
        self._down.update(newly_down)
        return pings, newly_down
