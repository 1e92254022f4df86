"""Mergeable experience tallies of a touchpoint over a span of event time, and their scores."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from models.records import Outcome, SurveyAnswer, SurveyMetric, TouchpointEvent
from streams.catalog import ScoreMetric
from streams.core.stats import (
    Estimate,
    mean_interval,
    nps_interval,
    quantile_ranks,
    wilson_interval,
)

# Waiting times are kept in log-spaced bins (ratio 2^(1/8), about 9% wide) so that
# tallies from many workers and buckets merge exactly and p95 stays within one bin.
BINS_PER_DOUBLING = 8
P95 = 0.95
PROMOTER_MIN = 9.0
DETRACTOR_MAX = 6.0


def duration_bin(duration_ms: float) -> int:
    return 0 if duration_ms < 1.0 else 1 + int(math.log2(duration_ms) * BINS_PER_DOUBLING)


def bin_upper_ms(index: int) -> float:
    return 1.0 if index == 0 else 2.0 ** (index / BINS_PER_DOUBLING)


def bin_lower_ms(index: int) -> float:
    return 0.0 if index == 0 else bin_upper_ms(index - 1)


@dataclass(slots=True)
class Tally:
    """Counts and sums; two tallies of disjoint events add up to the tally of both."""

    promoters: int = 0
    passives: int = 0
    detractors: int = 0
    csat_count: int = 0
    csat_sum: float = 0.0
    ces_count: int = 0
    ces_sum: float = 0.0
    sentiment_count: int = 0
    sentiment_sum: float = 0.0
    events: int = 0
    outcomes: int = 0
    failures: int = 0
    abandons: int = 0
    duration_count: int = 0
    duration_sum: float = 0.0
    duration_bins: dict[int, int] = field(default_factory=dict)
    # Sums of squared scores: the spread behind each mean's confidence interval.
    csat_squares: float = 0.0
    ces_squares: float = 0.0
    sentiment_squares: float = 0.0

    def add_event(self, event: TouchpointEvent) -> None:
        self.events += 1
        if event.outcome is not None:
            self.outcomes += 1
            if event.outcome is Outcome.FAILURE:
                self.failures += 1
            elif event.outcome is Outcome.ABANDONED:
                self.abandons += 1
        if event.duration_ms is not None:
            self.duration_count += 1
            self.duration_sum += event.duration_ms
            index = duration_bin(event.duration_ms)
            self.duration_bins[index] = self.duration_bins.get(index, 0) + 1

    def add_answer(self, answer: SurveyAnswer, sentiment: float | None) -> None:
        if answer.metric is SurveyMetric.NPS:
            if answer.score >= PROMOTER_MIN:
                self.promoters += 1
            elif answer.score <= DETRACTOR_MAX:
                self.detractors += 1
            else:
                self.passives += 1
        elif answer.metric is SurveyMetric.CSAT:
            self.csat_count += 1
            self.csat_sum += answer.score
            self.csat_squares += answer.score * answer.score
        else:
            self.ces_count += 1
            self.ces_sum += answer.score
            self.ces_squares += answer.score * answer.score
        if sentiment is not None:
            self.sentiment_count += 1
            self.sentiment_sum += sentiment
            self.sentiment_squares += sentiment * sentiment

    def merge(self, other: Tally) -> None:
        self.promoters += other.promoters
        self.passives += other.passives
        self.detractors += other.detractors
        self.csat_count += other.csat_count
        self.csat_sum += other.csat_sum
        self.ces_count += other.ces_count
        self.ces_sum += other.ces_sum
        self.sentiment_count += other.sentiment_count
        self.sentiment_sum += other.sentiment_sum
        self.events += other.events
        self.outcomes += other.outcomes
        self.failures += other.failures
        self.abandons += other.abandons
        self.duration_count += other.duration_count
        self.duration_sum += other.duration_sum
        for index, count in other.duration_bins.items():
            self.duration_bins[index] = self.duration_bins.get(index, 0) + count
        self.csat_squares += other.csat_squares
        self.ces_squares += other.ces_squares
        self.sentiment_squares += other.sentiment_squares

    @property
    def records(self) -> int:
        """Events and survey answers folded into this tally."""
        return self.events + self.nps_answers + self.csat_count + self.ces_count

    @property
    def nps_answers(self) -> int:
        return self.promoters + self.passives + self.detractors

    def samples(self, metric: ScoreMetric) -> int:
        """How many answers or events stand behind `metric`."""
        if metric is ScoreMetric.NPS:
            return self.nps_answers
        if metric is ScoreMetric.CSAT:
            return self.csat_count
        if metric is ScoreMetric.CES:
            return self.ces_count
        if metric is ScoreMetric.SENTIMENT:
            return self.sentiment_count
        if metric is ScoreMetric.DURATION_MS:
            return self.duration_count
        return self.outcomes

    def value(self, metric: ScoreMetric) -> float | None:
        """The score over this tally, or None when nothing stands behind it."""
        if self.samples(metric) == 0:
            return None
        if metric is ScoreMetric.NPS:
            return 100.0 * (self.promoters - self.detractors) / self.nps_answers
        if metric is ScoreMetric.CSAT:
            return self.csat_sum / self.csat_count
        if metric is ScoreMetric.CES:
            return self.ces_sum / self.ces_count
        if metric is ScoreMetric.SENTIMENT:
            return self.sentiment_sum / self.sentiment_count
        if metric is ScoreMetric.FAILURE_RATE:
            return self.failures / self.outcomes
        if metric is ScoreMetric.ABANDON_RATE:
            return self.abandons / self.outcomes
        return self.duration_quantile(P95)

    def estimate(self, metric: ScoreMetric, z: float) -> Estimate | None:
        """The score with its confidence interval at `z`, or None when nothing stands behind it.

        NPS gets a normal interval, rates a Wilson interval, means a normal interval from
        their sample variance, the p95 waiting time the order-statistic interval read off
        the bins (from the lower edge of one bin to the upper edge of the other).
        """
        if self.samples(metric) == 0:
            return None
        if metric is ScoreMetric.NPS:
            return nps_interval(self.promoters, self.passives, self.detractors, z)
        if metric is ScoreMetric.CSAT:
            return mean_interval(self.csat_count, self.csat_sum, self.csat_squares, z)
        if metric is ScoreMetric.CES:
            return mean_interval(self.ces_count, self.ces_sum, self.ces_squares, z)
        if metric is ScoreMetric.SENTIMENT:
            return mean_interval(
                self.sentiment_count, self.sentiment_sum, self.sentiment_squares, z
            )
        if metric is ScoreMetric.FAILURE_RATE:
            return wilson_interval(self.failures, self.outcomes, z)
        if metric is ScoreMetric.ABANDON_RATE:
            return wilson_interval(self.abandons, self.outcomes, z)
        lowest, highest = quantile_ranks(self.duration_count, P95, z)
        return Estimate(
            self.duration_quantile(P95),
            bin_lower_ms(self._bin_holding(lowest)) if lowest >= 1 else 0.0,
            bin_upper_ms(self._bin_holding(highest))
            if highest <= self.duration_count
            else math.inf,
            self.duration_count,
        )

    def detractor_share(self, z: float) -> Estimate | None:
        """The share of NPS answers from detractors, with its Wilson interval."""
        if self.nps_answers == 0:
            return None
        return wilson_interval(self.detractors, self.nps_answers, z)

    def duration_mean(self) -> float | None:
        return self.duration_sum / self.duration_count if self.duration_count else None

    def duration_quantile(self, quantile: float) -> float:
        """Upper edge of the bin holding the quantile: never under-reports a wait."""
        return bin_upper_ms(self._bin_holding(quantile * self.duration_count))

    def _bin_holding(self, rank: float) -> int:
        """The bin of the rank-th smallest waiting time (1-based)."""
        seen = 0
        for index in sorted(self.duration_bins):
            seen += self.duration_bins[index]
            if seen >= rank:
                return index
        return max(self.duration_bins)

    def to_wire(self) -> list[Any]:
        bins: list[int] = []
        for index, count in self.duration_bins.items():
            bins += (index, count)
        return [
            self.promoters, self.passives, self.detractors,
            self.csat_count, self.csat_sum, self.ces_count, self.ces_sum,
            self.sentiment_count, self.sentiment_sum,
            self.events, self.outcomes, self.failures, self.abandons,
            self.duration_count, self.duration_sum, bins,
            self.csat_squares, self.ces_squares, self.sentiment_squares,
        ]  # fmt: skip

    @classmethod
    def from_wire(cls, wire: list[Any]) -> Tally:
        bins = wire[15]
        tally = cls(*wire[:15])
        tally.duration_bins = {bins[i]: bins[i + 1] for i in range(0, len(bins), 2)}
        tally.csat_squares, tally.ces_squares, tally.sentiment_squares = wire[16:19]
        return tally
