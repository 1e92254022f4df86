"""Messaging fatigue: heavily messaged customers' answers against the others', by hand."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson
import pytest

from models.records import Alert, AlertKind, AlertStatus, Severity
from streams.catalog import (
    CatalogError,
    MessagingFatigue,
    ScoreMetric,
    describe_catalog,
    parse_catalog,
)
from streams.commands.simulate import SimulationConfig, generate
from streams.core.fatigue import MESSAGED, OTHERS, Fatigue, cohort_of
from streams.core.gaps import GapState
from streams.core.scores import Tally
from streams.core.sentiment import build_scorer
from streams.replay import OfflineMonitor
from tests.harness import CATALOG, reference
from tests.test_consistency import T0, csat, nps

MINUTE = 60_000
HOUR = 60 * MINUTE
NPS_FATIGUE = MessagingFatigue(
    metric=ScoreMetric.NPS,
    messages=4,
    max_gap=10,
    window_ms=HOUR,
    step_ms=10 * MINUTE,
    min_samples=40,
    confidence=0.95,
)


def rule(**changes: Any) -> MessagingFatigue:
    return replace(NPS_FATIGUE, **changes)


# Answers travel tallied by their customer's count of messages: 9 is past every line here.
COUNT_OF = {MESSAGED: "9", OTHERS: "0"}


def judged(fatigue: Fatigue, *cohorts: tuple[str, Tally]) -> list[Alert]:
    """One bucket of the given cohorts, judged on the window that ends 10 minutes later."""
    state = GapState()
    for cohort, tally in cohorts:
        assert fatigue.add(state, T0, COUNT_OF[cohort], tally)
    return fatigue.advance(state, T0 + 10 * MINUTE).alerts


# --- cohorts ------------------------------------------------------------------------------


def test_an_answer_is_in_the_messaged_cohort_from_the_rules_count_on() -> None:
    """A customer answers after 3 counted messages, then again after a fourth: the first
    answer is the others', the second the messaged cohort's."""
    assert [cohort_of(count, NPS_FATIGUE) for count in (0, 3, 4, 9)] == [
        OTHERS,
        OTHERS,
        MESSAGED,
        MESSAGED,
    ]


# --- the gap, by hand ---------------------------------------------------------------------


def test_messaged_customers_answering_worse_fire_with_the_figures_worked_by_hand() -> None:
    """Messaged: 10 promoters, 10 passives, 20 detractors (NPS -25 over 40 answers); the
    others 20, 10, 10 (NPS 25): a gap of 50.

    Per-answer variance, both cohorts: 0.25 + 0.5 - 0.25² = 0.6875 (and the mirror); each
    standard error 100·sqrt(0.6875/40) = 13.110; together 18.540; times 1.96: 36.338. The
    interval 13.66 to 86.34 lies past the max gap of 10: firing.
    """
    (alert,) = judged(Fatigue(NPS_FATIGUE), (MESSAGED, nps(10, 10, 20)), (OTHERS, nps(20, 10, 10)))
    assert (alert.kind, alert.status, alert.subject) == (
        AlertKind.MESSAGING_FATIGUE,
        AlertStatus.FIRING,
        "nps",
    )
    details = alert.details
    assert (details["messaged_value"], details["others_value"]) == (-25, 25)
    assert (details["messaged_samples"], details["others_samples"]) == (40, 40)
    assert alert.observed == 50
    assert details["gap_low"] == pytest.approx(13.662, abs=1e-3)
    assert details["gap_high"] == pytest.approx(86.338, abs=1e-3)
    assert details["messages"] == 4
    assert alert.summary.startswith(
        "Messaging fatigue in NPS: NPS -25 from customers with 4 or more messages against 25 "
        "from the others, a gap of 50 (95% interval 13.66 to 86.34; 40 and 40 answers)"
    )


def test_with_confidence_the_whole_interval_must_lie_past_the_max_gap() -> None:
    """The same cohorts against a max gap of 15: the gap (50) is past it, the interval's
    low end (13.66) is not."""
    cohorts = ((MESSAGED, nps(10, 10, 20)), (OTHERS, nps(20, 10, 10)))
    assert judged(Fatigue(rule(max_gap=15)), *cohorts) == []
    (alert,) = judged(Fatigue(rule(max_gap=15, confidence=None)), *cohorts)
    assert alert.observed == 50


def test_only_the_messaged_cohort_is_judged() -> None:
    """The others answering worse is no fatigue: nothing fires, whatever the gap."""
    assert judged(Fatigue(NPS_FATIGUE), (MESSAGED, nps(20, 10, 10)), (OTHERS, nps(0, 0, 40))) == []


@pytest.mark.parametrize(("messaged", "others"), [(39, 40), (40, 39)])
def test_a_cohort_with_too_few_answers_is_not_judged(messaged: int, others: int) -> None:
    assert (
        judged(
            Fatigue(rule(confidence=None)),
            (MESSAGED, csat(1, messaged)),
            (OTHERS, csat(5, others)),
        )
        == []
    )


def test_an_incident_fires_once_and_resolves_once_at_recover_at() -> None:
    """CSAT, max gap 1, recover at 0.5, 10-minute windows: messaged 2 against 4 for three
    steps (one incident), then 3.5 against 4 (a gap of 0.5, at recover_at): resolved."""
    fatigue = Fatigue(
        rule(metric=ScoreMetric.CSAT, max_gap=1, recover_at=0.5, window_ms=10 * MINUTE,
             min_samples=30, confidence=None)
    )  # fmt: skip
    state = GapState()
    alerts: list[Alert] = []
    for step in range(5):
        bucket = T0 + step * 10 * MINUTE
        fatigue.add(state, bucket, COUNT_OF[MESSAGED], csat(2 if step < 3 else 3.5, 30))
        fatigue.add(state, bucket, COUNT_OF[OTHERS], csat(4, 30))
        alerts += fatigue.advance(state, bucket + 10 * MINUTE).alerts
    assert [(a.status, a.observed) for a in alerts] == [
        (AlertStatus.FIRING, 2),
        (AlertStatus.RESOLVED, 0.5),
    ]
    assert alerts[1].starts_at_ms == T0 + 10 * MINUTE
    assert alerts[1].summary.startswith("No more messaging fatigue in CSAT: CSAT 3.5 from")


# --- cohorts from records, through the offline reference -----------------------------------

RECORDS_CATALOG = """
scores: {window: 10m, step: 10m, grace: 1m}
messaging: {window: 1h, max_messages: 9, max_per_channel: 9, categories: [marketing]}
fatigue:
  - {metric: csat, messages: 2, max_gap: 1, window: 10m, step: 10m, min_samples: 1}
