"""The producer's sender against a scripted in-process broker: ordering, retries, failures.

The real broker never answers NOT_LEADER on a single node, so these paths are driven by a fake
Produce service whose answers each test scripts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import grpc.aio
import pytest

from rillet import batch as codec
from rillet.api.v1 import admin_pb2, admin_pb2_grpc, common_pb2, log_pb2, log_pb2_grpc
from rillet.client import Producer, errors

# (request number, topic, partition, first value) -> an Error to answer with, or None to store.
Script = Callable[[int, log_pb2.ProduceRequest], common_pb2.Error | None]


class FakeBroker(log_pb2_grpc.ProduceServicer, admin_pb2_grpc.MetadataServicer):
    def __init__(self, script: Script, *, answer: bool = True) -> None:
        self.script = script
        self.answer = answer
        self.requests = 0
        #: Set on every request received.
        self.changed = asyncio.Event()
        self.stored: dict[int, list[bytes]] = {}
        self.address = ""

    async def GetMetadata(self, request: Any, context: Any) -> admin_pb2.MetadataResponse:
        return admin_pb2.MetadataResponse(
            brokers=[admin_pb2.Broker(node_id=0, address=self.address)],
            topics=[admin_pb2.TopicMetadata(name="t", partitions=[
                admin_pb2.PartitionMetadata(partition=p, leader_id=0) for p in range(2)])])

    async def Produce(self, request_iterator: Any, context: Any
                      ) -> AsyncIterator[log_pb2.ProduceResponse]:
        async for req in request_iterator:
            n = self.requests
            self.requests += 1
            self.changed.set()
            if not self.answer:
                continue
            error = self.script(n, req)
            if error is not None:
                yield log_pb2.ProduceResponse(topic=req.topic, partition=req.partition,
                                              base_offset=-1, error=error)
                continue
            log = self.stored.setdefault(req.partition, [])
            base = len(log)
            log.extend(r.value for r in codec.decode(req.batch))
            yield log_pb2.ProduceResponse(topic=req.topic, partition=req.partition,
                                          base_offset=base)


async def start_fake(script: Script, **kw: Any) -> tuple[FakeBroker, grpc.aio.Server]:
    fake = FakeBroker(script, **kw)
    server = grpc.aio.server()
    log_pb2_grpc.add_ProduceServicer_to_server(fake, server)
    admin_pb2_grpc.add_MetadataServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    fake.address = f"127.0.0.1:{port}"
    await server.start()
    return fake, server


@pytest.fixture
async def make_fake() -> AsyncIterator[Callable[..., Any]]:
    servers: list[grpc.aio.Server] = []

    async def make(script: Script, **kw: Any) -> FakeBroker:
        fake, server = await start_fake(script, **kw)
        servers.append(server)
        return fake

    yield make
    for s in servers:
        await s.stop(grace=None)


def _first_value(req: log_pb2.ProduceRequest) -> bytes:
    return codec.decode(req.batch)[0].value


async def test_retriable_error_resends_in_order(make_fake: Any) -> None:
    def script(n: int, req: log_pb2.ProduceRequest) -> common_pb2.Error | None:
        if n == 1:  # the second request is refused once
            return common_pb2.Error(code=common_pb2.ERROR_CODE_NOT_LEADER, message="moved",
                                    retriable=True, refresh_metadata=True)
        return None
    fake = await make_fake(script)
    async with Producer(fake.address, linger_ms=0, max_in_flight=1,
                        retry_backoff_ms=10) as producer:
        futs = []
        for i in range(5):
            futs.append(await producer.send("t", b"%d" % i, partition=0))
            await producer.flush()
    assert [f.result().offset for f in futs] == [0, 1, 2, 3, 4]
    assert fake.stored[0] == [b"0", b"1", b"2", b"3", b"4"]
    assert fake.requests == 6


async def test_non_retriable_error_fails_only_its_batch(make_fake: Any) -> None:
    def script(n: int, req: log_pb2.ProduceRequest) -> common_pb2.Error | None:
        if _first_value(req) == b"bad":
            return common_pb2.Error(code=common_pb2.ERROR_CODE_CORRUPT_BATCH,
                                    message="CRC mismatch")
        return None
    fake = await make_fake(script)
    async with Producer(fake.address, linger_ms=0) as producer:
        ok1 = await producer.send("t", b"good", partition=0)
        await producer.flush()
        bad = await producer.send("t", b"bad", partition=0)
        await producer.flush()
        ok2 = await producer.send("t", b"good2", partition=0)
        await producer.flush()
    assert ok1.result().offset == 0 and ok2.result().offset == 1
    with pytest.raises(errors.CorruptBatchError, match="CRC mismatch"):
        bad.result()
    assert fake.stored[0] == [b"good", b"good2"]


async def test_unanswered_batches_fail_at_the_delivery_timeout(make_fake: Any) -> None:
    fake = await make_fake(lambda n, req: None, answer=False)
    async with Producer(fake.address, linger_ms=0, delivery_timeout_ms=300) as producer:
        loop = asyncio.get_running_loop()
        began = loop.time()
        fut = await producer.send("t", b"lost", partition=1)
        # The stream stays open and silent: only the deadline ends this wait, and it does.
        with pytest.raises(errors.RequestTimeoutError, match="not acknowledged within 300 ms"):
            await asyncio.wait_for(_wait(fut), 5)
        assert 0.25 <= loop.time() - began < 2
        await producer.flush(timeout_s=1)  # nothing left pending
    with pytest.raises(errors.RequestTimeoutError):
        fut.result()


async def test_in_flight_is_bounded(make_fake: Any) -> None:
    fake = await make_fake(lambda n, req: None, answer=False)
    async with Producer(fake.address, linger_ms=0, max_in_flight=3,
                        batch_bytes=4096) as producer:
        for _ in range(20):
            await producer.send("t", b"x" * 1000, partition=0)
        st = producer._states[("t", 0)]
        async with asyncio.timeout(10):
            while fake.requests < 3:
                fake.changed.clear()
                await fake.changed.wait()
        # The writer is parked on its window: three unanswered, the rest still queued.
        assert len(st.in_flight) == 3 and len(st.queue) >= 1
        assert fake.requests == 3
        await producer.close(flush=False)


async def test_record_futures_of_one_batch_resolve_to_consecutive_offsets(make_fake: Any) -> None:
    seen: list[codec.Record] = []

    def script(n: int, req: log_pb2.ProduceRequest) -> None:
        seen.extend(codec.decode(req.batch))
    fake = await make_fake(script)
    async with Producer(fake.address, linger_ms=60_000) as producer:
        # Plain, keyed and headed records mixed in one batch of partition 0.
        futs = [await producer.send("t", b"%d" % i, partition=0,
                                    key=b"k" if i % 4 == 1 else None,
                                    headers=[("h", b"1")] if i % 5 == 2 else None,
                                    timestamp_ms=1000 + i)
                for i in range(20)]
        waiters = [asyncio.ensure_future(_wait(f)) for f in futs[::3]]
        await producer.flush()
        metas = await asyncio.gather(*waiters)
    assert fake.requests == 1, "one batch"
    assert [(m.partition, m.offset, m.timestamp_ms) for m in metas] == [
        (0, i, 1000 + i) for i in range(0, 20, 3)]
    assert [f.result().offset for f in futs] == list(range(20))
    assert fake.stored[0] == [b"%d" % i for i in range(20)]
    # The columns stay aligned whichever path (fast or not) appended each record.
    assert [(r.key, r.headers) for r in seen] == [
        (b"k" if i % 4 == 1 else b"", (("h", b"1"),) if i % 5 == 2 else ()) for i in range(20)]


async def _wait(fut: Any) -> Any:
    return await fut


async def test_a_failed_batch_fails_each_of_its_records(make_fake: Any) -> None:
    fake = await make_fake(lambda n, req: common_pb2.Error(
        code=common_pb2.ERROR_CODE_CORRUPT_BATCH, message="CRC mismatch"))
    async with Producer(fake.address, linger_ms=60_000) as producer:
        futs = [await producer.send("t", b"%d" % i, partition=1) for i in range(10)]
        waiter = asyncio.ensure_future(_wait(futs[4]))
        await producer.flush()
        with pytest.raises(errors.CorruptBatchError):
            await waiter
    for f in futs:
        assert isinstance(f.exception(), errors.CorruptBatchError)


async def test_close_fails_pending_records_and_their_waiters(make_fake: Any) -> None:
    fake = await make_fake(lambda n, req: None, answer=False)
    producer = Producer(fake.address, linger_ms=0, max_in_flight=1, batch_bytes=2048)
    await producer.start()
    # In flight, queued behind it, and still lingering in an open batch: all must fail.
    sent = [await producer.send("t", b"x" * 500, partition=0) for _ in range(12)]
    producer.linger_ms = 60_000
    lingering = await producer.send("t", b"late", partition=1)
    waiters = [asyncio.ensure_future(_wait(f)) for f in (sent[0], sent[-1], lingering)]
    await asyncio.sleep(0)
    await producer.close(flush=False)
    for w in waiters:
        with pytest.raises(errors.ClientClosedError):
            await w
    for f in [*sent, lingering]:
        assert f.done() and isinstance(f.exception(), errors.ClientClosedError)
    with pytest.raises(errors.ClientClosedError):
        await producer.send("t", b"after close")


async def test_record_timestamps_follow_the_clock_to_the_millisecond(
        make_fake: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from rillet.client import producer as producer_mod

    # Readings inside one millisecond, across boundaries, and the clock stepping back.
    readings = [1000.0001, 1000.0004, 1000.0009, 1000.0010, 1000.5, 1000.5009, 999.25, 1000.5]
    clock = iter(readings)
    fake = await make_fake(lambda n, req: None)
    async with Producer(fake.address, linger_ms=60_000) as producer:
        monkeypatch.setattr(producer_mod, "_time", lambda: next(clock))
        futs = [await producer.send("t", b"v", partition=0) for _ in readings]
        given = await producer.send("t", b"v", partition=0, timestamp_ms=42)
        await producer.flush()
    assert [f.result().timestamp_ms for f in futs] == [int(t * 1000) for t in readings]
    assert given.result().timestamp_ms == 42
