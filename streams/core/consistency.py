"""Channel consistency: each channel of a journey stage against the stage's other channels.

A customer who pays in the app and one who pays on the web expect one brand. In every
window, each channel seen in the stage is scored against the pooled score of all the
stage's other channels (`streams.core.gaps`): a positive gap is the channel doing worse.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from models.decode import format_timestamp
from models.records import Alert, AlertKind, AlertStatus, Stage
from streams.catalog import Catalog, ChannelConsistency
from streams.core.alerts import Incident, figure, fingerprint
from streams.core.gaps import GapState, GroupGaps, GroupReading, Judged
from streams.core.scores import Tally
from streams.core.touchpoints import METRIC_LABELS


@dataclass(slots=True)
class StageState:
    """Where each consistency rule of one journey stage stands, by rule id."""

    rules: dict[str, GapState] = field(default_factory=dict)

    def encode(self) -> bytes:
        return orjson.dumps([[rule, state.to_wire()] for rule, state in self.rules.items()])

    @classmethod
    def decode(cls, raw: bytes) -> StageState:
        return cls({rule: GapState.from_wire(wire) for rule, wire in orjson.loads(raw)})


class StageConsistency(GroupGaps[ChannelConsistency]):
    """Each channel of a stage against all its other channels pooled."""

    def judged(self, groups: list[str]) -> Iterable[str]:
        return groups

    def subject(self, channel: str) -> str:
        return f"{self.rule.id}/{channel}"

    def _alert(self, reading: GroupReading, status: AlertStatus, starts_at_ms: int) -> Alert:
        rule, gap = self.rule, reading.gap
        figures = (
            f"{METRIC_LABELS[rule.metric]} {gap.group.value:.4g} on {reading.group} "
            f"against {gap.rest.value:.4g} on the stage's other channels, a gap of {gap.value:.4g} "
            f"({self.confidence:.0%} interval {gap.low:.4g} to {gap.high:.4g}; "
            f"{gap.group.samples} and {gap.rest.samples} samples) over the last {self.window}"
        )
        stage = rule.stage.value
        if status is AlertStatus.FIRING:
            rule_text = f"more than {rule.max_gap:g}"
            if rule.confidence is not None:
                rule_text += f" with {rule.confidence:.0%} confidence"
            summary = f"Channel {reading.group} inconsistent in {stage}: {figures}, {rule_text}."
        else:
            summary = (
                f"Channel {reading.group} consistent again in {stage}: {figures}, at or under "
                f"{rule.recover_gap:g}."
            )
        subject = self.subject(reading.group)
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
            "channel": reading.group,
            "channel_value": figure(gap.group.value),
            "channel_samples": gap.group.samples,
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
            rule_state = state.rules.setdefault(detector.rule.id, GapState())
            taken = detector.add(rule_state, at_ms, channel, tally) or taken
        return taken

    def advance(self, state: StageState, closed_ms: int) -> list[tuple[StageConsistency, Judged]]:
        """Each rule of the stage, with what judging its closed windows gave."""
        judged = []
        for detector in self.detectors:
            rule_state = state.rules.setdefault(detector.rule.id, GapState())
            judged.append((detector, detector.advance(rule_state, closed_ms)))
        return judged
