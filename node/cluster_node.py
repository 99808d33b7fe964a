"""Cluster mode of a node: the Raft driver, the metadata group, and this node's replicas.

Started by the Broker when ``peers`` is configured. What runs here:

- ONE ``RaftDriver`` for every group this node is a member of, over ONE ``PeerClient``
  (one long-lived stream per peer, every group's messages coalesced on it) and ONE
  ``PartitionRaftLogSyncer`` (one fsync round shared by every group: group commit).
- The **metadata group** (group id 0): the first five nodes by id are voters, the others
  learners, so every node applies the same ``MetadataState`` (brokers, topics, assignments,
  producer id blocks). Its log is a PartitionRaftLog under ``<data_dir>/metadata`` whose
  entries are one-record batches carrying a command's canonical JSON.
- **Reconciliation**: after every metadata change, this node opens (or removes) the
  partition replicas the assignments give it: each is a Raft group over its replicas, with its
  partition log under ``<data_dir>/partitions/<group id>-<topic>-<partition>``. The preferred
  leader (first replica) of a new partition campaigns at once, so leaders start spread the way
  placement spread them.
- **Registration**: the metadata leader registers every configured peer (id and address);
  so a node needs no RPC of its own to join.

Node ids: broker ids start at 0, Raft ids must be positive: Raft id = broker id + 1, mapped
here and in node/replica.py and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc

from rillet import batch as batch_codec
from rillet.cluster import metadata as md
from rillet.cluster.driver import DriverError, RaftDriver
from rillet.cluster.raft import (
    Config,
    ConfState,
    Entry,
    EntryKind,
    RaftCore,
    RaftError,
    Role,
    Snapshot,
)
from rillet.cluster.rounds import Round
from rillet.node.config import MIB, BrokerConfig
from rillet.node.errors import (
    ForwardedError,
    InvalidConfigError,
    InvalidTopicError,
    NotLeaderError,
    PartitionOutOfRangeError,
    TopicExistsError,
    UnavailableError,
    UnknownTopicError,
)
from rillet.node.groups.errors import FencedError, InvalidGroupError, UnknownGroupError
from rillet.node.peer_client import RECONNECT_OPTIONS, PeerClient
from rillet.node.replica import ReplicatedPartition, broker_id, raft_id
from rillet.node.security.tls import PeerDialer
from rillet.node.storage.hardstate import FILE_NAME as HARDSTATE_FILE
from rillet.node.storage.hardstate import HardStateJournal
from rillet.node.storage.log import LogConfig
from rillet.node.storage.raft_log import PartitionRaftLog, PartitionRaftLogSyncer
from rillet.node.topics import TopicSettings, TopicSignal, validate_name

log = logging.getLogger(__name__)

METADATA_GROUP = 0
MAX_METADATA_VOTERS = 5
LEADER_WAIT_S = 5.0
#: How long start waits for the groups this node alone votes in (``_settle_alone``).
SETTLE_ALONE_S = 10.0
BALANCE_INTERVAL_S = 5.0
RECONCILE_RETRY_S = 1.0
HAND_OVER_STALL_S = 1.5
_POLL_S = 0.05
_T = TypeVar("_T")


async def wait_until(pred: Callable[[], object], timeout_s: float) -> bool:
    """Poll ``pred`` every ``_POLL_S`` until it is true or ``timeout_s`` passed (a bounded
    number of polls); returns whether it became true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    for _ in range(int(timeout_s / _POLL_S) + 2):
        if pred():
            return True
        if loop.time() >= deadline:
            break
        await asyncio.sleep(_POLL_S)
    return bool(pred())


# -- the metadata group's state machine ---------------------------------------------------------


def wrap_command(command: md.Command) -> bytes:
    """A metadata command as a Raft entry of a partition-format log: a one-record batch."""
    return batch_codec.encode([md.encode_command(command)], timestamps_ms=[0])


def _unwrap(data: bytes) -> bytes:
    records = batch_codec.decode(data)
    return records[0].value if len(records) == 1 else b""


