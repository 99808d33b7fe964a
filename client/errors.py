"""Client errors: one small hierarchy, classified by flags rather than by long lists of classes.

Callers (the producer's sender, the consumer's fetcher, scripts) ask two questions of any
failure: may trying again succeed (`retriable`), and should the leader cache be refreshed first
(`refresh_metadata`). Broker errors arrive two ways: an `Error` inside a streamed response (one
bad batch does not end a Produce stream) or a gRPC status that ends the call. Both map here, so
the rest of the client sees only `RilletError` subclasses.
"""

from __future__ import annotations

import re

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


class UnknownGroupError(RilletError):
    """No consumer group of that name (describe, reset, delete of a group never used)."""

    code = common_pb2.ERROR_CODE_UNKNOWN_GROUP


class InvalidGroupError(RilletError):
    """The group id or a membership setting (timeouts, topics) is not allowed."""

    code = common_pb2.ERROR_CODE_INVALID_GROUP


class GroupFencedError(RilletError):
    """A commit named an old generation or a partition this member no longer owns: another
    member has it now. Not retriable as such; the member rejoins and gets a fresh assignment."""

    code = common_pb2.ERROR_CODE_FENCED


class GroupNotEmptyError(RilletError):
    """Reset or delete of a group that still has live members; stop them first."""

    code = common_pb2.ERROR_CODE_GROUP_NOT_EMPTY


class AuthenticationError(RilletError):
    """The node did not accept who we are: no token or certificate, an unknown token, a
    certificate without a common name. The message says which."""

    code = common_pb2.ERROR_CODE_UNAUTHENTICATED


class AuthorizationError(RilletError):
    """Authenticated, but not allowed: the message names the principal, the operation and
    the resource."""

    code = common_pb2.ERROR_CODE_PERMISSION_DENIED


class CredentialsError(RilletError, ValueError):
    """The client's own credentials cannot be used: a file missing or not PEM, a certificate
    without its key. Raised before anything is sent; the message names the option."""


class TLSError(RilletError):
    """The TLS handshake failed: the server's certificate is not trusted, the server wants a
    client certificate, or one side does not speak TLS. Retrying does not help; the
    credentials (or the server's settings) need to change."""


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
        UnknownGroupError, InvalidGroupError, GroupFencedError, GroupNotEmptyError,
        AuthenticationError, AuthorizationError,
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
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: AuthorizationError,
}


def tls_problem(details: str, *, tls: bool, client_cert: bool) -> str | None:
    """What went wrong in a connection that failed with `details`, for a client that used TLS
    (`tls`) with or without a certificate of its own; None when it is not a TLS matter.

    gRPC reports a refused handshake in two ways. When the client rejects the server, the
    details carry the SSL reason (certificate verify failed, wrong version number: the server
    is plaintext). When the server rejects the client (no certificate under mutual TLS, one it
    does not trust) or a plaintext client reaches a TLS port, the client only sees the
    connection closed ("Socket closed"); which of those it was follows from what the client
    itself sent, so the message names the likeliest cause.
    """
    text = details.lower()
    if "certificate_verify_failed" in text or "unable to get local issuer" in text:
        return ("the server's certificate is not signed by the CA in --tls-ca "
                "(RILLET_TLS_CA)")
    if "not in peer certificate" in text or "hostname mismatch" in text:
        return "the server's certificate does not name the address dialed (subject alt names)"
    if "wrong_version_number" in text:
        return "the server does not speak TLS (a plaintext node?): drop --tls-ca/--tls-cert"
    if "handshake" in text and ("ssl" in text or "tls" in text):
        reason = details.rsplit("SSL_ERROR_SSL:", 1)[-1].strip()
        return f"the TLS handshake failed: {reason}"
    if "socket closed" in text:
        if not tls:
            return ("the server closed the connection at once: it probably requires TLS "
                    "(--tls-ca, RILLET_TLS_CA)")
        if not client_cert:
            return ("the server closed the connection during the TLS handshake: it probably "
                    "requires a client certificate (--tls-cert and --tls-key)")
        return ("the server closed the connection during the TLS handshake: it probably "
                "refused the client certificate (not signed by the CA it trusts for clients)")
    return None


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
    cls = _refine(code, details or "") or _BY_STATUS.get(code, RilletError)
    name = code.name if isinstance(code, grpc.StatusCode) else str(code)
    return cls(f"{details or 'no details'} ({name})")


def _refine(code: object, details: str) -> type[RilletError] | None:
    """Statuses shared by several ErrorCodes: told apart by the code's name in the details
    when the broker puts it there, else by the words its messages use (node/groups)."""
    text = details.lower()
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        if "error_code_group_not_empty" in text:
            return GroupNotEmptyError
        if "error_code_fenced" in text:
            return GroupFencedError
        if "sequence" in text:
            return None
        if re.search(r"has \d+ members|not empty|stop them first", text):
            return GroupNotEmptyError
        if "group" in text or "generation" in text or "member" in text:
            return GroupFencedError
    if code == grpc.StatusCode.NOT_FOUND and (
            "unknown_group" in text or ("group" in text and "topic" not in text)):
        return UnknownGroupError
    if code == grpc.StatusCode.INVALID_ARGUMENT and (
            "invalid_group" in text or "group id" in text):
        return InvalidGroupError
    return None
