"""Channel consistency: each channel of a stage against the rest, pooled, with hand figures."""

from __future__ import annotations

import math
import textwrap
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from models.records import (
    Alert,
    AlertKind,
    AlertStatus,
    Severity,
    Stage,
    SurveyAnswer,
    SurveyMetric,
)
from streams.catalog import (
    Catalog,
    CatalogError,
    ChannelConsistency,
    ScoreMetric,
    describe_catalog,
    parse_catalog,
)
from streams.core.alerts import fingerprint
from streams.core.consistency import StageConsistency
from streams.core.gaps import GapRules, GapState, RulesState, gap_between
from streams.core.scores import Tally
from streams.core.sentiment import build_scorer
from streams.core.stats import Estimate, z_score
from streams.replay import OfflineMonitor

MINUTE = 60_000
T0 = 1_795_305_600_000  # 2026-11-22T00:00:00Z, a whole number of 10m steps
Z95 = z_score(0.95)


CHECKOUT_CSAT = ChannelConsistency(
    stage=Stage.PURCHASE,
    metric=ScoreMetric.CSAT,
    max_gap=1.5,
    window_ms=60 * MINUTE,
    step_ms=10 * MINUTE,
    min_samples=30,
)


def rule(**changes: Any) -> ChannelConsistency:
    return replace(CHECKOUT_CSAT, **changes)


def answers(metric: SurveyMetric, *scores: float) -> Tally:
    tally = Tally()
    for number, score in enumerate(scores):
        tally.add_answer(
            SurveyAnswer(f"a-{number}", T0, "checkout.payment", metric, score), sentiment=None
        )
    return tally


def csat(score: float, count: int) -> Tally:
    return answers(SurveyMetric.CSAT, *[score] * count)


def nps(promoters: int, passives: int, detractors: int) -> Tally:
    return answers(SurveyMetric.NPS, *[10] * promoters, *[8] * passives, *[3] * detractors)


def judged(
    consistency: StageConsistency, *channels: tuple[str, Tally]
) -> tuple[GapState, list[Alert]]:
    """One bucket of the given channels, judged on the window that ends 10 minutes later."""
    state = GapState()
    for channel, tally in channels:
        assert consistency.add(state, T0, channel, tally)
    alerts = consistency.advance(state, T0 + 10 * MINUTE).alerts
    return state, alerts


# --- the gap and its interval ------------------------------------------------------------


def test_the_gap_of_two_nps_figures_and_its_interval_worked_by_hand() -> None:
    """app 10/10/10 (NPS 0), web 20/10/0 (NPS 66.67): the gap 66.67, its interval 32.93-100.40.

    Per-answer variances: app 1/3 + 1/3 - 0 = 0.6667, web 2/3 + 0 - (2/3)^2 = 0.2222; standard
    errors 100·sqrt(0.6667/30) = 14.907 and 100·sqrt(0.2222/30) = 8.607; together
    sqrt(14.907² + 8.607²) = 17.213; times 1.96: 33.737.
    """
    own = nps(10, 10, 10).estimate(ScoreMetric.NPS, Z95)
    rest = nps(20, 10, 0).estimate(ScoreMetric.NPS, Z95)
    assert own is not None
    assert rest is not None
    gap = gap_between(own, rest, worse_when_higher=False, z=Z95)
    assert gap.value == pytest.approx(66.6667, abs=1e-4)
    assert gap.low == pytest.approx(32.930, abs=1e-3)
    assert gap.high == pytest.approx(100.404, abs=1e-3)


def test_a_metric_that_is_worse_higher_takes_the_gap_the_other_way() -> None:
    """A failure rate of 0.30 on the channel against 0.10 on the rest: a gap of +0.20."""
    own = Estimate(0.30, 0.25, 0.35, 100)
    rest = Estimate(0.10, 0.08, 0.12, 400)
    gap = gap_between(own, rest, worse_when_higher=True, z=Z95)
    assert gap.value == pytest.approx(0.20)
    assert gap_between(rest, own, worse_when_higher=True, z=Z95).value == pytest.approx(-0.20)


def test_a_side_with_an_unbounded_interval_leaves_the_gap_unbounded() -> None:
    own = Estimate(2.0, -math.inf, math.inf, 1)
    rest = Estimate(4.0, 3.9, 4.1, 100)
    gap = gap_between(own, rest, worse_when_higher=False, z=Z95)
    assert gap.value == 2.0
    assert gap.low == -math.inf
    assert gap.high == math.inf


# --- verdicts ----------------------------------------------------------------------------


