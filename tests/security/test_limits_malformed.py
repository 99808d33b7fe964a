"""The malformed-request interceptor on a real node: request bytes that do not parse end
INVALID_ARGUMENT on each kind of method, earlier requests of a stream are still answered, and
the methods that are not ours (health's Watch writes with context.write; reflection) still
work through it."""

from __future__ import annotations

import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from rillet import batch
from rillet.api.v1 import admin_pb2, log_pb2
from tests.integration.conftest import BrokerFactory

pytestmark = pytest.mark.integration

BAD = b"\xff\xff\xff"  # not a protobuf message of any type
BAD_UTF8 = b"\x0a\x02\xff\xfe"  # field 1 (a string in every request here) with invalid UTF-8


def test_malformed_requests_and_open_services(broker_factory: BrokerFactory) -> None:
    proc = broker_factory()
    with grpc.insecure_channel(proc.address) as ch:
        raw = {kind: getattr(ch, kind) for kind in
               ("unary_unary", "unary_stream", "stream_stream")}
        ch.unary_unary("/rillet.api.v1.Admin/CreateTopic",
                       request_serializer=admin_pb2.CreateTopicRequest.SerializeToString,
                       response_deserializer=admin_pb2.CreateTopicResponse.FromString)(
            admin_pb2.CreateTopicRequest(name="t", partitions=1), timeout=10)
        cases = [("unary_unary", "/rillet.api.v1.Admin/CreateTopic", "CreateTopicRequest"),
                 ("unary_stream", "/rillet.api.v1.Consume/Consume", "ConsumeRequest"),
                 ("stream_stream", "/rillet.api.v1.Produce/Produce", "ProduceRequest")]
        for kind, path, message in cases:
            for payload in (BAD, BAD_UTF8):
                call = raw[kind](path)
                with pytest.raises(grpc.RpcError) as info:
                    if kind == "unary_unary":
                        call(payload, timeout=10)
                    elif kind == "unary_stream":
                        list(call(payload, timeout=10))
                    else:
                        list(call(iter([payload]), timeout=10))
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
                details = info.value.details()  # type: ignore[attr-defined]
                assert f"malformed request to {path}" in details and message in details

        # A Produce stream: a good batch, then garbage: the good one is answered (stored),
        # then the call ends INVALID_ARGUMENT.
        good = log_pb2.ProduceRequest(topic="t", batch=batch.encode(
            [b"v"], timestamps_ms=[int(time.time() * 1000)])).SerializeToString()
        answers: list[bytes] = []
        with pytest.raises(grpc.RpcError) as info:
            for answer in raw["stream_stream"]("/rillet.api.v1.Produce/Produce")(
                    iter([good, BAD]), timeout=10):
                answers.append(answer)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        assert len(answers) == 1
        resp = log_pb2.ProduceResponse.FromString(answers[0])
        assert not resp.error.code and resp.base_offset == 0

        # Health: Check and Watch (a coroutine that writes with context.write).
        health = health_pb2_grpc.HealthStub(ch)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == \
            health_pb2.HealthCheckResponse.SERVING
        watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=10)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()
        # Reflection (a stream): lists our services.
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        answer = next(iter(stub.ServerReflectionInfo(iter([
            reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)))
        names = {s.name for s in answer.list_services_response.service}
        assert "rillet.api.v1.Produce" in names
    assert "Traceback" not in proc.log_text()
