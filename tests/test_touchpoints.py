"""Key-moment windows in event time: when each window is judged, and fire-once/resolve-once."""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable
from itertools import pairwise
from typing import Any

import pytest

from models.records import Alert, AlertKind, AlertStatus, Severity
from streams import touchpoints as touchpoints_module
from streams.catalog import Catalog, parse_catalog
from streams.scores import Tally
from streams.touchpoints import TouchpointState, TouchpointWindows

T0 = 1_795_305_600_000  # 2026-11-22T00:00:00Z, a multiple of every window below
SECOND = 1_000
MINUTE = 60 * SECOND
DAY = 24 * 60 * MINUTE
TP = "checkout.payment"

# Buckets of 5m (gcd of 10m and 5m); retention = longest window 10m + grace 1m = 11m.
CATALOG_YAML = """
scores: {window: 10m, step: 5m, grace: 1m}
touchpoints:
  checkout.payment: {stage: purchase}
key_moments:
  - touchpoint: checkout.payment
    metric: nps
    below: 0
    window: 10m
    step: 5m
    min_samples: 4
    severity: critical
  - touchpoint: checkout.payment
    metric: failure_rate
    above: 0.2
    window: 10m
    step: 5m
    min_samples: 4
"""
RETENTION = 11 * MINUTE
NPS_FP_KEY = f"{TP}/nps"


@pytest.fixture
def catalog() -> Catalog:
    return parse_catalog(CATALOG_YAML)


def bad() -> Tally:
    """Four detractors: NPS -100 on 4 samples."""
    return Tally(detractors=4)


def good() -> Tally:
    """Four promoters: NPS +100 on 4 samples."""
    return Tally(promoters=4)


def bucket(k: int) -> int:
    return T0 + k * 5 * MINUTE


def feed(
    windows: TouchpointWindows, state: TouchpointState, k: int, tally: Tally, offset: int
) -> list[Alert]:
    """Add a partial for bucket k whose newest event is `offset` into the bucket, then advance."""
    assert windows.add(state, bucket(k), tally, bucket(k) + offset)
    return windows.advance(state)


def run(
    catalog: Catalog, pattern: list[Callable[[], Tally]]
) -> tuple[list[tuple[int, Alert]], TouchpointState]:
    """Feed bucket k with pattern[k] (newest event 4m in); alerts tagged with the feed index."""
    windows = TouchpointWindows(catalog, TP)
    state = TouchpointState()
    out: list[tuple[int, Alert]] = []
    for k, make in enumerate(pattern):
        out += [(k, alert) for alert in feed(windows, state, k, make(), 4 * MINUTE)]
    return out, state


def test_window_is_judged_only_once_the_watermark_reaches_its_end_plus_grace(
    catalog: Catalog,
) -> None:
    windows = TouchpointWindows(catalog, TP)
    state = TouchpointState()
    # Window [T0-5m, T0+5m) holds bucket 0; it closes at E = T0+5m, judged at E + 1m.
    assert windows.add(state, bucket(0), bad(), bucket(0) + 4 * MINUTE)
    assert windows.advance(state) == []
    assert windows.add(state, bucket(1), Tally(), bucket(1) + MINUTE - 1)
    assert windows.advance(state) == []  # watermark E + grace - 1 ms
    assert windows.add(state, bucket(1), Tally(), bucket(1) + MINUTE)
    alerts = windows.advance(state)  # watermark E + grace
    assert len(alerts) == 1
    alert = alerts[0]
    assert alert.status is AlertStatus.FIRING
    assert alert.kind is AlertKind.KEY_MOMENT_DEGRADED
    assert alert.subject == TP
    assert alert.severity is Severity.CRITICAL
    assert alert.starts_at_ms == bucket(1)
    assert alert.ends_at_ms is None
    assert alert.observed == -100.0
    assert alert.threshold == 0.0
    assert alert.window == "10m"
    assert alert.details["samples"] == 4
    assert alert.details["key_moment"] == NPS_FP_KEY
    assert alert.details["stage"] == "purchase"
    assert TP in alert.summary
    assert "NPS" in alert.summary
    # The same watermark again judges nothing new.
    assert windows.advance(state) == []


