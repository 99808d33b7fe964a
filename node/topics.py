"""The topic registry of one node: which topics exist, their settings, their partition logs.

On disk:
  <data_dir>/topics.json              the registry, replaced atomically (tmp, fsync, rename)
  <data_dir>/topics/<topic>/<n>/      the partition logs (PartitionLog.open)
The JSON file is the source of truth. Create opens the partition logs first and then writes
the file; delete writes the file first and then removes the directories. So a crash in the
middle leaves directories no entry names, and start-up removes them (logging each).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, replace

from rillet.node.config import BrokerConfig
from rillet.node.errors import (
    InvalidConfigError,
    InvalidTopicError,
    PartitionOutOfRangeError,
    TopicExistsError,
    UnavailableError,
    UnknownTopicError,
)
from rillet.node.partition import GroupCommitter, Partition
from rillet.node.storage.atomic import write_atomic
from rillet.node.storage.log import (
    CLEANUP_COMPACT,
    CLEANUP_COMPACT_DELETE,
    CLEANUP_DELETE,
    LogConfig,
    PartitionLog,
)

log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"[a-zA-Z0-9._-]{1,249}")
REGISTRY_FILE = "topics.json"
REGISTRY_VERSION = 1



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
    Shared by the single-node Topic and cluster mode's ClusterTopic."""

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


class Topic(TopicSignal):
    """A topic on this node: its settings, its partitions, and the signal consumers wait on."""

    def __init__(self, name: str, replication_factor: int, settings: TopicSettings) -> None:
        self.name = name
        self.replication_factor = replication_factor
        self.settings = settings
        self.partitions: list[Partition] = []
        self.deleted = False
        super().__init__()

    def partition(self, index: int) -> Partition:
        self.check_index(index, len(self.partitions))
        return self.partitions[index]


