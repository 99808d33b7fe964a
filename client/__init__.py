"""The Python client: producer, consumer, replay, admin (asyncio; blocking wrappers in .sync)."""

from rillet.client.accumulator import ChunkAck, RecordFuture, RecordMetadata
from rillet.client.admin import Admin, BrokerInfo, ClusterDescription
from rillet.client.consumer import Consumer, Replay, Timestamp
from rillet.client.errors import RilletError
from rillet.client.metadata import ClusterMetadata
from rillet.client.producer import Producer
from rillet.client.records import ConsumerRecord, RecordBatch

__all__ = [
    "Admin", "BrokerInfo", "ChunkAck", "ClusterDescription", "ClusterMetadata", "Consumer",
    "ConsumerRecord", "Producer", "RecordBatch", "RecordFuture", "RecordMetadata", "Replay",
    "RilletError", "Timestamp",
]