class MetadataReplica:
    """Applies the metadata group's committed entries to a ``MetadataMachine`` and tells the
    node something changed."""

    def __init__(self, on_change: Callable[[], None], *,
                 max_partitions: int = md.DEFAULT_MAX_PARTITIONS) -> None:
        self.machine = md.MetadataMachine(md.MetadataState(max_partitions=max_partitions))
        self.on_change = on_change
        self.applied_term = 0

    @property
    def state(self) -> md.MetadataState:
        return self.machine.state

    def apply(self, entries: list[Entry]) -> list[md.Result | None]:
        out = []
        for e in entries:
            self.applied_term = e.term
            if e.kind == EntryKind.NORMAL and e.data:
                try:
                    payload = _unwrap(e.data)
                except batch_codec.BatchError:
                    payload = b"?"  # the machine rejects it as UNDECODABLE, on every node alike
                out.append(Entry(e.index, e.term, e.kind, payload))
            else:
                out.append(e)
        results = self.machine.apply(out)
        self.on_change()
        return results

    def restore(self, snapshot: Snapshot) -> None:
        # The metadata log keeps everything (no retention), so its start never moves and no
        # leader ever needs to send one. A snapshot here means a broken invariant.
        raise RuntimeError(f"metadata group got a snapshot at {snapshot.meta.index}; "
                           "the metadata log is never truncated")


# -- topics as this node serves them --------------------------------------------------------------


class ClusterTopic(TopicSignal):
    """A topic of the metadata state as the servicers see it: partitions this node holds a
    replica of are served here, the others raise NOT_LEADER."""

    def __init__(self, info: md.TopicInfo, settings: TopicSettings) -> None:
        self.name = info.name
        self.topic_id = info.topic_id
        self.info = info
        self.replication_factor = info.replication_factor
        self.settings = settings
        self.replicas: list[ReplicatedPartition | None] = [None] * len(info.partitions)
        self.deleted = False
        super().__init__()

    def partition(self, index: int) -> ReplicatedPartition:
        self.check_index(index, len(self.replicas))
        part = self.replicas[index]
        if part is None:
            info = self.info.partitions[index]
            raise NotLeaderError(
                f"this node holds no replica of partition {self.name}-{index}; its replicas "
                f"are nodes {', '.join(map(str, info.replicas))}")
        return part

    @property
    def partitions(self) -> list[ReplicatedPartition]:
        return [self.partition(i) for i in range(len(self.replicas))]


_REJECT_ERRORS: dict[md.RejectCode, type[Exception]] = {
    md.RejectCode.INVALID_TOPIC: InvalidTopicError,
    md.RejectCode.UNKNOWN_TOPIC: UnknownTopicError,
    md.RejectCode.TOPIC_EXISTS: TopicExistsError,
    md.RejectCode.INVALID_CONFIG: InvalidConfigError,
    md.RejectCode.NOT_ENOUGH_BROKERS: InvalidConfigError,
    md.RejectCode.PARTITION_OUT_OF_RANGE: PartitionOutOfRangeError,
    md.RejectCode.INVALID_GROUP: InvalidGroupError,
    md.RejectCode.UNKNOWN_GROUP: UnknownGroupError,
    md.RejectCode.FENCED: FencedError,
}


