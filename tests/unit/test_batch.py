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
    data[batch.RECORD_COUNT_FIELD] = 3  # then re-seal the CRC so only the count is wrong
    struct.pack_into("<I", data, batch.CRC_FIELD, batch.crc32c(bytes(data[batch.CRC_START:])))
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


def test_header_positions_match_records_proto() -> None:
    data = bytearray(batch.encode([b"a", b"b"], timestamps_ms=[7, 9]))
    batch.stamp(data, 40, 3, 17)
    assert struct.unpack_from("<qiqqb", data) == (40, len(data) - 12, 3, 17, batch.MAGIC)
    assert batch.HEADER_SIZE == 69 and batch.CRC_START == 33
    assert struct.unpack_from("<I", data, 29)[0] == batch.crc32c(bytes(data[33:]))
    assert struct.unpack_from("<hiqq", data, 33) == (0, 2, 7, 9)
    header = batch.validate(data)
    assert (header.base_offset, header.leader_term, header.raft_index) == (40, 3, 17)


@given(st.binary(max_size=100), st.booleans(), st.integers(0, 2**40), st.integers(1, 2**40))
def test_control_batch_round_trips_its_entry(data: bytes, conf: bool, base: int,
                                             index: int) -> None:
    control = bytearray(batch.encode_control(data, conf_change=conf))
    batch.stamp(control, base, 5, index)
    header = batch.verify(control)
    assert header.is_control and header.record_count == 0 and header.next_offset == base
    assert header.raft_index == index and header.size == len(control)
    assert batch.control_data(control) == (conf, data)
    assert batch.decode(control) == []


def test_producers_may_not_send_control_batches() -> None:
    with pytest.raises(batch.InvalidBatchError, match="producers may not send them"):
        batch.validate(batch.encode_control(b""))


def test_a_control_batch_with_records_is_invalid() -> None:
    control = bytearray(batch.encode_control(b"x"))
    struct.pack_into("<i", control, batch.RECORD_COUNT_FIELD, 1)
    struct.pack_into("<I", control, batch.CRC_FIELD,
                     batch.crc32c(bytes(control[batch.CRC_START:])))
    with pytest.raises(batch.InvalidBatchError, match="control batch holds no records"):
        batch.verify(control)


def test_decode_range_skips_control_batches() -> None:
    noop = bytearray(batch.encode_control(b""))
    batch.stamp(noop, 0, 1, 1)
    data = bytearray(batch.encode([b"x", b"y"], timestamps_ms=[1, 2]))
    batch.stamp(data, 0, 1, 2)
    conf = bytearray(batch.encode_control(b"\x00\x04", conf_change=True))
    batch.stamp(conf, 2, 1, 3)
    more = bytearray(batch.encode([b"z"], timestamps_ms=[3]))
    batch.stamp(more, 2, 1, 4)
    buf = b"".join(map(bytes, (noop, data, conf, more)))
    assert [(r.offset, r.value) for r in batch.decode_range(buf)] == [
        (0, b"x"), (1, b"y"), (2, b"z")]
    assert [r.value for r in batch.decode_range(buf, 2)] == [b"z"]


@given(st.lists(record, min_size=1, max_size=20), st.integers(0, 2**40), st.data())
def test_compacted_batches_keep_true_offsets_and_span(recs: list, base: int,
                                                      data: st.DataObject) -> None:
    """compact_records on an ordinary batch, then again on the result: survivors keep their
    offsets, key, value, timestamp and headers; header stamps and the span never change."""
    data_ = bytearray(batch.encode([r[1] for r in recs], keys=[r[0] for r in recs],
                                   timestamps_ms=[r[2] for r in recs],
                                   headers=[r[3] for r in recs]))
    batch.stamp(data_, base, 3, 9)
    full = batch.decode(data_)
    keep1 = sorted(data.draw(st.sets(st.integers(0, len(recs) - 1))))
    once = batch.compact_records(data_, keep1)
    h = batch.verify(once)
    if len(keep1) == len(recs):
        assert once == bytes(data_)  # nothing removed: the batch is left as it was
    else:
        assert h.is_compacted
    assert (h.base_offset, h.record_count, h.leader_term, h.raft_index) == (base, len(recs), 3, 9)
    assert batch.decode(once) == [full[i] for i in keep1]
    keep2 = sorted(data.draw(st.sets(st.integers(0, max(0, len(keep1) - 1)))))
    keep2 = [i for i in keep2 if i < len(keep1)]
    twice = batch.compact_records(once, keep2)
    assert batch.decode(twice) == [full[keep1[i]] for i in keep2]
    assert batch.verify(twice).next_offset == base + len(recs)
