"""The agents: they bind the pure core to topics and tables, one batch at a time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import faust
from aiokafka.partitioner import murmur2
from faust.exceptions import ConsumerNotStarted
from faust.types import TP, StreamT

from agents import metrics
from agents.checkpointed import Change, CheckpointedTable, chunked
from agents.streaming import (
    Batches,
    Event,
    PartitionedState,
    Received,
    opened,
    payload,
)
from agents.topology import PRODUCER_MAX_REQUEST_BYTES, Topology
from models.decode import (
    InvalidRecord,
    Reason,
    decode_identity_link,
    decode_survey_answer,
    decode_touchpoint_event,
    encode_alert,
    format_timestamp,
)
from models.records import Alert
from streams.catalog import Catalog, ScoreMetric
from streams.core.consistency import stage_rules
from streams.core.fatigue import Cohorts
from streams.core.gaps import GapRules, RulesState
from streams.core.identity import HeldMessages, add_link, customer_at, encode_link
from streams.core.ingest import (
    FATIGUE_SUBJECT,
    CustomerAnswer,
    OutboundMessage,
    PartialTallies,
    TouchpointPartial,
    customer_answer,
    is_gap_subject,
    outbound_message,
    stage_subject,
)
from streams.core.journeys import (
    BreakState,
    BreakWindows,
    CustomerJourneys,
    CustomerVisits,
    JourneyTracker,
    Outcome,
    VisitBatch,
)
from streams.core.messaging import Answered, CustomerMessages, FrequencyPolicy, Message
from streams.core.notify import is_customer_kind
from streams.core.privacy import pseudonymised
from streams.core.scores import Tally
from streams.core.sentiment import SentimentScorer
from streams.core.timeliness import Timeliness
from streams.core.touchpoints import TouchpointState, TouchpointWindows
from streams.settings import Settings
from streams.state.dedup import SeenBatch, SeenIds, batch_key, batch_prefix, id_digest
from streams.state.dedup import newest_ms as stored_newest_ms
from streams.state.delivery import Applied, Checkpoint, KeyedCheckpoint, Send, unwrap, wrap
from streams.state.envelope import ENVELOPE_KEY, Record, pack
from streams.state.watermarks import (
    PROGRESS_KEY,
    SourceMark,
    SourceProgress,
    encode_marks,
    source_name,
)

log = logging.getLogger(__name__)

# A dead letter's value and headers must fit one produce request (PRODUCER_MAX_REQUEST_BYTES).
MAX_DEAD_LETTER_BYTES = PRODUCER_MAX_REQUEST_BYTES - 16_384
MAX_ERROR_DETAIL = 1_000

# An envelope is one message: well within one request.
MAX_ENVELOPE_BYTES = PRODUCER_MAX_REQUEST_BYTES // 4

# Marks an identity link on the contacts topic, and a survey answer there and on the
# customer-messages topic, which otherwise carry outbound messages.
RECORD_HEADER = "cxmon-record"
LINK_RECORD = (RECORD_HEADER, b"identity-link")
ANSWER_RECORD = (RECORD_HEADER, b"survey-answer")

# Idle inputs are reported every tick while the group has read input lately, here or (as
# their marks say) on another worker: a burst may be reaching the partitions one after
# another, and ours vouch only for what the others had reached when they said so. At least
# this often otherwise.
IDLE_REPORT_WHILE_READING_S = 5.0
IDLE_REPORT_AT_LEAST_EVERY_S = 15.0


T = TypeVar("T")


def partition_of(key: bytes, partitions: int) -> int:
    """Where the producer's default partitioner puts `key`: Kafka's murmur2, as in Java."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


@dataclass(frozen=True)
class Core:
    """What the agents apply: the catalog and the scorer, built once at start."""

    catalog: Catalog
    scorer: SentimentScorer


