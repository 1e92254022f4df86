"""Over-messaging of one customer across channels: limits, quiet hours, fire once, resolve once."""

from __future__ import annotations

import itertools
import random
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.records import Alert, AlertKind, AlertStatus, Category, Severity
from streams.catalog import parse_catalog, parse_duration_ms
from streams.core.messaging import (
    Answered,
    CustomerMessages,
    FrequencyPolicy,
    Message,
    message_digest,
)
from streams.core.scores import Tally

SHANGHAI = ZoneInfo("Asia/Shanghai")
MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
CUSTOMER = "c-42"

CATALOG_YAML = """
messaging:
  window: 24h
  max_messages: 5
  max_per_channel: 3
  categories: [marketing]
  quiet_hours: {start: "22:00", end: "08:00", timezone: "Asia/Shanghai"}
"""

MARKETING = Category.MARKETING
TRANSACTIONAL = Category.TRANSACTIONAL


def at(hour: int, minute: int = 0, day: int = 22) -> int:
    """Epoch ms of a wall-clock time in Shanghai, November 2026."""
    return int(datetime(2026, 11, day, hour, minute, tzinfo=SHANGHAI).timestamp() * 1000)


@pytest.fixture
def policy() -> FrequencyPolicy:
    return FrequencyPolicy(parse_catalog(CATALOG_YAML).messaging)


_event_ids = itertools.count()


def message(sent_at: int, channel: str, category: Category = MARKETING) -> Message:
    """A message of its own event: no two are the same message."""
    return Message(sent_at, channel, category, message_digest(f"e-{next(_event_ids)}"))


def test_a_message_delivered_again_counts_once(policy: FrequencyPolicy) -> None:
    state = CustomerMessages()
    first = message(DAY, "sms")
    assert policy.record(state, first)
    assert policy.record(state, message(DAY, "sms")), "another event at the same instant counts"
    assert not policy.record(state, first), "the same event again does not"
    assert len(state.messages) == 2
    assert CustomerMessages.decode(state.encode()) == state


def send(
    policy: FrequencyPolicy,
    state: CustomerMessages,
    sent_at: int,
    channel: str,
    category: Category = MARKETING,
) -> Alert | None:
    """Record one message and judge at the newest message time, as the worker does."""
    policy.record(state, message(sent_at, channel, category))
    return policy.judge(state, CUSTOMER, state.messages[-1].sent_at_ms)


def test_the_catalog_policy_is_read_as_written(policy: FrequencyPolicy) -> None:
    p = policy.policy
    assert (p.window_ms, p.max_messages, p.max_per_channel) == (DAY, 5, 3)
    assert p.categories == frozenset({MARKETING})
    assert p.quiet_hours is not None
    assert parse_duration_ms(policy.window) == DAY


def test_five_marketing_messages_across_channels_raise_nothing(
    policy: FrequencyPolicy,
) -> None:
    state = CustomerMessages()
    plan = [(9, "sms"), (10, "email"), (11, "wechat"), (12, "app_push"), (13, "sms")]
    assert [send(policy, state, at(hour), channel) for hour, channel in plan] == [None] * 5
    assert state.incident_start_ms is None


def test_sixth_marketing_message_fires_once_with_the_figures(policy: FrequencyPolicy) -> None:
    state = CustomerMessages()
    plan = [(9, "sms"), (10, "email"), (11, "wechat"), (12, "app_push"), (13, "sms")]
    for hour, channel in plan:
        assert send(policy, state, at(hour), channel) is None
    alert = send(policy, state, at(14), "email")
    assert alert is not None
    assert alert.status is AlertStatus.FIRING
    assert alert.kind is AlertKind.OVER_MESSAGED
    assert alert.subject == CUSTOMER
    assert alert.severity is Severity.WARNING
    assert alert.observed == 6.0
    assert alert.threshold == 5.0
    assert parse_duration_ms(alert.window) == DAY
    assert alert.starts_at_ms == at(14)
    assert alert.ends_at_ms is None
    assert alert.details["breaches"] == ["max_messages"]
    assert alert.details["by_channel"] == {"sms": 2, "email": 2, "wechat": 1, "app_push": 1}
    # The summary names the customer and the numbers.
    assert CUSTOMER in alert.summary
    assert "6 messages" in alert.summary
    assert "4 channels" in alert.summary
    assert "limit of 5" in alert.summary
    assert f"in {alert.window}" in alert.summary
    # A 7th message keeps the incident open: nothing new is emitted.
    assert send(policy, state, at(15), "wechat") is None
    assert policy.judge(state, CUSTOMER, at(16)) is None


