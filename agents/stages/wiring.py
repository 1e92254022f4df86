"""What every stage shares: the core it applies, how it sends, and event-time progress."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar, cast

import faust
from aiokafka.partitioner import murmur2
from faust.exceptions import ConsumerNotStarted
from faust.types import TP

from agents import metrics
from agents.streaming import Batches, Received, every_record, opened
from agents.topology import PRODUCER_MAX_REQUEST_BYTES, App, Topology
from models.decode import encode_alert
from models.records import Alert
from streams.catalog import Catalog
from streams.core.notify import is_customer_kind
from streams.core.sentiment import SentimentScorer
from streams.settings import Settings
from streams.state.delivery import Send
from streams.state.envelope import ENVELOPE_KEY, Record, pack
from streams.state.watermarks import (
    PROGRESS_KEY,
    SourceMark,
    SourceProgress,
    encode_marks,
    source_name,
)

log = logging.getLogger(__name__)

# An envelope is one message: well within one request.
MAX_ENVELOPE_BYTES = PRODUCER_MAX_REQUEST_BYTES // 4

# Marks an identity link on the contacts topic, and a survey answer there and on the
# customer-messages topic, which otherwise carry outbound messages.
RECORD_HEADER = "cxmon-record"
LINK_RECORD = (RECORD_HEADER, b"identity-link")
ANSWER_RECORD = (RECORD_HEADER, b"survey-answer")

T = TypeVar("T")


def partition_of(key: bytes, partitions: int) -> int:
    """Where the producer's default partitioner puts `key`: Kafka's murmur2, as in Java."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


@dataclass(frozen=True)
class Core:
    """What the agents apply: the catalog and the scorer, built once at start."""

    catalog: Catalog
    scorer: SentimentScorer


class Wiring:
    """One worker's app, topics and settings, and the sending every stage does alike."""

    def __init__(
        self, app: faust.App, topology: Topology, settings: Settings, core: Core, batches: Batches
    ) -> None:
        self.app = app
        self.topology = topology
        self.settings = settings
        self.core = core
        self.batches = batches
        self.partitions = settings.partitions
        self.outbox = cast(App, app).outbox
        self.sources = Sources(topology, settings.partitions)
        self.enveloped = frozenset(topic.get_topic_name() for topic in topology.internal())
        self.downstream = downstream(topology, core.catalog)
        self.fatigue = bool(core.catalog.fatigue)

    def progress(self, *inputs: faust.TopicT) -> defaultdict[int, SourceProgress]:
        """Per partition of a stage: how far each partition of its inputs has got."""
        expected = self.sources.expected(*inputs)
        stages = self.sources.expected(
            *(topic for topic in inputs if not self.sources.is_input(topic.get_topic_name()))
        )
        return defaultdict(lambda: SourceProgress(expected, stages))

    def by_partition(self, keys: set[str]) -> dict[int, list[str]]:
        """Catalog keys (touchpoints, breaks) by the partition their state lives in."""
        found: dict[int, list[str]] = defaultdict(list)
        for key in sorted(keys):
            found[partition_of(key.encode(), self.partitions)].append(key)
        return found

    async def deliver(self, sends: list[Send]) -> None:
        """Send, and return once the broker has every record."""
        outbox = self.outbox
        await asyncio.gather(
            *(
                outbox.send(s.topic, s.key, s.value, partition, list(s.headers) or None)
                for s, partition in self._outgoing(sends)
            )
        )

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

    def take_marks(self, progress: SourceProgress, raw: bytes) -> None:
        marks = progress.take(raw)
        if any(not mark.idle for mark in marks):
            self.sources.read_at = time.monotonic()
        self.sources.hear(marks)

    async def send_marks(self, marks: Mapping[str, list[SourceMark]]) -> None:
        """Every partition of every topic fed from each origin learns how far it has got:
        one message a partition, whatever the number of origins and marks."""
        bound: dict[faust.TopicT, list[SourceMark]] = {}
        for origin, reached in marks.items():
            for topic in self.downstream[origin]:
                bound.setdefault(topic, []).extend(reached)
        for topic, reached in bound.items():
            name, value = topic.get_topic_name(), encode_marks(reached)
            for partition in range(self.partitions):
                self.outbox.send(name, PROGRESS_KEY, value, partition)

    async def pass_marks_on(
        self, topic: faust.TopicT, progress: dict[int, SourceProgress], partitions: set[int]
    ) -> None:
        """A stage's own progress, for the stages it feeds: sent behind the records it
        covers, so they wait for them."""
        name = topic.get_topic_name()
        marks = []
        for partition in sorted(partitions):
            reached = progress[partition]
            marks.append(
                SourceMark(source_name(name, partition), reached.watermark(), reached.all_idle())
            )
        if marks:
            await self.send_marks({name: marks})

    async def judge_by_subject(
        self,
        topic: faust.TopicT,
        stage: str,
        *,
        progress: dict[int, SourceProgress],
        decode: Callable[[bytes], T],
        subject_of: Callable[[T], str],
        judge: Callable[[int, dict[str, list[T]]], Awaitable[None]],
    ) -> None:
        """A stage keyed by subject: each batch's marks taken, its records judged by
        partition (a partition that got only marks too: its watermark moved)."""
        async for batch in self.batches.fetched(topic.get_topic_name()):
            started = time.perf_counter()
            grouped = by_subject(
                opened(every_record(batch)),
                lambda partition, raw: self.take_marks(progress[partition], raw),
                decode,
                subject_of,
            )
            for partition, records in grouped.items():
                await judge(partition, records)
            metrics.BATCH_SECONDS.labels(stage).observe(time.perf_counter() - started)

    async def emit(self, alert: Alert) -> None:
        """Returns once the broker has the alert: only then may the state that made it change."""
        await self.deliver([self.alert_send(alert)])

    def alert_send(self, alert: Alert) -> Send:
        """An alert as it goes out, counted and logged once when it is made."""
        metrics.ALERTS.labels(alert.kind.value, alert.status.value).inc()
        # A customer's fingerprint is an unkeyed hash of the id: logs get neither.
        about = "" if is_customer_kind(alert.kind.value) else f" {alert.subject}"
        log.info("alert %s %s%s", alert.status.value, alert.kind.value, about)
        topic = self.topology.alerts.get_topic_name()
        return Send(topic, alert.fingerprint.encode(), encode_alert(alert))


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
        # The newest event time the progress marks this worker's stages took have said,
        # whoever read it; the last mark taken of each partition, and when one last changed.
        self.heard_ms: int | None = None
        self.heard: dict[str, SourceMark] = {}
        self.heard_changed_at = 0.0
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

    def hear(self, marks: list[SourceMark]) -> None:
        for mark in marks:
            if self.heard.get(mark.source) != mark:
                self.heard[mark.source] = mark
                self.heard_changed_at = time.monotonic()
            if mark.watermark_ms is not None and mark.watermark_ms > (self.heard_ms or -1):
                self.heard_ms = mark.watermark_ms

    def newest_known(self) -> int | None:
        """The newest event time this worker knows an input has reached, here or elsewhere."""
        known = [*self.watermarks.values(), *([] if self.heard_ms is None else [self.heard_ms])]
        return max(known, default=None)

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
