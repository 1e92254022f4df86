"""First stage: valid records become per-touchpoint partial tallies and outbound messages."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from functools import reduce
from typing import Any, Self

import orjson

from models.records import (
    Category,
    Direction,
    Stage,
    SurveyAnswer,
    TouchpointEvent,
    known_channel,
)
from streams.catalog import Catalog
from streams.core.messaging import Message, message_digest
from streams.core.scores import Tally
from streams.core.sentiment import SentimentScorer
from streams.core.touchpoints import TouchpointWindows, WindowsByTouchpoint


@dataclass(slots=True)
class BucketTally:
    """The tally of one time bucket (of one channel, for a stage), and its newest event time."""

    start_ms: int
    latest_ms: int
    tally: Tally
    channel: str | None = None

    def to_wire(self) -> list[Any]:
        wire = [self.start_ms, self.latest_ms, self.tally.to_wire()]
        return wire if self.channel is None else [*wire, self.channel]

    @classmethod
    def from_wire(cls, wire: list[Any]) -> BucketTally:
        start, latest, tally, *channel = wire
        return cls(start, latest, Tally.from_wire(tally), *channel)


@dataclass(slots=True)
class TouchpointPartial:
    """What one batch of one input partition adds to one touchpoint, bucket by bucket.

    `source` and `last_offset` name the batch: the scoring stage applies each batch of
    each input partition once, however often a crash or a rebalance delivers it. A journey
    stage watched for channel consistency is a subject of its own (`stage_subject`), its
    buckets by channel.
    """

    touchpoint: str
    source: str
    last_offset: int
    buckets: list[BucketTally]

    def encode(self) -> bytes:
        return orjson.dumps(
            [
                self.touchpoint,
                self.source,
                self.last_offset,
                [bucket.to_wire() for bucket in self.buckets],
            ]
        )

    @classmethod
    def decode(cls, raw: bytes) -> TouchpointPartial:
        touchpoint, source, last_offset, buckets = orjson.loads(raw)
        return cls(touchpoint, source, last_offset, [BucketTally.from_wire(b) for b in buckets])


class Wired(ABC):
    """A record that travels between stages as the JSON of its `to_wire` list."""

    __slots__ = ()

    @abstractmethod
    def to_wire(self) -> list[object]: ...

    @classmethod
    @abstractmethod
    def from_wire(cls, wire: list[Any]) -> Self: ...

    def encode(self) -> bytes:
        return orjson.dumps(self.to_wire())

    @classmethod
    def decode(cls, raw: bytes) -> Self:
        return cls.from_wire(orjson.loads(raw))


@dataclass(frozen=True, slots=True)
class OutboundMessage(Wired):
    """An outbound message on its way to its customer's frequency state."""

    event_id: str
    customer_id: str | None
    contact_key: str | None
    message: Message

    def to_wire(self) -> list[object]:
        m = self.message
        return [
            self.event_id,
            self.customer_id,
            self.contact_key,
            m.sent_at_ms,
            m.channel,
            m.category.value,
        ]

    @classmethod
    def from_wire(cls, wire: list[Any]) -> OutboundMessage:
        event_id, customer, contact, sent_at, channel, category = wire
        message = Message(sent_at, channel, Category(category), message_digest(event_id))
        return cls(event_id, customer, contact, message)

    def resolved_to(self, customer_id: str) -> OutboundMessage:
        return OutboundMessage(self.event_id, customer_id, None, self.message)


@dataclass(frozen=True, slots=True)
class CustomerAnswer(Wired):
    """A survey answer on its way to its customer's frequency state, for messaging fatigue:
    only its time and its tally (its comment's sentiment scored once, at ingest)."""

    answer_id: str
    customer_id: str | None
    contact_key: str | None
    answered_at_ms: int
    tally: Tally

    @property
    def digest(self) -> int:
        return message_digest(self.answer_id)

    def to_wire(self) -> list[object]:
        return [
            self.answer_id,
            self.customer_id,
            self.contact_key,
            self.answered_at_ms,
            self.tally.to_wire(),
        ]

    @classmethod
    def from_wire(cls, wire: list[Any]) -> CustomerAnswer:
        answer_id, customer, contact, at, tally = wire
        return cls(answer_id, customer, contact, at, Tally.from_wire(tally))

    def resolved_to(self, customer_id: str) -> CustomerAnswer:
        return CustomerAnswer(self.answer_id, customer_id, None, self.answered_at_ms, self.tally)


def customer_answer(answer: SurveyAnswer, sentiment: float | None) -> CustomerAnswer:
    tally = Tally()
    tally.add_answer(answer, sentiment)
    contact = None if answer.customer_id or answer.contact is None else answer.contact.key
    return CustomerAnswer(answer.answer_id, answer.customer_id, contact, answer.at_ms, tally)


