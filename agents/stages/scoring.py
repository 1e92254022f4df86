"""The scoring stage: rolling windows per touchpoint, key moments, and the gap rules.

Its input is the partial tallies the ingest stage folds (and, with fatigue rules, the
cohort tallies of the frequency stage), keyed by subject. Each subject's state is judged
whenever its partition's watermark moves on, whether new tallies came for it or not.
"""

from __future__ import annotations

from typing import Any, cast

from faust.types import TP

from agents import metrics
from agents.stages.wiring import Wiring, partition_of
from agents.streaming import PartitionedState
from streams.catalog import Catalog, ScoreMetric
from streams.core.consistency import stage_rules
from streams.core.fatigue import Cohorts
from streams.core.gaps import GapRules, RulesState
from streams.core.ingest import FATIGUE_SUBJECT, TouchpointPartial, is_gap_subject, stage_subject
from streams.core.touchpoints import TouchpointState, TouchpointWindows, WindowsByTouchpoint
from streams.state.delivery import Applied, unwrap, wrap


class Scoring:
    """Touchpoint windows and gap rules by subject, judged as event time moves on."""

    def __init__(self, wiring: Wiring) -> None:
        self.wiring = wiring
        topology, catalog = wiring.topology, wiring.core.catalog
        self.topology, self.core, self.partitions = topology, wiring.core, wiring.partitions
        self.windows = PartitionedState(topology.touchpoint_windows)
        self.touchpoint_windows = WindowsByTouchpoint(catalog)
        self.progress = wiring.progress(
            topology.touchpoint_events,
            topology.survey_answers,
            *([topology.customer_messages] if wiring.fatigue else []),
        )
        self.judged_to: dict[int, int] = {}
        self.watched = frozenset(catalog.touchpoints) | {m.touchpoint for m in catalog.key_moments}
        self.exported_scores: set[tuple[str, ScoreMetric]] = set()
        self.gap_rules = gap_subjects(catalog)
        self.shown_groups: dict[tuple[str, str], set[str]] = {}  # by subject and rule
        # Judged whenever event time moves on, whether new records came for them or not.
        self.judged_every_step = wiring.by_partition(
            {m.touchpoint for m in catalog.key_moments} | set(self.gap_rules)
        )

    def judged_to_everywhere(self) -> int | None:
        """The event time every partition of this worker has been judged to."""
        return min(self.judged_to.values(), default=None)

    async def score_touchpoints(self) -> None:
        await self.wiring.judge_by_subject(
            self.topology.touchpoint_partials,
            "score",
            progress=self.progress,
            decode=TouchpointPartial.decode,
            subject_of=lambda p: p.touchpoint,
            judge=self._score_partition,
        )

    async def _score_partition(
        self, partition: int, by_touchpoint: dict[str, list[TouchpointPartial]]
    ) -> None:
        watermark = self.progress[partition].watermark()
        advanced = watermark is not None and watermark > self.judged_to.get(partition, -1)
        if advanced:
            assert watermark is not None
            self.judged_to[partition] = watermark
            metrics.EVENT_TIME_JUDGED.set(min(self.judged_to.values()) / 1000)
        due = set(by_touchpoint)
        if advanced:
            due.update(self.judged_every_step.get(partition, ()))
        for subject in sorted(due):
            partials = by_touchpoint.get(subject, [])
            if subject in self.gap_rules:
                await self._judge_gaps(subject, partition, partials, watermark)
            elif is_gap_subject(subject):
                continue  # tallied under a catalog that had the rule; this one has not
            else:
                await self._score(subject, partition, partials, watermark)

    def _new_partials(
        self, key: bytes, partials: list[TouchpointPartial]
    ) -> tuple[Applied, bytes | None, list[TouchpointPartial]]:
        """A subject's stored state, and the partials it has not taken in yet."""
        raw = self.windows.get(key)
        applied, body = (Applied(), None) if raw is None else unwrap(raw)
        # Delivered again after a crash or a rebalance: already counted.
        fresh = [p for p in partials if applied.take(p.source, p.last_offset)]
        return applied, body, fresh

    async def _score(
        self,
        touchpoint: str,
        partition: int,
        partials: list[TouchpointPartial],
        watermark: int | None,
    ) -> None:
        key = touchpoint.encode()
        applied, body, fresh = self._new_partials(key, partials)
        if body is None and not partials:
            return
        state = TouchpointState() if body is None else TouchpointState.decode(body)
        windows = self.touchpoint_windows[touchpoint]
        for partial in fresh:
            for bucket in partial.buckets:
                if not windows.add(state, bucket.start_ms, bucket.tally, bucket.latest_ms):
                    metrics.LATE_RECORDS.inc(bucket.tally.records)
        if watermark is not None:
            for alert in windows.advance(state, watermark):
                await self.wiring.emit(alert)
        self.windows.put(partition, key, wrap(applied, state.encode()))
        if touchpoint in self.watched:
            self._export_scores(touchpoint, windows, state)
        for moment in self.core.catalog.key_moments_for(touchpoint):
            # From the table, not from transitions: a worker taking the partition over
            # after a rebalance exports the incident it restored.
            progress = state.moments.get(moment.id)
            open_incident = progress is not None and progress.incident_start_ms is not None
            metrics.set_key_moment(moment, degraded=open_incident)

    async def _judge_gaps(
        self,
        subject: str,
        partition: int,
        partials: list[TouchpointPartial],
        watermark: int | None,
    ) -> None:
        """Gap rules: a journey stage's channels each against the rest (consistency), or
        the messaged cohort against the others (fatigue)."""
        key = subject.encode()
        applied, body, fresh = self._new_partials(key, partials)
        if body is None and not partials:
            return
        state = RulesState() if body is None else RulesState.decode(body)
        rules = self.gap_rules[subject]
        for partial in fresh:
            for bucket in partial.buckets:
                assert bucket.channel is not None
                if not rules.add(state, bucket.start_ms, bucket.channel, bucket.tally):
                    metrics.LATE_RECORDS.inc(bucket.tally.records)
        if watermark is not None:
            closed = watermark - self.core.catalog.scores.grace_ms
            for detector, judged in rules.advance(state, closed):
                for alert in judged.alerts:
                    await self.wiring.emit(alert)
                shown_key = (subject, detector.rule.id)
                shown = self.shown_groups.get(shown_key)
                # A worker that has just taken the subject over shows the incidents it restored.
                if judged.latest is not None or shown is None:
                    incidents = state.rules[detector.rule.id].incidents
                    self.shown_groups[shown_key] = metrics.export_gaps(
                        detector, judged.latest or (), incidents, shown or ()
                    )
        self.windows.put(partition, key, wrap(applied, state.encode()))

    def forget_revoked_touchpoints(self, sender: Any, /, *args: Any, signal: Any, **_: Any) -> None:
        """Another worker owns these touchpoints now: its figures count, not ours."""
        (revoked,) = cast(tuple[set[TP]], args)
        topic = self.topology.touchpoint_partials.get_topic_name()
        gone = {tp.partition for tp in revoked if tp.topic == topic}
        for partition in gone:
            self.judged_to.pop(partition, None)
        for subject, rules in self.gap_rules.items():
            if partition_of(subject.encode(), self.partitions) not in gone:
                continue
            for detector in rules.detectors:
                shown = self.shown_groups.pop((subject, detector.rule.id), set())
                metrics.export_gaps(detector, (), (), shown)
        for touchpoint in self.watched:
            if partition_of(touchpoint.encode(), self.partitions) not in gone:
                continue
            for moment in self.core.catalog.key_moments_for(touchpoint):
                metrics.set_key_moment(moment, degraded=False)
            for metric in ScoreMetric:
                if (touchpoint, metric) in self.exported_scores:
                    metrics.forget_score(touchpoint, metric)
                    self.exported_scores.discard((touchpoint, metric))

    def _export_scores(
        self, touchpoint: str, windows: TouchpointWindows, state: TouchpointState
    ) -> None:
        latest = windows.latest_window(state)
        if latest is None:
            return
        _, tally = latest
        for metric in ScoreMetric:
            if tally.samples(metric):
                metrics.export_score(touchpoint, metric, tally)
                self.exported_scores.add((touchpoint, metric))
            elif (touchpoint, metric) in self.exported_scores:
                # A score with nothing behind it any more is no score: drop the series.
                metrics.forget_score(touchpoint, metric)
                self.exported_scores.discard((touchpoint, metric))


def gap_subjects(catalog: Catalog) -> dict[str, GapRules]:
    """The subjects of gap rules: journey stages (consistency) and fatigue's cohorts."""
    found = {stage_subject(stage): rules for stage, rules in stage_rules(catalog).items()}
    if catalog.fatigue:
        found[FATIGUE_SUBJECT] = Cohorts(catalog).rules
    return found
