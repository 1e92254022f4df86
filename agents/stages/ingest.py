"""The first stage: validate, deduplicate, fold into partial tallies, route what others need.

It reads the three input topics. Each input partition's batch is folded once and what it
sends is stored in a checkpoint before it goes out, so a crash sends it again rather than
folding again. It also tells every downstream partition how far each input has got in
event time, idle inputs included.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from typing import Any, cast

import faust
from faust.exceptions import ConsumerNotStarted
from faust.types import TP

from agents import metrics
from agents.handover import Record
from agents.stages.wiring import ANSWER_RECORD, LINK_RECORD, Wiring
from agents.streaming import Batch, PartitionedState
from agents.topology import PRODUCER_MAX_REQUEST_BYTES
from models.decode import (
    InvalidRecord,
    Reason,
    decode_identity_link,
    decode_survey_answer,
    decode_touchpoint_event,
)
from streams.core.identity import encode_link
from streams.core.ingest import PartialTallies, customer_answer, outbound_message
from streams.core.journeys import JourneyTracker, VisitBatch
from streams.core.privacy import pseudonymised
from streams.core.timeliness import Timeliness
from streams.state.dedup import SeenBatch, SeenIds, batch_key, batch_prefix, id_digest
from streams.state.dedup import newest_ms as stored_newest_ms
from streams.state.delivery import Checkpoint, Send
from streams.state.watermarks import SourceMark, source_name

log = logging.getLogger(__name__)

# A dead letter's value and headers must fit one produce request (PRODUCER_MAX_REQUEST_BYTES).
MAX_DEAD_LETTER_BYTES = PRODUCER_MAX_REQUEST_BYTES - 16_384
MAX_ERROR_DETAIL = 1_000

# Idle inputs are reported every tick while the group has read input lately, here or (as
# their marks say) on another worker: a burst may be reaching the partitions one after
# another, and ours vouch only for what the others had reached when they said so. At least
# this often otherwise.
IDLE_REPORT_WHILE_READING_S = 5.0
# How often the inputs are looked at for idle ones. An idle partition vouches downstream
# only for the time the others had reached when it last said so: every stage behind it
# waits up to this long, and a stage behind another stage twice (measured at 1,000
# events/s: alert p50 1.2 s with 0.5 s, see Performance in the README).
IDLE_REPORT_INTERVAL_S = 0.1
# Looked at again as soon as a batch of input is done, so that the idle ones vouch for its
# time at once, but not more often than this: each look asks the broker for the ends.
IDLE_REPORT_AFTER_INPUT_S = 0.02
IDLE_REPORT_AT_LEAST_EVERY_S = 15.0


class Ingest:
    """The input topics' agents, their checkpoints and seen ids, and the inputs' progress."""

    def __init__(self, wiring: Wiring, judged_to: Callable[[], int | None]) -> None:
        self.wiring = wiring
        self.app, self.topology, self.settings = wiring.app, wiring.topology, wiring.settings
        self.sources, self.batches = wiring.sources, wiring.batches
        topology, core = wiring.topology, wiring.core
        # How far the scoring stage has judged: records older than that come too late.
        self.judged_to = judged_to
        self.partials = PartialTallies(core.catalog, core.scorer)
        self.visit_batch = VisitBatch(JourneyTracker(core.catalog))
        self.timeliness = Timeliness(core.catalog.scores.grace_ms, wiring.settings.max_future_ms)
        self.seen = PartitionedState(topology.seen_ids)
        self.seen_ids = SeenIds()
        self.seen_loaded: set[str] = set()  # sources whose stored ids are in `seen_ids`
        self.seen_batch = SeenBatch(0)  # the ids first counted in the batch being folded
        self.dedup_sweeps: dict[str, int] = {}
        self.checkpoints = PartitionedState(topology.ingest_checkpoints)
        self.checkpoint_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        # The idle marks last sent: one said again unchanged would tell no stage anything.
        self.idle_said: dict[str, SourceMark] = {}
        self.input_done = asyncio.Event()

    async def ingest_touchpoint_events(self) -> None:
        topic = self.topology.touchpoint_events
        await self._checkpointed_input(topic, decode_touchpoint_event, self._fold_event)

    async def ingest_survey_answers(self) -> None:
        topic = self.topology.survey_answers
        await self._checkpointed_input(topic, decode_survey_answer, self._fold_answer)

    async def _checkpointed_input(
        self,
        topic: faust.TopicT,
        decode: Callable[[bytes], Any],
        fold: Callable[[Record, Any, list[Send]], None],
    ) -> None:
        async for batch in self.batches.fetched(topic.get_topic_name()):
            started = time.perf_counter()
            await self._ingest(batch, decode, fold)
            await self._report_progress(batch)
            self._observe_ingest(batch, started)

    async def ingest_identity_links(self) -> None:
        # Links are idempotent downstream: no checkpoint needed, at-least-once suffices.
        async for batch in self.batches.fetched(self.topology.identity_links.get_topic_name()):
            sends: list[Send] = []
            records = [record for records in batch.values() for record in records]
            for _, link in self._valid(records, decode_identity_link, dead_letters=sends):
                sends.append(
                    Send(
                        self.topology.contacts.get_topic_name(),
                        link.contact.key.encode(),
                        encode_link(link),
                        (LINK_RECORD,),
                    )
                )
            await self.wiring.deliver(sends)
            await self._report_progress(batch)

    def _observe_ingest(self, batch: Batch, started: float) -> None:
        metrics.BATCH_SECONDS.labels("ingest").observe(time.perf_counter() - started)
        oldest_ms = min(record.timestamp for records in batch.values() for record in records)
        metrics.INGEST_LATENCY.observe(max(0.0, time.time() - oldest_ms / 1000))

    async def _ingest(
        self,
        batch: Batch,
        decode: Callable[[bytes], Any],
        fold: Callable[[Record, Any, list[Send]], None],
    ) -> None:
        """Each input partition's batch folded once, its sends stored before they go out.

        The partitions of a batch share the round trips: their checkpoints are stored
        together, then everything they send goes out together.
        """
        async with contextlib.AsyncExitStack() as locks:
            dead_letters: list[Send] = []
            stored: list[tuple[int, bytes, Checkpoint]] = []
            for tp, records in batch.items():
                source = source_name(tp.topic, tp.partition)
                await locks.enter_async_context(self.checkpoint_locks[source])
                checkpoint = await self._resend_unsent(source, tp.partition)
                fresh = [r for r in records if r.offset > checkpoint.offset]
                for record in records[: len(records) - len(fresh)]:
                    # Done before a crash or a rebalance: its sends are out already.
                    self.sources.saw(tp.topic, tp.partition, record.offset, None)
                if not fresh:
                    continue
                sends: list[Send] = []
                self._load_seen(source)
                self.seen_batch = SeenBatch(tp.partition)
                for record, decoded in self._valid(fresh, decode, dead_letters):
                    fold(record, decoded, sends)
                self._store_seen(source, fresh[0].offset)
                last_offset = fresh[-1].offset
                partials = self.topology.touchpoint_partials.get_topic_name()
                for partial in self.partials.drain(source, last_offset):
                    sends.append(Send(partials, partial.touchpoint.encode(), partial.encode()))
                visits = self.topology.journey_visits.get_topic_name()
                for entry in self.visit_batch.drain():
                    sends.append(Send(visits, entry.customer.encode(), entry.encode()))
                watermark = self.sources.watermarks.get(source)
                stored.append(
                    (tp.partition, source.encode(), Checkpoint(last_offset, watermark, sends))
                )
            # Dead letters are for people, not for the next stage: out first, at least
            # once, and never kept in the checkpoint (a bad record may be a megabyte).
            await self.wiring.deliver(dead_letters)
            await asyncio.gather(
                *(
                    self.checkpoints.put(p, key, checkpoint.encode())
                    for p, key, checkpoint in stored
                )
            )
            unsent = [send for _, _, checkpoint in stored for send in checkpoint.unsent]
            await self.wiring.deliver(unsent)
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
            await self.wiring.deliver(checkpoint.unsent)
            checkpoint.unsent = []
            self.checkpoints.put(partition, source.encode(), checkpoint.encode())
        return checkpoint

    def _fold_event(self, fetched: Record, record: Any, sends: list[Send]) -> None:
        if not self._first_time(fetched, record.event_id, record.occurred_at_ms):
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

    def _fold_answer(self, fetched: Record, record: Any, sends: list[Send]) -> None:
        if not self._first_time(fetched, record.answer_id, record.answered_at_ms):
            return
        sentiment = self.partials.add_answer(record)
        if not self.wiring.fatigue:
            return
        answer = customer_answer(record, sentiment)
        if answer.customer_id is not None:
            topic, key = self.topology.customer_messages, answer.customer_id
        else:
            assert answer.contact_key is not None
            topic, key = self.topology.contacts, answer.contact_key
        sends.append(Send(topic.get_topic_name(), key.encode(), answer.encode(), (ANSWER_RECORD,)))

    def _valid(
        self, records: list[Record], decode: Callable[[bytes], Any], dead_letters: list[Send]
    ) -> list[tuple[Record, Any]]:
        """The records that decode and keep to time; the others become `dead_letters`."""
        valid = []
        now_ms = int(time.time() * 1000)
        judged_ms = self.judged_to()
        if records:
            metrics.RECORDS.labels(records[0].topic).inc(len(records))
        for message in records:
            newest_ms = self.sources.watermarks.get(source_name(message.topic, message.partition))
            try:
                # A tombstone reads as empty, and fails validation.
                record = decode(message.value or b"")
                self.timeliness.check(record, newest_ms, now_ms, judged_ms)
                if self.settings.pseudonymise_ids:
                    record = pseudonymised(record, self.settings.pseudonym_key)
            except InvalidRecord as exc:
                if exc.reason is Reason.LATE:
                    metrics.LATE_RECORDS.inc()
                dead_letters.append(self._dead_letter(message, exc))
                continue
            valid.append((message, record))
            self.sources.saw(message.topic, message.partition, message.offset, record.at_ms)
        return valid

    def _dead_letter(self, message: Record, error: InvalidRecord) -> Send:
        self.sources.saw(message.topic, message.partition, message.offset, None)
        metrics.DEAD_LETTERS.labels(message.topic, error.reason.value).inc()
        value = message.value or b""
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

    def _first_time(self, message: Record, record_id: str, occurred_at_ms: int) -> bool:
        """False for a duplicate id; the same record read again after a crash is no duplicate."""
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

    async def _report_progress(self, batch: Batch) -> None:
        """One message per downstream partition for the whole batch, whatever it touched.

        Never idle: the end a batch's fetch saw may be behind the log by now, and an idle
        mark sent after the others' newer ones would vouch for their times. Whether a
        partition has caught up is for `report_idle_inputs`, which asks the broker.
        """
        marks: defaultdict[str, list[SourceMark]] = defaultdict(list)
        for tp in sorted(batch):
            mark = self.sources.reading(tp.topic, tp.partition)
            self.idle_said.pop(mark.source, None)
            marks[tp.topic].append(mark)
        await self.wiring.send_marks(marks)
        self.input_done.set()

    async def keep_reporting_idle_inputs(self) -> None:
        """`report_idle_inputs` `IDLE_REPORT_INTERVAL_S` after the last one ended, or
        `IDLE_REPORT_AFTER_INPUT_S` after it once a batch of input is done: a slow report
        (the broker's answer) delays the next, and is no warning."""
        while not self.app.should_stop:
            await asyncio.sleep(IDLE_REPORT_AFTER_INPUT_S)
            with contextlib.suppress(TimeoutError):
                waiting_s = IDLE_REPORT_INTERVAL_S - IDLE_REPORT_AFTER_INPUT_S
                await asyncio.wait_for(self.input_done.wait(), waiting_s)
            self.input_done.clear()
            await self.report_idle_inputs()

    async def report_idle_inputs(self) -> None:
        """Inputs with nothing left to read must not hold the watermark back, even if empty.

        Said again as the others get further: downstream an idle input vouches only for
        how far the others had got when it last said so (see `SourceProgress`). So every
        idle mark is said again once the marks this worker's stages take (its own, and
        other workers') have changed since the last report, at least every
        `IDLE_REPORT_AT_LEAST_EVERY_S`, and after a rebalance (a stage's partition given to
        another worker starts its marks afresh); otherwise only the marks that changed.
        Once nothing changes any more, the inputs fall silent and the stages can drain.
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
        if not reading or self.sources.heard_changed_at >= self.sources.idle_reported_at:
            self.idle_said.clear()
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
        # Records published after the question below may be read, and marked downstream,
        # before these marks arrive: they vouch for no time learnt of after it was asked.
        vouches = self.sources.newest_known()
        try:
            ends = await self.app.consumer.highwaters(*candidates)
        except Exception:
            log.warning("the inputs' ends are unknown; idle ones say so next time", exc_info=True)
            return
        idle: defaultdict[str, list[SourceMark]] = defaultdict(list)
        for tp, (read_to, mark) in candidates.items():
            if tp in ends and read_to >= ends[tp]:
                said = replace(mark, vouches_ms=vouches)
                if self.idle_said.get(said.source) != said:
                    self.idle_said[said.source] = said
                    idle[tp.topic].append(said)
        await self.wiring.send_marks(idle)

    def say_idle_again(self, sender: Any, /, *args: Any, signal: Any, **_: Any) -> None:
        """After a rebalance every idle mark is said again, changed or not."""
        self.idle_said.clear()

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