class Pipeline:
    """Owns the agents of one worker; each `async def` taking a stream is one agent's loop."""

    def __init__(
        self, app: faust.App, topology: Topology, settings: Settings, core: Core, batches: Batches
    ) -> None:
        self.app = app
        self.batches = batches
        self.topology = topology
        self.settings = settings
        self.core = core
        self.partitions = settings.partitions
        self.policy = FrequencyPolicy(core.catalog.messaging)
        self.partials = PartialTallies(core.catalog, core.scorer)
        self.timeliness = Timeliness(core.catalog.scores.grace_ms, settings.max_future_ms)
        self.seen = PartitionedState(topology.seen_ids)
        self.seen_ids = SeenIds()
        self.seen_loaded: set[str] = set()  # sources whose stored ids are in `seen_ids`
        self.seen_batch = SeenBatch(0)  # the ids first counted in the batch being folded
        self.windows = PartitionedState(topology.touchpoint_windows)
        self.identities = PartitionedState(topology.identities)
        self.held = PartitionedState(topology.held_messages)
        self.checkpoints = PartitionedState(topology.ingest_checkpoints)
        self.checkpoint_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.topics_by_name = {topic.get_topic_name(): topic for topic in topology.topics()}
        self.enveloped = frozenset(topic.get_topic_name() for topic in topology.internal())
        self.downstream = downstream(topology, core.catalog)
        self.fatigue = bool(core.catalog.fatigue)
        # The customers' messages, incidents and answers: the frequency stage.
        self.customers = CheckpointedTable(
            topology.customer_frequency,
            waiting_customer,
            topology.customer_checkpoints,
            topology.customer_messages,
            self._deliver,
        )
        self.cohorts = Cohorts(core.catalog)
        self.cohort_tallies = PartialTallies(core.catalog, core.scorer)
        self.dedup_sweeps: dict[str, int] = {}
        self.sources = Sources(topology, settings.partitions)
        answered = [topology.survey_answers] if self.fatigue else []
        self.touchpoint_progress = self._progress(
            topology.touchpoint_events,
            topology.survey_answers,
            *([topology.customer_messages] if self.fatigue else []),
        )
        self.contact_progress = self._progress(
            topology.touchpoint_events, topology.identity_links, *answered
        )
        self.customer_progress = self._progress(
            topology.touchpoint_events, topology.contacts, *answered
        )
        self.customers_judged_to: dict[int, int] = {}
        self.journeys = JourneyTracker(core.catalog)
        self.visit_batch = VisitBatch(self.journeys)
        self.journey_breaks = PartitionedState(topology.journey_breaks)
        # Each customer's visits and open attempts: the journey stage.
        self.journey_states = CheckpointedTable(
            topology.journey_customers,
            journey_due,
            topology.journey_checkpoints,
            topology.journey_visits,
            self._deliver,
        )
        self.journey_progress = self._progress(topology.touchpoint_events)
        self.break_progress = self._progress(topology.journey_visits)
        self.journeys_decided_to: dict[int, int] = {}
        self.breaks_judged_to: dict[int, int] = {}
        self.break_windows = {j.id: BreakWindows(j) for j in core.catalog.breaks}
        self.breaks_by_partition = self._by_partition({j.id for j in core.catalog.breaks})
        self.judged_to: dict[int, int] = {}
        self.watched = frozenset(core.catalog.touchpoints) | {
            m.touchpoint for m in core.catalog.key_moments
        }
        self.exported_scores: set[tuple[str, ScoreMetric]] = set()
        self.gap_rules = gap_subjects(core.catalog, self.cohorts)
        self.shown_groups: dict[tuple[str, str], set[str]] = {}  # by subject and rule
        # Judged whenever event time moves on, whether new records came for them or not.
        self.judged_every_step = self._by_partition(
            {m.touchpoint for m in core.catalog.key_moments} | set(self.gap_rules)
        )
        metrics.declare_catalog(core.catalog)

    def _progress(self, *inputs: faust.TopicT) -> defaultdict[int, SourceProgress]:
        """Per partition of a stage: how far each partition of its inputs has got."""
        expected = self.sources.expected(*inputs)
        stages = self.sources.expected(
            *(topic for topic in inputs if not self.sources.is_input(topic.get_topic_name()))
        )
        return defaultdict(lambda: SourceProgress(expected, stages))

    def _by_partition(self, keys: set[str]) -> dict[int, list[str]]:
        """Catalog keys (touchpoints, breaks) by the partition their state lives in."""
        found: dict[int, list[str]] = defaultdict(list)
        for key in sorted(keys):
            found[partition_of(key.encode(), self.partitions)].append(key)
        return found

    def attach(self) -> None:
        topology = self.topology
        for topic, agent in (
            (topology.touchpoint_events, self.ingest_touchpoint_events),
            (topology.survey_answers, self.ingest_survey_answers),
            (topology.identity_links, self.ingest_identity_links),
            (topology.touchpoint_partials, self.score_touchpoints),
            (topology.contacts, self.resolve_contacts),
            (topology.customer_messages, self.count_customer_messages),
            (topology.journey_visits, self.follow_journeys),
            (topology.journey_outcomes, self.judge_breaks),
        ):
            self.app.agent(topic, name=agent.__name__)(agent)
        self.app.timer(0.5, name="report_idle_inputs")(self.report_idle_inputs)
        self.app.on_partitions_revoked.connect(self.forget_revoked_progress)
        self.app.on_partitions_revoked.connect(self.forget_revoked_touchpoints)
        self.app.on_partitions_revoked.connect(self.forget_revoked_ids)

    # Stage 1: validate, deduplicate, fold into partial tallies, route outbound messages.

    async def ingest_touchpoint_events(self, stream: StreamT[bytes]) -> None:
        async for events in self.batches.of(stream):
            started = time.perf_counter()
            await self._ingest(by_partition(events), decode_touchpoint_event, self._fold_event)
            await self._report_progress(events)
            self._observe_ingest(events, started)

    async def ingest_survey_answers(self, stream: StreamT[bytes]) -> None:
        async for events in self.batches.of(stream):
            started = time.perf_counter()
            await self._ingest(by_partition(events), decode_survey_answer, self._fold_answer)
            await self._report_progress(events)
            self._observe_ingest(events, started)

    async def ingest_identity_links(self, stream: StreamT[bytes]) -> None:
        # Links are idempotent downstream: no checkpoint needed, at-least-once suffices.
        async for events in self.batches.of(stream):
            sends: list[Send] = []
            for _, link in self._valid(events, decode_identity_link, dead_letters=sends):
                sends.append(
                    Send(
                        self.topology.contacts.get_topic_name(),
                        link.contact.key.encode(),
                        encode_link(link),
                        (LINK_RECORD,),
                    )
                )
            await self._deliver(sends)
            await self._report_progress(events)

    def _observe_ingest(self, events: list[Event], started: float) -> None:
        metrics.BATCH_SECONDS.labels("ingest").observe(time.perf_counter() - started)
        oldest = min(event.message.timestamp for event in events)
        metrics.INGEST_LATENCY.observe(max(0.0, time.time() - oldest))

    async def _ingest(
        self,
        batches: list[list[Event]],
        decode: Callable[[bytes], Any],
        fold: Callable[[Event, Any, list[Send]], None],
    ) -> None:
        """Each input partition's batch folded once, its sends stored before they go out.

        The partitions of a batch share the round trips: their checkpoints are stored
        together, then everything they send goes out together.
        """
        async with contextlib.AsyncExitStack() as locks:
            dead_letters: list[Send] = []
            stored: list[tuple[int, bytes, Checkpoint]] = []
            for events in batches:
                first = events[0].message
                source = source_name(first.topic, first.partition)
                await locks.enter_async_context(self.checkpoint_locks[source])
                checkpoint = await self._resend_unsent(source, first.partition)
                fresh = [e for e in events if e.message.offset > checkpoint.offset]
                for event in events[: len(events) - len(fresh)]:
                    # Done before a crash or a rebalance: its sends are out already.
                    self.sources.saw(first.topic, first.partition, event.message.offset, None)
                if not fresh:
                    continue
                sends: list[Send] = []
                self._load_seen(source)
                self.seen_batch = SeenBatch(first.partition)
                for event, record in self._valid(fresh, decode, dead_letters):
                    fold(event, record, sends)
                self._store_seen(source, fresh[0].message.offset)
                last_offset = fresh[-1].message.offset
                partials = self.topology.touchpoint_partials.get_topic_name()
                for partial in self.partials.drain(source, last_offset):
                    sends.append(Send(partials, partial.touchpoint.encode(), partial.encode()))
                visits = self.topology.journey_visits.get_topic_name()
                for entry in self.visit_batch.drain():
                    sends.append(Send(visits, entry.customer.encode(), entry.encode()))
                watermark = self.sources.watermarks.get(source)
                stored.append(
                    (first.partition, source.encode(), Checkpoint(last_offset, watermark, sends))
                )
            # Dead letters are for people, not for the next stage: out first, at least
            # once, and never kept in the checkpoint (a bad record may be a megabyte).
            await self._deliver(dead_letters)
            await asyncio.gather(
                *(
                    self.checkpoints.put(p, key, checkpoint.encode())
                    for p, key, checkpoint in stored
                )
            )
            await self._deliver([send for _, _, checkpoint in stored for send in checkpoint.unsent])
            for partition, key, checkpoint in stored:
                checkpoint.unsent = []
                self.checkpoints.put(partition, key, checkpoint.encode())

    async def _resend_unsent(self, source: str, partition: int) -> Checkpoint:
        """What a worker that died mid-batch stored but may not have sent: sent now, again."""
        raw = self.checkpoints.get(source.encode())
        checkpoint = Checkpoint() if raw is None else Checkpoint.decode(raw)
        self.sources.restore(source, checkpoint.watermark_ms)
        if checkpoint.unsent:
            log.info(
                "sending again %d records of %s stored before a stop",
                len(checkpoint.unsent),
                source,
            )
            await self._deliver(checkpoint.unsent)
            checkpoint.unsent = []
            self.checkpoints.put(partition, source.encode(), checkpoint.encode())
        return checkpoint

    def _fold_event(self, event: Event, record: Any, sends: list[Send]) -> None:
        if not self._first_time(event, record.event_id, record.occurred_at_ms):
            return
        self.partials.add_event(record)
        self.visit_batch.add(record)
        message = outbound_message(record)
        if message is None:
            return
        if message.customer_id is not None:
            topic, key = self.topology.customer_messages, message.customer_id
        else:
            assert message.contact_key is not None
            topic, key = self.topology.contacts, message.contact_key
        sends.append(Send(topic.get_topic_name(), key.encode(), message.encode()))

    def _fold_answer(self, event: Event, record: Any, sends: list[Send]) -> None:
        if not self._first_time(event, record.answer_id, record.answered_at_ms):
            return
        sentiment = self.partials.add_answer(record)
        if not self.fatigue:
            return
        answer = customer_answer(record, sentiment)
        if answer.customer_id is not None:
            topic, key = self.topology.customer_messages, answer.customer_id
        else:
            assert answer.contact_key is not None
            topic, key = self.topology.contacts, answer.contact_key
        sends.append(Send(topic.get_topic_name(), key.encode(), answer.encode(), (ANSWER_RECORD,)))

    def _valid(
        self, events: list[Event], decode: Callable[[bytes], Any], dead_letters: list[Send]
    ) -> list[tuple[Event, Any]]:
        """The records that decode and keep to time; the others become `dead_letters`."""
        valid = []
        now_ms = int(time.time() * 1000)
        judged_ms = min(self.judged_to.values(), default=None)
        for event in events:
            message = event.message
            metrics.RECORDS.labels(message.topic).inc()
            newest_ms = self.sources.watermarks.get(source_name(message.topic, message.partition))
            try:
                record = decode(payload(event))
                self.timeliness.check(record, newest_ms, now_ms, judged_ms)
                if self.settings.pseudonymise_ids:
                    record = pseudonymised(record, self.settings.pseudonym_key)
            except InvalidRecord as exc:
                if exc.reason is Reason.LATE:
                    metrics.LATE_RECORDS.inc()
                dead_letters.append(self._dead_letter(event, exc))
                continue
            valid.append((event, record))
            self.sources.saw(message.topic, message.partition, message.offset, record.at_ms)
        return valid

    def _dead_letter(self, event: Event, error: InvalidRecord) -> Send:
        message = event.message
        self.sources.saw(message.topic, message.partition, message.offset, None)
        metrics.DEAD_LETTERS.labels(message.topic, error.reason.value).inc()
        value = payload(event)
        headers = [
            ("cxmon-reason", error.reason.value.encode()),
            ("cxmon-error", error.detail[:MAX_ERROR_DETAIL].encode()),
            ("cxmon-topic", message.topic.encode()),
            ("cxmon-partition", str(message.partition).encode()),
            ("cxmon-offset", str(message.offset).encode()),
        ]
        if len(value) > MAX_DEAD_LETTER_BYTES:
            # Read from a broker allowing more than we may write: what fits, and the size.
            headers.append(("cxmon-original-size", str(len(value)).encode()))
            value = value[:MAX_DEAD_LETTER_BYTES]
        return Send(self.topology.dead_letters.get_topic_name(), message.key, value, tuple(headers))

    async def _deliver(self, sends: list[Send]) -> None:
        """Send, and return once the broker has every record."""
        deliveries = [
            await self.topics_by_name[s.topic].send(
                key=s.key, value=s.value, headers=list(s.headers) or None, partition=partition
            )
            for s, partition in self._outgoing(sends)
        ]
        await asyncio.gather(*deliveries)

    def _outgoing(self, sends: list[Send]) -> list[tuple[Send, int | None]]:
        """The messages that carry `sends`: one envelope a partition of an internal topic."""
        outgoing: list[tuple[Send, int | None]] = []
        bound: dict[tuple[str, int], list[Record]] = {}
        for send in sends:
            if send.topic not in self.enveloped:
                outgoing.append((send, None))
                continue
            key = send.key or b""
            destination = (send.topic, partition_of(key, self.partitions))
            bound.setdefault(destination, []).append(Record(key, send.value, send.headers))
        for (topic, partition), records in bound.items():
            for envelope in pack(records, MAX_ENVELOPE_BYTES):
                outgoing.append((Send(topic, ENVELOPE_KEY, envelope), partition))
        return outgoing

    def _first_time(self, event: Event, record_id: str, occurred_at_ms: int) -> bool:
        """False for a duplicate id; the same record read again after a crash is no duplicate."""
        message = event.message
        digest = id_digest(message.topic, record_id)
        if not self.seen_ids.first_time(digest, message.partition, message.offset):
            metrics.DUPLICATES.labels(message.topic).inc()
            return False
        self.seen_batch.add(digest, message.offset, occurred_at_ms)
        return True

    def _load_seen(self, source: str) -> None:
        """The ids a source's stored batches hold, indexed once it is ours (after recovery)."""
        if source in self.seen_loaded:
            return
        self.seen_loaded.add(source)
        for _key, raw in self._stored_seen(source):
            self.seen_ids.load(SeenBatch.decode(raw))

    def _stored_seen(self, source: str) -> list[tuple[bytes, bytes]]:
        """The stored id batches of one input partition."""
        prefix = batch_prefix(source)
        return [(key, raw) for key, raw in self.seen.items() if key.startswith(prefix)]

    def _store_seen(self, source: str, first_offset: int) -> None:
        """One table write per input batch, then ids older than the TTL forgotten.

        Expired at most once per TTL/24 of event time per source, a stored batch at a time.
        """
        batch = self.seen_batch
        if not batch.pairs:
            return
        self.seen.put(batch.partition, batch_key(source, first_offset), batch.encode())
        last_sweep = self.dedup_sweeps.setdefault(source, batch.newest_ms)
        if batch.newest_ms - last_sweep < self.settings.dedup_ttl_ms // 24:
            return
        self.dedup_sweeps[source] = batch.newest_ms
        horizon = batch.newest_ms - self.settings.dedup_ttl_ms
        for key, raw in self._stored_seen(source):
            if stored_newest_ms(raw) < horizon:
                self.seen_ids.forget(SeenBatch.decode(raw))
                self.seen.delete(batch.partition, key)

    def forget_revoked_ids(self, sender: Any, /, *args: Any, signal: Any, **_: Any) -> None:
        """Sources another worker reads now: their ids are indexed again if they come back."""
        (revoked,) = cast(tuple[set[TP]], args)
        for tp in revoked:
            source = source_name(tp.topic, tp.partition)
            if source not in self.seen_loaded:
                continue
            self.seen_loaded.discard(source)
            for _key, raw in self._stored_seen(source):
                self.seen_ids.forget(SeenBatch.decode(raw))

    # Event-time progress: every downstream partition learns how far each input has got.

    async def _report_progress(self, events: list[Event]) -> None:
        """One message per downstream partition for the whole batch, whatever it touched.

        Never idle: the end a batch's fetch saw may be behind the log by now, and an idle
        mark sent after the others' newer ones would vouch for their times. Whether a
        partition has caught up is for `report_idle_inputs`, which asks the broker.
        """
        for topic in sorted({event.message.tp.topic for event in events}):
            partitions = {e.message.tp.partition for e in events if e.message.tp.topic == topic}
            marks = [self.sources.reading(topic, partition) for partition in sorted(partitions)]
            await self._send_marks(marks, topic)

    async def report_idle_inputs(self) -> None:
        """Inputs with nothing left to read must not hold the watermark back, even if empty.

        Said again and again: downstream an idle input vouches only for how far the others
        had got when it last said so (see `SourceProgress`).
        """
        now = time.monotonic()
        reading = now - self.sources.read_at < IDLE_REPORT_WHILE_READING_S
        if not reading and now - self.sources.idle_reported_at < IDLE_REPORT_AT_LEAST_EVERY_S:
            return
        offsets = self.batches.offsets
        try:
            inputs = {
                tp for tp in self.app.consumer.assignment() if self.sources.is_input(tp.topic)
            }
            # An input this worker has read nothing of yet (all of it committed before a
            # restart or a rebalance) is read to the group's commit, and may well be idle.
            await offsets.learn(inputs)
        except ConsumerNotStarted:
            return
        except Exception:
            # Asked again on the next tick; what is known is reported meanwhile.
            log.warning("where the inputs not read yet start is unknown", exc_info=True)
        self.sources.idle_reported_at = now
        candidates: dict[TP, tuple[int, SourceMark]] = {}
        for tp in sorted(inputs):
            read_to = offsets.finished_to(tp)
            if read_to is None:
                continue
            self._restore_watermark(source_name(tp.topic, tp.partition))
            mark = self.sources.mark(self.app, tp.topic, tp.partition, read_to)
            if mark.idle:
                candidates[tp] = (read_to, mark)
        if not candidates:
            return
        # The consumer's highwater is what the last fetch of a partition said: one whose
        # fetch is slow (a 10 MB record) or paused looks caught up while records wait, and
        # said idle again and again it would vouch for the others' newer times. Asked afresh.
        try:
            ends = await self.app.consumer.highwaters(*candidates)
        except Exception:
            log.warning("the inputs' ends are unknown; idle ones say so next time", exc_info=True)
            return
        idle: defaultdict[str, list[SourceMark]] = defaultdict(list)
        for tp, (read_to, mark) in candidates.items():
            if tp in ends and read_to >= ends[tp]:
                idle[tp.topic].append(mark)
        for topic, marks in idle.items():
            await self._send_marks(marks, topic)

    def _restore_watermark(self, source: str) -> None:
        """The event time an input had reached, from its checkpoint, if not read here since.

        Without it, a worker given a partition with nothing new to read (all of it done
        before a restart or a rebalance) calls it idle at an unknown time, and the stages
        it feeds take the newest time of the others for the end of the input.
        """
        if source not in self.sources.watermarks:
            raw = self.checkpoints.get(source.encode())
            if raw is not None:
                self.sources.restore(source, Checkpoint.decode(raw).watermark_ms)

    def _take_marks(self, progress: SourceProgress, raw: bytes) -> None:
        if progress.take(raw):
            self.sources.read_at = time.monotonic()

    async def _send_marks(self, marks: list[SourceMark], origin: str) -> None:
        """Every partition of every topic fed from `origin` learns how far it has got."""
        value = encode_marks(marks)
        for topic in self.downstream[origin]:
            for partition in range(self.partitions):
                await topic.send(key=PROGRESS_KEY, value=value, partition=partition)

    # Contacts: links and contact-only messages in one stream per contact partition.

    async def resolve_contacts(self, stream: StreamT[bytes]) -> None:
        async for events in self.batches.of(stream):
            progressed: set[int] = set()
            for record in opened(events):
                partition, key = record.partition, record.key
                if key == PROGRESS_KEY:
                    self._take_marks(self.contact_progress[partition], record.value)
                    progressed.add(partition)
                elif LINK_RECORD in record.headers:
                    links = add_link(self.identities.get(key), record.value)
                    if links is not None:
                        self.identities.put(partition, key, links)
                elif ANSWER_RECORD in record.headers:
                    self._hold(partition, key, CustomerAnswer.decode(record.value))
                else:
                    self._hold(partition, key, OutboundMessage.decode(record.value))
            marks = {p: self.contact_progress[p] for p in sorted(progressed)}
            await self._release(
                {p: w for p, progress in marks.items() if (w := progress.watermark()) is not None}
            )
            await self._pass_marks_on(self.topology.contacts, self.contact_progress, progressed)

    async def _pass_marks_on(
        self, topic: faust.TopicT, progress: dict[int, SourceProgress], partitions: set[int]
    ) -> None:
        """A stage's own progress, for the stages it feeds: sent behind the records it
        covers, so they wait for them."""
        name = topic.get_topic_name()
        for partition in sorted(partitions):
            reached = progress[partition]
            mark = SourceMark(source_name(name, partition), reached.watermark(), reached.all_idle())
            await self._send_marks([mark], name)

    def _hold(self, partition: int, key: bytes, record: OutboundMessage | CustomerAnswer) -> None:
        """Until every link up to its time is in, a contact-only record cannot be resolved."""
        raw = self.held.get(key)
        held = HeldMessages(partition) if raw is None else HeldMessages.decode(raw)
        held.hold(record)
        self.held.put(partition, key, held.encode())

    async def _release(self, watermarks: dict[int, int]) -> None:
        """Held messages the watermark of their partition has passed, resolved and sent."""
        if not watermarks:
            return
        topic = self.topology.customer_messages.get_topic_name()
        sends: list[Send] = []
        left: list[tuple[bytes, HeldMessages]] = []
        for key, raw in self.held.items():
            held = HeldMessages.decode(raw)
            watermark = watermarks.get(held.partition)
            due = [] if watermark is None else held.release(watermark)
            if not due:
                continue
            links = self.identities.get(key)
            for record in due:
                headers: tuple[tuple[str, bytes], ...] = ()
                if isinstance(record, CustomerAnswer):
                    at_ms, headers = record.answered_at_ms, (ANSWER_RECORD,)
                else:
                    at_ms = record.message.sent_at_ms
                customer = customer_at(links, at_ms)
                if customer is None:
                    # Unlinked contacts are customers of their own until a link arrives.
                    if not headers:
                        metrics.UNRESOLVED_CONTACTS.inc()
                    customer = key.decode()
                value = record.resolved_to(customer).encode()
                sends.append(Send(topic, customer.encode(), value, headers))
            left.append((key, held))
        # Sent before they leave the table: a crash in between sends them again, and
        # the frequency stage knows a message or an answer it already has.
        await self._deliver(sends)
        for key, held in left:
            if not held.empty:
                self.held.put(held.partition, key, held.encode())
            else:
                self.held.delete(held.partition, key)

    # Stage 2a: per-touchpoint windows and key moments.

    async def score_touchpoints(self, stream: StreamT[bytes]) -> None:
        async for events in self.batches.of(stream):
            started = time.perf_counter()
            grouped = by_subject(
                opened(events),
                lambda partition, raw: self._take_marks(self.touchpoint_progress[partition], raw),
                TouchpointPartial.decode,
                lambda p: p.touchpoint,
            )
            for partition, by_touchpoint in grouped.items():
                await self._score_partition(partition, by_touchpoint)
            metrics.BATCH_SECONDS.labels("score").observe(time.perf_counter() - started)

    async def _score_partition(
        self, partition: int, by_touchpoint: dict[str, list[TouchpointPartial]]
    ) -> None:
        watermark = self.touchpoint_progress[partition].watermark()
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
        windows = self.partials.windows(touchpoint)
        for partial in fresh:
            for bucket in partial.buckets:
                if not windows.add(state, bucket.start_ms, bucket.tally, bucket.latest_ms):
                    metrics.LATE_RECORDS.inc(bucket.tally.records)
        if watermark is not None:
            for alert in windows.advance(state, watermark):
                await self._emit(alert)
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
                    await self._emit(alert)
                shown_key = (subject, detector.rule.id)
                shown = self.shown_groups.get(shown_key)
                # A worker that has just taken the subject over shows the incidents it restored.
                if judged.latest is not None or shown is None:
                    incidents = state.rules[detector.rule.id].incidents
                    self.shown_groups[shown_key] = metrics.export_gaps(
                        detector, judged.latest or (), incidents, shown or ()
                    )
        self.windows.put(partition, key, wrap(applied, state.encode()))

    def forget_revoked_progress(self, sender: Any, /, *args: Any, signal: Any, **_: Any) -> None:
        """A stage's partition, given back, is read again from the group's commit, its
        progress marks with it. Kept from before, an idle mark read again would vouch for
        the times the others have reached since, and windows would close on records still
        to come; rebuilt from the marks as they are read again, it says what they said."""
        (revoked,) = cast(tuple[set[TP]], args)
        topology = self.topology
        for topic, progress in (
            (topology.touchpoint_partials, self.touchpoint_progress),
            (topology.contacts, self.contact_progress),
            (topology.customer_messages, self.customer_progress),
            (topology.journey_visits, self.journey_progress),
            (topology.journey_outcomes, self.break_progress),
        ):
            name = topic.get_topic_name()
            for tp in revoked:
                if tp.topic == name:
                    progress.pop(tp.partition, None)

    def forget_revoked_touchpoints(self, sender: Any, /, *args: Any, signal: Any, **_: Any) -> None:
        """Another worker owns these touchpoints and breaks now: its figures count, not ours."""
        (revoked,) = cast(tuple[set[TP]], args)
        topic = self.topology.touchpoint_partials.get_topic_name()
        gone = {tp.partition for tp in revoked if tp.topic == topic}
        for partition in gone:
            self.judged_to.pop(partition, None)
        outcomes = self.topology.journey_outcomes.get_topic_name()
        for partition in {tp.partition for tp in revoked if tp.topic == outcomes}:
            for break_id in self.breaks_by_partition.get(partition, ()):
                metrics.forget_journey_break(self.break_windows[break_id].journey)
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

    # Stage 2b: per-customer message frequency and the over-messaging policy.

    async def count_customer_messages(self, stream: StreamT[bytes]) -> None:
        async for events in self.batches.of(stream):
            started = time.perf_counter()
            partitions = set()
            for batch in by_partition(events):
                partitions.add(batch[0].message.partition)
                await self._count_partition(batch)
            if self.fatigue:
                topic = self.topology.customer_messages
                await self._pass_marks_on(topic, self.customer_progress, partitions)
            metrics.BATCH_SECONDS.labels("frequency").observe(time.perf_counter() - started)

    async def _count_partition(self, batch: list[Event]) -> None:
        """One partition's messages and answers taken in, its customers judged and its
        answers put in cohorts up to its watermark, all stored before any of it is applied.

        Each customer's state is read and written once per batch, however many messages,
        answers and judgements it takes in.
        """
        partition = batch[0].message.partition
        done = await self.customers.resume(partition)
        fed: dict[bytes, CustomerMessages] = {}
        messaged: set[bytes] = set()
        for record in opened(batch):
            if record.key == PROGRESS_KEY:
                self._take_marks(self.customer_progress[partition], record.value)
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
        offset = max(done.offset, batch[-1].message.offset)
        changes = [Change(key, state.encode(), sends.get(key, [])) for key, state in fed.items()]
        rest = [Change(key, state.encode(), sends.get(key, [])) for key, state in judged.items()]
        source = source_name(self.topology.customer_messages.get_topic_name(), partition)
        partials = self.topology.touchpoint_partials.get_topic_name()
        for checkpoint in chunked(offset, done.sequence, changes, rest):
            for customer in checkpoint.states:
                for at_ms, count_class, tally in cohorts.get(customer.encode(), []):
                    self.cohort_tallies.add_cohort(at_ms, count_class, tally)
            # Named by the checkpoint: sent again after a stop, it is known downstream.
            for partial in self.cohort_tallies.drain(source, checkpoint.sequence):
                checkpoint.sends.append(Send(partials, FATIGUE_SUBJECT.encode(), partial.encode()))
            await self.customers.store(partition, checkpoint)

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
        marks = self.customer_progress[partition].marks.values()
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
        """Every waiting customer of the partition judged up to its watermark, in event time,
        and its answers put in cohorts up to the watermark less the grace.

        Returns the customers judged that were not fed, the alerts each sends, and the
        answers each put in a cohort (time, count class, tally).
        """
        judged: dict[bytes, CustomerMessages] = {}
        sends: dict[bytes, list[Send]] = {}
        cohorts: dict[bytes, list[tuple[int, str, Tally]]] = {}
        watermark = self.customer_progress[partition].watermark()
        if watermark is None or watermark <= self.customers_judged_to.get(partition, -1):
            return judged, sends, cohorts
        self.customers_judged_to[partition] = watermark
        closed = watermark - self.core.catalog.scores.grace_ms
        for key in sorted(self.customers.due.of(partition).keys() | fed.keys()):
            state = fed.get(key)
            if state is None:
                state = judged[key] = self._customer(key)
            if self.fatigue:
                cohorts[key] = self.cohorts.classify(state, closed)
            else:
                state.answers.clear()  # kept under a catalog that had fatigue rules
            alerts = self.policy.advance(state, key.decode(), watermark)
            sends[key] = [self._alert_send(alert) for alert in alerts]
        return judged, sends, cohorts

    # Journey breaks, stage 2: each customer's attempts, decided behind the watermark.

    async def follow_journeys(self, stream: StreamT[bytes]) -> None:
        async for events in self.batches.of(stream):
            started = time.perf_counter()
            stored: dict[int, KeyedCheckpoint] = {}
            progressed: set[int] = set()
            fed: dict[bytes, CustomerJourneys] = {}
            for batch in by_partition(events):
                partition = batch[0].message.partition
                done = stored[partition] = await self.journey_states.resume(partition)
                for record in opened(batch):
                    if record.key == PROGRESS_KEY:
                        # Marks only ever raise the watermark: read twice, they change nothing.
                        self._take_marks(self.journey_progress[partition], record.value)
                        progressed.add(partition)
                    elif record.offset > done.offset:
                        entry = CustomerVisits.decode(record.value)
                        self._remember_visits(partition, entry, fed)
                done.offset = max(done.offset, batch[-1].message.offset)
            decided, outcomes = self._decide_journeys(progressed, fed)
            for partition, done in sorted(stored.items()):
                first, rest = (
                    self._journey_changes(partition, states, outcomes) for states in (fed, decided)
                )
                for checkpoint in chunked(done.offset, done.sequence, first, rest):
                    await self.journey_states.store(partition, checkpoint)
            await self._pass_marks_on(
                self.topology.journey_visits, self.journey_progress, progressed
            )
            metrics.BATCH_SECONDS.labels("journeys").observe(time.perf_counter() - started)

    def _remember_visits(
        self, partition: int, entry: CustomerVisits, fed: dict[bytes, CustomerJourneys]
    ) -> None:
        key = entry.customer.encode()
        state = fed.get(key)
        if state is None:
            raw = self.journey_states.states.get(key)
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
            watermark = self.journey_progress[partition].watermark()
            if watermark is not None and watermark > self.journeys_decided_to.get(partition, -1):
                self.journeys_decided_to[partition] = watermark
                closing[partition] = watermark - grace
        decided: dict[bytes, CustomerJourneys] = {}
        outcomes: dict[bytes, list[Outcome]] = {}
        if not closing:
            return decided, outcomes
        for partition, closing_at in closing.items():
            for key, due in self.journey_states.due.of(partition).items():
                if due < closing_at and key not in fed:
                    raw = self.journey_states.states.get(key)
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

    # Journey breaks, stage 3: the break rate by window, and its incidents.

    async def judge_breaks(self, stream: StreamT[bytes]) -> None:
        async for events in self.batches.of(stream):
            started = time.perf_counter()
            grouped = by_subject(
                opened(events),
                lambda partition, raw: self._take_marks(self.break_progress[partition], raw),
                Outcome.decode,
                lambda o: o.break_id,
            )
            for partition, by_break in grouped.items():
                await self._judge_breaks(partition, by_break)
            metrics.BATCH_SECONDS.labels("breaks").observe(time.perf_counter() - started)

    async def _judge_breaks(self, partition: int, by_break: dict[str, list[Outcome]]) -> None:
        watermark = self.break_progress[partition].watermark()
        advanced = watermark is not None and watermark > self.breaks_judged_to.get(partition, -1)
        due = set(by_break)
        if advanced:
            assert watermark is not None
            self.breaks_judged_to[partition] = watermark
            due.update(self.breaks_by_partition.get(partition, ()))
        for break_id in sorted(due):
            windows = self.break_windows.get(break_id)
            if windows is None:
                continue  # decided under a catalog that had this break; this one has not
            key = break_id.encode()
            raw = self.journey_breaks.get(key)
            state = BreakState() if raw is None else BreakState.decode(raw)
            for outcome in by_break.get(break_id, []):
                # Refused only when every window it falls in is judged: a second delivery
                # (after a crash of the customer stage) of an attempt counted then.
                windows.add(state, outcome)
            if watermark is not None:
                for alert in windows.advance(state, watermark - self.core.catalog.scores.grace_ms):
                    await self._emit(alert)
            self.journey_breaks.put(partition, key, state.encode())
            metrics.export_journey_break(
                windows.journey,
                broken=state.incident_start_ms is not None,
                rate=state.last_rate,
                samples=state.last_samples,
            )

    async def _emit(self, alert: Alert) -> None:
        """Returns once the broker has the alert: only then may the state that made it change."""
        await self._deliver([self._alert_send(alert)])

    def _alert_send(self, alert: Alert) -> Send:
        """An alert as it goes out, counted and logged once when it is made."""
        metrics.ALERTS.labels(alert.kind.value, alert.status.value).inc()
        # A customer's fingerprint is an unkeyed hash of the id: logs get neither.
        about = "" if is_customer_kind(alert.kind.value) else f" {alert.subject}"
        log.info("alert %s %s%s", alert.status.value, alert.kind.value, about)
        topic = self.topology.alerts.get_topic_name()
        return Send(topic, alert.fingerprint.encode(), encode_alert(alert))


