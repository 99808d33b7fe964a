"""The metadata state machine: brokers, topics, partition assignments, producer ids, group
offsets and ACL rules, as the metadata Raft group (the controller) applies them on every node.

PURE: standard library only (plus the pure raft types for the driver adapter), no I/O, no
clock, no randomness. Time only arrives inside commands. Two nodes that apply the same
entries hold byte-identical states (``snapshot()``), which is what makes the group a
replicated state machine at all.

How it is used
--------------
The leader of the metadata group encodes a command (``encode_command``) and proposes the
bytes; every node applies the committed entry with ``MetadataState.apply_bytes(index, data)``
(``MetadataMachine`` does it for the ``RaftDriver``), and the proposer reads the ``Result``
of its index. ``apply`` never raises for bad input: a malformed, out-of-range or stale
command yields a ``Rejected`` result with a ``RejectCode`` and a message a person can act on,
and changes nothing but ``applied_index``. Validation is done in full before any mutation, so
a rejection can never leave half a change behind. An exception out of ``apply`` would stop the
group on every node at the same entry, forever; only a broken invariant (a bug) may do that.

Validation matches ``rillet.node.topics`` and ``admin.proto``:
topic names are 1-249 characters of ``[a-zA-Z0-9._-]`` and not ``.`` or ``..``; partitions in
``[1, max_partitions]``; replication factor 1, 3 or 5 and at most the number of live
(registered, non-draining) brokers; ``retention_ms``/``retention_bytes`` -1 or at least 1;
``segment_bytes`` in [4096, 2**31-1]; ``segment_ms`` in [1, 2**62]; ``cleanup_policy`` 1
(delete), 2 (compact) or 3 (both); ``delete_retention_ms`` in [0, 2**62]. The state stores a
topic's config OVERRIDES only; each broker fills in its defaults when it opens a partition (as
Kafka does), so the commands do not depend on any one node's configuration. ``CreateTopic``
takes explicit ``partitions`` and ``replication_factor``: the proposing broker resolves the
Admin API's "0 means default" before proposing.

Placement (``CreateTopic``; see ``place_partitions``)
------------------------------------------------------
Replicas go to live brokers only. Each broker has a replica count and a leader count (its
current assignments), and a rotated position ``(i - cursor) % n`` for ``live[i]``, where
``cursor`` counts the partitions ever placed (a counter in the state: two topics created on an
empty cluster start on different brokers, and nothing depends on ``hash(str)``). For each new
partition, in order:

1. if at least ``rf`` brokers hold the fewest replicas, only those may be in the set;
2. the preferred leader (``replicas[0]``) is the eligible broker leading fewest partitions
   (ties: fewer replicas, then rotated position);
3. the followers are the ``rf - 1`` other brokers with the fewest replicas; among equals, the
   ones that lead MOST go first, so brokers still owed a leadership keep a low replica count
   and stay eligible to lead; they are listed in rotated order.

Replica counts stay within 1 of each other whatever the replication factors (if every count
is L or L+1, rule 1 means the set raises the lowest ones). Leader counts stay within 1 when all
topics share a replication factor (property-tested; 1, 3 and 5 on 1-11 brokers); mixing
factors can force a replica onto a broker that should not lead, and leaders then differ by up
to 2 (seen in random runs), which ``plan_rebalance`` repairs. Deletes and broker changes are
repaired by ``plan_rebalance`` too.

Encoding
--------
Commands and snapshots are canonical JSON: sorted keys, no spaces, ASCII, version ``"v": 1``
and the command type in ``"t"``. Equal values give equal bytes; decoding checks every field's
type strictly (an int is never a bool or a float), so ``decode(encode(c)) == c`` exactly.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeAlias

from rillet.cluster.raft.types import Entry, EntryKind, Snapshot

FORMAT_VERSION = 1
REPLICATION_FACTORS = (1, 3, 5)
DEFAULT_MAX_PARTITIONS = 1000
MAX_NODE_ID = 2**31 - 1
MAX_PRODUCER_ID = 2**63 - 1
MAX_PRODUCER_ID_BLOCK = 1_000_000
MAX_OFFSET_METADATA_CHARS = 4096
MAX_RACK_CHARS = 255
MAX_ADDRESS_CHARS = 300
INT64_MAX = 2**63 - 1

# cleanup.policy values, as in admin.proto's CleanupPolicy.
CLEANUP_DELETE = 1
CLEANUP_COMPACT = 2
CLEANUP_COMPACT_DELETE = 3
TOPIC_SETTINGS = ("cleanup_policy", "delete_retention_ms", "retention_bytes", "retention_ms",
                  "segment_bytes", "segment_ms")

_NAME_RE = re.compile(r"[a-zA-Z0-9._-]{1,249}")
_HOST_RE = re.compile(r"[a-zA-Z0-9.\-\[\]:_]+")


# -- errors and results -------------------------------------------------------------------------


class DecodeError(ValueError):
    """Bytes that are not a command of a version we know (the entry is rejected, not raised)."""


class SnapshotError(ValueError):
    """Snapshot bytes that cannot be restored. Unlike a bad command this IS raised: a node must
    not continue from a state it cannot read."""


class RejectCode(enum.Enum):
    """Why a command was rejected. Names follow ``common.proto``'s ErrorCode where one exists,
    so the broker can map them one to one."""

    INVALID_TOPIC = "INVALID_TOPIC"
    UNKNOWN_TOPIC = "UNKNOWN_TOPIC"
    TOPIC_EXISTS = "TOPIC_EXISTS"
    INVALID_CONFIG = "INVALID_CONFIG"
    PARTITION_OUT_OF_RANGE = "PARTITION_OUT_OF_RANGE"
    # Replication factor (or a reassignment) needs more live brokers than there are.
    NOT_ENOUGH_BROKERS = "NOT_ENOUGH_BROKERS"
    INVALID_BROKER = "INVALID_BROKER"
    UNKNOWN_BROKER = "UNKNOWN_BROKER"
    # Another broker already advertises this address.
    ADDRESS_IN_USE = "ADDRESS_IN_USE"
    # The broker still holds replicas: reassign them (drain) before unregistering.
    BROKER_IN_USE = "BROKER_IN_USE"
    INVALID_GROUP = "INVALID_GROUP"
    UNKNOWN_GROUP = "UNKNOWN_GROUP"
    PRODUCER_IDS_EXHAUSTED = "PRODUCER_IDS_EXHAUSTED"
    # A group command from an older generation than the stored one (a deposed coordinator).
    FENCED = "FENCED"
    INVALID_REQUEST = "INVALID_REQUEST"
    # The entry's bytes are not a command (corrupt, or a newer version than this node knows).
    UNDECODABLE = "UNDECODABLE"
    # The index is not above applied_index: this entry (or a later one) was applied already.
    ALREADY_APPLIED = "ALREADY_APPLIED"


@dataclass(frozen=True)
class ProducerIdBlock:
    """Producer ids ``[first, first + count)`` handed to broker ``node_id`` at ``index``."""

    node_id: int
    first: int
    count: int
    index: int

    @property
    def last(self) -> int:
        return self.first + self.count - 1

    def describe(self) -> str:
        return f"producer ids {self.first}-{self.last} -> broker {self.node_id}"


@dataclass(frozen=True)
class Accepted:
    """The command at ``index`` took effect; ``message`` says what it did."""

    index: int
    kind: str
    message: str
    producer_ids: ProducerIdBlock | None = None

    # False when the command found the state already as asked (an ACL rule added twice,
    # removed when absent): accepted, nothing changed.
    changed: bool = True

    ok: ClassVar[bool] = True

    def describe(self) -> str:
        """``12 ok CreateTopic: created topic 'orders' ...``."""
        return f"{self.index} ok {self.kind}: {self.message}"


@dataclass(frozen=True)
class Rejected:
    """The command at ``index`` was refused and changed nothing (but ``applied_index``)."""

    index: int
    kind: str
    code: RejectCode
    message: str

    ok: ClassVar[bool] = False

    def describe(self) -> str:
        """``12 rejected CreateTopic TOPIC_EXISTS: topic 'orders' already exists``."""
        return f"{self.index} rejected {self.kind} {self.code.value}: {self.message}"


Result: TypeAlias = Accepted | Rejected


class _Reject(Exception):
    """Raised by validation helpers inside apply and turned into a Rejected there."""

    def __init__(self, code: RejectCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# -- commands -----------------------------------------------------------------------------------

# Field kinds drive the generic encode / decode / shape check. Each command field says its kind.
_INT, _STR, _BOOL, _OPT_STR = "int", "str", "bool", "opt_str"
_INTS, _STRS, _SETTINGS, _OFFSETS = "ints", "strs", "settings", "offsets"


def _f(kind: str, **kw: Any) -> Any:
    return field(metadata={"kind": kind}, **kw)


@dataclass(frozen=True)
class OffsetAndMetadata:
    """A committed position: the next offset to consume, and the client's metadata string."""

    offset: int
    metadata: str = ""