def test_four_on_one_channel_fires_for_max_per_channel(policy: FrequencyPolicy) -> None:
    state = CustomerMessages()
    for minute in (0, 1, 2):
        assert send(policy, state, at(9, minute), "sms") is None
    alert = send(policy, state, at(9, 3), "sms")
    assert alert is not None
    assert alert.status is AlertStatus.FIRING
    assert alert.observed == 4.0
    assert alert.threshold == 3.0
    assert alert.details["breaches"] == ["max_per_channel"]
    assert CUSTOMER in alert.summary
    assert "4 messages on sms" in alert.summary
    assert "per-channel limit of 3" in alert.summary


def test_transactional_and_service_messages_never_count(policy: FrequencyPolicy) -> None:
    state = CustomerMessages()
    for minute in range(10):
        assert send(policy, state, at(10, minute), "sms", TRANSACTIONAL) is None
    # Even in quiet hours, an order confirmation is not over-messaging.
    assert send(policy, state, at(23, 30), "sms", TRANSACTIONAL) is None
    assert send(policy, state, at(23, 40), "call_center", Category.SERVICE) is None
    pressure = policy.pressure(state, at(23, 45))
    assert pressure.total == 12
    assert pressure.counted == 0
    assert pressure.quiet_hour_messages == 0
    assert pressure.breaches == ()
    # Three marketing messages on top stay under every limit.
    for minute in (0, 1, 2):
        assert send(policy, state, at(9, minute, day=23), "sms") is None


def test_one_marketing_message_in_quiet_hours_fires(policy: FrequencyPolicy) -> None:
    state = CustomerMessages()
    alert = send(policy, state, at(23, 30), "app_push")
    assert alert is not None
    assert alert.status is AlertStatus.FIRING
    assert alert.details["breaches"] == ["quiet_hours"]
    assert alert.details["quiet_hour_messages"] == 1
    # The figures behind a quiet-hours decision: one message where none are allowed.
    assert alert.observed == 1.0
    assert alert.threshold == 0.0
    assert CUSTOMER in alert.summary
    assert "quiet hours" in alert.summary
    assert "22:00-08:00 Asia/Shanghai" in alert.summary


@pytest.mark.parametrize(
    ("hour", "minute", "quiet"),
    [
        (21, 59, False),
        (22, 0, True),
        (0, 0, True),
        (7, 59, True),
        (8, 0, False),
        (14, 0, False),
    ],
)
def test_quiet_hours_edges_in_shanghai_time(
    policy: FrequencyPolicy, hour: int, minute: int, quiet: bool
) -> None:
    state = CustomerMessages()
    alert = send(policy, state, at(hour, minute), "sms")
    assert (alert is not None) is quiet
    # 23:30 Shanghai is 15:30 UTC: the zone, not UTC, decides.
    assert policy.pressure(state, at(hour, minute)).quiet_hour_messages == int(quiet)


