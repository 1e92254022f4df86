"""Envelopes: records of one partition travel together and come out as they went in."""

from __future__ import annotations

import pytest

from streams.state.envelope import MalformedEnvelope, Record, pack, unpack


def test_records_come_out_in_order_with_their_headers() -> None:
    records = [
        Record(b"c-1", b'{"a":1}'),
        Record(b"phone:+86", b"", (("cxmon-record", b"identity-link"), ("x", b"\x00\xff"))),
        Record(b"", b"v"),
        Record(b"c-1", b'{"a":2}'),
    ]
    (envelope,) = pack(records, max_bytes=10_000)
    assert unpack(envelope) == records


def test_envelopes_keep_within_their_size_and_split_in_order() -> None:
    # Each frame: 4 + 2 (key) + 4 + 10 (value) + 2 (no headers) = 22 bytes.
    records = [Record(f"k{n}".encode(), bytes(10)) for n in range(10)]
    envelopes = list(pack(records, max_bytes=50))
    assert [len(e) for e in envelopes] == [44] * 5
    assert [r for e in envelopes for r in unpack(e)] == records


def test_a_record_larger_than_the_limit_goes_alone() -> None:
    big, small = Record(b"big", bytes(100)), Record(b"s", b"")
    envelopes = list(pack([small, big, small], max_bytes=50))
    assert [unpack(e) for e in envelopes] == [[small], [big], [small]]


def test_nothing_to_pack_is_no_envelope() -> None:
    assert list(pack([], max_bytes=50)) == []


@pytest.mark.parametrize("cut", [1, 5, 9, 20])
def test_a_cut_envelope_is_refused_by_name(cut: int) -> None:
    (envelope,) = pack([Record(b"key", b"value", (("h", b"v"),))], max_bytes=1_000)
    with pytest.raises(MalformedEnvelope, match="ends inside a record"):
        unpack(envelope[:-cut])
