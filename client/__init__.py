"""The Python client: producer, consumer (alone or in a group), replay, admin, table (asyncio;
blocking wrappers in .sync)."""

from rillet.client.accumulator import ChunkAck, RecordFuture, RecordMetadata
from rillet.client.admin import Acl, Admin, BrokerInfo, ClusterDescription
from rillet.client.connection import Credentials
from rillet.client.consumer import Consumer, Replay, Timestamp
from rillet.client.errors import (
    AuthenticationError,
    AuthorizationError,
    RilletError,
    TLSError,
)
from rillet.client.group import GroupConsumer, TopicPartition
from rillet.client.metadata import ClusterMetadata
from rillet.client.producer import Producer
from rillet.client.records import ConsumerRecord, RecordBatch
from rillet.client.table import SyncTable, Table

__all__ = [
    "Acl", "Admin", "AuthenticationError", "AuthorizationError", "BrokerInfo", "ChunkAck",
    "ClusterDescription", "ClusterMetadata", "Consumer", "ConsumerRecord", "Credentials",
    "GroupConsumer", "Producer", "RecordBatch", "RecordFuture", "RecordMetadata", "Replay",
    "RilletError", "SyncTable", "TLSError", "Table", "Timestamp", "TopicPartition",
]
