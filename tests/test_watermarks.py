"""The watermark over input partitions: idle ones vouch only for how far the others had got."""

from __future__ import annotations

from streams.state.watermarks import SourceMark, SourceProgress, decode_marks, encode_marks

MIN = 60_000


def progress(*marks: tuple[str, int | None, bool]) -> SourceProgress:
    tracked = SourceProgress({"a", "b"})
    for source, watermark, idle in marks:
        tracked.report(SourceMark(source, watermark, idle))
    return tracked


def test_the_slowest_partition_still_sending_holds_the_watermark() -> None:
    assert progress(("a", 10 * MIN, False)).watermark() is None, "b has not reported yet"
    assert progress(("a", 10 * MIN, False), ("b", 7 * MIN, False)).watermark() == 7 * MIN


def test_an_idle_partition_holds_nobody_back_once_it_says_so_after_the_others_moved() -> None:
    tracked = progress(("a", 10 * MIN, False), ("b", 3 * MIN, True))
    assert tracked.watermark() == 10 * MIN


def test_a_burst_after_a_quiet_spell_waits_for_the_idle_partition_to_say_so_again() -> None:
    # Both caught up at 15:00; then a burst: a is read first and reaches 30:00, while b
    # still counts as idle from before the burst and may hold records of 15:00-30:00.
    tracked = progress(("a", 15 * MIN, True), ("b", 15 * MIN, True))
    assert tracked.watermark() == 15 * MIN
    tracked.report(SourceMark("a", 30 * MIN, False))
    assert tracked.watermark() == 15 * MIN, "not past b's old time on b's old word"
    tracked.report(SourceMark("b", 22 * MIN, False))  # b had a burst too
    assert tracked.watermark() == 22 * MIN
    tracked.report(SourceMark("b", 22 * MIN, True))  # and has read it all
    assert tracked.watermark() == 30 * MIN


def test_all_idle_the_newest_time_counts_once_each_has_said_so_since() -> None:
    tracked = progress(("a", 20 * MIN, False), ("b", 5 * MIN, True))
    tracked.report(SourceMark("a", 40 * MIN, True))
    assert tracked.watermark() == 20 * MIN, "b vouched for 20:00 only"
    tracked.report(SourceMark("b", 5 * MIN, True))
    assert tracked.watermark() == 40 * MIN


def test_a_partition_idle_before_anything_was_known_says_so_again_first() -> None:
    tracked = progress(("b", None, True), ("a", 10 * MIN, False))
    assert tracked.watermark() is None
    tracked.report(SourceMark("b", None, True))
    assert tracked.watermark() == 10 * MIN


def test_a_partition_still_sending_without_a_time_holds_the_watermark_back() -> None:
    # A stage whose own inputs have not all reported yet forwards its mark with no time:
    # what it sends next may be older than anything the other partitions have reached.
    tracked = progress(("a", 40 * MIN, False), ("b", None, False))
    assert tracked.watermark() is None
    tracked.report(SourceMark("b", 2 * MIN, False))
    assert tracked.watermark() == 2 * MIN


def test_a_progress_record_is_taken_whole() -> None:
    tracked = SourceProgress({"a", "b"})
    marks = [SourceMark("a", 5 * MIN, True), SourceMark("b", MIN, False)]
    assert tracked.take(encode_marks(marks)) == marks
    assert tracked.watermark() == MIN


def test_an_idle_stage_vouches_for_its_own_time_not_for_the_others() -> None:
    # The contact stage said idle at 06:00 (all its inputs read to their end then); the
    # touchpoint events have since been read to 08:15 and reached here first. The stage
    # has not yet taken those marks: it may still release messages of 06:00-08:15.
    tracked = SourceProgress({"events:0", "contacts:0"}, stages={"contacts:0"})
    tracked.report(SourceMark("events:0", 6 * MIN, True))
    tracked.report(SourceMark("contacts:0", 6 * MIN, True))
    tracked.report(SourceMark("events:0", 8 * MIN + 15_000, True))
    tracked.report(SourceMark("contacts:0", 6 * MIN, True))
    assert tracked.watermark() == 6 * MIN, "not past what the stage has passed on"
    tracked.report(SourceMark("contacts:0", 8 * MIN + 15_000, True))
    assert tracked.watermark() == 8 * MIN + 15_000


def test_an_idle_stage_that_knows_no_time_yet_holds_the_watermark_back() -> None:
    tracked = SourceProgress({"events:0", "contacts:0"}, stages={"contacts:0"})
    tracked.report(SourceMark("events:0", 6 * MIN, True))
    tracked.report(SourceMark("contacts:0", None, True))
    assert tracked.watermark() is None


def test_an_idle_mark_vouches_for_nothing_read_after_its_worker_asked_for_the_ends() -> None:
    # b was at its end when its worker asked the broker, having read up to 15:00 anywhere.
    # A burst then reached a first, which was read and marked 30:00, and b's idle mark
    # arrived after that mark: b may hold burst records of 15:00-30:00 not read yet.
    tracked = progress(("a", 15 * MIN, False), ("b", 15 * MIN, False))
    tracked.report(SourceMark("a", 30 * MIN, False))
    tracked.report(SourceMark("b", 15 * MIN, True, vouches_ms=15 * MIN))
    assert tracked.watermark() == 15 * MIN, "not past what b's worker had read when it asked"
    tracked.report(SourceMark("b", 15 * MIN, True, vouches_ms=30 * MIN))  # asked again
    assert tracked.watermark() == 30 * MIN


def test_a_mark_without_a_vouch_reads_as_before_and_one_with_it_round_trips() -> None:
    marks = [SourceMark("a", 5, True, vouches_ms=9), SourceMark("b", None, False)]
    assert decode_marks(encode_marks(marks)) == marks
    assert decode_marks(b'[["a", 5, true]]') == [SourceMark("a", 5, True)]
