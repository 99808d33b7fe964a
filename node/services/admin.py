"""Admin (topic and consumer-group management) and Metadata (who leads what).

Changes (create, delete, producer ids) run on the metadata group's leader (a lone node is a
cluster of one and its own leader): any node accepts
them and forwards them there, then waits (bounded) until its own view shows the change, so a
client that asks the same node next sees what it just did. Failures end the call with the
status from the errors table; the message says what was wrong.

Group calls run on the group coordinator (see node/services/groups.py), where members and
generations are known; other nodes forward them there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import grpc

from rillet.api.v1 import admin_pb2, admin_pb2_grpc, common_pb2, groups_pb2
from rillet.node import errors
from rillet.node.cluster_node import ClusterNode, ClusterTopic, wait_until
from rillet.node.errors import Context, UnavailableError
from rillet.node.forward import FORWARDED_METADATA
from rillet.node.security.acl import AclError, AclRule, Operation, PatternType, ResourceType
from rillet.node.security.acl import filter_rules as filter_acls
from rillet.node.security.principal import current as current_principal
from rillet.node.services import groups as gs
from rillet.node.services.common import NodeContext
from rillet.node.topics import TopicSettings

FORWARD_TIMEOUT_S = 30.0
VIEW_WAIT_S = 10.0

log = logging.getLogger(__name__)

_OPTIONAL_SETTINGS = ("retention_ms", "retention_bytes", "segment_bytes", "segment_ms",
                      "delete_retention_ms")


def _overrides(config: admin_pb2.TopicConfig) -> dict[str, int]:
    out = {name: getattr(config, name) for name in _OPTIONAL_SETTINGS if config.HasField(name)}
    if config.cleanup_policy != admin_pb2.CLEANUP_POLICY_UNSPECIFIED:
        out["cleanup_policy"] = config.cleanup_policy
    return out


def _config(s: TopicSettings) -> admin_pb2.TopicConfig:
    return admin_pb2.TopicConfig(
        retention_ms=s.retention_ms, retention_bytes=s.retention_bytes,
        segment_bytes=s.segment_bytes, segment_ms=s.segment_ms,
        delete_retention_ms=s.delete_retention_ms,
        cleanup_policy=s.cleanup_policy)  # type: ignore[arg-type]


def describe_cluster_topic(cluster: ClusterNode, topic: ClusterTopic
                           ) -> admin_pb2.TopicDescription:
    """A topic as this node knows it: leaders as its replicas see them, sizes and offsets of
    its own replicas (zero for partitions it holds none of)."""
    parts = []
    for i, info in enumerate(topic.info.partitions):
        rep = topic.replicas[i]
        parts.append(admin_pb2.PartitionDescription(
            partition=i, leader_id=cluster.leader_of(topic, i), replicas=list(info.replicas),
            log_start_offset=rep.log.log_start_offset if rep is not None else 0,
            high_watermark=rep.high_watermark if rep is not None else 0,
            size_bytes=rep.log.size_bytes if rep is not None else 0))
    return admin_pb2.TopicDescription(
        name=topic.name, replication_factor=topic.replication_factor,
        config=_config(topic.settings), partitions=parts)


async def _wait_view(cluster: ClusterNode, name: str, *, exists: bool) -> None:
    """Wait (bounded) until this node's metadata shows topic `name` (or its absence), and
    its local replicas of it have leaders."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + VIEW_WAIT_S
    await wait_until(lambda: (name in cluster.topics) == exists, VIEW_WAIT_S)
    if exists:
        await cluster.wait_leaders(name, max(0.0, deadline - loop.time()))


_TOPIC, _GROUP, _CLUSTER = ResourceType.TOPIC, ResourceType.GROUP, ResourceType.CLUSTER


