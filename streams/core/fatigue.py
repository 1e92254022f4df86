"""Messaging fatigue: survey answers of heavily messaged customers against everyone else's.

Each answer goes, at its event time, to the messaged cohort when its customer had at
least the rule's `messages` counted messages in the messaging policy's window at that
instant, else to the others; the messaged cohort is judged against the others window by
window (`streams.core.gaps`): a positive gap is the messaged customers answering worse.
"""

from __future__ import annotations

from collections.abc import Iterable

from models.records import Alert, AlertKind, AlertStatus
from streams.catalog import MessagingFatigue
from streams.core.alerts import figure
from streams.core.gaps import GroupGaps, GroupReading
from streams.core.touchpoints import METRIC_LABELS

MESSAGED = "messaged"
OTHERS = "others"


def cohort_of(counted_messages: int, rule: MessagingFatigue) -> str:
    """The cohort of an answer whose customer had `counted_messages` in the window then."""
    return MESSAGED if counted_messages >= rule.messages else OTHERS


class Fatigue(GroupGaps[MessagingFatigue]):
    """One fatigue rule: the messaged cohort against the others."""

    def judged(self, groups: list[str]) -> Iterable[str]:
        return [MESSAGED] if MESSAGED in groups else []

    def _alert(self, reading: GroupReading, status: AlertStatus, starts_at_ms: int) -> Alert:
        rule, gap = self.rule, reading.gap
        label = METRIC_LABELS[rule.metric]
        figures = (
            f"{label} {gap.group.value:.4g} from customers with {rule.messages} or more messages "
            f"against {gap.rest.value:.4g} from the others, {self._interval(reading)} answers) "
            f"over the last {self.window}"
        )
        state = "Messaging fatigue" if status is AlertStatus.FIRING else "No more messaging fatigue"
        return self._transition(
            reading,
            status,
            starts_at_ms,
            kind=AlertKind.MESSAGING_FATIGUE,
            subject=rule.id,
            summary=f"{state} in {label}: {figures}, {self._line(status)}.",
            figures={
                "metric": rule.metric.value,
                "messages": rule.messages,
                "messaged_value": figure(gap.group.value),
                "messaged_samples": gap.group.samples,
                "others_value": figure(gap.rest.value),
                "others_samples": gap.rest.samples,
            },
        )
