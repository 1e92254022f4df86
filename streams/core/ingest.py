"""First stage: valid records become per-touchpoint partial tallies and outbound messages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from models.records import Category, Direction, SurveyAnswer, TouchpointEvent
from streams.catalog import Catalog
from streams.core.messaging import Message, message_digest
from streams.core.scores import Tally
from streams.core.sentiment import SentimentScorer
from streams.core.touchpoints import TouchpointWindows


@dataclass(slots=True)
class BucketTally:
    """The tally of one time bucket, and the newest event time in it."""

    start_ms: int
    latest_ms: int
    tally: Tally


@dataclass(slots=True)
class TouchpointPartial:
    """What one batch of one input partition adds to one touchpoint, bucket by bucket.

    `source` and `last_offset` name the batch: the scoring stage applies each batch of
    each input partition once, however often a crash or a rebalance delivers it.
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
                [[b.start_ms, b.latest_ms, b.tally.to_wire()] for b in self.buckets],
            ]
        )

    @classmethod
    def decode(cls, raw: bytes) -> TouchpointPartial:
        touchpoint, source, last_offset, buckets = orjson.loads(raw)
        return cls(
            touchpoint,
            source,
            last_offset,
            [BucketTally(start, latest, Tally.from_wire(wire)) for start, latest, wire in buckets],
        )


@dataclass(frozen=True, slots=True)
class OutboundMessage:
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

    def encode(self) -> bytes:
        return orjson.dumps(self.to_wire())

    @classmethod
    def decode(cls, raw: bytes) -> OutboundMessage:
        return cls.from_wire(orjson.loads(raw))

    def resolved_to(self, customer_id: str) -> OutboundMessage:
        return OutboundMessage(self.event_id, customer_id, None, self.message)


class PartialTallies:
    """Folds a batch of records into one partial per touchpoint: few sends per batch."""

    def __init__(self, catalog: Catalog, scorer: SentimentScorer) -> None:
        self.catalog = catalog
        self.scorer = scorer
        self._windows: dict[str, TouchpointWindows] = {}
        self._buckets: dict[str, dict[int, BucketTally]] = {}

    def windows(self, touchpoint: str) -> TouchpointWindows:
        windows = self._windows.get(touchpoint)
        if windows is None:
            windows = self._windows[touchpoint] = TouchpointWindows(self.catalog, touchpoint)
        return windows

    def add_event(self, event: TouchpointEvent) -> None:
        self._bucket(event.touchpoint, event.occurred_at_ms).tally.add_event(event)

    def add_answer(self, answer: SurveyAnswer) -> None:
        sentiment = self.scorer.score(answer.comment) if answer.comment else None
        self._bucket(answer.touchpoint, answer.answered_at_ms).tally.add_answer(answer, sentiment)

    def drain(self, source: str, last_offset: int) -> list[TouchpointPartial]:
        """What was folded since the last drain, as the batch `last_offset` of `source`."""
        partials = [
            TouchpointPartial(touchpoint, source, last_offset, list(buckets.values()))
            for touchpoint, buckets in self._buckets.items()
        ]
        self._buckets.clear()
        return partials

    def _bucket(self, touchpoint: str, at_ms: int) -> BucketTally:
        start = self.windows(touchpoint).bucket_of(at_ms)
        buckets = self._buckets.setdefault(touchpoint, {})
        bucket = buckets.get(start)
        if bucket is None:
            bucket = buckets[start] = BucketTally(start, at_ms, Tally())
        elif at_ms > bucket.latest_ms:
            bucket.latest_ms = at_ms
        return bucket


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
