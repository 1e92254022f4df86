"""Records to partial tallies to key-moment alerts, and outbound events to messages."""

from __future__ import annotations

from itertools import count

import pytest

from models.records import (
    Alert,
    AlertStatus,
    Category,
    Contact,
    Direction,
    Outcome,
    SurveyAnswer,
    SurveyMetric,
    TouchpointEvent,
)
from streams.catalog import Catalog, parse_catalog
from streams.core.ingest import (
    BucketTally,
    OutboundMessage,
    PartialTallies,
    TouchpointPartial,
    outbound_message,
)
from streams.core.messaging import Message, message_digest
from streams.core.scores import Tally
from streams.core.touchpoints import TouchpointState

T0 = 1_795_305_600_000  # 2026-11-22T00:00:00Z
SECOND = 1_000
MINUTE = 60 * SECOND
PAY = "checkout.payment"
LOGIN = "app.login"

CATALOG_YAML = """
scores: {window: 10m, step: 5m, grace: 1m}
touchpoints:
  checkout.payment: {stage: purchase}
  app.login: {stage: intent}
key_moments:
  - {touchpoint: checkout.payment, metric: nps, below: 0, window: 10m, step: 5m, min_samples: 4}
  - {touchpoint: checkout.payment, metric: sentiment, below: 0, window: 10m, step: 5m,
     min_samples: 4}
  - {touchpoint: app.login, metric: failure_rate, above: 0.25, window: 10m, step: 5m,
     min_samples: 4, severity: critical}
"""

_ids = count()