def test_resolves_once_when_judged_24h_after_the_breaching_messages(
    policy: FrequencyPolicy,
) -> None:
    state = CustomerMessages()
    alerts = [send(policy, state, at(9, minute), "sms") for minute in range(4)]
    firing = alerts[-1]
    assert firing is not None
    assert firing.status is AlertStatus.FIRING
    # One minute before the first message turns 24h old, all four still count.
    assert policy.judge(state, CUSTOMER, at(8, 59, day=23)) is None
    # At 09:01 the next day, 09:00 and 09:01 are out: 2 on sms, no breach.
    resolved = policy.judge(state, CUSTOMER, at(9, 1, day=23))
    assert resolved is not None
    assert resolved.status is AlertStatus.RESOLVED
    assert resolved.starts_at_ms == at(9, 3)
    assert resolved.ends_at_ms == at(9, 1, day=23)
    assert resolved.fingerprint == firing.fingerprint
    assert resolved.alert_id != firing.alert_id
    assert CUSTOMER in resolved.summary
    assert "no longer over-messaged" in resolved.summary
    assert "2 counted messages" in resolved.summary
    assert state.incident_start_ms is None
    # Once resolved, it stays resolved: no second resolution.
    assert policy.judge(state, CUSTOMER, at(9, 4, day=23)) is None
    assert policy.judge(state, CUSTOMER, at(12, 0, day=23)) is None


def test_a_second_incident_gets_a_new_alert_id_and_the_same_fingerprint(
    policy: FrequencyPolicy,
) -> None:
    state = CustomerMessages()
    first = [send(policy, state, at(9, minute), "sms") for minute in range(4)][-1]
    resolved = policy.judge(state, CUSTOMER, at(10, 0, day=23))
    second = [send(policy, state, at(11, minute, day=23), "email") for minute in range(4)][-1]
    assert first is not None
    assert resolved is not None
    assert second is not None
    assert [first.status, resolved.status, second.status] == [
        AlertStatus.FIRING,
        AlertStatus.RESOLVED,
        AlertStatus.FIRING,
    ]
    assert len({first.fingerprint, resolved.fingerprint, second.fingerprint}) == 1
    assert len({first.alert_id, resolved.alert_id, second.alert_id}) == 3
    assert second.starts_at_ms == at(11, 3, day=23)


def test_message_exactly_one_window_old_is_out(policy: FrequencyPolicy) -> None:
    state = CustomerMessages()
    sent = at(10)
    policy.record(state, message(sent, "sms", MARKETING))
    assert policy.pressure(state, sent).counted == 1
    assert policy.pressure(state, sent + DAY - 1).counted == 1
    assert policy.pressure(state, sent + DAY).counted == 0
    # A message after the instant judged is not in its window either.
    assert policy.pressure(state, sent - 1).counted == 0


def test_late_message_is_inserted_in_time_order_and_counts(policy: FrequencyPolicy) -> None:
    state = CustomerMessages()
    for hour, channel in [(9, "sms"), (11, "email"), (13, "wechat"), (15, "app_push")]:
        assert send(policy, state, at(hour), channel) is None
    assert send(policy, state, at(12), "sms") is None  # late, fifth
    assert [m.sent_at_ms for m in state.messages] == [at(h) for h in (9, 11, 12, 13, 15)]
    alert = send(policy, state, at(10), "email")  # late, sixth: judged at 15:00
    assert [m.sent_at_ms for m in state.messages] == [at(h) for h in (9, 10, 11, 12, 13, 15)]
    assert alert is not None
    assert alert.observed == 6.0
    assert alert.starts_at_ms == at(15)


def test_expire_drops_messages_outside_the_window(policy: FrequencyPolicy) -> None:
    state = CustomerMessages()
    for sent in (at(9), at(10), at(11)):
        policy.record(state, message(sent, "sms", MARKETING))
    policy.expire(state, at(10, day=23))  # 09:00 is 25h old, 10:00 exactly 24h: both go
    assert [m.sent_at_ms for m in state.messages] == [at(11)]
    policy.expire(state, at(11, day=23) - 1)
    assert [m.sent_at_ms for m in state.messages] == [at(11)]
    policy.expire(state, at(11, day=23))
    assert state.messages == []


