"""Journey breaks: attempts decided per customer, the break rate by window, one incident."""

from __future__ import annotations

from itertools import permutations

import pytest

from models.decode import decode_touchpoint_event, encode_alert
from models.records import AlertKind, AlertStatus, Severity
from streams.catalog import Catalog, JourneyBreak, parse_catalog
from streams.core.alerts import fingerprint
from streams.core.journeys import (
    BreakState,
    BreakWindows,
    CustomerJourneys,
    CustomerVisits,
    JourneyTracker,
    Outcome,
    VisitBatch,
    outcome_id,
)
from streams.core.sentiment import build_scorer
from streams.replay import OfflineMonitor

MINUTE = 60_000
T0 = 1_795_305_600_000  # 2026-11-22T00:00:00Z, a whole number of 5m steps
CART, PAY = "app.cart", "checkout.payment"
ID = "app.cart -> checkout.payment"

CART_TO_PAY = JourneyBreak(
    source=CART,
    target=PAY,
    within_ms=10 * MINUTE,
    max_rate=0.4,
    window_ms=30 * MINUTE,
    step_ms=5 * MINUTE,
    min_samples=4,
)


def tracker() -> JourneyTracker:
    return JourneyTracker(Catalog(breaks=(CART_TO_PAY,)))


def decide(
    visits: list[tuple[str, float]], closed_min: float, customer: str = "c-1"
) -> list[Outcome]:
    """Visits as (touchpoint, minutes after T0); outcomes once `closed` is that far."""
    journeys = tracker()
    state = CustomerJourneys(0)
    for number, (touchpoint, minute) in enumerate(visits):
        assert journeys.record(state, touchpoint, (T0 + int(minute * MINUTE), number))
    return journeys.advance(state, customer, T0 + int(closed_min * MINUTE))


def outcome(decided_min: float, *, broken: bool, started_min: float) -> Outcome:
    return Outcome(
        ID,
        T0 + int(decided_min * MINUTE),
        broken,
        outcome_id("c-1", T0 + int(started_min * MINUTE)),
    )


# --- one customer's attempts ----------------------------------------------------------------


def test_reaching_b_within_the_time_converts_at_b() -> None:
    assert decide([(CART, 0), (PAY, 3)], closed_min=20) == [outcome(3, broken=False, started_min=0)]


def test_not_reaching_b_breaks_at_the_deadline_once_closed_is_past_it() -> None:
    # Deadline 10m: with closed at exactly 10m a visit of B at 10m could still come.
    assert decide([(CART, 0)], closed_min=10) == []
    assert decide([(CART, 0)], closed_min=10.001) == [outcome(10, broken=True, started_min=0)]


def test_b_exactly_at_within_converts_one_millisecond_later_does_not() -> None:
    assert decide([(CART, 0), (PAY, 10)], closed_min=30) == [
        outcome(10, broken=False, started_min=0)
    ]
    late = decide([(CART, 0), (PAY, 10 + 1 / MINUTE)], closed_min=30)
    assert late == [outcome(10, broken=True, started_min=0)]


def test_repeated_a_joins_the_open_attempt_without_moving_its_deadline() -> None:
    # The second cart at 4m joins the attempt of 0m: its deadline stays 10m, so a payment
    # at 12m is too late for it and, with no attempt open, counts for nothing.
    assert decide([(CART, 0), (CART, 4), (PAY, 12)], closed_min=30) == [
        outcome(10, broken=True, started_min=0)
    ]


def test_a_after_the_decision_opens_the_next_attempt() -> None:
    assert decide([(CART, 0), (CART, 11), (PAY, 12)], closed_min=30) == [
        outcome(10, broken=True, started_min=0),
        outcome(12, broken=False, started_min=11),
    ]
    # A at the deadline itself still belongs to the attempt it ends.
    assert decide([(CART, 0), (CART, 10)], closed_min=30) == [
        outcome(10, broken=True, started_min=0)
    ]


def test_b_before_a_counts_for_nothing() -> None:
    assert decide([(PAY, 0), (CART, 1)], closed_min=30) == [outcome(11, broken=True, started_min=1)]
    assert decide([(PAY, 0)], closed_min=30) == []


def test_a_and_b_at_the_same_instant_convert() -> None:
    assert decide([(PAY, 5), (CART, 5)], closed_min=30) == [outcome(5, broken=False, started_min=5)]