class PartialTallies:
    """Folds a batch of records into one partial per touchpoint: few sends per batch.

    Records of a touchpoint whose journey stage is watched for channel consistency are
    also folded into that stage's partial, by channel.
    """

    def __init__(self, catalog: Catalog, scorer: SentimentScorer) -> None:
        self.catalog = catalog
        self.scorer = scorer
        self._windows = WindowsByTouchpoint(catalog)
        self._buckets: dict[str, dict[tuple[int, str | None], BucketTally]] = {}
        self.stage_bucket_ms = {
            stage: reduce(math.gcd, [rule.step_ms for rule in rules])
            for stage, rules in catalog.consistency_by_stage().items()
        }
        self.fatigue_bucket_ms = reduce(math.gcd, [rule.step_ms for rule in catalog.fatigue], 0)

    def windows(self, touchpoint: str) -> TouchpointWindows:
        return self._windows[touchpoint]

    def add_event(self, event: TouchpointEvent) -> None:
        for tally in self._tallies(event.touchpoint, event.channel, event.occurred_at_ms):
            tally.add_event(event)

    def add_answer(self, answer: SurveyAnswer) -> float | None:
        """Folded into its touchpoint's (and stage's) tally; returns its comment's sentiment."""
        sentiment = self.scorer.score(answer.comment) if answer.comment else None
        for tally in self._tallies(answer.touchpoint, answer.channel, answer.answered_at_ms):
            tally.add_answer(answer, sentiment)
        return sentiment

    def _tallies(self, touchpoint: str, channel: str | None, at_ms: int) -> Iterator[Tally]:
        yield self._bucket(touchpoint, at_ms, self.windows(touchpoint).bucket_of(at_ms)).tally
        stage = self.catalog.touchpoints.get(touchpoint)
        bucket_ms = self.stage_bucket_ms.get(stage) if stage is not None else None
        if stage is not None and bucket_ms is not None and channel is not None:
            start = at_ms - at_ms % bucket_ms
            yield self._bucket(stage_subject(stage), at_ms, start, known_channel(channel)).tally

    def add_cohort(self, at_ms: int, count_class: str, tally: Tally) -> None:
        """An answer the frequency stage has put in its cohort: fatigue's tally, by count."""
        start = at_ms - at_ms % self.fatigue_bucket_ms
        self._bucket(FATIGUE_SUBJECT, at_ms, start, count_class).tally.merge(tally)

    def drain(self, source: str, last_offset: int) -> list[TouchpointPartial]:
        """What was folded since the last drain, as the batch `last_offset` of `source`."""
        partials = [
            TouchpointPartial(touchpoint, source, last_offset, list(buckets.values()))
            for touchpoint, buckets in self._buckets.items()
        ]
        self._buckets.clear()
        return partials

    def _bucket(
        self, subject: str, at_ms: int, start: int, channel: str | None = None
    ) -> BucketTally:
        buckets = self._buckets.setdefault(subject, {})
        bucket = buckets.get((start, channel))
        if bucket is None:
            bucket = buckets[(start, channel)] = BucketTally(start, at_ms, Tally(), channel)
        elif at_ms > bucket.latest_ms:
            bucket.latest_ms = at_ms
        return bucket


# No touchpoint a record may name starts with either (models/decode.py's TOUCHPOINT_PATTERN).
STAGE_SUBJECT_PREFIX = "#"
# The subject messaging fatigue's tallies travel and are kept under, by count class.
FATIGUE_SUBJECT = "~fatigue"


def stage_subject(stage: Stage) -> str:
    """The subject a journey stage's channel tallies travel and are kept under."""
    return f"{STAGE_SUBJECT_PREFIX}{stage.value}"


def is_gap_subject(subject: str) -> bool:
    """A subject of gap rules (a journey stage's channels, fatigue's cohorts), not a touchpoint."""
    return subject == FATIGUE_SUBJECT or subject.startswith(STAGE_SUBJECT_PREFIX)


def subject_stage(subject: str) -> Stage | None:
    """The journey stage a subject is, or None for a touchpoint (or fatigue)."""
    if not subject.startswith(STAGE_SUBJECT_PREFIX):
        return None
    return Stage(subject.removeprefix(STAGE_SUBJECT_PREFIX))


def outbound_message(event: TouchpointEvent) -> OutboundMessage | None:
    """The message an outbound event stands for; inbound events are not messages."""
    if event.direction is not Direction.OUTBOUND:
        return None
    assert event.category is not None
    return OutboundMessage(
        event_id=event.event_id,
        customer_id=event.customer_id,
        contact_key=None if event.customer_id or event.contact is None else event.contact.key,
        message=Message(
            event.occurred_at_ms, event.channel, event.category, message_digest(event.event_id)
        ),
    )
