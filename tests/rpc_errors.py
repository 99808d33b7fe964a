"""A failed gRPC call as the client's error mapping sees it, without a server."""

from __future__ import annotations

import grpc


class FailedCall(grpc.RpcError):
    """An RpcError with a status code and details, like the ones a real call raises."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details