def test_arrival_order_and_how_often_it_is_advanced_do_not_matter() -> None:
    visits: list[tuple[str, float]] = [
        (CART, 0),
        (CART, 4),
        (PAY, 12),
        (CART, 13),
        (PAY, 20),
        (CART, 31),
    ]
    expected = decide(visits, closed_min=60)
    assert expected == [
        outcome(10, broken=True, started_min=0),
        outcome(20, broken=False, started_min=13),
        outcome(41, broken=True, started_min=31),
    ]
    journeys = tracker()
    for order in list(permutations(range(len(visits))))[::97]:
        state = CustomerJourneys(0)
        for index in order:
            touchpoint, minute = visits[index]
            journeys.record(state, touchpoint, (T0 + int(minute * MINUTE), index))
        stepped: list[Outcome] = []
        for closed in (5, 12, 12.5, 21, 40, 60):
            stepped += journeys.advance(state, "c-1", T0 + int(closed * MINUTE))
        assert stepped == expected
        assert state.empty


def test_an_open_attempt_waits_across_advances_and_a_visit_is_held_once() -> None:
    journeys = tracker()
    state = CustomerJourneys(3)
    assert journeys.record(state, CART, (T0, 1))
    assert not journeys.record(state, CART, (T0, 1)), "a second delivery is held once"
    assert journeys.advance(state, "c-1", T0 + 5 * MINUTE) == []
    assert state.open_since == {ID: T0}
    assert not state.visits
    assert not state.empty
    # Due at its deadline (10m): nothing to decide before closed is past it.
    assert state.due_ms == T0 + 10 * MINUTE
    assert CustomerJourneys.header(state.encode()) == (3, T0 + 10 * MINUTE)
    # Decided past already: a visit this old can only be a second delivery.
    assert not journeys.record(state, CART, (T0, 1))
    assert journeys.record(state, PAY, (T0 + 7 * MINUTE, 2))
    assert state.due_ms == T0 + 7 * MINUTE
    assert CustomerJourneys.decode(state.encode()) == state
    assert journeys.advance(state, "c-1", T0 + 8 * MINUTE) == [
        outcome(7, broken=False, started_min=0)
    ]
    assert state.empty
    assert state.due_ms is None
    assert CustomerJourneys.header(state.encode()) == (3, None)


def test_only_events_of_watched_touchpoints_with_a_customer_id_are_visits() -> None:
    journeys = tracker()
    batch = VisitBatch(journeys)

    def event(touchpoint: str, who: str, event_id: str) -> bytes:
        return (
            f'{{"event_id": "{event_id}", "occurred_at": {T0}, {who}, '
            f'"touchpoint": "{touchpoint}", "channel": "app"}}'
        ).encode()

    batch.add(decode_touchpoint_event(event(CART, '"customer_id": "c-1"', "e1")))
    batch.add(decode_touchpoint_event(event(PAY, '"customer_id": "c-1"', "e2")))
    batch.add(decode_touchpoint_event(event("app.login", '"customer_id": "c-1"', "e3")))
    contact = '"contact": {"type": "app_user", "value": "u1"}'
    batch.add(decode_touchpoint_event(event(CART, contact, "e4")))
    (visits,) = batch.drain()
    assert visits.customer == "c-1"
    assert sorted(visits.visits) == [CART, PAY]
    assert CustomerVisits.decode(visits.encode()) == visits
    assert batch.drain() == []


# --- the break rate and its incident ----------------------------------------------------


def outcomes(decided_min: float, broken: int, converted: int, first: int = 0) -> list[Outcome]:
    at = T0 + int(decided_min * MINUTE)
    return [Outcome(ID, at, True, first + n) for n in range(broken)] + [
        Outcome(ID, at, False, first + broken + n) for n in range(converted)
    ]


def feed(
    windows: BreakWindows, state: BreakState, items: list[Outcome], closed_min: float
) -> list[tuple[str, float, int, str | None]]:
    for item in items:
        assert windows.add(state, item)
    return [
        (a.status.value, a.observed, a.details["samples"], a.details["window_end"])
        for a in windows.advance(state, T0 + int(closed_min * MINUTE))
    ]


