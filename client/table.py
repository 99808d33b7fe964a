"""`Table`: a compacted topic as an in-memory key -> value view, kept current by tailing.

A Table reads every partition of a topic from the earliest offset with a `Consumer` and applies
each record to a dict: a record with a value sets its key, a record with an empty value (a
tombstone) deletes it. Because compaction only removes records that a later record of the same
key supersedes (and, after `delete.retention.ms`, old tombstones), replaying the compacted log
gives the same final view as replaying every write ever made.

Being caught up is measured in offsets, never in records: compacted batches skip offsets and
control batches carry none of the caller's records, so "the last record seen" may sit below the
high watermark forever. A partition counts as applied up to `X` once the consumer's next fetch
position is `X` and nothing it fetched is still waiting in its queue (see `_through`).

`wait_caught_up()` first asks every broker for the topic's high watermarks (DescribeTopic) and
takes the highest per partition: a follower's high watermark is never above the leader's, and a
write acknowledged before the call is below the leader's, so the target covers every write
acknowledged before the call (read-your-writes for a writer that awaited its acks).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, ItemsView, Iterator, KeysView, Sequence
from types import TracebackType
from typing import Any, Generic, Self, TypeVar, cast

import grpc
import grpc.aio

from rillet.api.v1 import admin_pb2, admin_pb2_grpc, common_pb2
from rillet.client.connection import (
    AsyncResource,
    ChannelPool,
    Credentials,
    fetch_metadata,
    make_stub,
    parse_bootstrap,
)
from rillet.client.consumer import Consumer
from rillet.client.errors import ClientClosedError, RilletError, UnknownTopicError, from_rpc_error
from rillet.client.metadata import ClusterMetadata
from rillet.client.records import RecordBatch

log = logging.getLogger(__name__)

__all__ = ["SyncTable", "Table"]

K = TypeVar("K")
V = TypeVar("V")

#: on_change(key, old value or None, new value or None (deleted)).
ChangeCallback = Callable[[Any, Any, Any], None]


class _TableConsumer(Consumer):
    """A Consumer that tells its Table whenever a fetch answer arrived.

    Heartbeats, control-only answers and offsets emptied by compaction move the fetch position
    without queueing anything the Table would see, so the Table needs this hook to notice that
    it is caught up. These three hooks are candidates for public Consumer API.
    """

    def __init__(self, on_progress: Callable[[], None], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_progress = on_progress

    async def _deliver(self, pd: common_pb2.PartitionData, end: int | None = None) -> None:
        await super()._deliver(pd, end)
        self._on_progress()

    def fetched_through(self, partition: int) -> int:
        """Offset below which every record of `partition` was queued or handed over (0 before
        the first answer)."""
        return self._fetch_from.get(partition, 0)

    def nothing_queued(self) -> bool:
        """True when no fetched batch waits in the queue: all were handed to the caller."""
        return self._queue.empty() and not self._records


class Table(AsyncResource, Generic[K, V]):
    """A live key -> value view of a compacted topic.

        async with Table("127.0.0.1:9091", "users") as users:
            await users.wait_caught_up(timeout_s=30)
            print(users.get(b"alice"))

    `key_decoder` / `value_decoder` turn the stored bytes into the view's keys and values
    (default: bytes as stored). Records without a key cannot be looked up and are counted in
    `keyless_records`, not applied. `on_change(key, old, new)` runs after each applied change
    (`new` is None for a delete); an exception it raises is logged and does not stop the table.

    Keys are assumed to live in one partition each (the producer's key hashing does that); if
    the same key is written to two partitions, the view holds whichever arrived last.
    """

    def __init__(
        self,
        bootstrap: str | Sequence[str],
        topic: str,
        *,
        key_decoder: Callable[[bytes], K] | None = None,
        value_decoder: Callable[[bytes], V] | None = None,
        on_change: ChangeCallback | None = None,
        request_timeout_s: float = 10.0,
        max_wait_ms: int = 500,
        credentials: Credentials | None = None,
        **consumer_options: Any,
    ) -> None:
        self.topic = topic
        self._key_decoder = key_decoder
        self._value_decoder = value_decoder
        self.on_change = on_change
        self.request_timeout_s = request_timeout_s
        self._consumer = _TableConsumer(
            self._notify, bootstrap, topic, start="earliest", max_wait_ms=max_wait_ms,
            request_timeout_s=request_timeout_s, credentials=credentials, **consumer_options)
        self._metadata = ClusterMetadata(parse_bootstrap(bootstrap))
        self._pool = ChannelPool(credentials)
        self._data: dict[K, V] = {}
        #: Per partition: the offset after the last record applied from a batch.
        self._applied: dict[int, int] = {}
        #: Per partition: the highest offset known applied-through (see `_through`).
        self._done: dict[int, int] = {}
        #: Set and replaced on every bit of progress (or failure); waiters hold the old one.
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self._closed = False
        #: Keyed records applied so far (sets and deletes, including deletes of absent keys):
        #: it changes whenever the view may have.
        self.version = 0
        #: Records skipped because they have no key.
        self.keyless_records = 0

    # -- lifecycle

    async def start(self) -> None:
        """Look the topic up and start replaying it (returns at once; see wait_caught_up)."""
        if self._task is not None:
            raise RilletError("table already started")
        try:
            await fetch_metadata(self._pool, self._metadata, [self.topic],
                                 timeout_s=self.request_timeout_s)
            if self._metadata.partitions(self.topic) is None:
                raise UnknownTopicError(f"topic {self.topic!r} does not exist")
            await self._consumer.start()
        except BaseException:
            await self._consumer.close()
            await self._pool.close()
            raise
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"rillet-table-{self.topic}")

    async def close(self) -> None:
        """Stop tailing. The view stays readable, frozen where it was."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._consumer.close()
        await self._pool.close()
        self._notify()

    # -- reading the view

    def get(self, key: K, default: V | None = None) -> V | None:
        return self._data.get(key, default)

    def __getitem__(self, key: K) -> V:
        return self._data[key]

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self) -> Iterator[K]:
        return iter(self._data)

    def keys(self) -> KeysView[K]:
        return self._data.keys()

    def items(self) -> ItemsView[K, V]:
        """A live view of the dict; take `list()` of it before awaiting if you iterate it."""
        return self._data.items()

    def snapshot(self) -> dict[K, V]:
        """A copy of the view that later changes leave alone."""
        return dict(self._data)

    @property
    def partitions(self) -> list[int]:
        return list(self._consumer.partitions)

    def offsets(self) -> dict[int, int]:
        """Per partition: the offset below which every record has been applied."""
        return {p: self._through(p) for p in self._consumer.partitions}

    def lag(self) -> dict[int, int]:
        """Per partition: offsets between what is applied and the last high watermark seen."""
        hws = self._consumer.high_watermarks
        return {p: max(0, hws.get(p, 0) - self._through(p)) for p in self._consumer.partitions}

    @property
    def caught_up(self) -> bool:
        """Every partition applied up to the last high watermark the consumer heard (which
        may be a little old: `wait_caught_up` asks the brokers instead)."""
        hws = self._consumer.high_watermarks
        return bool(self._consumer.partitions) and all(
            p in hws and self._through(p) >= hws[p] for p in self._consumer.partitions)

    @property
    def error(self) -> BaseException | None:
        """Why tailing stopped, if it did (the view is then frozen)."""
        return self._error

    # -- waiting

    async def wait_caught_up(self, timeout_s: float | None = None) -> dict[int, int]:
        """Return once every partition is applied up to its high watermark as of this call.

        The high watermarks come from every reachable broker (the highest per partition, and
        at least what the consumer has seen). If no broker answers, the consumer's own reports
        are used; a partition it has not heard about yet is waited for. Returns `offsets()`.
        Raises TimeoutError after `timeout_s`, or the error that stopped tailing.
        """
        if self._task is None:
            raise ClientClosedError("table not started: use `async with` or await start()")
        async with asyncio.timeout(timeout_s):
            target = await self._targets()
            while True:
                if self._error is not None:
                    raise self._error
                wake = self._wake
                for p, hw in self._consumer.high_watermarks.items():
                    target.setdefault(p, hw)
                if all(p in target and self._through(p) >= target[p]
                       for p in self._consumer.partitions):
                    return self.offsets()
                if self._closed:
                    raise ClientClosedError("table closed before it caught up")
                await wake.wait()

    async def _targets(self) -> dict[int, int]:
        """Highest high watermark per partition over the brokers that answer.

        Every broker is asked at once. The answer is ready when each partition's leader (as
        last known) has answered, or when every broker has answered or failed: a broker that
        hangs but leads nothing does not hold the wait up. After a failure the leaders are
        looked up again before the next call.
        """
        if self._metadata.stale:
            try:
                await fetch_metadata(self._pool, self._metadata, [self.topic],
                                     timeout_s=min(self.request_timeout_s, 2.0))
            except RilletError as exc:
                log.info("%s: metadata refresh failed (%s); using what is known", self.topic,
                         exc)
        brokers = sorted(set(self._metadata.brokers.values())) or list(self._metadata.bootstrap)
        leaders = {self._metadata.leader_address(self.topic, p)
                   for p in self._consumer.partitions}
        request = admin_pb2.DescribeTopicRequest(name=self.topic)

        async def describe(address: str) -> admin_pb2.TopicDescription:
            stub = make_stub(admin_pb2_grpc.AdminStub, self._pool.get(address))
            response = await stub.DescribeTopic(request, timeout=self.request_timeout_s)
            return response.topic  # type: ignore[no-any-return]

        calls = {asyncio.ensure_future(describe(a)): a for a in brokers}
        pending = set(calls)
        answered: set[str] = set()
        target: dict[int, int] = {}
        failures: list[RilletError] = []
        try:
            while pending and not leaders <= answered:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for call in done:
                    address = calls[call]
                    problem = call.exception()
                    if isinstance(problem, grpc.aio.AioRpcError):
                        err = from_rpc_error(problem)
                        log.info("%s: no high watermarks from %s: %s", self.topic, address, err)
                        failures.append(err)
                        self._metadata.mark_stale()
                        continue
                    if problem is not None:
                        raise problem
                    answered.add(address)
                    for pd in call.result().partitions:
                        target[pd.partition] = max(target.get(pd.partition, 0),
                                                   pd.high_watermark)
        finally:
            for call in pending:
                call.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if not answered and failures and not any(f.retriable for f in failures):
            # Every broker refused outright (the topic was deleted, say): waiting cannot help.
            raise failures[0]
        for p, hw in self._consumer.high_watermarks.items():
            target[p] = max(target.get(p, 0), hw)
        return target

    # -- applying

    def _through(self, p: int) -> int:
        """Offset below which every record of partition `p` has been applied.

        Batches move it to their next offset. When the consumer holds nothing queued, its
        fetch position counts too: offsets between the last record and that position hold
        nothing for the caller (compacted away, control batches, an empty partition).
        """
        done = max(self._done.get(p, 0), self._applied.get(p, 0))
        c = self._consumer
        if c.nothing_queued():
            done = max(done, c.fetched_through(p))
        self._done[p] = done
        return done

    def _notify(self) -> None:
        wake, self._wake = self._wake, asyncio.Event()
        wake.set()

    async def _run(self) -> None:
        try:
            while True:
                got = await self._consumer.getmany(None)
                for b in got:
                    self._apply(b)
                self._notify()
        except StopAsyncIteration:
            self._error = ClientClosedError(f"{self.topic}: the consumer stopped")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("%s: table stopped tailing: %s", self.topic, exc)
            self._error = exc
        finally:
            self._notify()

    def _apply(self, b: RecordBatch) -> None:
        """Apply one batch in offset order: set on a value, delete on an empty value."""
        data = self._data
        keys, values = b.keys, b.values
        kd, vd, cb = self._key_decoder, self._value_decoder, self.on_change
        keyless_before = self.keyless_records
        if kd is None and vd is None and cb is None:
            # The common case at bytes speed: no per-record calls.
            raw = cast(dict[bytes, bytes], data)
            for k, v in zip(keys, values, strict=True):
                if not k:
                    self.keyless_records += 1
                elif v:
                    raw[k] = v
                else:
                    raw.pop(k, None)
        else:
            for kb, vb in zip(keys, values, strict=True):
                if not kb:
                    self.keyless_records += 1
                    continue
                key = kd(kb) if kd is not None else cast(K, kb)
                old = data.get(key)
                if vb:
                    new: V | None = vd(vb) if vd is not None else cast(V, vb)
                    data[key] = cast(V, new)
                else:
                    new = None
                    data.pop(key, None)
                if cb is not None:
                    try:
                        cb(key, old, new)
                    except Exception:
                        log.exception("%s: on_change failed for key %r", self.topic, key)
        self.version += len(b) - (self.keyless_records - keyless_before)
        self._applied[b.partition] = b.next_offset


