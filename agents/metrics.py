"""Every Prometheus metric the worker exports, declared once; labels never carry a customer."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import suppress
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from models.records import known_channel
from streams.catalog import (
    Catalog,
    ChannelConsistency,
    JourneyBreak,
    KeyMoment,
    MessagingFatigue,
    ScoreMetric,
)
from streams.core.consistency import StageConsistency
from streams.core.fatigue import MESSAGED, OTHERS, Fatigue
from streams.core.gaps import GroupGaps, GroupReading
from streams.core.messaging import Message
from streams.core.scores import Tally

REGISTRY = CollectorRegistry(auto_describe=True)

LagReading = tuple[str, int, int]


class ConsumerLag(Collector):
    """Records left to process per assigned partition, read at scrape time from the worker."""

    def __init__(self) -> None:
        self.readings: Callable[[], Iterable[LagReading]] = lambda: ()

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "cxmon_consumer_lag_records",
            "Records between the last one processed and the end of each assigned partition.",
            labels=["topic", "partition"],
        )
        for topic, partition, lag in self.readings():
            family.add_metric([topic, str(partition)], lag)
        yield family

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("cxmon_consumer_lag_records", "", labels=["topic", "partition"])


RECORDS = Counter(
    "cxmon_records_total",
    "Records read from an input topic.",
    ["topic"],
    registry=REGISTRY,
)
DUPLICATES = Counter(
    "cxmon_duplicates_total",
    "Records whose event or answer id was already counted.",
    ["topic"],
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "cxmon_dead_letters_total",
    "Records refused and sent to the dead-letter topic, by reason.",
    ["topic", "reason"],
    registry=REGISTRY,
)
LATE_RECORDS = Counter(
    "cxmon_late_records_total",
    "Records too late for their window: refused at ingest (dead letters, reason late), "
    "or older than every window still open when they reached their touchpoint.",
    registry=REGISTRY,
)
EVENT_TIME_JUDGED = Gauge(
    "cxmon_event_time_judged_seconds",
    "Event time up to which this worker has judged the windows of its touchpoints (the "
    "lowest over its partitions), Unix seconds; older records are refused as late.",
    registry=REGISTRY,
)
MESSAGES_AFTER_VERDICT = Counter(
    "cxmon_messages_after_verdict_total",
    "Outbound messages that reached the frequency stage after their customer had been judged "
    "past their time: counted, but the over-messaging verdict at their instant was taken "
    "without them (a message out of order on its partition, or a watermark that ran ahead).",
    registry=REGISTRY,
)
UNRESOLVED_CONTACTS = Counter(
    "cxmon_unresolved_contact_messages_total",
    "Outbound messages whose contact had no identity link; counted under the contact itself.",
    registry=REGISTRY,
)
ALERTS = Counter(
    "cxmon_alerts_total",
    "Alert transitions emitted, by kind and status.",
    ["kind", "status"],
    registry=REGISTRY,
)
BATCH_SECONDS = Histogram(
    "cxmon_batch_processing_seconds",
    "Time to process one batch of records, by stage.",
    ["stage"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    registry=REGISTRY,
)
INGEST_LATENCY = Histogram(
    "cxmon_ingest_latency_seconds",
    "Seconds from the append of a batch's oldest input record to the end of its processing.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
    registry=REGISTRY,
)
TOUCHPOINT_INFO = Gauge(
    "cxmon_touchpoint_info",
    "1 for every touchpoint the catalog declares, with its journey stage.",
    ["touchpoint", "stage"],
    registry=REGISTRY,
)
TOUCHPOINT_SCORE = Gauge(
    "cxmon_touchpoint_score",
    "Unitless score of a touchpoint (NPS, CSAT, CES, sentiment, rates) over its latest window.",
    ["touchpoint", "metric"],
    registry=REGISTRY,
)
TOUCHPOINT_WAIT = Gauge(
    "cxmon_touchpoint_wait_seconds",
    "Waiting or loading time customers had at a touchpoint over its latest window.",
    ["touchpoint", "statistic"],
    registry=REGISTRY,
)
TOUCHPOINT_SAMPLES = Gauge(
    "cxmon_touchpoint_samples",
    "Answers or events behind the touchpoint score.",
    ["touchpoint", "metric"],
    registry=REGISTRY,
)
KEY_MOMENT_DEGRADED = Gauge(
    "cxmon_key_moment_degraded",
    "1 while a key moment has an open incident, else 0.",
    ["touchpoint", "metric", "severity"],
    registry=REGISTRY,
)
KEY_MOMENT_THRESHOLD = Gauge(
    "cxmon_key_moment_threshold",
    "The standard of a key moment, in base units (seconds for waiting time).",
    ["touchpoint", "metric", "breaks"],
    registry=REGISTRY,
)
MESSAGING_LIMIT = Gauge(
    "cxmon_messaging_limit_messages",
    "The messaging policy: counted messages a customer may get in its window, in all "
    "(scope window) and on one channel (scope channel).",
    ["scope"],
    registry=REGISTRY,
)
JOURNEY_BROKEN = Gauge(
    "cxmon_journey_broken",
    "1 while a journey break of the catalog has an open incident, else 0.",
    ["from", "to", "severity"],
    registry=REGISTRY,
)
JOURNEY_BREAK_RATE = Gauge(
    "cxmon_journey_break_rate",
    "Share (0..1) of the attempts decided in a journey break's latest window that broke.",
    ["from", "to"],
    registry=REGISTRY,
)
JOURNEY_BREAK_SAMPLES = Gauge(
    "cxmon_journey_break_samples",
    "Attempts decided (broken or converted) in a journey break's latest window.",
    ["from", "to"],
    registry=REGISTRY,
)
CHANNEL_INCONSISTENT = Gauge(
    "cxmon_channel_inconsistent",
    "1 while a channel of a journey stage has an open consistency incident, else 0; from the "
    "first window judged with the channel in it.",
    ["stage", "metric", "channel", "severity"],
    registry=REGISTRY,
)
CHANNEL_SCORE = Gauge(
    "cxmon_channel_score",
    "Score of one channel of a journey stage over a consistency rule's latest window "
    "(unitless, seconds for waiting time).",
    ["stage", "metric", "channel"],
    registry=REGISTRY,
)
CHANNEL_GAP = Gauge(
    "cxmon_channel_gap",
    "How much worse a channel scored than the rest of its stage pooled, over the latest "
    "window (negative: better; seconds for waiting time).",
    ["stage", "metric", "channel"],
    registry=REGISTRY,
)
CHANNEL_SAMPLES = Gauge(
    "cxmon_channel_samples",
    "Answers or events behind a channel's score in a consistency rule's latest window.",
    ["stage", "metric", "channel"],
    registry=REGISTRY,
)
MESSAGING_FATIGUE = Gauge(
    "cxmon_messaging_fatigue",
    "1 while a fatigue rule has an open incident (heavily messaged customers answering "
    "worse than the others), else 0.",
    ["metric", "severity"],
    registry=REGISTRY,
)
FATIGUE_COHORT_SCORE = Gauge(
    "cxmon_fatigue_cohort_score",
    "Survey score of the customers messaged at least a fatigue rule's count (cohort "
    "messaged) and of the others, over the rule's latest window with enough answers.",
    ["metric", "cohort"],
    registry=REGISTRY,
)
FATIGUE_COHORT_SAMPLES = Gauge(
    "cxmon_fatigue_cohort_samples",
    "Answers behind a cohort's score in a fatigue rule's latest window.",
    ["metric", "cohort"],
    registry=REGISTRY,
)
FATIGUE_GAP = Gauge(
    "cxmon_fatigue_gap",
    "How much worse the messaged cohort answered than the others over a fatigue rule's "
    "latest window (negative: better).",
    ["metric"],
    registry=REGISTRY,
)
OUTBOUND_MESSAGES = Counter(
    "cxmon_outbound_messages_total",
    "Outbound messages counted towards customers' frequency, by channel and category.",
    ["channel", "category"],
    registry=REGISTRY,
)
CUSTOMER_WINDOW_MESSAGES = Histogram(
    "cxmon_customer_window_messages",
    "Counted messages in a customer's window, observed each time the customer gets messages.",
    buckets=(1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 50),
    registry=REGISTRY,
)
CONSUMER_LAG = ConsumerLag()
REGISTRY.register(CONSUMER_LAG)
GROUP_MEMBERS = Gauge(
    "cxmon_group_members",
    "Members the broker lists in the worker's consumer group, live or not.",
    registry=REGISTRY,
)
STALLED_INPUT_PARTITIONS = Gauge(
    "cxmon_stalled_input_partitions",
    "Input partitions with records waiting whose group commit has not moved for 60 s.",
    registry=REGISTRY,
)
ALERTMANAGER_PUSHES = Counter(
    "cxmon_alertmanager_pushes_total",
    "Pushes of alerts to Alertmanager, by outcome (a failed push is retried).",
    ["outcome"],
    registry=REGISTRY,
)
ALERTMANAGER_ACTIVE = Gauge(
    "cxmon_alertmanager_active_alerts",
    "Firing alerts this worker re-sends to Alertmanager until they resolve.",
    registry=REGISTRY,
)


def declare_catalog(catalog: Catalog) -> None:
    """Series that exist from the start: touchpoint stages, key moment states and standards,
    the messaging policy's limits."""
    for touchpoint, stage in catalog.touchpoints.items():
        TOUCHPOINT_INFO.labels(touchpoint, stage.value).set(1)
    MESSAGING_LIMIT.labels("window").set(catalog.messaging.max_messages)
    MESSAGING_LIMIT.labels("channel").set(catalog.messaging.max_per_channel)
    for journey in catalog.breaks:
        JOURNEY_BROKEN.labels(journey.source, journey.target, journey.severity.value).set(0)
    for rule in catalog.fatigue:
        MESSAGING_FATIGUE.labels(rule.metric.value, rule.severity.value).set(0)
    for moment in catalog.key_moments:
        set_key_moment(moment, degraded=False)
        if moment.relative is not None:
            continue  # its line follows its baseline: no fixed standard to export
        metric = moment.metric.value
        breaks = "above" if moment.worse_when_higher else "below"
        threshold = moment.threshold
        if moment.metric is ScoreMetric.DURATION_MS:
            threshold /= 1000
        KEY_MOMENT_THRESHOLD.labels(moment.touchpoint, metric, breaks).set(threshold)