def test_state_round_trips_and_continues_identically(policy: FrequencyPolicy) -> None:
    state = CustomerMessages()
    for minute in range(4):
        send(policy, state, at(9, minute), "sms")
    send(policy, state, at(10), "email", TRANSACTIONAL)
    assert state.incident_start_ms == at(9, 3)
    restored = CustomerMessages.decode(state.encode())
    assert restored == state
    assert restored.encode() == state.encode()
    later = at(9, 30, day=23)
    assert policy.judge(restored, CUSTOMER, later) == policy.judge(state, CUSTOMER, later)
    assert restored == state
    assert CustomerMessages.decode(CustomerMessages().encode()) == CustomerMessages()


def test_pressure_figures_by_channel_and_category(policy: FrequencyPolicy) -> None:
    state = CustomerMessages()
    for sent, channel, category in [
        (at(9), "sms", MARKETING),
        (at(10), "sms", MARKETING),
        (at(11), "email", MARKETING),
        (at(12), "sms", TRANSACTIONAL),
        (at(13), "app_push", Category.SERVICE),
        (at(23), "wechat", MARKETING),  # quiet hours
        (at(9, day=21), "email", MARKETING),  # 27h before 12:00 on the 22nd
    ]:
        policy.record(state, message(sent, channel, category))
    pressure = policy.pressure(state, at(23, 30))
    assert pressure.at_ms == at(23, 30)
    assert pressure.total == 6
    assert pressure.counted == 4
    assert pressure.by_channel == {"sms": 3, "email": 1, "app_push": 1, "wechat": 1}
    assert pressure.by_category == {"marketing": 4, "transactional": 1, "service": 1}
    assert pressure.counted_by_channel == {"sms": 2, "email": 1, "wechat": 1}
    assert pressure.quiet_hour_messages == 1
    assert pressure.breaches == ("quiet_hours",)


def test_several_breaches_at_once_are_all_listed(policy: FrequencyPolicy) -> None:
    state = CustomerMessages()
    alert = None
    for minute in range(6):
        alert = send(policy, state, at(23, minute), "sms")
        if minute == 0:
            assert alert is not None  # quiet hours, straight away
            assert alert.details["breaches"] == ["quiet_hours"]
        else:
            assert alert is None  # the open incident is not fired again
    pressure = policy.pressure(state, at(23, 5))
    assert pressure.breaches == ("max_messages", "max_per_channel", "quiet_hours")


def test_budget_says_what_one_more_message_would_break(policy: FrequencyPolicy) -> None:
    ten_am = int(datetime(2026, 11, 23, 10, 0, tzinfo=SHANGHAI).timestamp() * 1000)
    state = CustomerMessages()
    for minutes, channel in ((0, "sms"), (10, "sms"), (20, "email"), (30, "sms")):
        policy.record(state, message(ten_am + minutes * MINUTE, channel))
    policy.record(state, message(ten_am + 40 * MINUTE, "sms", TRANSACTIONAL))
    now = ten_am + HOUR
    # Limits 5 per day, 3 per channel; transactional messages are not counted.
    budget = policy.budget(state, now)
    assert (budget.pressure.total, budget.pressure.counted, budget.remaining) == (5, 4, 1)
    assert budget.remaining_by_channel == {"email": 2, "sms": 0}
    assert (budget.quiet_hours_now, budget.would_break) == (False, ())
    assert policy.budget(state, now, "sms").would_break == ("max_per_channel",)
    assert policy.budget(state, now, "email").would_break == ()
    assert policy.budget(state, now, "sms", TRANSACTIONAL).would_break == ()
    policy.record(state, message(ten_am + 50 * MINUTE, "app_push"))
    assert policy.budget(state, now, "wechat").would_break == ("max_messages",)
    eleven_pm = int(datetime(2026, 11, 23, 23, 0, tzinfo=SHANGHAI).timestamp() * 1000)
    late = policy.budget(state, eleven_pm, "sms")
    assert late.quiet_hours_now
    assert late.would_break == ("max_messages", "max_per_channel", "quiet_hours")
    # A day later the window is empty again, quiet hours aside.
    assert policy.budget(state, ten_am + DAY + HOUR, "sms").would_break == ()


