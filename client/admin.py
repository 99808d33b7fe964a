"""Topic management and cluster metadata: thin unary calls with deadlines.

Calls go to the first bootstrap address that answers (any node handles admin requests); every
failure is translated to a RilletError whose message is the broker's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import grpc
import grpc.aio

from rillet.api.v1 import admin_pb2, admin_pb2_grpc, common_pb2, groups_pb2
from rillet.client.connection import (
    METADATA_ROUNDS,
    ChannelPool,
    Credentials,
    fetch_metadata,
    make_stub,
    parse_bootstrap,
)
from rillet.client.errors import (
    ClusterUnreachableError,
    InvalidConfigError,
    TLSError,
    from_rpc_error,
)
from rillet.client.metadata import NO_LEADER, ClusterMetadata, PartitionInfo

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Kafka-style setting names accepted by `create_topic(config=...)` and the CLI.
CONFIG_KEYS = ("retention.ms", "retention.bytes", "segment.bytes", "segment.ms",
               "delete.retention.ms", "cleanup.policy")
_POLICIES = {
    "delete": admin_pb2.CLEANUP_POLICY_DELETE,
    "compact": admin_pb2.CLEANUP_POLICY_COMPACT,
    "compact,delete": admin_pb2.CLEANUP_POLICY_COMPACT_DELETE,
    "delete,compact": admin_pb2.CLEANUP_POLICY_COMPACT_DELETE,
}


def topic_config(settings: Mapping[str, str | int]) -> admin_pb2.TopicConfig:
    """Build a TopicConfig from Kafka-style names; unknown names and bad values are errors."""
    cfg = admin_pb2.TopicConfig()
    for name, raw in settings.items():
        if name == "cleanup.policy":
            policy = _POLICIES.get(str(raw).replace(" ", ""))
            if policy is None:
                raise InvalidConfigError(
                    f"cleanup.policy must be delete, compact or compact,delete, not {raw!r}")
            cfg.cleanup_policy = policy
            continue
        if name not in CONFIG_KEYS:
            raise InvalidConfigError(
                f"unknown topic setting {name!r}; known: {', '.join(CONFIG_KEYS)}")
        try:
            value = int(raw)
        except ValueError:
            raise InvalidConfigError(f"{name} must be an integer, not {raw!r}") from None
        setattr(cfg, name.replace(".", "_"), value)
    return cfg


def config_dict(cfg: admin_pb2.TopicConfig) -> dict[str, str | int]:
    """The inverse of `topic_config`, for display."""
    out: dict[str, str | int] = {}
    for name in CONFIG_KEYS[:-1]:
        field = name.replace(".", "_")
        if cfg.HasField(field):
            out[name] = getattr(cfg, field)
    policy = {v: k for k, v in _POLICIES.items()}.get(cfg.cleanup_policy, "delete")
    out["cleanup.policy"] = policy
    return out


#: ACL vocabulary (docs/security.md): operations, resource types, pattern types.
ACL_OPERATIONS = ("produce", "consume", "replay", "describe", "create", "delete", "alter",
                  "group", "cluster_admin")
ACL_RESOURCE_TYPES = ("topic", "group", "cluster")


@dataclass(frozen=True, slots=True)
class Acl:
    """One allow rule: `principal` ("*": any authenticated principal) may do `operation` on
    the `resource_type` resources `resource_name` names, exactly (`prefix` False) or as a
    prefix. The cluster has the empty name."""

    principal: str
    operation: str
    resource_type: str
    resource_name: str = ""
    prefix: bool = False

    def to_proto(self) -> admin_pb2.AclRule:
        """The wire form; InvalidConfigError for an unknown operation or resource type."""
        op = self.operation.strip().lower().replace("-", "_")
        rtype = self.resource_type.strip().lower()
        if op not in ACL_OPERATIONS:
            raise InvalidConfigError(f"unknown ACL operation {self.operation!r}; known: "
                                     f"{', '.join(ACL_OPERATIONS)}")
        if rtype not in ACL_RESOURCE_TYPES:
            raise InvalidConfigError(f"unknown ACL resource type {self.resource_type!r}; "
                                     f"known: {', '.join(ACL_RESOURCE_TYPES)}")
        return admin_pb2.AclRule(
            principal=self.principal, operation="ACL_OPERATION_" + op.upper(),
            resource_type="ACL_RESOURCE_TYPE_" + rtype.upper(),
            resource_name=self.resource_name,
            pattern="ACL_PATTERN_TYPE_" + ("PREFIX" if self.prefix else "LITERAL"))

    @classmethod
    def from_proto(cls, rule: admin_pb2.AclRule) -> Acl:
        return cls(rule.principal,
                   admin_pb2.AclOperation.Name(rule.operation).removeprefix(
                       "ACL_OPERATION_").lower(),
                   admin_pb2.AclResourceType.Name(rule.resource_type).removeprefix(
                       "ACL_RESOURCE_TYPE_").lower(),
                   rule.resource_name, rule.pattern == admin_pb2.ACL_PATTERN_TYPE_PREFIX)


@dataclass(frozen=True, slots=True)
class BrokerInfo:
    """One broker of `describe_cluster()`."""

    node_id: int
    #: host:port clients connect to.
    address: str
    #: The node answered a metadata call within the probe timeout.
    reachable: bool


@dataclass(frozen=True, slots=True)
class ClusterDescription:
    """What `describe_cluster()` found: brokers and, per topic, each partition's leader."""

    cluster_id: str
    brokers: tuple[BrokerInfo, ...]
    #: Topic name -> partitions in order; `leader_id` is -1 while a partition has no leader.
    topics: dict[str, tuple[PartitionInfo, ...]]

    def leaders_by_node(self) -> dict[int, int]:
        """How many partitions each node leads (nodes leading none included)."""
        out = {b.node_id: 0 for b in self.brokers}
        for parts in self.topics.values():
            for p in parts:
                if p.leader_id != NO_LEADER:
                    out[p.leader_id] = out.get(p.leader_id, 0) + 1
        return out

    def leaderless(self) -> list[tuple[str, int]]:
        """(topic, partition) of every partition without a leader right now."""
        return [(t, p.partition) for t, parts in self.topics.items() for p in parts
                if p.leader_id == NO_LEADER]


