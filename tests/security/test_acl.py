"""ACLs on real nodes with token authentication: a single node (rules in its data dir) and a
3-node cluster (rules in the metadata group: added through one node, applied on another,
kept across a restart).

Callers use the generated stubs with `authorization: Bearer <token>` metadata, so each test
sees the exact statuses a plain gRPC client gets; the admin uses the Admin client and the
`rillet acl` command."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest

from rillet import batch
from rillet.api.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    groups_pb2,
    groups_pb2_grpc,
    log_pb2,
    log_pb2_grpc,
)
from rillet.client.admin import Acl, Admin
from rillet.client.connection import Credentials
from rillet.client.errors import AuthorizationError, RilletError
from rillet.client.producer import Producer
from rillet.node.security.tokens import file_line, new_token
from tests.integration.conftest import (  # noqa: F401 (fixtures)
    FAST_RAFT_ENV,
    BrokerProcess,
    broker_factory,
    cluster_factory,
)

pytestmark = pytest.mark.integration

PERMISSION_DENIED = 21  # common.proto ERROR_CODE_PERMISSION_DENIED


def write_tokens(path: Path, principals: Sequence[str]) -> dict[str, str]:
    """A token file for `principals`; returns principal -> token."""
    tokens = {p: new_token() for p in principals}
    path.write_text("".join(file_line(t, p) + "\n" for p, t in tokens.items()))
    return tokens


class As:
    """Generated stubs on one channel, every call carrying one principal's token."""

    def __init__(self, channel: grpc.aio.Channel, token: str) -> None:
        self.md = (("authorization", f"Bearer {token}"),)
        self.admin = admin_pb2_grpc.AdminStub(channel)
        self.meta = admin_pb2_grpc.MetadataStub(channel)
        self.produce_stub = log_pb2_grpc.ProduceStub(channel)
        self.consume_stub = log_pb2_grpc.ConsumeStub(channel)
        self.groups = groups_pb2_grpc.GroupsStub(channel)

    async def produce(self, topic: str, *, partition: int = 0) -> log_pb2.ProduceResponse:
        """One batch on a fresh stream: its response (error or offset)."""
        req = log_pb2.ProduceRequest(topic=topic, partition=partition,
                                     batch=batch.encode([b"v"], timestamps_ms=[_now()]))
        async with asyncio.timeout(20):
            answers = [r async for r in self.produce_stub.Produce(iter([req]), metadata=self.md)]
        assert len(answers) == 1
        return answers[0]

    async def consume_first(self, topic: str) -> Any:
        """The first response of a Consume stream (raises the call's error)."""
        call = self.consume_stub.Consume(
            log_pb2.ConsumeRequest(topic=topic, max_wait_ms=100), metadata=self.md)
        try:
            async with asyncio.timeout(20):
                return await call.read()
        finally:
            call.cancel()


def _now() -> int:
    return int(time.time() * 1000)


