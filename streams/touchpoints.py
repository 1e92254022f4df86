"""Event-time hopping windows of one touchpoint and the key-moment verdicts taken on them."""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Any

import orjson

from models.decode import format_timestamp
from models.records import Alert, AlertKind, AlertStatus
from streams.alerts import Incident, fingerprint
from streams.catalog import Catalog, KeyMoment, ScoreMetric, format_duration
from streams.scores import Tally

METRIC_LABELS = {
    ScoreMetric.NPS: "NPS",
    ScoreMetric.CSAT: "CSAT",
    ScoreMetric.CES: "CES",
    ScoreMetric.SENTIMENT: "comment sentiment",
    ScoreMetric.FAILURE_RATE: "failure rate",
    ScoreMetric.ABANDON_RATE: "abandon rate",
    ScoreMetric.DURATION_MS: "p95 waiting time (ms)",
}


@dataclass(slots=True)
class MomentState:
    evaluated_until_ms: int | None = None
    incident_start_ms: int | None = None
    last_value: float | None = None
    last_samples: int = 0


@dataclass(slots=True)
class TouchpointState:
    """Buckets of tallies keyed by their event-time start, and where each key moment stands."""

    buckets: dict[int, Tally] = field(default_factory=dict)
    watermark_ms: int | None = None
    moments: dict[str, MomentState] = field(default_factory=dict)
    judged_to_ms: int | None = None

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "b": [[start, tally.to_wire()] for start, tally in self.buckets.items()],
                "w": self.watermark_ms,
                "j": self.judged_to_ms,
                "m": {
                    name: [m.evaluated_until_ms, m.incident_start_ms, m.last_value, m.last_samples]
                    for name, m in self.moments.items()
                },
            }
        )

    @classmethod
    def decode(cls, raw: bytes) -> TouchpointState:
        doc: dict[str, Any] = orjson.loads(raw)
        return cls(
            buckets={start: Tally.from_wire(wire) for start, wire in doc["b"]},
            watermark_ms=doc["w"],
            moments={name: MomentState(*fields) for name, fields in doc["m"].items()},
            judged_to_ms=doc["j"],
        )


@dataclass(frozen=True, slots=True)
class Verdict:
    """One key moment judged on one closed window."""

    moment: KeyMoment
    window_end_ms: int
    value: float | None
    samples: int

    @property
    def degraded(self) -> bool | None:
        """None when too few samples stand behind the value to judge."""
        if self.value is None or self.samples < self.moment.min_samples:
            return None
        return self.moment.breaks(self.value)


