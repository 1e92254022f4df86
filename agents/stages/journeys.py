"""The journey stage: each customer's attempts at a journey break, decided behind the watermark.

Keyed by customer: the visits of the touchpoints journey breaks watch. An attempt is
decided once the watermark less the grace has passed its deadline, and its outcome goes to
the break stage. Each batch is stored (customers, outcomes, input offset) before any of it
is applied.
"""

from __future__ import annotations

import time

from agents import metrics
from agents.checkpointed import Change, CheckpointedTable, chunked
from agents.stages.wiring import Wiring
from agents.streaming import opened
from streams.core.journeys import CustomerJourneys, CustomerVisits, JourneyTracker, Outcome
from streams.state.delivery import KeyedCheckpoint, Send
from streams.state.watermarks import PROGRESS_KEY


class Journeys:
    """Customers' visits not decided yet and their open attempts."""

    def __init__(self, wiring: Wiring) -> None:
        self.wiring = wiring
        topology, core = wiring.topology, wiring.core
        self.topology, self.core = topology, core
        self.journeys = JourneyTracker(core.catalog)
        self.customers = CheckpointedTable(
            topology.journey_customers,
            journey_due,
            topology.journey_checkpoints,
            topology.journey_visits,
            wiring.deliver,
        )
        self.progress = wiring.progress(topology.touchpoint_events)
        self.decided_to: dict[int, int] = {}

    async def follow_journeys(self) -> None:
        topic = self.topology.journey_visits.get_topic_name()
        async for batch in self.wiring.batches.fetched(topic):
            started = time.perf_counter()
            stored: dict[int, KeyedCheckpoint] = {}
            progressed: set[int] = set()
            fed: dict[bytes, CustomerJourneys] = {}
            for tp, records in batch.items():
                partition = tp.partition
                done = stored[partition] = await self.customers.resume(partition)
                for record in opened(records):
                    if record.key == PROGRESS_KEY:
                        # Marks only ever raise the watermark: read twice, they change nothing.
                        self.wiring.take_marks(self.progress[partition], record.value)
                        progressed.add(partition)
                    elif record.offset > done.offset:
                        entry = CustomerVisits.decode(record.value)
                        self._remember_visits(partition, entry, fed)
                done.offset = max(done.offset, records[-1].offset)
            decided, outcomes = self._decide_journeys(progressed, fed)
            chains = {}
            for partition, done in sorted(stored.items()):
                first, rest = (
                    self._journey_changes(partition, states, outcomes) for states in (fed, decided)
                )
                chains[partition] = list(chunked(done.offset, done.sequence, first, rest))
            await self.customers.store_each(chains)
            await self.wiring.pass_marks_on(self.topology.journey_visits, self.progress, progressed)
            metrics.BATCH_SECONDS.labels("journeys").observe(time.perf_counter() - started)

    def _remember_visits(
        self, partition: int, entry: CustomerVisits, fed: dict[bytes, CustomerJourneys]
    ) -> None:
        key = entry.customer.encode()
        state = fed.get(key)
        if state is None:
            raw = self.customers.states.get(key)
            state = CustomerJourneys(partition) if raw is None else CustomerJourneys.decode(raw)
            fed[key] = state
        for touchpoint, visits in entry.visits.items():
            for visit in visits:
                self.journeys.record(state, touchpoint, visit)

    def _decide_journeys(
        self, progressed: set[int], fed: dict[bytes, CustomerJourneys]
    ) -> tuple[dict[bytes, CustomerJourneys], dict[bytes, list[Outcome]]]:
        """Decide the attempts the watermark has closed: customers fed visits, then the rest."""
        grace = self.core.catalog.scores.grace_ms
        closing: dict[int, int] = {}  # partition -> closed, where the watermark moved on
        for partition in progressed:
            watermark = self.progress[partition].watermark()
            if watermark is not None and watermark > self.decided_to.get(partition, -1):
                self.decided_to[partition] = watermark
                closing[partition] = watermark - grace
        decided: dict[bytes, CustomerJourneys] = {}
        outcomes: dict[bytes, list[Outcome]] = {}
        if not closing:
            return decided, outcomes
        for partition, closing_at in closing.items():
            for key, due in self.customers.due.of(partition).items():
                if due < closing_at and key not in fed:
                    raw = self.customers.states.get(key)
                    assert raw is not None, "the index follows every write"
                    decided[key] = CustomerJourneys.decode(raw)
        for states in (fed, decided):
            for key, state in states.items():
                closed = closing.get(state.partition)
                if closed is not None and state.due_ms is not None and state.due_ms < closed:
                    outcomes[key] = self.journeys.advance(state, key.decode(), closed)
        return decided, outcomes

    def _journey_changes(
        self,
        partition: int,
        states: dict[bytes, CustomerJourneys],
        outcomes: dict[bytes, list[Outcome]],
    ) -> list[Change]:
        """The partition's customers as stored: the empty ones leave, each with its attempts."""
        topic = self.topology.journey_outcomes.get_topic_name()
        return [
            Change(
                key,
                None if state.empty else state.encode(),
                [Send(topic, o.break_id.encode(), o.encode()) for o in outcomes.get(key, [])],
            )
            for key, state in states.items()
            if state.partition == partition
        ]


def journey_due(raw: bytes) -> int | None:
    """When a stored customer has an attempt to decide, read from its header line alone."""
    return CustomerJourneys.header(raw)[1]
