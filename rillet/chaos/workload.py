"""The chaos workload: writers of unique values, continuous readers, and the final read-back.

Everything the workload does lands in a `History`; the checker judges the run from that alone.

Writers: worker `w` sends the values f"{w}-{seq}" (unique in the run) at a steady rate, one
record at a time round-robin over the partitions (the partition is chosen here, so the history
knows where each value was meant to go), with the client Producer at acks=all and idempotence
on. Each send becomes one `Op`: "ok" with the acknowledged offset; "failed" only when the error
proves nothing was stored (the send was refused before it was queued, or the broker rejected
the request as invalid); "unknown" for everything else -- a timeout, a broken connection, the
producer closed at stop with the record in flight -- because such a record may or may not be
in the log. Being strict about "failed" matters: the checker treats a failed write that shows
up in the log as a violation.

Readers: reader `r` tails every partition from earliest, one Consumer per partition so that
after a failure it can resume exactly after the last offset it saw (a Consumer takes one start
position for all its partitions). Every record becomes a `Read`.

Stopping: when `stop` is set writers stop sending, wait up to `DRAIN_S` for what is in flight,
then close; whatever is still unanswered is recorded as unknown. Nothing blocks past that. A
writer whose producer has had no answer for `STALL_S` replaces it the same way (without the
wait), so one stuck producer does not hold a partition for the whole delivery timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from rillet.chaos.history import FINAL_READER, History, Op, Outcome, Read
from rillet.client import Consumer, Producer, RecordFuture, Replay
from rillet.client.consumer import PositionSpec
from rillet.client.errors import (
    BatchTooLargeError,
    CorruptBatchError,
    InvalidBatchError,
    InvalidConfigError,
    InvalidRequestError,
    InvalidTopicError,
    PartitionOutOfRangeError,
    RilletError,
    UnknownTopicError,
)

log = logging.getLogger(__name__)

#: After `stop`, how long writers wait for in-flight records before closing.
DRAIN_S = 10.0
#: A record not acknowledged within this long fails as unknown (the Producer's delivery
#: timeout); shorter than the default so a run's end is not held up by a dead partition.
DELIVERY_TIMEOUT_S = 30.0
#: A writer whose oldest unanswered record waited this long closes its producer (those records
#: become unknown) and starts a new one. An idempotent producer whose acknowledged batch was
#: lost (the planted bug) otherwise retries the next sequence number until the delivery
#: timeout, and the partition looks unavailable for that long.
STALL_S = 10.0
#: Pause before a reader or writer that failed outright starts over.
RESTART_BACKOFF_S = 0.5

#: Broker answers that mean the request was refused as it stands, so nothing was stored.
_DEFINITE_FAILURES: tuple[type[RilletError], ...] = (
    UnknownTopicError, InvalidTopicError, InvalidConfigError, PartitionOutOfRangeError,
    BatchTooLargeError, CorruptBatchError, InvalidBatchError, InvalidRequestError,
)


def classify(exc: BaseException) -> Outcome:
    """"failed" when `exc` proves the record was not stored, else "unknown"."""
    return "failed" if isinstance(exc, _DEFINITE_FAILURES) else "unknown"


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]


async def _wait_or_stop(stop: asyncio.Event, delay_s: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), delay_s)


class _Writer:
    """One worker: a Producer and the ops it has sent but not yet recorded."""

    def __init__(self, worker: int, bootstrap: str, topic: str, partitions: int,
                 history: History, rate: float) -> None:
        self.worker = worker
        self.bootstrap = bootstrap
        self.topic = topic
        self.partitions = partitions
        self.history = history
        self.interval_s = 1.0 / rate
        self.seq = 0
        # value -> (partition, start_s, handle) for sends not yet recorded as an Op.
        self.pending: dict[str, tuple[int, float, RecordFuture]] = {}

    def _record(self, value: str, handle: RecordFuture, outcome: Outcome | None = None,
                error: str = "") -> None:
        entry = self.pending.pop(value, None)
        if entry is None:
            return
        partition, start_s, _ = entry
        offset: int | None = None
        if outcome is None:
            if handle.cancelled():
                outcome, error = "unknown", "cancelled"
            elif (exc := handle.exception()) is not None:
                outcome, error = classify(exc), _describe(exc)
            else:
                outcome = "ok"
                acked = handle.result().offset
                offset = acked if acked >= 0 else None  # stored, offset not known
        self.history.add_op(Op(self.worker, "write", partition, value, start_s,
                               self.history.clock(), outcome, offset, error))

    def _done(self, value: str) -> Callable[[RecordFuture], None]:
        return lambda handle: self._record(value, handle)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            producer = Producer(self.bootstrap, acks="all", idempotent=True,
                                delivery_timeout_ms=DELIVERY_TIMEOUT_S * 1000,
                                request_timeout_s=5.0)
            try:
                await producer.start()
            except Exception as exc:  # the writer must outlive the faults
                log.info("writer %d: producer start failed (%r); retrying", self.worker, exc)
                await producer.close(flush=False)
                await _wait_or_stop(stop, RESTART_BACKOFF_S)
                continue
            stalled = False
            try:
                stalled = await self._send_loop(producer, stop)
            except Exception as exc:
                log.warning("writer %d: %r; starting a new producer", self.worker, exc)
                stalled = True
            finally:
                await self._drain(producer, 0.0 if stalled else DRAIN_S)
            if stalled:
                await _wait_or_stop(stop, RESTART_BACKOFF_S)

    def _stalled(self) -> bool:
        """The oldest unanswered record has waited STALL_S: start over with a new producer."""
        oldest = next(iter(self.pending.values()), None)
        return oldest is not None and self.history.clock() - oldest[1] > STALL_S

    async def _send_loop(self, producer: Producer, stop: asyncio.Event) -> bool:
        """Send until `stop` (returns False) or until the producer stalls (returns True)."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        stopped = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                if self._stalled():
                    log.warning("writer %d: no answer for %.0f s; starting a new producer",
                                self.worker, STALL_S)
                    return True
                value = f"{self.worker}-{self.seq}"
                partition = self.seq % self.partitions
                self.seq += 1
                start_s = self.history.clock()
                send = asyncio.ensure_future(
                    producer.send(self.topic, value.encode(), partition=partition))
                # send() waits while the producer's buffer is full: never past `stop`, and
                # not forever when the producer is stuck.
                while not send.done() and not stop.is_set() and not self._stalled():
                    await asyncio.wait([send, stopped], timeout=1.0,
                                       return_when=asyncio.FIRST_COMPLETED)
                if not send.done():
                    send.cancel()
                    with contextlib.suppress(BaseException):
                        await send
                    # Most likely never queued, but a cancel can land after the record
                    # joined a batch: only "unknown" is safe.
                    self.history.add_op(Op(self.worker, "write", partition, value, start_s,
                                           self.history.clock(), "unknown", None,
                                           "send cancelled while waiting for buffer room"))
                    continue
                try:
                    handle = send.result()
                except RilletError as exc:
                    # Refused before it was queued: nothing can have been stored.
                    self.history.add_op(Op(self.worker, "write", partition, value, start_s,
                                           self.history.clock(), "failed", None,
                                           _describe(exc)))
                    await _wait_or_stop(stop, RESTART_BACKOFF_S)
                    continue
                self.pending[value] = (partition, start_s, handle)
                handle.add_done_callback(self._done(value))
                next_at = max(next_at + self.interval_s, loop.time() - 1.0)
                delay = next_at - loop.time()
                if delay > 0:
                    await _wait_or_stop(stop, delay)
            return False
        finally:
            stopped.cancel()

    async def _drain(self, producer: Producer, wait_s: float) -> None:
        """Bounded: wait up to `wait_s` for in-flight records, close, and record what is
        left as unknown."""
        if wait_s > 0:
            try:
                await producer.flush(wait_s)
            except RilletError as exc:
                log.info("writer %d: %s", self.worker, exc)
        await producer.close(flush=False)
        for value, (_, _, handle) in list(self.pending.items()):
            if handle.done():
                self._record(value, handle)
            else:
                self._record(value, handle, "unknown", "unanswered when the producer closed")


