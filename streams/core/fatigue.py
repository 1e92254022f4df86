"""Messaging fatigue: survey answers of heavily messaged customers against everyone else's.

Each answer goes, at its event time, to the messaged cohort when its customer had at
least the rule's `messages` counted messages in the messaging policy's window at that
instant, else to the others; the messaged cohort is judged against the others window by
window (`streams.core.gaps`): a positive gap is the messaged customers answering worse.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from models.decode import format_timestamp
from models.records import Alert, AlertKind, AlertStatus
from streams.catalog import MessagingFatigue
from streams.core.alerts import Incident, figure, fingerprint
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
            f"against {gap.rest.value:.4g} from the others, a gap of {gap.value:.4g} "
            f"({self.confidence:.0%} interval {gap.low:.4g} to {gap.high:.4g}; "
            f"{gap.group.samples} and {gap.rest.samples} answers) over the last {self.window}"
        )
        if status is AlertStatus.FIRING:
            rule_text = f"more than {rule.max_gap:g}"
            if rule.confidence is not None:
                rule_text += f" with {rule.confidence:.0%} confidence"
            summary = f"Messaging fatigue in {label}: {figures}, {rule_text}."
        else:
            back = f"at or under {rule.recover_gap:g}"
            summary = f"No more messaging fatigue in {label}: {figures}, {back}."
        subject = rule.id
        incident = Incident(
            kind=AlertKind.MESSAGING_FATIGUE,
            subject=subject,
            fingerprint=fingerprint(AlertKind.MESSAGING_FATIGUE, subject),
            severity=rule.severity,
            starts_at_ms=starts_at_ms,
        )
        details: dict[str, Any] = {
            "metric": rule.metric.value,
            "messages": rule.messages,
            "messaged_value": figure(gap.group.value),
            "messaged_samples": gap.group.samples,
            "others_value": figure(gap.rest.value),
            "others_samples": gap.rest.samples,
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
