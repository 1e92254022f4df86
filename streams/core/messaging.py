"""Per-customer, cross-channel message frequency in a rolling event-time window, and its policy."""

from __future__ import annotations

import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from models.decode import format_timestamp
from models.records import Alert, AlertKind, AlertStatus, Category
from streams.catalog import MessagingPolicy, format_duration
from streams.core.alerts import Incident, fingerprint
from streams.core.scores import Tally


@dataclass(frozen=True, slots=True)
class Message:
    """One outbound message as the frequency state keeps it; `digest` tells two apart."""

    sent_at_ms: int
    channel: str
    category: Category
    digest: int


def message_digest(event_id: str) -> int:
    """A 32-bit digest of the event id: enough to know a redelivered message, and small."""
    return zlib.crc32(event_id.encode())


@dataclass(slots=True)
class Answered:
    """A survey answer of the customer, for messaging fatigue: its tally until it is put in
    its cohort, then None, kept while messages are to know a redelivery."""

    at_ms: int
    digest: int
    tally: Tally | None


@dataclass(slots=True)
class CustomerMessages:
    """Messages still inside the window, oldest first, the open incident, how far it is judged,
    and the customer's survey answers in time order (only when a fatigue rule watches)."""

    messages: list[Message] = field(default_factory=list)
    incident_start_ms: int | None = None
    judged_to_ms: int | None = None
    answers: list[Answered] = field(default_factory=list)

    @property
    def oldest_waiting_answer_ms(self) -> int | None:
        return next((a.at_ms for a in self.answers if a.tally is not None), None)

    def answer(self, answered: Answered) -> bool:
        """Keep an answer in time order; False for one already held (a redelivery)."""
        answers = self.answers
        index = len(answers)
        while index and answers[index - 1].at_ms >= answered.at_ms:
            held = answers[index - 1]
            if (held.at_ms, held.digest) == (answered.at_ms, answered.digest):
                return False
            index -= 1
        answers.insert(index, answered)
        return True

    def encode(self) -> bytes:
        wire: list[Any] = [
            self.incident_start_ms,
            [[m.sent_at_ms, m.channel, m.category.value, m.digest] for m in self.messages],
            self.judged_to_ms,
        ]
        wire += [
            [a.at_ms, a.digest, None if a.tally is None else a.tally.to_wire()]
            for a in self.answers
        ]
        return orjson.dumps(wire)

    @classmethod
    def decode(cls, raw: bytes) -> CustomerMessages:
        incident, messages, judged_to, *answers = orjson.loads(raw)
        return cls(
            messages=[
                Message(at, channel, Category(category), digest)
                for at, channel, category, digest in messages
            ],
            incident_start_ms=incident,
            judged_to_ms=judged_to,
            answers=[
                Answered(at, digest, None if tally is None else Tally.from_wire(tally))
                for at, digest, tally in answers
            ],
        )


@dataclass(frozen=True, slots=True)
class Pressure:
    """What the window holds for one customer at one instant, and which limits it breaks."""

    at_ms: int
    total: int
    counted: int
    by_channel: dict[str, int]
    by_category: dict[str, int]
    counted_by_channel: dict[str, int]
    quiet_hour_messages: int
    breaches: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Budget:
    """What a sending service may still send one customer now, and what one more would break."""

    pressure: Pressure
    remaining: int
    remaining_by_channel: dict[str, int]
    quiet_hours_now: bool
    would_break: tuple[str, ...]