async def _read_partition(bootstrap: str, topic: str, partition: int, reader: int,
                          history: History, stop: asyncio.Event) -> None:
    """Tail one partition from earliest until `stop`, resuming after failures.

    Each consumer session is one "read" Op: "ok" when it ran until `stop`, "failed" with the
    error when it broke off (the next session resumes after the last offset seen); its
    `offset` is the last offset the session read, None if it read nothing."""
    next_offset: int | None = None
    while not stop.is_set():
        start: PositionSpec = "earliest" if next_offset is None else next_offset
        consumer = Consumer(bootstrap, topic, start=start,
                            partitions=[partition], max_wait_ms=200, request_timeout_s=5.0)
        began = history.clock()
        last: int | None = None
        outcome: Outcome = "ok"
        error = ""
        try:
            await consumer.start()
            while not stop.is_set():
                batches = await consumer.getmany(timeout_s=0.5)
                at_s = history.clock()
                reads = []
                for b in batches:
                    # b.offsets, not first_offset + i: a compacted batch has gaps.
                    for offset, value in zip(b.offsets, b.values, strict=True):
                        reads.append(Read(partition, offset, value.decode(errors="replace"),
                                          at_s, reader))
                if reads:
                    history.add_reads(reads)
                    last = reads[-1].offset
                    next_offset = last + 1
        except Exception as exc:  # any failure: the reader must outlive the faults
            outcome, error = "failed", _describe(exc)
            log.info("reader %d partition %d: %r; resuming from %s", reader, partition,
                     exc, next_offset)
        finally:
            history.add_op(Op(reader, "read", partition, None, began, history.clock(),
                              outcome, last, error))
            await consumer.close()
        if outcome == "failed":
            await _wait_or_stop(stop, RESTART_BACKOFF_S)


