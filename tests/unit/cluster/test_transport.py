"""InMemoryNetwork: per directed link cut/heal, bounded queues that drop, FIFO delivery."""

from __future__ import annotations

import asyncio

from rillet.cluster.transport import InMemoryNetwork


async def _drain() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_links_deliver_in_order_and_cut_one_direction_only() -> None:
    net = InMemoryNetwork()
    got: dict[int, list[tuple[int, int, bytes]]] = {1: [], 2: []}
    net.register(1, lambda frm, msgs: got[1].extend((frm, g, b) for g, b in msgs))
    net.register(2, lambda frm, msgs: got[2].extend((frm, g, b) for g, b in msgs))
    t1, t2 = net.transport(1), net.transport(2)
    t1.send(2, [(7, b"a"), (8, b"b")])
    t1.send(2, [(7, b"c")])
    await _drain()
    assert got[2] == [(1, 7, b"a"), (1, 8, b"b"), (1, 7, b"c")]
    net.cut(1, 2)
    t1.send(2, [(7, b"lost")])
    t2.send(1, [(7, b"back")])
    await _drain()
    assert got[2][-1] == (1, 7, b"c") and got[1] == [(2, 7, b"back")]
    net.heal(1, 2)
    t1.send(2, [(7, b"d")])
    await _drain()
    assert got[2][-1] == (1, 7, b"d")
    assert net.dropped() == 1
    await t1.close()
    await t2.close()


async def test_full_queue_drops_newest_and_send_never_blocks() -> None:
    net = InMemoryNetwork(max_pending_per_link=3)
    got: list[bytes] = []
    net.register(2, lambda frm, msgs: got.extend(b for _, b in msgs))
    t1 = net.transport(1)
    for i in range(10):  # all in one loop iteration: the link task has not run yet
        t1.send(2, [(1, b"%d" % i)])
    await _drain()
    assert got == [b"0", b"1", b"2"]
    assert net.dropped() == 7
    await t1.close()
    t1.send(2, [(1, b"closed")])
    await _drain()
    assert got == [b"0", b"1", b"2"]
