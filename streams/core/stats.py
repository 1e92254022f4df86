"""Confidence intervals and drift statistics behind key-moment verdicts: plain arithmetic."""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

# Beyond six standard errors the evidence is as good as certain; the clip keeps a window
# whose answers are all alike (no spread at all) from counting as infinitely far.
DEVIATION_CLIP = 6.0


@dataclass(frozen=True, slots=True)
class Estimate:
    """A score with its confidence interval; a bound is infinite when the data cannot set it."""

    value: float
    low: float
    high: float
    samples: int

    def spread(self, z: float) -> float:
        """The per-sample standard deviation the interval implies (its half-width is z·sd/√n)."""
        if math.isfinite(self.low) and math.isfinite(self.high):
            half = (self.high - self.low) / 2
        elif math.isfinite(self.low):
            half = self.value - self.low
        elif math.isfinite(self.high):
            half = self.high - self.value
        else:
            return math.inf
        return half / z * math.sqrt(self.samples)


def z_score(confidence: float) -> float:
    """The two-sided standard normal quantile: 1.959964 for 0.95."""
    return NormalDist().inv_cdf((1 + confidence) / 2)


def nps_interval(promoters: int, passives: int, detractors: int, z: float) -> Estimate:
    """NPS on -100..100 with a normal interval.

    Each answer scores +1, 0 or -1, so with shares p and d the per-answer variance is
    p + d - (p - d)^2 and the standard error sqrt(variance / n), times 100 on this scale.
    """
    answers = promoters + passives + detractors
    p, d = promoters / answers, detractors / answers
    value = 100.0 * (p - d)
    half = 100.0 * z * math.sqrt(max(p + d - (p - d) ** 2, 0.0) / answers)
    return Estimate(value, max(value - half, -100.0), min(value + half, 100.0), answers)


def wilson_interval(hits: int, trials: int, z: float) -> Estimate:
    """A rate with its Wilson score interval: never outside 0..1, sound at 0 or 1 hits."""
    p = hits / trials
    z2 = z * z
    denominator = 1 + z2 / trials
    centre = (p + z2 / (2 * trials)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials))
    return Estimate(p, max(centre - half, 0.0), min(centre + half, 1.0), trials)


def mean_interval(count: int, total: float, squares: float, z: float) -> Estimate:
    """A mean with a normal interval from the sample variance; unbounded on one answer."""
    mean = total / count
    if count < 2:
        return Estimate(mean, -math.inf, math.inf, count)
    variance = max((squares - count * mean * mean) / (count - 1), 0.0)
    half = z * math.sqrt(variance / count)
    return Estimate(mean, mean - half, mean + half, count)


def quantile_ranks(count: int, quantile: float, z: float) -> tuple[int, int]:
    """1-based ranks of the order statistics that bracket the quantile at this confidence.

    The number of samples below the true quantile is binomial(n, q), so the bracket is
    n·q ± z·sqrt(n·q·(1 - q)), widened to whole ranks. A rank below 1 or above n means
    the data cannot bound that side.
    """
    centre = count * quantile
    half = z * math.sqrt(count * quantile * (1 - quantile))
    return math.floor(centre - half), math.ceil(centre + half)


def deviation(value: float, line: float, standard_error: float, worse_when_higher: bool) -> float:
    """Standard errors by which `value` is worse than `line` (negative when better), clipped."""
    gap = value - line if worse_when_higher else line - value
    if standard_error == 0.0:
        return math.copysign(DEVIATION_CLIP, gap) if gap else 0.0
    return max(-DEVIATION_CLIP, min(DEVIATION_CLIP, gap / standard_error))


def cusum(statistic: float, step_deviation: float, slack: float) -> float:
    """One step of a one-sided CUSUM: deviations beyond the slack pile up, never below 0."""
    return max(0.0, statistic + step_deviation - slack)


def ewma(previous: float | None, value: float, weight: float) -> float:
    """One step of an exponentially weighted moving average; the first value seeds it."""
    return value if previous is None else weight * value + (1 - weight) * previous


def ewma_chart_limit(width: float, weight: float) -> float:
    """The asymptotic control limit of an EWMA of unit-variance deviations: L·sqrt(λ/(2-λ))."""
    return width * math.sqrt(weight / (2 - weight))
