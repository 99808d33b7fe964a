"""Three-node clusters whose peer links are secured: by mutual TLS, and by peer tokens.

Each forms (metadata registration needs the Raft links), replicates an acks=all produce to
every replica, and answers admin calls sent to any node (a node that does not lead the
metadata group forwards them with its own identity, which the leader must accept). A caller
that is not a cluster member is refused on the internal Peer service.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest

from rillet.client import Admin, Credentials, Producer, Replay
from rillet.internal.v1 import peer_pb2_grpc
from rillet.node.security.tokens import new_token
from tests.security.conftest import Pki, SecureBroker, start_secure_cluster, write_tokens

pytestmark = pytest.mark.integration

N = 20


async def _exercise(nodes: list[SecureBroker], creds: Credentials, topic: str) -> None:
    """Admin through every node, an acks=all produce, every replica holding all of it, and a
    replay through a node that is asked alone."""
    bootstrap = ",".join(n.address for n in nodes)
    for i, node in enumerate(nodes):
        # Two of the three are not the metadata leader: they forward with their identity.
        async with Admin(node.address, credentials=creds, timeout=10) as admin:
            await admin.create_topic(f"{topic}-{i}", 1, replication_factor=3)
    async with Producer(bootstrap, acks="all", credentials=creds) as producer:
        futures = [await producer.send(f"{topic}-0", f"r{i}".encode()) for i in range(N)]
        await producer.flush()
        offsets = sorted([(await f).offset for f in futures])
    assert offsets == list(range(N))

    async def replicated() -> bool:
        for node in nodes:
            async with Admin(node.address, credentials=creds, timeout=5) as admin:
                desc = await admin.describe_topic(f"{topic}-0")
            if desc.partitions[0].high_watermark < N:
                return False
        return True
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while not await replicated():
        assert loop.time() < deadline, "the produce did not reach every replica"
        await asyncio.sleep(0.1)

    last = nodes[-1].address
    async with Replay(last, f"{topic}-0", start="earliest", end="latest",
                      credentials=creds) as replay:
        values = [r.value async for r in replay]
    assert values == [f"r{i}".encode() for i in range(N)]


async def _peer_exchange(channel: grpc.aio.Channel) -> grpc.aio.AioRpcError:
    """Open the internal Peer stream as a node would; return how the node refused it.

    Nothing is sent: the node decides when the stream opens, and a message in flight when it
    refuses would end the call with the client's own INTERNAL "execute_batch" failure."""
    call = peer_pb2_grpc.PeerStub(channel).Exchange(timeout=5)  # type: ignore[no-untyped-call]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in call:
            pass
    return info.value


def _ssl(pki: Pki, cert: Any) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(pki.ca.read_bytes(), cert.key.read_bytes(),
                                        cert.cert.read_bytes())


async def test_mutual_tls_cluster_forms_replicates_and_refuses_strangers(
        pki: Pki, secure_broker_factory: Any) -> None:
    alice = pki.credentials("alice")
    nodes = await start_secure_cluster(
        secure_broker_factory, 3, probe=alice,
        args_for=lambda i: [*pki.serve_args(i), "--peer-principals", "node-*"])
    await _exercise(nodes, alice, "mtls")

    address = nodes[0].address
    # A certificate the cluster's CA signed, but not a member's: PERMISSION_DENIED, named.
    async with grpc.aio.secure_channel(address, _ssl(pki, pki.client("alice"))) as ch:
        err = await _peer_exchange(ch)
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "principal 'alice' is not a cluster member" in (err.details() or "")
    # A node certificate of a foreign CA: the handshake itself fails.
    async with grpc.aio.secure_channel(address, _ssl(pki, pki.node(3, foreign=True))) as ch:
        err = await _peer_exchange(ch)
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    for node in nodes:
        assert node.running


@pytest.mark.parametrize("transport", ["plaintext", "tls"])
async def test_token_cluster_nodes_show_their_peer_tokens(
        transport: str, pki: Pki, tmp_path: Path, secure_broker_factory: Any) -> None:
    """Peer tokens travel in client interceptors over plaintext, as call credentials over
    TLS (server-verified only: no client certificates, so tokens name the principals)."""
    node_tokens = [new_token() for _ in range(3)]
    alice = new_token()
    tokens = write_tokens(tmp_path / "tokens", {
        **{t: f"node-{i}" for i, t in enumerate(node_tokens)}, alice: "alice"})
    tls = transport == "tls"
    creds = Credentials(tls_ca=str(pki.ca) if tls else None, token=alice)
    # Health is open, so the readiness probe needs no token; metadata calls use alice's.
    nodes = await start_secure_cluster(
        secure_broker_factory, 3, probe=creds,
        args_for=lambda i: [*(pki.serve_args(i, mutual=False) if tls else []),
                            *(["--tls-peer-ca", str(pki.ca)] if tls else []),
                            "--token-file", str(tokens), "--peer-principals", "node-*"],
        env_for=lambda i: {"RILLET_PEER_TOKEN": node_tokens[i]})
    await _exercise(nodes, creds, "tokens")

    async with Credentials(tls_ca=creds.tls_ca).channel(nodes[1].address) as ch:
        err = await _peer_exchange(ch)
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    async with creds.channel(nodes[1].address) as ch:
        err = await _peer_exchange(ch)
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "principal 'alice' is not a cluster member" in (err.details() or "")