class KeywordScorer:
    """-1 for a comment that says 'bad', +1 otherwise; remembers what it was asked."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def score(self, text: str) -> float:
        self.seen.append(text)
        return -1.0 if "bad" in text else 1.0


@pytest.fixture
def catalog() -> Catalog:
    return parse_catalog(CATALOG_YAML)


def answer(at: int, metric: SurveyMetric, score: float, comment: str | None) -> SurveyAnswer:
    return SurveyAnswer(
        answer_id=f"a-{next(_ids)}",
        answered_at_ms=at,
        touchpoint=PAY,
        metric=metric,
        score=score,
        customer_id="c-1",
        channel="mini_program",
        comment=comment,
    )


def event(
    at: int,
    touchpoint: str = LOGIN,
    outcome: Outcome | None = None,
    duration_ms: float | None = None,
) -> TouchpointEvent:
    return TouchpointEvent(
        event_id=f"e-{next(_ids)}",
        occurred_at_ms=at,
        touchpoint=touchpoint,
        channel="app",
        direction=Direction.INBOUND,
        customer_id="c-1",
        outcome=outcome,
        duration_ms=duration_ms,
    )


def test_records_become_partials_and_partials_become_alerts(catalog: Catalog) -> None:
    scorer = KeywordScorer()
    partials = PartialTallies(catalog, scorer)
    # checkout.payment: 3 detractors + 1 promoter = NPS -50; sentiment (-1 -1 -1 +1)/4 = -0.5.
    partials.add_answer(answer(T0 + 1 * MINUTE, SurveyMetric.NPS, 2, "bad, slow"))
    partials.add_answer(answer(T0 + 2 * MINUTE, SurveyMetric.NPS, 5, "bad service"))
    partials.add_answer(answer(T0 + 3 * MINUTE, SurveyMetric.NPS, 10, None))
    partials.add_answer(answer(T0 + 4 * MINUTE, SurveyMetric.NPS, 0, "bad"))
    partials.add_answer(answer(T0 + 30 * SECOND, SurveyMetric.CSAT, 4, "fine"))
    # app.login: failures 2 of 4 outcomes = 0.5 > 0.25; the fifth event has no outcome.
    partials.add_event(event(T0 + 10 * SECOND, outcome=Outcome.FAILURE, duration_ms=900.0))
    partials.add_event(event(T0 + 20 * SECOND, outcome=Outcome.FAILURE))
    partials.add_event(event(T0 + 4 * MINUTE + 59 * SECOND, outcome=Outcome.SUCCESS))
    partials.add_event(event(T0 + 40 * SECOND, outcome=Outcome.SUCCESS, duration_ms=300.0))
    partials.add_event(event(T0 + 50 * SECOND))
    assert scorer.seen == ["bad, slow", "bad service", "bad", "fine"]

    drained = {p.touchpoint: p for p in partials.drain("events:3", 41)}
    assert partials.drain("events:3", 42) == []
    assert set(drained) == {PAY, LOGIN}
    assert {(p.source, p.last_offset) for p in drained.values()} == {("events:3", 41)}
    (pay,) = drained[PAY].buckets
    (login,) = drained[LOGIN].buckets
    assert (pay.start_ms, pay.latest_ms) == (T0, T0 + 4 * MINUTE)
    assert (login.start_ms, login.latest_ms) == (T0, T0 + 4 * MINUTE + 59 * SECOND)
    assert (pay.tally.promoters, pay.tally.passives, pay.tally.detractors) == (1, 0, 3)
    assert (pay.tally.csat_count, pay.tally.csat_sum) == (1, 4.0)
    assert (pay.tally.sentiment_count, pay.tally.sentiment_sum) == (4, -2.0)
    assert (login.tally.events, login.tally.outcomes, login.tally.failures) == (5, 4, 2)
    assert (login.tally.duration_count, login.tally.duration_sum) == (2, 1200.0)

    states = {PAY: TouchpointState(), LOGIN: TouchpointState()}

    def apply(batch: list[TouchpointPartial]) -> list[Alert]:
        alerts: list[Alert] = []
        for sent in batch:
            partial = TouchpointPartial.decode(sent.encode())  # as it crosses the topic
            windows = partials.windows(partial.touchpoint)
            state = states[partial.touchpoint]
            for bucket in partial.buckets:
                assert windows.add(state, bucket.start_ms, bucket.tally, bucket.latest_ms)
            alerts += windows.advance(state)
        return alerts

    # Nothing closes before the watermark reaches T0+5m + 1m grace.
    assert apply(list(drained.values())) == []
    partials.add_event(event(T0 + 6 * MINUTE, touchpoint=PAY))
    partials.add_event(event(T0 + 6 * MINUTE, touchpoint=LOGIN))
    alerts = apply(partials.drain("events:3", 42))
    figures = {
        a.details["key_moment"]: (a.status, a.observed, a.threshold, a.starts_at_ms, a.severity)
        for a in alerts
    }
    assert figures == {
        f"{PAY}/nps": (AlertStatus.FIRING, -50.0, 0.0, T0 + 5 * MINUTE, "warning"),
        f"{PAY}/sentiment": (AlertStatus.FIRING, -0.5, 0.0, T0 + 5 * MINUTE, "warning"),
        f"{LOGIN}/failure_rate": (AlertStatus.FIRING, 0.5, 0.25, T0 + 5 * MINUTE, "critical"),
    }
    assert len({a.fingerprint for a in alerts}) == 3


def test_one_partial_per_touchpoint_one_tally_per_bucket(catalog: Catalog) -> None:
    scorer = KeywordScorer()
    partials = PartialTallies(catalog, scorer)
    for offset in (0, MINUTE, 5 * MINUTE - 1, 5 * MINUTE, 11 * MINUTE):
        partials.add_event(event(T0 + offset, outcome=Outcome.SUCCESS))
    partials.add_answer(answer(T0 + 2 * MINUTE, SurveyMetric.CES, 3, ""))
    assert scorer.seen == []  # an empty comment is not scored
    drained = partials.drain("events:0", 5)
    assert sorted(p.touchpoint for p in drained) == [LOGIN, PAY]
    found = sorted(
        (p.touchpoint, b.start_ms, b.latest_ms, b.tally.records) for p in drained for b in p.buckets
    )
    assert found == [
        (LOGIN, T0, T0 + 5 * MINUTE - 1, 3),
        (LOGIN, T0 + 5 * MINUTE, T0 + 5 * MINUTE, 1),
        (LOGIN, T0 + 10 * MINUTE, T0 + 11 * MINUTE, 1),
        (PAY, T0, T0 + 2 * MINUTE, 1),
    ]


def test_partial_round_trips_through_its_encoding() -> None:
    tally = Tally(promoters=2, detractors=1, sentiment_count=1, sentiment_sum=-0.3)
    tally.duration_bins = {40: 2, 7: 1}
    partial = TouchpointPartial(PAY, "events:3", 42, [BucketTally(T0, T0 + 123, tally)])
    assert TouchpointPartial.decode(partial.encode()) == partial


def outbound(
    category: Category | None, customer_id: str | None, contact: Contact | None
) -> TouchpointEvent:
    return TouchpointEvent(
        event_id="m-1",
        occurred_at_ms=T0,
        touchpoint="marketing.sms",
        channel="sms",
        direction=Direction.OUTBOUND,
        customer_id=customer_id,
        contact=contact,
        category=category,
    )


def test_inbound_events_are_not_messages() -> None:
    assert outbound_message(event(T0)) is None


def test_outbound_event_with_customer_id() -> None:
    contact = Contact("phone", "+8613800000000")
    message = outbound_message(outbound(Category.MARKETING, "c-9", contact))
    assert message == OutboundMessage(
        "m-1", "c-9", None, Message(T0, "sms", Category.MARKETING, message_digest("m-1"))
    )
    assert message is not None
    assert OutboundMessage.decode(message.encode()) == message


def test_outbound_event_known_only_by_contact() -> None:
    contact = Contact("phone", "+8613800000000")
    message = outbound_message(outbound(Category.TRANSACTIONAL, None, contact))
    assert message is not None
    assert message.customer_id is None
    assert message.contact_key == "phone:+8613800000000"
    assert message.message == Message(T0, "sms", Category.TRANSACTIONAL, message_digest("m-1"))
    assert OutboundMessage.decode(message.encode()) == message
    resolved = message.resolved_to("c-9")
    assert (resolved.customer_id, resolved.contact_key) == ("c-9", None)
    assert resolved.message == message.message
    assert resolved.event_id == "m-1"