"""


def at(minute: int) -> int:
    return T0 + minute * MINUTE


def sent(
    event_id: str, minute: int, customer: str, category: str = "marketing"
) -> tuple[str, bytes]:
    doc = {
        "event_id": event_id,
        "occurred_at": at(minute),
        "customer_id": customer,
        "touchpoint": "marketing.sms",
        "channel": "sms",
        "direction": "outbound",
        "category": category,
    }
    return "touchpoint_events", orjson.dumps(doc)


def answered(answer_id: str, minute: int, score: int, **who: object) -> tuple[str, bytes]:
    doc = {
        "answer_id": answer_id,
        "answered_at": at(minute),
        "touchpoint": "checkout.payment",
        "metric": "csat",
        "score": score,
        **who,
    }
    return "survey_answers", orjson.dumps(doc)


def cohorts(*records: tuple[str, bytes]) -> dict[str, tuple[int, float]]:
    """Each cohort's CSAT answers and their sum in the bucket at 60 minutes, unjudged yet,
    once another customer's message at 69 minutes has taken event time past their grace."""
    monitor = OfflineMonitor(parse_catalog(RECORDS_CATALOG), build_scorer("none"))
    for role, raw in (*records, sent("m-0", 69, "c-0")):
        monitor.feed(role, raw)  # type: ignore[arg-type]
    state = monitor.finish().fatigue.rules["csat"]
    return {
        cohort: (tally.csat_count, tally.csat_sum)
        for cohort, tally in state.buckets[at(60)].items()
    }


