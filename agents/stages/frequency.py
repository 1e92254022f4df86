"""The frequency stage: each customer's messages across channels, and messaging fatigue.

Keyed by customer. Messages are counted in the policy's window and judged in event time,
behind the watermark; answers wait there until the watermark less the grace passes them,
then go into their cohort by the messages counted at their time. Each batch is stored
(customers, alerts, cohort tallies, input offset) before any of it is applied.
"""

from __future__ import annotations

import logging
import time

from agents import metrics
from agents.checkpointed import Change, CheckpointedTable, chunked
from agents.handover import Record
from agents.stages.wiring import ANSWER_RECORD, Wiring
from agents.streaming import opened
from models.decode import format_timestamp
from streams.core.fatigue import Cohorts
from streams.core.ingest import FATIGUE_SUBJECT, CustomerAnswer, OutboundMessage, PartialTallies
from streams.core.messaging import Answered, CustomerMessages, FrequencyPolicy, Message
from streams.core.scores import Tally
from streams.state.delivery import KeyedCheckpoint, Send
from streams.state.watermarks import PROGRESS_KEY, source_name

log = logging.getLogger(__name__)


class Frequency:
    """Customers' messages in window, their over-messaging incidents, answers by cohort."""

    def __init__(self, wiring: Wiring) -> None:
        self.wiring = wiring
        topology, core = wiring.topology, wiring.core
        self.topology, self.core = topology, core
        self.policy = FrequencyPolicy(core.catalog.messaging)
        self.grace_ms = core.catalog.scores.grace_ms
        self.customers = CheckpointedTable(
            topology.customer_frequency,
            self._due,
            topology.customer_checkpoints,
            topology.customer_messages,
            wiring.deliver,
        )
        self.cohorts = Cohorts(core.catalog)
        self.cohort_tallies = PartialTallies(core.catalog, core.scorer)
        answered = [topology.survey_answers] if wiring.fatigue else []
        self.progress = wiring.progress(topology.touchpoint_events, topology.contacts, *answered)
        self.judged_to: dict[int, int] = {}

    async def count_customer_messages(self) -> None:
        topic = self.topology.customer_messages
        async for batch in self.wiring.batches.fetched(topic.get_topic_name()):
            started = time.perf_counter()
            chains = {
                tp.partition: await self._count_partition(tp.partition, records)
                for tp, records in batch.items()
            }
            await self.customers.store_each(chains)
            if self.wiring.fatigue:
                await self.wiring.pass_marks_on(topic, self.progress, set(chains))
            metrics.BATCH_SECONDS.labels("frequency").observe(time.perf_counter() - started)

    async def _count_partition(self, partition: int, batch: list[Record]) -> list[KeyedCheckpoint]:
        """One partition's messages and answers taken in, its customers judged and its
        answers put in cohorts up to its watermark: the checkpoints to store before any of
        it is applied.

        Each customer's state is read and written once per batch, however many messages,
        answers and judgements it takes in.
        """
        done = await self.customers.resume(partition)
        fed: dict[bytes, CustomerMessages] = {}
        messaged: set[bytes] = set()
        for record in opened(batch):
            if record.key == PROGRESS_KEY:
                self.wiring.take_marks(self.progress[partition], record.value)
                continue
            if record.offset <= done.offset:
                continue  # in the checkpoint applied before a stop
            state = fed.get(record.key)
            if state is None:
                state = fed[record.key] = self._customer(record.key)
            if ANSWER_RECORD in record.headers:
                answer = CustomerAnswer.decode(record.value)
                state.answer(Answered(answer.answered_at_ms, answer.digest, answer.tally))
            else:
                self._record(partition, state, OutboundMessage.decode(record.value).message)
                messaged.add(record.key)
        for key in messaged:
            state = fed[key]
            window = self.policy.inside(state, state.messages[-1].sent_at_ms)
            metrics.CUSTOMER_WINDOW_MESSAGES.observe(len(self.policy.counted(window)))
        judged, sends, cohorts = self._judge_customers(partition, fed)
        offset = max(done.offset, batch[-1].offset)
        changes = [Change(key, state.encode(), sends.get(key, [])) for key, state in fed.items()]
        rest = [Change(key, state.encode(), sends.get(key, [])) for key, state in judged.items()]
        source = source_name(self.topology.customer_messages.get_topic_name(), partition)
        partials = self.topology.touchpoint_partials.get_topic_name()
        checkpoints = list(chunked(offset, done.sequence, changes, rest))
        for checkpoint in checkpoints:
            for customer in checkpoint.states:
                for at_ms, count_class, tally in cohorts.get(customer.encode(), []):
                    self.cohort_tallies.add_cohort(at_ms, count_class, tally)
            # Named by the checkpoint: sent again after a stop, it is known downstream.
            for partial in self.cohort_tallies.drain(source, checkpoint.sequence):
                checkpoint.sends.append(Send(partials, FATIGUE_SUBJECT.encode(), partial.encode()))
        return checkpoints

    def _due(self, raw: bytes) -> int | None:
        """When a stored customer must be judged next, in event time."""
        return self.policy.due_ms(CustomerMessages.decode(raw), self.grace_ms)

    def _customer(self, key: bytes) -> CustomerMessages:
        raw = self.customers.states.get(key)
        return CustomerMessages() if raw is None else CustomerMessages.decode(raw)

    def _record(self, partition: int, state: CustomerMessages, message: Message) -> None:
        judged_to = state.judged_to_ms
        if self.policy.record(state, message):
            metrics.count_outbound(message)
            if judged_to is not None and message.sent_at_ms <= judged_to:
                self._after_verdict(partition, message.sent_at_ms, judged_to)

    def _after_verdict(self, partition: int, sent_at_ms: int, judged_to_ms: int) -> None:
        metrics.MESSAGES_AFTER_VERDICT.inc()
        marks = self.progress[partition].marks.values()
        log.warning(
            "a message sent at %s reached partition %d of the frequency stage after its "
            "customer was judged to %s: counted, but not in the verdicts before; marks: %s",
            format_timestamp(sent_at_ms),
            partition,
            format_timestamp(judged_to_ms),
            sorted((m.source, m.watermark_ms, m.idle) for m in marks),
        )

    def _judge_customers(
        self, partition: int, fed: dict[bytes, CustomerMessages]
    ) -> tuple[
        dict[bytes, CustomerMessages],
        dict[bytes, list[Send]],
        dict[bytes, list[tuple[int, str, Tally]]],
    ]:
        """The partition's customers due by its watermark, and those fed, judged up to it in
        event time, and their answers put in cohorts up to the watermark less the grace.

        Returns the customers judged that were not fed, the alerts each sends, and the
        answers each put in a cohort (time, count class, tally).
        """
        judged: dict[bytes, CustomerMessages] = {}
        sends: dict[bytes, list[Send]] = {}
        cohorts: dict[bytes, list[tuple[int, str, Tally]]] = {}
        watermark = self.progress[partition].watermark()
        if watermark is None or watermark <= self.judged_to.get(partition, -1):
            return judged, sends, cohorts
        self.judged_to[partition] = watermark
        closed = watermark - self.grace_ms
        # Customers fed in this batch are judged too: they are written anyway.
        due = {key for key, at in self.customers.due.of(partition).items() if at <= watermark}
        for key in sorted(due | fed.keys()):
            state = fed.get(key)
            if state is None:
                state = judged[key] = self._customer(key)
            if self.wiring.fatigue:
                cohorts[key] = self.cohorts.classify(state, closed)
            else:
                state.answers.clear()  # kept under a catalog that had fatigue rules
            alerts = self.policy.advance(state, key.decode(), watermark)
            sends[key] = [self.wiring.alert_send(alert) for alert in alerts]
        return judged, sends, cohorts