def rule_from_proto(rule: admin_pb2.AclRule) -> AclRule:
    """An AclRule from its wire form; InvalidRequestError says which field is wrong."""
    try:
        if not rule.operation:
            raise AclError("the rule needs an operation")
        if not rule.resource_type:
            raise AclError("the rule needs a resource type (topic, group or cluster)")
        return AclRule.parse(
            rule.principal,
            admin_pb2.AclOperation.Name(rule.operation).removeprefix("ACL_OPERATION_"),
            admin_pb2.AclResourceType.Name(rule.resource_type).removeprefix(
                "ACL_RESOURCE_TYPE_"),
            rule.resource_name,
            PatternType.PREFIX if rule.pattern == admin_pb2.ACL_PATTERN_TYPE_PREFIX
            else PatternType.LITERAL)
    except (AclError, ValueError) as exc:
        raise errors.InvalidRequestError(f"bad ACL rule: {exc}") from None


def rule_to_proto(rule: AclRule) -> admin_pb2.AclRule:
    return admin_pb2.AclRule(
        principal=rule.principal,
        operation="ACL_OPERATION_" + rule.operation.value.upper(),
        resource_type="ACL_RESOURCE_TYPE_" + rule.resource_type.value.upper(),
        resource_name=rule.resource_name,
        pattern="ACL_PATTERN_TYPE_" + rule.pattern.value.upper())


