"""Transport security of a node: the server's TLS credentials and how it dials its peers.

Every file is read once, at startup, before the port opens: a missing, unreadable or non-PEM
file stops the node with a ConfigError that names the setting and the file, instead of a
handshake failure on the first call. (Replacing a certificate therefore needs a restart.)

Serving: `tls_cert` + `tls_key` give TLS; `tls_client_ca` as well requires every connection to
show a certificate signed by that CA (mutual TLS). gRPC Python cannot make a client certificate
optional per call, so under mutual TLS peers show one too: their own node certificate.

Dialing peers (the Raft stream, forwarded produce, admin and group calls, read proxies):
- with `tls_cert` the node dials with TLS, trusting `tls_peer_ca` (default `tls_client_ca`) and
  presenting its own certificate as a client certificate;
- with `peer_token` every call carries `authorization: Bearer <peer_token>`: as gRPC call
  credentials over TLS, and through client interceptors over plaintext (gRPC refuses call
  credentials on a plaintext channel, and a token-only cluster may be plaintext).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from rillet.node.config import BrokerConfig, ConfigError


def read_pem(setting: str, path: str) -> bytes:
    """The bytes of a PEM file named by `setting`; ConfigError names the setting and file."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{setting}: file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{setting}: file {path} cannot be read: "
                          f"{exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise ConfigError(f"{setting}: file {path} is not PEM (no '-----BEGIN' line)")
    return data


def server_credentials(config: BrokerConfig) -> grpc.ServerCredentials | None:
    """TLS (mutual when tls_client_ca is set) for the node's port; None for plaintext."""
    if not config.tls_cert:
        return None
    cert = read_pem("tls_cert", config.tls_cert)
    key = read_pem("tls_key", config.tls_key)
    client_ca = read_pem("tls_client_ca", config.tls_client_ca) if config.tls_client_ca \
        else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None)


class _Bearer:
    """Adds `authorization: Bearer <token>` to a call's metadata.
    """

    def __init__(self, token: str) -> None:
        self._entry = ("authorization", f"Bearer {token}")

    def _with_token(self, details: Any) -> Any:
        return details._replace(
            metadata=grpc.aio.Metadata(*tuple(details.metadata or ()), self._entry))


class _BearerUnaryUnary(_Bearer, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with_token(details), request)


class _BearerUnaryStream(_Bearer, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any
                                     ) -> Any:
        return await continuation(self._with_token(details), request)


class _BearerStreamUnary(_Bearer, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_stream_unary(self, continuation: Any, details: Any,
                                     request_iterator: Any) -> Any:
        return await continuation(self._with_token(details), request_iterator)


class _BearerStreamStream(_Bearer,
                          grpc.aio.StreamStreamClientInterceptor):  # type: ignore[type-arg]
    async def intercept_stream_stream(self, continuation: Any, details: Any,
                                      request_iterator: Any) -> Any:
        return await continuation(self._with_token(details), request_iterator)


def bearer_interceptors(token: str) -> list[Any]:
    """One interceptor per call kind: a grpc.aio channel files each interceptor under the
    first kind it implements only, so one object cannot serve all four."""
    return [kind(token) for kind in (_BearerUnaryUnary, _BearerUnaryStream,
                                     _BearerStreamUnary, _BearerStreamStream)]


class PeerDialer:
    """Opens this node's channels to other nodes, with its certificate or peer token."""

    def __init__(self, config: BrokerConfig) -> None:
        self._credentials: grpc.ChannelCredentials | None = None
        if config.tls_cert:
            root_setting = "tls_peer_ca" if config.tls_peer_ca else "tls_client_ca"
            root_path = config.tls_peer_ca or config.tls_client_ca
            root = read_pem(root_setting, root_path) if root_path else None
            self._credentials = grpc.ssl_channel_credentials(
                root_certificates=root,
                private_key=read_pem("tls_key", config.tls_key),
                certificate_chain=read_pem("tls_cert", config.tls_cert))
        self._interceptors: Any = None
        if config.peer_token and self._credentials is not None:
            # Over TLS gRPC adds the token itself (call credentials, nothing per message).
            self._credentials = grpc.composite_channel_credentials(
                self._credentials, grpc.access_token_call_credentials(config.peer_token))
        elif config.peer_token:
            self._interceptors = bearer_interceptors(config.peer_token)

    @property
    def secure(self) -> bool:
        return self._credentials is not None

    def channel(self, address: str, options: Sequence[tuple[str, Any]]) -> grpc.aio.Channel:
        """A new channel to a peer at `address` with the given options."""
        if self._credentials is not None:
            return grpc.aio.secure_channel(address, self._credentials, options=list(options))
        return grpc.aio.insecure_channel(address, options=list(options),
                                         interceptors=self._interceptors)


def plaintext() -> PeerDialer:
    """A dialer with no certificate and no token (tests of the peer transport)."""
    return PeerDialer(BrokerConfig())