def gap_subjects(catalog: Catalog, cohorts: Cohorts) -> dict[str, GapRules]:
    """The subjects of gap rules: journey stages (consistency) and fatigue's cohorts."""
    found = {stage_subject(stage): rules for stage, rules in stage_rules(catalog).items()}
    if catalog.fatigue:
        found[FATIGUE_SUBJECT] = cohorts.rules
    return found


def downstream(topology: Topology, catalog: Catalog) -> dict[str, list[faust.TopicT]]:
    """Where each topic's event-time progress must be known: the stages it feeds."""
    events = [topology.touchpoint_partials, topology.customer_messages, topology.contacts]
    if catalog.breaks:
        # Without breaks nobody reads the visits topic: spare it the progress marks.
        events.append(topology.journey_visits)
    answers = [topology.touchpoint_partials]
    found = {
        topology.touchpoint_events.get_topic_name(): events,
        topology.survey_answers.get_topic_name(): answers,
        topology.identity_links.get_topic_name(): [topology.contacts],
        topology.contacts.get_topic_name(): [topology.customer_messages],
        topology.journey_visits.get_topic_name(): [topology.journey_outcomes],
    }
    if catalog.fatigue:
        # Answers go to their customer's frequency state too (through the contact stage when
        # they name a contact), whose cohort tallies go on to the scoring stage.
        answers += [topology.contacts, topology.customer_messages]
        found[topology.customer_messages.get_topic_name()] = [topology.touchpoint_partials]
    return found