def test_each_answer_takes_the_cohort_of_its_customers_messages_at_its_own_time() -> None:
    """Messaging window 1h, the messaged cohort from 2 counted messages on.

    * c-1: messages at 30 and 62; answers at 61 (one message: others, CSAT 5) and at 63
      (two: messaged, CSAT 1). The count crosses the line between the two answers.
    * c-2: answers at 64 (messaged, CSAT 2); its messages at 40 and 50 come after it.
    * c-3: one marketing message at 45, published twice, and a transactional one at 46;
      answers at 65 (one counted message: others, CSAT 4). The answer is published twice.
    * A phone linked to c-1 answers at 66 (c-1's two messages: messaged, CSAT 3).
    """
    link = {"contact": {"type": "phone", "value": "+8613800000001"}, "customer_id": "c-1"}
    records = [
        sent("m-1", 30, "c-1"),
        ("identity_links", orjson.dumps(link | {"linked_at": at(0)})),
        answered("a-1", 61, 5, customer_id="c-1"),
        sent("m-2", 62, "c-1"),
        answered("a-2", 63, 1, customer_id="c-1"),
        answered("a-3", 64, 2, customer_id="c-2"),
        sent("m-3", 40, "c-2"),
        sent("m-4", 50, "c-2"),
        sent("m-5", 45, "c-3"),
        sent("m-5", 45, "c-3"),
        sent("m-6", 46, "c-3", category="transactional"),
        answered("a-4", 65, 4, customer_id="c-3"),
        answered("a-4", 65, 4, customer_id="c-3"),
        answered("a-5", 66, 3, contact=link["contact"]),
    ]
    assert cohorts(*records) == {MESSAGED: (3, 1 + 2 + 3), OTHERS: (2, 5 + 4)}


def test_an_answer_from_a_contact_without_a_link_is_its_own_customer() -> None:
    """No link: the phone has no messages of its own, so its answer is the others'."""
    phone = {"type": "phone", "value": "+8613800000002"}
    records = [
        sent("m-1", 30, "c-1"),
        sent("m-2", 31, "c-1"),
        answered("a-1", 61, 3, contact=phone),
    ]
    assert cohorts(*records) == {OTHERS: (1, 3)}


def test_an_answer_waits_for_its_grace_to_pass_before_it_is_in_a_cohort() -> None:
    """A message may still come up to the grace (1 minute) late: an answer at 67 minutes
    is in no cohort while event time stands at 68, and in one from just past 68."""
    answer = answered("a-1", 67, 3, customer_id="c-1")
    monitor = OfflineMonitor(parse_catalog(RECORDS_CATALOG), build_scorer("none"))
    for role, raw in (answer, sent("m-1", 68, "c-2")):
        monitor.feed(role, raw)  # type: ignore[arg-type]
    assert monitor.finish().fatigue.rules["csat"].buckets == {}
    assert cohorts(answer) == {OTHERS: (1, 3)}


def test_the_simulated_campaign_fires_fatigue_once_and_resolves_it() -> None:
    """--fatigue over [1h, 2h) of 4 hours: half the customers get 4 marketing messages and
    answer worse meanwhile. The example catalog's NPS fatigue rule (an hour's window, max
    gap 15 with 95% confidence, recover at 10) fires on the window ending at 1h20, the
    first with 30 messaged answers (35 against 201, a gap of 68), and resolves on the
    first window past the trouble, ending at 3h; without the flag nothing fires."""
    config = SimulationConfig(
        start_ms=T0,
        duration_ms=4 * HOUR,
        journeys_per_hour=3_000,
        degrade_from_ms=T0 + HOUR,
        degrade_until_ms=T0 + 2 * HOUR,
        fatigue=True,
    )
    alerts = [
        a for a in reference(CATALOG, generate(config)).alerts
        if a.kind is AlertKind.MESSAGING_FATIGUE
    ]  # fmt: skip
    assert [(a.status, a.starts_at_ms, a.ends_at_ms) for a in alerts] == [
        (AlertStatus.FIRING, T0 + 80 * MINUTE, None),
        (AlertStatus.RESOLVED, T0 + 80 * MINUTE, T0 + 3 * HOUR),
    ]
    assert alerts[0].details["gap_low"] > 15
    assert (alerts[0].details["messaged_samples"], alerts[0].details["others_samples"]) == (35, 201)
    assert alerts[1].observed <= 10
    calm = replace(config, fatigue=False)
    assert not [
        a for a in reference(CATALOG, generate(calm)).alerts
        if a.kind is AlertKind.MESSAGING_FATIGUE
    ]  # fmt: skip


