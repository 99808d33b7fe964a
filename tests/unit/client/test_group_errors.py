"""Group failures reach callers as their own RilletError classes, though they share gRPC
statuses with other errors (FAILED_PRECONDITION is also an out-of-order sequence)."""

from __future__ import annotations

import grpc
import pytest

from rillet.client.errors import (
    GroupFencedError,
    GroupNotEmptyError,
    InvalidGroupError,
    InvalidRequestError,
    OutOfOrderSequenceError,
    RilletError,
    UnknownGroupError,
    UnknownTopicError,
    from_rpc_error,
)
from tests.rpc_errors import FailedCall

FP = grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize(("code", "details", "cls"), [
    (FP, "ERROR_CODE_FENCED: anything", GroupFencedError),
    (FP, "member 'm-1' does not own t-1 in group 'g'", GroupFencedError),
    (FP, "t-1 was assigned to member 'm' in generation 4; a commit from generation 3 is stale",
     GroupFencedError),
    (FP, "group 'g' has 3 members; stop them first", GroupNotEmptyError),
    (FP, "ERROR_CODE_GROUP_NOT_EMPTY: busy", GroupNotEmptyError),
    (FP, "expected sequence 4, got 7", OutOfOrderSequenceError),
    (grpc.StatusCode.NOT_FOUND, "unknown group 'g'", UnknownGroupError),
    (grpc.StatusCode.NOT_FOUND, "topic 't' does not exist", UnknownTopicError),
    (grpc.StatusCode.INVALID_ARGUMENT, "group id '..' must be 1-249 letters",
     InvalidGroupError),
    (grpc.StatusCode.INVALID_ARGUMENT, "bad partition", InvalidRequestError),
])
def test_group_statuses_map_to_their_classes(code: grpc.StatusCode, details: str,
                                             cls: type[RilletError]) -> None:
    err = from_rpc_error(FailedCall(code, details))
    assert type(err) is cls
    assert details in str(err)
    assert not err.retriable or cls is OutOfOrderSequenceError
