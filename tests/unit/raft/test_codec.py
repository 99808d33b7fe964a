"""The codec round-trips every value exactly and refuses malformed bytes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rillet.cluster.raft import codec
from rillet.cluster.raft.errors import CodecError
from rillet.cluster.raft.types import (
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

U64 = st.integers(min_value=0, max_value=2**64 - 1)
IDS = st.integers(min_value=1, max_value=2**64 - 1)
entries = st.builds(Entry, U64, U64, st.sampled_from(EntryKind), st.binary(max_size=64))


@st.composite
def conf_states(draw: st.DrawFn) -> ConfState:
    voters = draw(st.frozensets(IDS, max_size=5))
    learners = draw(st.frozensets(IDS, max_size=3)) - voters
    return ConfState(voters, learners)


snapshots = st.builds(Snapshot, st.builds(SnapshotMeta, U64, U64, conf_states()),
                      st.binary(max_size=64))
messages = st.builds(
    Message, st.sampled_from(MessageType), U64, U64, U64, U64, U64,
    st.lists(entries, max_size=4).map(tuple), U64, st.booleans(), U64,
    st.none() | snapshots, st.binary(max_size=16), st.booleans())


@given(messages)
def test_message_round_trip(m: Message) -> None:
    """Every message survives the wire exactly (the simulator relies on it)."""
    assert codec.decode_message(codec.encode_message(m)) == m


@given(st.builds(HardState, U64, U64, U64))
def test_hard_state_round_trip(hs: HardState) -> None:
    assert codec.decode_hard_state(codec.encode_hard_state(hs)) == hs


@given(st.builds(ConfChange, st.sampled_from(ConfChangeKind), U64))
def test_conf_change_round_trip(cc: ConfChange) -> None:
    assert codec.decode_conf_change(codec.encode_conf_change(cc)) == cc


@given(st.lists(entries, max_size=8))
def test_entries_round_trip(ents: list[Entry]) -> None:
    assert codec.decode_entries(codec.encode_entries(ents)) == ents


@given(snapshots)
def test_snapshot_round_trip(snap: Snapshot) -> None:
    assert codec.decode_snapshot(codec.encode_snapshot(snap)) == snap


@given(messages, st.data())
def test_truncated_message_is_refused(m: Message, data: st.DataObject) -> None:
    """A torn message never decodes to something else: it raises CodecError."""
    buf = codec.encode_message(m)
    cut = data.draw(st.integers(min_value=0, max_value=len(buf) - 1))
    with pytest.raises(CodecError):
        codec.decode_message(buf[:cut])


def test_unknown_version_and_trailing_bytes_are_refused() -> None:
    buf = codec.encode_message(Message(MessageType.HEARTBEAT, to=2, frm=1, term=1))
    with pytest.raises(CodecError, match="version"):
        codec.decode_message(b"\x02" + buf[1:])
    with pytest.raises(CodecError, match="trailing"):
        codec.decode_message(buf + b"\x00")
    with pytest.raises(CodecError, match="MessageType"):
        codec.decode_message(buf[:1] + b"\xff" + buf[2:])
    with pytest.raises(CodecError, match="version"):
        codec.decode_hard_state(b"\x09" + bytes(24))


def test_quiesce_flag_keeps_older_encodings() -> None:
    """The quiesce flag is bit 1 of the byte that carried only ``reject``: bytes encoded
    before it existed decode to the same message (quiesce false), and unknown bits are
    refused rather than ignored."""
    m = Message(MessageType.HEARTBEAT, to=2, frm=1, term=3, commit=4, reject=True)
    buf = codec.encode_message(m)
    flags_at = 1 + 1 + 8 * 6  # version, type, to, frm, term, log_term, index, commit
    assert buf[flags_at] == 0x01
    assert codec.decode_message(buf) == m
    quiet = codec.decode_message(buf[:flags_at] + b"\x03" + buf[flags_at + 1:])
    assert quiet.quiesce and quiet.reject
    with pytest.raises(CodecError, match="flags"):
        codec.decode_message(buf[:flags_at] + b"\x04" + buf[flags_at + 1:])
