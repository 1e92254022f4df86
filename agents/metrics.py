"""Every Prometheus metric the worker exports, declared once; labels never carry a customer."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

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
LATE_PARTIALS = Counter(
    "cxmon_late_records_total",
    "Records older than every window still open for their touchpoint.",
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
TOUCHPOINT_SCORE = Gauge(
    "cxmon_touchpoint_score",
    "Score of a touchpoint over its latest closed scoring window.",
    ["touchpoint", "metric"],
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
    ["touchpoint", "metric"],
    registry=REGISTRY,
)