class FrequencyPolicy:
    """Applies one messaging policy to one customer's state; no I/O, no clock but event time."""

    def __init__(self, policy: MessagingPolicy) -> None:
        self.policy = policy
        self.window = format_duration(policy.window_ms)

    def record(self, state: CustomerMessages, message: Message) -> bool:
        """Insert in event-time order: late messages still count in their own place.

        False for a message the state already holds: a redelivery after a crash or a
        rebalance counts once.
        """
        messages = state.messages
        index = len(messages)
        while index and messages[index - 1].sent_at_ms >= message.sent_at_ms:
            if messages[index - 1] == message:
                return False
            index -= 1
        messages.insert(index, message)
        return True

    def expire(self, state: CustomerMessages, now_ms: int) -> None:
        """Forget what no verdict can use: answers still to be put in a cohort keep the
        messages of their own window."""
        waiting = state.oldest_waiting_answer_ms
        horizon = (now_ms if waiting is None else min(now_ms, waiting)) - self.policy.window_ms
        keep = 0
        while keep < len(state.messages) and state.messages[keep].sent_at_ms <= horizon:
            keep += 1
        if keep:
            del state.messages[:keep]
        state.answers = [a for a in state.answers if a.at_ms > horizon]

    def inside(self, state: CustomerMessages, now_ms: int) -> list[Message]:
        horizon = now_ms - self.policy.window_ms
        return [m for m in state.messages if horizon < m.sent_at_ms <= now_ms]

    def counted_at(self, state: CustomerMessages, at_ms: int) -> int:
        """Counted messages in the window up to `at_ms`; the state must still hold them (not
        judged past `at_ms`, whose window would have expired)."""
        return len(self.counted(self.inside(state, at_ms)))

    def counted(self, messages: list[Message]) -> list[Message]:
        """The messages the policy limits: transactional ones are exempt by default."""
        return [m for m in messages if m.category in self.policy.categories]

    def pressure(self, state: CustomerMessages, now_ms: int) -> Pressure:
        inside = self.inside(state, now_ms)
        counted = self.counted(inside)
        counted_by_channel = Counter(m.channel for m in counted)
        quiet = self.policy.quiet_hours
        quiet_count = sum(1 for m in counted if quiet is not None and quiet.contains(m.sent_at_ms))
        breaches: list[str] = []
        if len(counted) > self.policy.max_messages:
            breaches.append("max_messages")
        if counted_by_channel and max(counted_by_channel.values()) > self.policy.max_per_channel:
            breaches.append("max_per_channel")
        if quiet_count:
            breaches.append("quiet_hours")
        return Pressure(
            at_ms=now_ms,
            total=len(inside),
            counted=len(counted),
            by_channel=dict(Counter(m.channel for m in inside)),
            by_category=dict(Counter(m.category.value for m in inside)),
            counted_by_channel=dict(counted_by_channel),
            quiet_hour_messages=quiet_count,
            breaches=tuple(breaches),
        )

    def budget(
        self,
        state: CustomerMessages,
        now_ms: int,
        channel: str | None = None,
        category: Category | None = None,
    ) -> Budget:
        """The window at `now_ms`, and which limits one more message would break.

        Without a category the message is taken to be one the policy counts; an exempt
        category (transactional by default) breaks nothing.
        """
        policy = self.policy
        pressure = self.pressure(state, now_ms)
        quiet_now = policy.quiet_hours is not None and policy.quiet_hours.contains(now_ms)
        would_break: list[str] = []
        if category is None or category in policy.categories:
            if pressure.counted + 1 > policy.max_messages:
                would_break.append("max_messages")
            busy = pressure.counted_by_channel.get(channel, 0) if channel else 0
            if busy + 1 > policy.max_per_channel:
                would_break.append("max_per_channel")
            if quiet_now:
                would_break.append("quiet_hours")
        return Budget(
            pressure=pressure,
            remaining=max(0, policy.max_messages - pressure.counted),
            remaining_by_channel={
                name: max(0, policy.max_per_channel - count)
                for name, count in sorted(pressure.counted_by_channel.items())
            },
            quiet_hours_now=quiet_now,
            would_break=tuple(would_break),
        )

    def resolves_at(self, state: CustomerMessages) -> int | None:
        """When the open incident ends if no message comes: its breaches have left the window."""
        if state.incident_start_ms is None:
            return None
        ends = sorted(
            {
                m.sent_at_ms + self.policy.window_ms
                for m in state.messages
                if m.category in self.policy.categories
            }
        )
        for instant in ends:
            if instant > state.incident_start_ms and not self.pressure(state, instant).breaches:
                return instant
        return None

    def due_ms(self, state: CustomerMessages, grace_ms: int) -> int | None:
        """The event time from which judging the customer can change anything; None if
        nothing waits: its first message not judged yet, the end of its open incident, or
        the grace past its oldest answer waiting for a cohort.

        Judging at any watermark before it only moves `judged_to_ms`: verdicts are made at
        the messages' own times, and an incident resolves at its exact instant, however the
        steps of the watermark fall.
        """
        due: list[int] = []
        judged_to = state.judged_to_ms
        for message in state.messages:
            if judged_to is None or message.sent_at_ms > judged_to:
                due.append(message.sent_at_ms)
                break
        if state.incident_start_ms is not None:
            # An incident whose end no message tells is looked at on every step.
            due.append(self.resolves_at(state) or state.incident_start_ms)
        waiting = state.oldest_waiting_answer_ms
        if waiting is not None:
            due.append(waiting + grace_ms)
        return min(due, default=None)

    def advance(self, state: CustomerMessages, customer: str, watermark_ms: int) -> list[Alert]:
        """Judge, in event-time order, every message the watermark has passed, then settle.

        Messages newer than the watermark wait: one that is still on its way may belong
        before them, and the verdict must not depend on which arrived first.
        """
        if state.judged_to_ms is not None and watermark_ms <= state.judged_to_ms:
            return []
        alerts: list[Alert | None] = []
        for message in state.messages:
            at = message.sent_at_ms
            if at > watermark_ms:
                break
            if state.judged_to_ms is not None and at <= state.judged_to_ms:
                continue
            alerts.append(self.settle(state, customer, at))
            alerts.append(self.judge(state, customer, at))
        alerts.append(self.settle(state, customer, watermark_ms))
        state.judged_to_ms = watermark_ms
        # Nothing at or before judged_to - window can change a verdict any more.
        self.expire(state, watermark_ms)
        return [alert for alert in alerts if alert is not None]

    def settle(self, state: CustomerMessages, customer: str, now_ms: int) -> Alert | None:
        """Resolve the open incident if it ended by `now_ms`, stamped with the exact instant.

        The instant comes from the messages, not from when this is called, so a replay
        and a live run resolve at the same event time however their batches fall.
        """
        ends_at = self.resolves_at(state)
        if ends_at is None or ends_at > now_ms:
            return None
        assert state.incident_start_ms is not None
        alert = self._alert(
            customer, self.pressure(state, ends_at), AlertStatus.RESOLVED, state.incident_start_ms
        )
        state.incident_start_ms = None
        return alert

    def judge(self, state: CustomerMessages, customer: str, now_ms: int) -> Alert | None:
        """Fire when the window breaks the policy, resolve when it no longer does; else nothing."""
        pressure = self.pressure(state, now_ms)
        firing = state.incident_start_ms is not None
        if pressure.breaches and not firing:
            state.incident_start_ms = now_ms
            return self._alert(customer, pressure, AlertStatus.FIRING, now_ms)
        if firing and not pressure.breaches:
            assert state.incident_start_ms is not None
            alert = self._alert(customer, pressure, AlertStatus.RESOLVED, state.incident_start_ms)
            state.incident_start_ms = None
            return alert
        return None

    def _alert(
        self, customer: str, pressure: Pressure, status: AlertStatus, starts_at_ms: int
    ) -> Alert:
        policy = self.policy
        busiest = max(pressure.counted_by_channel.values(), default=0)
        if status is AlertStatus.RESOLVED:
            summary = (
                f"Customer {customer} is no longer over-messaged: {pressure.counted} counted "
                f"messages in the last {self.window}."
            )
        elif "max_messages" in pressure.breaches:
            summary = (
                f"Customer {customer} got {pressure.counted} messages across "
                f"{len(pressure.counted_by_channel)} channels in {self.window}, over the limit "
                f"of {policy.max_messages}."
            )
        elif "max_per_channel" in pressure.breaches:
            channel = max(pressure.counted_by_channel, key=pressure.counted_by_channel.__getitem__)
            summary = (
                f"Customer {customer} got {busiest} messages on {channel} in {self.window}, over "
                f"the per-channel limit of {policy.max_per_channel}."
            )
        else:
            assert policy.quiet_hours is not None
            summary = (
                f"Customer {customer} was messaged in quiet hours "
                f"({policy.quiet_hours.describe()})."
            )
        observed, threshold = float(pressure.counted), float(policy.max_messages)
        if "max_messages" not in pressure.breaches and "max_per_channel" in pressure.breaches:
            observed, threshold = float(busiest), float(policy.max_per_channel)
        elif pressure.breaches == ("quiet_hours",):
            # Quiet hours allow no counted message at all: those are the figures behind it.
            observed, threshold = float(pressure.quiet_hour_messages), 0.0
        incident = Incident(
            kind=AlertKind.OVER_MESSAGED,
            subject=customer,
            fingerprint=fingerprint(AlertKind.OVER_MESSAGED, customer),
            severity=policy.severity,
            starts_at_ms=starts_at_ms,
        )
        return incident.transition(
            status,
            at_ms=pressure.at_ms,
            summary=summary,
            observed=observed,
            threshold=threshold,
            window=self.window,
            details={
                "breaches": list(pressure.breaches),
                "messages": pressure.counted,
                "by_channel": pressure.counted_by_channel,
                "by_category": pressure.by_category,
                "quiet_hour_messages": pressure.quiet_hour_messages,
                "evaluated_at": format_timestamp(pressure.at_ms),
            },
        )
