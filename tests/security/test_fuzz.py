"""Fuzz every public RPC of a running node with generated and malformed requests.

The public services and the open ones (gRPC health, server reflection) are all fuzzed.
Requests are drawn by hypothesis strategies built from the generated request descriptors (no
hand-written list of fields: a field added to a .proto is fuzzed the day it lands): scalars with
their edge values, strings empty / huge / unicode / names that exist, nested messages, repeated
fields, oneofs (proto3 `optional` included), and `bytes` that are sometimes a valid record
batch, sometimes a damaged one. Streams carry several messages and are sometimes cancelled
after the first answer. Besides, raw bytes go to every method path and to unknown paths
(generic multicallables with no serializer): random bytes and mutated valid messages.

What must hold:
- every answer is a defined status: never UNKNOWN, never INTERNAL (nothing the fuzz sends is a
  storage failure), DEADLINE_EXCEEDED only for Consume and Health/Watch (streams that wait by
  design);
- every call ends within its deadline (no hang), the node process is alive and its health
  SERVING afterwards, and its log has no ERROR line (an unexpected exception in a handler);
- a topic produced before the fuzz reads back byte-identical, after the fuzz and after a
  kill -9 and restart, whose recovery reports no cut, dropped or lost data.

The counts (requests per method, statuses seen) are printed; run with -s to see them.
"""

from __future__ import annotations

import asyncio
import collections
import re
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rillet import batch as batch_codec
from rillet.api.v1 import admin_pb2, common_pb2, groups_pb2, log_pb2
from tests.integration.conftest import BrokerFactory, BrokerProcess, ClusterFactory
from tests.security.conftest import write_tokens

pytestmark = pytest.mark.integration

SEED_TOPIC = "keep-seed-7f3a"
"""Produced before the fuzz; no strategy ever names it, so it must read back unchanged."""
FUZZ_TOPICS = ("fz", "fz-b")
GROUPS = ("fg", "fg-b")
#: The node's settings during the fuzz: few partitions per topic, so that a CreateTopic the fuzz
#: sends does not spend seconds creating a thousand partition logs.
FUZZ_ENV = {"RILLET_MAX_PARTITIONS": "8"}

#: Call metadata (None: no credentials).
Metadata = tuple[tuple[str, str], ...] | None

CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024),
                   ("grpc.max_send_message_length", 64 * 1024 * 1024)]
CALL_TIMEOUT_S = 10.0
MAX_RESPONSES = 3

SERVICES = tuple(
    svc for mod in (log_pb2, admin_pb2, groups_pb2)
    for svc in mod.DESCRIPTOR.services_by_name.values())
