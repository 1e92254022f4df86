"""The break stage: each journey break's rate of broken attempts by window, and its incidents.

Keyed by break: the outcomes the journey stage decides. Every break of a partition is
judged whenever the partition's watermark moves on.
"""

from __future__ import annotations

from typing import Any, cast

from faust.types import TP

from agents import metrics
from agents.stages.wiring import Wiring
from agents.streaming import PartitionedState
from streams.core.journeys import BreakState, BreakWindows, Outcome


class Breaks:
    """Decided attempts by break and bucket, and each break's incident."""

    def __init__(self, wiring: Wiring) -> None:
        self.wiring = wiring
        topology, catalog = wiring.topology, wiring.core.catalog
        self.topology, self.core = topology, wiring.core
        self.breaks = PartitionedState(topology.journey_breaks)
        self.progress = wiring.progress(topology.journey_visits)
        self.judged_to: dict[int, int] = {}
        self.windows = {j.id: BreakWindows(j) for j in catalog.breaks}
        self.by_partition = wiring.by_partition({j.id for j in catalog.breaks})

    async def judge_breaks(self) -> None:
        await self.wiring.judge_by_subject(
            self.topology.journey_outcomes,
            "breaks",
            progress=self.progress,
            decode=Outcome.decode,
            subject_of=lambda o: o.break_id,
            judge=self._judge_breaks,
        )

    async def _judge_breaks(self, partition: int, by_break: dict[str, list[Outcome]]) -> None:
        watermark = self.progress[partition].watermark()
        advanced = watermark is not None and watermark > self.judged_to.get(partition, -1)
        due = set(by_break)
        if advanced:
            assert watermark is not None
            self.judged_to[partition] = watermark
            due.update(self.by_partition.get(partition, ()))
        for break_id in sorted(due):
            windows = self.windows.get(break_id)
            if windows is None:
                continue  # decided under a catalog that had this break; this one has not
            key = break_id.encode()
            raw = self.breaks.get(key)
            state = BreakState() if raw is None else BreakState.decode(raw)
            for outcome in by_break.get(break_id, []):
                # Refused only when every window it falls in is judged: a second delivery
                # (after a crash of the customer stage) of an attempt counted then.
                windows.add(state, outcome)
            if watermark is not None:
                for alert in windows.advance(state, watermark - self.core.catalog.scores.grace_ms):
                    await self.wiring.emit(alert)
            self.breaks.put(partition, key, state.encode())
            metrics.export_journey_break(
                windows.journey,
                broken=state.incident_start_ms is not None,
                rate=state.last_rate,
                samples=state.last_samples,
            )

    def forget_revoked_breaks(self, sender: Any, /, *args: Any, signal: Any, **_: Any) -> None:
        """Another worker owns these breaks now: its figures count, not ours."""
        (revoked,) = cast(tuple[set[TP]], args)
        outcomes = self.topology.journey_outcomes.get_topic_name()
        for partition in {tp.partition for tp in revoked if tp.topic == outcomes}:
            for break_id in self.by_partition.get(partition, ()):
                metrics.forget_journey_break(self.windows[break_id].journey)
