"""Messaging fatigue: survey answers of heavily messaged customers against everyone else's.

Each answer goes, at its event time, to the messaged cohort when its customer had at
least the rule's `messages` counted messages in the messaging policy's window at that
instant, else to the others; the messaged cohort is judged against the others window by
window (`streams.core.gaps`): a positive gap is the messaged customers answering worse.
"""

from __future__ import annotations

from collections.abc import Iterable

from models.records import Alert, AlertKind, AlertStatus
from streams.catalog import Catalog, MessagingFatigue
from streams.core.gaps import GapRules, GroupGaps, GroupReading
from streams.core.messaging import CustomerMessages, FrequencyPolicy
from streams.core.scores import Tally
from streams.core.touchpoints import METRIC_LABELS

MESSAGED = "messaged"
OTHERS = "others"


def cohort_of(counted_messages: int, rule: MessagingFatigue) -> str:
    """The cohort of an answer whose customer had `counted_messages` in the window then."""
    return MESSAGED if counted_messages >= rule.messages else OTHERS


class Fatigue(GroupGaps[MessagingFatigue]):
    """One fatigue rule: the messaged cohort against the others.

    Answers travel tallied by their customer's message count (`count_class`), so one
    tally serves every rule, whatever its line: each rule reads its cohorts off it.
    """

    def group_of(self, tallied: str) -> str:
        return cohort_of(int(tallied), self.rule)

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
                **self._sides(reading, "messaged", "others"),
            },
        )


class Cohorts:
    """Puts a customer's answers in their cohorts once all its messages up to them are in."""

    def __init__(self, catalog: Catalog) -> None:
        rules = catalog.fatigue
        self.policy = FrequencyPolicy(catalog.messaging)
        self.rules = GapRules(Fatigue(rule) for rule in rules)
        # Counts past the highest line put an answer in every rule's messaged cohort alike.
        self.top_class = max((rule.messages for rule in rules), default=0)

    def count_class(self, counted_messages: int) -> str:
        return str(min(counted_messages, self.top_class))

    def classify(self, state: CustomerMessages, closed_ms: int) -> list[tuple[int, str, Tally]]:
        """The answers before `closed_ms` still waiting: their time, count class and tally.

        Every message up to `closed_ms` is in (later ones are refused as late), and none
        an answer waiting needs has expired (`FrequencyPolicy.expire` keeps them).
        """
        classified = []
        for answer in state.answers:
            if answer.at_ms >= closed_ms:
                break
            if answer.tally is None:
                continue
            counted = self.policy.counted_at(state, answer.at_ms)
            classified.append((answer.at_ms, self.count_class(counted), answer.tally))
            answer.tally = None
        return classified