def waiting_customer(raw: bytes) -> bool | None:
    """Due for judging: a stored customer whose messages or incident wait for event time."""
    return True if CustomerMessages.stored_waiting(raw) else None


def journey_due(raw: bytes) -> int | None:
    """When a stored customer has an attempt to decide, read from its header line alone."""
    return CustomerJourneys.header(raw)[1]


def by_subject(
    received: list[Received],
    take_marks: Callable[[int, bytes], None],
    decode: Callable[[bytes], T],
    subject_of: Callable[[T], str],
) -> dict[int, dict[str, list[T]]]:
    """A keyed stage's batch: its marks reported, its records by partition and subject.

    A partition that got only marks is there too, with no records: its watermark moved.
    """
    grouped: dict[int, dict[str, list[T]]] = {}
    for record in received:
        records = grouped.setdefault(record.partition, {})
        if record.key == PROGRESS_KEY:
            take_marks(record.partition, record.value)
            continue
        decoded = decode(record.value)
        records.setdefault(subject_of(decoded), []).append(decoded)
    return grouped


def by_partition(events: list[Event]) -> list[list[Event]]:
    """A batch split by the partition it came from, each in offset order."""
    split: dict[int, list[Event]] = {}
    for event in events:
        split.setdefault(event.message.partition, []).append(event)
    return list(split.values())