def set_key_moment(moment: KeyMoment, *, degraded: bool) -> None:
    labels = (moment.touchpoint, moment.metric.value, moment.severity.value)
    KEY_MOMENT_DEGRADED.labels(*labels).set(1 if degraded else 0)


def export_journey_break(
    journey: JourneyBreak, *, broken: bool, rate: float | None, samples: int
) -> None:
    """From the break's state; no rate while no window with attempts has been judged."""
    JOURNEY_BROKEN.labels(journey.source, journey.target, journey.severity.value).set(
        1 if broken else 0
    )
    if rate is None:
        return
    JOURNEY_BREAK_RATE.labels(journey.source, journey.target).set(rate)
    JOURNEY_BREAK_SAMPLES.labels(journey.source, journey.target).set(samples)


def forget_journey_break(journey: JourneyBreak) -> None:
    """Another worker owns the break now: its figures count, not this worker's last ones."""
    JOURNEY_BROKEN.labels(journey.source, journey.target, journey.severity.value).set(0)
    for gauge in (JOURNEY_BREAK_RATE, JOURNEY_BREAK_SAMPLES):
        with suppress(KeyError):  # never exported here: nothing to forget
            gauge.remove(journey.source, journey.target)


def export_channels(
    rule: ChannelConsistency,
    readings: Iterable[GroupReading],
    incidents: Collection[str],
    shown: Collection[str],
) -> set[str]:
    """A stage's channels on a consistency rule's newest judged window, replacing the
    `shown` ones: figures for the channels read, the incident state for those and for any
    channel with an open incident. Returns the channels now shown."""
    stage, metric = rule.stage.value, rule.metric.value
    scale = 1000 if rule.metric is ScoreMetric.DURATION_MS else 1
    read = set()
    for reading in readings:
        labels = (stage, metric, reading.group)
        CHANNEL_SCORE.labels(*labels).set(reading.gap.group.value / scale)
        CHANNEL_GAP.labels(*labels).set(reading.gap.value / scale)
        CHANNEL_SAMPLES.labels(*labels).set(reading.gap.group.samples)
        read.add(reading.group)
    now = read | set(incidents)
    for channel in now:
        inconsistent = 1 if channel in incidents else 0
        CHANNEL_INCONSISTENT.labels(stage, metric, channel, rule.severity.value).set(inconsistent)
    for channel in set(shown) - read:
        for gauge in (CHANNEL_SCORE, CHANNEL_GAP, CHANNEL_SAMPLES):
            with suppress(KeyError):  # shown for its incident only: no figures to drop
                gauge.remove(stage, metric, channel)
        if channel not in now:
            CHANNEL_INCONSISTENT.remove(stage, metric, channel, rule.severity.value)
    return now


