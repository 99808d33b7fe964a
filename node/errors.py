"""Domain errors of the broker and the ONE table that maps them to the wire.

Servicers raise (or let storage and the batch codec raise) the exceptions below, and catch them
only at the service boundary, where `to_error` turns one into a per-batch `Error` message (the
Produce stream answers each batch and stays open) and `abort` ends any other call with the
mapped gRPC status. Flags follow aiokafka's habit: callers look at `retriable` and
`refresh_metadata`, never at long lists of classes.

Anything not in the table is a bug or an unexpected operating failure: it is logged with its
traceback and reaches the client as INTERNAL with a short message, never as UNKNOWN.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, NoReturn, TypeAlias

import grpc

from rillet import batch as batch_codec
from rillet.api.v1 import common_pb2
from rillet.node.groups.errors import (
    FencedError,
    GroupError,
    GroupNotEmptyError,
    InvalidGroupError,
    UnknownGroupError,
)
from rillet.node.storage import errors as storage_errors

log = logging.getLogger(__name__)

ErrorCode = common_pb2.ErrorCode

if TYPE_CHECKING:
    # The servicer context as the stubs type it; the runtime class is not generic.
    Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
else:
    Context = grpc.aio.ServicerContext


class BrokerError(Exception):
    """Base of every error the broker reports to a client on purpose."""

    retriable: bool = False
    refresh_metadata: bool = False


class UnknownTopicError(BrokerError):
    """The topic does not exist (or was deleted while the call was open)."""


class InvalidTopicError(BrokerError):
    """The topic name breaks the naming rules."""


class InvalidConfigError(BrokerError):
    """A topic setting (partitions, replication factor, retention...) is out of range."""


class TopicExistsError(BrokerError):
    """CreateTopic for a name that is already taken."""


class PartitionOutOfRangeError(BrokerError):
    """The partition index is not below the topic's partition count."""


class BatchTooLargeError(BrokerError):
    """A produced batch is above the broker's max batch size."""


class OffsetOutOfRangeError(BrokerError):
    """A read position outside [log start, log end]; the message names the valid range."""


class InvalidRequestError(BrokerError):
    """Any other malformed request (missing fields, bad enum values...)."""


class NotLeaderError(BrokerError):
    """This node does not lead the partition; the client should ask Metadata again."""

    retriable = True
    refresh_metadata = True


class UnavailableError(BrokerError):
    """The node is shutting down or overloaded; trying again (elsewhere) may work."""

    retriable = True


class OutOfOrderSequenceError(BrokerError):
    """An idempotent producer's batch skips sequence numbers: an earlier batch is missing (it
    failed, or is still in flight on an old leader). Resending in order fixes it."""

    retriable = True


class DuplicateSequenceError(BrokerError):
    """An idempotent producer's batch was stored long ago (older than the remembered window):
    not stored again; the producer treats it as delivered."""


class StorageFailureError(BrokerError):
    """The node could not write or sync its log (disk full, fsync failed)."""


class UnauthenticatedError(BrokerError):
    """The call carries no credentials, or ones this node does not accept (unknown token,
    certificate of a foreign CA, a non-member on a peer link)."""


class PermissionDeniedError(BrokerError):
    """The principal is authenticated but no ACL allows the operation on the resource; the
    message names principal, operation and resource."""


