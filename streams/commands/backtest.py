"""Backtest: a span of recorded input through the offline monitor, its alerts and a summary.

The records of [from - warm-up, to) go through `OfflineMonitor`, the same pure core the
worker runs, and every window that ends by `to` is judged. The warm-up builds the state the
first judged windows look back on (windows, baselines, a customer's messaging window);
what it fires is not reported, except the firing of an incident still open at
`from`. Identity links are history, whatever their time: all of them are applied.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import IO, Any, get_args

import orjson

from models.decode import (
    InvalidRecord,
    Reason,
    encode_alert,
    format_timestamp,
    parse_json_object,
    parse_timestamp_ms,
)
from models.records import Alert, AlertKind, AlertStatus
from streams.catalog import Catalog, JourneyBreak, KeyMoment, format_duration
from streams.commands.publish import UnroutableLine, numbered_lines, route
from streams.core.sentiment import SentimentScorer
from streams.replay import OfflineMonitor, Role
from streams.settings import Topics

# `route` names a topic; with the roles as topic names it names the role.
ROLE_TOPICS = Topics(
    touchpoint_events="touchpoint_events",
    survey_answers="survey_answers",
    identity_links="identity_links",
)
ROLES: dict[str, Role] = {role: role for role in get_args(Role)}
TIME_FIELDS = ("occurred_at", "answered_at", "linked_at")


@dataclass(frozen=True, slots=True)
class Span:
    """Event time judged, [from_ms, to_ms), and the warm-up read before it."""

    from_ms: int
    to_ms: int
    warmup_ms: int

    @property
    def read_from_ms(self) -> int:
        return self.from_ms - self.warmup_ms


def default_warmup_ms(catalog: Catalog) -> int:
    """The longest look-back of the catalog: the first judged windows see all they need.

    A key moment looks back over its window and its baseline window; an EWMA baseline is
    ready after 1/alpha windows; silence is seen once `no_data_after` has passed; a
    customer's verdict counts the messaging window; a journey break's window holds attempts
    that began up to `within` before it; a consistency rule looks back over its window.
    """
    longest = [catalog.messaging.window_ms, catalog.scores.window_ms]
    longest += [journey.window_ms + journey.within_ms for journey in catalog.breaks]
    longest += [rule.window_ms for rule in catalog.consistency]
    for moment in catalog.key_moments:
        longest.append(moment.window_ms + _lookback_ms(moment))
        if moment.no_data_after_ms is not None:
            longest.append(moment.no_data_after_ms + moment.step_ms)
    return max(longest)


def _lookback_ms(moment: KeyMoment) -> int:
    relative = moment.relative
    if relative is None:
        return 0
    if relative.baseline_ms is None:
        return math.ceil(1 / relative.alpha) * moment.step_ms
    return relative.baseline_ms


def claimed_time(doc: dict[str, Any]) -> int | None:
    """The event time a record states, valid or not; None when it states none readable."""
    for name in TIME_FIELDS:
        if name in doc:
            try:
                return parse_timestamp_ms(doc[name], name)
            except InvalidRecord:
                return None
    return None


@dataclass
class RecordCounts:
    read: int = 0
    in_range: int = 0
    warmup: int = 0
    outside: int = 0
    identity_links: int = 0
    duplicates: int = 0
    invalid: Counter[str] = field(default_factory=Counter)

    def to_json(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "in_range": self.in_range,
            "warmup": self.warmup,
            "outside": self.outside,
            "identity_links": self.identity_links,
            "duplicates": self.duplicates,
            "invalid": sum(self.invalid.values()),
            "invalid_by_reason": dict(sorted(self.invalid.items())),
        }


class Backtest:
    """Takes records from a file or the topics, keeps those of the span, and judges them."""

    def __init__(self, catalog: Catalog, scorer: SentimentScorer, span: Span) -> None:
        self.catalog = catalog
        self.span = span
        self.monitor = OfflineMonitor(catalog, scorer)
        self.counts = RecordCounts()

    def add_line(self, line: bytes) -> None:
        """A JSON line of a file, routed by its fields as `cxmon publish` routes it."""
        self.counts.read += 1
        try:
            doc = parse_json_object(line)
        except InvalidRecord as exc:
            self.counts.invalid[exc.reason.value] += 1
            return
        try:
            topic, _ = route(doc, ROLE_TOPICS)
        except UnroutableLine:
            # Read from a topic, it would be refused for the id or time it lacks.
            if not self._outside(doc):
                self.counts.invalid[Reason.MISSING_FIELD.value] += 1
            return
        self._add(ROLES[topic], line, doc)

    def add_record(self, role: Role, value: bytes) -> None:
        """A record read from the input topic of `role`."""
        self.counts.read += 1
        try:
            doc = parse_json_object(value)
        except InvalidRecord as exc:
            self.counts.invalid[exc.reason.value] += 1
            return
        self._add(role, value, doc)

    def _add(self, role: Role, raw: bytes, doc: dict[str, Any]) -> None:
        if role == "identity_links":
            self.counts.identity_links += 1
        elif self._outside(doc):
            return
        self.monitor.feed(role, raw)

    def _outside(self, doc: dict[str, Any]) -> bool:
        """Counts the record by where its time falls; True when it is skipped."""
        at_ms = claimed_time(doc)
        if at_ms is None:
            return False  # refused for its time by the monitor
        if at_ms < self.span.read_from_ms or at_ms >= self.span.to_ms:
            self.counts.outside += 1
            return True
        if at_ms < self.span.from_ms:
            self.counts.warmup += 1
        else:
            self.counts.in_range += 1
        return False

    def report(self) -> Report:
        """Judge every window ending by `to`; the alerts of the span and their summary."""
        result = self.monitor.finish(until_ms=self.span.to_ms)
        refused = Counter(r.value for reasons in result.rejected.values() for r in reasons)
        counts = replace(
            self.counts, duplicates=result.duplicates, invalid=self.counts.invalid + refused
        )
        incidents = [i for i in group_incidents(result.alerts) if i.open_after(self.span.from_ms)]
        alerts = sorted(
            (alert for incident in incidents for alert in incident.transitions()),
            key=lambda a: (transition_ms(a), a.kind.value, a.subject, a.alert_id),
        )
        return Report(self.span, counts, alerts, summarize(self.catalog, incidents, self.span))


def count_lines(stream: IO[bytes]) -> int:
    """The records of a seekable JSON-lines file (its non-blank lines); the stream is rewound."""
    count = 0
    for _ in numbered_lines(stream):
        count += 1
    stream.seek(0)
    return count


def transition_ms(alert: Alert) -> int:
    """When a transition happened: a firing at its start, a resolve at its end."""
    if alert.status is AlertStatus.RESOLVED and alert.ends_at_ms is not None:
        return alert.ends_at_ms
    return alert.starts_at_ms


@dataclass
class Incident:
    """The transitions of one incident: one firing, and its resolve once it ended."""

    firing: Alert
    resolved: Alert | None = None

    def transitions(self) -> list[Alert]:
        return [self.firing] if self.resolved is None else [self.firing, self.resolved]

    @property
    def end_ms(self) -> int | None:
        return None if self.resolved is None else self.resolved.ends_at_ms

    def open_after(self, at_ms: int) -> bool:
        end = self.end_ms
        return end is None or end > at_ms

    def open_ms(self, span: Span) -> int:
        """How long it was open within the span; one still open counts to its end."""
        end = self.end_ms
        end = span.to_ms if end is None else min(end, span.to_ms)
        return max(0, end - max(self.firing.starts_at_ms, span.from_ms))


def group_incidents(alerts: Iterable[Alert]) -> list[Incident]:
    """Transitions paired by incident: the same fingerprint and start."""
    incidents: dict[tuple[str, int], Incident] = {}
    for alert in alerts:
        key = (alert.fingerprint, alert.starts_at_ms)
        if alert.status is AlertStatus.FIRING:
            incidents.setdefault(key, Incident(alert)).firing = alert
        elif key in incidents:
            incidents[key].resolved = alert
    return list(incidents.values())


@dataclass(frozen=True, slots=True)
class IncidentSummary:
    """What a group of incidents amounts to within the span."""

    incidents: int
    subjects: int
    open_at_end: int
    open_ms: int
    first_firing_ms: int | None
    last_firing_ms: int | None

    @classmethod
    def of(cls, incidents: list[Incident], span: Span) -> IncidentSummary:
        starts = [i.firing.starts_at_ms for i in incidents]
        return cls(
            incidents=len(incidents),
            subjects=len({i.firing.subject for i in incidents}),
            open_at_end=sum(1 for i in incidents if i.resolved is None),
            open_ms=sum(i.open_ms(span) for i in incidents),
            first_firing_ms=min(starts, default=None),
            last_firing_ms=max(starts, default=None),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "incidents": self.incidents,
            "subjects": self.subjects,
            "open_at_end": self.open_at_end,
            "open_ms": self.open_ms,
            "open": span_text(self.open_ms),
            "first_firing": _time(self.first_firing_ms),
            "last_firing": _time(self.last_firing_ms),
        }


@dataclass(frozen=True, slots=True)
class MomentSummary:
    moment: KeyMoment
    degraded: IncidentSummary
    no_data: IncidentSummary
    worst_observed: float | None

    def to_json(self) -> dict[str, Any]:
        moment = self.moment
        return {
            "key_moment": moment.id,
            "touchpoint": moment.touchpoint,
            "metric": moment.metric.value,
            "severity": moment.severity.value,
            "standard": moment.standard(),
            "degraded": self.degraded.to_json(),
            "worst_observed": self.worst_observed,
            "no_data": self.no_data.to_json(),
        }


@dataclass(frozen=True, slots=True)
class BreakSummary:
    journey: JourneyBreak
    broken: IncidentSummary
    worst_rate: float | None

    def to_json(self) -> dict[str, Any]:
        journey = self.journey
        return {
            "journey_break": journey.id,
            "within": format_duration(journey.within_ms),
            "max_rate": journey.max_rate,
            "severity": journey.severity.value,
            "broken": self.broken.to_json(),
            "worst_rate": self.worst_rate,
        }


@dataclass(frozen=True, slots=True)
class Summary:
    key_moments: list[MomentSummary]
    journey_breaks: list[BreakSummary]
    over_messaged: IncidentSummary
    breaches: dict[str, int]
    other_kinds: dict[str, IncidentSummary]

    def to_json(self) -> dict[str, Any]:
        return {
            "key_moments": [m.to_json() for m in self.key_moments],
            "journey_breaks": [b.to_json() for b in self.journey_breaks],
            "over_messaged": self.over_messaged.to_json() | {"breaches": self.breaches},
            "other_kinds": {kind: s.to_json() for kind, s in self.other_kinds.items()},
        }


def summarize(catalog: Catalog, incidents: list[Incident], span: Span) -> Summary:
    """Per key moment and journey break of the catalog, for the messaging policy, per other kind."""
    by_moment: dict[tuple[str, str], list[Incident]] = {}
    by_break: dict[str, list[Incident]] = {}
    over_messaged: list[Incident] = []
    others: dict[str, list[Incident]] = {}
    for incident in incidents:
        alert = incident.firing
        moment_id = alert.details.get("key_moment")
        if alert.kind is AlertKind.OVER_MESSAGED:
            over_messaged.append(incident)
        elif alert.kind in (AlertKind.KEY_MOMENT_DEGRADED, AlertKind.NO_DATA) and moment_id:
            by_moment.setdefault((str(moment_id), alert.kind.value), []).append(incident)
        elif alert.kind is AlertKind.JOURNEY_BREAK:
            by_break.setdefault(alert.subject, []).append(incident)
        else:
            others.setdefault(alert.kind.value, []).append(incident)
    moments = []
    for moment in catalog.key_moments:
        degraded = by_moment.get((moment.id, AlertKind.KEY_MOMENT_DEGRADED.value), [])
        observed = [a.observed for i in degraded for a in i.transitions()]
        worst = max if moment.worse_when_higher else min
        moments.append(
            MomentSummary(
                moment=moment,
                degraded=IncidentSummary.of(degraded, span),
                no_data=IncidentSummary.of(
                    by_moment.get((moment.id, AlertKind.NO_DATA.value), []), span
                ),
                worst_observed=worst(observed) if observed else None,
            )
        )
    journeys = []
    for journey in catalog.breaks:
        broken = by_break.get(journey.id, [])
        rates = [a.observed for i in broken for a in i.transitions()]
        journeys.append(
            BreakSummary(journey, IncidentSummary.of(broken, span), max(rates, default=None))
        )
    breaches: Counter[str] = Counter()
    for incident in over_messaged:
        breaches.update(str(b) for b in incident.firing.details.get("breaches", []))
    return Summary(
        key_moments=moments,
        journey_breaks=journeys,
        over_messaged=IncidentSummary.of(over_messaged, span),
        breaches=dict(sorted(breaches.items())),
        other_kinds={kind: IncidentSummary.of(others[kind], span) for kind in sorted(others)},
    )


@dataclass(frozen=True, slots=True)
class Report:
    span: Span
    counts: RecordCounts
    alerts: list[Alert]
    summary: Summary


def render_json(report: Report, catalog_name: str) -> bytes:
    """Every alert and the summary, as one JSON document; the same input, the same bytes."""
    span = report.span
    doc = {
        "catalog": catalog_name,
        "from": format_timestamp(span.from_ms),
        "to": format_timestamp(span.to_ms),
        "warmup": span_text(span.warmup_ms),
        "warmup_ms": span.warmup_ms,
        "records": report.counts.to_json(),
        "alerts": [orjson.loads(encode_alert(alert)) for alert in report.alerts],
        "summary": report.summary.to_json(),
    }
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"


def render_text(report: Report, catalog_name: str) -> str:
    """What a person reads: the span, the records, every transition, the summary tables."""
    span, counts = report.span, report.counts
    lines = [
        f"Backtest of {catalog_name} from {format_timestamp(span.from_ms)} "
        f"to {format_timestamp(span.to_ms)}, warm-up {span_text(span.warmup_ms)} "
        f"(from {format_timestamp(span.read_from_ms)})",
        "",
        f"Records: {counts.read:,} read; {counts.in_range:,} in range, {counts.warmup:,} "
        f"warm-up, {counts.outside:,} outside (skipped); {counts.identity_links:,} identity "
        f"links (all applied); {counts.duplicates:,} duplicates; "
        f"{sum(counts.invalid.values()):,} invalid" + _reasons(counts.invalid),
        "",
        f"Alerts: {len(report.alerts)} transitions",
    ]
    lines += [line for alert in report.alerts for line in alert_lines(alert, span)]
    lines += ["", *moment_table(report.summary, span)]
    if report.summary.journey_breaks:
        lines += ["", *break_table(report.summary, span)]
    over = report.summary.over_messaged
    breaches = ", ".join(f"{name} {count}" for name, count in report.summary.breaches.items())
    lines += [
        "",
        f"Messaging policy: {over.subjects} customers over-messaged, {over.incidents} incidents "
        f"({over.open_at_end} open at the end), {span_text(over.open_ms)} over the policy in "
        f"all; first firing {_time(over.first_firing_ms) or '-'}, last "
        f"{_time(over.last_firing_ms) or '-'}" + (f"; breaches: {breaches}" if breaches else ""),
    ]
    for kind, summary in report.summary.other_kinds.items():
        lines.append(
            f"{kind}: {summary.incidents} incidents on {summary.subjects} subjects "
            f"({summary.open_at_end} open at the end), {span_text(summary.open_ms)} open in all; "
            f"first firing {_time(summary.first_firing_ms)}, last {_time(summary.last_firing_ms)}"
        )
    return "\n".join(lines) + "\n"


def alert_lines(alert: Alert, span: Span) -> list[str]:
    """One transition: when, what, the figures behind it, and its summary."""
    status = alert.status.value.upper()
    at_ms = transition_ms(alert)
    head = (
        f"{format_timestamp(at_ms)}  {status:<8} {alert.severity.value:<8} "
        f"{alert.kind.value:<20} {alert.subject}"
    )
    if alert.status is AlertStatus.RESOLVED and alert.ends_at_ms is not None:
        head += (
            f"  (since {format_timestamp(alert.starts_at_ms)}, "
            f"{span_text(alert.ends_at_ms - alert.starts_at_ms)})"
        )
    elif at_ms < span.from_ms:
        head += "  (in the warm-up, still open at --from)"
    return [head, f"    {figures(alert)}", f"    {alert.summary}"]


def figures(alert: Alert) -> str:
    """The figures of any kind of alert: value and line, and whichever details it carries."""
    details = alert.details
    parts = [f"observed {alert.observed:.6g} vs threshold {alert.threshold:.6g}"]
    parts.append(f"window {alert.window}")
    if details.get("low") is not None or details.get("high") is not None:
        parts.append(f"interval {_number(details.get('low'))} to {_number(details.get('high'))}")
    if "baseline" in details:
        parts.append(f"baseline {_number(details['baseline'])}")
    if "samples" in details:
        parts.append(f"n {details['samples']}")
    if "gap_low" in details:
        # A channel against the rest of its stage, or the messaged cohort against the others.
        if "channel" in details:
            (group, own), (rest, other) = (details["channel"], "channel"), ("the rest", "rest")
        else:
            (group, own), (rest, other) = ("messaged", "messaged"), ("the others", "others")
        parts.append(
            f"{group} {_number(details[f'{own}_value'])} (n {details[f'{own}_samples']}) vs "
            f"{rest} {_number(details[f'{other}_value'])} (n {details[f'{other}_samples']}); "
            f"gap interval {_number(details['gap_low'])} to {_number(details['gap_high'])}"
        )
    if details.get("breaches"):
        parts.append(f"breaches {','.join(map(str, details['breaches']))}")
    return "; ".join(parts)


def moment_table(summary: Summary, span: Span) -> list[str]:
    header = (
        "key moment",
        "severity",
        "standard",
        "incidents",
        "open at end",
        "degraded",
        "first firing",
        "last firing",
        "worst",
        "no_data",
    )
    rows = [header]
    for m in summary.key_moments:
        d = m.degraded
        rows.append(
            (
                m.moment.id,
                m.moment.severity.value,
                m.moment.standard(),
                str(d.incidents),
                str(d.open_at_end),
                span_text(d.open_ms),
                _time(d.first_firing_ms) or "-",
                _time(d.last_firing_ms) or "-",
                _number(m.worst_observed),
                str(m.no_data.incidents),
            )
        )
    return titled_table(f"Key moments over {span_text(span.to_ms - span.from_ms)}:", rows)


def break_table(summary: Summary, span: Span) -> list[str]:
    rows = [
        (
            "journey break",
            "severity",
            "standard",
            "incidents",
            "open at end",
            "broken",
            "first firing",
            "last firing",
            "worst rate",
        )
    ]
    for b in summary.journey_breaks:
        broken = b.broken
        rows.append(
            (
                b.journey.id,
                b.journey.severity.value,
                f"rate above {b.journey.max_rate:g} within {format_duration(b.journey.within_ms)}",
                str(broken.incidents),
                str(broken.open_at_end),
                span_text(broken.open_ms),
                _time(broken.first_firing_ms) or "-",
                _time(broken.last_firing_ms) or "-",
                _number(b.worst_rate),
            )
        )
    return titled_table(f"Journey breaks over {span_text(span.to_ms - span.from_ms)}:", rows)


def titled_table(title: str, rows: Sequence[tuple[str, ...]]) -> list[str]:
    """Rows in columns as wide as their widest cell, under a title."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    table = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    return [title, *(line.rstrip() for line in table)]


def span_text(millis: int) -> str:
    """A length of time people read at a glance: 3d04h05m, 1h20m, 42m10s, 0s."""
    seconds = millis // 1000
    days, seconds = divmod(seconds, 86_400)
    hours, seconds = divmod(seconds, 3_600)
    minutes, seconds = divmod(seconds, 60)
    if days:
        return f"{days}d{hours:02d}h{minutes:02d}m"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{seconds:02d}s" if seconds else f"{minutes}m"
    return f"{seconds}s"


def _reasons(invalid: Counter[str]) -> str:
    if not invalid:
        return ""
    return " (" + ", ".join(f"{reason} {invalid[reason]:,}" for reason in sorted(invalid)) + ")"


def _time(millis: int | None) -> str | None:
    return None if millis is None else format_timestamp(millis)


def _number(value: object) -> str:
    return f"{value:.6g}" if isinstance(value, int | float) else "-"