TopicPartition: TypeAlias = tuple[str, int]


@dataclass(frozen=True)
class Command:
    """Base of every metadata command. Subclasses are frozen dataclasses whose fields carry
    their kind (for the codec); they hold no behaviour beyond ``describe``."""

    def describe(self) -> str:
        """``CreateTopic name='orders' partitions=6 ...``: one stable line."""
        parts = [type(self).__name__]
        for f in dataclasses.fields(self):
            parts.append(f"{f.name}={_render(getattr(self, f.name))}")
        return " ".join(parts)


def _render(value: object) -> str:
    if isinstance(value, Mapping):
        items = sorted(value.items(), key=lambda kv: repr(kv[0]))
        return "{" + ", ".join(f"{_render(k)}: {_render(v)}" for k, v in items) + "}"
    if isinstance(value, tuple):
        return "(" + " ".join(_render(v) for v in value) + ")"
    if isinstance(value, OffsetAndMetadata):
        return f"{value.offset}" + (f"/{value.metadata!r}" if value.metadata else "")
    return repr(value)


@dataclass(frozen=True)
class RegisterBroker(Command):
    """A broker joins (or re-registers after a restart: its address and rack are updated, its
    draining flag kept)."""

    node_id: int = _f(_INT)
    address: str = _f(_STR)
    rack: str | None = _f(_OPT_STR, default=None)


@dataclass(frozen=True)
class UnregisterBroker(Command):
    """A broker leaves for good. Refused while it still holds replicas (drain it first)."""

    node_id: int = _f(_INT)


@dataclass(frozen=True)
class MarkBrokerDraining(Command):
    """A draining broker gets no new replicas; ``plan_rebalance`` moves its replicas away."""

    node_id: int = _f(_INT)
    draining: bool = _f(_BOOL, default=True)


@dataclass(frozen=True)
class CreateTopic(Command):
    """Create a topic and place its partitions. ``config`` holds setting overrides by name
    (``retention_ms``...); unset settings take each broker's defaults."""

    name: str = _f(_STR)
    partitions: int = _f(_INT)
    replication_factor: int = _f(_INT)
    config: Mapping[str, int] = _f(_SETTINGS, default_factory=dict)


@dataclass(frozen=True)
class DeleteTopic(Command):
    """Delete a topic, its assignments and every group's committed offsets for it."""

    name: str = _f(_STR)


@dataclass(frozen=True)
class AlterTopicConfig(Command):
    """Set some overrides and remove others (back to the broker default)."""

    name: str = _f(_STR)
    updates: Mapping[str, int] = _f(_SETTINGS, default_factory=dict)
    removals: tuple[str, ...] = _f(_STRS, default=())


@dataclass(frozen=True)
class ReassignPartition(Command):
    """Set the TARGET replicas of one partition (first = preferred leader). The partition's
    Raft group gets there through membership changes driven later; the state records the
    target and bumps the partition's assignment epoch."""

    topic: str = _f(_STR)
    partition: int = _f(_INT)
    replicas: tuple[int, ...] = _f(_INTS)


@dataclass(frozen=True)
class AllocateProducerIds(Command):
    """Hand broker ``node_id`` the next ``count`` producer ids (idempotent producers)."""

    node_id: int = _f(_INT)
    count: int = _f(_INT)


@dataclass(frozen=True)
class CommitGroupOffsets(Command):
    """Store a group's committed offsets, all or none. Fenced by generation: refused when
    ``generation`` is below the group's stored one (the coordinator that proposes it was
    deposed, or the member is stale); -1 is an admin / outsider commit, which the coordinator
    allows only while the group has no members, and which leaves the generation as it is.
    ``commit_time_ms`` is the proposer's clock, kept for offset retention (the state machine
    reads no clock)."""

    group: str = _f(_STR)
    generation: int = _f(_INT)
    offsets: Mapping[TopicPartition, OffsetAndMetadata] = _f(_OFFSETS)
    commit_time_ms: int = _f(_INT, default=0)


@dataclass(frozen=True)
class BumpGroupGeneration(Command):
    """The coordinator hands out ``generation`` for ``group``: stored before any member hears
    of it, so a later coordinator continues above it and never reuses one. Refused (FENCED)
    unless it is above the stored generation."""

    group: str = _f(_STR)
    generation: int = _f(_INT)


@dataclass(frozen=True)
class DeleteGroup(Command):
    """Forget a group and its committed offsets."""

    group: str = _f(_STR)


@dataclass(frozen=True)
class _AclRuleCommand(Command):
    """The rule an ACL command names: ``principal`` (a name, or "*": any authenticated
    principal) may ``operation`` the ``resource_type`` resources ``resource_name`` names,
    exactly (``pattern`` "literal") or as a prefix ("prefix"); the cluster resource has the
    empty name. The vocabulary is ``rillet.node.security.acl``'s (this module may not import
    it; a unit test keeps the two in step)."""

    principal: str = _f(_STR)
    operation: str = _f(_STR)
    resource_type: str = _f(_STR)
    resource_name: str = _f(_STR, default="")
    pattern: str = _f(_STR, default="literal")

    def key(self) -> AclKey:
        return (self.principal, self.operation, self.resource_type, self.resource_name,
                self.pattern)


@dataclass(frozen=True)
class AddAcl(_AclRuleCommand):
    """Allow the rule; adding a rule that exists is accepted and changes nothing."""


@dataclass(frozen=True)
class RemoveAcl(_AclRuleCommand):
    """Remove the rule with exactly these fields; accepted (changing nothing) when absent."""


#: An ACL rule as the state keeps it: (principal, operation, resource type, resource name,
#: pattern), all strings.
AclKey: TypeAlias = tuple[str, str, str, str, str]

# The ACL vocabulary (rillet.node.security.acl's enums, by value).
ACL_OPERATIONS_ON: dict[str, frozenset[str]] = {
    "topic": frozenset({"produce", "consume", "replay", "describe", "create", "delete",
                        "alter"}),
    "group": frozenset({"group", "describe", "alter", "delete"}),
    "cluster": frozenset({"cluster_admin"}),
}
ACL_PATTERNS = ("literal", "prefix")
MAX_ACL_PRINCIPAL_CHARS = 256
_ACL_NAME_RE = re.compile(r"[a-zA-Z0-9._-]{0,249}")

