"""A tiny synchronous network of RaftCores for unit and paper tests.

Deterministic: one seed, sorted iteration, no clock. Every message passes through the codec so
no object is shared between nodes. ``stabilize()`` runs Ready handling and delivery until the
cluster is quiet (bounded). Links can be cut one way (``cut``), a node can be cut off from
everyone (``isolate``), and ``heal()`` restores everything. Each node's Ready handling follows
the contract in rillet.cluster.raft.core: persist, send, apply, advance.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Callable, Iterable

from rillet.cluster.raft import (
    Config,
    ConfState,
    Entry,
    EntryKind,
    MemoryStorage,
    Message,
    MessageType,
    RaftCore,
    Ready,
    Role,
)
from rillet.cluster.raft.codec import decode_message, encode_message
from rillet.cluster.raft.storage import persist_ready

MAX_STEPS = 100_000

log = logging.getLogger("raftnet")


class Network:
    """Cores ``ids`` (all voters unless listed in ``learners``) over MemoryStorage."""

    def __init__(self, ids: Iterable[int], *, learners: Iterable[int] = (), seed: int = 0,
                 **config: object) -> None:
        self.ids = sorted(ids)
        self.learners = sorted(learners)
        self.seed = seed
        self.config = config
        self.conf = ConfState(frozenset(self.ids), frozenset(self.learners))
        self.cores: dict[int, RaftCore] = {}
        self.storages: dict[int, MemoryStorage] = {}
        self.applied: dict[int, list[Entry]] = {}
        self.readies: dict[int, list[Ready]] = {}
        self.cut_links: set[tuple[int, int]] = set()
        self.queue: deque[bytes] = deque()
        self.delivered: list[Message] = []
        self.chaos: random.Random | None = None
        """When set, each delivery round is shuffled and some messages are duplicated or
        dropped (Raft must stay safe on a network that reorders, duplicates and loses)."""
        self.trace: list[str] | None = None
        """When a list, every Ready handled is appended to it as ``n<id>: <describe>``."""
        self.hook: Callable[[Message], Message | None] | None = None
        """Called for each message about to be delivered; returns the message to deliver
        (possibly changed) or None to drop it."""
        for node_id in [*self.ids, *self.learners]:
            self.add(node_id, MemoryStorage(self.conf))

    def add(self, node_id: int, storage: MemoryStorage, **overrides: object) -> RaftCore:
        """Start (or restart) ``node_id`` on ``storage``."""
        params: dict[str, object] = {**self.config, **overrides}
        cfg = Config(id=node_id, **params)  # type: ignore[arg-type]
        rng = random.Random(self.seed * 1000 + node_id)
        core = RaftCore(cfg, storage, rng, logging.getLogger(f"raft.{node_id}"))
        self.cores[node_id] = core
        self.storages[node_id] = storage
        self.applied.setdefault(node_id, [])
        self.readies.setdefault(node_id, [])
        return core

    def restart(self, node_id: int) -> RaftCore:
        """Crash and restart ``node_id`` from its storage (everything was persisted)."""
        return self.add(node_id, self.storages[node_id])

    # -- faults -------------------------------------------------------------------------------

    def cut(self, a: int, b: int) -> None:
        """Drop messages both ways between ``a`` and ``b``."""
        self.cut_links |= {(a, b), (b, a)}

    def isolate(self, node_id: int) -> None:
        """Drop every message to or from ``node_id``."""
        for other in self.cores:
            if other != node_id:
                self.cut(node_id, other)

    def heal(self) -> None:
        """Deliver everything again."""
        self.cut_links.clear()

    # -- driving --------------------------------------------------------------------------------

    def handle_ready(self, node_id: int) -> list[Message]:
        """One round of the apply-path contract for ``node_id``; the messages it sends."""
        core = self.cores[node_id]
        if not core.has_ready():
            return []
        rd = core.ready()
        self.readies[node_id].append(rd)
        if self.trace is not None:
            self.trace.append(f"n{node_id}: {rd.describe()}")
        persist_ready(self.storages[node_id], rd)
        self.applied[node_id].extend(rd.committed_entries)
        core.advance(rd)
        return rd.all_messages()

    def send(self, messages: Iterable[Message]) -> None:
        for m in messages:
            self.queue.append(encode_message(m))

    def stabilize(self, max_steps: int = MAX_STEPS) -> None:
        """Handle Readies and deliver messages until nothing moves."""
        for _ in range(max_steps):
            for node_id in sorted(self.cores):
                self.send(self.handle_ready(node_id))
            if not self.queue and not any(c.has_ready() for c in self.cores.values()):
                return
            if self.chaos is not None:
                batch = [b for b in self.queue if self.chaos.random() > 0.05]
                batch += [b for b in batch if self.chaos.random() < 0.05]
                self.chaos.shuffle(batch)
                self.queue = deque(batch)
            while self.queue:
                m = decode_message(self.queue.popleft())
                if m.to not in self.cores or (m.frm, m.to) in self.cut_links:
                    continue
                if self.hook is not None:
                    hooked = self.hook(m)
                    if hooked is None:
                        continue
                    m = hooked
                self.delivered.append(m)
                self.cores[m.to].step(m)
        raise AssertionError(f"network did not stabilize within {max_steps} steps")

    def tick(self, node_id: int, n: int = 1) -> None:
        """Tick one node ``n`` times, stabilizing after each tick."""
        for _ in range(n):
            self.cores[node_id].tick()
            self.stabilize()

    def tick_all(self, n: int = 1) -> None:
        """Tick every node ``n`` times, stabilizing after each round."""
        for _ in range(n):
            for node_id in sorted(self.cores):
                self.cores[node_id].tick()
            self.stabilize()

    def elect(self, node_id: int) -> RaftCore:
        """Make ``node_id`` campaign and run the election to completion."""
        self.cores[node_id].campaign()
        self.stabilize()
        core = self.cores[node_id]
        assert core.role == Role.LEADER, core.describe()
        return core

    def propose(self, node_id: int, data: bytes) -> int:
        index = self.cores[node_id].propose(data)
        self.stabilize()
        return index

    def leaders(self) -> list[int]:
        return [i for i, c in sorted(self.cores.items()) if c.role == Role.LEADER]

    def log_of(self, node_id: int) -> list[tuple[int, int, bytes]]:
        """``(index, term, data)`` of every entry in a node's storage after its log start."""
        s = self.storages[node_id]
        return [(e.index, e.term, e.data)
                for e in s.entries(s.first_index(), s.last_index() + 1)]

    def applied_data(self, node_id: int) -> list[bytes]:
        """The data of the NORMAL, non-empty entries ``node_id`` applied, in order."""
        return [e.data for e in self.applied[node_id]
                if e.kind == EntryKind.NORMAL and e.data]


