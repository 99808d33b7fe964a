"""The pure Raft core: standard library only, no I/O, no clocks.

Start with ``core`` (RaftCore and its Ready/advance contract), ``types`` (the values it takes
and hands out) and ``storage`` (what it reads from disk). ``codec`` turns values into bytes;
``quorum``, ``progress`` and ``log`` are the pieces the core is built from. ``liveness`` is
the node-level peer tracking that quiescence (``Config.quiesce``) relies on.
"""

from .core import Config, RaftCore, Status
from .errors import (
    CodecError,
    CompactedError,
    NotLeaderError,
    ProposalDroppedError,
    RaftError,
    SnapshotOutOfDateError,
    SnapshotTemporarilyUnavailableError,
    StorageError,
    UnavailableError,
)
from .liveness import PeerLiveness
from .storage import LogWriter, MemoryStorage, Storage, persist_ready
from .types import (
    CAMPAIGN_TRANSFER,
    NONE,
    ConfChange,
    ConfChangeKind,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    Message,
    MessageType,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
    SoftState,
)

__all__ = [
    "CAMPAIGN_TRANSFER", "NONE", "CodecError", "CompactedError", "ConfChange", "ConfChangeKind",
    "ConfState", "Config", "Entry", "EntryKind", "HardState", "LogWriter", "MemoryStorage",
    "Message", "MessageType", "NotLeaderError", "PeerLiveness", "ProposalDroppedError",
    "RaftCore", "RaftError",
    "Ready", "Role", "Snapshot", "SnapshotMeta", "SnapshotOutOfDateError",
    "SnapshotTemporarilyUnavailableError", "SoftState", "Status", "Storage", "StorageError",
    "UnavailableError", "persist_ready",
]
