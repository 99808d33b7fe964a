"""One partition's runtime state on a node, and the group-commit flusher shared by all of them.

Ordering contract (single node, replication factor 1):
  1. `Partition.append` writes a validated batch to the log on the event-loop thread. The bytes
     are in the OS page cache, not yet on disk.
  2. `GroupCommitter` notices the partition is dirty and calls `PartitionLog.flush()` in a worker
     thread; every batch appended before that call (on any partition) shares the same fsyncs.
  3. Back on the loop, `Partition.advance` moves the high watermark to the flushed offset,
     resolves the acks=all waiters it covers, and wakes the topic's consumers.
So an acks=all answer and a consumer read can only ever cover fsynced data: the high watermark
is the flushed offset, and both are decided in step 3.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable

from rillet.node.errors import StorageFailureError, UnknownTopicError
from rillet.node.storage.log import AppendInfo, PartitionLog

log = logging.getLogger(__name__)


class Partition:
    """A partition log plus its high watermark and the producers waiting for it to advance.

    Everything here runs on the event-loop thread except `PartitionLog.flush`, which the
    committer runs in a worker thread (the storage layer locks internally for that).
    """

    def __init__(self, topic: str, index: int, plog: PartitionLog, *,
                 on_append: Callable[[Partition], None],
                 on_advance: Callable[[], None]) -> None:
        self.topic = topic
        self.index = index
        self.log = plog
        self._on_append = on_append
        self._on_advance = on_advance
        # End of durable data; consumers read below it, acks=all waits for it.
        self.high_watermark = plog.flushed_offset
        # (next offset after the batch, future) in append order; resolved as hw passes them.
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()
        self.closed = False
        self.failure: BaseException | None = None

    @property
    def name(self) -> str:
        return f"{self.topic}-{self.index}"

    @property
    def _log_fields(self) -> dict[str, object]:
        return {"topic": self.topic, "partition": self.index}

    @property
    def dirty(self) -> bool:
        """True when some appended data is not yet flushed."""
        return not self.closed and self.log.log_end_offset > self.high_watermark

    def check_open(self) -> None:
        if self.closed:
            raise UnknownTopicError(f"topic {self.topic!r} was deleted")
        if self.failure is not None:
            raise StorageFailureError(
                f"partition {self.name} cannot be written after a storage failure: "
                f"{self.failure}")

    def append(self, batch: bytes, *, wait_durable: bool) -> tuple[AppendInfo,
                                                                   asyncio.Future[None] | None]:
        """Append one validated batch; with `wait_durable`, also a future resolved once fsynced."""
        self.check_open()
        try:
            info = self.log.append(batch)
        except OSError as exc:
            self.fail(exc)
            raise StorageFailureError(f"partition {self.name}: append failed: {exc}") from exc
        self._on_append(self)
        if not wait_durable:
            return info, None
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((info.last_offset + 1, fut))
        return info, fut

    def advance(self, flushed_offset: int) -> None:
        """The log is durable up to `flushed_offset`: move the hw, answer producers, wake
        readers."""
        if flushed_offset <= self.high_watermark:
            return
        self.high_watermark = flushed_offset
        waiters = self._waiters
        while waiters and waiters[0][0] <= flushed_offset:
            _, fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
        self._on_advance()

    def fail(self, exc: BaseException) -> None:
        """A write or fsync failed: refuse further appends and fail every waiting producer.

        After a failed fsync the page cache state is unknown (the kernel may have dropped the
        dirty pages), so retrying the fsync could report success for data that is gone.
        """
        if self.failure is None:
            log.error("partition %s: storage failure, refusing writes: %s", self.name, exc,
                      extra=self._log_fields)
            self.failure = exc
        self._fail_waiters(StorageFailureError(f"partition {self.name}: {exc}"))

    def _fail_waiters(self, exc: BaseException) -> None:
        while self._waiters:
            _, fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(exc)

    def close(self, reason: BaseException) -> None:
        """Fail waiting producers with `reason` and close the log (flushing what it has)."""
        if self.closed:
            return
        self.closed = True
        self._fail_waiters(reason)
        try:
            self.log.close()
        except Exception:
            log.exception("partition %s: close failed", self.name, extra=self._log_fields)
        self._on_advance()


class GroupCommitter:
    """One flusher task per broker: many batches and partitions share each round of fsyncs.

    While any partition is dirty it runs `flush()` on every dirty partition in one worker-thread
    call, then advances their high watermarks on the loop. Batches that arrive during an fsync
    are covered by the next round, so the rate of fsync rounds, not the rate of batches, bounds
    the disk cost. acks=none/leader data is flushed by the same loop, promptly.
    """

    def __init__(self, *, linger_ms: float = 0.0) -> None:
        self._linger_s = linger_ms / 1000.0
        self._dirty: dict[Partition, None] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        # Held during each flush round; whoever closes a partition takes it first, so no
        # flush runs on a log that is being closed.
        self.lock = asyncio.Lock()
        self.rounds = 0
        # Called with each flush round's duration in seconds (the node's fsync histogram).
        self.observe: Callable[[float], None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="group-commit")
        self._task.add_done_callback(self._on_done)

    def _on_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.critical("group commit task died; failing all waiting producers",
                         exc_info=task.exception())
            for part in list(self._dirty):
                part.fail(RuntimeError("group commit task died"))

    def mark_dirty(self, part: Partition) -> None:
        self._dirty[part] = None
        self._wake.set()

    async def stop(self) -> None:
        """Flush whatever is dirty one last time, then end the task."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            try:
                await self._task
            finally:
                self._task = None

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            if self._linger_s and not self._stopping:
                await asyncio.sleep(self._linger_s)
            self._wake.clear()
            parts = [p for p in self._dirty if not p.closed]
            self._dirty.clear()
            if parts:
                async with self.lock:
                    started = time.perf_counter()
                    results = await asyncio.to_thread(_flush_all, parts)
                    if self.observe is not None:
                        self.observe(time.perf_counter() - started)
                self.rounds += 1
                for part, result in zip(parts, results, strict=True):
                    if isinstance(result, BaseException):
                        part.fail(result)
                    elif not part.closed:
                        part.advance(result)
            if self._stopping and not self._dirty:
                return


def _flush_all(parts: list[Partition]) -> list[int | BaseException]:
    """Runs in a worker thread: fsync each partition; an error fails only its own partition."""
    out: list[int | BaseException] = []
    for part in parts:
        try:
            out.append(part.log.flush())
        except Exception as exc:
            out.append(exc)
    return out
