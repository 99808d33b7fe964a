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

import grpc

from rillet import credentials
from rillet.node.config import BrokerConfig, ConfigError


def read_pem(setting: str, path: str) -> bytes:
    """The bytes of a PEM file named by `setting`; ConfigError names the setting and file."""
    return credentials.read_pem(setting, path, ConfigError)


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


class PeerDialer(credentials.Dialer):
    """Opens this node's channels to other nodes, with its certificate or peer token."""

    def __init__(self, config: BrokerConfig) -> None:
        tls = None
        if config.tls_cert:
            root_setting = "tls_peer_ca" if config.tls_peer_ca else "tls_client_ca"
            root_path = config.tls_peer_ca or config.tls_client_ca
            tls = grpc.ssl_channel_credentials(
                root_certificates=read_pem(root_setting, root_path) if root_path else None,
                private_key=read_pem("tls_key", config.tls_key),
                certificate_chain=read_pem("tls_cert", config.tls_cert))
        super().__init__(tls, config.peer_token or None)


def plaintext() -> PeerDialer:
    """A dialer with no certificate and no token (tests of the peer transport)."""
    return PeerDialer(BrokerConfig())