def test_a_channel_worse_than_the_rest_by_more_than_max_gap_fires_with_its_figures() -> None:
    """app CSAT 2 against web 4: a gap of 2 over a max_gap of 1.5; web's own gap is -2."""
    consistency = StageConsistency(rule())
    _, alerts = judged(consistency, ("app", csat(2, 30)), ("web", csat(4, 30)))
    (alert,) = alerts
    assert alert.kind is AlertKind.CHANNEL_INCONSISTENT
    assert alert.status is AlertStatus.FIRING
    assert alert.subject == "purchase/csat/app"
    assert alert.fingerprint == fingerprint(AlertKind.CHANNEL_INCONSISTENT, "purchase/csat/app")
    assert alert.severity is Severity.WARNING
    assert alert.starts_at_ms == T0 + 10 * MINUTE
    assert alert.observed == 2.0
    assert alert.threshold == 1.5
    assert alert.window == "1h"
    assert alert.details["channel_value"] == 2.0
    assert alert.details["rest_value"] == 4.0
    assert alert.details["channel_samples"] == 30
    assert alert.details["rest_samples"] == 30
    assert (alert.details["gap_low"], alert.details["gap_high"]) == (2.0, 2.0)
    assert "Channel app inconsistent in purchase" in alert.summary


def test_a_gap_exactly_at_max_gap_does_not_fire() -> None:
    consistency = StageConsistency(rule(max_gap=2.0))
    _, alerts = judged(consistency, ("app", csat(2, 30)), ("web", csat(4, 30)))
    assert alerts == []


def test_the_rest_is_every_other_channel_of_the_stage_pooled() -> None:
    """app 30 answers of 2 against web 20 of 4 and mini_program 20 of 5: the rest's mean is 4.5.

    web and mini_program have fewer than 30 answers each, so only app is judged.
    """
    consistency = StageConsistency(rule())
    state = GapState()
    for channel, tally in [
        ("app", csat(2, 30)),
        ("web", csat(4, 20)),
        ("mini_program", csat(5, 20)),
    ]:
        consistency.add(state, T0, channel, tally)
    (reading,) = consistency.readings(state, T0 + 10 * MINUTE, [T0])
    assert reading.group == "app"
    assert reading.gap.rest.value == 4.5
    assert reading.gap.rest.samples == 40
    assert reading.gap.value == 2.5


def test_a_channel_with_too_few_samples_is_not_judged() -> None:
    consistency = StageConsistency(rule())
    _, alerts = judged(consistency, ("app", csat(2, 29)), ("web", csat(4, 30)))
    assert alerts == []


def test_a_channel_whose_rest_has_too_few_samples_is_not_judged() -> None:
    """app has 30, but the rest only web's 29: neither side can be judged."""
    consistency = StageConsistency(rule())
    state = GapState()
    consistency.add(state, T0, "app", csat(2, 30))
    consistency.add(state, T0, "web", csat(4, 29))
    assert consistency.readings(state, T0 + 10 * MINUTE, [T0]) == []


def test_a_stage_seen_on_one_channel_only_has_nothing_to_compare() -> None:
    consistency = StageConsistency(rule())
    _, alerts = judged(consistency, ("app", csat(1, 100)))
    assert alerts == []


def test_with_confidence_the_whole_interval_of_the_gap_must_lie_past_max_gap() -> None:
    """The NPS gap 66.67 has the interval 32.93-100.40: past 20, not past 40."""
    channels = [("app", nps(10, 10, 10)), ("web", nps(20, 10, 0))]
    plain = StageConsistency(rule(metric=ScoreMetric.NPS, max_gap=40))
    assert [a.subject for a in judged(plain, *channels)[1]] == ["purchase/nps/app"]
    sure = StageConsistency(rule(metric=ScoreMetric.NPS, max_gap=40, confidence=0.95))
    assert judged(sure, *channels)[1] == []
    lower = StageConsistency(rule(metric=ScoreMetric.NPS, max_gap=20, confidence=0.95))
    (alert,) = judged(lower, *channels)[1]
    assert alert.details["gap_low"] == pytest.approx(32.930, abs=1e-3)
    assert "with 95% confidence" in alert.summary


def test_an_incident_fires_once_and_resolves_once_at_recover_at() -> None:
    """app at 2 for the first hour, then at 3.5 (a gap of 0.5 once the hour has passed).

    Windows are 1h every 10m: the gap stays past 1.5 in every window that still holds an
    old bucket, reaches 1.0 (recover_at) in none of them while mixed, and is 0.5 once the
    window holds the new buckets alone.
    """
    consistency = StageConsistency(rule(recover_at=1.0))
    state = GapState()
    alerts = []
    for step in range(12):
        bucket = T0 + step * 10 * MINUTE
        consistency.add(state, bucket, "app", csat(2 if step < 6 else 3.5, 30))
        consistency.add(state, bucket, "web", csat(4, 30))
        alerts += consistency.advance(state, bucket + 10 * MINUTE).alerts
    statuses = [(a.status, a.starts_at_ms) for a in alerts]
    assert statuses == [
        (AlertStatus.FIRING, T0 + 10 * MINUTE),
        (AlertStatus.RESOLVED, T0 + 10 * MINUTE),
    ]
    resolved = alerts[1]
    # Mixed windows: with k new buckets of six the app mean is 2 + 1.5·k/6, the gap
    # 2 - 0.25·k; it reaches 1.0 with k = 4, the window ending 100 minutes in.
    assert resolved.ends_at_ms == T0 + 100 * MINUTE
    assert resolved.observed == 1.0
    assert state.incidents == {}


