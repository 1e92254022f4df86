"""The agents: they bind the pure core to topics and tables, one batch at a time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import faust
from aiokafka.partitioner import murmur2
from faust.exceptions import ConsumerNotStarted
from faust.types import TP, StreamT

from agents import metrics
from agents.streaming import Batches, Event, PartitionedState, payload
from agents.topology import PRODUCER_MAX_REQUEST_BYTES, Topology
from models.decode import (
    InvalidRecord,
    Reason,
    decode_identity_link,
    decode_survey_answer,
    decode_touchpoint_event,
    encode_alert,
)
from models.records import Alert
from streams.catalog import Catalog, ScoreMetric
from streams.dedup import SeenBatch, SeenIds, batch_key, id_digest
from streams.dedup import newest_ms as stored_newest_ms
from streams.delivery import Applied, Checkpoint, Send, unwrap, wrap
from streams.identity import HeldMessages, add_link, customer_at, encode_link
from streams.ingest import OutboundMessage, PartialTallies, TouchpointPartial, outbound_message
from streams.messaging import CustomerMessages, FrequencyPolicy
from streams.notify import is_customer_kind
from streams.privacy import pseudonymised
from streams.progress import (
    PROGRESS_KEY,
    SourceMark,
    SourceProgress,
    decode_marks,
    encode_marks,
    source_name,
)
from streams.sentiment import SentimentScorer
from streams.settings import Settings
from streams.timeliness import Timeliness
from streams.touchpoints import TouchpointState, TouchpointWindows

log = logging.getLogger(__name__)

# A dead letter's value and headers must fit one produce request (PRODUCER_MAX_REQUEST_BYTES).
MAX_DEAD_LETTER_BYTES = PRODUCER_MAX_REQUEST_BYTES - 16_384
MAX_ERROR_DETAIL = 1_000

# Marks an identity link on the contacts topic, which otherwise carries contact-only messages.
RECORD_HEADER = "cxmon-record"
LINK_RECORD = b"identity-link"


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
        # Where each topic's event-time progress must be known.
        self.downstream: dict[str, list[faust.TopicT]] = {
            topology.touchpoint_events.get_topic_name(): [
                topology.touchpoint_partials,
                topology.customer_messages,
                topology.contacts,
            ],
            topology.survey_answers.get_topic_name(): [topology.touchpoint_partials],
            topology.identity_links.get_topic_name(): [topology.contacts],
            topology.contacts.get_topic_name(): [topology.customer_messages],
        }
        self.frequency = PartitionedState(topology.customer_frequency)
        self.customers_due = PartitionedState(topology.customers_due)
        self.dedup_sweeps: dict[str, int] = {}
        self.sources = Sources(topology, settings.partitions)
        self.touchpoint_progress: defaultdict[int, SourceProgress] = defaultdict(
            lambda: SourceProgress(
                self.sources.expected(topology.touchpoint_events, topology.survey_answers)
            )
        )
        self.contact_progress: defaultdict[int, SourceProgress] = defaultdict(
            lambda: SourceProgress(
                self.sources.expected(topology.touchpoint_events, topology.identity_links)
            )
        )
        self.customer_progress: defaultdict[int, SourceProgress] = defaultdict(
            lambda: SourceProgress(
                self.sources.expected(topology.touchpoint_events, topology.contacts)
            )
        )
        self.customers_judged_to: dict[int, int] = {}
        self.judged_to: dict[int, int] = {}
        watched = set(core.catalog.touchpoints) | {m.touchpoint for m in core.catalog.key_moments}
        self.watched = frozenset(watched)
        self.key_moment_touchpoints: dict[int, list[str]] = defaultdict(list)
        for touchpoint in sorted({m.touchpoint for m in core.catalog.key_moments}):
            partition = partition_of(touchpoint.encode(), self.partitions)
            self.key_moment_touchpoints[partition].append(touchpoint)
        self.exported_scores: set[tuple[str, ScoreMetric]] = set()
        metrics.declare_catalog(core.catalog)

    def attach(self) -> None:
        topology = self.topology
        for topic, agent in (
            (topology.touchpoint_events, self.ingest_touchpoint_events),
            (topology.survey_answers, self.ingest_survey_answers),
            (topology.identity_links, self.ingest_identity_links),
            (topology.touchpoint_partials, self.score_touchpoints),
            (topology.contacts, self.resolve_contacts),
            (topology.customer_messages, self.count_customer_messages),
        ):
            self.app.agent(topic, name=agent.__name__)(agent)
        self.app.timer(0.5, name="report_idle_inputs")(self.report_idle_inputs)
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
                        ((RECORD_HEADER, LINK_RECORD),),
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
        if self._first_time(event, record.answer_id, record.answered_at_ms):
            self.partials.add_answer(record)

    def _valid(
        self, events: list[Event], decode: Callable[[bytes], Any], dead_letters: list[Send]
    ) -> list[tuple[Event, Any]]:
        """The records that decode and keep to time; the others become `dead_letters`."""
        valid = []
        now_ms = int(time.time() * 1000)
        for event in events:
            message = event.message
            metrics.RECORDS.labels(message.topic).inc()
            newest_ms = self.sources.watermarks.get(source_name(message.topic, message.partition))
            try:
                record = decode(payload(event))
                self.timeliness.check(record, newest_ms, now_ms)
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
                key=s.key, value=s.value, headers=list(s.headers) or None
            )
            for s in sends
        ]
        await asyncio.gather(*deliveries)

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
        prefix = f"{source}\x1f".encode()
        for key, raw in self.seen.items():
            if key.startswith(prefix):
                self.seen_ids.load(SeenBatch.decode(raw))

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
        prefix = f"{source}\x1f".encode()
        for key, raw in self.seen.items():
            if key.startswith(prefix) and stored_newest_ms(raw) < horizon:
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
            prefix = f"{source}\x1f".encode()
            for key, raw in self.seen.items():
                if key.startswith(prefix):
                    self.seen_ids.forget(SeenBatch.decode(raw))

    # Event-time progress: every downstream partition learns how far each input has got.

    async def _report_progress(self, events: list[Event]) -> None:
        """One message per downstream partition for the whole batch, whatever it touched."""
        touched = sorted({(e.message.topic, e.message.partition) for e in events})
        for topic in sorted({topic for topic, _ in touched}):
            marks = [
                self.sources.mark(self.app, t, partition) for t, partition in touched if t == topic
            ]
            await self._send_marks(marks, topic)

    async def report_idle_inputs(self) -> None:
        """Inputs with nothing left to read must not hold the watermark back, even if empty."""
        try:
            assigned = self.app.consumer.assignment()
        except ConsumerNotStarted:
            return
        for tp in assigned:
            if not self.sources.is_input(tp.topic):
                continue
            mark = self.sources.mark(self.app, tp.topic, tp.partition)
            if mark.idle and self.sources.claim_idle_report(mark):
                await self._send_marks([mark], tp.topic)

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
            for event in events:
                message = event.message
                partition, key = message.partition, message.key or b""
                if key == PROGRESS_KEY:
                    for mark in decode_marks(payload(event)):
                        self.contact_progress[partition].report(mark)
                    progressed.add(partition)
                elif (RECORD_HEADER, LINK_RECORD) in headers_of(event):
                    links = add_link(self.identities.get(key), payload(event))
                    if links is not None:
                        self.identities.put(partition, key, links)
                else:
                    self._hold(partition, key, OutboundMessage.decode(payload(event)))
            # Marks travel behind the messages they cover, so the next stage waits for them.
            topic = self.topology.contacts.get_topic_name()
            marks = {p: self.contact_progress[p] for p in sorted(progressed)}
            await self._release(
                {p: w for p, progress in marks.items() if (w := progress.watermark()) is not None}
            )
            for partition, progress in marks.items():
                mark = SourceMark(
                    source_name(topic, partition), progress.watermark(), progress.all_idle()
                )
                await self._send_marks([mark], topic)

    def _hold(self, partition: int, key: bytes, message: OutboundMessage) -> None:
        """Until every link up to its time is in, a contact-only message cannot be resolved."""
        raw = self.held.get(key)
        held = HeldMessages(partition) if raw is None else HeldMessages.decode(raw)
        held.hold(message)
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
            for message in due:
                customer = customer_at(links, message.message.sent_at_ms)
                if customer is None:
                    # Unlinked contacts are customers of their own until a link arrives.
                    metrics.UNRESOLVED_CONTACTS.inc()
                    customer = key.decode()
                value = message.resolved_to(customer).encode()
                sends.append(Send(topic, customer.encode(), value))
            left.append((key, held))
        # Sent before they leave the table: a crash in between sends them again, and
        # the frequency stage knows a message it already has.
        await self._deliver(sends)
        for key, held in left:
            if held.messages:
                self.held.put(held.partition, key, held.encode())
            else:
                self.held.delete(held.partition, key)

    # Stage 2a: per-touchpoint windows and key moments.

    async def score_touchpoints(self, stream: StreamT[bytes]) -> None:
        async for events in self.batches.of(stream):
            started = time.perf_counter()
            grouped: dict[int, dict[str, list[TouchpointPartial]]] = defaultdict(dict)
            for event in events:
                message = event.message
                if message.key == PROGRESS_KEY:
                    for mark in decode_marks(payload(event)):
                        self.touchpoint_progress[message.partition].report(mark)
                    grouped.setdefault(message.partition, {})
                    continue
                partial = TouchpointPartial.decode(payload(event))
                grouped[message.partition].setdefault(partial.touchpoint, []).append(partial)
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
        due = set(by_touchpoint)
        if advanced:
            due.update(self.key_moment_touchpoints.get(partition, ()))
        for touchpoint in sorted(due):
            await self._score(touchpoint, partition, by_touchpoint.get(touchpoint, []), watermark)

    async def _score(
        self,
        touchpoint: str,
        partition: int,
        partials: list[TouchpointPartial],
        watermark: int | None,
    ) -> None:
        key = touchpoint.encode()
        raw = self.windows.get(key)
        if raw is None and not partials:
            return
        applied, body = (Applied(), b"") if raw is None else unwrap(raw)
        state = TouchpointState() if raw is None else TouchpointState.decode(body)
        windows = self.partials.windows(touchpoint)
        for partial in partials:
            if not applied.take(partial.source, partial.last_offset):
                continue  # delivered again after a crash or a rebalance: already counted
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

    def forget_revoked_touchpoints(self, sender: Any, /, *args: Any, signal: Any, **_: Any) -> None:
        """Another worker owns these touchpoints now: its figures count, not our last ones."""
        (revoked,) = cast(tuple[set[TP]], args)
        topic = self.topology.touchpoint_partials.get_topic_name()
        gone = {tp.partition for tp in revoked if tp.topic == topic}
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
            by_customer: dict[str, tuple[int, list[OutboundMessage]]] = {}
            partitions: set[int] = set()
            for event in events:
                message = event.message
                partitions.add(message.partition)
                if message.key == PROGRESS_KEY:
                    for mark in decode_marks(payload(event)):
                        self.customer_progress[message.partition].report(mark)
                    continue
                outbound = OutboundMessage.decode(payload(event))
                assert outbound.customer_id is not None
                entry = by_customer.setdefault(outbound.customer_id, (message.partition, []))
                entry[1].append(outbound)
            # Each customer's state is read and written once per batch, however many
            # messages and judgements it takes in.
            touched: dict[bytes, tuple[int, CustomerMessages]] = {}
            for customer, (partition, messages) in by_customer.items():
                touched[customer.encode()] = (partition, self._record(customer, messages))
            for partition in sorted(partitions):
                await self._judge_customers(partition, touched)
            for key, (partition, state) in touched.items():
                self.frequency.put(partition, key, state.encode())
                due = self.customers_due.get(key) is not None
                if state.waiting and not due:
                    self.customers_due.put(partition, key, str(partition).encode())
                elif due and not state.waiting:
                    self.customers_due.delete(partition, key)
            metrics.BATCH_SECONDS.labels("frequency").observe(time.perf_counter() - started)

    def _record(self, customer: str, messages: list[OutboundMessage]) -> CustomerMessages:
        raw = self.frequency.get(customer.encode())
        state = CustomerMessages() if raw is None else CustomerMessages.decode(raw)
        for message in messages:
            if self.policy.record(state, message.message):
                metrics.count_outbound(message.message)
        window = self.policy.inside(state, state.messages[-1].sent_at_ms)
        metrics.CUSTOMER_WINDOW_MESSAGES.observe(len(self.policy.counted(window)))
        return state

    async def _judge_customers(
        self, partition: int, touched: dict[bytes, tuple[int, CustomerMessages]]
    ) -> None:
        """Judge every waiting customer of the partition up to its watermark, in event time."""
        watermark = self.customer_progress[partition].watermark()
        if watermark is None or watermark <= self.customers_judged_to.get(partition, -1):
            return
        self.customers_judged_to[partition] = watermark
        tag = str(partition).encode()
        waiting = {key for key, value in self.customers_due.items() if value == tag}
        waiting.update(key for key, (p, _) in touched.items() if p == partition)
        for key in sorted(waiting):
            if key in touched:
                state = touched[key][1]
            else:
                raw = self.frequency.get(key)
                if raw is None:
                    self.customers_due.delete(partition, key)
                    continue
                state = CustomerMessages.decode(raw)
                touched[key] = (partition, state)
            for alert in self.policy.advance(state, key.decode(), watermark):
                await self._emit(alert)

    async def _emit(self, alert: Alert) -> None:
        """Returns once the broker has the alert: only then may the state that made it change."""
        metrics.ALERTS.labels(alert.kind.value, alert.status.value).inc()
        # A customer's fingerprint is an unkeyed hash of the id: logs get neither.
        about = "" if is_customer_kind(alert.kind.value) else f" {alert.subject}"
        log.info("alert %s %s%s", alert.status.value, alert.kind.value, about)
        topic = self.topology.alerts.get_topic_name()
        await self._deliver([Send(topic, alert.fingerprint.encode(), encode_alert(alert))])


def by_partition(events: list[Event]) -> list[list[Event]]:
    """A batch split by the partition it came from, each in offset order."""
    split: dict[int, list[Event]] = {}
    for event in events:
        split.setdefault(event.message.partition, []).append(event)
    return list(split.values())


def headers_of(event: Event) -> list[tuple[str, bytes]]:
    headers = event.message.headers or []
    return list(headers.items()) if isinstance(headers, Mapping) else list(headers)


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
        self.offsets: dict[str, int] = {}
        self.reported_idle: set[str] = set()

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
        self.offsets[source] = offset
        self.reported_idle.discard(source)
        if occurred_at_ms is not None and occurred_at_ms > self.watermarks.get(source, -1):
            self.watermarks[source] = occurred_at_ms

    def restore(self, source: str, watermark_ms: int | None) -> None:
        """Event time reached before a restart, from the checkpoint."""
        if watermark_ms is not None and watermark_ms > self.watermarks.get(source, -1):
            self.watermarks[source] = watermark_ms

    def mark(self, app: faust.App, topic: str, partition: int) -> SourceMark:
        source = source_name(topic, partition)
        try:
            highwater = app.consumer.highwater(TP(topic, partition))
        except ConsumerNotStarted:
            # Between rebalances nothing is known of the end: not idle, to be safe.
            highwater = None
        read_to = self.offsets.get(source, -1) + 1
        idle = highwater is not None and read_to >= highwater
        return SourceMark(source, self.watermarks.get(source), idle)

    def claim_idle_report(self, mark: SourceMark) -> bool:
        """True once per idle spell of a source: the caller then reports it."""
        if mark.source in self.reported_idle:
            return False
        self.reported_idle.add(mark.source)
        return True