class TopicRegistry:
    """Create, delete, find topics; owns every partition log of the node."""

    def __init__(self, config: BrokerConfig, committer: GroupCommitter) -> None:
        self.config = config
        self.committer = committer
        self.data_dir = config.data_dir
        self.topics_dir = config.data_dir / "topics"
        self._topics: dict[str, Topic] = {}
        self._lock = asyncio.Lock()
        self._closed = False

    # -- lookups -----------------------------------------------------------------------------

    def get(self, name: str) -> Topic:
        topic = self._topics.get(name)
        if topic is None:
            if not name or name in (".", "..") or not _NAME_RE.fullmatch(name):
                validate_name(name)
            raise UnknownTopicError(f"unknown topic {name!r}")
        return topic

    def topics(self) -> list[Topic]:
        return [self._topics[name] for name in sorted(self._topics)]

    def partitions(self) -> Iterator[Partition]:
        for topic in list(self._topics.values()):
            yield from topic.partitions

    # -- lifecycle ---------------------------------------------------------------------------

    def load(self) -> None:
        """Read the registry and open (recover) every partition log. Runs before serving."""
        self.topics_dir.mkdir(parents=True, exist_ok=True)
        path = self.data_dir / REGISTRY_FILE
        (self.data_dir / (REGISTRY_FILE + ".tmp")).unlink(missing_ok=True)
        entries: dict[str, dict[str, object]] = {}
        if path.exists():
            data = json.loads(path.read_text())
            if data.get("version") != REGISTRY_VERSION:
                raise RuntimeError(f"{path}: unsupported registry version {data.get('version')}")
            entries = data["topics"]
        for child in sorted(self.topics_dir.iterdir()):
            if child.name not in entries:
                log.warning("removing %s: no topic of that name is registered "
                            "(left by an interrupted create or delete)", child)
                shutil.rmtree(child, ignore_errors=True)
        for name, entry in sorted(entries.items()):
            settings = TopicSettings(**entry["settings"])  # type: ignore[arg-type]
            count = int(entry["partitions"])  # type: ignore[call-overload]
            topic = Topic(name, int(entry["replication_factor"]),  # type: ignore[call-overload]
                          settings)
            topic.partitions = [self._open_partition(topic, i) for i in range(count)]
            self._topics[name] = topic
            log.info("topic %s: %d partitions loaded", name, count)

    def _open_partition(self, topic: Topic, index: int) -> Partition:
        directory = self.topics_dir / topic.name / str(index)
        directory.mkdir(parents=True, exist_ok=True)
        plog = PartitionLog.open(
            directory, topic.settings.log_config(self.config.index_interval_bytes),
            log_fields={"topic": topic.name, "partition": index})
        part = Partition(topic.name, index, plog, on_append=self.committer.mark_dirty,
                         on_advance=topic.notify)
        if part.dirty:
            self.committer.mark_dirty(part)
        return part

    def _save(self) -> None:
        data = {"version": REGISTRY_VERSION, "topics": {
            t.name: {"partitions": len(t.partitions), "replication_factor": t.replication_factor,
                     "settings": asdict(t.settings)}
            for t in self._topics.values() if not t.deleted}}
        write_atomic(self.data_dir / REGISTRY_FILE,
                     json.dumps(data, indent=1, sort_keys=True).encode())

    async def create(self, name: str, partitions: int, replication_factor: int,
                     overrides: Mapping[str, int]) -> Topic:
        """Create a topic; 0 partitions or replication factor means the default."""
        validate_name(name)
        if partitions == 0:
            partitions = self.config.default_partitions
        if not 1 <= partitions <= self.config.max_partitions:
            raise InvalidConfigError(
                f"partitions must be in [1, {self.config.max_partitions}] (max_partitions), "
                f"got {partitions}")
        if replication_factor == 0:
            replication_factor = 1
        if replication_factor not in (1, 3, 5):
            raise InvalidConfigError(
                f"replication_factor must be 1, 3 or 5, got {replication_factor}")
        if replication_factor != 1:
            raise InvalidConfigError(
                f"replication_factor {replication_factor} needs {replication_factor} nodes; "
                "this node runs alone, so only replication_factor 1 is possible")
        settings = TopicSettings.defaults(self.config).with_overrides(overrides)
        async with self._lock:
            if self._closed:
                raise UnavailableError("node is shutting down")
            if name in self._topics:
                raise TopicExistsError(f"topic {name!r} already exists")
            topic = Topic(name, replication_factor, settings)
            try:
                topic.partitions = await asyncio.to_thread(self._open_all, topic, partitions)
                self._topics[name] = topic
                await asyncio.to_thread(self._save)
            except BaseException:
                self._topics.pop(name, None)
                for part in topic.partitions:
                    part.close(UnknownTopicError(f"topic {name!r} could not be created"))
                await asyncio.to_thread(shutil.rmtree, self.topics_dir / name, True)
                raise
        log.info("created topic %s: %d partitions, settings %s", name, partitions, settings)
        return topic

    def _open_all(self, topic: Topic, count: int) -> list[Partition]:
        base = self.topics_dir / topic.name
        if base.exists():
            shutil.rmtree(base)
        return [self._open_partition(topic, i) for i in range(count)]

    async def delete(self, name: str) -> None:
        """Delete a topic: unregister it (durably), fail its waiters, remove its files."""
        async with self._lock:
            topic = self.get(name)
            del self._topics[name]
            try:
                await asyncio.to_thread(self._save)
            except BaseException:
                self._topics[name] = topic
                raise
            topic.deleted = True
            async with self.committer.lock:
                for part in topic.partitions:
                    part.close(UnknownTopicError(f"topic {name!r} was deleted"))
            topic.notify()
            await asyncio.to_thread(shutil.rmtree, self.topics_dir / name, True)
        log.info("deleted topic %s", name)

    async def close(self, reason: BaseException) -> None:
        """Close every log (each flushes); runs after the committer's last round."""
        async with self._lock:
            self._closed = True
            async with self.committer.lock:
                for topic in self._topics.values():
                    for part in topic.partitions:
                        part.close(reason)
                    topic.notify()

