"""Event-time bounds: late records and records from the future are refused with a reason."""

from __future__ import annotations

import pytest

from models.decode import InvalidRecord
from models.records import (
    Contact,
    Direction,
    IdentityLink,
    SurveyAnswer,
    SurveyMetric,
    TouchpointEvent,
)
from streams.core.timeliness import Timeliness, span

NOW = 1_795_305_600_000
MINUTE = 60_000
BOUNDS = Timeliness(grace_ms=MINUTE, max_future_ms=5 * MINUTE)


def event(at_ms: int) -> TouchpointEvent:
    return TouchpointEvent(
        event_id="e-1",
        occurred_at_ms=at_ms,
        touchpoint="app.login",
        channel="app",
        direction=Direction.INBOUND,
    )


def refusal(record: TouchpointEvent | SurveyAnswer | IdentityLink, newest_ms: int | None) -> str:
    with pytest.raises(InvalidRecord) as caught:
        BOUNDS.check(record, newest_ms, NOW)
    return f"{caught.value.reason.value}: {caught.value}"


def test_within_grace_is_counted_beyond_it_is_late() -> None:
    newest = NOW - 10 * MINUTE
    BOUNDS.check(event(newest - MINUTE), newest, NOW)  # exactly the grace: still in
    BOUNDS.check(event(newest + MINUTE), newest, NOW)  # newer: always fine
    BOUNDS.check(event(newest - 7 * MINUTE), None, NOW)  # first of its partition
    assert refusal(event(newest - MINUTE - 1), newest) == (
        "late: occurred_at: 2026-11-21T23:48:59.999+00:00 is 1m0.001s older than the newest "
        "record before it on its partition (2026-11-21T23:50:00.000+00:00), more than the "
        "grace of 1m0s"
    )


def test_older_than_what_was_judged_is_late_even_when_first_on_its_partition() -> None:
    # A partition silent while the others moved on to 10:00 delivers its backlog: on its
    # own partition each record is in time, but its windows were judged without it.
    judged = NOW - 10 * MINUTE
    BOUNDS.check(event(judged - MINUTE), None, NOW, judged)  # exactly the grace: still in
    BOUNDS.check(event(judged + MINUTE), None, NOW, judged)
    with pytest.raises(InvalidRecord) as caught:
        BOUNDS.check(event(judged - 45 * MINUTE), None, NOW, judged)
    assert f"{caught.value.reason.value}: {caught.value}" == (
        "late: occurred_at: 2026-11-21T23:05:00.000+00:00 is 45m0s older than the event time "
        "already judged (2026-11-21T23:50:00.000+00:00), more than the grace of 1m0s: its "
        "partition fell behind the others"
    )


def test_beyond_the_clock_bound_is_from_the_future() -> None:
    BOUNDS.check(event(NOW + 5 * MINUTE), None, NOW)
    answer = SurveyAnswer(
        answer_id="a-1",
        answered_at_ms=NOW + 3 * 3_600_000 + 1_500,
        touchpoint="checkout.payment",
        metric=SurveyMetric.NPS,
        score=9,
    )
    assert refusal(answer, None) == (
        "future: answered_at: 2026-11-22T03:00:01.500+00:00 is 3h0m1.5s ahead of the worker's "
        "clock, more than CXMON_MAX_FUTURE=5m0s"
    )


def test_identity_links_are_history_never_late_but_never_from_the_future() -> None:
    old = IdentityLink(Contact("phone", "+86138"), "c-1", NOW - 30 * 86_400_000)
    BOUNDS.check(old, NOW, NOW)
    ahead = IdentityLink(Contact("phone", "+86138"), "c-1", NOW + 6 * MINUTE)
    assert refusal(ahead, None).startswith("future: linked_at:")


def test_span_reads_as_people_write_it() -> None:
    assert [span(ms) for ms in (500, 61_000, 3_600_000, 3_723_400)] == [
        "0.5s",
        "1m1s",
        "1h0m0s",
        "1h2m3.4s",
    ]