COMMAND_TYPES: dict[str, type[Command]] = {
    cls.__name__: cls
    for cls in (RegisterBroker, UnregisterBroker, MarkBrokerDraining, CreateTopic, DeleteTopic,
                AlterTopicConfig, ReassignPartition, AllocateProducerIds, CommitGroupOffsets,
                BumpGroupGeneration, DeleteGroup, AddAcl, RemoveAcl)
}


# -- the codec ------------------------------------------------------------------------------------


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _shape_error(kind: str, v: object) -> str | None:
    """What is wrong with the TYPE of ``v`` for a field of ``kind`` (None: nothing)."""
    if kind == _INT:
        return None if _is_int(v) else "must be an integer"
    if kind == _STR:
        return None if isinstance(v, str) else "must be a string"
    if kind == _BOOL:
        return None if isinstance(v, bool) else "must be true or false"
    if kind == _OPT_STR:
        return None if v is None or isinstance(v, str) else "must be a string or null"
    if kind == _INTS:
        ok = isinstance(v, tuple) and all(_is_int(x) for x in v)
        return None if ok else "must be a tuple of integers"
    if kind == _STRS:
        ok = isinstance(v, tuple) and all(isinstance(x, str) for x in v)
        return None if ok else "must be a tuple of strings"
    if kind == _SETTINGS:
        ok = isinstance(v, Mapping) and all(isinstance(k, str) and _is_int(x)
                                            for k, x in v.items())
        return None if ok else "must map setting names to integers"
    if kind == _OFFSETS:
        ok = isinstance(v, Mapping) and all(
            isinstance(k, tuple) and len(k) == 2 and isinstance(k[0], str) and _is_int(k[1])
            and isinstance(x, OffsetAndMetadata) and _is_int(x.offset)
            and isinstance(x.metadata, str)
            for k, x in v.items())
        return None if ok else "must map (topic, partition) to OffsetAndMetadata"
    raise AssertionError(f"unknown field kind {kind}")  # pragma: no cover


def _check_shape(cmd: object) -> None:
    """Raise _Reject(INVALID_REQUEST) unless ``cmd`` is a command whose fields have the types
    the codec can carry: what an in-memory caller hands ``apply`` gets the decoder's checks."""
    if not isinstance(cmd, Command) or type(cmd).__name__ not in COMMAND_TYPES:
        raise _Reject(RejectCode.INVALID_REQUEST,
                      f"not a metadata command: {type(cmd).__name__}")
    for f in dataclasses.fields(cmd):
        why = _shape_error(f.metadata["kind"], getattr(cmd, f.name))
        if why is not None:
            raise _Reject(RejectCode.INVALID_REQUEST,
                          f"{type(cmd).__name__}.{f.name} {why}")


def _encode_value(kind: str, v: Any) -> Any:
    if kind in (_INTS, _STRS):
        return list(v)
    if kind == _SETTINGS:
        return dict(v)
    if kind == _OFFSETS:
        return [[t, p, om.offset, om.metadata] for (t, p), om in sorted(v.items())]
    return v


def _decode_value(kind: str, v: Any) -> Any:
    if kind in (_INTS, _STRS):
        if not isinstance(v, list):
            raise DecodeError("expected a list")
        return tuple(v)
    if kind == _OFFSETS:
        if not isinstance(v, list):
            raise DecodeError("expected a list of offsets")
        out: dict[TopicPartition, OffsetAndMetadata] = {}
        for item in v:
            if not (isinstance(item, list) and len(item) == 4):
                raise DecodeError("an offset must be [topic, partition, offset, metadata]")
            t, p, off, meta = item
            if (t, p) in out:
                raise DecodeError(f"offset for {t}/{p} given twice")
            out[(t, p)] = OffsetAndMetadata(off, meta)
        return out
    return v


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def encode_command(cmd: Command) -> bytes:
    """Canonical bytes of ``cmd`` (equal commands give equal bytes). Raises ValueError for a
    command whose fields do not have the declared types: that is the proposer's bug."""
    try:
        _check_shape(cmd)
    except _Reject as exc:
        raise ValueError(exc.message) from None
    doc: dict[str, Any] = {"v": FORMAT_VERSION, "t": type(cmd).__name__}
    for f in dataclasses.fields(cmd):
        doc[f.name] = _encode_value(f.metadata["kind"], getattr(cmd, f.name))
    return _dumps(doc)


def decode_command(data: bytes) -> Command:
    """The command ``data`` encodes; DecodeError for anything else (never another error)."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise DecodeError(f"not a JSON command: {exc}") from None
    if not isinstance(doc, dict):
        raise DecodeError("a command must be a JSON object")
    if doc.get("v") != FORMAT_VERSION or not _is_int(doc.get("v")):
        raise DecodeError(f"unsupported command version {doc.get('v')!r}; this node reads "
                          f"version {FORMAT_VERSION}")
    kind = doc.get("t")
    cls = COMMAND_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise DecodeError(f"unknown command type {kind!r}")
    fields = dataclasses.fields(cls)
    expected = {f.name for f in fields} | {"v", "t"}
    if set(doc) != expected:
        extra, missing = sorted(set(doc) - expected), sorted(expected - set(doc))
        raise DecodeError(f"{kind}: unexpected fields {extra}, missing fields {missing}")
    try:
        values = {f.name: _decode_value(f.metadata["kind"], doc[f.name]) for f in fields}
        cmd = cls(**values)
    except (TypeError, ValueError) as exc:  # unhashable keys, wrong arity...
        raise DecodeError(f"{kind}: {exc}") from None
    try:
        _check_shape(cmd)
    except _Reject as exc:
        raise DecodeError(exc.message) from None
    return cmd


# -- state values -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BrokerInfo:
    """A registered broker. ``draining``: it gets no new replicas."""

    node_id: int
    address: str
    rack: str | None
    draining: bool
    registered_index: int


@dataclass(frozen=True)
class PartitionInfo:
    """One partition's assignment: its replicas (target), the id of its Raft group, and an
    epoch bumped by every reassignment (so a broker can tell assignments apart)."""

    topic: str
    partition: int
    replicas: tuple[int, ...]
    group_id: int
    epoch: int

    @property
    def preferred_leader(self) -> int:
        """The replica that should lead when it can: the first one."""
        return self.replicas[0]


@dataclass(frozen=True)
class TopicInfo:
    """A topic: ``topic_id`` is the index of the entry that created it, so a topic deleted and
    created again under the same name is told apart. ``config``: overrides only."""

    name: str
    topic_id: int
    replication_factor: int
    config: Mapping[str, int]
    partitions: tuple[PartitionInfo, ...]


@dataclass(frozen=True)
class CommittedOffset:
    """A group's committed position in one partition, with when and at which entry."""

    offset: int
    metadata: str
    commit_time_ms: int
    index: int


@dataclass(frozen=True)
class GroupInfo:
    """A consumer group as the metadata state knows it (issue 5 adds members)."""

    group: str
    generation: int
    offsets: Mapping[TopicPartition, CommittedOffset]


# -- validation helpers (raise _Reject) -----------------------------------------------------------


def _check_topic_name(name: str) -> None:
    """The rules of ``rillet.node.topics.validate_name``, with its messages."""
    if not name:
        raise _Reject(RejectCode.INVALID_TOPIC, "topic name must not be empty")
    if name in (".", ".."):
        raise _Reject(RejectCode.INVALID_TOPIC, f"topic name {name!r} is not allowed")
    if len(name) > 249:
        raise _Reject(RejectCode.INVALID_TOPIC,
                      f"topic name is {len(name)} characters long; the limit is 249")
    if not _NAME_RE.fullmatch(name):
        raise _Reject(RejectCode.INVALID_TOPIC,
                      f"topic name {name!r} may only contain letters, digits, '.', '_' and '-'")


