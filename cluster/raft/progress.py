"""What a leader knows about each follower's log, and how much it may send it.

States of a ``Progress`` (the leader keeps one per member, itself included)::

                 +------------------------------------------------------+
                 |              append rejected / leader elected         |
                 v                                                      |
    +--------- PROBE ---- append accepted ----> REPLICATE --------------+
    |  one APPEND per heartbeat round,            optimistic pipeline:
    |  paused until a response arrives            next jumps past what was sent,
    |                                             bounded by Inflights
    | needed entry was compacted
    v
    SNAPSHOT -- follower acknowledged index >= snapshot, or a heartbeat round trip -> PROBE
      (nothing else is sent until then)

``match`` is the highest index known to be on the follower's disk; ``next`` is the next index
to send. Invariant: ``match < next``.
"""

from __future__ import annotations

import enum
from collections import deque


class ProgressState(enum.IntEnum):
    """How the leader currently replicates to one follower."""

    PROBE = 0
    REPLICATE = 1
    SNAPSHOT = 2


SHRINK_FLOOR = 8
"""The smallest window ``Inflights.shrink`` leaves (see there)."""


class Inflights:
    """The APPENDs sent to one follower and not yet acknowledged, bounded by count and bytes.

    Each element is (last index carried, data bytes carried); indexes only grow. When full, the
    leader stops sending to that follower until acknowledgements free room, so a slow follower
    cannot make the leader buffer without limit. ``max_bytes == 0`` means no byte bound.
    """

    def __init__(self, max_count: int, max_bytes: int = 0) -> None:
        assert max_count > 0, "an inflight window needs room for at least one message"
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.limit = max_count
        """The count bound in effect, ``<= max_count``: halved when the follower
        rejects an append it should have accepted (``shrink``), grown by one per append it
        acknowledges (``grow``), so it doubles per round trip back to ``max_count``. On
        in-order links nothing is rejected and it stays at ``max_count``; on reordering
        links it keeps the pipeline from refilling a whole window that the follower can
        only reject (it accepts an append only right after the previous one)."""
        self._items: deque[tuple[int, int]] = deque()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def add(self, index: int, size: int) -> None:
        """Record an APPEND whose last entry is ``index`` carrying ``size`` bytes."""
        # Invariant: the caller checked full() first, and indexes grow.
        assert not self.full(), "add to full inflights"
        assert not self._items or self._items[-1][0] < index, "inflight indexes must grow"
        self._items.append((index, size))
        self.bytes += size

    def free_le(self, index: int) -> None:
        """Forget every APPEND whose last index is ``<= index`` (acknowledged)."""
        while self._items and self._items[0][0] <= index:
            self.bytes -= self._items.popleft()[1]

    def free_first_one(self) -> None:
        """Forget the oldest APPEND (a heartbeat answer showed the follower is alive)."""
        if self._items:
            self.bytes -= self._items.popleft()[1]

    def full(self) -> bool:
        """No more APPENDs may be sent now."""
        return len(self._items) >= self.limit or (
            self.max_bytes > 0 and self.bytes >= self.max_bytes)

    def shrink(self) -> None:
        """A real rejection: halve the window, down to ``SHRINK_FLOOR`` messages (or
        ``max_count`` if smaller). A few APPENDs in flight still catch a follower up over a
        reordering link about as fast as many do, since it accepts only the in-order prefix
        of what arrives; one alone would leave it a round trip per entry."""
        self.limit = max(min(self.max_count, SHRINK_FLOOR), self.limit // 2)

    def grow(self) -> None:
        """An acknowledgement that moved the match: one more message in flight, up to
        ``max_count``."""
        self.limit = min(self.max_count, self.limit + 1)

    def reset(self) -> None:
        """Forget everything (the pipeline was abandoned)."""
        self._items.clear()
        self.bytes = 0


class Progress:
    """The leader's view of one member's log. See the module docstring for the states."""

    def __init__(self, next_index: int, inflights: Inflights, *, is_learner: bool) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        """In PROBE: an APPEND went out and no answer came back yet, so send no other."""
        self.pending_snapshot = 0
        """In SNAPSHOT: the index of the snapshot sent."""
        self.recent_active = False
        """Heard from this member since the last check-quorum round."""
        self.inflights = inflights
        self.is_learner = is_learner

    def _reset_state(self, state: ProgressState) -> None:
        self.probe_sent = False
        self.pending_snapshot = 0
        self.state = state
        self.inflights.reset()

    def become_probe(self) -> None:
        """Go back to one APPEND at a time, starting after what we know the follower has."""
        if self.state == ProgressState.SNAPSHOT:
            # The follower has (or will have) the snapshot: probe from just past it.
            pending = self.pending_snapshot
            self._reset_state(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset_state(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        """Stream APPENDs optimistically: the follower's log is known to match up to ``match``."""
        self._reset_state(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        """Stop appending and wait for the follower to install the snapshot at that index."""
        self._reset_state(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index

    def maybe_update(self, index: int) -> bool:
        """The follower acknowledged up to ``index``; True if that moved ``match``."""
        updated = self.match < index
        if updated:
            self.match = index
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        return updated

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """The follower rejected the APPEND whose previous index was ``rejected`` and hinted
        that its log may match up to ``match_hint``. Returns False for a stale rejection (one
        that answers an APPEND we no longer consider outstanding)."""
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False  # stale: we already know the follower matches past it
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False  # stale: it answers an older probe
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def is_paused(self) -> bool:
        """Whether the leader must not send an APPEND to this member now."""
        if self.state == ProgressState.PROBE:
            return self.probe_sent
        if self.state == ProgressState.REPLICATE:
            return self.inflights.full()
        return True

    def sent_entries(self, last_index: int, size: int) -> None:
        """Account for an APPEND carrying entries up to ``last_index`` (``size`` bytes)."""
        if self.state == ProgressState.REPLICATE:
            self.next = last_index + 1
            self.inflights.add(last_index, size)
        elif self.state == ProgressState.PROBE:
            self.probe_sent = True

    def describe(self) -> str:
        """``StateProbe match=M next=N`` plus flags, one line."""
        parts = [f"{self.state.name} match={self.match} next={self.next}"]
        if self.is_learner:
            parts.append("learner")
        if self.probe_sent:
            parts.append("paused")
        if self.state == ProgressState.SNAPSHOT:
            parts.append(f"pending_snapshot={self.pending_snapshot}")
        if self.inflights:
            parts.append(f"inflight={len(self.inflights)}/{self.inflights.bytes}B")
        return " ".join(parts)
