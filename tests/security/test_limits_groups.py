"""A member stream whose transport takes nothing cannot make the coordinator queue events
without bound: past MAX_UNSENT_EVENTS unsent events its stream ends (UNAVAILABLE: join again)
and no more are queued for it."""

from __future__ import annotations

from collections.abc import Mapping

import grpc

from rillet.node.groups.coordinator import AssignmentOut, Output
from rillet.node.groups.offsets import TP, Committed
from rillet.node.services.groups import MAX_UNSENT_EVENTS, GroupRuntime, _End


class MemoryStore:
    """The OffsetStore protocol in memory (nothing here is about storage)."""

    def __init__(self) -> None:
        self.gens: dict[str, int] = {}

    def generation(self, group: str) -> int:
        return self.gens.get(group, 0)

    def offsets(self, group: str) -> dict[TP, Committed]:
        return {}

    def groups(self) -> list[str]:
        return sorted(self.gens)

    async def store_generation(self, group: str, generation: int) -> None:
        self.gens[group] = generation

    async def commit(self, group: str, generation: int, offsets: Mapping[TP, tuple[int, str]],
                     commit_time_ms: int) -> None:
        pass

    async def delete(self, group: str) -> None:
        self.gens.pop(group, None)


async def test_unread_member_events_are_bounded() -> None:
    rt = GroupRuntime(MemoryStore(), {"t": 2}.get, rejoin_grace_s=0.0)
    stalled = rt.register("g", "m1", token=1)
    reading = rt.register("g", "m2", token=2)
    for gen in range(1, 3 * MAX_UNSENT_EVENTS):
        await rt._carry_out(Output(assignments=[
            AssignmentOut("g", "m1", gen, (("t", 0),), 1000),
            AssignmentOut("g", "m2", gen, (("t", 1),), 1000)]))
        while not reading.queue.empty():  # this member's transport takes every event
            reading.queue.get_nowait()
    assert stalled.queue.qsize() == MAX_UNSENT_EVENTS + 1
    items = [stalled.queue.get_nowait() for _ in range(MAX_UNSENT_EVENTS + 1)]
    end = items[-1]
    assert isinstance(end, _End) and end.code == grpc.StatusCode.UNAVAILABLE
    assert "unread" in end.details and "join again" in end.details
    assert not any(isinstance(i, _End) for i in items[:-1])
    assert ("g", "m1") not in rt.streams and ("g", "m2") in rt.streams