def test_no_verdict_with_fewer_than_min_samples(catalog: Catalog) -> None:
    windows = TouchpointWindows(catalog, TP)
    state = TouchpointState()
    # Three detractors (NPS -100) are one short of min_samples 4: no alert, ever.
    alerts = feed(windows, state, 0, Tally(detractors=3), 4 * MINUTE)
    alerts += feed(windows, state, 1, Tally(), 4 * MINUTE)
    alerts += feed(windows, state, 2, Tally(), 4 * MINUTE)
    alerts += feed(windows, state, 3, Tally(), 4 * MINUTE)
    assert alerts == []
    assert state.moments[NPS_FP_KEY].last_samples == 0  # E=T0+15m: [T0+5m, T0+15m) is empty
    # One more detractor in the next bucket: window [T0+15m, T0+25m) holds 3+1 = 4.
    alerts = feed(windows, state, 4, Tally(detractors=3), 4 * MINUTE)
    alerts += feed(windows, state, 5, Tally(detractors=1), 4 * MINUTE)
    assert alerts == []
    alerts = feed(windows, state, 6, Tally(), 4 * MINUTE)
    assert [(a.status, a.starts_at_ms, a.details["samples"]) for a in alerts] == [
        (AlertStatus.FIRING, bucket(6), 4)
    ]


def test_fires_once_while_degraded_and_resolves_on_first_healthy_window(
    catalog: Catalog,
) -> None:
    # Buckets 0-3 bad, 4-7 good. Window ending at bucket(k+1) holds buckets k-1 and k:
    # E=b1: -100 fire; E=b2..b4: -100; E=b5 (buckets 3,4): 4 det + 4 prom = NPS 0, which is
    # not below 0, so healthy: resolve. Window E is judged once bucket E's feed (4m in) lands.
    alerts, _ = run(catalog, [bad, bad, bad, bad, good, good, good, good])
    assert [(k, a.status, a.starts_at_ms, a.ends_at_ms) for k, a in alerts] == [
        (1, AlertStatus.FIRING, bucket(1), None),
        (5, AlertStatus.RESOLVED, bucket(1), bucket(5)),
    ]
    resolved = alerts[1][1]
    assert resolved.observed == 0.0
    assert resolved.threshold == 0.0
    assert "recovered" in resolved.summary
    assert alerts[0][1].fingerprint == resolved.fingerprint
    assert alerts[0][1].alert_id != resolved.alert_id


def test_hovering_value_gives_fire_resolve_pairs_never_two_firings(catalog: Catalog) -> None:
    # Buckets D D H H D D H H D: windows (pairs) E=b1 D fire; b2 DD; b3 DH=0 resolve; b4 HH;
    # b5 HD=0; b6 DD fire; b7 DH resolve; b8 HH; b9 HD (judged after the 10th feed, none here).
    pattern = [bad, bad, good, good, bad, bad, good, good, bad, good]
    alerts, _ = run(catalog, pattern)
    assert [(a.status, a.starts_at_ms, a.ends_at_ms) for _, a in alerts] == [
        (AlertStatus.FIRING, bucket(1), None),
        (AlertStatus.RESOLVED, bucket(1), bucket(3)),
        (AlertStatus.FIRING, bucket(6), None),
        (AlertStatus.RESOLVED, bucket(6), bucket(7)),
    ]
    assert len({a.fingerprint for _, a in alerts}) == 1
    assert len({a.alert_id for _, a in alerts}) == 4
    statuses = [a.status for _, a in alerts]
    assert all(x != y for x, y in pairwise(statuses))


def test_two_key_moments_on_one_touchpoint_have_distinct_fingerprints(
    catalog: Catalog,
) -> None:
    windows = TouchpointWindows(catalog, TP)
    state = TouchpointState()
    both = Tally(detractors=4, events=10, outcomes=10, failures=3)  # failure rate 0.3 > 0.2
    alerts = feed(windows, state, 0, both, 4 * MINUTE)
    alerts += feed(windows, state, 1, Tally(), 4 * MINUTE)
    assert len(alerts) == 2
    by_moment = {a.details["key_moment"]: a for a in alerts}
    assert set(by_moment) == {NPS_FP_KEY, f"{TP}/failure_rate"}
    failure = by_moment[f"{TP}/failure_rate"]
    assert failure.observed == pytest.approx(0.3)
    assert failure.threshold == 0.2
    assert failure.severity is Severity.WARNING
    assert failure.subject == TP
    assert by_moment[NPS_FP_KEY].fingerprint != failure.fingerprint
    assert by_moment[NPS_FP_KEY].alert_id != failure.alert_id