def test_due_is_the_first_message_not_judged_the_incident_end_or_a_waiting_answer(
    policy: FrequencyPolicy,
) -> None:
    grace = 5 * MINUTE
    state = CustomerMessages()
    assert policy.due_ms(state, grace) is None, "nothing waits"
    for minute in range(3):
        policy.record(state, message(at(9, minute), "sms"))
    assert policy.due_ms(state, grace) == at(9, 0), "never judged: its first message"
    policy.advance(state, CUSTOMER, at(9, 1))
    assert policy.due_ms(state, grace) == at(9, 2), "the first message after the verdict"
    policy.advance(state, CUSTOMER, at(10, 0))
    assert policy.due_ms(state, grace) is None, "all judged, no incident"
    policy.record(state, message(at(10, 1), "sms"))
    policy.advance(state, CUSTOMER, at(10, 2))
    assert state.incident_start_ms == at(10, 1), "four on sms"
    # Once 09:00 leaves the 24 h window, three remain on sms: no breach.
    assert policy.due_ms(state, grace) == at(9, 0, day=23)
    state.answer(Answered(at(10, 30), 7, Tally(promoters=1)))
    assert policy.due_ms(state, grace) == at(10, 30) + grace, "sooner than the incident's end"


@settings(max_examples=1000, deadline=None)
@given(
    sent=st.lists(
        st.tuples(
            st.integers(0, 48),
            st.sampled_from(["sms", "email", "wechat"]),
            st.sampled_from([MARKETING, TRANSACTIONAL]),
        ),
        max_size=14,
    ),
    steps=st.lists(st.integers(0, 72), max_size=30),
    arrivals=st.randoms(use_true_random=False),
)
def test_judging_only_the_customers_due_changes_no_verdict(
    sent: list[tuple[int, str, Category]], steps: list[int], arrivals: random.Random
) -> None:
    """The frequency stage judges a customer only once the watermark reaches `due_ms`: the
    alerts, the step that makes each and the incident must be those of judging on every
    step, whatever the steps and however messages arrive between them."""
    policy = FrequencyPolicy(parse_catalog(CATALOG_YAML).messaging)
    start = at(0, 0)
    messages = [message(start + hour * HOUR, channel, kind) for hour, channel, kind in sent]
    arrivals.shuffle(messages)
    # Hours apart, so that steps often fall on a message's own time.
    watermarks = [*sorted({start + hour * HOUR for hour in steps}), start + 80 * HOUR]
    every, due = CustomerMessages(), CustomerMessages()
    every_alerts: list[tuple[int, Alert]] = []
    due_alerts: list[tuple[int, Alert]] = []
    for step, watermark in enumerate(watermarks):
        # Messages arrive no later than the watermark that passes them (they are refused
        # as late otherwise), some of them earlier.
        arriving = [m for m in messages if m.sent_at_ms <= watermark or arrivals.random() < 0.2]
        for m in arriving:
            messages.remove(m)
            policy.record(every, m)
            policy.record(due, m)
        every_alerts += [(step, a) for a in policy.advance(every, CUSTOMER, watermark)]
        next_due = policy.due_ms(due, grace_ms=0)
        if arriving or (next_due is not None and next_due <= watermark):
            due_alerts += [(step, a) for a in policy.advance(due, CUSTOMER, watermark)]
    assert due_alerts == every_alerts
    assert due.incident_start_ms == every.incident_start_ms
    assert policy.inside(due, watermarks[-1]) == policy.inside(every, watermarks[-1])
