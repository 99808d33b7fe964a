"""Authentication: who is calling, worked out once per call before any handler runs.

`AuthInterceptor` is a grpc.aio server interceptor. The broker installs it only when the node
authenticates (a token file, or mutual TLS); a plaintext development node pays nothing. For
every call except the open ones (gRPC health, for probes that carry no credentials, and server
reflection) it wraps the method's handler, of whichever of the four kinds, so that the handler
first runs `Authenticator.authenticate` and binds the resulting Principal (principal.bind) for
the rest of the call. A call that does not authenticate ends with UNAUTHENTICATED and a message
that says what was missing or wrong; the handler never runs.

Identity:
- under mutual TLS the client certificate's subject common name (gRPC has already checked the
  certificate against tls_client_ca during the handshake);
- otherwise the `authorization: Bearer <token>` metadata, looked up in the token file.
A principal matching `peer_principals` (exact names, or prefixes written with a trailing `*`)
is a cluster member: Principal(peer=True). Only members may call the internal Peer service;
anyone else gets PERMISSION_DENIED naming the principal.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import grpc
import grpc.aio

from rillet.credentials import AUTHORIZATION
from rillet.node import errors
from rillet.node.config import BrokerConfig, ConfigError
from rillet.node.errors import PermissionDeniedError, UnauthenticatedError
from rillet.node.security import principal as principals
from rillet.node.security.principal import Principal
from rillet.node.security.tokens import TokenFile, TokenFileError, TokenTable

log = logging.getLogger(__name__)

#: Methods anyone may call: Kubernetes probes carry no credentials, and reflection only
#: describes the public API.
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/",
                 "/grpc.reflection.v1.ServerReflection/")
#: The node-to-node service: cluster members only.
PEER_PREFIX = "/rillet.internal.v1.Peer/"


def parse_patterns(text: str) -> tuple[str, ...]:
    """Split a comma-separated list of principal names or `prefix*` patterns."""
    return tuple(p.strip() for p in text.split(",") if p.strip())


def matches_any(name: str, patterns: Sequence[str]) -> bool:
    """`name` equals one of `patterns`, or starts with one that ends in `*` (prefix)."""
    for pattern in patterns:
        if pattern.endswith("*"):
            if name.startswith(pattern[:-1]):
                return True
        elif name == pattern:
            return True
    return False


class Authenticator:
    """Turns a call's certificate or token into a Principal, or an error saying why not."""

    def __init__(self, *, tokens: TokenTable | TokenFile | None, mutual_tls: bool,
                 peer_principals: Sequence[str] = ()) -> None:
        self.tokens = tokens
        self.mutual_tls = mutual_tls
        self.peer_principals = tuple(peer_principals)

    def identify(self, metadata: Iterable[tuple[str, Any]] | None,
                 auth_context: Mapping[str, Iterable[bytes]]) -> Principal:
        """The caller's principal; UnauthenticatedError says what was missing or refused."""
        if self.mutual_tls:
            names = list(auth_context.get("x509_common_name") or ())
            if not names:
                raise UnauthenticatedError(
                    "the client certificate has no subject common name (CN), which names the "
                    "principal under mutual TLS")
            name = names[0].decode("utf-8", "replace")
            return Principal(name, "certificate",
                             peer=matches_any(name, self.peer_principals))
        if self.tokens is None:
            return principals.ANONYMOUS
        header = None
        for key, value in metadata or ():
            if key == AUTHORIZATION:
                header = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
                break
        if header is None:
            raise UnauthenticatedError(
                "no credentials: this node requires a bearer token (metadata "
                "'authorization: Bearer <token>'; rillet --token or RILLET_TOKEN)")
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise UnauthenticatedError(
                "the authorization metadata must be 'Bearer <token>'")
        owner = self.tokens.principal_for(token)
        if owner is None:
            raise UnauthenticatedError(
                "the bearer token is not known to this node (not in its token file)")
        return Principal(owner, "token", peer=matches_any(owner, self.peer_principals))

    def authenticate(self, method: str, metadata: Iterable[tuple[str, Any]] | None,
                     auth_context: Mapping[str, Iterable[bytes]]) -> Principal:
        """`identify`, then the peer rule: the Peer service is for cluster members only."""
        who = self.identify(metadata, auth_context)
        if method.startswith(PEER_PREFIX) and not who.peer:
            raise PermissionDeniedError(
                f"principal {who.name!r} is not a cluster member (peer_principals): the "
                f"Peer service accepts only other nodes of this cluster")
        return who


Behaviour = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Any]


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Binds every call's Principal before its handler runs (see the module docstring)."""

    def __init__(self, authenticator: Authenticator) -> None:
        self.authenticator = authenticator

    async def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails],
                                         Awaitable[grpc.RpcMethodHandler[Any, Any]]],
            handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any]:
        method: str = handler_call_details.method
        if method.startswith(OPEN_PREFIXES):
            return await continuation(handler_call_details)
        # Wrapped per call, not cached per method: interceptors inside this one (and the
        # server's lookup) then run for every call, as they expect. It costs two closures.
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # unknown method: gRPC answers UNIMPLEMENTED
        return self._wrap(method, handler)

    async def _admit(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        try:
            who = self.authenticator.authenticate(
                method, context.invocation_metadata(), context.auth_context())
        except (UnauthenticatedError, PermissionDeniedError) as exc:
            level = logging.WARNING if method.startswith(PEER_PREFIX) else logging.DEBUG
            log.log(level, "refused %s from %s: %s", method, context.peer(), exc)
            await errors.abort(context, exc)
        principals.bind(who)

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
              ) -> grpc.RpcMethodHandler[Any, Any]:
        h: Any = handler
        if h.request_streaming and h.response_streaming:
            original, make = h.stream_stream, grpc.stream_stream_rpc_method_handler
        elif h.request_streaming:
            original, make = h.stream_unary, grpc.stream_unary_rpc_method_handler
        elif h.response_streaming:
            original, make = h.unary_stream, grpc.unary_stream_rpc_method_handler
        else:
            original, make = h.unary_unary, grpc.unary_unary_rpc_method_handler
        return make(self._guard(method, original),
                    request_deserializer=h.request_deserializer,
                    response_serializer=h.response_serializer)

    def _guard(self, method: str, original: Behaviour) -> Behaviour:
        """`original` preceded by authentication, keeping its shape: gRPC treats an async
        generator (responses yielded) differently from a coroutine (responses written with
        context.write, or one response returned)."""
        admit = self._admit
        if inspect.isasyncgenfunction(original):
            async def streamed(request: Any, context: grpc.aio.ServicerContext[Any, Any]
                               ) -> AsyncIterator[Any]:
                await admit(method, context)
                async for response in original(request, context):
                    yield response
            return streamed

        async def single(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await admit(method, context)
            return await original(request, context)
        return single


def authenticator_for(config: BrokerConfig) -> Authenticator | None:
    """The node's Authenticator, or None when it authenticates no one (no token file, no
    mutual TLS). Reads the token file now: ConfigError names the file and line of a mistake."""
    if not config.authenticates:
        return None
    tokens = None
    if config.token_file:
        try:
            tokens = TokenFile(config.token_file)
        except TokenFileError as exc:
            raise ConfigError(str(exc)) from None
    return Authenticator(tokens=tokens, mutual_tls=bool(config.tls_client_ca),
                         peer_principals=parse_patterns(config.peer_principals))