def test_fingerprint_is_stable_across_incidents_and_alert_ids_are_unique(
    catalog: Catalog,
) -> None:
    # Three incidents of the same key moment: E=b1 fire, b3 resolve; b6 fire, b7 resolve;
    # b10 fire, b11 resolve (a window of one bad and one good bucket is NPS 0: healthy).
    pattern = [bad, bad, good, good, bad, bad, good, good, bad, bad, good, good]
    alerts, _ = run(catalog, pattern)
    nps = [a for _, a in alerts]
    assert [(a.status, a.starts_at_ms, a.ends_at_ms) for a in nps] == [
        (AlertStatus.FIRING, bucket(1), None),
        (AlertStatus.RESOLVED, bucket(1), bucket(3)),
        (AlertStatus.FIRING, bucket(6), None),
        (AlertStatus.RESOLVED, bucket(6), bucket(7)),
        (AlertStatus.FIRING, bucket(10), None),
        (AlertStatus.RESOLVED, bucket(10), bucket(11)),
    ]
    assert len({a.fingerprint for a in nps}) == 1
    assert len({a.alert_id for a in nps}) == 6
    # A fresh run of the same events derives the same ids (replays are idempotent).
    again, _ = run(catalog, pattern)
    assert [a.alert_id for _, a in again] == [a.alert_id for a in nps]


def counting_bisect(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]

    def wrapped(a: Any, x: Any) -> int:
        calls[0] += 1
        return bisect_left(a, x)

    monkeypatch.setattr(touchpoints_module, "bisect_left", wrapped)
    return calls


