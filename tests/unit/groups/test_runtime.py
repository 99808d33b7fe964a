"""The coordinator's runtime: nothing is sent under a generation the store did not take."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from rillet.node.errors import UnavailableError
from rillet.node.groups.coordinator import JoinRequest
from rillet.node.groups.offsets import Committed
from rillet.node.services.groups import GroupRuntime, _End


class FailingStore:
    """Takes generations until ``fail`` is set."""

    def __init__(self) -> None:
        self.fail = False
        self.generations: dict[str, int] = {}

    def generation(self, group: str) -> int:
        return self.generations.get(group, 0)

    def offsets(self, group: str) -> dict[tuple[str, int], Committed]:
        return {}

    def groups(self) -> list[str]:
        return sorted(self.generations)

    async def store_generation(self, group: str, generation: int) -> None:
        if self.fail:
            raise OSError("disk full")
        self.generations[group] = generation

    async def commit(self, group: str, generation: int,
                     offsets: Mapping[tuple[str, int], tuple[int, str]],
                     commit_time_ms: int) -> None:
        raise AssertionError("not used")

    async def delete(self, group: str) -> None:
        raise AssertionError("not used")


async def test_a_generation_the_store_refuses_is_never_sent() -> None:
    store = FailingStore()
    rt = GroupRuntime(store, {"t": 2}.get, rejoin_grace_s=0.0, clock=lambda: 0.0)
    streams = []

    def join(name: str):  # type: ignore[no-untyped-def]
        def step(c):  # type: ignore[no-untyped-def]
            member, out = c.join(JoinRequest("g", ("t",), client_id=name), 0.0)
            streams.append(rt.register("g", member.member_id, member.token))
            return member, out
        return step

    await rt.apply(join("a"))
    first = streams[0].queue.get_nowait()
    assert first.assignment.generation == 1 and store.generations == {"g": 1}
    store.fail = True
    with pytest.raises(UnavailableError):
        await rt.apply(join("b"))
    assert rt.stopped
    # Both streams end UNAVAILABLE; neither got an assignment of generation 2.
    for stream in streams:
        items = []
        while not stream.queue.empty():
            items.append(stream.queue.get_nowait())
        assert all(isinstance(i, _End) for i in items), items
        assert items and items[-1].code.name == "UNAVAILABLE"
    with pytest.raises(UnavailableError):
        await rt.apply(lambda c: c.tick(1.0))
    await rt.stop("test over")
