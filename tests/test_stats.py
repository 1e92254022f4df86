"""Intervals and drift statistics, each against figures worked out by hand in the comments."""

from __future__ import annotations

import math

import pytest

from streams.core.stats import (
    DEVIATION_CLIP,
    Estimate,
    cusum,
    deviation,
    ewma,
    ewma_chart_limit,
    mean_interval,
    nps_interval,
    quantile_ranks,
    wilson_interval,
    z_score,
)

Z = 1.96  # rounded on purpose: every figure below is worked out with exactly this z


def test_z_scores_of_common_confidences() -> None:
    # Standard normal tables: P(|Z| < 1.959964) = 0.95, P(|Z| < 1.644854) = 0.90.
    assert z_score(0.95) == pytest.approx(1.959964, abs=1e-6)
    assert z_score(0.90) == pytest.approx(1.644854, abs=1e-6)
    assert z_score(0.99) == pytest.approx(2.575829, abs=1e-6)


def test_nps_interval_by_hand() -> None:
    # 100 promoters, 40 passives, 60 detractors: p = 0.5, d = 0.3, NPS = 100 (p - d) = 20.
    # Per-answer variance p + d - (p - d)^2 = 0.8 - 0.04 = 0.76; se = sqrt(0.76 / 200)
    # = sqrt(0.0038) = 0.0616441 -> 6.16441 points; half-width 1.96 * 6.16441 = 12.08225.
    estimate = nps_interval(100, 40, 60, Z)
    assert estimate.value == 20.0
    assert estimate.samples == 200
    assert estimate.low == pytest.approx(20 - 12.08225, abs=1e-4)
    assert estimate.high == pytest.approx(20 + 12.08225, abs=1e-4)


def test_nps_interval_is_clipped_to_the_scale() -> None:
    # 3 promoters, 1 detractor: NPS 50; variance 1 - 0.5^2 = 0.75; se = sqrt(0.75 / 4)
    # = 0.4330127 -> 43.30127; half 84.87049: 50 + 84.87 is past 100, so 100.
    estimate = nps_interval(3, 0, 1, Z)
    assert estimate.value == 50.0
    assert estimate.low == pytest.approx(50 - 84.87049, abs=1e-4)
    assert estimate.high == 100.0


def test_nps_interval_of_identical_answers_has_no_width() -> None:
    # All promoters: p = 1, d = 0, variance 1 - 1 = 0.
    assert nps_interval(12, 0, 0, Z) == Estimate(100.0, 100.0, 100.0, 12)
    assert nps_interval(0, 5, 0, Z) == Estimate(0.0, 0.0, 0.0, 5)


def test_nps_value_is_computed_as_the_tally_computes_it() -> None:
    # 6 promoters, 2 detractors of 10: 100 * (6 - 2) / 10 is exactly 40.0, whereas
    # 100 * (0.6 - 0.2) would be 39.99999999999999 and miss a line at 40.
    assert nps_interval(6, 2, 2, Z).value == 40.0


def test_wilson_interval_by_hand() -> None:
    # 30 failures in 100: p = 0.3, z^2 = 3.8416, z^2/n = 0.038416.
    # centre = (0.3 + 3.8416/200) / 1.038416 = 0.319208 / 1.038416 = 0.307399
    # half = 1.96 / 1.038416 * sqrt(0.21/100 + 3.8416/40000)
    #      = 1.887490 * sqrt(0.00219604) = 1.887490 * 0.0468619 = 0.0884514
    estimate = wilson_interval(30, 100, Z)
    assert estimate.value == 0.3
    assert estimate.low == pytest.approx(0.307399 - 0.0884514, abs=1e-5)
    assert estimate.high == pytest.approx(0.307399 + 0.0884514, abs=1e-5)


def test_wilson_interval_with_no_hits_still_has_an_upper_bound() -> None:
    # 0 of 20: centre = (3.8416/40) / (1 + 3.8416/20) = 0.09604 / 1.19208 = 0.0805650,
    # half = 1.96/1.19208 * sqrt(3.8416/1600) = 1.644185 * 0.049 = 0.0805651: [0, 0.16113].
    estimate = wilson_interval(0, 20, Z)
    assert estimate.value == 0.0
    assert estimate.low == 0.0
    assert estimate.high == pytest.approx(0.16113, abs=1e-5)


