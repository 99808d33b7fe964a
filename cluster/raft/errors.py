"""The errors the Raft core raises, as one small hierarchy with flags.

Callers branch on the flags (``retriable``, ``refresh_leader``), not on long lists of classes:
a driver that gets a ``NotLeaderError`` looks up ``leader`` and redirects; a producer that gets a
``ProposalDroppedError`` retries later. Broken invariants are not errors: they are ``assert``s and
crash the process, because continuing with a corrupt log is worse than stopping.
"""

from __future__ import annotations


class RaftError(Exception):
    """Base class for operating errors of the Raft core (never for broken invariants)."""

    retriable: bool = False
    refresh_leader: bool = False


class NotLeaderError(RaftError):
    """A leader-only request reached a node that is not the leader.

    ``leader`` is the leader this node currently knows of (``NONE`` = 0 when it knows none), so
    the caller can redirect without another round trip.
    """

    retriable = True
    refresh_leader = True

    def __init__(self, leader: int) -> None:
        super().__init__(f"not the leader (known leader: {leader})")
        self.leader = leader


class ProposalDroppedError(RaftError):
    """The leader refused a proposal for now: a leader transfer is running, or a membership
    change is still pending. Retrying later (on the same or the new leader) is safe."""

    retriable = True


class StorageError(RaftError):
    """Base class for the sentinel errors a ``Storage`` raises for out-of-range reads."""


class CompactedError(StorageError):
    """The requested index is below the storage's first index: those entries were compacted
    away (retention moved the log start). The leader answers by sending a snapshot."""


class UnavailableError(StorageError):
    """The requested index is above the storage's last index: the entry does not exist yet."""


class SnapshotTemporarilyUnavailableError(StorageError):
    """The storage cannot produce a snapshot right now; the leader will try again later."""

    retriable = True


class CodecError(ValueError):
    """Bytes that do not decode to a well-formed value (truncated, wrong version, bad tag)."""


class SnapshotOutOfDateError(StorageError):
    """A snapshot older than the one the storage already holds was offered to it."""