def _check_group_name(group: str) -> None:
    """Group ids follow the topic-name rules (they appear in paths, metrics and the CLI)."""
    if not group or len(group) > 249 or group in (".", "..") or not _NAME_RE.fullmatch(group):
        raise _Reject(RejectCode.INVALID_GROUP,
                      f"group id {group!r} must be 1-249 letters, digits, '.', '_' or '-' "
                      "(and not '.' or '..')")


def _check_setting(name: str, value: int) -> None:
    """One topic setting override, with ``rillet.node.topics.TopicSettings.check``'s rules."""
    dotted = name.replace("_", ".")
    if name in ("retention_ms", "retention_bytes"):
        if value != -1 and not 1 <= value <= INT64_MAX:
            raise _Reject(RejectCode.INVALID_CONFIG,
                          f"{dotted} must be -1 (no limit) or at least 1, got {value}")
    elif name == "segment_bytes":
        if not 4096 <= value <= 2**31 - 1:
            raise _Reject(RejectCode.INVALID_CONFIG,
                          f"segment.bytes must be in [4096, {2**31 - 1}], got {value}")
    elif name == "segment_ms":
        if not 1 <= value <= 2**62:
            raise _Reject(RejectCode.INVALID_CONFIG, f"segment.ms must be at least 1, got {value}")
    elif name == "delete_retention_ms":
        if not 0 <= value <= 2**62:
            raise _Reject(RejectCode.INVALID_CONFIG,
                          f"delete.retention.ms must be in [0, {2**62}], got {value}")
    elif name == "cleanup_policy":
        if value not in (CLEANUP_DELETE, CLEANUP_COMPACT, CLEANUP_COMPACT_DELETE):
            raise _Reject(RejectCode.INVALID_CONFIG, f"unknown cleanup.policy {value}")
    else:  # pragma: no cover - callers check names first
        raise AssertionError(name)


def _check_settings(settings: Mapping[str, int]) -> None:
    unknown = set(settings) - set(TOPIC_SETTINGS)
    if unknown:
        raise _Reject(RejectCode.INVALID_CONFIG,
                      f"unknown topic settings: {', '.join(sorted(unknown))}")
    for name in sorted(settings):
        _check_setting(name, settings[name])


def _check_address(address: str) -> None:
    host, sep, port = address.rpartition(":")
    # Length first: int() of thousands of digits raises instead of answering.
    if (len(address) > MAX_ADDRESS_CHARS or not sep or not host or not _HOST_RE.fullmatch(host)
            or not port.isascii() or not port.isdigit() or len(port) > 5
            or not 1 <= int(port) <= 65535):
        raise _Reject(RejectCode.INVALID_BROKER,
                      f"broker address must be HOST:PORT with a port in [1, 65535], "
                      f"got {address!r}")


def _check_node_id(node_id: int) -> None:
    if not 0 <= node_id <= MAX_NODE_ID:
        raise _Reject(RejectCode.INVALID_BROKER,
                      f"node id must be in [0, {MAX_NODE_ID}], got {node_id}")


def _check_acl(key: AclKey) -> None:
    """The rules of ``rillet.node.security.acl.AclRule.check``: the node checks rules (with
    friendlier messages) before proposing; this keeps the replicated state clean whatever is
    proposed."""
    principal, operation, resource_type, name, pattern = key
    if not principal or len(principal) > MAX_ACL_PRINCIPAL_CHARS or not principal.isprintable() \
            or principal != principal.strip() or ("*" in principal and principal != "*"):
        raise _Reject(RejectCode.INVALID_REQUEST,
                      f"ACL principal must be 1-{MAX_ACL_PRINCIPAL_CHARS} printable characters "
                      f"or '*', got {principal!r}")
    ops = ACL_OPERATIONS_ON.get(resource_type)
    if ops is None:
        raise _Reject(RejectCode.INVALID_REQUEST,
                      f"unknown ACL resource type {resource_type!r}; known: "
                      f"{', '.join(sorted(ACL_OPERATIONS_ON))}")
    if operation not in ops:
        raise _Reject(RejectCode.INVALID_REQUEST,
                      f"ACL operation {operation!r} does not apply to a {resource_type}; "
                      f"known: {', '.join(sorted(ops))}")
    if pattern not in ACL_PATTERNS:
        raise _Reject(RejectCode.INVALID_REQUEST,
                      f"ACL pattern must be literal or prefix, got {pattern!r}")
    if resource_type == "cluster":
        if name or pattern != "literal":
            raise _Reject(RejectCode.INVALID_REQUEST,
                          "an ACL on the cluster names no resource and no prefix")
    elif not _ACL_NAME_RE.fullmatch(name) or (pattern == "literal" and not name):
        raise _Reject(RejectCode.INVALID_REQUEST,
                      f"ACL {resource_type} name must be 1-249 letters, digits, '.', '_' or '-' "
                      f"(a prefix may be empty), got {name!r}")


def _ids(ids: Iterable[int]) -> str:
    return "[" + " ".join(str(i) for i in ids) + "]"


# -- placement ------------------------------------------------------------------------------------


def place_partitions(live: list[int], replica_load: Mapping[int, int],
                     leader_load: Mapping[int, int], cursor: int, partitions: int,
                     replication_factor: int) -> list[tuple[int, ...]]:
    """Replica lists (preferred leader first) for ``partitions`` new partitions over the
    ``live`` brokers (sorted ids), given each broker's current replica and leader counts and
    the number of partitions placed before (``cursor``). Pure and deterministic: see the
    module docstring for the algorithm and why it stays balanced."""
    n = len(live)
    assert 1 <= replication_factor <= n, (replication_factor, live)
    reps = {b: replica_load.get(b, 0) for b in live}
    leads = {b: leader_load.get(b, 0) for b in live}
    out: list[tuple[int, ...]] = []
    for p in range(partitions):
        rot = (cursor + p) % n
        pos = {b: (i - rot) % n for i, b in enumerate(live)}
        low = min(reps.values())
        at_low = [b for b in live if reps[b] == low]
        # Only a broker some replica-balanced set can contain may lead: if at least rf
        # brokers hold the fewest replicas, the set must be made of them alone.
        eligible = at_low if len(at_low) >= replication_factor else live
        leader = min(eligible, key=lambda b: (leads[b], reps[b], pos[b]))
        # Followers: fewest replicas first; among equals, those that lead MOST, so brokers
        # still owed a leadership keep a low replica count and stay eligible to lead.
        followers = sorted((b for b in live if b != leader),
                           key=lambda b: (reps[b], -leads[b], pos[b]))[:replication_factor - 1]
        replicas = (leader, *sorted(followers, key=lambda b: pos[b]))
        for b in replicas:
            reps[b] += 1
        leads[leader] += 1
        out.append(replicas)
    return out


# -- the state machine ----------------------------------------------------------------------------


@dataclass
class _Group:
    generation: int
    offsets: dict[TopicPartition, CommittedOffset]