def test_a_break_fires_once_and_resolves_once() -> None:
    windows, state = BreakWindows(CART_TO_PAY), BreakState()
    # 3 broken of 4 in [0, 5m): the window ending 5m has a rate of 0.75 > 0.4.
    assert feed(windows, state, outcomes(1, broken=3, converted=1), closed_min=5) == [
        ("firing", 0.75, 4, "2026-11-22T00:05:00.000+00:00")
    ]
    # The same attempts stay in every window to 30m: still firing, nothing new.
    assert feed(windows, state, [], closed_min=30) == []
    # [5m, 35m) holds only 8 conversions: rate 0, resolved at 35m.
    resolved = feed(windows, state, outcomes(31, broken=0, converted=8, first=10), closed_min=40)
    assert resolved == [("resolved", 0.0, 8, "2026-11-22T00:35:00.000+00:00")]
    assert state.incident_start_ms is None


def test_the_alert_carries_its_figures() -> None:
    windows, state = BreakWindows(CART_TO_PAY), BreakState()
    for item in outcomes(1, broken=3, converted=1):
        windows.add(state, item)
    (alert,) = windows.advance(state, T0 + 5 * MINUTE)
    assert alert.kind is AlertKind.JOURNEY_BREAK
    assert alert.status is AlertStatus.FIRING
    assert alert.subject == ID
    assert alert.fingerprint == fingerprint(AlertKind.JOURNEY_BREAK, ID)
    assert alert.severity is Severity.WARNING
    assert alert.starts_at_ms == T0 + 5 * MINUTE
    assert (alert.observed, alert.threshold, alert.window) == (0.75, 0.4, "30m")
    assert alert.details | {"window_end": None} == {
        "break": ID,
        "from": CART,
        "to": PAY,
        "within": "10m",
        "samples": 4,
        "broken": 3,
        "converted": 1,
        "min_samples": 4,
        "recover_at": 0.4,
        "window_end": None,
    }
    assert alert.summary == (
        "Journey app.cart -> checkout.payment broken: 3 of 4 customers (75%) who reached "
        "app.cart did not reach checkout.payment within 10m over the last 30m, above the "
        "limit of 40%."
    )
    assert b'"kind":"journey_break"' in encode_alert(alert)


def test_fewer_than_min_samples_decide_nothing() -> None:
    windows, state = BreakWindows(CART_TO_PAY), BreakState()
    assert feed(windows, state, outcomes(1, broken=3, converted=0), closed_min=30) == []
    assert (state.last_rate, state.last_samples) == (1.0, 3)


def test_a_rate_at_the_limit_does_not_fire() -> None:
    windows, state = BreakWindows(CART_TO_PAY), BreakState()
    assert feed(windows, state, outcomes(1, broken=2, converted=3), closed_min=30) == []


def test_hovering_between_recover_at_and_max_rate_keeps_one_incident() -> None:
    journey = JourneyBreak(
        source=CART,
        target=PAY,
        within_ms=10 * MINUTE,
        max_rate=0.4,
        recover_at=0.2,
        window_ms=5 * MINUTE,
        step_ms=5 * MINUTE,
        min_samples=4,
    )
    windows, state = BreakWindows(journey), BreakState()
    rates = [(2, 2), (1, 3), (2, 3), (1, 4), (2, 2), (1, 9)]  # .5 .25 .4 .2 .5 .1
    items = [
        item
        for step, (broken, converted) in enumerate(rates)
        for item in outcomes(5 * step, broken, converted, first=100 * step)
    ]
    assert feed(windows, state, items, closed_min=30) == [
        ("firing", 0.5, 4, "2026-11-22T00:05:00.000+00:00"),
        ("resolved", 0.2, 5, "2026-11-22T00:20:00.000+00:00"),
        ("firing", 0.5, 4, "2026-11-22T00:25:00.000+00:00"),
        ("resolved", 0.1, 10, "2026-11-22T00:30:00.000+00:00"),
    ]


def test_an_outcome_delivered_twice_counts_once_and_a_judged_one_is_refused() -> None:
    windows, state = BreakWindows(CART_TO_PAY), BreakState()
    once = outcomes(1, broken=3, converted=1)
    for item in once + once:
        windows.add(state, item)
    (alert,) = windows.advance(state, T0 + 5 * MINUTE)
    assert alert.details["samples"] == 4
    assert BreakState.decode(state.encode()) == state
    windows.advance(state, T0 + 40 * MINUTE)
    # Every window holding the bucket of 1m is judged: its bucket is gone, and so is it.
    assert not state.buckets
    assert not windows.add(state, once[0])


