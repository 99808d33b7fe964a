"""TLS, mutual TLS and bearer tokens on one real node (a `python -m rillet.node` process).

Each test starts its node with the test PKI's certificates (conftest.py) and talks to it with
the Python client, as an application would.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rillet.api.v1 import admin_pb2, admin_pb2_grpc
from rillet.client import Admin, Consumer, Credentials, Producer
from rillet.client.errors import AuthenticationError, TLSError
from rillet.node.security.tokens import new_token
from tests.integration.conftest import free_port
from tests.security.conftest import Pki, SecureBroker, write_tokens

pytestmark = pytest.mark.integration


async def _roundtrip(address: str, creds: Credentials, topic: str, n: int = 20) -> None:
    """Create a topic, produce n records (acks=all) and read them all back."""
    async with Admin(address, credentials=creds, timeout=5) as admin:
        await admin.create_topic(topic, 2)
    async with Producer(address, credentials=creds) as producer:
        futures = [await producer.send(topic, f"v{i}".encode(), key=str(i).encode())
                   for i in range(n)]
        await producer.flush()
        for fut in futures:
            await fut
    got: list[bytes] = []
    async with Consumer(address, topic, start="earliest", credentials=creds) as consumer:
        async def read() -> None:
            async for record in consumer:
                got.append(record.value)
                if len(got) == n:
                    return
        await asyncio.wait_for(read(), 15)
    assert sorted(got) == sorted(f"v{i}".encode() for i in range(n))


async def _refused(address: str, creds: Credentials) -> Exception:
    """The error a client with `creds` gets from its first call (it must get one)."""
    with pytest.raises(Exception) as info:  # the caller checks the type and the text
        async with Admin(address, credentials=creds, timeout=2) as admin:
            await admin.list_topics()
    return info.value


async def test_tls_serves_clients_that_trust_the_ca(pki: Pki, secure_broker_factory: Any
                                                    ) -> None:
    node: SecureBroker = secure_broker_factory(
        extra_args=pki.serve_args(mutual=False), probe=pki.credentials())
    await _roundtrip(node.address, pki.credentials(), "over-tls")
    assert "TLS, no authentication" in node.log_text()

    wrong_ca = await _refused(node.address, pki.credentials(foreign_ca=True))
    assert isinstance(wrong_ca, TLSError)
    assert "not signed by the CA in --tls-ca" in str(wrong_ca)
    plaintext = await _refused(node.address, Credentials())
    assert isinstance(plaintext, TLSError) and "probably requires TLS" in str(plaintext)


async def test_mutual_tls_needs_a_client_certificate_of_the_trusted_ca(
        pki: Pki, secure_broker_factory: Any) -> None:
    health_port = free_port()
    node: SecureBroker = secure_broker_factory(
        extra_args=[*pki.serve_args(), "--health-listen", f"127.0.0.1:{health_port}"],
        probe=pki.credentials("alice"))
    await _roundtrip(node.address, pki.credentials("alice"), "over-mtls")
    assert "mutual TLS, principals from client certificates" in node.log_text()

    # The plaintext health-only port (for probes that cannot speak TLS) answers health, and
    # nothing else is there.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{health_port}") as channel:
        resp = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await admin_pb2_grpc.AdminStub(channel).ListTopics(  # type: ignore[no-untyped-call]
                admin_pb2.ListTopicsRequest(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED

    no_cert = await _refused(node.address, pki.credentials())
    assert isinstance(no_cert, TLSError)
    assert "requires a client certificate" in str(no_cert)
    foreign = await _refused(node.address, pki.credentials("alice", foreign_cert=True))
    assert isinstance(foreign, TLSError)
    assert "refused the client certificate" in str(foreign)
    wrong_ca = await _refused(node.address, pki.credentials("alice", foreign_ca=True))
    assert isinstance(wrong_ca, TLSError) and "not signed by the CA" in str(wrong_ca)


async def test_tokens_authenticate_and_health_stays_open(
        tmp_path: Path, secure_broker_factory: Any) -> None:
    alice = new_token()
    tokens = write_tokens(tmp_path / "tokens", {alice: "alice"})
    node: SecureBroker = secure_broker_factory(extra_args=["--token-file", str(tokens)])
    await _roundtrip(node.address, Credentials(token=alice), "with-token")

    missing = await _refused(node.address, Credentials())
    assert isinstance(missing, AuthenticationError)
    assert "no credentials: this node requires a bearer token" in str(missing)
    wrong = await _refused(node.address, Credentials(token=new_token()))
    assert isinstance(wrong, AuthenticationError)
    assert "not known to this node" in str(wrong)
    # A producer and a reader fail the same way, naming the problem.
    with pytest.raises(AuthenticationError, match="bearer token"):
        async with Producer(node.address, credentials=Credentials(token="nope")) as producer:
            await (await producer.send("with-token", b"x"))
    # Probes carry no credentials: health answers anyway.
    async with grpc.aio.insecure_channel(node.address) as channel:
        resp = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RILLET_")}
    return subprocess.run([sys.executable, "-m", "rillet.cli", *args], capture_output=True,
                          text=True, timeout=60, env={**clean, **(env or {})})


def test_cli_takes_credentials_from_flags_and_environment(
        pki: Pki, tmp_path: Path, secure_broker_factory: Any) -> None:
    token = new_token()
    tokens = write_tokens(tmp_path / "tokens", {token: "alice"})
    node: SecureBroker = secure_broker_factory(
        extra_args=[*pki.serve_args(mutual=False), "--token-file", str(tokens)],
        probe=pki.credentials())
    flags = ["--bootstrap", node.address, "--tls-ca", str(pki.ca)]
    created = _cli("topic", "create", "cli-topic", *flags, "--token", token)
    assert created.returncode == 0, created.stderr
    listed = _cli("topic", "list", "--bootstrap", node.address,
                  env={"RILLET_TLS_CA": str(pki.ca), "RILLET_TOKEN": token})
    assert listed.returncode == 0 and "cli-topic" in listed.stdout, listed.stderr
    refused = _cli("topic", "list", *flags, "--token", "wrong")
    assert refused.returncode == 1
    assert refused.stderr.startswith("rillet: error: the bearer token is not known")


def test_serve_refuses_half_configured_tls_naming_the_file(pki: Pki, tmp_path: Path) -> None:
    files = pki.node(0)
    missing = tmp_path / "missing.key"
    base = [sys.executable, "-m", "rillet.node", "--listen", "127.0.0.1:0",
            "--data-dir", str(tmp_path / "d")]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RILLET_")}
    run = subprocess.run([*base, "--tls-cert", str(files.cert), "--tls-key", str(missing)],
                         capture_output=True, text=True, timeout=60, env=clean)
    assert run.returncode == 2
    assert f"tls_key: file {missing} does not exist" in run.stderr
    run = subprocess.run([*base, "--tls-cert", str(files.cert)], capture_output=True,
                         text=True, timeout=60, env=clean)
    assert run.returncode == 2 and "tls_cert is set but tls_key is not" in run.stderr
