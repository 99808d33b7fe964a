"""The errors table: every wire error code has one status, and nothing maps to UNKNOWN."""

from __future__ import annotations

import grpc
import pytest

from rillet import batch
from rillet.api.v1 import common_pb2
from rillet.node import errors
from rillet.node.storage import errors as storage_errors

# The statuses the contract (common.proto) promises for each code.
PROMISED = {
    common_pb2.ERROR_CODE_UNKNOWN_TOPIC: grpc.StatusCode.NOT_FOUND,
    common_pb2.ERROR_CODE_INVALID_TOPIC: grpc.StatusCode.INVALID_ARGUMENT,
    common_pb2.ERROR_CODE_INVALID_CONFIG: grpc.StatusCode.INVALID_ARGUMENT,
    common_pb2.ERROR_CODE_PARTITION_OUT_OF_RANGE: grpc.StatusCode.INVALID_ARGUMENT,
    common_pb2.ERROR_CODE_BATCH_TOO_LARGE: grpc.StatusCode.INVALID_ARGUMENT,
    common_pb2.ERROR_CODE_CORRUPT_BATCH: grpc.StatusCode.INVALID_ARGUMENT,
    common_pb2.ERROR_CODE_INVALID_BATCH: grpc.StatusCode.INVALID_ARGUMENT,
    common_pb2.ERROR_CODE_OFFSET_OUT_OF_RANGE: grpc.StatusCode.OUT_OF_RANGE,
    common_pb2.ERROR_CODE_TOPIC_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    common_pb2.ERROR_CODE_NOT_LEADER: grpc.StatusCode.UNAVAILABLE,
    common_pb2.ERROR_CODE_STORAGE: grpc.StatusCode.INTERNAL,
    common_pb2.ERROR_CODE_UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    common_pb2.ERROR_CODE_INVALID_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    common_pb2.ERROR_CODE_DUPLICATE_SEQUENCE: grpc.StatusCode.ALREADY_EXISTS,
    common_pb2.ERROR_CODE_OUT_OF_ORDER_SEQUENCE: grpc.StatusCode.FAILED_PRECONDITION,
    common_pb2.ERROR_CODE_UNKNOWN_GROUP: grpc.StatusCode.NOT_FOUND,
    common_pb2.ERROR_CODE_INVALID_GROUP: grpc.StatusCode.INVALID_ARGUMENT,
    common_pb2.ERROR_CODE_FENCED: grpc.StatusCode.FAILED_PRECONDITION,
    common_pb2.ERROR_CODE_GROUP_NOT_EMPTY: grpc.StatusCode.FAILED_PRECONDITION,
    common_pb2.ERROR_CODE_UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    common_pb2.ERROR_CODE_PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
}


def test_each_code_maps_to_the_status_the_contract_promises() -> None:
    for code, status in errors.TABLE.values():
        assert PROMISED[code] == status, common_pb2.ErrorCode.Name(code)


def test_every_broker_error_class_is_in_the_table() -> None:
    def subclasses(cls: type) -> list[type]:
        return [cls, *(s for sub in cls.__subclasses__() for s in subclasses(sub))]

    for cls in subclasses(errors.BrokerError)[1:]:
        assert cls in errors.TABLE, cls


@pytest.mark.parametrize(("exc", "code", "status"), [
    (errors.UnknownTopicError("unknown topic 'x'"), common_pb2.ERROR_CODE_UNKNOWN_TOPIC,
     grpc.StatusCode.NOT_FOUND),
    (batch.CorruptBatchError("CRC mismatch"), common_pb2.ERROR_CODE_CORRUPT_BATCH,
     grpc.StatusCode.INVALID_ARGUMENT),
    (batch.InvalidBatchError("record count mismatch"), common_pb2.ERROR_CODE_INVALID_BATCH,
     grpc.StatusCode.INVALID_ARGUMENT),
    (storage_errors.OffsetOutOfRangeError(9, 0, 5), common_pb2.ERROR_CODE_OFFSET_OUT_OF_RANGE,
     grpc.StatusCode.OUT_OF_RANGE),
    (storage_errors.LogCorruptionError("bad bytes"), common_pb2.ERROR_CODE_STORAGE,
     grpc.StatusCode.INTERNAL),
])
def test_foreign_errors_map_through_the_same_table(exc, code, status) -> None:
    assert errors.lookup(exc) == (code, status)
    assert errors.status_for(exc) == (status, str(exc))
    err = errors.to_error(exc)
    assert (err.code, err.message) == (code, str(exc))


def test_flags_travel_in_the_error_message() -> None:
    err = errors.to_error(errors.NotLeaderError("node 2 leads t-0"))
    assert (err.code, err.retriable, err.refresh_metadata) == (
        common_pb2.ERROR_CODE_NOT_LEADER, True, True)
    err = errors.to_error(errors.UnavailableError("shutting down"))
    assert (err.retriable, err.refresh_metadata) == (True, False)
    err = errors.to_error(errors.BatchTooLargeError("too big"))
    assert (err.retriable, err.refresh_metadata) == (False, False)


def test_unexpected_errors_become_internal_never_unknown(caplog) -> None:
    exc = KeyError("boom")
    assert errors.lookup(exc) is None
    status, details = errors.status_for(exc)
    assert status == grpc.StatusCode.INTERNAL
    assert "KeyError" in details
    err = errors.to_error(exc, where="producing to t-0")
    assert err.code == common_pb2.ERROR_CODE_STORAGE
    assert "internal error" in err.message
    assert "unexpected error producing to t-0" in caplog.text


def test_an_error_a_forwarded_call_got_passes_on_as_is() -> None:
    rpc = grpc.aio.AioRpcError(grpc.StatusCode.FAILED_PRECONDITION, grpc.aio.Metadata(),
                               grpc.aio.Metadata(), details="ERROR_CODE_FENCED: generation 3")
    assert errors.status_for(errors.ForwardedError(rpc)) == (
        grpc.StatusCode.FAILED_PRECONDITION, "ERROR_CODE_FENCED: generation 3")