class MetadataState:
    """The controller's state. Change it only through ``apply`` / ``apply_bytes`` / ``skip``
    (and ``restore``); read it through the query methods, whose values are immutable.

    ``max_partitions`` bounds partitions per topic. It must be the same on every node (it is
    part of the state and of its snapshot), so it comes from cluster-wide configuration.
    """

    def __init__(self, *, max_partitions: int = DEFAULT_MAX_PARTITIONS) -> None:
        if not 1 <= max_partitions <= 100_000:
            raise ValueError(f"max_partitions must be in [1, 100000], got {max_partitions}")
        self.max_partitions = max_partitions
        self.applied_index = 0
        self._brokers: dict[int, BrokerInfo] = {}
        self._topics: dict[str, TopicInfo] = {}
        self._groups: dict[str, _Group] = {}
        self._producer_blocks: dict[int, ProducerIdBlock] = {}
        # Replaced (never mutated) on every change: readers may keep it and compare by identity.
        self._acls: frozenset[AclKey] = frozenset()
        self.next_producer_id = 0
        # Raft group ids for partitions; 0 is left for the metadata group itself.
        self.next_group_id = 1
        # Partitions ever placed: the rotation that spreads topics' first replicas.
        self.placement_cursor = 0

    # -- applying ---------------------------------------------------------------------------

    def skip(self, index: int) -> None:
        """Account for an entry that carries no command (a leader no-op, a membership change):
        only ``applied_index`` moves. Stale indexes are ignored, like in ``apply``."""
        if _is_int(index) and index > self.applied_index:
            self.applied_index = index

    def apply_bytes(self, index: int, data: bytes) -> Result:
        """Decode and apply the entry at ``index``; undecodable bytes are a rejection."""
        try:
            cmd = decode_command(data)
        except DecodeError as exc:
            if not _is_int(index) or index <= self.applied_index:
                return Rejected(index if _is_int(index) else -1, "?",
                                RejectCode.ALREADY_APPLIED, "entry already applied")
            self.applied_index = index
            return Rejected(index, "?", RejectCode.UNDECODABLE, str(exc))
        return self.apply(index, cmd)

    def apply(self, index: int, command: Command) -> Result:
        """Apply ``command`` as the entry at ``index``. Deterministic; never raises for bad
        input: a refused command returns ``Rejected`` and leaves everything but
        ``applied_index`` as it was. An index at or below ``applied_index`` is refused with
        ALREADY_APPLIED and changes nothing at all (replay after a restore is harmless)."""
        kind = type(command).__name__
        if not _is_int(index) or index <= self.applied_index:
            return Rejected(index if _is_int(index) else -1, kind, RejectCode.ALREADY_APPLIED,
                            f"entry {index} is not above the applied index "
                            f"{self.applied_index}")
        self.applied_index = index
        handler = self._HANDLERS.get(kind)
        try:
            _check_shape(command)
            assert handler is not None
            # Handlers validate everything first (raising _Reject) and only then mutate; the
            # mutating part raises nothing but broken invariants.
            return handler(self, index, command)
        except _Reject as rej:
            return Rejected(index, kind, rej.code, rej.message)

    # -- handlers (validate, then mutate) ---------------------------------------------------

    def _register_broker(self, index: int, cmd: RegisterBroker) -> Result:
        _check_node_id(cmd.node_id)
        _check_address(cmd.address)
        if cmd.rack is not None and not (
                0 < len(cmd.rack) <= MAX_RACK_CHARS and cmd.rack.isprintable()):
            raise _Reject(RejectCode.INVALID_BROKER,
                          f"rack must be 1-{MAX_RACK_CHARS} printable characters, "
                          f"got {cmd.rack!r}")
        for other in self._brokers.values():
            if other.address == cmd.address and other.node_id != cmd.node_id:
                raise _Reject(RejectCode.ADDRESS_IN_USE,
                              f"address {cmd.address} is already registered by broker "
                              f"{other.node_id}")
        old = self._brokers.get(cmd.node_id)
        if old is None:
            self._brokers[cmd.node_id] = BrokerInfo(cmd.node_id, cmd.address, cmd.rack, False,
                                                    index)
            return Accepted(index, "RegisterBroker",
                            f"broker {cmd.node_id} registered at {cmd.address}")
        self._brokers[cmd.node_id] = dataclasses.replace(old, address=cmd.address,
                                                         rack=cmd.rack)
        return Accepted(index, "RegisterBroker",
                        f"broker {cmd.node_id} re-registered at {cmd.address}")

    def _known_broker(self, node_id: int) -> BrokerInfo:
        broker = self._brokers.get(node_id)
        if broker is None:
            raise _Reject(RejectCode.UNKNOWN_BROKER, f"no broker {node_id} is registered")
        return broker

    def _unregister_broker(self, index: int, cmd: UnregisterBroker) -> Result:
        self._known_broker(cmd.node_id)
        held = [f"{p.topic}/{p.partition}" for p in self.partitions()
                if cmd.node_id in p.replicas]
        if held:
            shown = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
            raise _Reject(RejectCode.BROKER_IN_USE,
                          f"broker {cmd.node_id} still holds {len(held)} replicas ({shown}); "
                          "drain it and reassign them first")
        del self._brokers[cmd.node_id]
        self._producer_blocks.pop(cmd.node_id, None)
        return Accepted(index, "UnregisterBroker", f"broker {cmd.node_id} unregistered")

    def _mark_draining(self, index: int, cmd: MarkBrokerDraining) -> Result:
        broker = self._known_broker(cmd.node_id)
        what = "draining" if cmd.draining else "accepting replicas"
        if broker.draining == cmd.draining:
            return Accepted(index, "MarkBrokerDraining",
                            f"broker {cmd.node_id} was already {what}")
        self._brokers[cmd.node_id] = dataclasses.replace(broker, draining=cmd.draining)
        return Accepted(index, "MarkBrokerDraining", f"broker {cmd.node_id} is now {what}")

    def _create_topic(self, index: int, cmd: CreateTopic) -> Result:
        _check_topic_name(cmd.name)
        if cmd.name in self._topics:
            raise _Reject(RejectCode.TOPIC_EXISTS, f"topic {cmd.name!r} already exists")
        if not 1 <= cmd.partitions <= self.max_partitions:
            raise _Reject(RejectCode.INVALID_CONFIG,
                          f"partitions must be in [1, {self.max_partitions}] "
                          f"(max_partitions), got {cmd.partitions}")
        rf = cmd.replication_factor
        if rf not in REPLICATION_FACTORS:
            raise _Reject(RejectCode.INVALID_CONFIG,
                          f"replication_factor must be 1, 3 or 5, got {rf}")
        live = self.live_brokers()
        if rf > len(live):
            raise _Reject(RejectCode.NOT_ENOUGH_BROKERS,
                          f"replication_factor {rf} needs {rf} live brokers; "
                          f"{len(live)} are live {_ids(live)}")
        _check_settings(cmd.config)
        replica_load, leader_load = self.loads()
        placed = place_partitions(live, replica_load, leader_load, self.placement_cursor,
                                  cmd.partitions, rf)
        parts = tuple(PartitionInfo(cmd.name, p, replicas, self.next_group_id + p, 0)
                      for p, replicas in enumerate(placed))
        self.next_group_id += cmd.partitions
        self.placement_cursor += cmd.partitions
        self._topics[cmd.name] = TopicInfo(cmd.name, index, rf, dict(cmd.config), parts)
        return Accepted(index, "CreateTopic",
                        f"created topic {cmd.name!r}: {cmd.partitions} partitions, "
                        f"replication factor {rf}, leaders "
                        f"{_ids(p.preferred_leader for p in parts[:8])}"
                        + (" ..." if len(parts) > 8 else ""))

    def _known_topic(self, name: str) -> TopicInfo:
        topic = self._topics.get(name)
        if topic is None:
            _check_topic_name(name)
            raise _Reject(RejectCode.UNKNOWN_TOPIC, f"unknown topic {name!r}")
        return topic

    def _delete_topic(self, index: int, cmd: DeleteTopic) -> Result:
        topic = self._known_topic(cmd.name)
        del self._topics[cmd.name]
        dropped = 0
        for group in self._groups.values():
            for key in [k for k in group.offsets if k[0] == cmd.name]:
                del group.offsets[key]
                dropped += 1
        return Accepted(index, "DeleteTopic",
                        f"deleted topic {cmd.name!r} ({len(topic.partitions)} partitions, "
                        f"{dropped} committed offsets)")

    def _alter_topic_config(self, index: int, cmd: AlterTopicConfig) -> Result:
        topic = self._known_topic(cmd.name)
        if not cmd.updates and not cmd.removals:
            raise _Reject(RejectCode.INVALID_REQUEST, "nothing to change: no updates, no removals")
        unknown = set(cmd.removals) - set(TOPIC_SETTINGS)
        if unknown:
            raise _Reject(RejectCode.INVALID_CONFIG,
                          f"unknown topic settings: {', '.join(sorted(unknown))}")
        both = set(cmd.removals) & set(cmd.updates)
        if both:
            raise _Reject(RejectCode.INVALID_REQUEST,
                          f"settings both updated and removed: {', '.join(sorted(both))}")
        _check_settings(cmd.updates)
        config = {k: v for k, v in topic.config.items() if k not in cmd.removals}
        config.update(cmd.updates)
        self._topics[cmd.name] = dataclasses.replace(topic, config=config)
        return Accepted(index, "AlterTopicConfig",
                        f"topic {cmd.name!r} overrides now {_render(config)}")

    def _partition(self, topic: TopicInfo, partition: int) -> PartitionInfo:
        if not 0 <= partition < len(topic.partitions):
            raise _Reject(RejectCode.PARTITION_OUT_OF_RANGE,
                          f"topic {topic.name!r} has partitions 0 to "
                          f"{len(topic.partitions) - 1}; there is no partition {partition}")
        return topic.partitions[partition]

    def _reassign(self, index: int, cmd: ReassignPartition) -> Result:
        topic = self._known_topic(cmd.topic)
        current = self._partition(topic, cmd.partition)
        replicas = cmd.replicas
        if len(replicas) != topic.replication_factor:
            raise _Reject(RejectCode.INVALID_REQUEST,
                          f"topic {topic.name!r} has replication factor "
                          f"{topic.replication_factor}; got {len(replicas)} replicas "
                          f"{_ids(replicas)}")
        if len(set(replicas)) != len(replicas):
            raise _Reject(RejectCode.INVALID_REQUEST,
                          f"replicas {_ids(replicas)} name a broker twice")
        for b in replicas:
            broker = self._known_broker(b)
            if broker.draining and b not in current.replicas:
                raise _Reject(RejectCode.INVALID_BROKER,
                              f"broker {b} is draining and cannot take new replicas")
        if replicas == current.replicas:
            return Accepted(index, "ReassignPartition",
                            f"{cmd.topic}/{cmd.partition} already on {_ids(replicas)}")
        new = dataclasses.replace(current, replicas=replicas, epoch=current.epoch + 1)
        parts = list(topic.partitions)
        parts[cmd.partition] = new
        self._topics[cmd.topic] = dataclasses.replace(topic, partitions=tuple(parts))
        return Accepted(index, "ReassignPartition",
                        f"{cmd.topic}/{cmd.partition} {_ids(current.replicas)} -> "
                        f"{_ids(replicas)} epoch {new.epoch}")

    def _allocate_producer_ids(self, index: int, cmd: AllocateProducerIds) -> Result:
        self._known_broker(cmd.node_id)
        if not 1 <= cmd.count <= MAX_PRODUCER_ID_BLOCK:
            raise _Reject(RejectCode.INVALID_REQUEST,
                          f"count must be in [1, {MAX_PRODUCER_ID_BLOCK}], got {cmd.count}")
        if self.next_producer_id + cmd.count - 1 > MAX_PRODUCER_ID:
            raise _Reject(RejectCode.PRODUCER_IDS_EXHAUSTED,
                          f"only {MAX_PRODUCER_ID - self.next_producer_id + 1} producer ids "
                          f"are left; asked for {cmd.count}")
        block = ProducerIdBlock(cmd.node_id, self.next_producer_id, cmd.count, index)
        self.next_producer_id += cmd.count
        self._producer_blocks[cmd.node_id] = block
        return Accepted(index, "AllocateProducerIds", block.describe(), producer_ids=block)

    def _commit_offsets(self, index: int, cmd: CommitGroupOffsets) -> Result:
        _check_group_name(cmd.group)
        if not -1 <= cmd.generation <= 2**31 - 1:
            raise _Reject(RejectCode.INVALID_REQUEST,
                          f"generation must be in [-1, {2**31 - 1}], got {cmd.generation}")
        if not cmd.offsets:
            raise _Reject(RejectCode.INVALID_REQUEST, "no offsets to commit")
        if not 0 <= cmd.commit_time_ms <= INT64_MAX:
            raise _Reject(RejectCode.INVALID_REQUEST,
                          f"commit_time_ms must be in [0, {INT64_MAX}], got {cmd.commit_time_ms}")
        for (t, p), om in sorted(cmd.offsets.items()):
            self._partition(self._known_topic(t), p)
            if not 0 <= om.offset <= INT64_MAX:
                raise _Reject(RejectCode.INVALID_REQUEST,
                              f"offset for {t}/{p} must be in [0, {INT64_MAX}], got {om.offset}")
            if len(om.metadata) > MAX_OFFSET_METADATA_CHARS:
                raise _Reject(RejectCode.INVALID_REQUEST,
                              f"offset metadata for {t}/{p} is {len(om.metadata)} characters; "
                              f"the limit is {MAX_OFFSET_METADATA_CHARS}")
        group = self._groups.get(cmd.group)
        if group is not None and 0 <= cmd.generation < group.generation:
            raise _Reject(RejectCode.FENCED,
                          f"group {cmd.group!r}: generation {cmd.generation} is older than "
                          f"the current generation {group.generation}")
        if group is None:
            group = self._groups[cmd.group] = _Group(max(cmd.generation, 0), {})
        group.generation = max(group.generation, cmd.generation)
        for key, om in cmd.offsets.items():
            group.offsets[key] = CommittedOffset(om.offset, om.metadata, cmd.commit_time_ms,
                                                 index)
        return Accepted(index, "CommitGroupOffsets",
                        f"group {cmd.group!r} generation {cmd.generation}: "
                        f"{len(cmd.offsets)} offsets committed")

    def _bump_generation(self, index: int, cmd: BumpGroupGeneration) -> Result:
        _check_group_name(cmd.group)
        if not 1 <= cmd.generation <= 2**31 - 1:
            raise _Reject(RejectCode.INVALID_REQUEST,
                          f"generation must be in [1, {2**31 - 1}], got {cmd.generation}")
        group = self._groups.get(cmd.group)
        if group is not None and cmd.generation <= group.generation:
            raise _Reject(RejectCode.FENCED,
                          f"group {cmd.group!r}: generation {cmd.generation} is not above the "
                          f"current generation {group.generation}")
        if group is None:
            group = self._groups[cmd.group] = _Group(0, {})
        group.generation = cmd.generation
        return Accepted(index, "BumpGroupGeneration",
                        f"group {cmd.group!r} generation {cmd.generation}")

    def _delete_group(self, index: int, cmd: DeleteGroup) -> Result:
        _check_group_name(cmd.group)
        group = self._groups.pop(cmd.group, None)
        if group is None:
            raise _Reject(RejectCode.UNKNOWN_GROUP, f"unknown group {cmd.group!r}")
        return Accepted(index, "DeleteGroup",
                        f"deleted group {cmd.group!r} ({len(group.offsets)} offsets)")

    def _add_acl(self, index: int, cmd: AddAcl) -> Result:
        key = cmd.key()
        _check_acl(key)
        if key in self._acls:
            return Accepted(index, "AddAcl", f"ACL {_render(key)} already present",
                            changed=False)
        self._acls = self._acls | {key}
        return Accepted(index, "AddAcl", f"ACL {_render(key)} added")

    def _remove_acl(self, index: int, cmd: RemoveAcl) -> Result:
        key = cmd.key()
        _check_acl(key)
        if key not in self._acls:
            return Accepted(index, "RemoveAcl", f"ACL {_render(key)} was not present",
                            changed=False)
        self._acls = self._acls - {key}
        return Accepted(index, "RemoveAcl", f"ACL {_render(key)} removed")

    _HANDLERS: ClassVar[dict[str, Callable[[MetadataState, int, Any], Result]]] = {
        "RegisterBroker": _register_broker,
        "UnregisterBroker": _unregister_broker,
        "MarkBrokerDraining": _mark_draining,
        "CreateTopic": _create_topic,
        "DeleteTopic": _delete_topic,
        "AlterTopicConfig": _alter_topic_config,
        "ReassignPartition": _reassign,
        "AllocateProducerIds": _allocate_producer_ids,
        "CommitGroupOffsets": _commit_offsets,
        "BumpGroupGeneration": _bump_generation,
        "DeleteGroup": _delete_group,
        "AddAcl": _add_acl,
        "RemoveAcl": _remove_acl,
    }

    # -- queries ----------------------------------------------------------------------------

    def brokers(self) -> list[BrokerInfo]:
        """Every registered broker, by node id."""
        return [self._brokers[i] for i in sorted(self._brokers)]

    def broker(self, node_id: int) -> BrokerInfo | None:
        return self._brokers.get(node_id)

    def live_brokers(self) -> list[int]:
        """Ids of registered brokers that take new replicas (not draining), sorted."""
        return sorted(i for i, b in self._brokers.items() if not b.draining)

    def topics(self) -> list[TopicInfo]:
        """Every topic, by name."""
        return [self._topics[n] for n in sorted(self._topics)]

    def topic(self, name: str) -> TopicInfo | None:
        return self._topics.get(name)

    def partitions(self, topic: str | None = None) -> Iterator[PartitionInfo]:
        """Every partition (of one topic, or of all by topic name), in order."""
        names = [topic] if topic is not None else sorted(self._topics)
        for name in names:
            t = self._topics.get(name)
            if t is not None:
                yield from t.partitions

    def partitions_of_broker(self, node_id: int) -> list[PartitionInfo]:
        """The partitions ``node_id`` holds a replica of: the Raft groups it must run."""
        return [p for p in self.partitions() if node_id in p.replicas]

    def loads(self) -> tuple[dict[int, int], dict[int, int]]:
        """(replicas held, partitions preferred-led) per registered broker."""
        reps = dict.fromkeys(self._brokers, 0)
        leads = dict.fromkeys(self._brokers, 0)
        for p in self.partitions():
            for b in p.replicas:
                reps[b] = reps.get(b, 0) + 1
            leads[p.preferred_leader] = leads.get(p.preferred_leader, 0) + 1
        return reps, leads

    def producer_id_blocks(self) -> list[ProducerIdBlock]:
        """The latest block handed to each broker, by node id."""
        return [self._producer_blocks[i] for i in sorted(self._producer_blocks)]

    def groups(self) -> list[str]:
        return sorted(self._groups)

    def group(self, group: str) -> GroupInfo | None:
        """A copy of the group's state (None if unknown)."""
        g = self._groups.get(group)
        if g is None:
            return None
        return GroupInfo(group, g.generation, dict(sorted(g.offsets.items())))

    def committed_offset(self, group: str, topic: str, partition: int) -> CommittedOffset | None:
        g = self._groups.get(group)
        return None if g is None else g.offsets.get((topic, partition))

    def acls(self) -> frozenset[AclKey]:
        """Every ACL rule. The same object until the rules change (a new one then), so a
        reader can cache what it derives from it and compare by identity."""
        return self._acls

    def describe(self) -> str:
        """``applied=12 brokers=3 topics=2 partitions=9 groups=1 next_pid=1000``."""
        return (f"applied={self.applied_index} brokers={len(self._brokers)} "
                f"topics={len(self._topics)} "
                f"partitions={sum(len(t.partitions) for t in self._topics.values())} "
                f"groups={len(self._groups)} next_pid={self.next_producer_id}")

    # -- snapshots --------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The whole state as canonical bytes: equal states give equal bytes."""
        doc = {
            "v": FORMAT_VERSION,
            "applied_index": self.applied_index,
            "max_partitions": self.max_partitions,
            "next_producer_id": self.next_producer_id,
            "next_group_id": self.next_group_id,
            "placement_cursor": self.placement_cursor,
            "brokers": [[b.node_id, b.address, b.rack, b.draining, b.registered_index]
                        for b in self.brokers()],
            "topics": [{"name": t.name, "topic_id": t.topic_id,
                        "replication_factor": t.replication_factor, "config": dict(t.config),
                        "partitions": [[list(p.replicas), p.group_id, p.epoch]
                                       for p in t.partitions]}
                       for t in self.topics()],
            "groups": [{"group": name, "generation": g.generation,
                        "offsets": [[t, p, c.offset, c.metadata, c.commit_time_ms, c.index]
                                    for (t, p), c in sorted(g.offsets.items())]}
                       for name, g in sorted(self._groups.items())],
            "producer_id_blocks": [[b.node_id, b.first, b.count, b.index]
                                   for b in self.producer_id_blocks()],
            "acls": [list(k) for k in sorted(self._acls)],
        }
        return _dumps(doc)

    @classmethod
    def restore(cls, data: bytes) -> MetadataState:
        """The state ``data`` (from ``snapshot()``) holds; SnapshotError if it is not one."""
        try:
            doc = json.loads(data.decode("utf-8"))
            if doc["v"] != FORMAT_VERSION:
                raise SnapshotError(f"unsupported snapshot version {doc['v']!r}")
            state = cls(max_partitions=_int(doc["max_partitions"]))
            state.applied_index = _int(doc["applied_index"])
            state.next_producer_id = _int(doc["next_producer_id"])
            state.next_group_id = _int(doc["next_group_id"])
            state.placement_cursor = _int(doc["placement_cursor"])
            for node_id, address, rack, draining, reg in doc["brokers"]:
                if not isinstance(draining, bool) or not isinstance(address, str) or not (
                        rack is None or isinstance(rack, str)):
                    raise SnapshotError(f"bad broker entry for {node_id!r}")
                state._brokers[_int(node_id)] = BrokerInfo(node_id, address, rack, draining,
                                                           _int(reg))
            for t in doc["topics"]:
                name = _str(t["name"])
                config = {_str(k): _int(v) for k, v in t["config"].items()}
                parts = tuple(
                    PartitionInfo(name, i, tuple(_int(b) for b in replicas), _int(gid),
                                  _int(epoch))
                    for i, (replicas, gid, epoch) in enumerate(t["partitions"]))
                state._topics[name] = TopicInfo(name, _int(t["topic_id"]),
                                                _int(t["replication_factor"]), config, parts)
            for g in doc["groups"]:
                offsets = {(_str(tp), _int(p)): CommittedOffset(_int(o), _str(m), _int(ts),
                                                                _int(ix))
                           for tp, p, o, m, ts, ix in g["offsets"]}
                state._groups[_str(g["group"])] = _Group(_int(g["generation"]), offsets)
            for node_id, first, count, ix in doc["producer_id_blocks"]:
                state._producer_blocks[_int(node_id)] = ProducerIdBlock(
                    node_id, _int(first), _int(count), _int(ix))
            # Absent from snapshots written before ACLs existed.
            acls = []
            for item in doc.get("acls", []):
                if not isinstance(item, list) or len(item) != 5:
                    raise SnapshotError(f"bad ACL entry {item!r}")
                acls.append(tuple(_str(x) for x in item))
            state._acls = frozenset(acls)  # type: ignore[arg-type]
        except SnapshotError:
            raise
        except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SnapshotError(f"not a metadata snapshot: {type(exc).__name__}: {exc}") from None
        return state

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MetadataState):
            return NotImplemented
        return self.snapshot() == other.snapshot()

    __hash__ = None  # type: ignore[assignment]  # mutable


