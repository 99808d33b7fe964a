"""Certificates and secured nodes for the security tests.

`pki` (session scope) is a small public-key infrastructure made with `cryptography` in a temp
dir: a CA, a second "foreign" CA that nothing trusts, node certificates (CN node-0..node-3,
SAN IP 127.0.0.1..127.0.0.4 and DNS localhost, so a client or peer dialing any test address
verifies the name without overrides), and client certificates (CN alice, bob) from each CA.
EC P-256 keys keep it fast (the whole set takes well under a second).

`secure_broker_factory(...)` starts nodes like tests/integration's `broker_factory`, but their
readiness probe speaks TLS when the node does. `tokens(...)` writes a token file.
S2 and S3 may import these fixtures (pytest finds them for every test under tests/security/).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rillet.client import Admin, Credentials
from tests.integration.conftest import (
    FAST_RAFT_ENV,
    START_TIMEOUT_S,
    BrokerProcess,
    broker_factory,
    cluster_factory,
    connect,
    free_port,
)

__all__ = ["broker_factory", "cluster_factory", "connect"]  # re-exported fixtures

NODE_IPS = ("127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4")


@dataclass(frozen=True)
class CertFiles:
    """A certificate and its key on disk (PEM)."""

    cert: Path
    key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "rillet-tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> CertFiles:
    cert_path, key_path = path.with_suffix(".crt"), path.with_suffix(".key")
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return CertFiles(cert_path, key_path)


@dataclass
class _Authority:
    name: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, name: str) -> _Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        cert = (x509.CertificateBuilder()
                .subject_name(_name(name)).issuer_name(_name(name))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(hours=1))
                .not_valid_after(now + dt.timedelta(days=2))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True,
                    content_commitment=False, key_encipherment=False, data_encipherment=False,
                    key_agreement=False, encipher_only=False, decipher_only=False),
                    critical=True)
                .sign(key, hashes.SHA256()))
        return cls(name, key, cert)

    def issue(self, cn: str, *, server: bool) -> tuple[x509.Certificate,
                                                       ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        builder = (x509.CertificateBuilder()
                   .subject_name(_name(cn)).issuer_name(self.cert.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(hours=1))
                   .not_valid_after(now + dt.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                                  critical=True))
        if server:
            # A node serves (server auth) and dials its peers with the same certificate
            # (client auth); the SANs cover every address a test node listens on.
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"),
                 *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in NODE_IPS)]),
                critical=False).add_extension(x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                    critical=False)
        else:
            builder = builder.add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        return builder.sign(self.key, hashes.SHA256()), key


@dataclass
class Pki:
    """Files of the test PKI; see the module docstring."""

    root: Path
    ca: Path
    foreign_ca: Path
    _authorities: dict[str, _Authority] = field(default_factory=dict)
    _issued: dict[tuple[str, str], CertFiles] = field(default_factory=dict)

    def _get(self, authority: str, cn: str, server: bool) -> CertFiles:
        key = (authority, cn)
        if key not in self._issued:
            cert, pkey = self._authorities[authority].issue(cn, server=server)
            self._issued[key] = _write(self.root / f"{authority}-{cn}", cert, pkey)
        return self._issued[key]

    def node(self, node_id: int, *, foreign: bool = False) -> CertFiles:
        """Node certificate, CN node-<id> (by the foreign CA when `foreign`)."""
        return self._get("foreign" if foreign else "ca", f"node-{node_id}", True)

    def client(self, cn: str, *, foreign: bool = False) -> CertFiles:
        """Client certificate with common name `cn`."""
        return self._get("foreign" if foreign else "ca", cn, False)

    def credentials(self, cn: str | None = None, *, foreign_ca: bool = False,
                    foreign_cert: bool = False, token: str | None = None) -> Credentials:
        """Client credentials trusting the CA (or the foreign one), with `cn`'s certificate."""
        files = self.client(cn, foreign=foreign_cert) if cn else None
        return Credentials(tls_ca=str(self.foreign_ca if foreign_ca else self.ca),
                           tls_cert=str(files.cert) if files else None,
                           tls_key=str(files.key) if files else None, token=token)

    def serve_args(self, node_id: int = 0, *, mutual: bool = True,
                   foreign: bool = False) -> list[str]:
        """`rillet serve` flags for a TLS node (mutual: clients need a certificate)."""
        files = self.node(node_id, foreign=foreign)
        args = ["--tls-cert", str(files.cert), "--tls-key", str(files.key)]
        if mutual:
            args += ["--tls-client-ca", str(self.foreign_ca if foreign else self.ca)]
        return args


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    authorities = {"ca": _Authority.create("rillet-test-ca"),
                   "foreign": _Authority.create("foreign-ca")}
    paths = {}
    for label, authority in authorities.items():
        paths[label] = root / f"{label}.crt"
        paths[label].write_bytes(authority.cert.public_bytes(serialization.Encoding.PEM))
    return Pki(root, paths["ca"], paths["foreign"], authorities)