def make_core(node_id: int, voters: Iterable[int] = (1, 2, 3), *,
              storage: MemoryStorage | None = None, seed: int = 0,
              **config: object) -> tuple[RaftCore, MemoryStorage]:
    """One core over MemoryStorage, for tests that drive it message by message."""
    if storage is None:
        storage = MemoryStorage(ConfState(frozenset(voters)))
    cfg = Config(id=node_id, **config)  # type: ignore[arg-type]
    core = RaftCore(cfg, storage, random.Random(seed), logging.getLogger(f"raft.{node_id}"))
    return core, storage


def drain(core: RaftCore, storage: MemoryStorage) -> list[Message]:
    """Run the apply-path contract once for a lone core; the messages it would send."""
    out: list[Message] = []
    for _ in range(100):
        if not core.has_ready():
            return out
        rd = core.ready()
        persist_ready(storage, rd)
        core.advance(rd)
        out.extend(rd.all_messages())
    raise AssertionError("core kept producing Readies")


def store_log(storage: MemoryStorage, terms: Iterable[int]) -> None:
    """Fill ``storage`` with one entry per term given, from index 1 (data = ``b'i'``)."""
    storage.append([Entry(i, t, data=b"%d" % i) for i, t in enumerate(terms, start=1)])


def msg(mtype: MessageType, frm: int, to: int, term: int, **fields: object) -> Message:
    """A message literal, for tests that step a core by hand."""
    return Message(mtype, to=to, frm=frm, term=term, **fields)  # type: ignore[arg-type]


def make_leader(core: RaftCore, storage: MemoryStorage) -> list[Message]:
    """Campaign ``core`` and grant it every voter's (pre-)vote, then have every follower
    acknowledge its no-op so that it is committed. Returns the leader's last messages."""
    core.campaign()
    drain(core, storage)
    voters = sorted(core.conf_state.voters - {core.id})
    if core.role == Role.PRE_CANDIDATE:
        for v in voters:
            core.step(msg(MessageType.PRE_VOTE_RESP, v, core.id, core.term + 1))
        drain(core, storage)
    for v in voters:
        core.step(msg(MessageType.VOTE_RESP, v, core.id, core.term))
    drain(core, storage)
    assert core.role == Role.LEADER, core.describe()
    last = core.log.last_index()
    for v in voters:
        core.step(msg(MessageType.APPEND_RESP, v, core.id, core.term, index=last))
    out = drain(core, storage)
    assert core.commit_index == last, core.describe()
    return out
