"""Two groups' scores compared window by window: the gap, its interval and its incidents.

Channel consistency (each channel of a stage against the others) and messaging fatigue
(heavily messaged customers against the rest) are both this. The gap is taken in the
direction worse for the metric, so a positive gap is the judged group doing worse; an
incident fires when it is past `max_gap` (with `confidence`, its whole interval) and
resolves at or under `recover_at`; the group and the rest each need `min_samples`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import orjson

from models.decode import format_timestamp
from models.records import Alert, AlertKind, AlertStatus
from streams.catalog import GapRule, format_duration
from streams.core.alerts import Incident, figure, fingerprint
from streams.core.hopping import Hopping
from streams.core.scores import Tally
from streams.core.stats import Estimate, z_score

# The interval an alert shows when its rule declares no confidence of its own.
SHOWN_CONFIDENCE = 0.95

Rule = TypeVar("Rule", bound=GapRule)


@dataclass(slots=True)
class GapState:
    """Tallies by step and group, and the open incident of each group judged."""

    buckets: dict[int, dict[str, Tally]] = field(default_factory=dict)
    evaluated_until_ms: int | None = None
    incidents: dict[str, int] = field(default_factory=dict)  # group -> incident start

    def to_wire(self) -> list[Any]:
        return [
            [[start, [[group, tally.to_wire()] for group, tally in groups.items()]]
             for start, groups in self.buckets.items()],
            self.evaluated_until_ms,
            self.incidents,
        ]  # fmt: skip

    @classmethod
    def from_wire(cls, wire: list[Any]) -> GapState:
        buckets, evaluated, incidents = wire
        return cls(
            {
                start: {group: Tally.from_wire(tally) for group, tally in groups}
                for start, groups in buckets
            },
            evaluated,
            incidents,
        )


@dataclass(frozen=True, slots=True)
class Gap:
    """How much worse one group scored than the rest, with its interval."""

    group: Estimate
    rest: Estimate
    value: float  # positive: the group is worse
    low: float
    high: float


def gap_between(group: Estimate, rest: Estimate, worse_when_higher: bool, z: float) -> Gap:
    """The gap of two independent estimates, its interval from their standard errors.

    Each estimate's standard error is read off its own interval (half its width over z),
    so NPS, rates and means each keep the interval they are judged by elsewhere; a side
    whose interval is unbounded (a mean of one answer) leaves the gap's unbounded too.
    """
    value = group.value - rest.value if worse_when_higher else rest.value - group.value
    error = math.hypot(_standard_error(group, z), _standard_error(rest, z))
    return Gap(group, rest, value, value - z * error, value + z * error)


def _standard_error(estimate: Estimate, z: float) -> float:
    return estimate.spread(z) / math.sqrt(estimate.samples)


@dataclass(frozen=True, slots=True)
class GroupReading:
    """One group on one closed window: the gap behind its verdict."""

    group: str
    window_end_ms: int
    gap: Gap


@dataclass(slots=True)
class Judged:
    """What judging a rule's closed windows gave: its alerts, in order, and the readings of
    the newest window judged (None when no window closed), which the gauges show."""

    alerts: list[Alert] = field(default_factory=list)
    latest: list[GroupReading] | None = None


class GroupGaps(ABC, Generic[Rule]):
    """The pure rules of one gap rule over groups; state lives in GapState.

    Which groups are judged, and what their alerts say, is the subclass's.
    """

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.window = format_duration(rule.window_ms)
        self.confidence = rule.confidence or SHOWN_CONFIDENCE
        self.z = z_score(self.confidence)
        self.hopping = Hopping(rule.window_ms, rule.step_ms)

    def horizon(self, state: GapState) -> int | None:
        """Buckets before this start feed no window still to be judged."""
        return self.hopping.horizon(state.evaluated_until_ms)

    def group_of(self, tallied: str) -> str:
        """The group a tally travelled under belongs to, for this rule."""
        return tallied

    def add(self, state: GapState, at_ms: int, tallied: str, tally: Tally) -> bool:
        """Merge a partial tally (`tally` is not kept: the state has its own) into its step
        and group; False when every window it falls in is judged."""
        group = self.group_of(tallied)
        start = self.hopping.bucket_of(at_ms)
        horizon = self.horizon(state)
        if horizon is not None and start < horizon:
            return False
        groups = state.buckets.setdefault(start, {})
        groups.setdefault(group, Tally()).merge(tally)
        return True

    def advance(self, state: GapState, closed_ms: int) -> Judged:
        """Judge, in order, every window that ends by `closed_ms`; drop buckets no longer needed."""
        judged = Judged()
        for end, starts in self.hopping.closing(state.buckets, state.evaluated_until_ms, closed_ms):
            judged.latest = self.readings(state, end, starts)
            judged.alerts += self._judge(state, judged.latest)
        state.evaluated_until_ms = self.hopping.close(
            state.buckets, state.evaluated_until_ms, closed_ms
        )
        return judged

    def readings(self, state: GapState, end: int, starts: list[int]) -> list[GroupReading]:
        """Each group judged with enough samples, against the rest with enough, on one window."""
        rule = self.rule
        by_group: dict[str, Tally] = {}
        for start in starts:
            for group, tally in state.buckets[start].items():
                by_group.setdefault(group, Tally()).merge(tally)
        found = []
        for group in self.judged(sorted(by_group)):
            own = by_group[group].estimate(rule.metric, self.z)
            rest_tally = Tally()
            for other, tally in by_group.items():
                if other != group:
                    rest_tally.merge(tally)
            rest = rest_tally.estimate(rule.metric, self.z)
            if own is None or rest is None:
                continue
            if own.samples < rule.min_samples or rest.samples < rule.min_samples:
                continue
            gap = gap_between(own, rest, rule.worse_when_higher, self.z)
            found.append(GroupReading(group, end, gap))
        return found

    def _judge(self, state: GapState, readings: list[GroupReading]) -> list[Alert]:
        alerts = []
        for reading in readings:
            alert = self._verdict(state, reading)
            if alert is not None:
                alerts.append(alert)
        return alerts

    def _verdict(self, state: GapState, reading: GroupReading) -> Alert | None:
        rule, gap, group = self.rule, reading.gap, reading.group
        start = state.incidents.get(group)
        if start is None:
            evidence = gap.value if rule.confidence is None else gap.low
            if evidence <= rule.max_gap:
                return None
            state.incidents[group] = reading.window_end_ms
            return self._alert(reading, AlertStatus.FIRING, reading.window_end_ms)
        if gap.value > rule.recover_gap:
            return None
        del state.incidents[group]
        return self._alert(reading, AlertStatus.RESOLVED, start)

    @abstractmethod
    def judged(self, groups: list[str]) -> Iterable[str]:
        """The groups seen in a window that are judged against the rest."""

    @abstractmethod
    def _alert(self, reading: GroupReading, status: AlertStatus, starts_at_ms: int) -> Alert:
        """The transition of one group's incident, with its figures."""

    def _interval(self, reading: GroupReading) -> str:
        gap = reading.gap
        return (
            f"a gap of {gap.value:.4g} ({self.confidence:.0%} interval {gap.low:.4g} to "
            f"{gap.high:.4g}; {gap.group.samples} and {gap.rest.samples}"
        )

    def _sides(self, reading: GroupReading, group: str, rest: str) -> dict[str, Any]:
        """Each side's score and samples, under the names the alert gives them."""
        gap = reading.gap
        return {
            f"{group}_value": figure(gap.group.value),
            f"{group}_samples": gap.group.samples,
            f"{rest}_value": figure(gap.rest.value),
            f"{rest}_samples": gap.rest.samples,
        }

    def _line(self, status: AlertStatus) -> str:
        """What the gap was judged against: past max_gap to fire, recover_at to resolve."""
        rule = self.rule
        if status is AlertStatus.RESOLVED:
            return f"at or under {rule.recover_gap:g}"
        line = f"more than {rule.max_gap:g}"
        if rule.confidence is not None:
            line += f" with {rule.confidence:.0%} confidence"
        return line

    def _transition(
        self,
        reading: GroupReading,
        status: AlertStatus,
        starts_at_ms: int,
        *,
        kind: AlertKind,
        subject: str,
        summary: str,
        figures: dict[str, Any],
    ) -> Alert:
        """One group's alert: the rule's own figures first, then those of every gap."""
        rule, gap = self.rule, reading.gap
        incident = Incident(
            kind=kind,
            subject=subject,
            fingerprint=fingerprint(kind, subject),
            severity=rule.severity,
            starts_at_ms=starts_at_ms,
        )
        details = figures | {
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


@dataclass(slots=True)
class RulesState:
    """Where each gap rule of one subject (a journey stage, or fatigue) stands, by rule id."""

    rules: dict[str, GapState] = field(default_factory=dict)

    def encode(self) -> bytes:
        return orjson.dumps([[rule, state.to_wire()] for rule, state in self.rules.items()])

    @classmethod
    def decode(cls, raw: bytes) -> RulesState:
        return cls({rule: GapState.from_wire(wire) for rule, wire in orjson.loads(raw)})


class GapRules:
    """The gap rules fed by one subject's tallies; state lives in RulesState."""

    def __init__(self, detectors: Iterable[GroupGaps[Any]]) -> None:
        self.detectors = list(detectors)

    def add(self, state: RulesState, at_ms: int, tallied: str, tally: Tally) -> bool:
        """False when every window of every rule it would fall in is judged: it is late."""
        taken = False
        for detector in self.detectors:
            rule_state = state.rules.setdefault(detector.rule.id, GapState())
            taken = detector.add(rule_state, at_ms, tallied, tally) or taken
        return taken

    def advance(self, state: RulesState, closed_ms: int) -> list[tuple[GroupGaps[Any], Judged]]:
        """Each rule, with what judging its closed windows gave."""
        judged = []
        for detector in self.detectors:
            rule_state = state.rules.setdefault(detector.rule.id, GapState())
            judged.append((detector, detector.advance(rule_state, closed_ms)))
        return judged