def test_idle_week_replay_judges_the_right_windows_without_looping(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    windows = TouchpointWindows(catalog, TP)
    state = TouchpointState()
    alerts = feed(windows, state, 0, bad(), 4 * MINUTE)
    alerts += feed(windows, state, 1, bad(), 4 * MINUTE)
    # E=b1 judged (fire); E=b2 (buckets 0,1) and E=b3 (bucket 1) still pending.
    assert [(a.status, a.starts_at_ms) for a in alerts] == [(AlertStatus.FIRING, bucket(1))]
    calls = counting_bisect(monkeypatch)
    week = 7 * DAY // (5 * MINUTE)  # 2016 steps of 5m
    started = time.perf_counter()
    # A week later: good data. The pending windows E=b2, b3 are judged (still -100: nothing);
    # the 2014 empty windows between are skipped; E=b(week+1) is not closed yet.
    alerts = feed(windows, state, week, good(), 4 * MINUTE)
    assert alerts == []
    # The next bucket closes E=b(week+1), which holds only the good bucket: resolve.
    alerts = feed(windows, state, week + 1, good(), 4 * MINUTE)
    elapsed = time.perf_counter() - started
    assert [(a.status, a.starts_at_ms, a.ends_at_ms) for a in alerts] == [
        (AlertStatus.RESOLVED, bucket(1), bucket(week + 1))
    ]
    assert calls[0] < 100, f"{calls[0]} bisections: advance loops per empty step"
    assert elapsed < 1.0
    # The first week's buckets have gone: only the newest retention span is kept.
    assert sorted(state.buckets) == [bucket(week), bucket(week + 1)]


def test_idle_week_with_one_second_steps_finishes_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    catalog = parse_catalog(
        """
scores: {window: 1m, step: 1s, grace: 1s}
key_moments:
  - {touchpoint: app.login, metric: failure_rate, above: 0.5, window: 1m, step: 1s,
     min_samples: 2}
"""
    )
    windows = TouchpointWindows(catalog, "app.login")
    state = TouchpointState()
    failing = Tally(events=2, outcomes=2, failures=2)
    assert windows.add(state, T0, failing, T0)
    alerts = windows.advance(state)
    assert windows.add(state, T0 + 2 * SECOND, Tally(), T0 + 2 * SECOND)
    alerts += windows.advance(state)
    # E = T0+1s closes at watermark T0+2s.
    assert [(a.status, a.starts_at_ms) for a in alerts] == [(AlertStatus.FIRING, T0 + SECOND)]
    calls = counting_bisect(monkeypatch)
    later = T0 + 7 * DAY
    started = time.perf_counter()
    assert windows.add(state, later, Tally(events=2, outcomes=2), later)
    assert windows.add(state, later + 2 * SECOND, Tally(), later + 2 * SECOND)
    alerts = windows.advance(state)
    elapsed = time.perf_counter() - started
    # 604,800 one-second steps in the gap; a per-step loop would show here.
    assert calls[0] < 1_000, f"{calls[0]} bisections: advance loops per empty step"
    assert elapsed < 1.0
    assert [(a.status, a.starts_at_ms, a.ends_at_ms) for a in alerts] == [
        (AlertStatus.RESOLVED, T0 + SECOND, later + SECOND)
    ]


def test_buckets_older_than_retention_are_dropped(catalog: Catalog) -> None:
    _, state = run(catalog, [good] * 6)
    # Watermark b5 + 4m = T0+29m; horizon T0+18m: a bucket whose end is <= T0+18m goes.
    assert state.watermark_ms == bucket(5) + 4 * MINUTE
    assert sorted(state.buckets) == [bucket(3), bucket(4), bucket(5)]


def test_partial_older_than_watermark_minus_retention_is_refused(catalog: Catalog) -> None:
    windows = TouchpointWindows(catalog, TP)
    state = TouchpointState()
    assert windows.add(state, bucket(6), good(), bucket(6) + MINUTE)  # watermark T0+31m
    assert windows.advance(state) == []
    horizon = bucket(6) + MINUTE - RETENTION
    assert horizon == bucket(4)
    before = state.encode()
    assert windows.add(state, bucket(3), bad(), bucket(3) + MINUTE) is False
    assert state.encode() == before  # nothing merged, watermark unchanged
    assert windows.add(state, bucket(4), bad(), bucket(4) + MINUTE) is True
    assert state.buckets[bucket(4)] == bad()
    assert state.watermark_ms == bucket(6) + MINUTE


def test_late_partial_within_retention_is_merged_into_its_bucket(catalog: Catalog) -> None:
    windows = TouchpointWindows(catalog, TP)
    state = TouchpointState()
    assert windows.add(state, bucket(0), Tally(detractors=2), bucket(0) + MINUTE)
    assert windows.add(state, bucket(1), Tally(), bucket(1) + 30 * SECOND)
    assert windows.add(state, bucket(0), Tally(detractors=2), bucket(0) + 2 * MINUTE)
    assert state.watermark_ms == bucket(1) + 30 * SECOND
    assert state.buckets[bucket(0)] == Tally(detractors=4)
    assert windows.add(state, bucket(1), Tally(), bucket(1) + MINUTE)
    alerts = windows.advance(state)
    assert [(a.status, a.details["samples"]) for a in alerts] == [(AlertStatus.FIRING, 4)]


def test_state_round_trips_mid_incident_and_continues_identically(catalog: Catalog) -> None:
    pattern = [bad, bad, bad, good, good, bad, bad, good, good, good]
    uninterrupted, _ = run(catalog, pattern)
    assert [a.status for _, a in uninterrupted] == [
        AlertStatus.FIRING,
        AlertStatus.RESOLVED,
        AlertStatus.FIRING,
        AlertStatus.RESOLVED,
    ]
    windows = TouchpointWindows(catalog, TP)
    state = TouchpointState()
    resumed: list[tuple[int, Alert]] = []
    for k in range(3):
        resumed += [(k, a) for a in feed(windows, state, k, pattern[k](), 4 * MINUTE)]
    assert state.moments[NPS_FP_KEY].incident_start_ms == bucket(1)  # mid-incident
    raw = state.encode()
    restored = TouchpointState.decode(raw)
    assert restored == state
    assert restored.encode() == raw
    windows = TouchpointWindows(parse_catalog(CATALOG_YAML), TP)  # as after a restart
    for k in range(3, len(pattern)):
        resumed += [(k, a) for a in feed(windows, restored, k, pattern[k](), 4 * MINUTE)]
    assert resumed == uninterrupted


def test_latest_window_for_dashboards(catalog: Catalog) -> None:
    _, state = run(catalog, [bad, good, good])
    windows = TouchpointWindows(catalog, TP)
    latest = windows.latest_window(state)
    assert latest is not None
    end, tally = latest
    # Watermark T0+14m, grace 1m: the last closed 5m step is T0+10m; window [T0, T0+10m).
    assert end == bucket(2)
    assert tally == Tally(detractors=4, promoters=4)
    assert windows.latest_window(TouchpointState()) is None
