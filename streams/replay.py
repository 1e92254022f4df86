"""The whole monitor in one process, no Kafka: the reference a worker's output must equal."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Literal

from models.decode import (
    InvalidRecord,
    Reason,
    decode_identity_link,
    decode_survey_answer,
    decode_touchpoint_event,
)
from models.records import Alert, TouchpointEvent
from streams.catalog import Catalog
from streams.core.consistency import stage_rules
from streams.core.fatigue import Cohorts
from streams.core.gaps import RulesState
from streams.core.identity import add_link, customer_at, encode_link
from streams.core.ingest import (
    CustomerAnswer,
    OutboundMessage,
    PartialTallies,
    customer_answer,
    outbound_message,
    subject_stage,
)
from streams.core.journeys import BreakState, BreakWindows, CustomerJourneys, JourneyTracker
from streams.core.messaging import CustomerMessages, FrequencyPolicy
from streams.core.sentiment import SentimentScorer
from streams.core.touchpoints import TouchpointState

Role = Literal["touchpoint_events", "survey_answers", "identity_links"]


@dataclass
class ReplayResult:
    alerts: list[Alert] = field(default_factory=list)
    rejected: dict[Role, list[Reason]] = field(default_factory=lambda: defaultdict(list))
    duplicates: int = 0
    touchpoints: dict[str, TouchpointState] = field(default_factory=dict)
    customers: dict[str, CustomerMessages] = field(default_factory=dict)
    breaks: dict[str, BreakState] = field(default_factory=dict)
    stages: dict[str, RulesState] = field(default_factory=dict)  # by stage, for consistency
    fatigue: RulesState = field(default_factory=RulesState)


class OfflineMonitor:
    """Feeds records in publication order through the pure core, then closes every window."""

    def __init__(self, catalog: Catalog, scorer: SentimentScorer) -> None:
        self.partials = PartialTallies(catalog, scorer)
        self.policy = FrequencyPolicy(catalog.messaging)
        self.catalog = catalog
        self.journeys = JourneyTracker(catalog)
        self.stages = stage_rules(catalog)
        self.cohorts = Cohorts(catalog)
        # Answers the fatigue rules put in cohorts at the end.
        self.answers: list[CustomerAnswer] = []
        self.journey_customers: dict[str, CustomerJourneys] = {}
        self.seen: set[tuple[Role, str]] = set()
        self.links: dict[str, bytes] = {}
        self.messages: dict[str, list[OutboundMessage]] = defaultdict(list)
        self.contact_messages: list[OutboundMessage] = []
        self.result = ReplayResult()
        self.watermark_ms: int | None = None
        self.message_watermark_ms: int | None = None

    def feed(self, role: Role, raw: bytes) -> None:
        try:
            if role == "identity_links":
                link = decode_identity_link(raw)
                history = add_link(self.links.get(link.contact.key), encode_link(link))
                if history is not None:
                    self.links[link.contact.key] = history
                return
            if role == "touchpoint_events":
                event = decode_touchpoint_event(raw)
                if self._first_time(role, event.event_id):
                    self.partials.add_event(event)
                    self._advance(event.occurred_at_ms, messages=True)
                    self._visit(event)
                    message = outbound_message(event)
                    if message is not None:
                        self._route(message)
                return
            answer = decode_survey_answer(raw)
            if self._first_time(role, answer.answer_id):
                sentiment = self.partials.add_answer(answer)
                if self.catalog.fatigue:
                    self.answers.append(customer_answer(answer, sentiment))
                self._advance(answer.answered_at_ms, messages=False)
        except InvalidRecord as exc:
            self.result.rejected[role].append(exc.reason)

    def finish(self, until_ms: int | None = None) -> ReplayResult:
        """Every window judged up to the newest event time, every incident settled.

        With `until_ms`, event time has reached that instant on every input (the end of a
        backtest): every window ending by then is judged, its grace passed or not.
        """
        result = self.result
        for partial in self.partials.drain("replay", 0):
            stage = subject_stage(partial.touchpoint)
            if stage is not None:
                stage_state = result.stages.setdefault(stage.value, RulesState())
                for bucket in partial.buckets:
                    assert bucket.channel is not None
                    self.stages[stage].add(
                        stage_state, bucket.start_ms, bucket.channel, bucket.tally
                    )
                continue
            state = result.touchpoints.setdefault(partial.touchpoint, TouchpointState())
            windows = self.partials.windows(partial.touchpoint)
            for bucket in partial.buckets:
                windows.add(state, bucket.start_ms, bucket.tally, bucket.latest_ms)
        for message in self.contact_messages:
            assert message.contact_key is not None
            at_ms = message.message.sent_at_ms
            customer = customer_at(self.links.get(message.contact_key), at_ms)
            customer = customer or message.contact_key
            self.messages[customer].append(message.resolved_to(customer))
        message_watermark = self.message_watermark_ms if until_ms is None else until_ms
        for touchpoint in sorted(result.touchpoints):
            windows = self.partials.windows(touchpoint)
            watermark = self.watermark_ms if until_ms is None else until_ms + windows.grace_ms
            result.alerts += windows.advance(result.touchpoints[touchpoint], watermark)
        grace = self.catalog.scores.grace_ms
        for stage, consistencies in self.stages.items():
            watermark = self.watermark_ms if until_ms is None else until_ms + grace
            if watermark is not None:
                stage_state = result.stages.setdefault(stage.value, RulesState())
                for _, judged in consistencies.advance(stage_state, watermark - grace):
                    result.alerts += judged.alerts
        # Answers wait in their customer's state until every message before them is in:
        # those the grace has not passed yet are in no cohort.
        watermark = self.watermark_ms if until_ms is None else until_ms + grace
        closed = None if watermark is None else watermark - grace
        answers = self._answers_by_customer(closed)
        for customer in sorted(self.messages.keys() | answers.keys()):
            if customer not in self.messages:  # answered, never messaged
                self._put_in_cohorts(CustomerMessages(), answers[customer])
                continue
            frequency = result.customers.setdefault(customer, CustomerMessages())
            for message in self.messages[customer]:
                self.policy.record(frequency, message.message)
            self._put_in_cohorts(frequency, answers.get(customer, []))
            if message_watermark is not None:
                result.alerts += self.policy.advance(frequency, customer, message_watermark)
        if closed is not None:
            for _, judged in self.cohorts.rules.advance(result.fatigue, closed):
                result.alerts += judged.alerts
        if until_ms is not None:
            result.alerts += self._journey_breaks(until_ms)
        elif self.message_watermark_ms is not None:
            result.alerts += self._journey_breaks(
                self.message_watermark_ms - self.catalog.scores.grace_ms
            )
        return result

    def _answers_by_customer(self, closed: int | None) -> dict[str, list[CustomerAnswer]]:
        """Each answer before `closed` under its customer, a contact's resolved by the links
        at its time."""
        found: dict[str, list[CustomerAnswer]] = defaultdict(list)
        for answer in self.answers:
            if closed is None or answer.answered_at_ms >= closed:
                continue
            customer = answer.customer_id
            if customer is None:
                assert answer.contact_key is not None
                key = answer.contact_key
                customer = customer_at(self.links.get(key), answer.answered_at_ms) or key
            found[customer].append(answer)
        return found

    def _put_in_cohorts(self, frequency: CustomerMessages, answers: list[CustomerAnswer]) -> None:
        """Every messaged customer's messages are in, none expired: each answer's cohort."""
        for answer in answers:
            at_ms = answer.answered_at_ms
            count_class = self.cohorts.count_class(self.policy.counted_at(frequency, at_ms))
            self.cohorts.rules.add(self.result.fatigue, at_ms, count_class, answer.tally)

    def _visit(self, event: TouchpointEvent) -> None:
        found = self.journeys.visit_of(event)
        if found is not None:
            customer, touchpoint, visit = found
            state = self.journey_customers.setdefault(customer, CustomerJourneys(0))
            self.journeys.record(state, touchpoint, visit)

    def _journey_breaks(self, closed: int) -> list[Alert]:
        """Attempts decided up to `closed` (the worker: the events' watermark less the grace)."""
        windows = {journey.id: BreakWindows(journey) for journey in self.catalog.breaks}
        states = self.result.breaks
        for customer in sorted(self.journey_customers):
            visits = self.journey_customers[customer]
            for outcome in self.journeys.advance(visits, customer, closed):
                windows[outcome.break_id].add(
                    states.setdefault(outcome.break_id, BreakState()), outcome
                )
        alerts: list[Alert] = []
        for journey in self.catalog.breaks:
            state = states.setdefault(journey.id, BreakState())
            alerts += windows[journey.id].advance(state, closed)
        return alerts

    def _first_time(self, role: Role, record_id: str) -> bool:
        if (role, record_id) in self.seen:
            self.result.duplicates += 1
            return False
        self.seen.add((role, record_id))
        return True

    def _advance(self, at_ms: int, *, messages: bool) -> None:
        if self.watermark_ms is None or at_ms > self.watermark_ms:
            self.watermark_ms = at_ms
        if messages and (self.message_watermark_ms is None or at_ms > self.message_watermark_ms):
            self.message_watermark_ms = at_ms

    def _route(self, message: OutboundMessage) -> None:
        if message.customer_id is None:
            # Resolved at the end, by the links in force at the message's own time.
            self.contact_messages.append(message)
        else:
            self.messages[message.customer_id].append(message)
