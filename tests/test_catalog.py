"""The catalog CX ops edit: the shipped example, durations, refusals with their line, windows."""

from __future__ import annotations

import textwrap
from datetime import time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from models.records import Category, Severity, Stage
from streams.catalog import (
    CatalogError,
    Detector,
    Drift,
    JourneyBreak,
    KeyMoment,
    MessagingPolicy,
    QuietHours,
    Relative,
    ScoreMetric,
    ScoreWindow,
    describe_catalog,
    load_catalog,
    parse_catalog,
    parse_duration_ms,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "deploy" / "catalog.example.yaml"

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR

# 2026-11-22T00:00:00Z: 20,779 days after the epoch (56 years with 14 leap days to
# 2026-01-01, then 325 days to 22 November), worked out by hand.
DAY_START_MS = 1_795_305_600_000


def catalog_text(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def line_of(text: str, needle: str) -> int:
    """The 1-based line of the only line of `text` that contains `needle`."""
    lines = [number for number, line in enumerate(text.splitlines(), 1) if needle in line]
    assert len(lines) == 1, f"{needle!r} is on lines {lines}"
    return lines[0]


def refusal(text: str) -> CatalogError:
    with pytest.raises(CatalogError) as info:
        parse_catalog(text, "ops/catalog.yaml")
    return info.value


# --- the shipped example -----------------------------------------------------------------


def test_example_catalog_loads_with_the_key_moments_it_lists() -> None:
    catalog = load_catalog(EXAMPLE)
    assert catalog.key_moments == (
        KeyMoment(
            touchpoint="checkout.payment",
            metric=ScoreMetric.NPS,
            below=10.0,
            above=None,
            window_ms=30 * MINUTE,
            step_ms=5 * MINUTE,
            min_samples=30,
            severity=Severity.CRITICAL,
        ),
        KeyMoment(
            touchpoint="checkout.payment",
            metric=ScoreMetric.FAILURE_RATE,
            below=None,
            above=0.15,
            window_ms=30 * MINUTE,
            step_ms=5 * MINUTE,
            min_samples=50,
            severity=Severity.CRITICAL,
        ),
        KeyMoment(
            touchpoint="app.login",
            metric=ScoreMetric.DURATION_MS,
            below=None,
            above=3000.0,
            window_ms=30 * MINUTE,
            step_ms=5 * MINUTE,
            min_samples=50,
            severity=Severity.WARNING,  # not given in the file: the default
        ),
        KeyMoment(
            touchpoint="call_center.support",
            metric=ScoreMetric.CSAT,
            below=3.5,
            above=None,
            window_ms=HOUR,
            step_ms=10 * MINUTE,
            min_samples=20,
            severity=Severity.WARNING,
        ),
        KeyMoment(
            touchpoint="call_center.support",
            metric=ScoreMetric.CES,
            below=None,
            above=4.5,
            window_ms=HOUR,
            step_ms=10 * MINUTE,
            min_samples=20,
            severity=Severity.WARNING,
        ),
    )


def test_example_catalog_scores_touchpoints_and_messaging() -> None:
    catalog = load_catalog(EXAMPLE)
    assert catalog.scores == ScoreWindow(window_ms=HOUR, step_ms=5 * MINUTE, grace_ms=MINUTE)
    assert len(catalog.touchpoints) == 15
    assert catalog.touchpoints["douyin.ad"] is Stage.AWARENESS
    assert catalog.touchpoints["checkout.payment"] is Stage.PURCHASE
    assert catalog.touchpoints["delivery.tracking"] is Stage.USE
    assert catalog.touchpoints["call_center.support"] is Stage.SERVICE
    assert catalog.touchpoints["wechat.official_account"] is Stage.RETENTION
    assert catalog.messaging == MessagingPolicy(
        window_ms=DAY,
        max_messages=5,
        max_per_channel=3,
        categories=frozenset({Category.MARKETING}),
        quiet_hours=QuietHours(start=time(22), end=time(8), timezone=ZoneInfo("Asia/Shanghai")),
        severity=Severity.WARNING,
    )


def test_example_key_moments_by_touchpoint() -> None:
    catalog = load_catalog(EXAMPLE)
    assert [m.id for m in catalog.key_moments_for("checkout.payment")] == [
        "checkout.payment/nps",
        "checkout.payment/failure_rate",
    ]
    assert [m.id for m in catalog.key_moments_for("call_center.support")] == [
        "call_center.support/csat",
        "call_center.support/ces",
    ]
    assert catalog.key_moments_for("douyin.ad") == ()
    assert catalog.key_moments_for("no.such.touchpoint") == ()


def test_example_bucket_and_retention() -> None:
    catalog = load_catalog(EXAMPLE)
    # gcd(1h, 5m, 30m, 5m, 30m, 5m) = 5m; longest window 1h + 1m grace.
    assert catalog.bucket_ms("checkout.payment") == 5 * MINUTE
    assert catalog.retention_ms("checkout.payment") == 61 * MINUTE
    # gcd(1h, 5m, 1h, 10m, 1h, 10m) = 5m.
    assert catalog.bucket_ms("call_center.support") == 5 * MINUTE
    assert catalog.retention_ms("call_center.support") == 61 * MINUTE


@pytest.mark.parametrize("text", ["", "# nothing configured yet\n", "\n\n", "{}\n"])
def test_an_empty_catalog_is_refused(text: str) -> None:
    # A wrong path or a truncated copy: on the defaults alone nothing would ever fire.
    refused = refusal(text)
    assert refused.reason.startswith("the catalog is empty: declare touchpoints, key_moments")
    assert str(refused).startswith("ops/catalog.yaml" + (":1: " if "{}" in text else ": "))


def test_a_catalog_of_messaging_alone_is_not_empty() -> None:
    catalog = parse_catalog("messaging: {max_messages: 3}\n")
    assert catalog.messaging.max_messages == 3
    assert catalog.key_moments == ()


def test_minimal_key_moment_takes_its_defaults() -> None:
    catalog = parse_catalog(
        catalog_text(
            """
            scores: {window: 2h, step: 10m}
            key_moments:
              - touchpoint: app.cart
                metric: abandon_rate
                above: 0.4
            """
        )
    )
    (moment,) = catalog.key_moments
    assert moment.window_ms == 2 * HOUR  # the scores window
    assert moment.step_ms == 10 * MINUTE  # the scores step
    assert moment.min_samples == 30
    assert moment.severity is Severity.WARNING
    assert moment.threshold == 0.4
    assert catalog.scores.grace_ms == MINUTE


def test_load_catalog_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text(
        "key_moments:\n  - {touchpoint: app.login, metric: csat, below: 4}\n", encoding="utf-8"
    )
    assert [m.id for m in load_catalog(path).key_moments] == ["app.login/csat"]
    assert [m.id for m in load_catalog(str(path)).key_moments] == ["app.login/csat"]


def test_load_catalog_on_a_missing_file_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "catalog.yaml"
    with pytest.raises(CatalogError) as info:
        load_catalog(missing)
    assert info.value.line is None
    assert "read" in info.value.reason
    assert str(missing) in str(info.value)


def test_errors_from_a_file_name_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text(
        "key_moments:\n  - touchpoint: app.login\n    metric: joy\n    below: 1\n",
        encoding="utf-8",
    )
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    assert info.value.line == 3
    assert str(info.value).startswith(f"{path}:3: ")


# --- durations ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", 30_000),
        ("5m", 300_000),
        ("1h", 3_600_000),
        ("24h", 86_400_000),
        ("7d", 604_800_000),
        ("90m", 5_400_000),
    ],
)
def test_durations(text: str, expected: int) -> None:
    assert parse_duration_ms(text) == expected


