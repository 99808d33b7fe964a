"""Blocking wrappers for scripts: `Producer`, `Consumer`, `Replay`, `Admin` without asyncio.

Choice (docs/decisions/0301-sync-wrappers.md): each wrapper owns a private event loop running in
a daemon thread, and submits coroutines to it with `run_coroutine_threadsafe`. `asyncio.run` per
call would be simpler but cannot work for the producer and consumer, whose background tasks
(the sender, the fetcher) must keep running between calls. `close()` (or the `with` block)
closes the async object on its loop, then stops and joins the thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

from rillet.api.v1 import admin_pb2, common_pb2, groups_pb2
from rillet.client import admin as _admin
from rillet.client import consumer as _consumer
from rillet.client import group as _group
from rillet.client import producer as _producer
from rillet.client.accumulator import RecordMetadata
from rillet.client.connection import Credentials
from rillet.client.metadata import ClusterMetadata
from rillet.client.records import ConsumerRecord

T = TypeVar("T")

__all__ = ["Admin", "Consumer", "Producer", "Replay"]


class LoopThread:
    """One event loop on one daemon thread, for one wrapper object."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return self.submit(coro).result(timeout)

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


class _Wrapper:
    _lt: LoopThread

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        raise NotImplementedError


class Producer(_Wrapper):
    """Blocking producer; `send()` returns a concurrent.futures.Future of RecordMetadata."""

    def __init__(self, bootstrap: str | Sequence[str] = "127.0.0.1:9091", **options: Any) -> None:
        self._lt = LoopThread("rillet-sync-producer")

        async def make() -> _producer.Producer:
            p = _producer.Producer(bootstrap, **options)
            await p.start()
            return p
        try:
            self._p = self._lt.run(make())
        except BaseException:
            self._lt.stop()
            raise

    def send(self, topic: str, value: bytes, key: bytes | None = None,
             headers: Sequence[tuple[str, bytes]] | None = None, partition: int | None = None,
             timestamp_ms: int | None = None) -> concurrent.futures.Future[RecordMetadata]:
        return self._lt.submit(
            self._p.send_and_wait(topic, value, key, headers, partition, timestamp_ms))

    def flush(self, timeout_s: float | None = None) -> None:
        self._lt.run(self._p.flush(timeout_s))

    def close(self) -> None:
        try:
            self._lt.run(self._p.close())
        finally:
            self._lt.stop()


class _SyncReader(_Wrapper):
    _r: _consumer._Reader

    def poll(self, timeout_s: float | None = None) -> list[ConsumerRecord]:
        """Records available now, waiting up to `timeout_s` s for some; [] when none came."""
        try:
            batches = self._lt.run(self._r.getmany(timeout_s))
        except StopAsyncIteration:
            return []
        return [r for b in batches for r in b]

    def __iter__(self) -> Iterator[ConsumerRecord]:
        while True:
            try:
                batches = self._lt.run(self._r.getmany(None))
            except StopAsyncIteration:
                return
            for b in batches:
                yield from b

    def close(self) -> None:
        try:
            self._lt.run(self._r.close())
        finally:
            self._lt.stop()


class Consumer(_SyncReader):
    """Blocking tailing consumer: iterate it, or call `poll(timeout)`.

    With `group_id=...` it is a member of that consumer group (see GroupConsumer): `commit()`
    and `assignment()` work, and a record counts as finished once the next poll or iteration
    step asks for more. Callbacks (`on_assign`, `on_revoke`) run on the wrapper's loop thread.
    """

    _r: Any

    def __init__(self, bootstrap: str | Sequence[str], topic: str | Sequence[str],
                 **options: Any) -> None:
        self._lt = LoopThread("rillet-sync-consumer")

        async def make() -> Any:
            c = _consumer.Consumer(bootstrap, topic, **options)  # type: ignore[arg-type]
            await c.start()
            return c
        try:
            self._r = self._lt.run(make())
        except BaseException:
            self._lt.stop()
            raise

    def _grouped(self) -> _group.GroupConsumer:
        if not isinstance(self._r, _group.GroupConsumer):
            raise TypeError("not a group consumer: pass group_id=...")
        return self._r

    def commit(self, offsets: Mapping[_group.TopicPartition, int] | None = None) -> None:
        """Commit `offsets`, or everything handed out so far (group consumers only)."""
        self._lt.run(self._grouped().commit(offsets))

    def assignment(self) -> list[_group.TopicPartition]:
        """Partitions this member owns now (group consumers only)."""
        return self._grouped().assignment()


class Replay(_SyncReader):
    """Blocking bounded read; iteration ends when the range has been sent."""

    def __init__(self, bootstrap: str | Sequence[str], topic: str, **options: Any) -> None:
        self._lt = LoopThread("rillet-sync-replay")

        async def make() -> _consumer.Replay:
            r = _consumer.Replay(bootstrap, topic, **options)
            await r.start()
            return r
        try:
            self._r = self._lt.run(make())
        except BaseException:
            self._lt.stop()
            raise


class Admin(_Wrapper):
    """Blocking admin calls."""

    def __init__(self, bootstrap: str | Sequence[str] = "127.0.0.1:9091", *,
                 timeout: float = 10.0, credentials: Credentials | None = None) -> None:
        self._lt = LoopThread("rillet-sync-admin")
        self._a = _admin.Admin(bootstrap, timeout=timeout, credentials=credentials)

    def create_topic(self, name: str, partitions: int = 1, replication_factor: int = 1,
                     config: Mapping[str, str | int] | None = None,
                     ) -> admin_pb2.TopicDescription:
        return self._lt.run(self._a.create_topic(name, partitions, replication_factor, config))

    def delete_topic(self, name: str) -> None:
        self._lt.run(self._a.delete_topic(name))

    def list_topics(self) -> list[admin_pb2.TopicSummary]:
        return self._lt.run(self._a.list_topics())

    def describe_topic(self, name: str) -> admin_pb2.TopicDescription:
        return self._lt.run(self._a.describe_topic(name))

    def metadata(self, topics: Sequence[str] = ()) -> ClusterMetadata:
        return self._lt.run(self._a.metadata(topics))

    def list_groups(self) -> list[groups_pb2.GroupSummary]:
        return self._lt.run(self._a.list_groups())

    def describe_group(self, group: str) -> groups_pb2.DescribeGroupResponse:
        return self._lt.run(self._a.describe_group(group))

    def reset_group_offsets(self, group: str, topic: str, to: common_pb2.Position,
                            partitions: Sequence[int] = (), *, dry_run: bool = False,
                            ) -> list[groups_pb2.CommittedPartitionOffset]:
        return self._lt.run(self._a.reset_group_offsets(group, topic, to, partitions,
                                                        dry_run=dry_run))

    def delete_group(self, group: str) -> None:
        self._lt.run(self._a.delete_group(group))

    def describe_cluster(self, *, probe_timeout_s: float = 1.0) -> _admin.ClusterDescription:
        return self._lt.run(self._a.describe_cluster(probe_timeout_s=probe_timeout_s))

    def close(self) -> None:
        try:
            self._lt.run(self._a.close())
        finally:
            self._lt.stop()
