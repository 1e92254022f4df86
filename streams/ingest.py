"""First stage: valid records become per-touchpoint partial tallies and outbound messages."""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from models.records import Category, Direction, SurveyAnswer, TouchpointEvent
from streams.catalog import Catalog
from streams.messaging import Message
from streams.scores import Tally
from streams.sentiment import SentimentScorer
from streams.touchpoints import TouchpointWindows


@dataclass(slots=True)
class TouchpointPartial:
    """A tally of one touchpoint over one bucket, from one batch of one worker."""

    touchpoint: str
    bucket_start_ms: int
    latest_ms: int
    tally: Tally

    def encode(self) -> bytes:
        return orjson.dumps(
            [self.touchpoint, self.bucket_start_ms, self.latest_ms, self.tally.to_wire()]
        )

    @classmethod
    def decode(cls, raw: bytes) -> TouchpointPartial:
        touchpoint, start, latest, wire = orjson.loads(raw)
        return cls(touchpoint, start, latest, Tally.from_wire(wire))


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """An outbound message on its way to its customer's frequency state."""

    event_id: str
    customer_id: str | None
    contact_key: str | None
    message: Message

    def encode(self) -> bytes:
        m = self.message
        return orjson.dumps(
            [
                self.event_id,
                self.customer_id,
                self.contact_key,
                m.sent_at_ms,
                m.channel,
                m.category.value,
            ]
        )

    @classmethod
    def decode(cls, raw: bytes) -> OutboundMessage:
        event_id, customer, contact, sent_at, channel, category = orjson.loads(raw)
        return cls(event_id, customer, contact, Message(sent_at, channel, Category(category)))

    def resolved_to(self, customer_id: str) -> OutboundMessage:
        return OutboundMessage(self.event_id, customer_id, None, self.message)


class PartialTallies:
    """Folds a batch of records into one partial per (touchpoint, bucket): few sends per batch."""

    def __init__(self, catalog: Catalog, scorer: SentimentScorer) -> None:
        self.catalog = catalog
        self.scorer = scorer
        self._windows: dict[str, TouchpointWindows] = {}
        self._partials: dict[tuple[str, int], TouchpointPartial] = {}

    def windows(self, touchpoint: str) -> TouchpointWindows:
        windows = self._windows.get(touchpoint)
        if windows is None:
            windows = self._windows[touchpoint] = TouchpointWindows(self.catalog, touchpoint)
        return windows

    def add_event(self, event: TouchpointEvent) -> None:
        self._partial(event.touchpoint, event.occurred_at_ms).tally.add_event(event)

    def add_answer(self, answer: SurveyAnswer) -> None:
        sentiment = self.scorer.score(answer.comment) if answer.comment else None
        self._partial(answer.touchpoint, answer.answered_at_ms).tally.add_answer(answer, sentiment)

    def drain(self) -> list[TouchpointPartial]:
        partials = list(self._partials.values())
        self._partials.clear()
        return partials

    def _partial(self, touchpoint: str, at_ms: int) -> TouchpointPartial:
        start = self.windows(touchpoint).bucket_of(at_ms)
        partial = self._partials.get((touchpoint, start))
        if partial is None:
            partial = self._partials[(touchpoint, start)] = TouchpointPartial(
                touchpoint, start, at_ms, Tally()
            )
        elif at_ms > partial.latest_ms:
            partial.latest_ms = at_ms
        return partial


def outbound_message(event: TouchpointEvent) -> OutboundMessage | None:
    """The message an outbound event stands for; inbound events are not messages."""
    if event.direction is not Direction.OUTBOUND:
        return None
    assert event.category is not None
    return OutboundMessage(
        event_id=event.event_id,
        customer_id=event.customer_id,
        contact_key=None if event.customer_id or event.contact is None else event.contact.key,
        message=Message(event.occurred_at_ms, event.channel, event.category),
    )
