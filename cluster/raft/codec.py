"""Byte encodings of the core's values, with the standard library's ``struct`` only.

The simulator passes every message through ``encode_message``/``decode_message`` so no object
is shared between nodes, and the gRPC transport carries the same bytes between brokers. Hard
states, entries and membership changes use the same building blocks for the disk.

Every top-level encoding starts with a version byte (``VERSION``); a decoder refuses versions it
does not know and any trailing or missing bytes, raising ``CodecError``. Round trips are exact:
``decode_x(encode_x(v)) == v`` for every value. All integers are big-endian and unsigned;
node ids, indexes and terms are 64-bit; byte strings are length-prefixed (32-bit).

Layout (v1):

- Entry: index u64, term u64, kind u8, len u32, data.
- ConfState: n u32, n voter ids u64; m u32, m learner ids u64 (each sorted ascending).
- Snapshot: index u64, term u64, ConfState, len u32, data.
- Message: version u8, type u8, to u64, frm u64, term u64, log_term u64, index u64,
  commit u64, flags u8, reject_hint u64, entry count u32, entries, has_snapshot u8,
  [Snapshot], len u32, context. ``flags``: bit 0 ``reject``, bit 1 ``quiesce`` (added
  without a version change: every message encoded before it has ``quiesce`` false and
  decodes as before; other bits are refused).
- HardState: version u8, term u64, vote u64, commit u64.
- ConfChange: version u8, kind u8, node_id u64.
- Entries: version u8, count u32, entries.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import TypeVar

from .errors import CodecError
from .types import (
    ConfChange,
    ConfChangeKind,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    Message,
    MessageType,
    Snapshot,
    SnapshotMeta,
)

VERSION = 1

_E = TypeVar("_E", MessageType, EntryKind, ConfChangeKind)

_U8 = struct.Struct(">B")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_ENTRY_HEAD = struct.Struct(">QQBI")
_MSG_HEAD = struct.Struct(">BBQQQQQQBQ")
_HARD_STATE = struct.Struct(">BQQQ")
_CONF_CHANGE = struct.Struct(">BBQ")
_FLAG_REJECT = 0x01
_FLAG_QUIESCE = 0x02


class _Reader:
    """A cursor over bytes that raises ``CodecError`` instead of reading past the end."""

    def __init__(self, buf: bytes) -> None:
        # Plain bytes: slicing copies once, straight into the result (hot path for entries).
        self._buf = bytes(buf)
        self._pos = 0

    def unpack(self, fmt: struct.Struct) -> tuple[int, ...]:
        if self._pos + fmt.size > len(self._buf):
            raise CodecError(f"truncated: need {fmt.size} bytes at offset {self._pos}")
        values: tuple[int, ...] = fmt.unpack_from(self._buf, self._pos)
        self._pos += fmt.size
        return values

    def u32(self) -> int:
        return self.unpack(_U32)[0]

    def u64(self) -> int:
        return self.unpack(_U64)[0]

    def raw(self, n: int) -> bytes:
        if self._pos + n > len(self._buf):
            raise CodecError(f"truncated: need {n} bytes at offset {self._pos}")
        out = self._buf[self._pos:self._pos + n]
        self._pos += n
        return out

    def blob(self) -> bytes:
        return self.raw(self.u32())

    def version(self) -> None:
        (version,) = self.unpack(_U8)
        if version != VERSION:
            raise CodecError(f"unknown encoding version {version} (this code knows {VERSION})")

    def done(self) -> None:
        if self._pos != len(self._buf):
            raise CodecError(f"{len(self._buf) - self._pos} trailing bytes")


def _enum(cls: type[_E], value: int) -> _E:
    try:
        return cls(value)
    except ValueError:
        raise CodecError(f"unknown {cls.__name__} {value}") from None


def _put_blob(out: list[bytes], data: bytes) -> None:
    out.append(_U32.pack(len(data)))
    out.append(data)


def _put_entry(out: list[bytes], entry: Entry) -> None:
    out.append(_ENTRY_HEAD.pack(entry.index, entry.term, entry.kind, len(entry.data)))
    out.append(entry.data)


_ENTRY_KINDS = {k.value: k for k in EntryKind}


def _get_entry(r: _Reader) -> Entry:
    index, term, kind, n = r.unpack(_ENTRY_HEAD)
    entry_kind = _ENTRY_KINDS.get(kind)
    if entry_kind is None:
        raise CodecError(f"unknown EntryKind {kind}")
    return Entry(index, term, entry_kind, r.raw(n))


def _put_ids(out: list[bytes], ids: frozenset[int]) -> None:
    out.append(_U32.pack(len(ids)))
    out.extend(_U64.pack(i) for i in sorted(ids))


def _get_ids(r: _Reader) -> frozenset[int]:
    return frozenset(r.u64() for _ in range(r.u32()))


def _put_snapshot(out: list[bytes], snap: Snapshot) -> None:
    out.append(_U64.pack(snap.meta.index))
    out.append(_U64.pack(snap.meta.term))
    _put_ids(out, snap.meta.conf.voters)
    _put_ids(out, snap.meta.conf.learners)
    _put_blob(out, snap.data)


def _get_snapshot(r: _Reader) -> Snapshot:
    index, term = r.u64(), r.u64()
    voters = _get_ids(r)
    learners = _get_ids(r)
    if voters & learners or 0 in voters or 0 in learners:
        raise CodecError("malformed membership in snapshot")
    return Snapshot(SnapshotMeta(index, term, ConfState(voters, learners)), r.blob())


def encode_message(msg: Message) -> bytes:
    """The wire bytes of ``msg``."""
    out = [_MSG_HEAD.pack(VERSION, msg.type, msg.to, msg.frm, msg.term, msg.log_term,
                          msg.index, msg.commit,
                          int(msg.reject) | (_FLAG_QUIESCE if msg.quiesce else 0),
                          msg.reject_hint),
           _U32.pack(len(msg.entries))]
    for entry in msg.entries:
        _put_entry(out, entry)
    if msg.snapshot is None:
        out.append(_U8.pack(0))
    else:
        out.append(_U8.pack(1))
        _put_snapshot(out, msg.snapshot)
    _put_blob(out, msg.context)
    return b"".join(out)


def decode_message(buf: bytes) -> Message:
    """The message encoded in ``buf``; raises ``CodecError`` if malformed."""
    r = _Reader(buf)
    version, mtype, to, frm, term, log_term, index, commit, flags, hint = r.unpack(_MSG_HEAD)
    if version != VERSION:
        raise CodecError(f"unknown encoding version {version} (this code knows {VERSION})")
    if flags & ~(_FLAG_REJECT | _FLAG_QUIESCE):
        raise CodecError(f"bad message flags {flags:#x}")
    entries = tuple(_get_entry(r) for _ in range(r.u32()))
    (has_snapshot,) = r.unpack(_U8)
    if has_snapshot > 1:
        raise CodecError(f"bad snapshot flag {has_snapshot}")
    snapshot = _get_snapshot(r) if has_snapshot else None
    context = r.blob()
    r.done()
    return Message(type=_enum(MessageType, mtype), to=to, frm=frm, term=term,
                   log_term=log_term, index=index, entries=entries, commit=commit,
                   reject=bool(flags & _FLAG_REJECT), reject_hint=hint, snapshot=snapshot,
                   context=context, quiesce=bool(flags & _FLAG_QUIESCE))


def encode_hard_state(hs: HardState) -> bytes:
    """The disk bytes of a hard state (fixed size: 25 bytes)."""
    return _HARD_STATE.pack(VERSION, hs.term, hs.vote, hs.commit)


def decode_hard_state(buf: bytes) -> HardState:
    """The hard state encoded in ``buf``."""
    r = _Reader(buf)
    version, term, vote, commit = r.unpack(_HARD_STATE)
    if version != VERSION:
        raise CodecError(f"unknown encoding version {version} (this code knows {VERSION})")
    r.done()
    return HardState(term, vote, commit)


def encode_conf_change(cc: ConfChange) -> bytes:
    """The data of a CONF_CHANGE entry."""
    return _CONF_CHANGE.pack(VERSION, cc.kind, cc.node_id)


def decode_conf_change(buf: bytes) -> ConfChange:
    """The membership change in a CONF_CHANGE entry's data."""
    r = _Reader(buf)
    version, kind, node_id = r.unpack(_CONF_CHANGE)
    if version != VERSION:
        raise CodecError(f"unknown encoding version {version} (this code knows {VERSION})")
    r.done()
    return ConfChange(_enum(ConfChangeKind, kind), node_id)


def encode_entries(entries: Sequence[Entry]) -> bytes:
    """The disk bytes of a run of entries."""
    out = [_U8.pack(VERSION), _U32.pack(len(entries))]
    for entry in entries:
        _put_entry(out, entry)
    return b"".join(out)


def decode_entries(buf: bytes) -> list[Entry]:
    """The entries encoded in ``buf``."""
    r = _Reader(buf)
    r.version()
    entries = [_get_entry(r) for _ in range(r.u32())]
    r.done()
    return entries


def encode_snapshot(snap: Snapshot) -> bytes:
    """The disk bytes of a snapshot (meta, membership and data)."""
    out = [_U8.pack(VERSION)]
    _put_snapshot(out, snap)
    return b"".join(out)


def decode_snapshot(buf: bytes) -> Snapshot:
    """The snapshot encoded in ``buf``."""
    r = _Reader(buf)
    r.version()
    snap = _get_snapshot(r)
    r.done()
    return snap
