"""Client errors: one small hierarchy, classified by flags rather than by long lists of classes.

Callers (the producer's sender, the consumer's fetcher, scripts) ask two questions of any
failure: may trying again succeed (`retriable`), and should the leader cache be refreshed first
(`refresh_metadata`). Broker errors arrive two ways: an `Error` inside a streamed response (one
bad batch does not end a Produce stream) or a gRPC status that ends the call. Both map here, so
the rest of the client sees only `RilletError` subclasses.
"""

from __future__ import annotations

import grpc

from rillet.api.v1 import common_pb2


class RilletError(Exception):
    """Base of every error the client raises."""

    #: The ErrorCode this class stands for (ERROR_CODE_NONE for client-side errors).
    code: int = common_pb2.ERROR_CODE_NONE
    #: Sending the same request again may succeed.
    retriable: bool = False
    #: Leaders may have moved: refresh metadata before retrying.
    refresh_metadata: bool = False


class UnknownTopicError(RilletError):
    code = common_pb2.ERROR_CODE_UNKNOWN_TOPIC


class InvalidTopicError(RilletError):
    code = common_pb2.ERROR_CODE_INVALID_TOPIC


class InvalidConfigError(RilletError):
    code = common_pb2.ERROR_CODE_INVALID_CONFIG


class PartitionOutOfRangeError(RilletError):
    code = common_pb2.ERROR_CODE_PARTITION_OUT_OF_RANGE


class BatchTooLargeError(RilletError):
    code = common_pb2.ERROR_CODE_BATCH_TOO_LARGE


class CorruptBatchError(RilletError):
    code = common_pb2.ERROR_CODE_CORRUPT_BATCH


class InvalidBatchError(RilletError):
    code = common_pb2.ERROR_CODE_INVALID_BATCH


class OffsetOutOfRangeError(RilletError):
    code = common_pb2.ERROR_CODE_OFFSET_OUT_OF_RANGE


class TopicExistsError(RilletError):
    code = common_pb2.ERROR_CODE_TOPIC_EXISTS


class NotLeaderError(RilletError):
    code = common_pb2.ERROR_CODE_NOT_LEADER
    retriable = True
    refresh_metadata = True


class BrokerStorageError(RilletError):
    code = common_pb2.ERROR_CODE_STORAGE


class UnavailableError(RilletError):
    """The broker is shutting down, overloaded, or cannot be reached right now."""

    code = common_pb2.ERROR_CODE_UNAVAILABLE
    retriable = True
    refresh_metadata = True


class InvalidRequestError(RilletError):
    code = common_pb2.ERROR_CODE_INVALID_REQUEST


class OutOfOrderSequenceError(RilletError):
    """An idempotent producer's batch skips sequence numbers: an earlier batch is missing at
    the leader (it failed, or is still in flight on an old leader). Resending in order fixes
    it, so the producer retries it like NOT_LEADER (docs/decisions/0403)."""

    code = common_pb2.ERROR_CODE_OUT_OF_ORDER_SEQUENCE
    retriable = True


class DuplicateSequenceError(RilletError):
    """The leader stored this idempotent batch long ago and no longer remembers its offset.

    Not a failure: the producer resolves the batch's records as stored at offset -1
    (unknown). It only reaches callers that read raw Produce answers."""

    code = common_pb2.ERROR_CODE_DUPLICATE_SEQUENCE


class ClusterUnreachableError(RilletError):
    """No bootstrap address answered before the deadline."""

    retriable = True
    refresh_metadata = True


class RequestTimeoutError(RilletError):
    """A call or a produced record did not complete before its deadline."""

    retriable = True


class ClientClosedError(RilletError):
    """The producer or consumer was closed before this operation completed."""


_BY_CODE: dict[int, type[RilletError]] = {
    cls.code: cls
    for cls in (
        UnknownTopicError, InvalidTopicError, InvalidConfigError, PartitionOutOfRangeError,
        BatchTooLargeError, CorruptBatchError, InvalidBatchError, OffsetOutOfRangeError,
        TopicExistsError, NotLeaderError, BrokerStorageError, UnavailableError,
        InvalidRequestError, OutOfOrderSequenceError, DuplicateSequenceError,
    )
}

# gRPC statuses that end a whole call. INVALID_ARGUMENT covers several ErrorCodes; without the
# code the client can only say the request was bad.
_BY_STATUS: dict[grpc.StatusCode, type[RilletError]] = {
    grpc.StatusCode.NOT_FOUND: UnknownTopicError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
    grpc.StatusCode.OUT_OF_RANGE: OffsetOutOfRangeError,
    grpc.StatusCode.ALREADY_EXISTS: TopicExistsError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.INTERNAL: BrokerStorageError,
    grpc.StatusCode.FAILED_PRECONDITION: OutOfOrderSequenceError,
    grpc.StatusCode.DEADLINE_EXCEEDED: RequestTimeoutError,
    grpc.StatusCode.CANCELLED: ClientClosedError,
}


def for_code(code: int) -> type[RilletError]:
    """The class for an ErrorCode; unknown codes (a newer broker) map to the base class."""
    return _BY_CODE.get(code, RilletError)


def from_error(error: common_pb2.Error) -> RilletError:
    """Build the exception for an `Error` carried in a streamed response.

    The broker's own flags win over the class defaults: it knows whether this instance of the
    error is worth retrying.
    """
    cls = for_code(error.code)
    exc = cls(error.message or common_pb2.ErrorCode.Name(error.code))
    if error.retriable != cls.retriable:
        exc.retriable = error.retriable
    if error.refresh_metadata != cls.refresh_metadata:
        exc.refresh_metadata = error.refresh_metadata
    return exc


def from_rpc_error(exc: grpc.RpcError) -> RilletError:
    """Translate a failed gRPC call (status code plus details) into a RilletError."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else None
    cls = _BY_STATUS.get(code, RilletError)
    name = code.name if isinstance(code, grpc.StatusCode) else str(code)
    return cls(f"{details or 'no details'} ({name})")
