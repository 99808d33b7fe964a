"""Requests whose bytes do not parse end with INVALID_ARGUMENT, not UNKNOWN.

gRPC Python parses each request message with the method's `request_deserializer` before any
handler runs; when that raises (bytes that are not the message, a string field that is not
UTF-8), the server logs a traceback at ERROR and ends the call with UNKNOWN "Unexpected
DecodeError". Any client can send such bytes, so that would make a hostile or broken client
both an error status we promise never to send and a way to flood the node's log.

`MalformedRequestInterceptor` swaps in a deserializer that never raises: it returns a
`Malformed` marker instead, and the method's behaviour is wrapped to notice it:
- one request (unary, server streaming): the call ends INVALID_ARGUMENT at once, the handler
  never runs;
- a request stream (Produce, Join): the handler sees the stream end at the message before the
  bad one (its earlier requests are answered as usual), then the call ends INVALID_ARGUMENT.
The status details name the message type and what the parser said. A malformed request is
logged at INFO (it is the client's fault, not the node's). A behaviour keeps its kind: an
async generator stays one, a coroutine that sends with `context.write` (gRPC health's Watch)
stays a coroutine (the server runs the two differently).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

log = logging.getLogger(__name__)


class Malformed:
    """What the safe deserializer returns for bytes that do not parse."""

    __slots__ = ("reason", "size")

    def __init__(self, reason: str, size: int) -> None:
        self.reason = reason
        self.size = size


def safe_deserializer(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """`parse`, returning a Malformed marker where it would raise."""

    def deserialize(raw: bytes) -> Any:
        try:
            return parse(raw)
        except Exception as exc:  # protobuf's DecodeError, or anything a parser raises
            return Malformed(f"{type(exc).__name__}: {exc}", len(raw))

    return deserialize


async def _refuse(context: Any, method: str, bad: Malformed) -> None:
    log.info("malformed request to %s (%d bytes): %s", method, bad.size, bad.reason)
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                        f"malformed request to {method}: {bad.reason}")


def _wrap(original: grpc.RpcMethodHandler[Any, Any], method: str
          ) -> grpc.RpcMethodHandler[Any, Any]:
    """`original` with the safe deserializer and a behaviour that refuses Malformed."""
    handler: Any = original  # the grpc stubs do not type the namedtuple's fields
    if handler.request_deserializer is None:
        return original
    kind = (("stream_" if handler.request_streaming else "unary_")
            + ("stream" if handler.response_streaming else "unary"))
    wrap = _wrap_request_stream if handler.request_streaming else _wrap_request
    return handler._replace(  # type: ignore[no-any-return]
        request_deserializer=safe_deserializer(handler.request_deserializer),
        **{kind: wrap(getattr(handler, kind), method)})


def _wrap_request(inner: Any, method: str) -> Any:
    """One request: refused before `inner` runs. `inner` keeps its shape: an async generator
    yields responses; a coroutine returns one or sends with context.write (gRPC health's
    Watch), and gRPC treats the two differently."""
    if inspect.isasyncgenfunction(inner):
        async def streamed(request: Any, context: Any) -> AsyncIterator[Any]:
            if isinstance(request, Malformed):
                await _refuse(context, method, request)
            async for response in inner(request, context):
                yield response

        return streamed

    async def single(request: Any, context: Any) -> Any:
        if isinstance(request, Malformed):
            await _refuse(context, method, request)
        return await inner(request, context)

    return single


def _wrap_request_stream(inner: Any, method: str) -> Any:
    """A request stream: `inner` sees it end at the message before a malformed one, then the
    call is refused. A coroutine `inner` must read through the iterator it is given (one that
    reads with context.read would see the marker itself)."""
    def checked(requests: AsyncIterator[Any], found: list[Malformed]) -> AsyncIterator[Any]:
        async def gen() -> AsyncIterator[Any]:
            async for request in requests:
                if isinstance(request, Malformed):
                    found.append(request)
                    return  # to the handler: the client half-closed here
                yield request
        return gen()

    if inspect.isasyncgenfunction(inner):
        async def streamed(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
            bad: list[Malformed] = []
            async for response in inner(checked(requests, bad), context):
                yield response
            if bad:
                await _refuse(context, method, bad[0])

        return streamed

    async def single(requests: AsyncIterator[Any], context: Any) -> Any:
        bad: list[Malformed] = []
        result = await inner(checked(requests, bad), context)
        if bad:
            await _refuse(context, method, bad[0])
        return result

    return single


class MalformedRequestInterceptor(aio.ServerInterceptor):  # type: ignore[type-arg]
    """Install on the server (grpc.aio.server(interceptors=[...])); see the module doc."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails],
                               Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler  # unknown method: gRPC answers UNIMPLEMENTED
        return _wrap(handler, handler_call_details.method)