class Sources:
    """What this worker has read of each input partition: offsets and event time."""

    def __init__(self, topology: Topology, partitions: int) -> None:
        self.partitions = partitions
        self.inputs = frozenset(
            topic.get_topic_name()
            for topic in (
                topology.touchpoint_events,
                topology.survey_answers,
                topology.identity_links,
            )
        )
        self.watermarks: dict[str, int] = {}
        # When input was last read, here or by another worker of the group, and when
        # this worker last said which of its inputs are idle: monotonic.
        self.read_at = 0.0
        self.idle_reported_at = 0.0

    def expected(self, *topics: faust.TopicT) -> set[str]:
        return {
            source_name(topic.get_topic_name(), partition)
            for topic in topics
            for partition in range(self.partitions)
        }

    def is_input(self, topic: str) -> bool:
        return topic in self.inputs

    def saw(self, topic: str, partition: int, offset: int, occurred_at_ms: int | None) -> None:
        source = source_name(topic, partition)
        self.read_at = time.monotonic()
        if occurred_at_ms is not None and occurred_at_ms > self.watermarks.get(source, -1):
            self.watermarks[source] = occurred_at_ms

    def restore(self, source: str, watermark_ms: int | None) -> None:
        """Event time reached before a restart, from the checkpoint."""
        if watermark_ms is not None and watermark_ms > self.watermarks.get(source, -1):
            self.watermarks[source] = watermark_ms

    def reading(self, topic: str, partition: int) -> SourceMark:
        """How far a partition still being read has got in event time."""
        source = source_name(topic, partition)
        return SourceMark(source, self.watermarks.get(source), idle=False)

    def mark(self, app: faust.App, topic: str, partition: int, read_to: int) -> SourceMark:
        """Idle once what the agents finished (`read_to`: every offset below it, its sends
        out) reaches the end: not what they were handed, which may not be sent yet."""
        source = source_name(topic, partition)
        try:
            highwater = app.consumer.highwater(TP(topic, partition))
        except (ConsumerNotStarted, AssertionError):
            # Between rebalances nothing is known of the end, and a partition revoked while
            # the caller awaited is no longer assigned (aiokafka asserts): not idle, to be
            # safe. Uncaught, it crashed the worker in a rebalance (a timer's error stops
            # the app).
            highwater = None
        idle = highwater is not None and read_to >= highwater
        return SourceMark(source, self.watermarks.get(source), idle)