def test_mean_interval_by_hand() -> None:
    # CSAT 5, 4, 3, 4: sum 16, squares 25 + 16 + 9 + 16 = 66, mean 4;
    # sample variance (66 - 4 * 16) / 3 = 2/3; se = sqrt(2/3 / 4) = 0.4082483; half 0.800167.
    estimate = mean_interval(4, 16.0, 66.0, Z)
    assert estimate.value == 4.0
    assert estimate.low == pytest.approx(3.199833, abs=1e-6)
    assert estimate.high == pytest.approx(4.800167, abs=1e-6)


def test_mean_interval_of_one_answer_is_unbounded() -> None:
    estimate = mean_interval(1, 3.0, 9.0, Z)
    assert estimate.value == 3.0
    assert (estimate.low, estimate.high) == (-math.inf, math.inf)


def test_quantile_ranks_by_hand() -> None:
    # n = 100, q = 0.95: n q = 95, sqrt(n q (1 - q)) = sqrt(4.75) = 2.179449;
    # 1.96 * 2.179449 = 4.271720: ranks 90.728 -> 90 and 99.272 -> 100.
    assert quantile_ranks(100, 0.95, Z) == (90, 100)
    # n = 30: 28.5 +- 1.96 * sqrt(1.425) = 28.5 +- 2.339703: 26 and 31, past the 30th.
    assert quantile_ranks(30, 0.95, Z) == (26, 31)


def test_spread_recovers_the_per_sample_standard_deviation() -> None:
    # The NPS above: half-width 12.08225 = 1.96 * sd / sqrt(200), so sd = 87.17798, which
    # is 100 * sqrt(0.76), the per-answer standard deviation on the -100..100 scale.
    assert nps_interval(100, 40, 60, Z).spread(Z) == pytest.approx(100 * math.sqrt(0.76))
    # One bound missing: the other side's distance from the value stands for the half-width.
    assert Estimate(10.0, 6.0, math.inf, 16).spread(2.0) == pytest.approx(4 / 2 * 4)
    assert Estimate(10.0, -math.inf, math.inf, 1).spread(2.0) == math.inf


@pytest.mark.parametrize(
    ("value", "line", "error", "worse_when_higher", "expected"),
    [
        (0.20, 0.15, 0.02, True, 2.5),  # 0.05 over a rate line, 0.02 per standard error
        (0.10, 0.15, 0.02, True, -2.5),  # as far on the good side
        (0.0, 10.0, 10.0, False, 1.0),  # NPS 0 under a line of 10, se 10
        (30.0, 10.0, 10.0, False, -2.0),
        (0.9, 0.15, 0.01, True, DEVIATION_CLIP),  # 75 standard errors: clipped to 6
        (-100.0, 10.0, 0.0, False, DEVIATION_CLIP),  # no spread at all: certain
        (10.0, 10.0, 0.0, False, 0.0),  # on the line with no spread: no evidence
        (12.0, 10.0, math.inf, False, 0.0),  # unbounded error: no evidence
    ],
)
def test_deviation_in_standard_errors(
    value: float, line: float, error: float, worse_when_higher: bool, expected: float
) -> None:
    assert deviation(value, line, error, worse_when_higher) == pytest.approx(expected)


def test_cusum_steps_by_hand() -> None:
    # Slack k = 0.5: S = max(0, S + x - 0.5).
    # x:  1.5   1.5   -0.5   2.0   1.0   -4.0
    # S:  1.0   2.0    1.0   2.5   3.0    0.0 (never below zero)
    statistic = 0.0
    seen = []
    for step in (1.5, 1.5, -0.5, 2.0, 1.0, -4.0):
        statistic = cusum(statistic, step, 0.5)
        seen.append(statistic)
    assert seen == [1.0, 2.0, 1.0, 2.5, 3.0, 0.0]


def test_ewma_seeds_then_weights_the_newest_value() -> None:
    # alpha 0.25: 8 seeds; then 0.25 * 4 + 0.75 * 8 = 7; then 0.25 * 11 + 0.75 * 7 = 8.
    assert ewma(None, 8.0, 0.25) == 8.0
    assert ewma(8.0, 4.0, 0.25) == 7.0
    assert ewma(7.0, 11.0, 0.25) == 8.0


def test_ewma_chart_limit_by_hand() -> None:
    # L sqrt(lambda / (2 - lambda)): 3 * sqrt(0.2 / 1.8) = 3 / 3 = 1; 3 * sqrt(1/3) = sqrt(3).
    assert ewma_chart_limit(3.0, 0.2) == pytest.approx(1.0)
    assert ewma_chart_limit(3.0, 0.5) == pytest.approx(math.sqrt(3))