def _int(v: object) -> int:
    if not _is_int(v):
        raise SnapshotError(f"expected an integer, got {v!r}")
    assert isinstance(v, int)
    return v


def _str(v: object) -> str:
    if not isinstance(v, str):
        raise SnapshotError(f"expected a string, got {v!r}")
    return v


# -- rebalancing ----------------------------------------------------------------------------------


def plan_rebalance(state: MetadataState) -> list[ReassignPartition]:
    """Reassignments that move every replica off draining brokers and even out replica and
    preferred-leader counts over the live brokers, moving as little as it can. Pure: applying
    the returned commands (in order) is what carries the plan out.

    1. Each replica on a draining broker goes to the least-loaded live broker not already in
       that partition (same slot, so a drained preferred leader is replaced in place).
    2. While the most- and least-loaded live brokers differ by more than one replica, move one
       replica of a partition from the most to the least loaded (first such partition in
       topic/partition order, preferring a leader replica when the most loaded also leads
       more, a follower otherwise).
    3. While some broker leads at least 2 more partitions than another, make the latter the
       preferred leader of a partition the former leads and the latter replicates (a swap
       inside the replica set: no data moves). With replication factor 1 partitions there may
       be no such swap; leaders then stay as uneven as the replicas force them to be.
    Ties go to the lower node id. Partitions whose replicas cannot all be live (replication
    factor above the live brokers) keep their draining replicas.
    """
    live = state.live_brokers()
    if not live:
        return []
    current = {(p.topic, p.partition): p.replicas for p in state.partitions()}
    plan = {k: list(v) for k, v in current.items()}
    reps = dict.fromkeys(live, 0)
    leads = dict.fromkeys(live, 0)
    for replicas in plan.values():
        for b in replicas:
            if b in reps:
                reps[b] += 1
        if replicas[0] in leads:
            leads[replicas[0]] += 1
    live_set = set(live)

    for key in sorted(plan):
        replicas = plan[key]
        for slot, b in enumerate(replicas):
            if b in live_set:
                continue
            candidates = [c for c in live if c not in replicas]
            if not candidates:
                continue
            c = min(candidates, key=lambda x: (reps[x], x))
            replicas[slot] = c
            reps[c] += 1
            if slot == 0:
                leads[c] += 1

    budget = sum(len(r) for r in plan.values()) + 1
    while budget > 0:
        budget -= 1
        hi = max(live, key=lambda x: (reps[x], -x))
        lo = min(live, key=lambda x: (reps[x], x))
        if reps[hi] - reps[lo] <= 1:
            break
        # Moving hi's leader slot helps leader balance only if hi leads more than lo.
        want_leader_slot = leads[hi] > leads[lo]
        movable = [k for k in sorted(plan) if hi in plan[k] and lo not in plan[k]]
        if not movable:
            break
        key = next((k for k in movable if (plan[k][0] == hi) == want_leader_slot), movable[0])
        replicas = plan[key]
        slot = replicas.index(hi)
        replicas[slot] = lo
        reps[hi] -= 1
        reps[lo] += 1
        if slot == 0:
            leads[hi] -= 1
            leads[lo] += 1

    budget = len(plan) + 1
    while budget > 0 and _move_one_leadership(plan, live, leads):
        budget -= 1

    return [ReassignPartition(t, p, tuple(plan[(t, p)]))
            for (t, p) in sorted(plan) if tuple(plan[(t, p)]) != current[(t, p)]]