def export_gaps(
    detector: GroupGaps[Any],
    readings: Iterable[GroupReading],
    incidents: Collection[str],
    shown: Collection[str],
) -> set[str]:
    """A gap rule's newest judged window, replacing the `shown` groups; returns those now shown."""
    if isinstance(detector, Fatigue):
        return export_cohorts(detector.rule, readings, incidents, shown)
    assert isinstance(detector, StageConsistency)
    return export_channels(detector.rule, readings, incidents, shown)


def export_cohorts(
    rule: MessagingFatigue,
    readings: Iterable[GroupReading],
    incidents: Collection[str],
    shown: Collection[str],
) -> set[str]:
    """A fatigue rule's cohorts on its newest judged window (none read: figures dropped),
    and its incident state. Returns the groups now shown."""
    metric = rule.metric.value
    MESSAGING_FATIGUE.labels(metric, rule.severity.value).set(1 if MESSAGED in incidents else 0)
    read = set()
    for reading in readings:
        gap = reading.gap
        for cohort, estimate in ((MESSAGED, gap.group), (OTHERS, gap.rest)):
            FATIGUE_COHORT_SCORE.labels(metric, cohort).set(estimate.value)
            FATIGUE_COHORT_SAMPLES.labels(metric, cohort).set(estimate.samples)
        FATIGUE_GAP.labels(metric).set(gap.value)
        read.add(reading.group)
    if shown and not read:
        for cohort in (MESSAGED, OTHERS):
            FATIGUE_COHORT_SCORE.remove(metric, cohort)
            FATIGUE_COHORT_SAMPLES.remove(metric, cohort)
        FATIGUE_GAP.remove(metric)
    return read


def export_score(touchpoint: str, metric: ScoreMetric, tally: Tally) -> None:
    TOUCHPOINT_SAMPLES.labels(touchpoint, metric.value).set(tally.samples(metric))
    if metric is ScoreMetric.DURATION_MS:
        mean = tally.duration_mean()
        if mean is not None:
            TOUCHPOINT_WAIT.labels(touchpoint, "mean").set(mean / 1000)
            TOUCHPOINT_WAIT.labels(touchpoint, "p95").set(tally.duration_quantile(0.95) / 1000)
        return
    value = tally.value(metric)
    if value is not None:
        TOUCHPOINT_SCORE.labels(touchpoint, metric.value).set(value)


def forget_score(touchpoint: str, metric: ScoreMetric) -> None:
    TOUCHPOINT_SAMPLES.remove(touchpoint, metric.value)
    if metric is ScoreMetric.DURATION_MS:
        TOUCHPOINT_WAIT.remove(touchpoint, "mean")
        TOUCHPOINT_WAIT.remove(touchpoint, "p95")
    else:
        TOUCHPOINT_SCORE.remove(touchpoint, metric.value)


def count_outbound(message: Message) -> None:
    OUTBOUND_MESSAGES.labels(known_channel(message.channel), message.category.value).inc()