@pytest.mark.parametrize("text", ["0m", "0s", "5 minutes", "-1h", "1.5h", "", "5", "h", "1w"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration_ms(text)


# --- refusals, each with its line --------------------------------------------------------

BASE_MOMENT = """
    # A comment first, so that line numbers are not all small.
    scores:
      window: 1h
      step: 5m
    key_moments:
      - touchpoint: checkout.payment
        metric: nps
        below: 10
        window: 30m
        step: 5m
        min_samples: 30
        severity: critical
    """


def moment_text(**replace: str) -> str:
    text = catalog_text(BASE_MOMENT)
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    return text


def test_bad_yaml_is_refused_with_its_line() -> None:
    text = catalog_text(
        """
        messaging:
          window: 24h
          max_messages: 5
         max_per_channel: 3
        """
    )
    error = refusal(text)
    assert error.line == line_of(text, "max_per_channel")
    assert "YAML" in error.reason


def test_unclosed_flow_sequence_is_refused() -> None:
    text = catalog_text(
        """
        messaging:
          categories: [marketing, service
          window: 24h
        """
    )
    error = refusal(text)
    assert error.line is not None
    assert error.line >= line_of(text, "categories")
    assert "YAML" in error.reason


def test_unknown_metric_is_refused_on_its_line() -> None:
    text = moment_text(**{"metric: nps": "metric: happiness"})
    error = refusal(text)
    assert error.line == line_of(text, "happiness")
    assert "happiness" in error.reason
    assert "nps" in error.reason  # the allowed metrics are listed


def test_both_below_and_above_is_refused() -> None:
    text = moment_text(**{"below: 10": "below: 10\n    above: 3"})
    error = refusal(text)
    assert error.line == line_of(text, "- touchpoint: checkout.payment")
    assert "below" in error.reason
    assert "above" in error.reason


def test_neither_below_nor_above_is_refused() -> None:
    text = moment_text(**{"    below: 10\n": ""})
    error = refusal(text)
    assert error.line == line_of(text, "- touchpoint: checkout.payment")
    assert "below" in error.reason
    assert "above" in error.reason


@pytest.mark.parametrize(("window", "step"), [("1h", "7m"), ("5m", "10m"), ("90s", "1m")])
def test_window_not_a_multiple_of_step_is_refused(window: str, step: str) -> None:
    text = moment_text(
        **{"window: 30m": f"window: {window}", "step: 5m\n    min": f"step: {step}\n    min"}
    )
    error = refusal(text)
    assert error.line == line_of(text, "- touchpoint: checkout.payment")
    assert "step" in error.reason


def test_scores_window_not_a_multiple_of_step_is_refused() -> None:
    text = moment_text(**{"step: 5m\nkey": "step: 7m\nkey"})
    error = refusal(text)
    assert error.line == line_of(text, "window: 1h")  # where the scores mapping starts
    assert "scores" in error.reason
    assert "step" in error.reason


def test_unknown_top_level_key_is_refused_on_its_line() -> None:
    text = moment_text() + "mesaging:\n  window: 24h\n"
    error = refusal(text)
    assert error.line == line_of(text, "mesaging")
    assert "mesaging" in error.reason
    assert "messaging" in error.reason  # the expected keys are listed


def test_unknown_key_inside_a_key_moment_is_refused_on_its_line() -> None:
    text = moment_text(**{"severity: critical": "severty: critical"})
    error = refusal(text)
    assert error.line == line_of(text, "severty")
    assert "severty" in error.reason


def test_unknown_key_inside_messaging_is_refused_on_its_line() -> None:
    text = catalog_text(
        """
        messaging:
          window: 24h
          max_messages: 5
          max_per_chanel: 3
        """
    )
    error = refusal(text)
    assert error.line == line_of(text, "max_per_chanel")
    assert "max_per_chanel" in error.reason


def test_unknown_severity_is_refused_on_its_line() -> None:
    text = moment_text(**{"severity: critical": "severity: urgent"})
    error = refusal(text)
    assert error.line == line_of(text, "urgent")
    assert "urgent" in error.reason
    assert "critical" in error.reason


def test_duplicate_key_moment_is_refused_on_the_second() -> None:
    text = moment_text() + "  - touchpoint: checkout.payment\n    metric: nps\n    below: 8\n"
    error = refusal(text)
    assert error.line == line_of(text, "below: 8") - 2
    assert "checkout.payment/nps" in error.reason
    assert "twice" in error.reason


def test_same_touchpoint_with_another_metric_is_not_a_duplicate() -> None:
    text = moment_text() + "  - {touchpoint: checkout.payment, metric: csat, below: 4}\n"
    assert len(parse_catalog(text).key_moments_for("checkout.payment")) == 2


def test_duplicate_mapping_key_is_refused_on_its_line() -> None:
    text = moment_text(**{"min_samples: 30": "min_samples: 30\n    window: 45m"})
    error = refusal(text)
    assert error.line == line_of(text, "window: 45m")
    assert "window" in error.reason
    assert "twice" in error.reason


@pytest.mark.parametrize("value", ["0", "-1", "ten", "2.5", "²"])
def test_bad_min_samples_is_refused_on_its_line(value: str) -> None:
    text = moment_text(**{"min_samples: 30": f"min_samples: {value!r}"})
    error = refusal(text)
    assert error.line == line_of(text, "min_samples")
    assert "min_samples" in error.reason


@pytest.mark.parametrize("value", ["high", "'ten'", "[10]", ".nan"])
def test_non_number_threshold_is_refused_on_its_line(value: str) -> None:
    text = moment_text(**{"below: 10": f"below: {value}"})
    error = refusal(text)
    assert error.line == line_of(text, "below:")
    assert "below" in error.reason


def test_bad_duration_in_a_key_moment_is_refused_on_its_line() -> None:
    text = moment_text(**{"window: 30m": "window: 30 minutes"})
    error = refusal(text)
    assert error.line == line_of(text, "30 minutes")
    assert "window" in error.reason


QUIET_HOURS = """
    messaging:
      window: 24h
      quiet_hours:
        start: "22:00"
        end: "08:00"
        timezone: Asia/Shanghai
    """


def quiet_text(**replace: str) -> str:
    text = catalog_text(QUIET_HOURS)
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    return text


def test_quiet_hours_load() -> None:
    policy = parse_catalog(quiet_text()).messaging
    assert policy.quiet_hours == QuietHours(
        start=time(22), end=time(8), timezone=ZoneInfo("Asia/Shanghai")
    )


def test_unknown_timezone_is_refused_on_its_line() -> None:
    text = quiet_text(**{"Asia/Shanghai": "Asia/Shangai"})
    error = refusal(text)
    assert error.line == line_of(text, "Asia/Shangai")
    assert "Asia/Shangai" in error.reason
    assert "timezone" in error.reason


@pytest.mark.parametrize("value", ["25:00", "10pm", "22h00", "noon"])
def test_bad_clock_time_is_refused_on_its_line(value: str) -> None:
    text = quiet_text(**{'start: "22:00"': f'start: "{value}"'})
    error = refusal(text)
    assert error.line == line_of(text, "start:")
    assert value in error.reason


def test_clock_time_with_an_offset_is_refused() -> None:
    # The zone belongs in `timezone`; an offset on the clock time cannot be compared with
    # the zone's local time of a message.
    text = quiet_text(**{'end: "08:00"': 'end: "08:00+08:00"'})
    error = refusal(text)
    assert error.line == line_of(text, "end:")
    assert "08:00+08:00" in error.reason


def test_quiet_hours_without_end_is_refused() -> None:
    text = quiet_text(**{'    end: "08:00"\n': ""})
    error = refusal(text)
    assert error.line == line_of(text, "start:")
    assert "end" in error.reason


def test_unknown_messaging_category_is_refused_on_its_line() -> None:
    text = quiet_text(**{"window: 24h": "window: 24h\n  categories: [marketing, spam]"})
    error = refusal(text)
    assert error.line == line_of(text, "categories")
    assert "spam" in error.reason


# --- quiet hours -------------------------------------------------------------------------

SHANGHAI_NIGHT = QuietHours(start=time(22), end=time(8), timezone=ZoneInfo("Asia/Shanghai"))


@pytest.mark.parametrize(
    ("millis", "inside"),
    [
        # Shanghai is UTC+8 all year. Several of these would flip if the zone were ignored:
        # 12:00 local is 04:00 UTC, inside 22:00-08:00 when read as UTC.
        pytest.param(DAY_START_MS + 14 * HOUR, True, id="22:00-local"),
        pytest.param(DAY_START_MS + 15 * HOUR + 30 * MINUTE, True, id="23:30-local"),
        pytest.param(DAY_START_MS + 16 * HOUR, True, id="00:00-local"),
        pytest.param(DAY_START_MS + 23 * HOUR + 59 * MINUTE, True, id="07:59-local"),
        pytest.param(DAY_START_MS + DAY, False, id="08:00-local"),
        pytest.param(DAY_START_MS + DAY + 4 * HOUR, False, id="12:00-local"),
        pytest.param(DAY_START_MS + 13 * HOUR + 59 * MINUTE, False, id="21:59-local"),
    ],
)
def test_quiet_hours_crossing_midnight(millis: int, inside: bool) -> None:
    assert SHANGHAI_NIGHT.contains(millis) is inside


@pytest.mark.parametrize(
    ("millis", "inside"),
    [
        pytest.param(DAY_START_MS + 9 * HOUR, True, id="09:00"),
        pytest.param(DAY_START_MS + 12 * HOUR, True, id="12:00"),
        pytest.param(DAY_START_MS + 16 * HOUR + 59 * MINUTE, True, id="16:59"),
        pytest.param(DAY_START_MS + 17 * HOUR, False, id="17:00"),
        pytest.param(DAY_START_MS + 8 * HOUR + 59 * MINUTE, False, id="08:59"),
        pytest.param(DAY_START_MS, False, id="00:00"),
        pytest.param(DAY_START_MS + 23 * HOUR, False, id="23:00"),
    ],
)
def test_quiet_hours_within_one_day(millis: int, inside: bool) -> None:
    office = QuietHours(start=time(9), end=time(17), timezone=ZoneInfo("UTC"))
    assert office.contains(millis) is inside


# --- key moments -------------------------------------------------------------------------


def moment(**changes: object) -> KeyMoment:
    fields: dict[str, object] = {
        "touchpoint": "checkout.payment",
        "metric": ScoreMetric.NPS,
        "below": 10.0,
        "above": None,
        "window_ms": 30 * MINUTE,
        "step_ms": 5 * MINUTE,
        "min_samples": 30,
        "severity": Severity.CRITICAL,
    }
    fields.update(changes)
    return KeyMoment(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "breaks"), [(9.99, True), (-5.0, True), (10.0, False), (42.0, False)]
)
def test_below_standard_breaks_under_the_bound_only(value: float, breaks: bool) -> None:
    below = moment()
    assert below.line(None) == 10.0
    assert below.worse(value, 10.0) is breaks


@pytest.mark.parametrize(
    ("value", "breaks"), [(0.16, True), (1.0, True), (0.15, False), (0.0, False)]
)
def test_above_standard_breaks_over_the_bound_only(value: float, breaks: bool) -> None:
    rate = moment(metric=ScoreMetric.FAILURE_RATE, below=None, above=0.15)
    assert rate.line(None) == 0.15
    assert rate.worse(value, 0.15) is breaks
    assert rate.threshold == 0.15


# --- buckets and retention ---------------------------------------------------------------

WINDOWS = catalog_text(
    """
    scores:
      window: 1h
      step: 20m
      grace: 2m
    key_moments:
      - {touchpoint: t.a, metric: nps, below: 9, window: 45m, step: 15m}
      - {touchpoint: t.a, metric: failure_rate, above: 0.1, window: 2h, step: 8m}
      - {touchpoint: t.b, metric: csat, below: 4, window: 90s, step: 45s}
      - {touchpoint: t.c, metric: ces, above: 4, window: 7d, step: 1d}
    """
)


def test_bucket_is_the_gcd_of_every_window_and_step_of_the_touchpoint() -> None:
    catalog = parse_catalog(WINDOWS)
    # t.a: gcd(60m, 20m, 45m, 15m, 120m, 8m) = 1m: both of its key moments count.
    assert catalog.bucket_ms("t.a") == MINUTE
    # t.b: gcd(3600s, 1200s, 90s, 45s) = 15s.
    assert catalog.bucket_ms("t.b") == 15_000
    # t.c: gcd(60m, 20m, 7d, 1d) = 20m.
    assert catalog.bucket_ms("t.c") == 20 * MINUTE
    # No key moment: gcd(60m, 20m) = 20m.
    assert catalog.bucket_ms("t.none") == 20 * MINUTE


def test_every_window_is_a_whole_number_of_buckets() -> None:
    catalog = parse_catalog(WINDOWS)
    for name in ("t.a", "t.b", "t.c", "t.none"):
        bucket = catalog.bucket_ms(name)
        sizes = [catalog.scores.window_ms, catalog.scores.step_ms]
        for m in catalog.key_moments_for(name):
            sizes += [m.window_ms, m.step_ms]
        assert all(size % bucket == 0 for size in sizes), name


def test_retention_is_the_longest_window_plus_grace() -> None:
    catalog = parse_catalog(WINDOWS)
    assert catalog.retention_ms("t.a") == 122 * MINUTE  # 2h + 2m
    assert catalog.retention_ms("t.b") == 62 * MINUTE  # the 1h scores window + 2m
    assert catalog.retention_ms("t.c") == 7 * DAY + 2 * MINUTE
    assert catalog.retention_ms("t.none") == 62 * MINUTE


# --- relative standards, guards, holds, no data ------------------------------------------

GUARDED = """
    scores: {window: 1h, step: 5m}
    key_moments:
      - touchpoint: checkout.payment
        metric: nps
        drop: 15
        baseline: 7d
        recover_at: 5
        confidence: 0.95
        for: 10m
        keep_firing_for: 15m
        no_data_after: 1h
        window: 30m
        step: 5m
        min_samples: 30
        severity: critical
      - touchpoint: checkout.payment
        metric: failure_rate
        rise_pct: 50
        baseline: ewma
        alpha: 0.2
        detector: cusum
        slack: 0.25
        limit: 4
      - touchpoint: app.login
        metric: duration_ms
        above: 3000
        recover_at: 2500
        detector: ewma_chart
        smoothing: 0.3
      - touchpoint: app.cart
        metric: abandon_rate
        above: 0.4
        detector: cusum
    """


def test_guarded_key_moments_parse_every_new_key() -> None:
    nps, failures, login, cart = parse_catalog(catalog_text(GUARDED)).key_moments
    assert nps == KeyMoment(
        touchpoint="checkout.payment",
        metric=ScoreMetric.NPS,
        below=None,
        above=None,
        window_ms=30 * MINUTE,
        step_ms=5 * MINUTE,
        min_samples=30,
        severity=Severity.CRITICAL,
        relative=Relative(change=15.0, percent=False, baseline_ms=7 * DAY),
        recover_at=5.0,
        confidence=0.95,
        for_ms=10 * MINUTE,
        keep_firing_for_ms=15 * MINUTE,
        no_data_after_ms=HOUR,
    )
    assert failures.relative == Relative(change=50.0, percent=True, baseline_ms=None, alpha=0.2)
    assert failures.drift == Drift(detector=Detector.CUSUM, limit=4.0, slack=0.25)
    assert failures.detector is Detector.CUSUM
    assert (failures.for_ms, failures.keep_firing_for_ms, failures.confidence) == (0, 0, None)
    assert login.drift == Drift(detector=Detector.EWMA_CHART, limit=3.0, smoothing=0.3)
    assert login.recover_at == 2500.0
    assert cart.drift == Drift(detector=Detector.CUSUM, limit=5.0, slack=0.5)  # the defaults
    assert nps.detector is Detector.WINDOW
    assert nps.drift is None


def test_lines_of_relative_and_fixed_standards() -> None:
    nps, failures, login, _ = parse_catalog(catalog_text(GUARDED)).key_moments
    # NPS 15 points worse than a baseline of 40 is 25; it recovers within 5 points: 35.
    assert nps.line(40.0) == 25.0
    assert nps.recover_line(40.0) == 35.0
    assert nps.line(None) is None  # no baseline yet: no line
    assert not nps.worse_when_higher
    assert nps.worse(24.9, 25.0)
    assert not nps.worse(25.0, 25.0)
    # A failure rate 50% worse than a baseline of 0.1 is 0.15 (it rises).
    assert failures.worse_when_higher
    assert failures.line(0.1) == pytest.approx(0.15)
    assert failures.recover_line(0.1) == pytest.approx(0.15)  # default: the line itself
    # Fixed standards ignore the baseline.
    assert login.line(None) == 3000.0
    assert login.recover_line(None) == 2500.0


def test_percent_drop_of_a_negative_baseline_is_of_its_magnitude() -> None:
    (moment,) = parse_catalog(
        "key_moments:\n  - {touchpoint: t, metric: nps, drop_pct: 20, baseline: ewma}\n"
    ).key_moments
    # 20% of |-10| is 2 points: worse is lower, so -12 (not -8).
    assert moment.line(-10.0) == pytest.approx(-12.0)
    assert moment.line(50.0) == pytest.approx(40.0)


def test_standard_reads_as_people_write_it() -> None:
    nps, failures, login, _ = parse_catalog(catalog_text(GUARDED)).key_moments
    assert nps.standard() == "more than 15 worse than its 7d baseline"
    assert failures.standard() == "more than 50% worse than its EWMA baseline"
    assert login.standard() == "above 3000"


def test_baseline_window_counts_in_buckets_and_retention() -> None:
    catalog = parse_catalog(
        catalog_text(
            """
            scores: {window: 1h, step: 5m, grace: 1m}
            key_moments:
              - {touchpoint: t.a, metric: nps, drop: 10, baseline: 7d, window: 30m, step: 5m}
              - {touchpoint: t.b, metric: nps, drop: 10, baseline: 100m, window: 20m, step: 20m}
              - {touchpoint: t.c, metric: nps, drop: 10, baseline: ewma, window: 30m, step: 5m}
            """
        )
    )
    # A window and the baseline before it: 30m + 7d, plus grace.
    assert catalog.retention_ms("t.a") == 30 * MINUTE + 7 * DAY + MINUTE
    assert catalog.bucket_ms("t.a") == 5 * MINUTE
    # gcd(60m, 5m, 20m, 20m, 100m) = 5m; 20m + 100m = 2h beats the scores hour.
    assert catalog.bucket_ms("t.b") == 5 * MINUTE
    assert catalog.retention_ms("t.b") == 2 * HOUR + MINUTE
    # An EWMA keeps no buckets of its own.
    assert catalog.retention_ms("t.c") == HOUR + MINUTE


@pytest.mark.parametrize(
    ("replace", "needle", "words"),
    [
        ({"below: 10": "drop: 15"}, "drop: 15", ["baseline", "7d", "ewma"]),
        ({"below: 10": "rise: 15\n    baseline: 7d"}, "rise: 15", ["nps", "falling", "drop"]),
        ({"below: 10": "drop: 0\n    baseline: 7d"}, "drop: 0", ["more than 0"]),
        ({"below: 10": "below: 10\n    drop: 5"}, "- touchpoint", ["below", "drop_pct", "rise"]),
        ({"below: 10": "below: 10\n    baseline: 7d"}, "baseline: 7d", ["relative"]),
        ({"below: 10": "below: 10\n    alpha: 0.5"}, "alpha: 0.5", ["relative"]),
        ({"below: 10": "drop: 5\n    baseline: 30m"}, "baseline: 30m", ["longer", "30m"]),
        ({"below: 10": "drop: 5\n    baseline: 62m"}, "baseline: 62m", ["whole number", "5m"]),
        ({"below: 10": "drop: 5\n    baseline: weekly"}, "weekly", ["baseline", "duration"]),
        ({"below: 10": "drop: 5\n    baseline: 7d\n    alpha: 0.3"}, "alpha: 0.3", ["ewma"]),
        ({"below: 10": "drop: 5\n    baseline: ewma\n    alpha: 1.5"}, "alpha: 1.5", ["alpha"]),
        ({"below: 10": "below: 10\n    recover_at: 8"}, "recover_at: 8", ["below the standard"]),
        ({"below: 10": "drop: 5\n    baseline: ewma\n    recover_at: 6"}, "recover_at", ["0", "5"]),
        ({"below: 10": "below: 10\n    confidence: 95"}, "confidence: 95", ["0.95"]),
        ({"below: 10": "below: 10\n    confidence: 0.3"}, "confidence", ["at least 0.5"]),
        ({"below: 10": "below: 10\n    detector: shewhart"}, "shewhart", ["cusum", "ewma_chart"]),
        ({"below: 10": "below: 10\n    slack: 0.5"}, "slack", ["cusum"]),
        ({"below: 10": "below: 10\n    limit: 4"}, "limit: 4", ["cusum or ewma_chart"]),
        (
            {"below: 10": "below: 10\n    detector: ewma_chart\n    slack: 1"},
            "slack: 1",
            ["cusum"],
        ),
        (
            {"below: 10": "below: 10\n    detector: cusum\n    smoothing: 0.2"},
            "smoothing",
            ["ewma_chart"],
        ),
        ({"below: 10": "below: 10\n    detector: cusum\n    limit: 0"}, "limit: 0", ["limit"]),
        (
            {"below: 10": "below: 10\n    detector: ewma_chart\n    smoothing: 2"},
            "smoothing: 2",
            ["smoothing"],
        ),
        ({"below: 10": "below: 10\n    for: soon"}, "soon", ["for"]),
        ({"below: 10": "below: 10\n    no_data_after: 12m"}, "12m", ["whole number", "5m"]),
    ],
)
def test_bad_guards_are_refused_on_their_line(
    replace: dict[str, str], needle: str, words: list[str]
) -> None:
    text = moment_text(**replace)
    error = refusal(text)
    assert error.line == line_of(text, needle)
    for word in words:
        assert word in error.reason


def test_recover_at_above_a_rate_standard_is_refused() -> None:
    text = catalog_text(
        """
        key_moments:
          - touchpoint: app.cart
            metric: abandon_rate
            above: 0.4
            recover_at: 0.5
        """
    )
    error = refusal(text)
    assert error.line == line_of(text, "recover_at")
    assert "above the standard 0.4" in error.reason


def test_the_commented_example_in_the_shipped_catalog_parses() -> None:
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    start = lines.index("#  - touchpoint: order.confirmation")
    end = lines.index("#    severity: critical", start)
    example = "key_moments:\n" + "\n".join(line[1:] for line in lines[start : end + 1])
    (moment,) = parse_catalog(example).key_moments
    assert moment.relative == Relative(change=15.0, percent=False, baseline_ms=7 * DAY)
    assert (moment.confidence, moment.for_ms, moment.no_data_after_ms) == (0.95, 10 * MINUTE, HOUR)


# --- journey breaks ----------------------------------------------------------------------


def test_example_catalog_watches_the_cart_to_checkout_hand_off() -> None:
    assert load_catalog(EXAMPLE).breaks == (
        JourneyBreak(
            source="app.cart",
            target="checkout.payment",
            within_ms=10 * MINUTE,
            max_rate=0.5,
            window_ms=30 * MINUTE,
            step_ms=5 * MINUTE,
            min_samples=100,
            severity=Severity.CRITICAL,
            recover_at=0.45,
        ),
    )


def test_minimal_break_takes_its_defaults() -> None:
    catalog = parse_catalog(
        catalog_text(
            """
            scores: {window: 2h, step: 10m}
            breaks:
              - {from: app.login, to: app.cart, within: 30m, max_rate: 0.4}
            """
        )
    )
    (journey,) = catalog.breaks
    assert journey.id == "app.login -> app.cart"
    assert (journey.window_ms, journey.step_ms) == (2 * HOUR, 10 * MINUTE)
    assert (journey.min_samples, journey.severity) == (30, Severity.WARNING)
    assert (journey.recover_at, journey.recover_rate) == (None, 0.4)


def break_text(**replace: str) -> str:
    text = catalog_text(
        """
        breaks:
          - from: app.cart
            to: checkout.payment
            within: 10m
            max_rate: 0.5
            window: 30m
            step: 5m
        """
    )
    for old, new in replace.items():
        text = text.replace(old, new)
    return text


@pytest.mark.parametrize(
    ("old", "new", "needle", "words"),
    [
        ("to: checkout.payment", "to: app.cart", "to: app.cart", ["another touchpoint"]),
        ("within: 10m", "within: soon", "soon", ["within", "duration"]),
        ("max_rate: 0.5", "max_rate: 1.5", "1.5", ["below 1"]),
        ("max_rate: 0.5", "max_rate: many", "many", ["not a number"]),
        ("max_rate: 0.5", "max_rate: 0.5\n    recover_at: 0.6", "0.6", ["max_rate (0.5)"]),
        ("step: 5m", "step: 7m", "breaks:", []),
        ("step: 5m", "step: 5m\n    min_samples: 0", "min_samples", ["at least 1"]),
        ("step: 5m", "step: 5m\n    severity: page", "page", ["warning, critical"]),
        ("step: 5m", "step: 5m\n    outcome: success", "outcome", ["unknown key"]),
        ("    within: 10m\n", "", "breaks:", ["needs 'within'"]),
    ],
)
def test_bad_breaks_are_refused_on_their_line(
    old: str, new: str, needle: str, words: list[str]
) -> None:
    text = break_text(**{old: new})
    error = refusal(text)
    expected = line_of(text, needle) + (1 if needle == "breaks:" else 0)
    assert error.line == expected, error
    for word in ["break app.cart -> ", *words] if needle != "outcome" else words:
        assert word in error.reason, error.reason


def test_a_break_declared_twice_is_refused_on_the_second() -> None:
    text = catalog_text(
        """
        breaks:
          - {from: app.cart, to: checkout.payment, within: 10m, max_rate: 0.5}
          - {from: app.cart, to: checkout.payment, within: 20m, max_rate: 0.6}
        """
    )
    error = refusal(text)
    assert error.line == line_of(text, "20m")
    assert "break app.cart -> checkout.payment is declared twice" in error.reason


# --- touchpoints not declared, and what check-catalog prints -----------------------------

UNDECLARED = """
    touchpoints:
      app.login: {stage: intent}
      app.cart: {stage: intent}
      checkout.payment: {}
    key_moments:
      - {touchpoint: app.logn, metric: csat, below: 4}
      - {touchpoint: checkout.payment, metric: nps, below: 10}
    breaks:
      - from: app.cart
        to: checkout.pay
        within: 10m
        max_rate: 0.5
    """


def test_a_touchpoint_not_declared_is_warned_of_on_its_line_with_the_nearest() -> None:
    text = catalog_text(UNDECLARED)
    catalog = parse_catalog(text, "ops/catalog.yaml")
    assert [str(warning) for warning in catalog.warnings] == [
        f"ops/catalog.yaml:{line_of(text, 'app.logn')}: warning: key moment app.logn: "
        "touchpoint 'app.logn' is not declared in touchpoints (the nearest declared is "
        "'app.login')",
        f"ops/catalog.yaml:{line_of(text, 'to: checkout.pay')}: warning: break app.cart -> "
        "checkout.pay: touchpoint 'checkout.pay' is not declared in touchpoints (the nearest "
        "declared is 'checkout.payment')",
    ]
    # Still loaded whole: a key moment on any touchpoint is judged, declared or not.
    assert [m.id for m in catalog.key_moments] == ["app.logn/csat", "checkout.payment/nps"]


def test_without_declared_touchpoints_there_is_nothing_to_warn_of() -> None:
    undeclared = parse_catalog("key_moments:\n  - {touchpoint: x, metric: csat, below: 4}\n")
    assert undeclared.warnings == ()
    assert load_catalog(EXAMPLE).warnings == ()


def test_check_catalog_prints_what_it_understood() -> None:
    assert describe_catalog(load_catalog(EXAMPLE), "example.yaml") == [
        "example.yaml: 15 touchpoints, 5 key moments, 1 journey breaks, 1 consistency rules, "
        "1 fatigue rules",
        "scores: 1h windows every 5m, judged 1m after a window ends, so late events still count",
        "touchpoints by stage:",
        "  awareness: douyin.ad, xiaohongshu.note",
        "  interest: web.product_page, mini_program.product",
        "  intent: app.login, app.cart",
        "  purchase: checkout.payment, store.visit, order.confirmation",
        "  use: delivery.tracking",
        "  service: call_center.support",
        "  retention: marketing.sms, marketing.email, marketing.push, wechat.official_account",
        "key moments:",
        "  checkout.payment/nps: degraded when below 10, 30m windows every 5m, min 30 samples; "
        "severity critical",
        "  checkout.payment/failure_rate: degraded when above 0.15, 30m windows every 5m, "
        "min 50 samples; severity critical",
        "  app.login/duration_ms: degraded when above 3000, 30m windows every 5m, "
        "min 50 samples; severity warning",
        "  call_center.support/csat: degraded when below 3.5, 1h windows every 10m, "
        "min 20 samples; severity warning",
        "  call_center.support/ces: degraded when above 4.5, 1h windows every 10m, "
        "min 20 samples; severity warning",
        "journey breaks:",
        "  app.cart -> checkout.payment: broken when more than 0.5 of customers do not go on "
        "within 10m, 30m windows every 5m, min 100 samples, recovers at 0.45; severity critical",
        "channel consistency:",
        "  purchase/nps: inconsistent when a channel's nps is worse than the stage's other "
        "channels by more than 20, with 0.95 confidence, 1h windows every 10m, min 30 samples "
        "for the channel and for the rest, recovers at 15; severity warning",
        "messaging fatigue:",
        "  nps: fatigued when the nps of customers who had at least 4 counted messages in the "
        "24h before answering is worse than the others' by more than 15, with 0.95 "
        "confidence, 1h windows every 10m, min 30 samples in each cohort, recovers at 10; "
        "severity warning",
        "messaging: at most 5 marketing messages a customer in any 24h, 3 on any one channel, "
        "none in quiet hours 22:00-08:00 Asia/Shanghai; severity warning",
    ]


def test_check_catalog_prints_every_guard_of_a_key_moment() -> None:
    lines = describe_catalog(parse_catalog(catalog_text(GUARDED)), "guarded.yaml")
    assert (
        "  checkout.payment/nps: degraded when more than 15 worse than its 7d baseline, "
        "with 0.95 confidence, 30m windows every 5m, min 30 samples, for 10m, recovers at 5, "
        "keeps firing for 15m, no_data after 1h; severity critical"
    ) in lines
    assert any(line.startswith("  app.cart/abandon_rate: ") and "by cusum (limit 5)" in line
               for line in lines)  # fmt: skip
    assert lines[-1] == (
        "messaging: at most 5 marketing messages a customer in any 24h, 3 on any one channel, "
        "no quiet hours; severity warning"
    )
