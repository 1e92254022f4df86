"""Event-time hopping windows of one touchpoint and the key-moment verdicts taken on them.

A verdict is taken on every closed window of a key moment, in event-time order:

* the moment's line is its fixed standard, or its baseline (the longer window before the
  judged one, or an EWMA of past windows) made worse by `drop`/`rise`;
* it breaches when the window's value is past the line, or with `confidence` when the whole
  interval is (a value whose interval straddles the line is no evidence either way), or,
  with a drift detector, when the CUSUM or EWMA chart of the steps reaches its limit;
* an incident fires once breaches have lasted `for` and resolves once the value has been
  back on the good side of `recover_at` for `keep_firing_for`; while it is open its
  baseline is held, so a lasting breakdown does not become the new normal;
* a moment whose metric gets no samples for `no_data_after` raises `no_data` (its incident
  stays open: silence is not recovery) and resolves it when data returns.

Everything depends on event time and the buckets alone, never on how often `advance` is
called, so a replay in one call equals a live run advanced batch by batch.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass, field, fields
from typing import Any

import orjson

from models.decode import format_timestamp
from models.records import Alert, AlertKind, AlertStatus
from streams.catalog import Catalog, Detector, KeyMoment, ScoreMetric, format_duration
from streams.core.alerts import Incident, figure, fingerprint
from streams.core.scores import Tally
from streams.core.stats import Estimate, cusum, deviation, ewma, ewma_chart_limit, z_score

METRIC_LABELS = {
    ScoreMetric.NPS: "NPS",
    ScoreMetric.CSAT: "CSAT",
    ScoreMetric.CES: "CES",
    ScoreMetric.SENTIMENT: "comment sentiment",
    ScoreMetric.FAILURE_RATE: "failure rate",
    ScoreMetric.ABANDON_RATE: "abandon rate",
    ScoreMetric.DURATION_MS: "p95 waiting time (ms)",
}
DETECTOR_LABELS = {Detector.CUSUM: "CUSUM", Detector.EWMA_CHART: "EWMA chart"}
# The interval an alert shows when its key moment declares no confidence of its own.
SHOWN_CONFIDENCE = 0.95
# A span longer than this many buckets (a week-long baseline) is summed from cached blocks.
BLOCK_BUCKETS = 32


@dataclass(slots=True)
class MomentState:
    evaluated_until_ms: int | None = None
    incident_start_ms: int | None = None
    last_value: float | None = None
    last_samples: int = 0
    breaching_since_ms: int | None = None  # first window of the current run of breaches
    recovered_since_ms: int | None = None  # first window of the current run of recoveries
    baseline: float | None = None  # the EWMA, or the baseline an open incident holds
    baseline_count: int = 0  # windows in the EWMA, or samples in the baseline window
    drift: float = 0.0  # the CUSUM or EWMA-chart statistic
    last_data_ms: int | None = None  # end of the newest step that held samples
    no_data_start_ms: int | None = None  # start of an open no_data incident


MOMENT_FIELDS = tuple(f.name for f in fields(MomentState))


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
                    name: [getattr(m, attribute) for attribute in MOMENT_FIELDS]
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
            # Positional: a state written before fields were added decodes with their defaults.
            moments={name: MomentState(*values) for name, values in doc["m"].items()},
            judged_to_ms=doc["j"],
        )


class Spans:
    """Tallies over spans of one touchpoint's buckets, during one `advance`.

    A span of more than BLOCK_BUCKETS buckets merges cached, aligned blocks and its two
    ragged ends rather than every bucket, so a week-long baseline judged at every step of
    a replayed week costs about a hundred merges per step, not two thousand.
    """

    def __init__(self, buckets: dict[int, Tally], bucket_ms: int) -> None:
        self.buckets = buckets
        self.starts = sorted(buckets)
        self.block_ms = bucket_ms * BLOCK_BUCKETS
        self.blocks: dict[int, Tally] = {}

    def first_from(self, at_ms: int) -> int | None:
        """The start of the first bucket at or after `at_ms`."""
        index = bisect_left(self.starts, at_ms)
        return self.starts[index] if index < len(self.starts) else None

    def tally(self, start_ms: int, end_ms: int) -> Tally:
        total = Tally()
        first_block = -(-start_ms // self.block_ms) * self.block_ms
        end_block = end_ms // self.block_ms * self.block_ms
        if end_block <= first_block:
            self._merge(total, start_ms, end_ms)
            return total
        self._merge(total, start_ms, first_block)
        for block in range(first_block, end_block, self.block_ms):
            if block not in self.blocks:
                self.blocks[block] = Tally()
                self._merge(self.blocks[block], block, block + self.block_ms)
            total.merge(self.blocks[block])
        self._merge(total, end_block, end_ms)
        return total

    def _merge(self, total: Tally, start_ms: int, end_ms: int) -> None:
        starts = self.starts
        for index in range(bisect_left(starts, start_ms), bisect_left(starts, end_ms)):
            total.merge(self.buckets[starts[index]])


@dataclass(frozen=True, slots=True)
class Reading:
    """One key moment on one closed window: the figures behind its verdict and its alerts."""

    moment: KeyMoment
    window_end_ms: int
    estimate: Estimate | None
    confidence: float
    z: float
    baseline: float | None
    baseline_count: int
    line: float | None  # None while a relative standard's baseline is not ready
    recover_line: float | None
    detractors: Estimate | None

    @property
    def enough(self) -> bool:
        """True when at least min_samples stand behind the value."""
        return self.estimate is not None and self.estimate.samples >= self.moment.min_samples


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
        touchpoint's own newest event stands in for it. A touchpoint that has gone quiet
        must still be advanced with the watermark for its `no_data` alerts to fire.
        """
        watermark = state.watermark_ms if watermark_ms is None else watermark_ms
        if watermark is None or (state.judged_to_ms is not None and watermark < state.judged_to_ms):
            return []
        state.judged_to_ms = watermark
        closed_until = watermark - self.grace_ms
        spans = Spans(state.buckets, self.bucket_ms)
        alerts: list[Alert] = []
        for moment in self.moments:
            progress = state.moments.setdefault(moment.id, MomentState())
            alerts += self._judge(moment, progress, spans, closed_until)
        horizon = watermark - self.retention_ms
        for start in spans.starts:
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
        spans = Spans(state.buckets, self.bucket_ms)
        return end, spans.tally(end - self.scores.window_ms, end)

    def _judge(
        self, moment: KeyMoment, progress: MomentState, spans: Spans, closed_until: int
    ) -> list[Alert]:
        step = moment.step_ms
        last_end = closed_until // step * step
        if progress.evaluated_until_ms is not None:
            end = progress.evaluated_until_ms + step
        elif spans.starts:
            end = (spans.starts[0] // step + 1) * step
        else:
            return []
        alerts: list[Alert] = []
        while end <= last_end:
            first = spans.first_from(end - moment.window_ms)
            if first is None or first >= end:
                # Nothing in this window: jump to the first window that holds the next bucket,
                # so a replay across an idle week costs nothing per empty step.
                resume = last_end + step if first is None else (first // step + 1) * step
                alerts += self._quiet(moment, progress, min(resume - step, last_end))
                end = resume
                continue
            alerts += self._window(moment, progress, spans, end)
            end += step
        if last_end >= (progress.evaluated_until_ms or 0):
            progress.evaluated_until_ms = last_end
        return alerts

    def _quiet(self, moment: KeyMoment, progress: MomentState, until_ms: int) -> list[Alert]:
        """Windows up to `until_ms` hold no bucket at all: no verdict, and the holds restart."""
        progress.breaching_since_ms = None
        progress.recovered_since_ms = None
        return self._silence(moment, progress, until_ms)

    def _window(
        self, moment: KeyMoment, progress: MomentState, spans: Spans, end: int
    ) -> list[Alert]:
        alerts: list[Alert] = []
        newest = None
        if moment.drift is not None or moment.no_data_after_ms is not None:
            # The newest step alone: steps do not overlap, so drift statistics see each
            # answer once, and silence is measured step by step.
            newest = spans.tally(end - moment.step_ms, end)
        if moment.no_data_after_ms is not None:
            assert newest is not None
            alerts += self._data(moment, progress, newest.samples(moment.metric) > 0, end)
        reading = self._read(moment, progress, spans, end)
        alert = self._verdict(progress, reading, newest)
        if alert is not None:
            alerts.append(alert)
        return alerts

    def _read(self, moment: KeyMoment, progress: MomentState, spans: Spans, end: int) -> Reading:
        confidence = moment.confidence or SHOWN_CONFIDENCE
        z = z_score(confidence)
        window = spans.tally(end - moment.window_ms, end)
        estimate = window.estimate(moment.metric, z)
        progress.last_value = None if estimate is None else estimate.value
        progress.last_samples = window.samples(moment.metric)
        baseline, ready = self._baseline(moment, progress, spans, end)
        return Reading(
            moment=moment,
            window_end_ms=end,
            estimate=estimate,
            confidence=confidence,
            z=z,
            baseline=baseline,
            baseline_count=progress.baseline_count,
            line=moment.line(baseline) if ready or moment.relative is None else None,
            recover_line=moment.recover_line(baseline),
            detractors=window.detractor_share(z) if moment.metric is ScoreMetric.NPS else None,
        )

    @staticmethod
    def _baseline(
        moment: KeyMoment, progress: MomentState, spans: Spans, end: int
    ) -> tuple[float | None, bool]:
        """The baseline in force for the window ending at `end`, and whether it may judge."""
        relative = moment.relative
        if relative is None:
            return None, False
        if relative.baseline_ms is None:
            # An EWMA is only as good as the windows in it: wait for about 1/alpha of them.
            return progress.baseline, progress.baseline_count >= math.ceil(1 / relative.alpha)
        if progress.incident_start_ms is None:
            start = end - moment.window_ms
            tally = spans.tally(start - relative.baseline_ms, start)
            progress.baseline = tally.value(moment.metric)
            progress.baseline_count = tally.samples(moment.metric)
        return progress.baseline, progress.baseline_count >= moment.min_samples

    def _verdict(
        self, progress: MomentState, reading: Reading, newest: Tally | None
    ) -> Alert | None:
        moment, end = reading.moment, reading.window_end_ms
        if progress.incident_start_ms is None:
            breach = self._breach(progress, reading, newest)
            if not breach:
                progress.breaching_since_ms = None
                if reading.enough:
                    self._learn(moment, progress, reading)
                return None
            if progress.breaching_since_ms is None:
                progress.breaching_since_ms = end
            if end - progress.breaching_since_ms < moment.for_ms:
                return None
            progress.incident_start_ms = progress.breaching_since_ms
            return self._alert(reading, AlertStatus.FIRING, progress)
        recover_line = reading.recover_line
        if (
            reading.estimate is None
            or not reading.enough
            or recover_line is None
            or moment.worse(reading.estimate.value, recover_line)
        ):
            progress.recovered_since_ms = None
            return None
        if progress.recovered_since_ms is None:
            progress.recovered_since_ms = end
        if end - progress.recovered_since_ms < moment.keep_firing_for_ms:
            return None
        alert = self._alert(reading, AlertStatus.RESOLVED, progress)
        progress.incident_start_ms = None
        progress.breaching_since_ms = None
        progress.recovered_since_ms = None
        progress.drift = 0.0
        return alert

    def _breach(self, progress: MomentState, reading: Reading, newest: Tally | None) -> bool | None:
        """Whether the evidence says degraded; None when too few samples or no baseline yet."""
        moment, estimate, line = reading.moment, reading.estimate, reading.line
        if estimate is None or not reading.enough or line is None:
            return None
        drift = moment.drift
        if drift is None:
            if moment.confidence is None:
                return moment.worse(estimate.value, line)
            # The whole interval must lie past the line: its nearest bound must be past it.
            nearest = estimate.low if moment.worse_when_higher else estimate.high
            return moment.worse(nearest, line)
        assert newest is not None
        samples = newest.samples(moment.metric)
        step_value = newest.value(moment.metric)
        if samples and step_value is not None:
            error = estimate.spread(reading.z) / math.sqrt(samples)
            step = deviation(step_value, line, error, moment.worse_when_higher)
            if drift.detector is Detector.CUSUM:
                progress.drift = cusum(progress.drift, step, drift.slack)
            else:
                progress.drift = ewma(progress.drift, step, drift.smoothing)
        return progress.drift >= drift_limit(moment)

    @staticmethod
    def _learn(moment: KeyMoment, progress: MomentState, reading: Reading) -> None:
        """An EWMA baseline learns only from sound windows outside any breach or incident."""
        relative = moment.relative
        if relative is None or relative.baseline_ms is not None or reading.estimate is None:
            return
        progress.baseline = ewma(progress.baseline, reading.estimate.value, relative.alpha)
        progress.baseline_count += 1

    def _data(
        self, moment: KeyMoment, progress: MomentState, has_data: bool, end: int
    ) -> list[Alert]:
        if not has_data:
            return self._silence(moment, progress, end)
        alerts: list[Alert] = []
        if progress.no_data_start_ms is not None:
            assert progress.last_data_ms is not None
            silent = end - moment.step_ms - progress.last_data_ms
            alerts.append(self._no_data_alert(moment, progress, AlertStatus.RESOLVED, end, silent))
            progress.no_data_start_ms = None
        progress.last_data_ms = end
        return alerts

    def _silence(self, moment: KeyMoment, progress: MomentState, until_ms: int) -> list[Alert]:
        """A no_data incident opens at the step end `no_data_after` past the newest data."""
        after = moment.no_data_after_ms
        if after is None or progress.last_data_ms is None or progress.no_data_start_ms is not None:
            return []
        due = progress.last_data_ms + after
        if due > until_ms:
            return []
        progress.no_data_start_ms = due
        return [self._no_data_alert(moment, progress, AlertStatus.FIRING, due, after)]

    def _no_data_alert(
        self,
        moment: KeyMoment,
        progress: MomentState,
        status: AlertStatus,
        at_ms: int,
        silent_ms: int,
    ) -> Alert:
        assert progress.no_data_start_ms is not None
        assert progress.last_data_ms is not None
        assert moment.no_data_after_ms is not None
        label = METRIC_LABELS[moment.metric]
        last_data = format_timestamp(progress.last_data_ms)
        if status is AlertStatus.FIRING:
            summary = (
                f"Key moment {moment.touchpoint} has had no {label} data for "
                f"{format_duration(silent_ms)}: its last step with data ended at {last_data}."
            )
        else:
            summary = (
                f"Key moment {moment.touchpoint} has {label} data again, after "
                f"{format_duration(silent_ms)} without."
            )
        incident = moment_incident(AlertKind.NO_DATA, moment, progress.no_data_start_ms)
        return incident.transition(
            status,
            at_ms=at_ms,
            summary=summary,
            observed=float(silent_ms),
            threshold=float(moment.no_data_after_ms),
            window=format_duration(moment.no_data_after_ms),
            details={
                "key_moment": moment.id,
                "metric": moment.metric.value,
                "last_data": last_data,
                "window_end": format_timestamp(at_ms),
                "stage": self.stage.value if self.stage else None,
            },
        )

    def _alert(self, reading: Reading, status: AlertStatus, progress: MomentState) -> Alert:
        moment, estimate, line = reading.moment, reading.estimate, reading.line
        assert estimate is not None
        assert line is not None
        assert progress.incident_start_ms is not None
        window = format_duration(moment.window_ms)
        figures = f"{METRIC_LABELS[moment.metric]} {estimate.value:.4g}"
        if moment.confidence is not None:
            figures += (
                f" ({reading.confidence:.0%} interval {estimate.low:.4g} to {estimate.high:.4g})"
            )
        details: dict[str, Any] = {
            "key_moment": moment.id,
            "metric": moment.metric.value,
            "samples": estimate.samples,
            "min_samples": moment.min_samples,
            "window_end": format_timestamp(reading.window_end_ms),
            "stage": self.stage.value if self.stage else None,
            "value": figure(estimate.value),
            "low": figure(estimate.low),
            "high": figure(estimate.high),
            "confidence": reading.confidence,
            "baseline": figure(reading.baseline),
            "recover_at": figure(reading.recover_line),
            "detector": moment.detector.value,
        }
        relative = moment.relative
        if relative is not None:
            details["baseline_window"] = relative.baseline_name()
            count = "baseline_windows" if relative.baseline_ms is None else "baseline_samples"
            details[count] = reading.baseline_count
        if reading.detractors is not None:
            details["detractor_share"] = figure(reading.detractors.value)
            details["detractor_low"] = figure(reading.detractors.low)
            details["detractor_high"] = figure(reading.detractors.high)
        if status is AlertStatus.FIRING:
            rule = moment.standard()
            if relative is not None:
                assert reading.baseline is not None
                side = "above" if moment.worse_when_higher else "below"
                rule = f"{side} {line:.4g}, {rule} of {reading.baseline:.4g}"
            if moment.drift is not None:
                limit = drift_limit(moment)
                details["statistic"] = figure(progress.drift)
                details["limit"] = figure(limit)
                rule = (
                    f"drifting {rule}: its {DETECTOR_LABELS[moment.drift.detector]} reached "
                    f"{progress.drift:.3g}, at or over its limit {limit:.3g}"
                )
            elif moment.confidence is not None:
                rule = f"{rule} with {reading.confidence:.0%} confidence"
            summary = (
                f"Key moment {moment.touchpoint} degraded: {figures} over the last {window} "
                f"({estimate.samples} samples) is {rule}."
            )
            ends_at_ms = reading.window_end_ms
        else:
            assert progress.recovered_since_ms is not None
            assert reading.recover_line is not None
            back = "meets its standard again"
            if moment.recover_at is not None:
                side = "at or below" if moment.worse_when_higher else "at or above"
                back = f"is back {side} its recover level {reading.recover_line:.4g}"
            summary = (
                f"Key moment {moment.touchpoint} recovered: {figures} over the last {window} "
                f"({estimate.samples} samples) {back}."
            )
            ends_at_ms = progress.recovered_since_ms
        incident = moment_incident(
            AlertKind.KEY_MOMENT_DEGRADED, moment, progress.incident_start_ms
        )
        return incident.transition(
            status,
            at_ms=ends_at_ms,
            summary=summary,
            observed=round(estimate.value, 6),
            threshold=line,
            window=window,
            details=details,
        )


def moment_incident(kind: AlertKind, moment: KeyMoment, starts_at_ms: int) -> Incident:
    """One incident of a key moment: per (kind, touchpoint, metric), so standards differ."""
    return Incident(
        kind=kind,
        subject=moment.touchpoint,
        fingerprint=fingerprint(kind, moment.touchpoint, moment.metric),
        severity=moment.severity,
        starts_at_ms=starts_at_ms,
    )


def drift_limit(moment: KeyMoment) -> float:
    """The level the moment's drift statistic must reach to count as a breach."""
    drift = moment.drift
    assert drift is not None
    if drift.detector is Detector.CUSUM:
        return drift.limit
    return ewma_chart_limit(drift.limit, drift.smoothing)


class WindowsByTouchpoint(dict[str, TouchpointWindows]):
    """Each touchpoint's windows, built from the catalog the first time they are asked for."""

    def __init__(self, catalog: Catalog) -> None:
        super().__init__()
        self.catalog = catalog

    def __missing__(self, touchpoint: str) -> TouchpointWindows:
        windows = self[touchpoint] = TouchpointWindows(self.catalog, touchpoint)
        return windows