def _move_one_leadership(plan: dict[TopicPartition, list[int]], live: list[int],
                         leads: dict[int, int]) -> bool:
    """Make one broker that leads at least 2 fewer partitions than another the preferred
    leader of a partition the other leads and it replicates; False if no such move exists
    (or leaders are within 1 already). Pairs are tried most- and least-leading first."""
    by_most = sorted(live, key=lambda x: (-leads[x], x))
    by_least = sorted(live, key=lambda x: (leads[x], x))
    for hi in by_most:
        for lo in by_least:
            if leads[hi] - leads[lo] <= 1:
                break
            for key in sorted(plan):
                replicas = plan[key]
                if replicas[0] == hi and lo in replicas:
                    slot = replicas.index(lo)
                    replicas[0], replicas[slot] = lo, hi
                    leads[hi] -= 1
                    leads[lo] += 1
                    return True
    return False


# -- the driver adapter ---------------------------------------------------------------------------


class MetadataMachine:
    """The metadata state as a ``rillet.cluster.driver.StateMachine``: applies committed
    entries (leader no-ops and membership changes only move ``applied_index``) and restores
    snapshots whose ``data`` is ``MetadataState.snapshot()``.

    ``apply`` returns each entry's ``Result`` (None for no-ops and membership changes): the
    driver resolves the proposing node's future with it. ``on_result`` (if set) sees every
    result, in order (logging, waking watchers). Neither is part of the replicated state.
    """

    def __init__(self, state: MetadataState | None = None, *,
                 on_result: Callable[[Result], None] | None = None) -> None:
        self.state = state if state is not None else MetadataState()
        self.on_result = on_result

    def apply(self, entries: list[Entry]) -> list[Result | None]:
        """Apply committed entries in log order; their results, in order."""
        results: list[Result | None] = []
        for entry in entries:
            if entry.kind == EntryKind.NORMAL and entry.data:
                result = self.state.apply_bytes(entry.index, entry.data)
                results.append(result)
                if self.on_result is not None:
                    self.on_result(result)
            else:
                self.state.skip(entry.index)
                results.append(None)
        return results

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the state with the snapshot's; an empty ``data`` means the empty state at
        ``meta.index`` (nothing was applied before it)."""
        if snapshot.data:
            self.state = MetadataState.restore(snapshot.data)
        else:
            self.state = MetadataState(max_partitions=self.state.max_partitions)
        self.state.skip(snapshot.meta.index)


__all__ = [
    "ACL_OPERATIONS_ON", "ACL_PATTERNS", "COMMAND_TYPES", "Accepted", "AclKey", "AddAcl",
    "AllocateProducerIds", "AlterTopicConfig", "BrokerInfo",
    "BumpGroupGeneration", "Command", "CommitGroupOffsets", "CommittedOffset", "CreateTopic",
    "DecodeError", "DeleteGroup", "DeleteTopic", "GroupInfo", "MarkBrokerDraining",
    "MetadataMachine", "MetadataState", "OffsetAndMetadata", "PartitionInfo", "ProducerIdBlock",
    "ReassignPartition", "RegisterBroker", "RejectCode", "Rejected", "RemoveAcl", "Result",
    "SnapshotError", "TopicInfo", "UnregisterBroker", "decode_command", "encode_command",
    "place_partitions", "plan_rebalance",
]