class AdminService(admin_pb2_grpc.AdminServicer):
    def __init__(self, node: NodeContext, groups: gs.GroupsHost | None = None) -> None:
        self.node = node
        self.groups = groups

    async def CreateTopic(
        self, request: admin_pb2.CreateTopicRequest, context: Context
    ) -> admin_pb2.CreateTopicResponse:
        cluster = self.node.cluster
        try:
            self.node.authorizer.require(Operation.CREATE, _TOPIC, request.name)
        except Exception as exc:
            await errors.abort(context, exc, where=f"create topic {request.name!r}")
        try:
            async def local() -> None:
                await cluster.create_topic(request.name, request.partitions,
                                           request.replication_factor,
                                           _overrides(request.config))

            async def forward(ch: grpc.aio.Channel) -> None:
                await admin_pb2_grpc.AdminStub(ch).CreateTopic(  # type: ignore[no-untyped-call]
                    request, timeout=FORWARD_TIMEOUT_S)

            await cluster.on_metadata_leader(local, forward)
            await _wait_view(cluster, request.name, exists=True)
            return admin_pb2.CreateTopicResponse(
                topic=describe_cluster_topic(cluster, cluster.get_topic(request.name)))
        except Exception as exc:
            await errors.abort(context, exc, where=f"create topic {request.name!r}")

    async def DeleteTopic(
        self, request: admin_pb2.DeleteTopicRequest, context: Context
    ) -> admin_pb2.DeleteTopicResponse:
        cluster = self.node.cluster
        try:
            self.node.authorizer.require(Operation.DELETE, _TOPIC, request.name)
        except Exception as exc:
            await errors.abort(context, exc, where=f"delete topic {request.name!r}")
        try:
            async def local() -> None:
                await cluster.delete_topic(request.name)

            async def forward(ch: grpc.aio.Channel) -> None:
                await admin_pb2_grpc.AdminStub(ch).DeleteTopic(  # type: ignore[no-untyped-call]
                    request, timeout=FORWARD_TIMEOUT_S)

            await cluster.on_metadata_leader(local, forward)
            await _wait_view(cluster, request.name, exists=False)
            return admin_pb2.DeleteTopicResponse()
        except Exception as exc:
            await errors.abort(context, exc, where=f"delete topic {request.name!r}")

    async def ListTopics(
        self, request: admin_pb2.ListTopicsRequest, context: Context
    ) -> admin_pb2.ListTopicsResponse:
        cluster = self.node.cluster
        # Only the topics the principal may describe (as Kafka does).
        may = self.node.authorizer.allowed
        return admin_pb2.ListTopicsResponse(topics=[
            admin_pb2.TopicSummary(name=t.name, partitions=len(t.replicas),
                                   replication_factor=t.replication_factor)
            for t in cluster.topic_list() if may(Operation.DESCRIBE, _TOPIC, t.name)])

    async def DescribeTopic(
        self, request: admin_pb2.DescribeTopicRequest, context: Context
    ) -> admin_pb2.DescribeTopicResponse:
        try:
            self.node.authorizer.require(Operation.DESCRIBE, _TOPIC, request.name)
            cluster = self.node.cluster
            return admin_pb2.DescribeTopicResponse(
                topic=describe_cluster_topic(cluster, cluster.get_topic(request.name)))
        except Exception as exc:
            await errors.abort(context, exc, where=f"describe topic {request.name!r}")

    # -- consumer groups --------------------------------------------------------------------

    async def _require(self, context: Context, op: Operation, rtype: ResourceType,
                       name: str = "") -> None:
        """Authorize, or end the call with PERMISSION_DENIED."""
        try:
            self.node.authorizer.require(op, rtype, name)
        except Exception as exc:
            await errors.abort(context, exc, where=f"{op.value} {rtype.value} {name!r}")

    # -- access control -----------------------------------------------------------------------

    async def _acl_change(self, context: Context, request: Any, add: bool) -> bool:
        """Add or remove one rule through the metadata leader, then wait (bounded) until this
        node applied it, so a check here right after sees it. True when something changed."""
        await self._require(context, Operation.CLUSTER_ADMIN, _CLUSTER)
        method = "AddAcl" if add else "RemoveAcl"
        try:
            rule = rule_from_proto(request.rule)
            store = self.node.authorizer.store
            cluster = self.node.cluster

            async def local() -> bool:
                return await (store.add(rule) if add else store.remove(rule))

            async def forward(ch: grpc.aio.Channel) -> bool:
                stub = admin_pb2_grpc.AdminStub(ch)  # type: ignore[no-untyped-call]
                resp = await getattr(stub, method)(request, timeout=FORWARD_TIMEOUT_S)
                return bool(resp.added if add else resp.removed)

            changed: bool = await cluster.on_metadata_leader(local, forward)
            await wait_until(lambda: (rule in store.rules()) == add, VIEW_WAIT_S)
            if changed:
                log.info("ACL %s: %s", "added" if add else "removed", rule.describe())
            return changed
        except Exception as exc:
            await errors.abort(context, exc, where=f"{method}")

    async def AddAcl(self, request: admin_pb2.AddAclRequest,
                     context: Context) -> admin_pb2.AddAclResponse:
        added = await self._acl_change(context, request, add=True)
        return admin_pb2.AddAclResponse(added=added)

    async def RemoveAcl(self, request: admin_pb2.RemoveAclRequest,
                        context: Context) -> admin_pb2.RemoveAclResponse:
        removed = await self._acl_change(context, request, add=False)
        return admin_pb2.RemoveAclResponse(removed=removed)

    async def ListAcls(self, request: admin_pb2.ListAclsRequest,
                       context: Context) -> admin_pb2.ListAclsResponse:
        await self._require(context, Operation.CLUSTER_ADMIN, _CLUSTER)
        try:
            rtype = (None if not request.resource_type else ResourceType(
                admin_pb2.AclResourceType.Name(request.resource_type).removeprefix(
                    "ACL_RESOURCE_TYPE_").lower()))
        except ValueError as exc:
            await errors.abort(context, errors.InvalidRequestError(
                f"unknown resource type {request.resource_type}: {exc}"))
        rules = filter_acls(self.node.authorizer.store.rules(), request.principal, rtype,
                            request.resource_name)
        return admin_pb2.ListAclsResponse(rules=[rule_to_proto(r) for r in rules])

    def _host(self) -> gs.GroupsHost:
        if self.groups is None:
            raise UnavailableError("this node serves no consumer groups")
        return self.groups

    async def _on_coordinator(self, context: Context, local: Any, method: str,
                              request: Any, where: str) -> Any:
        """Run `local` on the group coordinator (here, or the same Admin call passed on to
        it); any failure ends the call with its status."""
        async def forward(ch: grpc.aio.Channel) -> Any:
            stub = admin_pb2_grpc.AdminStub(ch)  # type: ignore[no-untyped-call]
            return await getattr(stub, method)(
                request, timeout=FORWARD_TIMEOUT_S, metadata=FORWARDED_METADATA)
        try:
            return await self._host().on_coordinator(context, local, forward)
        except Exception as exc:
            await errors.abort(context, exc, where=where)

    async def ListGroups(
        self, request: groups_pb2.ListGroupsRequest, context: Context
    ) -> groups_pb2.ListGroupsResponse:
        async def local(rt: gs.GroupRuntime) -> groups_pb2.ListGroupsResponse:
            return gs.list_groups(rt)
        resp: groups_pb2.ListGroupsResponse = await self._on_coordinator(
            context, local, "ListGroups", request, where="list groups")
        # Only the groups the principal may describe; filtered here, where the client called.
        may = self.node.authorizer.allowed
        return groups_pb2.ListGroupsResponse(
            groups=[g for g in resp.groups if may(Operation.DESCRIBE, _GROUP, g.group)])

    async def DescribeGroup(
        self, request: groups_pb2.DescribeGroupRequest, context: Context
    ) -> groups_pb2.DescribeGroupResponse:
        async def local(rt: gs.GroupRuntime) -> groups_pb2.DescribeGroupResponse:
            gs.known_group(rt, request.group)
            return await self._host().describe(rt, request.group)
        await self._require(context, Operation.DESCRIBE, _GROUP, request.group)
        resp: groups_pb2.DescribeGroupResponse = await self._on_coordinator(
            context, local, "DescribeGroup", request, where=f"describe group {request.group!r}")
        return resp

    def _reset_target(self, topic: str, index: int, to: common_pb2.Position) -> int:
        ends = self._host().ends(topic, index)
        if ends is None:
            raise UnavailableError(f"the coordinator holds no replica of {topic}-{index}; "
                                   "it cannot resolve the position")
        part: Any = self.node.cluster.get_topic(topic).replicas[index]
        kind = to.WhichOneof("kind")
        if kind == "offset":
            return min(max(to.offset, ends.log_start), ends.high_watermark)
        if kind == "timestamp_ms":
            found = part.log.offset_for_timestamp(to.timestamp_ms)
            return ends.high_watermark if found is None else min(
                max(found, ends.log_start), ends.high_watermark)
        if kind == "boundary" and to.boundary == common_pb2.BOUNDARY_EARLIEST:
            return ends.log_start
        if kind == "boundary" and to.boundary == common_pb2.BOUNDARY_LATEST:
            return ends.high_watermark
        raise errors.InvalidRequestError(
            "reset position must be earliest, latest, an offset or a timestamp")

    async def ResetGroupOffsets(
        self, request: groups_pb2.ResetGroupOffsetsRequest, context: Context
    ) -> groups_pb2.ResetGroupOffsetsResponse:
        async def local(rt: gs.GroupRuntime) -> groups_pb2.ResetGroupOffsetsResponse:
            gs.validate_group(request.group, rt.coordinator.max_name_length)
            gs.ensure_empty(rt, request.group)
            count = self._host().partitions_of(request.topic)
            if count is None:
                self.node.get_topic(request.topic)  # raises the precise error
                raise errors.UnknownTopicError(f"unknown topic {request.topic!r}")
            indexes = sorted(set(request.partitions)) or list(range(count))
            for p in indexes:
                if p >= count:
                    raise errors.PartitionOutOfRangeError(
                        f"partition {p} of topic {request.topic!r} does not exist "
                        f"(it has {count})")
            new = {(request.topic, p): (self._reset_target(request.topic, p, request.to), "")
                   for p in indexes}
            now_ms = int(time.time() * 1000)
            if not request.dry_run:
                await gs.commit_checked(rt, request.group, "", -1, new)
            return groups_pb2.ResetGroupOffsetsResponse(offsets=[
                groups_pb2.CommittedPartitionOffset(
                    topic=t, partition=p, offset=o,
                    commit_time_ms=0 if request.dry_run else now_ms)
                for (t, p), (o, _m) in sorted(new.items())])
        await self._require(context, Operation.ALTER, _GROUP, request.group)
        await self._require(context, Operation.DESCRIBE, _TOPIC, request.topic)
        resp: groups_pb2.ResetGroupOffsetsResponse = await self._on_coordinator(
            context, local, "ResetGroupOffsets", request,
            where=f"reset offsets of {request.group!r}")
        return resp

    async def DeleteGroup(
        self, request: groups_pb2.DeleteGroupRequest, context: Context
    ) -> groups_pb2.DeleteGroupResponse:
        async def local(rt: gs.GroupRuntime) -> groups_pb2.DeleteGroupResponse:
            gs.validate_group(request.group, rt.coordinator.max_name_length)
            async with rt.lock:
                gs.ensure_empty(rt, request.group)
                await rt.store.delete(request.group)
            self.node.metrics.forget_group(request.group)
            return groups_pb2.DeleteGroupResponse()
        await self._require(context, Operation.DELETE, _GROUP, request.group)
        resp: groups_pb2.DeleteGroupResponse = await self._on_coordinator(
            context, local, "DeleteGroup", request, where=f"delete group {request.group!r}")
        return resp