def write_tokens(path: Path, tokens: dict[str, str]) -> Path:
    """A token file mapping each token to its principal (hashed, as nodes read it)."""
    from rillet.node.security.tokens import file_line

    path.write_text("# test tokens\n" + "".join(
        file_line(token, principal) + "\n" for token, principal in tokens.items()))
    return path


def _read(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


class SecureBroker(BrokerProcess):
    """A BrokerProcess whose readiness probe uses `probe` credentials (TLS, a certificate,
    a token: health is open, but the TLS handshake still needs them)."""

    def __init__(self, *args: object, probe: Credentials | None = None,
                 **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.probe = probe or Credentials()

    def _channel(self) -> grpc.Channel:
        p = self.probe
        if not p.tls:
            return grpc.insecure_channel(self.address)
        creds = grpc.ssl_channel_credentials(_read(p.tls_ca), _read(p.tls_key), _read(p.tls_cert))
        return grpc.secure_channel(self.address, creds)

    def wait_serving(self, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        with self._channel() as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"broker exited with {self.proc.returncode} while "
                                       f"starting:\n{self.log_text()[-4000:]}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"broker at {self.address} not SERVING after "
                                       f"{timeout_s}s:\n{self.log_text()[-4000:]}")
                try:
                    resp = stub.Check(health_pb2.HealthCheckRequest(),
                                      timeout=min(1.0, remaining))
                    if resp.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.02)  # between probes, as BrokerProcess does


@pytest.fixture
def secure_broker_factory(tmp_path: Path) -> Iterator[Any]:
    """`secure_broker_factory(extra_args=[...], probe=Credentials(...), node_id=0, host=...,
    env={}, start=True)`; every node is killed by PID at teardown."""
    started: list[SecureBroker] = []

    def make(*, node_id: int = 0, extra_args: Sequence[str] = (),
             probe: Credentials | None = None, host: str = "127.0.0.1",
             port: int | None = None, env: dict[str, str] | None = None,
             start: bool = True) -> SecureBroker:
        data_dir = tmp_path / f"secure-{node_id}-{len(started)}"
        proc = SecureBroker(data_dir, port or free_port(host), node_id=node_id,
                            extra_args=extra_args, env=env, host=host, probe=probe)
        started.append(proc)
        if start:
            proc.start()
        return proc

    try:
        yield make
    finally:
        # SIGKILL by PID, all first, then reap: a graceful stop of every cluster node at once
        # would wait out each one's leadership hand-over (no peer is left to take over).
        for proc in started:
            if proc.running:
                os.kill(proc.pid, signal.SIGKILL)
        for proc in started:
            if proc.proc is not None:
                proc.proc.wait(timeout=20)


async def start_secure_cluster(factory: Any, n: int, *, args_for: Callable[[int], list[str]],
                               probe: Credentials,
                               env_for: Callable[[int], dict[str, str]] | None = None,
                               timeout_s: float = 45.0) -> list[SecureBroker]:
    """n secured nodes from `secure_broker_factory` with `--peers` naming each other (node i
    on 127.0.0.(i+1), fast Raft ticks); returns once every node's metadata, asked with
    `probe` credentials, lists all n brokers (which needs working peer links)."""
    hosts = [f"127.0.0.{i + 1}" for i in range(n)]
    ports = [free_port(h) for h in hosts]
    peers = ",".join(f"{i}={h}:{p}" for i, (h, p) in enumerate(zip(hosts, ports, strict=True)))
    nodes: list[SecureBroker] = [
        factory(node_id=i, host=hosts[i], port=ports[i], probe=probe, start=False,
                extra_args=[*args_for(i), "--peers", peers],
                env={**FAST_RAFT_ENV, **(env_for(i) if env_for else {})})
        for i in range(n)]
    for node in nodes:
        node.start(wait=False)
    for node in nodes:
        node.wait_serving(timeout_s)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    for node in nodes:
        async with Admin(node.address, credentials=probe, timeout=2) as admin:
            while len((await admin.metadata()).brokers) < n:
                if loop.time() > deadline:
                    tails = "\n".join(f"--- node {x.node_id}:\n{x.log_text()[-2000:]}"
                                      for x in nodes)
                    raise AssertionError(f"node {node.node_id} does not list {n} brokers "
                                         f"after {timeout_s}s\n{tails}")
                await asyncio.sleep(0.1)
    return nodes
