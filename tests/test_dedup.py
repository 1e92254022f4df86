"""Ids already counted: duplicates, the same record read again, stored batches and expiry."""

from __future__ import annotations

from streams.state.dedup import OFFSET_BITS, SeenBatch, SeenIds, batch_key, id_digest, newest_ms


def test_an_id_read_at_another_place_is_a_duplicate_the_same_record_again_is_not() -> None:
    seen = SeenIds()
    digest = id_digest("cx.touchpoint-events", "e-1")
    assert seen.first_time(digest, partition=2, offset=10)
    assert seen.first_time(digest, partition=2, offset=10)  # read again after a crash
    assert not seen.first_time(digest, partition=2, offset=11)  # published twice
    assert not seen.first_time(digest, partition=3, offset=10)


def test_the_same_id_on_two_topics_is_two_ids() -> None:
    assert id_digest("cx.touchpoint-events", "x-1") != id_digest("cx.survey-answers", "x-1")


def test_a_stored_batch_round_trips_and_rebuilds_the_index() -> None:
    batch = SeenBatch(partition=5)
    first, second = id_digest("t", "a"), id_digest("t", "b")
    batch.add(first, 100, occurred_at_ms=2_000)
    batch.add(second, 103, occurred_at_ms=1_000)
    raw = batch.encode()
    assert len(raw) == 16 + 2 * 16  # 16 bytes an id, whatever its length
    assert newest_ms(raw) == 2_000
    restored = SeenBatch.decode(raw)
    assert list(restored.places()) == [
        (first, 5 << OFFSET_BITS | 100),
        (second, 5 << OFFSET_BITS | 103),
    ]

    seen = SeenIds()
    seen.load(restored)
    assert seen.first_time(first, 5, 100)  # the stored record itself, read again
    assert not seen.first_time(second, 5, 200)
    seen.forget(restored)
    assert seen.first_time(second, 5, 200)  # expired: counted again
    assert batch_key("cx.touchpoint-events:5", 100) == b"cx.touchpoint-events:5\x1f100"


def test_forgetting_a_batch_keeps_an_id_first_read_elsewhere() -> None:
    seen = SeenIds()
    digest = id_digest("t", "a")
    assert seen.first_time(digest, 1, 7)
    stale = SeenBatch(partition=1)
    stale.add(digest, 9, occurred_at_ms=0)  # a batch that read it later, at another place
    seen.forget(stale)
    assert not seen.first_time(digest, 1, 8)
