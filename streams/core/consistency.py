"""Channel consistency: each channel of a journey stage against the stage's other channels.

A customer who pays in the app and one who pays on the web expect one brand. In every
window, each channel seen in the stage is scored against the pooled score of all the
stage's other channels (`streams.core.gaps`): a positive gap is the channel doing worse.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import orjson

from models.records import Alert, AlertKind, AlertStatus, Stage
from streams.catalog import Catalog, ChannelConsistency
from streams.core.alerts import figure
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
        rule, gap, channel = self.rule, reading.gap, reading.group
        stage = rule.stage.value
        figures = (
            f"{METRIC_LABELS[rule.metric]} {gap.group.value:.4g} on {channel} against "
            f"{gap.rest.value:.4g} on the stage's other channels, {self._interval(reading)} "
            f"samples) over the last {self.window}"
        )
        state = "inconsistent" if status is AlertStatus.FIRING else "consistent again"
        return self._transition(
            reading,
            status,
            starts_at_ms,
            kind=AlertKind.CHANNEL_INCONSISTENT,
            subject=self.subject(channel),
            summary=f"Channel {channel} {state} in {stage}: {figures}, {self._line(status)}.",
            figures={
                "stage": stage,
                "metric": rule.metric.value,
                "channel": channel,
                "channel_value": figure(gap.group.value),
                "channel_samples": gap.group.samples,
                "rest_value": figure(gap.rest.value),
                "rest_samples": gap.rest.samples,
            },
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
