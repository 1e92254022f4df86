"""Channel consistency: each channel of a journey stage against the stage's other channels.

A customer who pays in the app and one who pays on the web expect one brand. In every
window, each channel seen in the stage is scored against the pooled score of all the
stage's other channels (`streams.core.gaps`): a positive gap is the channel doing worse.
"""

from __future__ import annotations

from collections.abc import Iterable

from models.records import Alert, AlertKind, AlertStatus, Stage
from streams.catalog import Catalog, ChannelConsistency
from streams.core.gaps import GapRules, GroupGaps, GroupReading
from streams.core.touchpoints import METRIC_LABELS


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
                **self._sides(reading, "channel", "rest"),
            },
        )


def stage_rules(catalog: Catalog) -> dict[Stage, GapRules]:
    """The consistency rules of every journey stage the catalog watches."""
    return {
        stage: GapRules(StageConsistency(rule) for rule in rules)
        for stage, rules in catalog.consistency_by_stage().items()
    }
