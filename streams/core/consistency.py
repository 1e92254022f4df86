"""Channel consistency: each channel of a journey stage against the stage's other channels.

A customer who pays in the app and one who pays on the web expect one brand. In every
window, each channel seen in the stage is scored against the pooled score of all the
stage's other channels; the gap is taken in the direction that is worse for the metric, so
a positive gap is the channel doing worse. An incident fires when the gap is past
`max_gap` (with `confidence`, when the whole interval of the gap is) and resolves when it
is back at or under `recover_at`; both the channel and the rest need `min_samples`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from models.decode import format_timestamp
from models.records import Alert, AlertKind, AlertStatus, Stage
from streams.catalog import Catalog, ChannelConsistency, format_duration
from streams.core.alerts import Incident, figure, fingerprint
from streams.core.hopping import Hopping
from streams.core.scores import Tally
from streams.core.stats import Estimate, z_score
from streams.core.touchpoints import METRIC_LABELS

# The interval an alert shows when its rule declares no confidence of its own.
SHOWN_CONFIDENCE = 0.95


@dataclass(slots=True)
class ConsistencyState:
    """Tallies of one stage by step and channel, and the open incident of each channel."""

    buckets: dict[int, dict[str, Tally]] = field(default_factory=dict)
    evaluated_until_ms: int | None = None
    incidents: dict[str, int] = field(default_factory=dict)  # channel -> incident start

    def to_wire(self) -> list[Any]:
        return [
            [[start, [[channel, tally.to_wire()] for channel, tally in channels.items()]]
             for start, channels in self.buckets.items()],
            self.evaluated_until_ms,
            self.incidents,
        ]  # fmt: skip

    @classmethod
    def from_wire(cls, wire: list[Any]) -> ConsistencyState:
        buckets, evaluated, incidents = wire
        return cls(
            {
                start: {channel: Tally.from_wire(tally) for channel, tally in channels}
                for start, channels in buckets
            },
            evaluated,
            incidents,
        )


@dataclass(slots=True)
class StageState:
    """Where each consistency rule of one journey stage stands, by rule id."""

    rules: dict[str, ConsistencyState] = field(default_factory=dict)

    def encode(self) -> bytes:
        return orjson.dumps([[rule, state.to_wire()] for rule, state in self.rules.items()])

    @classmethod
    def decode(cls, raw: bytes) -> StageState:
        return cls({rule: ConsistencyState.from_wire(wire) for rule, wire in orjson.loads(raw)})


@dataclass(frozen=True, slots=True)
class Gap:
    """How much worse one channel scored than the rest of its stage, with its interval."""

    channel: Estimate
    rest: Estimate
    value: float  # positive: the channel is worse
    low: float
    high: float


def gap_between(channel: Estimate, rest: Estimate, worse_when_higher: bool, z: float) -> Gap:
    """The gap of two independent estimates, its interval from their standard errors.

    Each estimate's standard error is read off its own interval (half its width over z),
    so NPS, rates and means each keep the interval they are judged by elsewhere; a side
    whose interval is unbounded (a mean of one answer) leaves the gap's unbounded too.
    """
    value = channel.value - rest.value if worse_when_higher else rest.value - channel.value
    error = math.hypot(_standard_error(channel, z), _standard_error(rest, z))
    return Gap(channel, rest, value, value - z * error, value + z * error)


def _standard_error(estimate: Estimate, z: float) -> float:
    return estimate.spread(z) / math.sqrt(estimate.samples)


@dataclass(frozen=True, slots=True)
class ChannelReading:
    """One channel on one closed window: the gap behind its verdict."""

    channel: str
    window_end_ms: int
    gap: Gap


@dataclass(slots=True)
class Judged:
    """What judging a rule's closed windows gave: its alerts, in order, and the readings of
    the newest window judged (None when no window closed), which the gauges show."""

    alerts: list[Alert] = field(default_factory=list)
    latest: list[ChannelReading] | None = None


class StageConsistency:
    """The pure rules of one consistency rule; state lives in ConsistencyState."""

    def __init__(self, rule: ChannelConsistency) -> None:
        self.rule = rule
        self.window = format_duration(rule.window_ms)
        self.confidence = rule.confidence or SHOWN_CONFIDENCE
        self.z = z_score(self.confidence)
        self.hopping = Hopping(rule.window_ms, rule.step_ms)

    def horizon(self, state: ConsistencyState) -> int | None:
        """Buckets before this start feed no window still to be judged."""
        return self.hopping.horizon(state.evaluated_until_ms)

    def add(self, state: ConsistencyState, at_ms: int, channel: str, tally: Tally) -> bool:
        """Merge a partial tally of one channel (`tally` is not kept: the state has its own)
        into its step; False when every window it falls in is judged."""
        start = self.hopping.bucket_of(at_ms)
        horizon = self.horizon(state)
        if horizon is not None and start < horizon:
            return False
        channels = state.buckets.setdefault(start, {})
        channels.setdefault(channel, Tally()).merge(tally)
        return True

    def advance(self, state: ConsistencyState, closed_ms: int) -> Judged:
        """Judge, in order, every window that ends by `closed_ms`; drop buckets no longer needed."""
        judged = Judged()
        for end, starts in self.hopping.closing(state.buckets, state.evaluated_until_ms, closed_ms):
            judged.latest = self.readings(state, end, starts)
            judged.alerts += self._judge(state, judged.latest)
        state.evaluated_until_ms = self.hopping.close(
            state.buckets, state.evaluated_until_ms, closed_ms
        )
        return judged

    def readings(
        self, state: ConsistencyState, end: int, starts: list[int]
    ) -> list[ChannelReading]:
        """Each channel with enough samples, against the rest with enough, on one window."""
        rule = self.rule
        by_channel: dict[str, Tally] = {}
        for start in starts:
            for channel, tally in state.buckets[start].items():
                by_channel.setdefault(channel, Tally()).merge(tally)
        found = []
        for channel in sorted(by_channel):
            own = by_channel[channel].estimate(rule.metric, self.z)
            rest_tally = Tally()
            for other, tally in by_channel.items():
                if other != channel:
                    rest_tally.merge(tally)
            rest = rest_tally.estimate(rule.metric, self.z)
            if own is None or rest is None:
                continue
            if own.samples < rule.min_samples or rest.samples < rule.min_samples:
                continue
            gap = gap_between(own, rest, rule.worse_when_higher, self.z)
            found.append(ChannelReading(channel, end, gap))
        return found

    def _judge(self, state: ConsistencyState, readings: list[ChannelReading]) -> list[Alert]:
        alerts = []
        for reading in readings:
            alert = self._verdict(state, reading)
            if alert is not None:
                alerts.append(alert)
        return alerts

    def _verdict(self, state: ConsistencyState, reading: ChannelReading) -> Alert | None:
        rule, gap, channel = self.rule, reading.gap, reading.channel
        start = state.incidents.get(channel)
        if start is None:
            evidence = gap.value if rule.confidence is None else gap.low
            if evidence <= rule.max_gap:
                return None
            state.incidents[channel] = reading.window_end_ms
            return self._alert(reading, AlertStatus.FIRING, reading.window_end_ms)
        if gap.value > rule.recover_gap:
            return None
        del state.incidents[channel]
        return self._alert(reading, AlertStatus.RESOLVED, start)

    def subject(self, channel: str) -> str:
        return f"{self.rule.id}/{channel}"

    def _alert(self, reading: ChannelReading, status: AlertStatus, starts_at_ms: int) -> Alert:
        rule, gap = self.rule, reading.gap
        figures = (
            f"{METRIC_LABELS[rule.metric]} {gap.channel.value:.4g} on {reading.channel} "
            f"against {gap.rest.value:.4g} on the stage's other channels, a gap of {gap.value:.4g} "
            f"({self.confidence:.0%} interval {gap.low:.4g} to {gap.high:.4g}; "
            f"{gap.channel.samples} and {gap.rest.samples} samples) over the last {self.window}"
        )
        stage = rule.stage.value
        if status is AlertStatus.FIRING:
            rule_text = f"more than {rule.max_gap:g}"
            if rule.confidence is not None:
                rule_text += f" with {rule.confidence:.0%} confidence"
            summary = f"Channel {reading.channel} inconsistent in {stage}: {figures}, {rule_text}."
        else:
            summary = (
                f"Channel {reading.channel} consistent again in {stage}: {figures}, at or under "
                f"{rule.recover_gap:g}."
            )
        subject = self.subject(reading.channel)
        incident = Incident(
            kind=AlertKind.CHANNEL_INCONSISTENT,
            subject=subject,
            fingerprint=fingerprint(AlertKind.CHANNEL_INCONSISTENT, subject),
            severity=rule.severity,
            starts_at_ms=starts_at_ms,
        )
        details: dict[str, Any] = {
            "stage": stage,
            "metric": rule.metric.value,
            "channel": reading.channel,
            "channel_value": figure(gap.channel.value),
            "channel_samples": gap.channel.samples,
            "rest_value": figure(gap.rest.value),
            "rest_samples": gap.rest.samples,
            "gap": figure(gap.value),
            "gap_low": figure(gap.low),
            "gap_high": figure(gap.high),
            "confidence": self.confidence,
            "min_samples": rule.min_samples,
            "recover_at": rule.recover_gap,
            "window_end": format_timestamp(reading.window_end_ms),
        }
        return incident.transition(
            status,
            at_ms=reading.window_end_ms,
            summary=summary,
            observed=round(gap.value, 6),
            threshold=rule.max_gap,
            window=self.window,
            details=details,
        )


class StageConsistencies:
    """Every consistency rule of one journey stage; state lives in StageState."""

    def __init__(self, rules: Iterable[ChannelConsistency]) -> None:
        self.detectors = [StageConsistency(rule) for rule in rules]

    @classmethod
    def of(cls, catalog: Catalog) -> dict[Stage, StageConsistencies]:
        """The rules of every journey stage the catalog watches for consistency."""
        return {stage: cls(rules) for stage, rules in catalog.consistency_by_stage().items()}

    def add(self, state: StageState, at_ms: int, channel: str, tally: Tally) -> bool:
        """False when every window of every rule it would fall in is judged: it is late."""
        taken = False
        for detector in self.detectors:
            rule_state = state.rules.setdefault(detector.rule.id, ConsistencyState())
            taken = detector.add(rule_state, at_ms, channel, tally) or taken
        return taken

    def advance(self, state: StageState, closed_ms: int) -> list[tuple[StageConsistency, Judged]]:
        """Each rule of the stage, with what judging its closed windows gave."""
        judged = []
        for detector in self.detectors:
            rule_state = state.rules.setdefault(detector.rule.id, ConsistencyState())
            judged.append((detector, detector.advance(rule_state, closed_ms)))
        return judged