async def denied(coro: Any) -> str:
    """Await `coro`, which must end with PERMISSION_DENIED; its details."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await coro
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, info.value
    return info.value.details() or ""


async def rillet_acl(address: str, token: str, *args: str) -> tuple[int, str, str]:
    """`rillet acl ARGS` as a process: (exit code, stdout, stderr)."""
    env = {**os.environ, "RILLET_BOOTSTRAP": address, "RILLET_TOKEN": token}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from rillet.acl_cli import acl; acl(prog_name='rillet acl')",
        *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def test_single_node_acls(broker_factory, tmp_path: Path) -> None:  # noqa: F811
    tokens = write_tokens(tmp_path / "tokens", ["admin", "alice", "bob"])
    node: BrokerProcess = broker_factory(extra_args=[
        "--token-file", str(tmp_path / "tokens"), "--acl", "--super-users", "admin"])
    admin = Admin(node.address, credentials=Credentials(token=tokens["admin"]))
    async with admin, grpc.aio.insecure_channel(node.address) as ch:
        for name in ("orders", "orders-eu", "other"):
            await admin.create_topic(name)
        alice, bob = As(ch, tokens["alice"]), As(ch, tokens["bob"])

        # No rule: every operation is denied, naming principal, operation and resource.
        resp = await alice.produce("orders")
        assert resp.error.code == PERMISSION_DENIED
        assert resp.error.message.startswith(
            "principal 'alice' may not produce to topic 'orders'")
        assert (await alice.admin.ListTopics(admin_pb2.ListTopicsRequest(),
                                             metadata=alice.md)).topics == []
        details = await denied(alice.consume_first("orders"))
        assert "principal 'alice' may not consume from topic 'orders'" in details
        await denied(alice.meta.InitProducer(admin_pb2.InitProducerRequest(), metadata=alice.md))

        # The same Produce stream: denied, then (rule added meanwhile) allowed, still open.
        queue: asyncio.Queue[log_pb2.ProduceRequest | None] = asyncio.Queue()

        async def requests() -> AsyncIterator[log_pb2.ProduceRequest]:
            while (item := await queue.get()) is not None:
                yield item

        stream = alice.produce_stub.Produce(requests(), metadata=alice.md)
        req = log_pb2.ProduceRequest(topic="orders", batch=batch.encode(
            [b"a"], timestamps_ms=[_now()]))
        async with asyncio.timeout(20):
            await queue.put(req)
            assert (await stream.read()).error.code == PERMISSION_DENIED
            assert await admin.add_acl(Acl("alice", "produce", "topic", "orders")) is True
            assert await admin.add_acl(Acl("alice", "produce", "topic", "orders")) is False
            await queue.put(req)
            first = await stream.read()
            assert first.error.code == 0 and first.base_offset == 0
            await queue.put(log_pb2.ProduceRequest(topic="other", batch=req.batch))
            assert (await stream.read()).error.code == PERMISSION_DENIED
            await queue.put(None)
            assert await stream.read() is grpc.aio.EOF  # type: ignore[attr-defined]
        # Produce implies describe: only that topic shows; others are denied by name, even
        # ones that do not exist (a denied principal learns nothing of what exists).
        meta = await alice.meta.GetMetadata(admin_pb2.MetadataRequest(), metadata=alice.md)
        assert [t.name for t in meta.topics] == ["orders"]
        await denied(alice.meta.GetMetadata(admin_pb2.MetadataRequest(topics=["other"]),
                                            metadata=alice.md))
        await denied(alice.meta.GetMetadata(admin_pb2.MetadataRequest(topics=["nope"]),
                                            metadata=alice.md))
        await alice.meta.InitProducer(admin_pb2.InitProducerRequest(), metadata=alice.md)
        await denied(bob.meta.InitProducer(admin_pb2.InitProducerRequest(), metadata=bob.md))
        # The Python client (idempotent: InitProducer, then metadata, then Produce) works
        # with the one rule, and reports a denial as AuthorizationError.
        async with Producer(node.address, credentials=Credentials(token=tokens["alice"]),
                            request_timeout_s=10) as producer:
            assert (await producer.send_and_wait("orders", b"c")).offset == 1
        with pytest.raises(AuthorizationError, match="may not describe topic 'other'"):
            async with Producer(node.address, credentials=Credentials(token=tokens["alice"]),
                                request_timeout_s=10) as producer:
                await producer.send_and_wait("other", b"c")
        with pytest.raises(RilletError, match="operation produce does not apply to a group"):
            await admin.add_acl(Acl("alice", "produce", "group", "g1"))
        # Producing does not allow consuming.
        await denied(alice.consume_first("orders"))

        # A prefix rule through the command line covers every topic starting with it.
        code, _out, err = await rillet_acl(node.address, tokens["admin"], "add", "--principal",
                                           "alice", "--operation", "consume", "--topic",
                                           "orders", "--prefix")
        assert code == 0, err
        assert (await alice.consume_first("orders")).partitions[0].batches
        await alice.consume_first("orders-eu")
        await denied(alice.consume_first("other"))
        code, out, err = await rillet_acl(node.address, tokens["admin"], "list",
                                          "--principal", "alice", "--format", "json")
        assert code == 0, err
        assert sorted((r["operation"], r["pattern"]) for r in json.loads(out)) == [
            ("consume", "prefix"), ("produce", "literal")]

        # Only cluster_admin manages ACLs; groups need operation group.
        details = await denied(alice.admin.AddAcl(admin_pb2.AddAclRequest(
            rule=Acl("alice", "cluster_admin", "cluster").to_proto()), metadata=alice.md))
        assert "may not administer the cluster" in details
        join = groups_pb2.GroupRequest(join=groups_pb2.JoinGroup(group="g1", topics=["orders"]))
        details = await denied(_first(alice.groups.Join(iter([join]), metadata=alice.md)))
        assert "principal 'alice' may not use group 'g1'" in details

        # Removal takes effect at once; removing again says there is no such rule.
        code, _out, err = await rillet_acl(node.address, tokens["admin"], "remove",
                                           "--principal", "alice", "--operation", "produce",
                                           "--topic", "orders")
        assert code == 0, err
        assert (await alice.produce("orders")).error.code == PERMISSION_DENIED
        code, _out, err = await rillet_acl(node.address, tokens["admin"], "remove",
                                           "--principal", "alice", "--operation", "produce",
                                           "--topic", "orders")
        assert code == 1 and "no such rule" in err

    # The rules are in the data dir: a restarted node still applies them.
    node.stop()
    node.start()
    async with grpc.aio.insecure_channel(node.address) as ch:
        alice = As(ch, tokens["alice"])
        assert (await alice.consume_first("orders")).partitions[0].batches
        assert (await alice.produce("orders")).error.code == PERMISSION_DENIED


async def _first(call: Any) -> Any:
    async with asyncio.timeout(20):
        async for ev in call:
            return ev
    return None


async def test_cluster_acls_replicate_and_survive_a_restart(
        cluster_factory, tmp_path: Path) -> None:  # noqa: F811
    names = ["admin", "alice", "node-0", "node-1", "node-2"]
    tokens = write_tokens(tmp_path / "tokens", names)
    env = {**FAST_RAFT_ENV, "RILLET_TOKEN_FILE": str(tmp_path / "tokens"), "RILLET_ACL": "true",
           "RILLET_SUPER_USERS": "admin", "RILLET_PEER_PRINCIPALS": "node-*"}
    cluster = await cluster_factory(3, env=env, start=False, node_env={
        i: {"RILLET_PEER_TOKEN": tokens[f"node-{i}"]} for i in range(3)})
    cluster.start()
    n0, n2 = cluster.node(0), cluster.node(2)
    creds = Credentials(token=tokens["admin"])

    async def created() -> bool:
        try:
            async with Admin(n0.address, credentials=creds, timeout=5) as admin:
                await admin.create_topic("orders", partitions=3, replication_factor=3)
            return True
        except RilletError as exc:
            return "already exists" in str(exc)

    await _until(created, "topic orders created")
    async with Admin(n0.address, credentials=creds) as admin:
        assert await admin.add_acl(Acl("alice", "produce", "topic", "orders"))

    async def produces_everywhere(node: BrokerProcess) -> bool:
        # Every partition: some are led elsewhere, so node 2 forwards them as itself.
        async with grpc.aio.insecure_channel(node.address) as ch:
            alice = As(ch, tokens["alice"])
            answers = [await alice.produce("orders", partition=p) for p in range(3)]
        assert all(a.error.code != PERMISSION_DENIED for a in answers) or all(
            a.error.code == PERMISSION_DENIED for a in answers), answers
        return all(a.error.code == 0 for a in answers)

    await _until(lambda: produces_everywhere(n2), "alice produces through node 2")
    async with grpc.aio.insecure_channel(n2.address) as ch:
        await denied(As(ch, tokens["alice"]).consume_first("orders"))

    # The rule is in the metadata log: a restarted node applies it again.
    n2.stop()
    n2.start()
    await _until(lambda: produces_everywhere(n2), "alice produces through restarted node 2")
    async with Admin(n2.address, credentials=creds) as admin:
        assert await admin.list_acls("alice") == [Acl("alice", "produce", "topic", "orders")]
    async with Admin(cluster.node(1).address, credentials=creds) as admin:
        assert await admin.remove_acl(Acl("alice", "produce", "topic", "orders"))

    async def denied_on_n2() -> bool:
        async with grpc.aio.insecure_channel(n2.address) as ch:
            return (await As(ch, tokens["alice"]).produce("orders")).error.code == (
                PERMISSION_DENIED)

    await _until(denied_on_n2, "the removal to reach node 2")


async def _until(check: Any, what: str, timeout_s: float = 30.0) -> None:
    """Poll an async check under a deadline (tests/waiting.py's wait_for takes only plain
    predicates)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.05)
