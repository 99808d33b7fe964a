"""Admin (topic management) and Metadata (who leads what) for a single node.

On one node every partition's leader is this node and its only replica. Failures end the call
with the status from the errors table; the message says what was wrong.
"""

from __future__ import annotations

import logging

from rillet.api.v1 import admin_pb2, admin_pb2_grpc
from rillet.node import errors
from rillet.node.errors import Context
from rillet.node.services.common import NodeContext
from rillet.node.topics import Topic

log = logging.getLogger(__name__)

_OPTIONAL_SETTINGS = ("retention_ms", "retention_bytes", "segment_bytes", "segment_ms")


def _overrides(config: admin_pb2.TopicConfig) -> dict[str, int]:
    out = {name: getattr(config, name) for name in _OPTIONAL_SETTINGS if config.HasField(name)}
    if config.cleanup_policy != admin_pb2.CLEANUP_POLICY_UNSPECIFIED:
        out["cleanup_policy"] = config.cleanup_policy
    return out


def describe_topic(topic: Topic, node_id: int) -> admin_pb2.TopicDescription:
    s = topic.settings
    return admin_pb2.TopicDescription(
        name=topic.name, replication_factor=topic.replication_factor,
        config=admin_pb2.TopicConfig(
            retention_ms=s.retention_ms, retention_bytes=s.retention_bytes,
            segment_bytes=s.segment_bytes, segment_ms=s.segment_ms,
            cleanup_policy=s.cleanup_policy),  # type: ignore[arg-type]
        partitions=[
            admin_pb2.PartitionDescription(
                partition=p.index, leader_id=node_id, replicas=[node_id],
                log_start_offset=p.log.log_start_offset, high_watermark=p.high_watermark,
                size_bytes=p.log.size_bytes)
            for p in topic.partitions])


class AdminService(admin_pb2_grpc.AdminServicer):
    def __init__(self, node: NodeContext) -> None:
        self.node = node

    async def CreateTopic(
        self, request: admin_pb2.CreateTopicRequest, context: Context
    ) -> admin_pb2.CreateTopicResponse:
        try:
            topic = await self.node.registry.create(
                request.name, request.partitions, request.replication_factor,
                _overrides(request.config))
            return admin_pb2.CreateTopicResponse(
                topic=describe_topic(topic, self.node.config.node_id))
        except Exception as exc:
            await errors.abort(context, exc, where=f"create topic {request.name!r}")

    async def DeleteTopic(
        self, request: admin_pb2.DeleteTopicRequest, context: Context
    ) -> admin_pb2.DeleteTopicResponse:
        try:
            await self.node.registry.delete(request.name)
            return admin_pb2.DeleteTopicResponse()
        except Exception as exc:
            await errors.abort(context, exc, where=f"delete topic {request.name!r}")

    async def ListTopics(
        self, request: admin_pb2.ListTopicsRequest, context: Context
    ) -> admin_pb2.ListTopicsResponse:
        return admin_pb2.ListTopicsResponse(topics=[
            admin_pb2.TopicSummary(name=t.name, partitions=len(t.partitions),
                                   replication_factor=t.replication_factor)
            for t in self.node.registry.topics()])

    async def DescribeTopic(
        self, request: admin_pb2.DescribeTopicRequest, context: Context
    ) -> admin_pb2.DescribeTopicResponse:
        try:
            topic = self.node.registry.get(request.name)
            return admin_pb2.DescribeTopicResponse(
                topic=describe_topic(topic, self.node.config.node_id))
        except Exception as exc:
            await errors.abort(context, exc, where=f"describe topic {request.name!r}")


class MetadataService(admin_pb2_grpc.MetadataServicer):
    def __init__(self, node: NodeContext) -> None:
        self.node = node

    async def GetMetadata(
        self, request: admin_pb2.MetadataRequest, context: Context
    ) -> admin_pb2.MetadataResponse:
        node_id = self.node.config.node_id
        try:
            registry = self.node.registry
            topics = ([registry.get(name) for name in request.topics] if request.topics
                      else registry.topics())
        except Exception as exc:
            await errors.abort(context, exc, where="metadata")
        return admin_pb2.MetadataResponse(
            cluster_id=self.node.config.cluster_id,
            brokers=[admin_pb2.Broker(node_id=node_id, address=self.node.config.address)],
            topics=[
                admin_pb2.TopicMetadata(name=t.name, partitions=[
                    admin_pb2.PartitionMetadata(partition=p.index, leader_id=node_id,
                                                replicas=[node_id])
                    for p in t.partitions])
                for t in topics])
