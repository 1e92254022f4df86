"""How far event time may stray: not far ahead of the clock, not far behind its partition."""

from __future__ import annotations

from dataclasses import dataclass

from models.decode import InvalidRecord, Reason, format_timestamp
from models.records import IdentityLink, SurveyAnswer, TouchpointEvent

Timed = TouchpointEvent | SurveyAnswer | IdentityLink


def span(millis: int) -> str:
    """A distance in time as people read it: 3h12m5s, 4m0.5s."""
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds = f"{rest / 1000:g}s"
    return (f"{hours}h" if hours else "") + (f"{minutes}m" if hours or minutes else "") + seconds


def time_field(record: Timed) -> str:
    if isinstance(record, TouchpointEvent):
        return "occurred_at"
    if isinstance(record, SurveyAnswer):
        return "answered_at"
    return "linked_at"


@dataclass(frozen=True, slots=True)
class Timeliness:
    """The bounds a record's event time must keep to be counted.

    `grace_ms`: a record may be at most this much older than the newest record before it
    in its input partition, and than the event time the windows have been judged to;
    windows stay open that long past their end, so every record within it still lands in
    its own window. An older one could only land in a window already judged, so it is
    refused as `late` rather than silently moved or dropped. The second bound catches a
    partition that fell silent while the others moved on and then delivers its backlog:
    on its own partition each of those records is in time.
    `max_future_ms`: a record stamped further ahead of the worker's clock comes from a
    wrong clock; counting it would close every window early.
    """

    grace_ms: int
    max_future_ms: int

    def check(
        self, record: Timed, newest_ms: int | None, now_ms: int, judged_ms: int | None = None
    ) -> None:
        """Raise InvalidRecord when the record's time is out of bounds.

        `newest_ms`: the newest record before it on its partition; `judged_ms`: how far in
        event time the windows it would land in have been judged.
        """
        at_ms, field = record.at_ms, time_field(record)
        if at_ms > now_ms + self.max_future_ms:
            raise InvalidRecord(
                Reason.FUTURE,
                f"{field}: {format_timestamp(at_ms)} is {span(at_ms - now_ms)} ahead "
                f"of the worker's clock, more than CXMON_MAX_FUTURE="
                f"{span(self.max_future_ms)}",
            )
        if isinstance(record, IdentityLink):
            return  # links are kept as history: an old one still resolves its own time
        if newest_ms is not None and at_ms < newest_ms - self.grace_ms:
            raise InvalidRecord(
                Reason.LATE,
                f"{field}: {format_timestamp(at_ms)} is {span(newest_ms - at_ms)} "
                f"older than the newest record before it on its partition "
                f"({format_timestamp(newest_ms)}), more than the grace of "
                f"{span(self.grace_ms)}",
            )
        if judged_ms is not None and at_ms < judged_ms - self.grace_ms:
            raise InvalidRecord(
                Reason.LATE,
                f"{field}: {format_timestamp(at_ms)} is {span(judged_ms - at_ms)} older "
                f"than the event time already judged ({format_timestamp(judged_ms)}), more "
                f"than the grace of {span(self.grace_ms)}: its partition fell behind the others",
            )
