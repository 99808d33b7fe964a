"""The record batch codec against the layout in records.proto."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rillet import batch

record = st.tuples(st.binary(max_size=20), st.binary(max_size=50), st.integers(0, 2**41),
                   st.lists(st.tuples(st.text(max_size=5), st.binary(max_size=5)), max_size=2))


@given(st.lists(record, min_size=1, max_size=30), st.integers(0, 2**40), st.integers(0, 2**31))
def test_encode_stamp_decode_round_trip(recs: list, base: int, term: int) -> None:
    keys = [r[0] for r in recs]
    values = [r[1] for r in recs]
    ts = [r[2] for r in recs]
    hdrs = [r[3] for r in recs]
    data = bytearray(batch.encode(values, keys=keys, timestamps_ms=ts, headers=hdrs))
    batch.stamp(data, base, term)
    header = batch.validate(data)
    assert (header.base_offset, header.leader_term, header.record_count) == (base, term, len(recs))
    assert header.max_timestamp_ms == max(ts)
    out = batch.decode(data)
    assert [(r.offset, r.key, r.value, r.timestamp_ms, list(r.headers)) for r in out] == [
        (base + i, k, v, t, h) for i, (k, v, t, h) in enumerate(recs)]


def test_crc32c_check_value() -> None:
    assert batch.crc32c(b"123456789") == 0xE3069283


def test_partition_for_key_is_crc_mod_count() -> None:
    assert batch.partition_for_key(b"123456789", 7) == 0xE3069283 % 7


def test_every_flipped_byte_inside_the_crc_is_detected() -> None:
    data = batch.encode([b"hello", b"world"], timestamps_ms=[5, 6])
    for i in range(batch.CRC_START, len(data)):
        damaged = bytearray(data)
        damaged[i] ^= 0x40
        with pytest.raises(batch.BatchError):
            batch.validate(damaged)


def test_record_count_mismatch_is_invalid() -> None:
    data = bytearray(batch.encode([b"a", b"b"], timestamps_ms=[1, 1]))
    data[27] = 3  # record_count, then re-seal the CRC so only the count is wrong
    struct.pack_into("<I", data, 21, batch.crc32c(bytes(data[batch.CRC_START:])))
    with pytest.raises(batch.InvalidBatchError, match="record count mismatch"):
        batch.validate(data)


def test_trailing_bytes_and_truncation_are_rejected() -> None:
    data = batch.encode([b"a"], timestamps_ms=[1])
    with pytest.raises(batch.InvalidBatchError, match="exactly one batch"):
        batch.validate(data + b"\0")
    with pytest.raises(batch.CorruptBatchError):
        batch.validate(data[:-1])
    with pytest.raises(batch.CorruptBatchError):
        batch.validate(data[:10])


def test_decode_range_trims_to_the_requested_offsets() -> None:
    parts = []
    for base in (0, 3):
        b = bytearray(batch.encode([b"x", b"y", b"z"], timestamps_ms=[1, 2, 3]))
        batch.stamp(b, base, 1)
        parts.append(bytes(b))
    recs = batch.decode_range(b"".join(parts), first_offset=2, end_offset=5)
    assert [r.offset for r in recs] == [2, 3, 4]