def test_each_window_is_judged_once_however_often_it_is_advanced() -> None:
    consistency = StageConsistency(rule())
    state = GapState()
    consistency.add(state, T0, "app", csat(2, 30))
    consistency.add(state, T0, "web", csat(4, 30))
    first = consistency.advance(state, T0 + 10 * MINUTE).alerts
    again = consistency.advance(state, T0 + 10 * MINUTE).alerts
    assert len(first) == 1
    assert again == []


def test_the_gauges_read_the_newest_window_judged_and_nothing_when_none_closed() -> None:
    """Buckets at 0 and 10 minutes, judged to 20: the windows ending at 10 and 20 close,
    and the newest holds both buckets (app CSAT 2 over 60 answers, web 4 over 60)."""
    consistency = StageConsistency(rule())
    state = GapState()
    for start in (T0, T0 + 10 * MINUTE):
        consistency.add(state, start, "app", csat(2, 30))
        consistency.add(state, start, "web", csat(4, 30))
    judged = consistency.advance(state, T0 + 20 * MINUTE)
    assert judged.latest is not None
    assert [(r.group, r.window_end_ms, r.gap.group.samples) for r in judged.latest] == [
        ("app", T0 + 20 * MINUTE, 60),
        ("web", T0 + 20 * MINUTE, 60),
    ]
    assert consistency.advance(state, T0 + 25 * MINUTE).latest is None


def test_a_tally_for_a_window_already_judged_is_refused() -> None:
    """Judged to 70 minutes in: the bucket at 10 fed only windows ending 20-70, all judged;
    the bucket at 20 still feeds the window ending at 80."""
    consistency = StageConsistency(rule())
    state = GapState()
    consistency.add(state, T0, "app", csat(2, 30))
    consistency.advance(state, T0 + 70 * MINUTE)
    assert not consistency.add(state, T0 + 10 * MINUTE, "web", csat(4, 30))
    assert consistency.add(state, T0 + 20 * MINUTE, "web", csat(4, 30))


def test_the_state_survives_its_encoding() -> None:
    consistency = StageConsistency(rule())
    rule_state, _ = judged(consistency, ("app", csat(2, 30)), ("web", csat(4, 30)))
    decoded = RulesState.decode(RulesState({"purchase/csat": rule_state}).encode())
    (again,) = decoded.rules.values()
    assert again.incidents == rule_state.incidents == {"app": T0 + 10 * MINUTE}
    assert again.evaluated_until_ms == rule_state.evaluated_until_ms
    assert again.to_wire() == rule_state.to_wire()


def test_every_rule_of_a_stage_keeps_its_own_tallies() -> None:
    """A tally merged into two rules' states is copied, never shared: the NPS rule judged
    on 10-minute steps and the CSAT rule on 5-minute ones each count the 30 answers once."""
    rules = GapRules(
        StageConsistency(r) for r in (rule(), rule(metric=ScoreMetric.NPS, step_ms=5 * MINUTE))
    )
    state = RulesState()
    first, again = csat(2, 30), csat(2, 30)
    assert rules.add(state, T0 + 7 * MINUTE, "app", first)
    assert rules.add(state, T0 + 8 * MINUTE, "app", again)
    csat_rule, nps_rule = state.rules["purchase/csat"], state.rules["purchase/nps"]
    assert csat_rule.buckets[T0]["app"].csat_count == 60
    assert nps_rule.buckets[T0 + 5 * MINUTE]["app"].csat_count == 60
    assert first.csat_count == 30, "the partial itself is not changed"


# --- the catalog key ---------------------------------------------------------------------

STAGES = """
touchpoints:
  checkout.payment: {stage: purchase}
  store.visit: {stage: purchase}
"""


def parsed(rules: str) -> Catalog:
    return parse_catalog(STAGES + textwrap.dedent(rules), "ops/catalog.yaml")


