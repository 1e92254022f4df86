"""Tallies of one touchpoint: each score by hand, the p95 bins, merging and the wire form."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from itertools import count

import orjson
import pytest

from models.records import Direction, Outcome, SurveyAnswer, SurveyMetric, TouchpointEvent
from streams.catalog import ScoreMetric
from streams.core.scores import Tally

T0 = 1_795_305_600_000  # 2026-11-22T00:00:00Z
# One log bin is 2^(1/8) = 1.0905... wide: the reported p95 may sit at most that far above.
BIN_RATIO = 2 ** (1 / 8)

_ids = count()


def answer(metric: SurveyMetric, score: float, comment: str | None = None) -> SurveyAnswer:
    return SurveyAnswer(
        answer_id=f"a-{next(_ids)}",
        answered_at_ms=T0,
        touchpoint="checkout.payment",
        metric=metric,
        score=score,
        customer_id="c-1",
        comment=comment,
    )


def event(outcome: Outcome | None = None, duration_ms: float | None = None) -> TouchpointEvent:
    return TouchpointEvent(
        event_id=f"e-{next(_ids)}",
        occurred_at_ms=T0,
        touchpoint="checkout.payment",
        channel="app",
        direction=Direction.INBOUND,
        customer_id="c-1",
        outcome=outcome,
        duration_ms=duration_ms,
    )


def nps_tally(scores: list[float]) -> Tally:
    tally = Tally()
    for score in scores:
        tally.add_answer(answer(SurveyMetric.NPS, score), None)
    return tally


def durations_tally(durations: list[float]) -> Tally:
    tally = Tally()
    for duration in durations:
        tally.add_event(event(Outcome.SUCCESS, duration))
    return tally


def nearest_rank_p95(values: list[float]) -> float:
    """The ceil(0.95 n)-th smallest value, in exact integer arithmetic."""
    ordered = sorted(values)
    rank = -(-19 * len(ordered) // 20)
    return ordered[rank - 1]


# --- NPS -----------------------------------------------------------------------------------


def test_nps_six_promoters_two_passives_two_detractors_is_forty() -> None:
    tally = nps_tally([9, 10, 9, 10, 9, 10, 7, 8, 0, 6])
    assert (tally.promoters, tally.passives, tally.detractors) == (6, 2, 2)
    # 60% promoters - 20% detractors
    assert tally.value(ScoreMetric.NPS) == pytest.approx(40.0)
    assert tally.samples(ScoreMetric.NPS) == 10


@pytest.mark.parametrize(
    ("score", "bucket"),
    [
        (0, "detractors"),
        (6, "detractors"),
        (7, "passives"),
        (8, "passives"),
        (9, "promoters"),
        (10, "promoters"),
    ],
)
def test_nps_band_boundaries(score: float, bucket: str) -> None:
    tally = nps_tally([score])
    counts = {
        "promoters": tally.promoters,
        "passives": tally.passives,
        "detractors": tally.detractors,
    }
    assert counts == {name: int(name == bucket) for name in counts}


@pytest.mark.parametrize(
    ("scores", "expected"),
    [
        ([10, 10, 10], 100.0),
        ([0, 3, 6, 6], -100.0),
        ([7, 8, 7, 8], 0.0),
        ([9, 0, 7], 0.0),
        ([10, 9, 9, 5], 50.0),  # 75% - 25%
        ([9, 7, 7, 7, 7, 7, 7, 1, 2, 3], -20.0),  # 10% - 30%
    ],
)
def test_nps_by_hand(scores: list[float], expected: float) -> None:
    assert nps_tally(scores).value(ScoreMetric.NPS) == pytest.approx(expected)


# --- CSAT, CES, sentiment -----------------------------------------------------------------


def test_csat_and_ces_are_means_kept_apart_from_nps() -> None:
    tally = Tally()
    for score in (5, 4, 3, 4):
        tally.add_answer(answer(SurveyMetric.CSAT, score), None)
    for score in (1, 2, 7):
        tally.add_answer(answer(SurveyMetric.CES, score), None)
    assert tally.value(ScoreMetric.CSAT) == pytest.approx(16 / 4)
    assert tally.value(ScoreMetric.CES) == pytest.approx(10 / 3)
    assert tally.samples(ScoreMetric.CSAT) == 4
    assert tally.samples(ScoreMetric.CES) == 3
    assert tally.value(ScoreMetric.NPS) is None
    assert tally.samples(ScoreMetric.NPS) == 0


def test_sentiment_is_the_mean_over_answers_that_had_a_score() -> None:
    tally = Tally()
    tally.add_answer(answer(SurveyMetric.NPS, 10, "great"), 0.5)
    tally.add_answer(answer(SurveyMetric.CSAT, 2, "slow"), -0.25)
    tally.add_answer(answer(SurveyMetric.CES, 3), None)
    assert tally.samples(ScoreMetric.SENTIMENT) == 2
    assert tally.value(ScoreMetric.SENTIMENT) == pytest.approx((0.5 - 0.25) / 2)


# --- operational signals ------------------------------------------------------------------


def test_failure_and_abandon_rates_count_only_events_with_an_outcome() -> None:
    tally = Tally()
    for _ in range(6):
        tally.add_event(event(Outcome.SUCCESS))
    for _ in range(2):
        tally.add_event(event(Outcome.FAILURE))
    tally.add_event(event(Outcome.ABANDONED))
    for _ in range(3):
        tally.add_event(event(None, 120.0))
    assert tally.events == 12
    assert tally.samples(ScoreMetric.FAILURE_RATE) == 9
    assert tally.samples(ScoreMetric.ABANDON_RATE) == 9
    assert tally.value(ScoreMetric.FAILURE_RATE) == pytest.approx(2 / 9)
    assert tally.value(ScoreMetric.ABANDON_RATE) == pytest.approx(1 / 9)


def test_rates_are_none_without_outcomes() -> None:
    tally = Tally()
    tally.add_event(event(None, 50.0))
    assert tally.value(ScoreMetric.FAILURE_RATE) is None
    assert tally.value(ScoreMetric.ABANDON_RATE) is None
    assert tally.samples(ScoreMetric.DURATION_MS) == 1


def _uniform() -> list[float]:
    return [float(v) for v in range(1, 1001)]


def _lognormal() -> list[float]:
    rng = random.Random(7)
    return [rng.lognormvariate(6.0, 1.0) for _ in range(5000)]


def _two_levels() -> list[float]:
    # 90 fast page loads and 10 that hang: the slow ones decide p95.
    return [100.0] * 90 + [5000.0] * 10


def _constant() -> list[float]:
    return [3000.0] * 40


def _few() -> list[float]:
    return [12.0, 250.0, 31.5, 800.0, 2999.0, 44.0, 9.0]


def _exponential() -> list[float]:
    rng = random.Random(11)
    return [rng.expovariate(1 / 1500) + 1.0 for _ in range(2001)]


@pytest.mark.parametrize("make", [_uniform, _lognormal, _two_levels, _constant, _few, _exponential])
def test_p95_duration_is_upper_bin_edge_at_or_just_above_true_p95(
    make: Callable[[], list[float]],
) -> None:
    values = make()
    tally = durations_tally(values)
    true_p95 = nearest_rank_p95(values)
    reported = tally.value(ScoreMetric.DURATION_MS)
    assert reported is not None
    assert reported >= true_p95
    assert reported <= true_p95 * BIN_RATIO
    assert reported < true_p95 * 1.091
    assert tally.samples(ScoreMetric.DURATION_MS) == len(values)


def test_p95_of_two_levels_is_the_slow_level() -> None:
    values = _two_levels()
    reported = durations_tally(values).value(ScoreMetric.DURATION_MS)
    assert reported is not None
    assert 5000.0 <= reported < 5000.0 * 1.091


def test_duration_mean_is_exact() -> None:
    tally = durations_tally([100.0, 200.0, 600.0])
    assert tally.duration_mean() == pytest.approx(300.0)
    assert Tally().duration_mean() is None
    assert Tally().value(ScoreMetric.DURATION_MS) is None


# --- samples ------------------------------------------------------------------------------


def test_samples_per_metric() -> None:
    tally = Tally()
    for score in (10, 9, 8, 2, 0):
        tally.add_answer(answer(SurveyMetric.NPS, score, "ok"), 0.25)
    for score in (5, 4):
        tally.add_answer(answer(SurveyMetric.CSAT, score), None)
    tally.add_answer(answer(SurveyMetric.CES, 6), None)
    tally.add_event(event(Outcome.SUCCESS, 100.0))
    tally.add_event(event(Outcome.FAILURE))
    tally.add_event(event(None, 3000.0))
    tally.add_event(event(None))
    expected = {
        ScoreMetric.NPS: 5,
        ScoreMetric.CSAT: 2,
        ScoreMetric.CES: 1,
        ScoreMetric.SENTIMENT: 5,
        ScoreMetric.FAILURE_RATE: 2,
        ScoreMetric.ABANDON_RATE: 2,
        ScoreMetric.DURATION_MS: 2,
    }
    assert {metric: tally.samples(metric) for metric in ScoreMetric} == expected
    assert tally.records == 4 + 5 + 2 + 1
    assert tally.nps_answers == 5


# --- merge and wire -----------------------------------------------------------------------


def mixed_records(seed: int, n: int) -> list[SurveyAnswer | TouchpointEvent]:
    rng = random.Random(seed)
    records: list[SurveyAnswer | TouchpointEvent] = []
    for _ in range(n):
        kind = rng.randrange(4)
        if kind == 0:
            records.append(answer(SurveyMetric.NPS, rng.randint(0, 10), "comment"))
        elif kind == 1:
            records.append(answer(SurveyMetric.CSAT, rng.randint(1, 5)))
        elif kind == 2:
            records.append(answer(SurveyMetric.CES, rng.randint(1, 7), "comment"))
        else:
            outcome = rng.choice([None, Outcome.SUCCESS, Outcome.FAILURE, Outcome.ABANDONED])
            duration = float(rng.randint(0, 20_000)) if rng.random() < 0.7 else None
            records.append(event(outcome, duration))
    return records


def fold(records: list[SurveyAnswer | TouchpointEvent]) -> Tally:
    tally = Tally()
    for record in records:
        if isinstance(record, TouchpointEvent):
            tally.add_event(record)
        else:
            # Sentiments in quarters keep every float sum exact in any order.
            sentiment = (len(record.answer_id) % 9 - 4) / 4 if record.comment else None
            tally.add_answer(record, sentiment)
    return tally


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_merge_of_two_tallies_equals_tally_of_all_records(seed: int) -> None:
    records = mixed_records(seed, 400)
    cut = random.Random(seed).randrange(len(records))
    left, right = fold(records[:cut]), fold(records[cut:])
    left.merge(right)
    assert left == fold(records)
    for metric in ScoreMetric:
        assert left.value(metric) == fold(records).value(metric)


def test_merge_into_an_empty_tally_copies_and_leaves_the_other_alone() -> None:
    other = fold(mixed_records(4, 50))
    before = Tally.from_wire(other.to_wire())
    empty = Tally()
    empty.merge(other)
    assert empty == other
    assert other == before
    assert empty.duration_bins is not other.duration_bins


@pytest.mark.parametrize("seed", [5, 6])
def test_wire_round_trip_is_lossless_through_json(seed: int) -> None:
    tally = fold(mixed_records(seed, 300))
    tally.sentiment_sum += 0.1  # a value with no short decimal form
    restored = Tally.from_wire(orjson.loads(orjson.dumps(tally.to_wire())))
    assert restored == tally
    assert restored.duration_bins == tally.duration_bins
    for metric in ScoreMetric:
        assert restored.value(metric) == tally.value(metric)
        assert restored.samples(metric) == tally.samples(metric)


def test_wire_round_trip_of_empty_tally() -> None:
    assert Tally.from_wire(orjson.loads(orjson.dumps(Tally().to_wire()))) == Tally()


# --- estimates with confidence intervals --------------------------------------------------

Z = 1.96


def test_nps_estimate_is_the_nps_interval_of_the_answers() -> None:
    # 6 promoters, 2 passives, 2 detractors: NPS 40; variance 0.8 - 0.16 = 0.64;
    # se = sqrt(0.64 / 10) = 0.2529822 -> 25.29822; half 1.96 * 25.29822 = 49.58451.
    estimate = nps_tally([9, 10, 9, 10, 9, 10, 7, 8, 0, 6]).estimate(ScoreMetric.NPS, Z)
    assert estimate is not None
    assert estimate.value == 40.0
    assert estimate.samples == 10
    assert estimate.low == pytest.approx(40 - 49.58451, abs=1e-4)
    assert estimate.high == pytest.approx(89.58451, abs=1e-4)


def test_detractor_share_has_a_wilson_interval() -> None:
    # 2 detractors of 10: p = 0.2, z^2/n = 0.38416, centre (0.2 + 0.19208) / 1.38416 = 0.283262,
    # half 1.96/1.38416 * sqrt(0.016 + 3.8416/400) = 1.416021 * 0.160012 = 0.226581.
    share = nps_tally([9, 10, 9, 10, 9, 10, 7, 8, 0, 6]).detractor_share(Z)
    assert share is not None
    assert share.value == pytest.approx(0.2)
    assert share.low == pytest.approx(0.283262 - 0.226581, abs=1e-5)
    assert share.high == pytest.approx(0.283262 + 0.226581, abs=1e-5)
    assert Tally().detractor_share(Z) is None


def test_csat_estimate_uses_the_squares_of_the_scores() -> None:
    tally = Tally()
    for score in (5, 4, 3, 4):
        tally.add_answer(answer(SurveyMetric.CSAT, score), None)
    assert (tally.csat_count, tally.csat_sum, tally.csat_squares) == (4, 16.0, 66.0)
    # Mean 4, sample variance (66 - 64) / 3 = 2/3, se sqrt(1/6) = 0.408248, half 0.800167.
    estimate = tally.estimate(ScoreMetric.CSAT, Z)
    assert estimate is not None
    assert (estimate.value, estimate.samples) == (4.0, 4)
    assert estimate.low == pytest.approx(3.199833, abs=1e-6)
    assert estimate.high == pytest.approx(4.800167, abs=1e-6)


def test_ces_and_sentiment_squares_are_kept_apart() -> None:
    tally = Tally()
    tally.add_answer(answer(SurveyMetric.CES, 2, "meh"), -0.5)
    tally.add_answer(answer(SurveyMetric.CES, 6), None)
    tally.add_answer(answer(SurveyMetric.NPS, 9, "good"), 0.25)
    assert (tally.ces_squares, tally.csat_squares) == (40.0, 0.0)
    assert tally.sentiment_squares == 0.25 + 0.0625
    # CES 2 and 6: mean 4, variance (40 - 32) / 1 = 8, se 2, half 3.92.
    ces = tally.estimate(ScoreMetric.CES, Z)
    assert ces is not None
    assert (ces.low, ces.high) == pytest.approx((0.08, 7.92))


def test_rate_estimates_are_wilson_intervals() -> None:
    tally = Tally(events=100, outcomes=100, failures=30, abandons=0)
    failure = tally.estimate(ScoreMetric.FAILURE_RATE, Z)
    abandon = tally.estimate(ScoreMetric.ABANDON_RATE, Z)
    assert failure is not None
    assert abandon is not None
    # Worked out in test_stats: 30 of 100 is [0.218948, 0.395850]; 0 of 100 starts at 0.
    assert (failure.low, failure.high) == pytest.approx((0.218948, 0.395850), abs=1e-5)
    assert abandon.value == 0.0
    assert abandon.low == 0.0
    assert abandon.high > 0.0


def test_p95_estimate_brackets_the_order_statistics_with_bin_edges() -> None:
    # 90 waits of 100 ms and 10 of 5000 ms. Ranks 90 and 100 bracket p95 (test_stats).
    # The 90th wait is 100 ms, in bin 1 + int(8 log2 100) = 1 + int(53.15) = 54, whose
    # lower edge is 2^(53/8) = 98.70 ms; the 100th is 5000 ms, in bin 1 + int(98.30) = 99,
    # whose upper edge 2^(99/8) = 5311.85 ms is also the reported p95.
    tally = durations_tally(_two_levels())
    estimate = tally.estimate(ScoreMetric.DURATION_MS, Z)
    assert estimate is not None
    assert estimate.value == tally.value(ScoreMetric.DURATION_MS)
    assert estimate.value == pytest.approx(5311.85, abs=0.01)
    assert estimate.low == pytest.approx(98.70, abs=0.01)
    assert estimate.high == pytest.approx(5311.85, abs=0.01)


def test_p95_of_few_waits_has_no_upper_bound() -> None:
    # n = 30: the upper rank 31 is past the slowest wait (test_stats): the data cannot
    # say how slow the true p95 might be; the lower rank 26 still bounds it from below.
    estimate = durations_tally(_constant()[:30]).estimate(ScoreMetric.DURATION_MS, Z)
    assert estimate is not None
    assert estimate.high == math.inf
    assert 3000.0 / BIN_RATIO <= estimate.low <= 3000.0


@pytest.mark.parametrize("seed", [7, 8])
def test_every_estimate_carries_the_value_and_samples_of_the_tally(seed: int) -> None:
    tally = fold(mixed_records(seed, 300))
    for metric in ScoreMetric:
        estimate = tally.estimate(metric, Z)
        assert estimate is not None
        assert estimate.value == tally.value(metric)
        assert estimate.samples == tally.samples(metric)
        assert estimate.low <= estimate.value <= estimate.high
    assert Tally().estimate(ScoreMetric.NPS, Z) is None