class MetadataService(admin_pb2_grpc.MetadataServicer):
    def __init__(self, node: NodeContext) -> None:
        self.node = node

    async def GetMetadata(
        self, request: admin_pb2.MetadataRequest, context: Context
    ) -> admin_pb2.MetadataResponse:
        cluster = self.node.cluster
        # Named topics: each must be describable (checked before the lookup, so a denied
        # principal does not learn which exist); all topics: those it may describe.
        authz = self.node.authorizer
        try:
            for name in request.topics:
                authz.require(Operation.DESCRIBE, _TOPIC, name)
        except Exception as exc:
            await errors.abort(context, exc, where="metadata")
        try:
            ctopics = ([cluster.get_topic(name) for name in request.topics]
                       if request.topics else [
                           t for t in cluster.topic_list()
                           if authz.allowed(Operation.DESCRIBE, _TOPIC, t.name)])
        except Exception as exc:
            await errors.abort(context, exc, where="metadata")
        return admin_pb2.MetadataResponse(
            cluster_id=self.node.config.cluster_id,
            metadata_leader_id=cluster.metadata_leader(),
            brokers=[admin_pb2.Broker(node_id=b, address=a) for b, a in cluster.brokers()],
            topics=[
                admin_pb2.TopicMetadata(name=t.name, partitions=[
                    admin_pb2.PartitionMetadata(
                        partition=i, leader_id=cluster.leader_of(t, i),
                        replicas=list(info.replicas))
                    for i, info in enumerate(t.info.partitions)])
                for t in ctopics])

    async def InitProducer(
        self, request: admin_pb2.InitProducerRequest, context: Context
    ) -> admin_pb2.InitProducerResponse:
        try:
            # A producer id is for a principal that may produce to some topic (decision 0710).
            if not self.node.authorizer.allowed_any(Operation.PRODUCE, _TOPIC):
                raise errors.PermissionDeniedError(
                    f"principal {current_principal().name!r} may not init a producer "
                    "(no ACL allows operation produce on any topic)")
            cluster = self.node.cluster

            async def local() -> int:
                return await cluster.allocate_producer_id()

            async def forward(ch: grpc.aio.Channel) -> int:
                resp = await admin_pb2_grpc.MetadataStub(ch).InitProducer(  # type: ignore[no-untyped-call]
                    request, timeout=FORWARD_TIMEOUT_S)
                return int(resp.producer_id)

            pid = await cluster.on_metadata_leader(local, forward)
            return admin_pb2.InitProducerResponse(producer_id=pid, producer_epoch=0)
        except Exception as exc:
            await errors.abort(context, exc, where="init producer")