def test_a_consistency_rule_is_read_with_its_defaults() -> None:
    catalog = parsed(
        """
        consistency:
          - stage: purchase
            metric: nps
            max_gap: 20
            recover_at: 15
            window: 1h
            step: 10m
            confidence: 0.95
            severity: critical
          - {stage: purchase, metric: failure_rate, max_gap: 0.05}
        """
    )
    first, second = catalog.consistency
    assert first == ChannelConsistency(
        stage=Stage.PURCHASE,
        metric=ScoreMetric.NPS,
        max_gap=20,
        window_ms=60 * MINUTE,
        step_ms=10 * MINUTE,
        min_samples=30,
        severity=Severity.CRITICAL,
        recover_at=15,
        confidence=0.95,
    )
    assert first.id == "purchase/nps"
    assert (second.window_ms, second.step_ms, second.recover_gap) == (60 * MINUTE, 5 * MINUTE, 0.05)
    assert second.worse_when_higher
    lines = describe_catalog(catalog, "ops/catalog.yaml")
    assert "channel consistency:" in lines
    assert any(line.startswith("  purchase/nps: inconsistent when") for line in lines)


@pytest.mark.parametrize(
    ("rules", "line", "words"),
    [
        ("consistency:\n  - {stage: purchase, metric: nps}\n", 5, ["needs 'max_gap'"]),
        (
            "consistency:\n  - {stage: use, metric: nps, max_gap: 5}\n",
            5,
            ["no touchpoint", "'use'"],
        ),
        ("consistency:\n  - {stage: buy, metric: nps, max_gap: 5}\n", 5, ["'buy' is not one of"]),
        ("consistency:\n  - {stage: purchase, metric: nps, max_gap: -1}\n", 5, ["not be negative"]),
        (
            "consistency:\n  - {stage: purchase, metric: nps, max_gap: 5, recover_at: 6}\n",
            5,
            ["recover_at must be between 0 and 5"],
        ),
        (
            "consistency:\n"
            "  - {stage: purchase, metric: nps, max_gap: 5, window: 25m, step: 10m}\n",
            5,
            ["whole number of steps"],
        ),
        ("consistency:\n  - {stage: purchase, metric: nps, max_gap: 5, per: app}\n", 5, ["'per'"]),
        (
            "consistency:\n  - {stage: purchase, metric: nps, max_gap: 5}\n"
            "  - {stage: purchase, metric: nps, max_gap: 9}\n",
            6,
            ["consistency purchase/nps is declared twice"],
        ),
    ],
)
def test_bad_consistency_rules_are_refused_on_their_line(
    rules: str, line: int, words: list[str]
) -> None:
    with pytest.raises(CatalogError) as info:
        parse_catalog(STAGES.lstrip("\n") + rules, "ops/catalog.yaml")
    assert info.value.line == line, info.value
    for word in words:
        assert word in info.value.reason, info.value.reason


# --- from records, through the offline reference -----------------------------------------

RECORDS_CATALOG = STAGES + (
    "consistency:\n"
    "  - {stage: purchase, metric: csat, max_gap: 1, window: 30m, step: 10m, min_samples: 3}\n"
)


def answer(number: int, minute: int, touchpoint: str, score: int, channel: str | None) -> bytes:
    at = (T0 + minute * MINUTE) / 1000
    doc: dict[str, object] = {
        "answer_id": f"a-{number}",
        "answered_at": datetime.fromtimestamp(at, tz=UTC).isoformat(),
        "customer_id": f"c-{number}",
        "touchpoint": touchpoint,
        "metric": "csat",
        "score": score,
    }
    if channel is not None:
        doc["channel"] = channel
    return orjson.dumps(doc)


def replayed(*answers: bytes) -> list[Alert]:
    monitor = OfflineMonitor(parse_catalog(RECORDS_CATALOG), build_scorer("none"))
    for raw in answers:
        monitor.feed("survey_answers", raw)
    return monitor.finish().alerts


def test_answers_of_the_stage_by_channel_fire_in_the_offline_reference() -> None:
    """Three app answers of 2 against three store answers of 5 across two touchpoints of
    the stage; answers without a channel and of another stage do not count."""
    records = [
        *(answer(n, 1, "checkout.payment", 2, "app") for n in range(3)),
        *(answer(n, 2, "store.visit", 5, "store") for n in range(3, 6)),
        answer(6, 3, "checkout.payment", 5, None),
        answer(7, 40, "checkout.payment", 5, "web"),  # moves event time past the first window
    ]
    (alert,) = replayed(*records)
    assert alert.subject == "purchase/csat/app"
    assert (alert.details["channel_value"], alert.details["channel_samples"]) == (2.0, 3)
    assert (alert.details["rest_value"], alert.details["rest_samples"]) == (5.0, 3)


def test_a_channel_outside_the_contract_counts_as_other() -> None:
    records = [
        *(answer(n, 1, "checkout.payment", 2, "fax") for n in range(3)),
        *(answer(n, 2, "store.visit", 5, "store") for n in range(3, 6)),
        answer(7, 40, "checkout.payment", 5, "web"),
    ]
    (alert,) = replayed(*records)
    assert alert.subject == "purchase/csat/other"