#: Open to anyone (probes, tools), so fuzzed too: gRPC health and server reflection.
OPEN_SERVICES = (health_pb2.DESCRIPTOR.services_by_name["Health"],
                 reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"])
METHODS: tuple[MethodDescriptor, ...] = tuple(
    m for svc in (*SERVICES, *OPEN_SERVICES) for m in svc.methods)
#: Streams that stay open by design until the client ends them: a deadline is their normal end.
LONG_LIVED = {"/rillet.api.v1.Consume/Consume": 0.8, "/grpc.health.v1.Health/Watch": 0.5}
UNKNOWN_PATHS = ("/rillet.api.v1.Admin/Nope", "/rillet.api.v1.Nope/Produce", "/x/y",
                 "/rillet.internal.v1.Peer/Nope", "/rillet.api.v1.Produce/produce")

#: Statuses the node may answer with; anything else fails the test.
DEFINED = {
    grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.ABORTED,
}


#: What gRPC Python's client reports, with no status from the server, when a request stream is
#: still sending as the server ends the call (a client-side race; grpc/grpc#36066).
CLIENT_CORE_ERROR = "Internal error from Core"


def path_of(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def message_class(desc: Descriptor) -> Any:
    return message_factory.GetMessageClass(desc)


# ------------------------------------------------------------------------------ strategies

_I32, _I64 = (-2**31, 2**31 - 1), (-2**63, 2**63 - 1)
_U32, _U64 = (0, 2**32 - 1), (0, 2**64 - 1)
_T = FieldDescriptor
_INT_RANGES = {
    _T.TYPE_INT32: _I32, _T.TYPE_SINT32: _I32, _T.TYPE_SFIXED32: _I32,
    _T.TYPE_INT64: _I64, _T.TYPE_SINT64: _I64, _T.TYPE_SFIXED64: _I64,
    _T.TYPE_UINT32: _U32, _T.TYPE_FIXED32: _U32, _T.TYPE_UINT64: _U64, _T.TYPE_FIXED64: _U64,
}


def int_strategy(kind: int, name: str = "") -> st.SearchStrategy[int]:
    lo, hi = _INT_RANGES[kind]
    edges = sorted({v for v in (lo, hi, 0, 1, 2, 3, 7, -1, 1000, 1001, 60_000, 60_001,
                                2**31 - 1, 2**32 - 1) if lo <= v <= hi})
    anything = st.one_of(st.sampled_from(edges), st.integers(lo, hi))
    # Fields whose useful values are small get them most of the time, so that requests get
    # past the first check and reach deeper code; the edges still come one time in four.
    likely = _LIKELY_INTS.get(name)
    if likely is None:
        return st.one_of(anything, st.integers(0, 20))
    return weighted((3, likely.filter(lambda v: lo <= v <= hi)), (1, anything))


_LIKELY_INTS: dict[str, st.SearchStrategy[int]] = {
    "partition": st.integers(0, 1), "partitions": st.integers(0, 2),
    "offset": st.integers(0, 120), "max_wait_ms": st.integers(0, 300),
    "max_bytes": st.sampled_from((0, 1, 100, 65536)),
    "session_timeout_ms": st.sampled_from((0, 1000, 6000)),
    "rebalance_timeout_ms": st.sampled_from((0, 1000, 6000)),
    "generation": st.integers(-1, 3), "replication_factor": st.integers(0, 2),
    "timestamp_ms": st.integers(0, 2**41),
}


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, each drawn with its weight."""
    total = sum(w for w, _ in choices)

    def pick(n: int) -> st.SearchStrategy[Any]:
        for w, strategy in choices:
            if n < w:
                return strategy
            n -= w
        raise AssertionError("unreachable")
    return st.integers(0, total - 1).flatmap(pick)


NAMES = (*FUZZ_TOPICS, *GROUPS, "nope")
#: Fields that name a topic or a group: mostly one that exists, so requests get past the
#: lookup; sometimes any name of either kind, or any string.
_TOPIC_FIELDS = ("topic", "name", "topics")
_GROUP_FIELDS = ("group",)
EDGE_STRINGS = ("", ".", "..", " ", "a" * 249, "a" * 250, "é", "日本", "\x00", "a\nb",
                "a/b", "*", "fz*", "\U0001f600", "-", "_")
HUGE_STRING = "x" * 200_000
_NAME_FIELDS = ("topic", "name", "topics", "group", "resource_name", "member_id", "principal")


def string_strategy(name: str) -> st.SearchStrategy[str]:
    plain = weighted((4, st.text(max_size=40)), (4, st.sampled_from(EDGE_STRINGS)),
                     (1, st.just(HUGE_STRING)))
    if name in _TOPIC_FIELDS:
        return weighted((6, st.sampled_from(FUZZ_TOPICS)), (1, st.sampled_from(NAMES)),
                        (1, plain))
    if name in _GROUP_FIELDS:
        return weighted((6, st.sampled_from(GROUPS)), (1, st.sampled_from(NAMES)), (1, plain))
    if name in _NAME_FIELDS:
        return weighted((4, st.sampled_from(NAMES)), (1, plain))
    return plain


@st.composite
def valid_batches(draw: st.DrawFn) -> bytes:
    n = draw(st.integers(1, 5))
    values = draw(st.lists(st.binary(max_size=64), min_size=n, max_size=n))
    keys = draw(st.one_of(st.none(), st.lists(st.binary(max_size=16), min_size=n, max_size=n)))
    headers = draw(st.one_of(st.none(), st.lists(
        st.lists(st.tuples(st.text(max_size=8), st.binary(max_size=8)), max_size=3),
        min_size=n, max_size=n)))
    ts = draw(st.one_of(st.just(int(time.time() * 1000)), st.integers(0, 2**40)))
    return batch_codec.encode(values, keys=keys, timestamps_ms=[ts] * n, headers=headers)


@st.composite
def damaged(draw: st.DrawFn, data: bytes) -> bytes:
    buf = bytearray(data)
    how = draw(st.sampled_from(("flip", "truncate", "append", "count", "length", "attrs")))
    if how == "flip" and buf:
        i = draw(st.integers(0, len(buf) - 1))
        buf[i] ^= draw(st.integers(1, 255))
    elif how == "truncate":
        del buf[draw(st.integers(0, len(buf))):]
    elif how == "append":
        buf += draw(st.binary(min_size=1, max_size=100))
    elif how in ("count", "length", "attrs") and len(buf) >= batch_codec.HEADER_SIZE:
        at = {"count": batch_codec.RECORD_COUNT_FIELD, "length": 8, "attrs": 33}[how]
        if how == "attrs":
            value = draw(st.sampled_from((-1, 0x10, 0x30, 0x40, 0x7, 1, 0x100)))
            struct.pack_into("<h", buf, at, value)
        else:
            value = draw(st.sampled_from((-1, 0, 2**31 - 1, 1, 2, 1_000_000)))
            struct.pack_into("<i", buf, at, value)
        if draw(st.booleans()):  # reseal: intact bytes, broken rules
            struct.pack_into("<I", buf, batch_codec.CRC_FIELD,
                             batch_codec.crc32c(memoryview(buf)[batch_codec.CRC_START:]))
    return bytes(buf)


def bytes_strategy() -> st.SearchStrategy[bytes]:
    return weighted(
        (6, valid_batches()), (4, valid_batches().flatmap(lambda b: damaged(b))),
        (2, st.binary(max_size=200)), (1, st.just(b"")),
        (1, st.just(b"\0" * (1024 * 1024 + 1))),  # above max_batch_bytes
    )


def scalar_strategy(f: FieldDescriptor) -> st.SearchStrategy[Any]:
    t = f.type
    if t in _INT_RANGES:
        return int_strategy(t, f.name)
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return st.floats(allow_nan=True, allow_infinity=True, width=32
                         if t == FieldDescriptor.TYPE_FLOAT else 64)
    if t == FieldDescriptor.TYPE_STRING:
        return string_strategy(f.name)
    if t == FieldDescriptor.TYPE_BYTES:
        return bytes_strategy()
    if t == FieldDescriptor.TYPE_ENUM:
        known = [v.number for v in f.enum_type.values]
        # Proto3 enums are open: numbers the schema does not name arrive as they are.
        return weighted((4, st.sampled_from(known)), (1, st.integers(-2**31, 2**31 - 1)))
    raise AssertionError(f"no strategy for field {f.full_name} of type {t}")


def field_strategy(f: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if f.message_type is not None:
        return message_strategy(f.message_type, depth + 1)
    return scalar_strategy(f)


@st.composite
def _message(draw: st.DrawFn, desc: Descriptor, depth: int) -> Any:
    msg = message_class(desc)()
    oneofs: dict[str, list[FieldDescriptor]] = {}
    for f in desc.fields:
        if f.containing_oneof is not None:
            oneofs.setdefault(f.containing_oneof.name, []).append(f)
            continue
        if f.is_repeated:
            if f.message_type is not None and f.message_type.GetOptions().map_entry:
                key_f = f.message_type.fields_by_name["key"]
                val_f = f.message_type.fields_by_name["value"]
                items = draw(st.dictionaries(scalar_strategy(key_f), field_strategy(val_f, depth),
                                             max_size=3))
                target = getattr(msg, f.name)
                for k, v in items.items():
                    if val_f.message_type is not None:
                        target[k].CopyFrom(v)
                    else:
                        target[k] = v
                continue
            size = draw(st.one_of(st.integers(0, 3), st.sampled_from((0, 50))))
            if depth > 2 and f.message_type is not None:
                size = 0
            values = draw(st.lists(field_strategy(f, depth), min_size=size, max_size=size))
            getattr(msg, f.name).extend(values)
            continue
        if f.message_type is not None:
            if depth > 2 or not draw(st.booleans()):
                continue
            getattr(msg, f.name).CopyFrom(draw(message_strategy(f.message_type, depth + 1)))
            continue
        if draw(st.integers(0, 4)) == 0:
            continue  # left at its default (not sent)
        setattr(msg, f.name, draw(scalar_strategy(f)))
    for members in oneofs.values():
        chosen = draw(st.one_of(st.none(), st.sampled_from(members)))
        if chosen is None:
            continue
        if chosen.message_type is not None:
            getattr(msg, chosen.name).CopyFrom(
                draw(message_strategy(chosen.message_type, depth + 1)))
        else:
            setattr(msg, chosen.name, draw(scalar_strategy(chosen)))
    return msg


def message_strategy(desc: Descriptor, depth: int = 0) -> st.SearchStrategy[Any]:
    """Any message of type `desc`, built by walking its fields."""
    return _message(desc, depth)


@st.composite
def raw_payload(draw: st.DrawFn, desc: Descriptor | None) -> bytes:
    """Bytes for a method: random, or a valid `desc` message with bytes flipped, cut or added."""
    if desc is None or draw(st.booleans()):
        return draw(st.binary(max_size=300))
    good = draw(message_strategy(desc)).SerializeToString()
    buf = bytearray(good)
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(("flip", "cut", "insert")))
        if how == "flip" and buf:
            i = draw(st.integers(0, len(buf) - 1))
            buf[i] ^= draw(st.integers(1, 255))
        elif how == "cut" and buf:
            del buf[draw(st.integers(0, len(buf) - 1)):]
        else:
            i = draw(st.integers(0, len(buf)))
            buf[i:i] = draw(st.binary(min_size=1, max_size=8))
    return bytes(buf)


# ------------------------------------------------------------------------------ the driver


@dataclass
class Tally:
    """What the fuzz sent and what came back."""

    requests: int = 0
    calls: int = 0
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    by_method: collections.Counter[str] = field(default_factory=collections.Counter)
    detail: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    failures: list[str] = field(default_factory=list)

    def report(self, title: str) -> str:
        lines = [f"{title}: {self.calls} calls, {self.requests} request messages"]
        lines.append("  statuses: " + ", ".join(
            f"{k} {v}" for k, v in sorted(self.statuses.items(), key=lambda kv: -kv[1])))
        lines.append("  per method:")
        for method in sorted({m for m, _ in self.detail}):
            lines.append(f"    {method} {self.by_method.get(method, '')}: " + ", ".join(
                f"{code} {n}" for (m, code), n in sorted(self.detail.items()) if m == method))
        return "\n".join(lines)


class Driver:
    """Sends one fuzzed call at a time on a sync channel and checks the status it ends with."""

    def __init__(self, addresses: Sequence[str], tally: Tally,
                 credentials: Sequence[Metadata] = (None,)) -> None:
        self.channels = [grpc.insecure_channel(a, options=CHANNEL_OPTIONS) for a in addresses]
        self.tally = tally
        self.credentials = list(credentials)

    def close(self) -> None:
        for ch in self.channels:
            ch.close()

    def _check(self, what: str, code: grpc.StatusCode, details: str, long_lived: bool,
               cancelled_by_us: bool) -> None:
        name = "CANCELLED (by the fuzz)" if cancelled_by_us else code.name
        self.tally.statuses[name] += 1
        self.tally.detail[(what, name)] += 1
        if cancelled_by_us:
            return
        if code in DEFINED or (code == grpc.StatusCode.DEADLINE_EXCEEDED and long_lived):
            return
        self.tally.failures.append(f"{what}: {code.name} {details[:300]!r}")

    def call(self, node: int, method_path: str, requests: list[Any], *, client_streaming: bool,
             server_streaming: bool, serialize: Callable[[Any], bytes] | None,
             cancel_after_first: bool, label: str, metadata: Metadata = None) -> None:
        ch = self.channels[node % len(self.channels)]
        long_lived = method_path in LONG_LIVED
        timeout = LONG_LIVED.get(method_path, CALL_TIMEOUT_S)
        self.tally.calls += 1
        self.tally.requests += len(requests)
        self.tally.by_method[label] += 1
        kw: dict[str, Any] = {"request_serializer": serialize, "response_deserializer": None}
        md = {"metadata": metadata} if metadata else {}
        cancelled = False
        started = time.monotonic()
        try:
            if not server_streaming:
                if client_streaming:
                    ch.stream_unary(method_path, **kw)(iter(requests), timeout=timeout, **md)
                else:
                    ch.unary_unary(method_path, **kw)(requests[0], timeout=timeout, **md)
            else:
                if client_streaming:
                    it = ch.stream_stream(method_path, **kw)(iter(requests), timeout=timeout,
                                                             **md)
                else:
                    it = ch.unary_stream(method_path, **kw)(requests[0], timeout=timeout, **md)
                n = 0
                for raw in it:
                    n += 1
                    if method_path == "/rillet.api.v1.Produce/Produce" and serialize:
                        # Each batch's own answer: an error code inside an OK stream.
                        err = log_pb2.ProduceResponse.FromString(raw).error.code
                        self.tally.detail[("Produce batches", common_pb2.ErrorCode.Name(
                            err) if err else "stored")] += 1
                    if (cancel_after_first and n == 1) or n >= MAX_RESPONSES:
                        cancelled = it.cancel()
                        break
            self._check(label, grpc.StatusCode.CANCELLED if cancelled else grpc.StatusCode.OK,
                        "", long_lived, cancelled)
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
            details = exc.details() or ""  # type: ignore[attr-defined]
            if (client_streaming and code == grpc.StatusCode.INTERNAL
                    and details == CLIENT_CORE_ERROR
                    and "received from peer" not in exc.debug_error_string()):  # type: ignore[attr-defined]
                # gRPC's client, not the node: the node ended the call while the client was
                # still sending (grpc/grpc#36066). The node's log is checked separately.
                self.tally.statuses["INTERNAL (client side, not from the node)"] += 1
                self.tally.detail[(label, "INTERNAL (client side)")] += 1
            else:
                self._check(label, code, details, long_lived,
                            cancelled and code == grpc.StatusCode.CANCELLED)
        elapsed = time.monotonic() - started
        if elapsed > timeout + 5:
            self.tally.failures.append(f"{label}: took {elapsed:.1f}s (deadline {timeout}s)")


def _one_method(driver: Driver, method: MethodDescriptor, examples: int, nodes: int,
                derandomize: bool) -> None:
    desc = method.input_type
    path = path_of(method)
    serialize = message_class(desc).SerializeToString

    @settings(max_examples=examples, deadline=None, database=None, derandomize=derandomize,
              suppress_health_check=list(HealthCheck), print_blob=True)
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        seen = len(driver.tally.failures)
        count = data.draw(st.integers(1, 4)) if method.client_streaming else 1
        reqs = [data.draw(message_strategy(desc), label="request") for _ in range(count)]
        if path == "/rillet.api.v1.Groups/Join" and data.draw(st.booleans()):
            # Often a well-formed start, so heartbeats and leaves reach a joined member.
            reqs[0] = groups_pb2.GroupRequest(join=groups_pb2.JoinGroup(
                group=data.draw(st.sampled_from(GROUPS)), topics=[FUZZ_TOPICS[0]],
                session_timeout_ms=data.draw(st.sampled_from((0, 1000, 6000)))))
        driver.call(data.draw(st.integers(0, nodes - 1)), path, reqs,
                    client_streaming=method.client_streaming,
                    server_streaming=method.server_streaming, serialize=serialize,
                    cancel_after_first=data.draw(st.booleans()), label=method.name,
                    metadata=data.draw(st.sampled_from(driver.credentials)))
        assert len(driver.tally.failures) == seen, driver.tally.failures[seen:]

    run()


def _raw(driver: Driver, examples: int, nodes: int, derandomize: bool) -> None:
    targets: list[tuple[str, MethodDescriptor | None]] = [(path_of(m), m) for m in METHODS]
    targets += [(p, None) for p in UNKNOWN_PATHS]

    @settings(max_examples=examples, deadline=None, database=None, derandomize=derandomize,
              suppress_health_check=list(HealthCheck), print_blob=True)
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        seen = len(driver.tally.failures)
        path, method = data.draw(st.sampled_from(targets))
        desc = method.input_type if method is not None else None
        streaming_in = method.client_streaming if method is not None else False
        count = data.draw(st.integers(1, 3)) if streaming_in else 1
        payloads = [data.draw(raw_payload(desc)) for _ in range(count)]
        if streaming_in and data.draw(st.booleans()) and desc is not None:
            # Good messages first, the bad one last: earlier requests must still be answered.
            payloads = [data.draw(message_strategy(desc)).SerializeToString(), *payloads]
        driver.call(data.draw(st.integers(0, nodes - 1)), path, payloads,
                    client_streaming=streaming_in,
                    server_streaming=method.server_streaming if method is not None else False,
                    serialize=None, cancel_after_first=False,
                    label=f"raw {method.name if method else 'unknown path'}",
                    metadata=data.draw(st.sampled_from(driver.credentials)))
        assert len(driver.tally.failures) == seen, driver.tally.failures[seen:]

    run()


def fuzz(addresses: Sequence[str], per_method: int, raw_examples: int, *,
         derandomize: bool, credentials: Sequence[Metadata] = (None,),
         admin: Metadata = None) -> Tally:
    """Every public method `per_method` times, then `raw_examples` raw-byte calls; each call
    with one of `credentials` (call metadata; None: none)."""
    tally = Tally()
    driver = Driver(addresses, tally, credentials)
    try:
        for method in METHODS:
            # The fuzz deletes topics too; recreate them so each method meets existing ones.
            ensure_topics(addresses[0], replication_factor=min(3, len(addresses)),
                          metadata=admin)
            n = max(3, per_method // 2) if path_of(method) in LONG_LIVED else per_method
            _one_method(driver, method, n, len(addresses), derandomize)
        _raw(driver, raw_examples, len(addresses), derandomize)
    finally:
        driver.close()
    return tally


# ------------------------------------------------------------------------------ the node side


def prepare(address: str, replication_factor: int = 1, metadata: Metadata = None) -> None:
    """The seed topic (two partitions, records with keys and headers) and the fuzz topics."""
    with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as ch:
        admin = ch.unary_unary("/rillet.api.v1.Admin/CreateTopic",
                               request_serializer=admin_pb2.CreateTopicRequest.SerializeToString,
                               response_deserializer=admin_pb2.CreateTopicResponse.FromString)
        for name, parts in ((SEED_TOPIC, 2), (FUZZ_TOPICS[0], 2), (FUZZ_TOPICS[1], 1)):
            admin(admin_pb2.CreateTopicRequest(name=name, partitions=parts,
                                               replication_factor=replication_factor),
                  timeout=30, metadata=metadata)
        produce = ch.stream_stream(
            "/rillet.api.v1.Produce/Produce",
            request_serializer=log_pb2.ProduceRequest.SerializeToString,
            response_deserializer=log_pb2.ProduceResponse.FromString)
        now = int(time.time() * 1000)
        reqs = [log_pb2.ProduceRequest(topic=SEED_TOPIC, partition=i % 2, batch=batch_codec.encode(
            [f"v{i}-{j}".encode() * (j + 1) for j in range(5)],
            keys=[f"k{j}".encode() for j in range(5)], timestamps_ms=[now + i] * 5,
            headers=[[("h", bytes([i, j]))] for j in range(5)])) for i in range(20)]
        deadline = time.monotonic() + 30
        while True:  # in a fresh cluster the first leaders may still be settling
            resps = list(produce(iter(reqs), timeout=30, metadata=metadata))
            if all(not r.error.code for r in resps):
                break
            assert time.monotonic() < deadline, [r.error for r in resps if r.error.code]
            reqs = [q for q, r in zip(reqs, resps, strict=True) if r.error.code]


def ensure_topics(address: str, replication_factor: int = 1, metadata: Metadata = None) -> None:
    """The fuzz topics exist (again): CreateTopic, ALREADY_EXISTS is fine."""
    with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as ch:
        create = ch.unary_unary(
            "/rillet.api.v1.Admin/CreateTopic",
            request_serializer=admin_pb2.CreateTopicRequest.SerializeToString,
            response_deserializer=admin_pb2.CreateTopicResponse.FromString)
        for name, parts in ((FUZZ_TOPICS[0], 2), (FUZZ_TOPICS[1], 1)):
            try:
                create(admin_pb2.CreateTopicRequest(
                    name=name, partitions=parts, replication_factor=replication_factor),
                    timeout=30, metadata=metadata)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.ALREADY_EXISTS:  # type: ignore[attr-defined]
                    raise


def read_back(address: str, metadata: Metadata = None) -> dict[int, bytes]:
    """Every stored batch of the seed topic, byte for byte, per partition."""
    with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as ch:
        replay = ch.unary_stream(
            "/rillet.api.v1.Replay/Replay",
            request_serializer=log_pb2.ReplayRequest.SerializeToString,
            response_deserializer=log_pb2.ReplayResponse.FromString)
        out: dict[int, bytearray] = collections.defaultdict(bytearray)
        req = log_pb2.ReplayRequest(topic=SEED_TOPIC, to=common_pb2.Position(
            boundary=common_pb2.BOUNDARY_LATEST))
        getattr(req, "from").boundary = common_pb2.BOUNDARY_EARLIEST
        for resp in replay(req, timeout=30, metadata=metadata):
            for pd in resp.partitions:
                out[pd.partition] += pd.batches
    return {p: bytes(b) for p, b in out.items()}


def serving(address: str) -> bool:
    with grpc.insecure_channel(address) as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)


#: Lines of a log that mean the node hit something it did not expect, or that recovery had
#: to throw data away.
BAD_LINE = re.compile(r" (ERROR|CRITICAL) |Traceback|cut \d+ bytes|dropping \d+ segment|"
                      r"data was lost|torn or corrupt|CRC mismatch")


def bad_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if BAD_LINE.search(line)]


def since_last_start(text: str) -> str:
    return text.rsplit("--- start #", 1)[-1]


def check_node_after(proc: BrokerProcess, before: dict[int, bytes],
                     metadata: Metadata = None) -> None:
    assert proc.running, f"node {proc.node_id} died:\n{proc.log_text()[-3000:]}"
    assert serving(proc.address)
    assert bad_lines(proc.log_text()) == [], bad_lines(proc.log_text())[:20]
    assert read_back(proc.address, metadata) == before


def run_single_node(proc: BrokerProcess, per_method: int, raw_examples: int,
                    derandomize: bool, credentials: Sequence[Metadata] = (None,),
                    admin: Metadata = None, title: str = "fuzz, one node") -> Tally:
    prepare(proc.address, metadata=admin)
    before = read_back(proc.address, admin)
    assert sorted(before) == [0, 1] and all(before.values())
    tally = fuzz([proc.address], per_method, raw_examples, derandomize=derandomize,
                 credentials=credentials, admin=admin)
    print("\n" + tally.report(title))
    assert tally.failures == [], tally.failures
    check_node_after(proc, before, admin)
    # A crash and restart: recovery checks the logs the fuzz wrote to.
    proc.kill()
    proc.start()
    recovered = since_last_start(proc.log_text())
    assert bad_lines(recovered) == [], bad_lines(recovered)[:20]
    assert read_back(proc.address, admin) == before
    assert serving(proc.address)
    return tally


def test_fuzz_every_rpc_single_node(broker_factory: BrokerFactory) -> None:
    """A few hundred requests, the same every run (derandomized): the default-suite variant."""
    proc = broker_factory(env=FUZZ_ENV)
    tally = run_single_node(proc, per_method=14, raw_examples=120, derandomize=True)
    assert tally.calls >= 300
    assert {m.name for m in METHODS} <= set(tally.by_method)


@pytest.mark.slow
def test_fuzz_every_rpc_single_node_long(broker_factory: BrokerFactory) -> None:
    """Thousands of requests, new ones each run."""
    proc = broker_factory(env=FUZZ_ENV)
    tally = run_single_node(proc, per_method=200, raw_examples=2000, derandomize=False)
    assert tally.calls >= 5000


@pytest.mark.slow
async def test_fuzz_every_rpc_three_nodes(cluster_factory: ClusterFactory) -> None:
    """The same against a 3-node cluster, each call to a random node (forwarding, proxies)."""
    from tests.integration.conftest import FAST_RAFT_ENV

    cluster = await cluster_factory(3, env={**FAST_RAFT_ENV, **FUZZ_ENV})
    addresses = [n.address for n in cluster.nodes]
    await asyncio.to_thread(prepare, addresses[0], 3)
    before = await asyncio.to_thread(read_back, addresses[0])
    tally = await asyncio.to_thread(fuzz, addresses, 60, 600, derandomize=False)
    print("\n" + tally.report("fuzz, three nodes"))
    assert tally.failures == [], tally.failures
    for proc in cluster.nodes:
        await asyncio.to_thread(check_node_after, proc, before)
    for proc in cluster.nodes:
        proc.kill()
    cluster.start()
    await cluster.wait_registered()
    await cluster.wait_leaders(SEED_TOPIC)
    for proc in cluster.nodes:
        recovered = since_last_start(proc.log_text())
        assert bad_lines(recovered) == [], bad_lines(recovered)[:20]
        assert await asyncio.to_thread(read_back, proc.address) == before


@pytest.mark.slow
def test_fuzz_every_rpc_with_tokens_and_acls(broker_factory: BrokerFactory,
                                            tmp_path: Path) -> None:
    """Authentication and ACLs on: each call carries a super user's token, a token with no
    rules, an unknown token, a malformed header, or nothing."""
    tokens = write_tokens(tmp_path / "tokens", {"tok-admin": "admin", "tok-bob": "bob"})
    proc = broker_factory(env={**FUZZ_ENV, "RILLET_TOKEN_FILE": str(tokens),
                               "RILLET_ACL": "true", "RILLET_SUPER_USERS": "admin"})
    admin: Metadata = (("authorization", "Bearer tok-admin"),)
    credentials: list[Metadata] = [
        admin, admin, (("authorization", "Bearer tok-bob"),),
        (("authorization", "Bearer nope"),), (("authorization", "tok-admin"),), None]
    tally = run_single_node(proc, per_method=60, raw_examples=600, derandomize=False,
                            credentials=credentials, admin=admin,
                            title="fuzz, one node, tokens and ACLs")
    assert tally.statuses["UNAUTHENTICATED"] > 0 and tally.statuses["PERMISSION_DENIED"] > 0