class Admin:
    """Create, delete, list and describe topics; read cluster metadata."""

    def __init__(self, bootstrap: str | Sequence[str] = "127.0.0.1:9091", *,
                 timeout: float = 10.0, credentials: Credentials | None = None) -> None:
        self._addresses = parse_bootstrap(bootstrap)
        self._metadata = ClusterMetadata(self._addresses)
        self._pool = ChannelPool(credentials)
        self.timeout = timeout

    async def __aenter__(self) -> Admin:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        await self._pool.close()

    async def _call(self, invoke: Callable[[grpc.aio.Channel], Awaitable[T]]) -> T:
        """Try each bootstrap address in turn while the failure is 'cannot connect'.

        A few rounds with short pauses (as for metadata) when connections are refused, so a
        node that is just restarting still answers; a call that timed out is not repeated.
        """
        last: Exception | None = None
        for round_no in range(METADATA_ROUNDS):
            if round_no:
                await asyncio.sleep(0.1 * 3 ** (round_no - 1))
            for addr in self._addresses:
                try:
                    return await invoke(self._pool.get(addr))
                except grpc.aio.AioRpcError as exc:
                    if exc.code() not in (grpc.StatusCode.UNAVAILABLE,
                                          grpc.StatusCode.DEADLINE_EXCEEDED):
                        raise from_rpc_error(exc) from exc
                    last = self._pool.diagnose(addr, exc) or exc
                    log.debug("admin call to %s failed: %s", addr, exc.details())
            if isinstance(last, grpc.aio.AioRpcError) and (
                    last.code() == grpc.StatusCode.DEADLINE_EXCEEDED):
                break  # a node that hangs would cost a whole deadline per round
        detail = (last.details() if isinstance(last, grpc.aio.AioRpcError)
                  else str(last) if last else "no address")
        cls = TLSError if isinstance(last, TLSError) else ClusterUnreachableError
        raise cls(f"cannot reach cluster at {','.join(self._addresses)}: {detail}")

    def _stub(self, ch: grpc.aio.Channel) -> Any:
        return make_stub(admin_pb2_grpc.AdminStub, ch)

    async def create_topic(self, name: str, partitions: int = 1, replication_factor: int = 1,
                           config: Mapping[str, str | int] | None = None,
                           ) -> admin_pb2.TopicDescription:
        request = admin_pb2.CreateTopicRequest(
            name=name, partitions=partitions, replication_factor=replication_factor,
            config=topic_config(config or {}))
        response: admin_pb2.CreateTopicResponse = await self._call(
            lambda ch: self._stub(ch).CreateTopic(request, timeout=self.timeout))
        return response.topic

    async def delete_topic(self, name: str) -> None:
        request = admin_pb2.DeleteTopicRequest(name=name)
        await self._call(lambda ch: self._stub(ch).DeleteTopic(request, timeout=self.timeout))

    async def list_topics(self) -> list[admin_pb2.TopicSummary]:
        response: admin_pb2.ListTopicsResponse = await self._call(
            lambda ch: self._stub(ch).ListTopics(admin_pb2.ListTopicsRequest(),
                                                 timeout=self.timeout))
        return list(response.topics)

    async def describe_topic(self, name: str) -> admin_pb2.TopicDescription:
        request = admin_pb2.DescribeTopicRequest(name=name)
        response: admin_pb2.DescribeTopicResponse = await self._call(
            lambda ch: self._stub(ch).DescribeTopic(request, timeout=self.timeout))
        return response.topic

    # -- consumer groups

    async def list_groups(self) -> list[groups_pb2.GroupSummary]:
        """Every group the cluster knows: name, state (stable, rebalancing, empty), members."""
        response: groups_pb2.ListGroupsResponse = await self._call(
            lambda ch: self._stub(ch).ListGroups(groups_pb2.ListGroupsRequest(),
                                                 timeout=self.timeout))
        return sorted(response.groups, key=lambda g: g.group)

    async def describe_group(self, group: str) -> groups_pb2.DescribeGroupResponse:
        """Members, assignment, generation and, per partition, committed offset and lag
        (offsets, and milliseconds: the age of the oldest unconsumed record)."""
        request = groups_pb2.DescribeGroupRequest(group=group)
        response: groups_pb2.DescribeGroupResponse = await self._call(
            lambda ch: self._stub(ch).DescribeGroup(request, timeout=self.timeout))
        return response

    async def reset_group_offsets(
        self, group: str, topic: str, to: common_pb2.Position,
        partitions: Sequence[int] = (), *, dry_run: bool = False,
    ) -> list[groups_pb2.CommittedPartitionOffset]:
        """Move a group's committed offsets (to earliest, latest, an offset or a time; build
        `to` with `rillet.client.consumer.to_position`). Only while the group has no members
        (GroupNotEmptyError otherwise); `dry_run` returns the offsets without storing them."""
        request = groups_pb2.ResetGroupOffsetsRequest(
            group=group, topic=topic, partitions=list(partitions), to=to, dry_run=dry_run)
        response: groups_pb2.ResetGroupOffsetsResponse = await self._call(
            lambda ch: self._stub(ch).ResetGroupOffsets(request, timeout=self.timeout))
        return sorted(response.offsets, key=lambda o: (o.topic, o.partition))

    async def delete_group(self, group: str) -> None:
        """Forget a group and its offsets; GroupNotEmptyError while it has members."""
        request = groups_pb2.DeleteGroupRequest(group=group)
        await self._call(lambda ch: self._stub(ch).DeleteGroup(request, timeout=self.timeout))

    async def describe_cluster(self, *, probe_timeout_s: float = 1.0) -> ClusterDescription:
        """Brokers, whether each answers, and every partition's leader and replicas.

        Metadata comes from any node (GetMetadata); then each broker is asked for metadata
        itself, in parallel, with `probe_timeout_s`, so a node that is down or hung shows as
        unreachable instead of failing the call (for `rillet cluster status`).
        """
        response = await fetch_metadata(self._pool, self._metadata, timeout_s=self.timeout)

        async def probe(address: str) -> bool:
            stub = make_stub(admin_pb2_grpc.MetadataStub, self._pool.get(address))
            try:
                await stub.GetMetadata(admin_pb2.MetadataRequest(topics=["\x00probe"]),
                                       timeout=probe_timeout_s)
            except grpc.aio.AioRpcError as exc:
                # An answer that is an error (no such topic) still proves the node serves.
                return exc.code() not in (grpc.StatusCode.UNAVAILABLE,
                                          grpc.StatusCode.DEADLINE_EXCEEDED)
            return True

        brokers = sorted(response.brokers, key=lambda b: b.node_id)
        alive = await asyncio.gather(*(probe(b.address) for b in brokers))
        topics = {
            tm.name: tuple(sorted(
                (PartitionInfo(tm.name, p.partition, p.leader_id, tuple(p.replicas))
                 for p in tm.partitions), key=lambda p: p.partition))
            for tm in response.topics}
        return ClusterDescription(
            cluster_id=response.cluster_id,
            brokers=tuple(BrokerInfo(b.node_id, b.address, ok)
                          for b, ok in zip(brokers, alive, strict=True)),
            topics=dict(sorted(topics.items())))

    # -- access control (needs cluster_admin on the cluster, or a super user)

    async def add_acl(self, acl: Acl) -> bool:
        """Add an allow rule; False when it existed already. Applies on every node once the
        call returns on this one (replicated through the metadata group)."""
        request = admin_pb2.AddAclRequest(rule=acl.to_proto())
        response: admin_pb2.AddAclResponse = await self._call(
            lambda ch: self._stub(ch).AddAcl(request, timeout=self.timeout))
        return response.added

    async def remove_acl(self, acl: Acl) -> bool:
        """Remove the rule with exactly these fields; False when there was none."""
        request = admin_pb2.RemoveAclRequest(rule=acl.to_proto())
        response: admin_pb2.RemoveAclResponse = await self._call(
            lambda ch: self._stub(ch).RemoveAcl(request, timeout=self.timeout))
        return response.removed

    async def list_acls(self, principal: str = "", resource_type: str = "",
                        resource_name: str = "") -> list[Acl]:
        """Rules, optionally only a principal's, a resource type's, or those that concern
        one resource (rules naming it and prefixes covering it)."""
        rtype = resource_type.strip().lower()
        if rtype and rtype not in ACL_RESOURCE_TYPES:
            raise InvalidConfigError(f"unknown ACL resource type {resource_type!r}; known: "
                                     f"{', '.join(ACL_RESOURCE_TYPES)}")
        request = admin_pb2.ListAclsRequest(
            principal=principal, resource_name=resource_name,
            resource_type="ACL_RESOURCE_TYPE_" + (rtype.upper() or "UNSPECIFIED"))
        response: admin_pb2.ListAclsResponse = await self._call(
            lambda ch: self._stub(ch).ListAcls(request, timeout=self.timeout))
        return [Acl.from_proto(r) for r in response.rules]

    async def metadata(self, topics: Sequence[str] = ()) -> ClusterMetadata:
        """Fetch metadata into the cached ClusterMetadata and return it."""
        await fetch_metadata(self._pool, self._metadata, topics, timeout_s=self.timeout)
        return self._metadata