# THE table: error class -> (wire error code, gRPC status). Lookup walks the exception's MRO,
# so the most specific entry wins; storage and codec errors map here too.
TABLE: dict[type[BaseException], tuple[common_pb2.ErrorCode, grpc.StatusCode]] = {
    UnknownTopicError: (common_pb2.ERROR_CODE_UNKNOWN_TOPIC, grpc.StatusCode.NOT_FOUND),
    InvalidTopicError: (common_pb2.ERROR_CODE_INVALID_TOPIC, grpc.StatusCode.INVALID_ARGUMENT),
    InvalidConfigError: (common_pb2.ERROR_CODE_INVALID_CONFIG, grpc.StatusCode.INVALID_ARGUMENT),
    TopicExistsError: (common_pb2.ERROR_CODE_TOPIC_EXISTS, grpc.StatusCode.ALREADY_EXISTS),
    PartitionOutOfRangeError: (
        common_pb2.ERROR_CODE_PARTITION_OUT_OF_RANGE, grpc.StatusCode.INVALID_ARGUMENT),
    BatchTooLargeError: (common_pb2.ERROR_CODE_BATCH_TOO_LARGE, grpc.StatusCode.INVALID_ARGUMENT),
    batch_codec.CorruptBatchError: (
        common_pb2.ERROR_CODE_CORRUPT_BATCH, grpc.StatusCode.INVALID_ARGUMENT),
    batch_codec.InvalidBatchError: (
        common_pb2.ERROR_CODE_INVALID_BATCH, grpc.StatusCode.INVALID_ARGUMENT),
    batch_codec.BatchError: (
        common_pb2.ERROR_CODE_INVALID_BATCH, grpc.StatusCode.INVALID_ARGUMENT),
    OffsetOutOfRangeError: (
        common_pb2.ERROR_CODE_OFFSET_OUT_OF_RANGE, grpc.StatusCode.OUT_OF_RANGE),
    storage_errors.OffsetOutOfRangeError: (
        common_pb2.ERROR_CODE_OFFSET_OUT_OF_RANGE, grpc.StatusCode.OUT_OF_RANGE),
    InvalidRequestError: (common_pb2.ERROR_CODE_INVALID_REQUEST, grpc.StatusCode.INVALID_ARGUMENT),
    NotLeaderError: (common_pb2.ERROR_CODE_NOT_LEADER, grpc.StatusCode.UNAVAILABLE),
    UnavailableError: (common_pb2.ERROR_CODE_UNAVAILABLE, grpc.StatusCode.UNAVAILABLE),
    StorageFailureError: (common_pb2.ERROR_CODE_STORAGE, grpc.StatusCode.INTERNAL),
    OutOfOrderSequenceError: (
        common_pb2.ERROR_CODE_OUT_OF_ORDER_SEQUENCE, grpc.StatusCode.FAILED_PRECONDITION),
    DuplicateSequenceError: (
        common_pb2.ERROR_CODE_DUPLICATE_SEQUENCE, grpc.StatusCode.ALREADY_EXISTS),
    storage_errors.StorageError: (common_pb2.ERROR_CODE_STORAGE, grpc.StatusCode.INTERNAL),
    # Consumer groups (defined in node/groups/errors.py, free of gRPC for the pure coordinator).
    UnknownGroupError: (common_pb2.ERROR_CODE_UNKNOWN_GROUP, grpc.StatusCode.NOT_FOUND),
    InvalidGroupError: (common_pb2.ERROR_CODE_INVALID_GROUP, grpc.StatusCode.INVALID_ARGUMENT),
    FencedError: (common_pb2.ERROR_CODE_FENCED, grpc.StatusCode.FAILED_PRECONDITION),
    GroupNotEmptyError: (
        common_pb2.ERROR_CODE_GROUP_NOT_EMPTY, grpc.StatusCode.FAILED_PRECONDITION),
    UnauthenticatedError: (
        common_pb2.ERROR_CODE_UNAUTHENTICATED, grpc.StatusCode.UNAUTHENTICATED),
    PermissionDeniedError: (
        common_pb2.ERROR_CODE_PERMISSION_DENIED, grpc.StatusCode.PERMISSION_DENIED),
}


class ForwardedError(Exception):
    """An error status the node a call was passed on to (the metadata leader, the group
    coordinator) answered with: the caller gets it as is."""

    def __init__(self, rpc_error: grpc.aio.AioRpcError) -> None:
        super().__init__(rpc_error.details() or "")
        self.rpc_error = rpc_error


def lookup(exc: BaseException) -> tuple[common_pb2.ErrorCode, grpc.StatusCode] | None:
    """The table entry for `exc`, most specific class first; None for unexpected errors."""
    for cls in type(exc).__mro__:
        entry = TABLE.get(cls)
        if entry is not None:
            return entry
    return None


def flags(exc: BaseException) -> tuple[bool, bool]:
    """(retriable, refresh_metadata) of an error."""
    if isinstance(exc, BrokerError):
        return exc.retriable, exc.refresh_metadata
    return False, False


def describe(exc: BaseException) -> str:
    """The message a person reads: the exception's own text, or its class name if empty."""
    text = str(exc)
    return text if text else type(exc).__name__


def to_error(exc: BaseException, *, where: str = "") -> common_pb2.Error:
    """An `Error` message for one failed request inside a stream (Produce).

    Unexpected exceptions are logged with their traceback here, so callers can pass anything.
    """
    entry = lookup(exc)
    if entry is None:
        log.error("unexpected error %s", where, exc_info=exc)
        return common_pb2.Error(
            code=common_pb2.ERROR_CODE_STORAGE,
            message=f"internal error: {type(exc).__name__}: {exc}")
    retriable, refresh = flags(exc)
    return common_pb2.Error(
        code=entry[0], message=describe(exc), retriable=retriable, refresh_metadata=refresh)


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status and details that end a call failed by `exc`.

    Group errors start their details with the ErrorCode name ("ERROR_CODE_FENCED: ..."):
    FENCED and GROUP_NOT_EMPTY share FAILED_PRECONDITION, and groups.proto promises the name.
    """
    if isinstance(exc, ForwardedError):
        return exc.rpc_error.code(), exc.rpc_error.details() or ""
    entry = lookup(exc)
    if entry is None:
        return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"
    text = describe(exc)
    if isinstance(exc, GroupError):
        name = common_pb2.ErrorCode.Name(entry[0])
        if not text.startswith(name):
            text = f"{name}: {text}"
    return entry[1], text


async def abort(context: Context, exc: BaseException, *, where: str = "") -> NoReturn:
    """End the call with the status mapped from `exc` (logging unexpected errors)."""
    if lookup(exc) is None and not isinstance(exc, ForwardedError):
        log.error("unexpected error %s", where, exc_info=exc)
    code, details = status_for(exc)
    await context.abort(code, details)
    raise AssertionError("context.abort returned")  # pragma: no cover - abort always raises
