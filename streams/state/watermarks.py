"""Event-time progress of each input partition, and the watermark downstream may trust."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

import orjson

# The key that marks a progress report on a topic that otherwise carries data.
PROGRESS_KEY = b"\x00progress"


@dataclass(frozen=True, slots=True)
class SourceMark:
    """How far one input partition has got in event time, and whether it has caught up.

    An idle input's mark may say how far it vouches for the others (`vouches_ms`): the
    newest time its worker knew of when it asked the broker for the ends, read by itself
    or said by the marks its stages had taken.
    Marks of records published after that question may reach a stage before this mark
    does, and it must not vouch for them: this partition may hold records as old.
    """

    source: str
    watermark_ms: int | None
    idle: bool
    vouches_ms: int | None = None


def encode_marks(marks: Iterable[SourceMark]) -> bytes:
    return orjson.dumps(
        [
            [m.source, m.watermark_ms, m.idle] + ([] if m.vouches_ms is None else [m.vouches_ms])
            for m in marks
        ]
    )


def decode_marks(raw: bytes) -> list[SourceMark]:
    return [
        SourceMark(source, watermark, idle, *vouches)
        for source, watermark, idle, *vouches in orjson.loads(raw)
    ]


def source_name(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


class SourceProgress:
    """The low watermark over the input partitions feeding one downstream partition.

    Windows close on the slowest partition still sending, not on the fastest one:
    a replay that reads one partition far ahead of another then judges every window
    on all of its data, as the live run did. A partition that has caught up with its
    end is idle and holds nobody back, but only as far as the others had got when it
    last said so: after a quiet spell a burst reaches the partitions one after another,
    and a partition still reported idle from before it may have older records unread.
    Idle partitions say so again every tenth of a second while their worker reads input
    (and at least every 15 s otherwise), so a burst costs about that much delay.
    When all are idle, the newest time counts.

    A stage's output (`stages`: the contacts the contact stage resolved, the journeys the
    journey stage decided) is not an input at its end: idle there means the stage has
    passed on everything up to its own watermark, and it may still hold later work for
    the time the others have reached since. Such a partition vouches for its own time only.
    """

    def __init__(self, expected: Iterable[str], stages: Iterable[str] = ()) -> None:
        self.expected = frozenset(expected)
        self.stages = frozenset(stages)
        self.marks: dict[str, SourceMark] = {}
        # How far the watermark had got when each partition last reported itself idle.
        self.idle_through: dict[str, int] = {}

    def report(self, mark: SourceMark) -> None:
        previous = self.marks.get(mark.source)
        if previous is not None and previous.watermark_ms is not None:
            newest = previous.watermark_ms
            if mark.watermark_ms is None or mark.watermark_ms < newest:
                mark = replace(mark, watermark_ms=newest)
        self.marks[mark.source] = mark
        if mark.idle and (reached := self._reach()) is not None:
            if mark.vouches_ms is not None:
                reached = min(reached, mark.vouches_ms)
            vouched = self.idle_through.get(mark.source, reached)
            self.idle_through[mark.source] = max(reached, vouched)

    def take(self, raw: bytes) -> list[SourceMark]:
        """Report every mark of one progress record; the marks, as read."""
        marks = decode_marks(raw)
        for mark in marks:
            self.report(mark)
        return marks

    def all_idle(self) -> bool:
        return self.expected <= self.marks.keys() and all(m.idle for m in self.marks.values())

    def watermark(self) -> int | None:
        """None until every expected partition has reported once."""
        if not self.expected <= self.marks.keys():
            return None
        reached = self._reach()
        if reached is None:
            return None
        for mark in self.marks.values():
            if not mark.idle:
                continue
            if mark.source in self.stages:
                if mark.watermark_ms is None:
                    return None
                reached = min(reached, mark.watermark_ms)
                continue
            vouched = self.idle_through.get(mark.source)
            if vouched is None:
                return None  # idle since before anything was known: until it says so again
            if mark.watermark_ms is not None:
                vouched = max(vouched, mark.watermark_ms)
            reached = min(reached, vouched)
        return reached

    def _reach(self) -> int | None:
        """The slowest partition still sending, or the newest time when all are idle."""
        active = [m.watermark_ms for m in self.marks.values() if not m.idle]
        if None in active:
            # Still sending, but not yet able to say how far: anything may follow, however old.
            return None
        if active:
            return min(m for m in active if m is not None)
        known = [m.watermark_ms for m in self.marks.values() if m.watermark_ms is not None]
        return max(known) if known else None
