"""Stream alerts as Alertmanager v2 alerts: labels, annotations, and the instant each one ends."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from models.decode import format_timestamp, parse_timestamp_ms
from models.records import AlertKind, AlertStatus
from streams.core.privacy import pseudonym

# Prometheus sends a firing alert with endsAt four resend intervals ahead: missing three
# resends in a row (a worker down) lets Alertmanager resolve it on its own, not sooner.
RESENDS_BEFORE_EXPIRY = 4


@dataclass(frozen=True, slots=True)
class NotifyLinks:
    """Where a notification points people: the runbook and the Grafana dashboards."""

    runbook_url: str
    grafana_url: str

    def runbook(self, alertname: str) -> str:
        return f"{self.runbook_url}#{alertname.lower()}"

    def dashboard(self, touchpoint: str | None) -> str:
        base = self.grafana_url.rstrip("/")
        if touchpoint is None:
            return f"{base}/d/cxmon-overview"
        return f"{base}/d/cxmon-touchpoint?var-touchpoint={quote(touchpoint)}"


def alertname(kind: str) -> str:
    """`key_moment_degraded` becomes `KeyMomentDegraded`, as Prometheus names its alerts."""
    return "".join(part.capitalize() for part in kind.split("_"))


def is_customer_kind(kind: str) -> bool:
    return kind == AlertKind.OVER_MESSAGED.value


def to_alertmanager(
    alert: Mapping[str, Any],
    *,
    now_ms: int,
    resend_ms: int,
    links: NotifyLinks,
    pseudonym_key: bytes | None,
) -> dict[str, Any]:
    """One `cx.alerts` object as a postable Alertmanager alert, at wall-clock instant `now_ms`.

    `pseudonym_key` None: the subject is a pseudonym already (CXMON_PSEUDONYMISE_IDS).
    """
    kind = str(alert["kind"])
    name = alertname(kind)
    subject = str(alert["subject"])
    labels = {
        "alertname": name,
        "kind": kind,
        "severity": str(alert["severity"]),
        "source": "stream",
    }
    summary = str(alert["summary"])
    fingerprint = str(alert["fingerprint"])
    touchpoint: str | None = None
    if is_customer_kind(kind):
        customer = subject if pseudonym_key is None else pseudonym(subject, pseudonym_key)
        labels["customer"] = customer
        # Notifications leave the company's Kafka: the customer id stays behind, and so
        # does the fingerprint, an unkeyed hash of it.
        summary = summary.replace(subject, customer)
        if pseudonym_key is not None:
            fingerprint = pseudonym(fingerprint, pseudonym_key)
    elif kind == AlertKind.JOURNEY_BREAK.value:
        # The break's two touchpoints, from the catalog: bounded, and routable apart.
        labels["from"], labels["to"] = str(alert["from"]), str(alert["to"])
        touchpoint = labels["from"]
    elif kind == AlertKind.CHANNEL_INCONSISTENT.value:
        # A stage of the catalog, a metric, a channel of the contract's list or `other`.
        for label in ("stage", "metric", "channel"):
            labels[label] = str(alert[label])
    elif kind == AlertKind.MESSAGING_FATIGUE.value:
        labels["metric"] = str(alert["metric"])
    else:
        touchpoint = subject
        labels["touchpoint"] = subject
        if alert.get("metric") is not None:
            labels["metric"] = str(alert["metric"])
    # Event time may run ahead of the wall clock (skewed producers) or far behind it (a
    # replay); Alertmanager wants startsAt <= endsAt, and resolves an alert ending in the past.
    starts_at = min(parse_timestamp_ms(alert["starts_at"], "starts_at"), now_ms)
    if alert["status"] == AlertStatus.RESOLVED.value and alert.get("ends_at") is not None:
        ends_at = max(starts_at, min(parse_timestamp_ms(alert["ends_at"], "ends_at"), now_ms))
    else:
        ends_at = now_ms + RESENDS_BEFORE_EXPIRY * resend_ms
    dashboard = links.dashboard(touchpoint)
    return {
        "labels": labels,
        "annotations": {
            "summary": summary,
            "description": describe(alert),
            "runbook_url": links.runbook(name),
            "dashboard_url": dashboard,
            "fingerprint": fingerprint,
        },
        "startsAt": format_timestamp(starts_at),
        "endsAt": format_timestamp(ends_at),
        "generatorURL": dashboard,
    }


# The figures an alert may carry beyond the contract's, in the order a person reads them:
# the evidence (n, interval), what it was judged against, then the detector's own reading.
DESCRIBED_FIGURES = (
    "samples",
    "channel_value",
    "channel_samples",
    "rest_value",
    "rest_samples",
    "messaged_value",
    "messaged_samples",
    "others_value",
    "others_samples",
    "gap_low",
    "gap_high",
    "min_samples",
    "broken",
    "converted",
    "within",
    "low",
    "high",
    "confidence",
    "baseline",
    "baseline_window",
    "baseline_samples",
    "baseline_windows",
    "recover_at",
    "detector",
    "statistic",
    "limit",
    "last_data",
    "window_end",
    "breaches",
    "by_channel",
)


def describe(alert: Mapping[str, Any]) -> str:
    """The figures behind the decision, in one line; never a customer id."""
    parts = [f"observed {alert['observed']:g}", f"threshold {alert['threshold']:g}"]
    parts.append(f"window {alert['window']}")
    for name in DESCRIBED_FIGURES:
        if alert.get(name) is not None:
            parts.append(f"{name} {_plain(alert[name])}")
    parts.append(f"event time {alert['starts_at']} to {alert.get('ends_at') or 'now'}")
    return "; ".join(parts)


def _plain(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    if isinstance(value, dict):
        return ",".join(f"{key}={item}" for key, item in value.items())
    return str(value)


def backoff_delays(first_s: float = 0.5, cap_s: float = 30.0) -> Iterator[float]:
    """Doubling waits between retries, capped: Alertmanager down for an hour costs little."""
    delay = first_s
    while True:
        yield delay
        delay = min(delay * 2, cap_s)