class SyncTable(Generic[K, V]):
    """Blocking Table for scripts: the async Table runs on a private loop in a daemon thread
    (the pattern of rillet.client.sync). Reads take the current view; `items()` returns a
    copy made on the loop thread, so it is consistent."""

    def __init__(self, bootstrap: str | Sequence[str], topic: str, **options: Any) -> None:
        from rillet.client.sync import LoopThread

        self._lt = LoopThread("rillet-sync-table")

        async def make() -> Table[K, V]:
            t: Table[K, V] = Table(bootstrap, topic, **options)
            await t.start()
            return t
        try:
            self._t = self._lt.run(make())
        except BaseException:
            self._lt.stop()
            raise

    def _run(self, coro: Coroutine[Any, Any, Any], timeout: float | None = None) -> Any:
        return self._lt.run(coro, timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def wait_caught_up(self, timeout_s: float | None = None) -> dict[int, int]:
        return cast(dict[int, int], self._run(self._t.wait_caught_up(timeout_s)))

    def get(self, key: K, default: V | None = None) -> V | None:
        # One dict lookup is atomic under the GIL.
        return self._t.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._t

    def __len__(self) -> int:
        return len(self._t)

    def items(self) -> list[tuple[K, V]]:
        async def copy() -> list[tuple[K, V]]:
            return list(self._t.items())
        return cast(list[tuple[K, V]], self._run(copy()))

    def offsets(self) -> dict[int, int]:
        async def get() -> dict[int, int]:
            return self._t.offsets()
        return cast(dict[int, int], self._run(get()))

    @property
    def version(self) -> int:
        return self._t.version

    def close(self) -> None:
        try:
            self._run(self._t.close())
        finally:
            self._lt.stop()
