"""Bootstrap parsing, gRPC channels and the metadata call shared by producer, consumer, admin.

Every channel sets its message size limits explicitly: the 4 MiB default counts framing, and a
1 MiB batch plus a full consume response must both fit (PERFORMANCE.md).

Every channel of every client object comes from `ChannelPool`, built with one `Credentials`:
TLS (a CA to trust, and a client certificate and key for mutual TLS) and/or a bearer token.
A client object given no credentials takes them from RILLET_TLS_CA, RILLET_TLS_CERT,
RILLET_TLS_KEY and RILLET_TOKEN, so a script run against a secured cluster needs no code change.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import grpc
import grpc.aio

from rillet import credentials
from rillet.api.v1 import admin_pb2, admin_pb2_grpc
from rillet.client.errors import (
    ClusterUnreachableError,
    CredentialsError,
    RilletError,
    TLSError,
    from_rpc_error,
    tls_problem,
)
from rillet.client.metadata import ClusterMetadata

log = logging.getLogger(__name__)

DEFAULT_BOOTSTRAP = "127.0.0.1:9091"
#: Enough for the largest consume response the client asks for (max_bytes) plus framing.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: Passes over the addresses before fetch_metadata gives up (pauses 0.1 s, then 0.3 s).
METADATA_ROUNDS = 3
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # Reconnect quickly after a broker restart instead of the default 1 s..120 s backoff.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # Each client object gets its own connections: otherwise gRPC shares one subchannel per
    # address process-wide, and a new client inherits another's reconnect backoff after a
    # broker restart, failing at once with the old "connection refused".
    ("grpc.use_local_subchannel_pool", 1),
)


def make_stub(stub_class: Any, channel: grpc.aio.Channel) -> Any:
    """Build a generated stub: the generated classes are untyped; this is the one place."""
    return stub_class(channel)


def parse_bootstrap(bootstrap: str | Iterable[str]) -> list[str]:
    """Split "host:port[,host:port...]" into addresses, checking each has a numeric port."""
    items = bootstrap.split(",") if isinstance(bootstrap, str) else list(bootstrap)
    out = []
    for raw in items:
        addr = raw.strip()
        if not addr:
            continue
        host, sep, port = addr.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"bootstrap address {addr!r} is not host:port")
        out.append(addr)
    if not out:
        raise ValueError("bootstrap list is empty; expected host:port[,host:port...]")
    return out


class AsyncResource:
    """Something a caller uses as ``async with``: entering starts it, leaving closes it, whatever
    happened inside (readers, group consumers and tables share this)."""

    async def start(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()


#: Environment variables a client reads when it is given no credentials.
ENV_TLS_CA, ENV_TLS_CERT, ENV_TLS_KEY, ENV_TOKEN = (
    "RILLET_TLS_CA", "RILLET_TLS_CERT", "RILLET_TLS_KEY", "RILLET_TOKEN")


@dataclass(frozen=True)
class Credentials:
    """How a client proves itself and checks the server: the one description every client
    object (Producer, Consumer, Replay, Admin, GroupConsumer, Table) accepts as
    `credentials=`.

    `tls_ca`: PEM file of the CA that signed the nodes' certificates (None with TLS: the
    system's trusted CAs). `tls_cert` + `tls_key`: this client's certificate and key, for
    clusters that use mutual TLS (the certificate's common name is the principal). Any of the
    three turns TLS on. `token`: a bearer token (from `rillet token create`), sent with every
    call as `authorization: Bearer <token>`. All None: plaintext, no identity.
    """

    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    token: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Credentials:
        """Credentials from RILLET_TLS_CA, RILLET_TLS_CERT, RILLET_TLS_KEY, RILLET_TOKEN."""
        env = os.environ if env is None else env
        return cls(tls_ca=env.get(ENV_TLS_CA) or None, tls_cert=env.get(ENV_TLS_CERT) or None,
                   tls_key=env.get(ENV_TLS_KEY) or None, token=env.get(ENV_TOKEN) or None)

    @property
    def tls(self) -> bool:
        return bool(self.tls_ca or self.tls_cert or self.tls_key)

    @functools.cached_property
    def _dialer(self) -> credentials.Dialer:
        """Read the PEM files once; CredentialsError names the option and file that is wrong.
        Over TLS the token rides as call credentials, over plaintext through interceptors."""
        if not self.tls:
            return credentials.Dialer(None, self._token)
        if bool(self.tls_cert) != bool(self.tls_key):
            raise CredentialsError("a client certificate needs both --tls-cert and --tls-key "
                                   "(RILLET_TLS_CERT, RILLET_TLS_KEY)")
        ssl = grpc.ssl_channel_credentials(
            root_certificates=_read_pem("--tls-ca", self.tls_ca),
            private_key=_read_pem("--tls-key", self.tls_key),
            certificate_chain=_read_pem("--tls-cert", self.tls_cert))
        return credentials.Dialer(ssl, self._token)

    @functools.cached_property
    def _token(self) -> str | None:
        if self.token and any(c.isspace() for c in self.token):
            raise CredentialsError("the token must not contain spaces or line breaks")
        return self.token or None

    def channel(self, address: str,
                options: Iterable[tuple[str, Any]] = CHANNEL_OPTIONS) -> grpc.aio.Channel:
        """A new channel to `address`: TLS when configured, the token on every call."""
        return self._dialer.channel(address, list(options))

    def __repr__(self) -> str:
        # Never print the token itself.
        token = "set" if self.token else None
        return (f"Credentials(tls_ca={self.tls_ca!r}, tls_cert={self.tls_cert!r}, "
                f"tls_key={self.tls_key!r}, token={token})")


def _read_pem(option: str, path: str | None) -> bytes | None:
    return credentials.read_pem(option, path, CredentialsError) if path else None


class ChannelPool:
    """One grpc.aio channel per address, shared by every stream to that node; every channel
    uses `credentials` (None: from the environment, see Credentials.from_env)."""

    def __init__(self, credentials: Credentials | None = None) -> None:
        self.credentials = credentials if credentials is not None else Credentials.from_env()
        self._channels: dict[str, grpc.aio.Channel] = {}

    def get(self, address: str) -> grpc.aio.Channel:
        ch = self._channels.get(address)
        if ch is None:
            ch = self.credentials.channel(address, CHANNEL_OPTIONS)
            self._channels[address] = ch
        return ch

    def diagnose(self, address: str, exc: grpc.aio.AioRpcError) -> TLSError | None:
        """A TLSError saying what went wrong when `exc` is a failed TLS handshake (or a
        plaintext/TLS mismatch) with `address`; None for any other failure."""
        if exc.code() != grpc.StatusCode.UNAVAILABLE:
            return None
        problem = tls_problem(exc.details() or "", tls=self.credentials.tls,
                              client_cert=bool(self.credentials.tls_cert))
        if problem is None:
            return None
        what = "TLS handshake with" if self.credentials.tls else "connection to"
        return TLSError(f"{what} {address} failed: {problem}")

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for ch in channels:
            await ch.close(grace=None)


async def fetch_metadata(
    pool: ChannelPool,
    metadata: ClusterMetadata,
    topics: Iterable[str] = (),
    *,
    timeout_s: float = 5.0,
) -> admin_pb2.MetadataResponse:
    """Ask the bootstrap list, then the known brokers, for metadata; update the cache.

    Makes up to METADATA_ROUNDS passes over the addresses with a short pause between them, all
    within `timeout_s`: a node that is just coming back (or a connection still in its reconnect
    backoff) gets a second chance, while an unreachable cluster still fails within about a
    second. Raises ClusterUnreachableError naming the last failure, one line for a CLI.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    candidates = list(dict.fromkeys([*metadata.bootstrap, *metadata.brokers.values()]))
    request = admin_pb2.MetadataRequest(topics=list(topics))
    last: Exception | None = None
    for round_no in range(METADATA_ROUNDS):
        if round_no:
            await asyncio.sleep(min(0.1 * 3 ** (round_no - 1), max(deadline - loop.time(), 0)))
        for i, addr in enumerate(candidates):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            # Leave time for the others: an address that hangs gets its share of the deadline.
            per_call = max(remaining / (len(candidates) - i), 0.05)
            stub = make_stub(admin_pb2_grpc.MetadataStub, pool.get(addr))
            try:
                response: admin_pb2.MetadataResponse = await stub.GetMetadata(
                    request, timeout=per_call)
            except grpc.aio.AioRpcError as exc:
                err = from_rpc_error(exc)
                if not err.retriable and exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise err from exc
                log.debug("metadata from %s failed: %s", addr, exc.details())
                # Keep trying the others (the cause may be one node), but say it if it was TLS.
                last = pool.diagnose(addr, exc) or err
                continue
            metadata.update(response)
            return response
    reason = str(last) if last else "no address answered"
    # A TLS failure stays a TLSError (not retriable: the credentials must change).
    cls = TLSError if isinstance(last, TLSError) else ClusterUnreachableError
    raise cls(f"cannot reach cluster at {','.join(metadata.bootstrap)}: {reason}")


def describe(exc: BaseException) -> str:
    """One line for a person: the error's class and message, no traceback."""
    if isinstance(exc, RilletError):
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"{type(exc).__name__}: {exc}".splitlines()[0]
