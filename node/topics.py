"""What a topic is on every node: its name rule, its settings, the signal its readers wait on.

Which topics exist lives in the metadata group (cluster/metadata.py); the partitions are Raft
groups (node/replica.py), on one node as on many.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from rillet.node.config import BrokerConfig
from rillet.node.errors import (
    InvalidConfigError,
    InvalidTopicError,
    PartitionOutOfRangeError,
    UnknownTopicError,
)
from rillet.node.storage.log import (
    CLEANUP_COMPACT,
    CLEANUP_COMPACT_DELETE,
    CLEANUP_DELETE,
    LogConfig,
)

log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"[a-zA-Z0-9._-]{1,249}")



def validate_name(name: str) -> None:
    """Raise InvalidTopicError unless `name` is 1-249 of [a-zA-Z0-9._-] and not "." or ".."."""
    if not name:
        raise InvalidTopicError("topic name must not be empty")
    if name in (".", ".."):
        raise InvalidTopicError(f"topic name {name!r} is not allowed")
    if len(name) > 249:
        raise InvalidTopicError(f"topic name is {len(name)} characters long; the limit is 249")
    if not _NAME_RE.fullmatch(name):
        raise InvalidTopicError(
            f"topic name {name!r} may only contain letters, digits, '.', '_' and '-'")


@dataclass(frozen=True)
class TopicSettings:
    """Effective settings of a topic (broker defaults filled in). Units are in the names."""

    retention_ms: int
    retention_bytes: int
    segment_bytes: int
    segment_ms: int
    cleanup_policy: int = CLEANUP_DELETE
    delete_retention_ms: int = 86_400_000

    @classmethod
    def defaults(cls, config: BrokerConfig) -> TopicSettings:
        return cls(retention_ms=config.retention_ms, retention_bytes=config.retention_bytes,
                   segment_bytes=config.segment_bytes, segment_ms=config.segment_ms)

    def with_overrides(self, overrides: Mapping[str, int]) -> TopicSettings:
        """These settings with some replaced, each checked; InvalidConfigError names the bad one."""
        unknown = set(overrides) - {"retention_ms", "retention_bytes", "segment_bytes",
                                    "segment_ms", "cleanup_policy", "delete_retention_ms"}
        if unknown:
            raise InvalidConfigError(f"unknown topic settings: {', '.join(sorted(unknown))}")
        out = replace(self, **dict(overrides))
        out.check()
        return out

    def check(self) -> None:
        for name in ("retention_ms", "retention_bytes"):
            value = getattr(self, name)
            if value != -1 and value < 1:
                raise InvalidConfigError(
                    f"{name.replace('_', '.')} must be -1 (no limit) or at least 1, got {value}")
        if not 4096 <= self.segment_bytes <= 2**31 - 1:
            raise InvalidConfigError(
                f"segment.bytes must be in [4096, {2**31 - 1}], got {self.segment_bytes}")
        if not 1 <= self.segment_ms <= 2**62:
            raise InvalidConfigError(f"segment.ms must be at least 1, got {self.segment_ms}")
        if not 0 <= self.delete_retention_ms <= 2**62:
            raise InvalidConfigError(
                f"delete.retention.ms must be in [0, {2**62}], got {self.delete_retention_ms}")
        if self.cleanup_policy not in (CLEANUP_DELETE, CLEANUP_COMPACT, CLEANUP_COMPACT_DELETE):
            raise InvalidConfigError(f"unknown cleanup.policy {self.cleanup_policy}")

    def log_config(self, index_interval_bytes: int) -> LogConfig:
        return LogConfig(segment_bytes=self.segment_bytes, segment_ms=self.segment_ms,
                         retention_ms=self.retention_ms, retention_bytes=self.retention_bytes,
                         index_interval_bytes=index_interval_bytes,
                         cleanup_policy=self.cleanup_policy,
                         delete_retention_ms=self.delete_retention_ms)


class TopicSignal:
    """What readers of a topic wait on: an event replaced on every notify, so a reader that
    grabbed it before checking the high watermarks cannot miss an advance after the check.
    ClusterTopic is one."""

    name: str
    deleted: bool

    def __init__(self) -> None:
        self._data_event = asyncio.Event()

    @property
    def data_event(self) -> asyncio.Event:
        return self._data_event

    def notify(self) -> None:
        """Some partition's high watermark moved, or the topic closed: wake its readers."""
        event, self._data_event = self._data_event, asyncio.Event()
        event.set()

    def check_index(self, index: int, count: int) -> None:
        """UnknownTopicError once deleted; PartitionOutOfRangeError naming the valid range."""
        if self.deleted:
            raise UnknownTopicError(f"topic {self.name!r} was deleted")
        if not 0 <= index < count:
            raise PartitionOutOfRangeError(
                f"topic {self.name!r} has partitions 0 to {count - 1}; "
                f"there is no partition {index}")
