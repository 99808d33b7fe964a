"""What every servicer of a node shares: settings, the cluster node, the shutdown signal,
and the small read helpers that Consume and Replay both use."""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass, field

from rillet.api.v1 import common_pb2
from rillet.batch import RECORD_COUNT_FIELD
from rillet.node.cluster_node import ClusterNode, ClusterTopic
from rillet.node.config import BrokerConfig
from rillet.node.errors import InvalidRequestError, OffsetOutOfRangeError
from rillet.node.metrics import NodeMetrics
from rillet.node.replica import ReplicatedPartition
from rillet.node.security.authz import Authorizer, MetadataAclStore, parse_names

DEFAULT_MAX_BYTES = 1024 * 1024
DEFAULT_MAX_WAIT_MS = 5000
MAX_WAIT_MS_LIMIT = 60_000

# base_offset (int64) and batch_length (int32) at the start of every batch; record_count at 35
# (records.proto; 0 for a control batch, which occupies no offsets).
_PREFIX = struct.Struct("<qi")
_COUNT = struct.Struct("<i")
_COUNT_AT = RECORD_COUNT_FIELD


@dataclass
class NodeContext:
    """The node as the servicers see it."""

    config: BrokerConfig
    # Topics come from the metadata group, partitions are Raft groups (a lone node is a
    # cluster of one).
    cluster: ClusterNode
    # Set when the node starts shutting down: open streams end with UNAVAILABLE.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    metrics: NodeMetrics = field(default_factory=NodeMetrics)
    # Who may do what (node/security/authz.py); built from `config` when not given. Rules
    # live in the metadata group.
    authorizer: Authorizer = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.authorizer is None:
            self.authorizer = Authorizer(self.config.acl, parse_names(self.config.super_users),
                                         MetadataAclStore(self.cluster))

    def get_topic(self, name: str) -> ClusterTopic:
        """The topic as this node serves it (UnknownTopicError / InvalidTopicError)."""
        return self.cluster.get_topic(name)


def clamp_max_bytes(requested: int, limit: int) -> int:
    """The response size to aim for: the default when unset, never above the node's limit."""
    return min(requested or DEFAULT_MAX_BYTES, limit)


def batches_end(data: bytes, end_offset: int | None = None) -> tuple[int, int]:
    """Walk the headers of concatenated stored batches: (bytes to keep, next offset).

    With `end_offset`, stops after the first batch that reaches it, so a bounded read never
    sends batches lying wholly past its end. Storage already verified these bytes; this reads
    only the length and count fields of each header.
    """
    pos = 0
    next_offset = -1
    size = len(data)
    while pos < size:
        base, length = _PREFIX.unpack_from(data, pos)
        next_offset = base + _COUNT.unpack_from(data, pos + _COUNT_AT)[0]
        pos += length + 12
        if end_offset is not None and next_offset >= end_offset:
            break
    return pos, next_offset


def resolve_position(part: ReplicatedPartition, position: common_pb2.Position,
                     default: int) -> int:
    """The offset a read starts from; OUT_OF_RANGE names the valid range for a bad offset."""
    kind = position.WhichOneof("kind")
    plog = part.log
    if kind == "offset":
        offset = position.offset
        start, end = plog.log_start_offset, plog.log_end_offset
        if not start <= offset <= end:
            raise OffsetOutOfRangeError(
                f"offset {offset} is out of range for partition {part.name}: "
                f"valid offsets are {start} to {end}")
        return offset
    if kind == "timestamp_ms":
        found = plog.offset_for_timestamp(position.timestamp_ms)
        return plog.log_end_offset if found is None else max(found, plog.log_start_offset)
    boundary: int = position.boundary if kind == "boundary" else common_pb2.BOUNDARY_UNSPECIFIED
    if boundary == common_pb2.BOUNDARY_UNSPECIFIED:
        boundary = default
    if boundary == common_pb2.BOUNDARY_EARLIEST:
        return plog.log_start_offset
    if boundary == common_pb2.BOUNDARY_LATEST:
        return part.high_watermark
    raise InvalidRequestError(f"unknown position boundary {boundary}")