def test_advancing_step_by_step_equals_advancing_once() -> None:
    items = (
        outcomes(1, broken=3, converted=1)
        + outcomes(12, broken=0, converted=5, first=10)
        + outcomes(47, broken=4, converted=0, first=20)
        + outcomes(80, broken=0, converted=9, first=30)
    )
    windows = BreakWindows(CART_TO_PAY)
    once = BreakState()
    for item in items:
        windows.add(once, item)
    expected = windows.advance(once, T0 + 120 * MINUTE)
    assert [(a.status.value, a.starts_at_ms - T0, a.ends_at_ms) for a in expected] == [
        ("firing", 5 * MINUTE, None),
        ("resolved", 5 * MINUTE, T0 + 15 * MINUTE),  # [-15m, 15m): 3 of 9 broken
        ("firing", 50 * MINUTE, None),
        ("resolved", 50 * MINUTE, T0 + 85 * MINUTE),  # [55m, 85m): 0 of 9
    ]
    stepped_state = BreakState()
    stepped = []
    for closed in range(0, 121, 7):
        for item in items:
            # As the customer stage sends them: each once it is decided, some again.
            if item.decided_at_ms < T0 + closed * MINUTE:
                windows.add(stepped_state, item)
        stepped += windows.advance(stepped_state, T0 + closed * MINUTE)
    assert stepped == expected


# --- the offline reference --------------------------------------------------------------


def test_offline_monitor_raises_journey_breaks_from_events() -> None:
    catalog = parse_catalog(
        """
        scores: {window: 30m, step: 5m, grace: 1m}
        breaks:
          - {from: app.cart, to: checkout.payment, within: 10m, max_rate: 0.4, min_samples: 4}
        """
    )
    monitor = OfflineMonitor(catalog, build_scorer("none"))
    number = 0

    def visit(touchpoint: str, customer: str, minute: int) -> None:
        nonlocal number
        number += 1
        raw = (
            f'{{"event_id": "e{number}", "occurred_at": {T0 + minute * MINUTE}, '
            f'"customer_id": "{customer}", "touchpoint": "{touchpoint}", "channel": "app"}}'
        )
        monitor.feed("touchpoint_events", raw.encode())

    # Four customers reach the cart at 0m; only c-4 pays (at 2m): 3 broken at 10m.
    for customer in ("c-1", "c-2", "c-3", "c-4"):
        visit(CART, customer, 0)
    visit(PAY, "c-4", 2)
    visit("app.login", "c-9", 16)  # event time moves on: closed = 16m - 1m grace
    (alert,) = [a for a in monitor.finish().alerts if a.kind is AlertKind.JOURNEY_BREAK]
    # [ -20m, 10m) holds only c-4's conversion; [-15m, 15m) holds all four, 3 broken.
    assert (alert.status, alert.observed, alert.starts_at_ms) == (
        AlertStatus.FIRING,
        0.75,
        T0 + 15 * MINUTE,
    )


@pytest.mark.parametrize("closed_min", [0, 9])
def test_nothing_is_decided_before_the_deadline(closed_min: int) -> None:
    assert decide([(CART, 0)], closed_min=closed_min) == []


def test_a_break_state_stores_each_attempt_in_8_bytes_and_reads_the_json_it_stored_before() -> None:
    state = BreakState(
        {
            T0: {2**64 - 1: True, 7: False, 12: True},
            T0 + 5 * MINUTE: {3: False},
            T0 + 10 * MINUTE: {},
        },
        evaluated_until_ms=T0 + 20 * MINUTE,
        incident_start_ms=T0,
        last_rate=0.5,
        last_samples=40,
    )
    assert BreakState.decode(state.encode()) == state
    assert BreakState.decode(BreakState().encode()) == BreakState()
    busy = BreakState({T0: {ident: ident % 3 == 0 for ident in range(50_000)}})
    assert len(busy.encode()) < 50_000 * 8 + 100, "8 bytes an attempt"
    assert BreakState.decode(busy.encode()) == busy
    # As a worker before this format wrote it: each attempt a JSON pair.
    stored = b"[[[%d,[[18446744073709551615,true],[7,false]]]],%d,null,0.25,4]" % (T0, T0)
    assert BreakState.decode(stored) == BreakState(
        {T0: {2**64 - 1: True, 7: False}}, T0, None, 0.25, 4
    )
