"""HardStateJournal: the term, vote and commit of EVERY Raft group of a node, in one file.

Raft must make a group's term and vote durable before it answers a vote request, and an
election touches every group at once. With one state file per group that was three fsyncs per
group per round (write, rename, directory): 1,000 partitions electing leaders meant thousands
of fsyncs in one round and seconds before any vote went out. Here every round appends the
changed hard states of all groups as fixed-size records and makes them durable with ONE
fdatasync, after the partition logs of the round were flushed (so a commit index on disk never
points past entries on disk).

File ``<data_dir>/raft-hardstate``: records of ``crc32c(u32) group(i64) term(i64) vote(i64)
commit(i64)``; the last record of a group wins. Opening reads until the first short or corrupt
record (a torn append) and cuts the file there. When the file grows past ``compact_bytes`` it
is rewritten with one record per live group (tmp, fsync, rename, fsync dir).
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
from pathlib import Path

from rillet.batch import crc32c
from rillet.cluster.raft import HardState
from rillet.node.storage.atomic import fsync_dir, write_atomic

log = logging.getLogger(__name__)

FILE_NAME = "raft-hardstate"
_BODY = struct.Struct("<qqqq")
_CRC = struct.Struct("<I")
RECORD_SIZE = _CRC.size + _BODY.size
LAZY_COMMIT_S = 1.0
"""Longest a commit-only change waits for its fsync (a restart may re-apply that much)."""
_GONE = -1
"""A record with this term is a tombstone: the group left this node."""
_TOMBSTONE = HardState(_GONE, 0, 0)


def _record(group: int, hs: HardState) -> bytes:
    body = _BODY.pack(group, hs.term, hs.vote, hs.commit)
    return _CRC.pack(crc32c(body)) + body


class HardStateJournal:
    """See the module docstring. ``stage`` runs on the event loop; ``sync`` in the syncer's
    worker thread; a lock keeps them apart."""

    def __init__(self, path: Path, *, compact_bytes: int = 4 << 20) -> None:
        self.path = path
        self.compact_bytes = compact_bytes
        self._lock = threading.Lock()
        self._states: dict[int, HardState] = {}
        self._staged: dict[int, HardState] = {}
        self._urgent = False  # a staged state changes a term or a vote
        self._last_sync = 0.0
        self._load()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._size = os.fstat(self._fd).st_size
        self.syncs = 0

    def _load(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        pos = 0
        while pos + RECORD_SIZE <= len(data):
            (crc,) = _CRC.unpack_from(data, pos)
            body = data[pos + _CRC.size:pos + RECORD_SIZE]
            if crc32c(body) != crc:
                break
            group, term, vote, commit = _BODY.unpack(body)
            if term == _GONE:
                self._states.pop(group, None)
            else:
                self._states[group] = HardState(term, vote, commit)
            pos += RECORD_SIZE
        if pos != len(data):
            log.warning("%s: cutting %d bytes of a torn or corrupt tail at %d", self.path,
                        len(data) - pos, pos)
            with open(self.path, "r+b") as fh:
                fh.truncate(pos)
                os.fsync(fh.fileno())

    def get(self, group: int) -> HardState | None:
        """The group's hard state as last staged or recovered; None if never saved."""
        with self._lock:
            hs = self._staged.get(group) or self._states.get(group)
        return None if hs is None or hs.term == _GONE else hs

    def stage(self, group: int, hs: HardState) -> None:
        """Record a new hard state. A new term or vote is durable after the next ``sync``; a
        new commit index alone may wait for a later one (Raft re-learns it from the leader),
        so steady replication costs one fsync per round (the data's), not two."""
        with self._lock:
            old = self._staged.get(group) or self._states.get(group)
            if old is None or old.term != hs.term or old.vote != hs.vote:
                self._urgent = True
            self._staged[group] = hs

    def forget(self, group: int) -> None:
        """The group left this node: a tombstone goes out with the next ``sync`` and
        compaction drops the group."""
        with self._lock:
            self._staged[group] = _TOMBSTONE

    def sync(self, *, force: bool = False) -> None:
        """Append every staged state and fdatasync once, when a staged term or vote needs it,
        ``force`` is set, or commit-only changes waited ``LAZY_COMMIT_S``. Blocking (worker
        thread)."""
        now = time.monotonic()
        with self._lock:
            if not self._staged:
                return
            if not (force or self._urgent or now - self._last_sync >= LAZY_COMMIT_S):
                return
            staged, self._staged = self._staged, {}
            self._urgent = False
            self._last_sync = now
            for g, hs in staged.items():
                if hs.term == _GONE:
                    self._states.pop(g, None)
                else:
                    self._states[g] = hs
        buf = b"".join(_record(g, hs) for g, hs in staged.items())
        try:
            os.write(self._fd, buf)
            os.fdatasync(self._fd)
        except BaseException:
            with self._lock:  # not durable: stage again so the next sync retries the states
                for g, hs in staged.items():
                    self._staged.setdefault(g, hs)
                self._urgent = True
            raise
        self._size += len(buf)
        self.syncs += 1
        if self._size > self.compact_bytes:
            self._compact()

    def _compact(self) -> None:
        with self._lock:
            states = dict(self._states)
        data = b"".join(_record(g, hs) for g, hs in sorted(states.items()))
        write_atomic(self.path, data)
        os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self._size = len(data)
        fsync_dir(self.path.parent)

    def close(self) -> None:
        """Write what is staged and close the file."""
        try:
            self.sync(force=True)
        finally:
            os.close(self._fd)