async def run_workload(bootstrap: str, topic: str, partitions: int, history: History,
                       stop: asyncio.Event, *, writers: int = 2, readers: int = 1,
                       rate_per_writer: float = 200.0) -> None:
    """Write and read `topic` until `stop` is set, recording everything in `history`.

    Returns within about DRAIN_S (plus a close) after `stop`. Cancelling it instead also
    records every unanswered send as unknown, but may lose the last reads.
    """
    tasks = [asyncio.create_task(
        _Writer(w, bootstrap, topic, partitions, history, rate_per_writer).run(stop),
        name=f"chaos-writer-{w}") for w in range(writers)]
    tasks += [asyncio.create_task(
        _read_partition(bootstrap, topic, p, r, history, stop),
        name=f"chaos-reader-{r}-{p}") for r in range(readers) for p in range(partitions)]
    try:
        results = await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for t, result in zip(tasks, results, strict=True):
        if isinstance(result, BaseException):
            log.error("%s ended with %r", t.get_name(), result)


async def _replay_rest(bootstrap: str, topic: str, partition: int, start: PositionSpec,
                       timeout_s: float) -> list[tuple[int, str]]:
    """Records of `partition` from `start` to the high watermark, or [] if there are none."""
    out: list[tuple[int, str]] = []
    async with Replay(bootstrap, topic, start=start, end="latest", partitions=[partition],
                      request_timeout_s=min(timeout_s, 5.0),
                      reconnect_timeout_s=timeout_s) as replay:
        async for b in replay.batches():
            out.extend((offset, v.decode(errors="replace"))
                       for offset, v in zip(b.offsets, b.values, strict=True))
    return out


async def final_read(bootstrap: str, topic: str, partitions: int, history: History,
                     timeout_s: float) -> None:
    """Read every partition from earliest to its high watermark into `history` (reader -1).

    Run it after the faults are healed and the workload stopped. A partition is read again
    from where the last pass ended until a pass finds nothing new, because a just-elected
    leader may report a high watermark that does not yet cover its predecessor's committed
    entries. Records reach the history only once a partition's read succeeded, so a retried
    read never shows as a reader going backwards. Raises TimeoutError after `timeout_s`.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s

    async def one(partition: int) -> list[tuple[int, str]]:
        got: list[tuple[int, str]] = []
        quiet_passes = 0
        while quiet_passes < 2:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"final read of partition {partition} did not finish")
            start: PositionSpec = got[-1][0] + 1 if got else "earliest"
            try:
                more = await _replay_rest(bootstrap, topic, partition, start, remaining)
            except RilletError as exc:
                log.info("final read of partition %d from %d: %s; retrying", partition,
                         start, exc)
                await asyncio.sleep(RESTART_BACKOFF_S)
                continue
            got.extend(more)
            quiet_passes = 0 if more else quiet_passes + 1
            if not more:
                await asyncio.sleep(0.25)
        return got

    results = await asyncio.wait_for(
        asyncio.gather(*(one(p) for p in range(partitions))), timeout_s + 1.0)
    at_s = history.clock()
    for p, records in enumerate(results):
        history.add_reads([Read(p, off, value, at_s, FINAL_READER) for off, value in records])
