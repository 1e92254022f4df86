"""Offsets in order: a record the consumer dropped is read again before any commit passes it."""

from __future__ import annotations

from streams.offsets import Admission, Cursors

TAKE, SEEN, REWIND, STALE = Admission.TAKE, Admission.SEEN, Admission.REWIND, Admission.STALE


def admitted(cursors: Cursors[str], offsets: list[int]) -> list[Admission]:
    return [cursors.admit("p", offset) for offset in offsets]


def test_records_in_order_are_taken_and_committed_once_done() -> None:
    cursors: Cursors[str] = Cursors()
    cursors.start("p", 142)
    assert admitted(cursors, [142, 143, 144]) == [TAKE, TAKE, TAKE]
    assert cursors.due() == {}, "taken is not done"
    cursors.finished("p", 144)
    assert cursors.due() == {"p": 145}
    cursors.committed({"p": 145})
    assert cursors.due() == {}


def test_a_hole_left_by_the_consumer_is_read_again_before_anything_after_it() -> None:
    # As measured after a restart: 142..148 delivered, then 274 (149..273 fetched, dropped).
    cursors: Cursors[str] = Cursors()
    cursors.start("p", 142)
    assert admitted(cursors, [*range(142, 149), 274, 275]) == [TAKE] * 7 + [REWIND, STALE]
    cursors.finished("p", 148)
    assert cursors.due() == {"p": 149}, "never past the hole"
    # After the seek back to 149: the records fetched before it are still arriving, then 149 on.
    assert admitted(cursors, [276, 149, 150]) == [STALE, TAKE, TAKE]
    assert admitted(cursors, list(range(151, 276))) == [TAKE] * 125
    cursors.finished("p", 275)
    assert cursors.due() == {"p": 276}


def test_a_hole_that_is_the_logs_own_is_accepted_when_read_again() -> None:
    # Compaction or transaction markers: after the rewind the log gives 20 again, not 13.
    cursors: Cursors[str] = Cursors()
    cursors.start("p", 10)
    assert admitted(cursors, [10, 11, 12, 20, 21]) == [TAKE, TAKE, TAKE, REWIND, STALE]
    assert admitted(cursors, [22, 20, 21, 22]) == [STALE, TAKE, TAKE, TAKE]
    cursors.finished("p", 22)
    assert cursors.due() == {"p": 23}


def test_records_delivered_again_after_a_seek_are_dropped() -> None:
    cursors: Cursors[str] = Cursors()
    cursors.start("p", 0)
    assert admitted(cursors, [0, 1, 2, 0, 1, 2, 3]) == [TAKE, TAKE, TAKE, SEEN, SEEN, SEEN, TAKE]


def test_an_abandoned_batch_is_read_again_from_what_is_done() -> None:
    cursors: Cursors[str] = Cursors()
    cursors.start("p", 0)
    admitted(cursors, [0, 1])
    cursors.finished("p", 1)
    admitted(cursors, [2, 3, 4])
    assert cursors.abandon("p") == 2
    assert admitted(cursors, [2, 3]) == [TAKE, TAKE]
    assert cursors.due() == {"p": 2}


def test_revoked_partitions_are_forgotten_and_commits_never_go_back() -> None:
    cursors: Cursors[str] = Cursors()
    cursors.start("p", 5)
    cursors.start("q", 0)
    admitted(cursors, [5, 6])
    cursors.finished("p", 6)
    cursors.finished("p", 5)  # an older batch reported late does not move `done` back
    assert cursors.due() == {"p": 7}
    cursors.forget(["p"])
    assert cursors.unknown(["p", "q"]) == {"p"}
    assert cursors.due() == {}