class ClusterNode:
    """The clustered part of one broker; see the module docstring."""

    def __init__(self, config: BrokerConfig, *, round_type: type[Round] = Round) -> None:
        self.config = config
        self.broker_id = config.node_id
        self.peers = config.peer_map
        self.raft_id = raft_id(self.broker_id)
        # Where node-to-node calls go: `peers`, or the harness's proxies (config.peer_dial).
        self.dial = config.dial_map
        # Every channel to another node: TLS with this node's certificate, or its peer token.
        self.dialer = PeerDialer(config)
        self.transport = PeerClient(
            self.raft_id, {raft_id(b): addr for b, addr in self.dial.items()},
            dialer=self.dialer)
        # The journal is opened in start(), once the broker holds the data directory's lock.
        self.syncer = PartitionRaftLogSyncer()
        self._journal: HardStateJournal | None = None
        self.driver = RaftDriver(
            self.raft_id, self.transport, self.syncer,
            raft_config=Config(id=self.raft_id, election_ticks=config.election_ticks),
            tick_ms=float(config.raft_tick_ms), round_type=round_type)
        # max_partitions is part of the replicated state: it must be the same on every node.
        self.metadata = MetadataReplica(self._metadata_changed,
                                        max_partitions=config.max_partitions)
        self.replicas: dict[int, ReplicatedPartition] = {}
        self.topics: dict[str, ClusterTopic] = {}
        self.partitions_dir = config.data_dir / "partitions"
        self._reconcile_wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._pid_next = 0
        self._pid_last = -1
        self._pid_lock = asyncio.Lock()
        self._meta_lock = asyncio.Lock()
        self._stopped = False
        self.meta_log: PartitionRaftLog | None = None
        self.draining = False
        self._open_failed = False
        self.assignments: dict[int, md.PartitionInfo] = {}

    # -- lifecycle ------------------------------------------------------------------------------

    def metadata_conf(self) -> ConfState:
        ids = sorted(raft_id(b) for b in self.peers)
        return ConfState(frozenset(ids[:MAX_METADATA_VOTERS]),
                         frozenset(ids[MAX_METADATA_VOTERS:]))

    @property
    def journal(self) -> HardStateJournal:
        assert self._journal is not None, "ClusterNode.start() opens the journal"
        return self._journal

    async def start(self) -> None:
        self.partitions_dir.mkdir(parents=True, exist_ok=True)
        self._journal = await asyncio.to_thread(
            HardStateJournal, self.config.data_dir / HARDSTATE_FILE)
        self.syncer.journal = self._journal
        meta_log = await asyncio.to_thread(
            PartitionRaftLog.open, self.config.data_dir / "metadata",
            LogConfig(segment_bytes=64 * MIB, retention_ms=-1, retention_bytes=-1),
            conf=self.metadata_conf(), journal=self.journal, group=METADATA_GROUP)
        self.meta_log = meta_log
        self.driver.start()
        self.driver.add_group(METADATA_GROUP, meta_log, self.metadata)
        for name, coro in (("reconcile", self._reconcile_loop()),
                           ("register", self._register_loop()),
                           ("balance", self._balance_loop())):
            task = asyncio.create_task(coro, name=f"{name}-{self.broker_id}")
            task.add_done_callback(self._on_task_done)
            self._tasks.append(task)
        log.info("node %d: peers %s", self.broker_id,
                 ", ".join(f"{b}={a}" for b, a in sorted(self.peers.items())))
        await self._settle_alone(SETTLE_ALONE_S)

    async def _settle_alone(self, timeout_s: float) -> None:
        """When this node is the metadata group's only voter (a cluster of one), wait
        (bounded) until the metadata group and every partition whose only replica it is lead
        and applied their logs: they need nobody else, so a node that restarts alone serves
        its topics, offsets and high watermarks as they were from its first call, not an
        election later. A node with other voters waits for nothing here (they may be down)."""
        if self.driver.core(METADATA_GROUP).conf_state.voters != {self.raft_id}:
            return

        def settled() -> bool:
            if not self.metadata_ready():  # leads, and applied its log up to its own term
                return False
            for p in self.metadata.state.partitions():
                if p.replicas != (self.broker_id,):
                    continue
                rep = self.replicas.get(p.group_id)
                if rep is None or rep.leader_id() != self.broker_id:
                    return False
                if rep.applied_term != self.driver.core(p.group_id).term:
                    return False
            return True
        if not await wait_until(settled, timeout_s):
            log.warning("node %d: groups it alone votes in not settled after %.0f s; serving",
                        self.broker_id, timeout_s)

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.critical("node %d: %s task died", self.broker_id, task.get_name(),
                         exc_info=task.exception())

    async def hand_over_leadership(self, timeout_s: float) -> int:
        """Transfer every leadership of this node to another voter and wait (bounded) until
        none is left here; returns how many groups this node still leads."""
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        asked: set[int] = set()
        fewest, progressed_at = -1, loop.time()
        while True:
            led = [g for g in self.driver.groups() if self._leads(g)]
            now = loop.time()
            if fewest < 0 or len(led) < fewest:
                fewest, progressed_at = len(led), now
            # Give up early when nothing moves any more: e.g. every node is stopping at once
            # and leaderships only bounce between them.
            if not led or now >= deadline or now - progressed_at >= HAND_OVER_STALL_S:
                return len(led)
            for g in led:
                if g in asked:
                    continue
                target = self._transfer_target(g)
                if target is None:
                    continue
                try:
                    self.driver.transfer_leader(g, target)
                    asked.add(g)
                except (RaftError, DriverError) as exc:
                    log.info("group %d: no hand-over: %s", g, exc)
            await asyncio.sleep(_POLL_S)

    def _leads(self, group: int) -> bool:
        try:
            return self.driver.core(group).role == Role.LEADER
        except DriverError:
            return False

    def _transfer_target(self, group: int) -> int | None:
        core = self.driver.core(group)
        others = sorted(v for v in core.conf_state.voters if v != self.raft_id)
        if not others:
            return None
        def match(v: int) -> int:
            pr = core.progress.get(v)
            return pr.match if pr is not None else -1
        return max(others, key=match)

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.driver.stop()
        reason = UnavailableError("node is shutting down")
        for part in self.replicas.values():
            part.close(reason)
        logs = [p.rlog for p in self.replicas.values()]
        if self.meta_log is not None:
            logs.append(self.meta_log)
            self.meta_log = None
        self.replicas.clear()
        await asyncio.to_thread(_close_logs, logs)
        if self._journal is not None:
            await asyncio.to_thread(self._journal.close)
            self._journal = None
        for ch in self._channels.values():
            await ch.close(None)
        self._channels.clear()
        for topic in self.topics.values():
            topic.notify()

    # -- metadata changes -> replicas -----------------------------------------------------------

    def _metadata_changed(self) -> None:
        self._reconcile_wake.set()

    async def _reconcile_loop(self) -> None:
        while True:
            await self._reconcile_wake.wait()
            self._reconcile_wake.clear()
            try:
                await self._reconcile()
            except Exception:
                # A replica that cannot be opened (disk full, damaged log) must not stop the
                # node from serving the others: log it and try again shortly.
                log.exception("node %d: reconciling replicas failed; retrying in %.0f s",
                              self.broker_id, RECONCILE_RETRY_S)
                await asyncio.sleep(RECONCILE_RETRY_S)
                self._reconcile_wake.set()

    async def _reconcile(self) -> None:
        state = self.metadata.state
        # Topics: new ones appear, deleted (or deleted and re-created) ones end.
        current = {t.name: t for t in state.topics()}
        for name, gone in list(self.topics.items()):
            now = current.get(name)
            if now is None or now.topic_id != gone.topic_id:
                gone.deleted = True
                del self.topics[name]
                gone.notify()
        for name, info in current.items():
            existing = self.topics.get(name)
            if existing is None:
                settings = TopicSettings.defaults(self.config).with_overrides(
                    dict(info.config))
                self.topics[name] = ClusterTopic(info, settings)
            else:
                existing.info = info
        # Replicas: the groups the assignments give this node.
        desired: dict[int, md.PartitionInfo] = {
            p.group_id: p for p in state.partitions() if self.broker_id in p.replicas}
        self.assignments = desired
        for gid in [g for g in self.replicas if g not in desired]:
            await self._remove_replica(gid)
        to_open = [p for gid, p in desired.items() if gid not in self.replicas]
        if to_open:
            self._open_failed = False
            opened = await asyncio.to_thread(self._open_logs, to_open)
            for p, rlog, fresh in opened:
                self._add_replica(p, rlog, fresh)
            if self._open_failed:
                raise RuntimeError("some replicas could not be opened (logged above)")
        for gid, p in desired.items():
            owner = self.topics.get(p.topic)
            part = self.replicas.get(gid)
            if owner is not None and part is not None and p.partition < len(owner.replicas):
                owner.replicas[p.partition] = part
        await asyncio.to_thread(self._remove_stale_dirs, set(desired), state.next_group_id)

    def _dir_of(self, p: md.PartitionInfo) -> Path:
        return self.partitions_dir / f"{p.group_id}-{p.topic}-{p.partition}"

    def _open_logs(self, parts: Sequence[md.PartitionInfo]
                   ) -> list[tuple[md.PartitionInfo, PartitionRaftLog, bool]]:
        out = []
        for p in parts:
            topic = self.topics.get(p.topic)
            settings = topic.settings if topic is not None else TopicSettings.defaults(
                self.config)
            conf = ConfState(frozenset(raft_id(b) for b in p.replicas))
            directory = self._dir_of(p)
            fresh = not directory.exists()
            try:
                rlog = PartitionRaftLog.open(
                    directory, settings.log_config(self.config.index_interval_bytes),
                    conf=conf, journal=self.journal, group=p.group_id,
                    log_fields={"topic": p.topic, "partition": p.partition})
            except Exception:
                log.exception("node %d: cannot open the replica of %s-%d in %s",
                              self.broker_id, p.topic, p.partition, directory)
                self._open_failed = True
                continue
            out.append((p, rlog, fresh))
        return out

    def _add_replica(self, p: md.PartitionInfo, rlog: PartitionRaftLog, fresh: bool) -> None:
        topic = self.topics.get(p.topic)
        on_advance = topic.notify if topic is not None else (lambda: None)
        part = ReplicatedPartition(p.topic, p.partition, p.group_id, rlog, self.driver,
                                   on_advance=on_advance)
        self.replicas[p.group_id] = part
        self.driver.add_group(p.group_id, rlog, part)
        if fresh and p.replicas and p.replicas[0] == self.broker_id:
            self.driver.campaign(p.group_id)  # the preferred leader starts the first term
        log.info("node %d: replica of %s-%d (group %d, replicas %s)%s", self.broker_id,
                 p.topic, p.partition, p.group_id, list(p.replicas), " new" if fresh else "",
                 extra={"topic": p.topic, "partition": p.partition})

    async def _remove_replica(self, gid: int) -> None:
        part = self.replicas.pop(gid)
        with contextlib.suppress(DriverError):
            self.driver.remove_group(gid)
        self.journal.forget(gid)
        part.close(UnknownTopicError(f"topic {part.topic!r} was deleted"))
        directory = part.rlog.directory

        def close_and_remove() -> None:
            part.rlog.abandon()
            shutil.rmtree(directory, ignore_errors=True)
        await asyncio.to_thread(close_and_remove)
        log.info("node %d: removed replica of %s (group %d)", self.broker_id, part.name, gid)

    def _remove_stale_dirs(self, desired: set[int], next_group_id: int) -> None:
        """Directories of groups that were deleted (ids below next_group_id, not assigned
        here): left by a crash between the delete and the cleanup."""
        for child in self.partitions_dir.iterdir():
            head = child.name.split("-", 1)[0]
            if not head.isdigit():
                continue
            gid = int(head)
            if gid < next_group_id and gid not in desired and gid not in self.replicas:
                log.warning("removing %s: its partition is no longer assigned here", child)
                shutil.rmtree(child, ignore_errors=True)

    # -- preferred leaders -----------------------------------------------------------------------

    async def _balance_loop(self) -> None:
        """Hand each partition this node leads back to its preferred leader (first replica)
        once that replica is caught up: after a failover or a restart, leaders drift to the
        survivors; this spreads them again the way placement did (Kafka's automatic
        preferred-leader election)."""
        while True:
            await asyncio.sleep(BALANCE_INTERVAL_S)
            if not self.draining:
                self.balance_leaders()

    def balance_leaders(self, limit: int = 64) -> int:
        """One pass; returns how many transfers it started (at most ``limit``)."""
        started = 0
        assignments = self.assignments
        for gid, core in self._led_cores(list(assignments)):
            if started >= limit:
                break
            info = assignments[gid]
            if not info.replicas or info.replicas[0] == self.broker_id:
                continue
            preferred = raft_id(info.replicas[0])
            pr = core.progress.get(preferred)
            if pr is None or pr.match < core.commit_index:
                continue
            try:
                self.driver.transfer_leader(gid, preferred)
                started += 1
            except (RaftError, DriverError) as exc:
                log.debug("group %d: no transfer to preferred %d: %s", gid, preferred, exc)
        if started:
            log.info("node %d: handing %d leaderships back to their preferred leaders",
                     self.broker_id, started)
        return started

    # -- registration ---------------------------------------------------------------------------

    async def _register_loop(self) -> None:
        """While this node leads the metadata group, register every configured peer that the
        state does not list with its address."""
        while True:
            await asyncio.sleep(_POLL_S)
            if not self.metadata_ready():
                continue
            state = self.metadata.state
            for b, address in sorted(self.peers.items()):
                info = state.broker(b)
                if info is not None and info.address == address:
                    continue
                try:
                    result = await self.propose_metadata(md.RegisterBroker(b, address))
                    log.info("registered broker %d at %s: %s", b, address, result.describe())
                except Exception as exc:
                    log.info("registering broker %d failed (will retry): %s", b, exc)
                    break

    # -- the metadata group ---------------------------------------------------------------------

    def metadata_leader(self) -> int:
        """Broker id of the metadata leader as known here; -1 when unknown."""
        return broker_id(self.driver.core(METADATA_GROUP).leader)

    @property
    def metadata_state(self) -> md.MetadataState:
        """The metadata state as applied on this node."""
        return self.metadata.state

    def metadata_ready(self) -> bool:
        """This node leads the metadata group and has applied everything before its term."""
        core = self.driver.core(METADATA_GROUP)
        return core.role == Role.LEADER and self.metadata.applied_term == core.term

    async def propose_metadata(self, command: md.Command) -> md.Accepted:
        """Propose on this node (it must be the ready metadata leader); raise the mapped
        error for a rejection."""
        async with self._meta_lock:
            if not self.metadata_ready():
                raise NotLeaderError("this node does not lead the metadata group")
            try:
                result = await self.driver.propose(METADATA_GROUP, wrap_command(command))
            except (RaftError, DriverError) as exc:
                raise UnavailableError(f"metadata change not committed: {exc}") from exc
        if isinstance(result, md.Rejected):
            err = _REJECT_ERRORS.get(result.code, InvalidConfigError)
            raise err(result.message)
        assert isinstance(result, md.Accepted)
        return result

    async def wait_metadata_leader(self) -> int:
        """The metadata leader's broker id, waiting (bounded) while an election runs."""
        def known() -> bool:
            return self.metadata_ready() or self.metadata_leader() not in (-1, self.broker_id)
        if not await wait_until(known, LEADER_WAIT_S):
            raise UnavailableError("the cluster has no metadata leader right now (fewer "
                                   "than a majority of nodes up?); retry")
        return self.broker_id if self.metadata_ready() else self.metadata_leader()

    def channel(self, broker: int) -> grpc.aio.Channel:
        address = self.dial[broker]
        ch = self._channels.get(address)
        if ch is None:
            ch = self._channels[address] = self.dialer.channel(address, [
                ("grpc.max_receive_message_length", 64 * MIB),
                ("grpc.max_send_message_length", 64 * MIB),
                *RECONNECT_OPTIONS])
        return ch

    async def on_metadata_leader(self, local: Callable[[], Any],
                                 forward: Callable[[grpc.aio.Channel], Any]) -> Any:
        """Run ``local()`` here if this node leads the metadata group, else ``forward`` the
        call to the leader (any node answers admin calls)."""
        leader = await self.wait_metadata_leader()
        if leader == self.broker_id:
            return await local()
        return await self.forward_to(leader, forward, "metadata leader")

    async def forward_to(self, broker: int, forward: Callable[[grpc.aio.Channel], Any],
                         role: str) -> Any:
        """``forward(channel to broker)``; its error statuses pass on as is (ForwardedError),
        except that a node that does not answer is UNAVAILABLE (retriable) naming its `role`."""
        try:
            return await forward(self.channel(broker))
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise UnavailableError(
                    f"{role} node {broker} did not answer: {exc.details()}") from exc
            raise ForwardedError(exc) from None

    # -- admin operations (run on the metadata leader) ----------------------------------------

    async def create_topic(self, name: str, partitions: int, replication_factor: int,
                           overrides: dict[str, int]) -> md.TopicInfo:
        validate_name(name)
        if partitions == 0:
            partitions = self.config.default_partitions
        if replication_factor == 0:
            replication_factor = min(3, len(self.peers)) if len(self.peers) >= 3 else 1
        TopicSettings.defaults(self.config).with_overrides(overrides)  # check before proposing
        # Just after the cluster starts the leader may not have registered every peer yet:
        # give registration a moment rather than refuse for a lack of brokers.
        wanted = min(replication_factor, len(self.peers))
        await wait_until(lambda: len(self.metadata.state.live_brokers()) >= wanted,
                         LEADER_WAIT_S)
        await self.propose_metadata(md.CreateTopic(name, partitions, replication_factor,
                                                   overrides))
        info = self.metadata.state.topic(name)
        if info is None:
            raise UnavailableError(f"topic {name!r} was created and deleted at once; retry")
        return info

    async def delete_topic(self, name: str) -> None:
        await self.propose_metadata(md.DeleteTopic(name))

    async def allocate_producer_id(self) -> int:
        async with self._pid_lock:
            if self._pid_next > self._pid_last:
                result = await self.propose_metadata(
                    md.AllocateProducerIds(self.broker_id, 1000))
                block = result.producer_ids
                assert block is not None
                self._pid_next, self._pid_last = block.first, block.last
            pid = self._pid_next
            self._pid_next += 1
            return pid

    async def wait_leaders(self, name: str, timeout_s: float) -> None:
        """Wait (bounded) until every partition of ``name`` this node holds has a leader."""
        def led() -> bool:
            topic = self.topics.get(name)
            return topic is not None and all(
                part is not None and part.leader_id() >= 0
                for part, info in zip(topic.replicas, topic.info.partitions, strict=True)
                if self.broker_id in info.replicas)
        await wait_until(led, timeout_s)

    # -- views for Admin / Metadata -----------------------------------------------------------

    def get_topic(self, name: str) -> ClusterTopic:
        topic = self.topics.get(name)
        if topic is None:
            validate_name(name)
            raise UnknownTopicError(f"unknown topic {name!r}")
        return topic

    def topic_list(self) -> list[ClusterTopic]:
        return [self.topics[n] for n in sorted(self.topics)]

    def leader_of(self, topic: ClusterTopic, index: int) -> int:
        """Broker id of a partition's leader as this node knows it; -1 when unknown."""
        part = topic.replicas[index]
        if part is not None:
            return part.leader_id()
        info = topic.info.partitions[index]
        if len(info.replicas) == 1:
            return info.replicas[0]
        return -1

    def partition_states(self) -> list[tuple[str, int, bool, int, int, int]]:
        """Per replica here: (topic, partition, leads, term, high watermark, commit lag)."""
        out = []
        for gid, part in list(self.replicas.items()):
            try:
                core = self.driver.core(gid)
            except DriverError:
                continue
            out.append((part.topic, part.partition, core.role == Role.LEADER, core.term,
                        part.high_watermark, max(0, core.commit_index - core.applied_index)))
        return out

    def _led_cores(self, groups: list[int]) -> Iterator[tuple[int, RaftCore]]:
        """(group, core) for each of `groups` this node runs and leads right now."""
        for gid in groups:
            try:
                core = self.driver.core(gid)
            except DriverError:
                continue
            if core.role == Role.LEADER:
                yield gid, core

    def under_replicated(self) -> int:
        """Partitions led here where some voter's log is behind the commit index."""
        count = 0
        for _gid, core in self._led_cores(list(self.replicas)):
            commit = core.commit_index
            for voter in core.conf_state.voters:
                if voter == self.raft_id:
                    continue
                pr = core.progress.get(voter)
                if pr is None or pr.match < commit:
                    count += 1
                    break
        return count

    def brokers(self) -> Iterator[tuple[int, str]]:
        for b in self.metadata.state.brokers():
            yield b.node_id, b.address


def _close_logs(logs: list[PartitionRaftLog]) -> None:
    for lg in logs:
        try:
            lg.close()
        except Exception:
            log.exception("%s: close failed", lg.directory)