class TouchpointWindows:
    """The pure rules for one touchpoint under one catalog; state lives in TouchpointState."""

    def __init__(self, catalog: Catalog, touchpoint: str) -> None:
        self.touchpoint = touchpoint
        self.moments = catalog.key_moments_for(touchpoint)
        self.bucket_ms = catalog.bucket_ms(touchpoint)
        self.retention_ms = catalog.retention_ms(touchpoint)
        self.grace_ms = catalog.scores.grace_ms
        self.scores = catalog.scores
        self.stage = catalog.touchpoints.get(touchpoint)

    def bucket_of(self, occurred_at_ms: int) -> int:
        return occurred_at_ms - occurred_at_ms % self.bucket_ms

    def add(self, state: TouchpointState, bucket_start: int, tally: Tally, latest_ms: int) -> bool:
        """Merge a partial tally; False when its bucket is older than any window still open."""
        if state.judged_to_ms is not None and bucket_start < state.judged_to_ms - self.retention_ms:
            return False
        existing = state.buckets.get(bucket_start)
        if existing is None:
            state.buckets[bucket_start] = tally
        else:
            existing.merge(tally)
        if state.watermark_ms is None or latest_ms > state.watermark_ms:
            state.watermark_ms = latest_ms
        return True

    def advance(self, state: TouchpointState, watermark_ms: int | None = None) -> list[Alert]:
        """Judge every window closed by the watermark, in order, and drop expired buckets.

        The watermark is how far event time has got on every input; without one, the
        touchpoint's own newest event stands in for it.
        """
        watermark = state.watermark_ms if watermark_ms is None else watermark_ms
        if watermark is None or (state.judged_to_ms is not None and watermark < state.judged_to_ms):
            return []
        state.judged_to_ms = watermark
        closed_until = watermark - self.grace_ms
        alerts: list[Alert] = []
        starts = sorted(state.buckets)
        for moment in self.moments:
            progress = state.moments.setdefault(moment.id, MomentState())
            for verdict in self._verdicts(moment, progress, starts, state.buckets, closed_until):
                alert = self._transition(progress, verdict)
                if alert is not None:
                    alerts.append(alert)
        horizon = watermark - self.retention_ms
        for start in starts:
            if start + self.bucket_ms > horizon:
                break
            del state.buckets[start]
        return alerts

    def latest_window(self, state: TouchpointState) -> tuple[int, Tally] | None:
        """The default scoring window that closed last, for dashboards."""
        if state.judged_to_ms is None:
            return None
        step = self.scores.step_ms
        end = (state.judged_to_ms - self.grace_ms) // step * step
        return end, self._window_tally(
            state.buckets, sorted(state.buckets), end, self.scores.window_ms
        )

    def _verdicts(
        self,
        moment: KeyMoment,
        progress: MomentState,
        starts: list[int],
        buckets: dict[int, Tally],
        closed_until: int,
    ) -> list[Verdict]:
        if not starts:
            return []
        step = moment.step_ms
        last_end = closed_until // step * step
        first_possible = (starts[0] // step + 1) * step
        end = (
            first_possible
            if progress.evaluated_until_ms is None
            else progress.evaluated_until_ms + step
        )
        end = max(end, first_possible)
        verdicts: list[Verdict] = []
        while end <= last_end:
            lower = bisect_left(starts, end - moment.window_ms)
            if lower == len(starts):
                break
            if starts[lower] >= end:
                # Nothing in this window: jump to the first window that holds the next bucket,
                # so a replay across an idle week costs nothing per empty step.
                end = (starts[lower] // step + 1) * step
                continue
            tally = self._window_tally(buckets, starts, end, moment.window_ms)
            verdicts.append(
                Verdict(moment, end, tally.value(moment.metric), tally.samples(moment.metric))
            )
            end += step
        if last_end >= (progress.evaluated_until_ms or 0):
            progress.evaluated_until_ms = last_end
        return verdicts

    @staticmethod
    def _window_tally(buckets: dict[int, Tally], starts: list[int], end: int, length: int) -> Tally:
        total = Tally()
        for index in range(bisect_left(starts, end - length), bisect_left(starts, end)):
            total.merge(buckets[starts[index]])
        return total

    def _transition(self, progress: MomentState, verdict: Verdict) -> Alert | None:
        progress.last_value = verdict.value
        progress.last_samples = verdict.samples
        degraded = verdict.degraded
        if degraded is None:
            return None
        firing = progress.incident_start_ms is not None
        if degraded and not firing:
            progress.incident_start_ms = verdict.window_end_ms
            return self._alert(verdict, AlertStatus.FIRING, verdict.window_end_ms)
        if firing and not degraded:
            assert progress.incident_start_ms is not None
            alert = self._alert(verdict, AlertStatus.RESOLVED, progress.incident_start_ms)
            progress.incident_start_ms = None
            return alert
        return None

    def _alert(self, verdict: Verdict, status: AlertStatus, starts_at_ms: int) -> Alert:
        moment = verdict.moment
        assert verdict.value is not None
        window = format_duration(moment.window_ms)
        label = METRIC_LABELS[moment.metric]
        if status is AlertStatus.FIRING:
            summary = (
                f"Key moment {moment.touchpoint} degraded: {label} {verdict.value:.4g} over the "
                f"last {window} ({verdict.samples} samples) is {moment.standard()}."
            )
        else:
            summary = (
                f"Key moment {moment.touchpoint} recovered: {label} {verdict.value:.4g} over the "
                f"last {window} ({verdict.samples} samples) meets its standard again."
            )
        incident = Incident(
            kind=AlertKind.KEY_MOMENT_DEGRADED,
            subject=moment.touchpoint,
            fingerprint=fingerprint(
                AlertKind.KEY_MOMENT_DEGRADED, moment.touchpoint, moment.metric
            ),
            severity=moment.severity,
            starts_at_ms=starts_at_ms,
        )
        return incident.transition(
            status,
            at_ms=verdict.window_end_ms,
            summary=summary,
            observed=round(verdict.value, 6),
            threshold=moment.threshold,
            window=window,
            details={
                "key_moment": moment.id,
                "metric": moment.metric.value,
                "samples": verdict.samples,
                "min_samples": moment.min_samples,
                "window_end": format_timestamp(verdict.window_end_ms),
                "stage": self.stage.value if self.stage else None,
            },
        )