# --- the catalog --------------------------------------------------------------------------


def test_a_fatigue_rule_is_read_with_its_defaults() -> None:
    catalog = parse_catalog(
        "fatigue:\n"
        "  - metric: nps\n"
        "    messages: 4\n"
        "    max_gap: 15\n"
        "    window: 24h\n"
        "    step: 1h\n"
        "    confidence: 0.95\n"
        "    severity: critical\n"
        "  - {metric: ces, messages: 2, max_gap: 0.5, recover_at: 0.25}\n",
        "ops/catalog.yaml",
    )
    first, second = catalog.fatigue
    assert first == MessagingFatigue(
        metric=ScoreMetric.NPS,
        messages=4,
        max_gap=15,
        window_ms=24 * HOUR,
        step_ms=HOUR,
        min_samples=30,
        severity=Severity.CRITICAL,
        confidence=0.95,
    )
    assert (first.id, first.recover_gap, first.worse_when_higher) == ("nps", 15, False)
    # CES: a higher score is more effort, so worse.
    assert (second.window_ms, second.step_ms, second.recover_gap) == (HOUR, 5 * MINUTE, 0.25)
    assert second.worse_when_higher
    lines = describe_catalog(catalog, "ops/catalog.yaml")
    assert lines[0].endswith(", 2 fatigue rules")
    assert "messaging fatigue:" in lines
    assert (
        "  nps: fatigued when the nps of customers who had at least 4 counted messages in the "
        "24h before answering is worse than the others' by more than 15, with 0.95 confidence, "
        "24h windows every 1h, min 30 samples in each cohort; severity critical"
    ) in lines


@pytest.mark.parametrize(
    ("rules", "line", "words"),
    [
        ("fatigue:\n  - {metric: nps, max_gap: 5}\n", 2, ["needs 'messages'"]),
        ("fatigue:\n  - {metric: nps, messages: 3}\n", 2, ["needs 'max_gap'"]),
        (
            "fatigue:\n  - {metric: failure_rate, messages: 3, max_gap: 5}\n",
            2,
            ["survey answers", "nps, csat, ces, sentiment"],
        ),
        ("fatigue:\n  - {metric: nps, messages: 0, max_gap: 5}\n", 2, ["at least 1"]),
        ("fatigue:\n  - {metric: nps, messages: 3, max_gap: -2}\n", 2, ["not be negative"]),
        (
            "fatigue:\n  - {metric: nps, messages: 3, max_gap: 5, recover_at: 9}\n",
            2,
            ["recover_at must be between 0 and 5"],
        ),
        ("fatigue:\n  - {metric: nps, messages: 3, max_gap: 5, stage: purchase}\n", 2, ["'stage'"]),
        (
            "fatigue:\n  - {metric: nps, messages: 3, max_gap: 5}\n"
            "  - {metric: nps, messages: 6, max_gap: 9}\n",
            3,
            ["fatigue nps is declared twice"],
        ),
    ],
)
def test_bad_fatigue_rules_are_refused_on_their_line(
    rules: str, line: int, words: list[str]
) -> None:
    with pytest.raises(CatalogError) as info:
        parse_catalog(rules, "ops/catalog.yaml")
    assert info.value.line == line, info.value
    for word in words:
        assert word in info.value.reason, info.value.reason
