"""Plumbing every agent shares: batches, how far each partition is processed, partitioned tables."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

import faust
from aiokafka.structs import RecordMetadata
from faust.exceptions import ConsumerNotStarted
from faust.types import TP, StreamT

from agents import metrics
from agents.commits import Offsets
from agents.handover import Handover, Record
from agents.tables import BulkRestoredTable
from agents.topology import App
from agents.transport import PacedTransport
from streams.settings import Settings
from streams.state.envelope import ENVELOPE_KEY, unpack

# A stage's batch: each partition's records, in offset order.
Batch = dict[TP, list[Record]]

LAG_INTERVAL_S = 5.0


def record_offset(record: Record) -> int:
    return cast(int, record.offset)


def every_record(batch: Batch) -> Iterator[Record]:
    return itertools.chain.from_iterable(batch.values())


@dataclass(frozen=True, slots=True)
class Received:
    """A record of an internal topic, whether it came alone or in an envelope."""

    partition: int
    offset: int  # of the message that carried it
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


def opened(records: Iterable[Record]) -> list[Received]:
    """The records of an internal topic, envelopes taken apart, in order."""
    received = []
    for record in records:
        key, partition, offset = record.key or b"", record.partition, record.offset
        value = record.value or b""
        if key == ENVELOPE_KEY:
            received += [
                Received(partition, offset, r.key, r.value, r.headers) for r in unpack(value)
            ]
        else:
            received.append(Received(partition, offset, key, value, tuple(record.headers)))
    return received


class PartitionedState:
    """A table written with an explicit changelog partition, so batches may mix partitions."""

    def __init__(self, table: BulkRestoredTable) -> None:
        self.table = table
        self.store = table.store
        self.values = cast(dict[bytes, bytes], self.store.data)
        self.changelog = table.changelog_topic.get_topic_name()
        self.outbox = cast(App, table.app).outbox

    def get(self, key: bytes) -> bytes | None:
        return self.values.get(key)

    def put(self, partition: int, key: bytes, value: bytes) -> asyncio.Future[RecordMetadata]:
        """Write now; the changelog follows, and the result is done once the broker has it."""
        self.store.put(partition, key, value)
        return self._log(partition, key, value)

    def delete(self, partition: int, key: bytes) -> asyncio.Future[RecordMetadata] | None:
        """Delete now; the result, if there was anything, is done once the broker has it."""
        if key not in self.values:
            return None
        self.store.delete(key)
        return self._log(partition, key, None)

    def _log(
        self, partition: int, key: bytes, value: bytes | None
    ) -> asyncio.Future[RecordMetadata]:
        written = self.outbox.send(self.changelog, key, value, partition)
        written.add_done_callback(self._held)
        return written

    def _held(self, written: asyncio.Future[RecordMetadata]) -> None:
        """The store learns how far its own acknowledged writes go, as from Faust's send."""
        if not written.cancelled() and written.exception() is None:
            done = written.result()
            self.store.set_persisted_offset(TP(done.topic, done.partition), done.offset)

    def items(self) -> list[tuple[bytes, bytes]]:
        return list(self.values.items())


V = TypeVar("V")


class DueIndex(Generic[V]):
    """Per partition, the keys of a table waiting for event time, with when or why.

    Kept in memory as the stage writes; read again from the table (by `due_of` on each
    stored value), in one pass for every partition, the first time it is asked for after
    each recovery, when the table may have gained or lost partitions: a revoke alone is no
    safe moment to forget, as a batch still in flight could index a partition again just
    before it goes.
    """

    def __init__(self, state: PartitionedState, due_of: Callable[[bytes], V | None]) -> None:
        self.state = state
        self.due_of = due_of
        self.partitions: defaultdict[int, dict[bytes, V]] | None = None
        self.recoveries = state.store.recoveries

    def of(self, partition: int) -> dict[bytes, V]:
        store = self.state.store
        if self.partitions is None or self.recoveries != store.recoveries:
            self.recoveries = store.recoveries
            self.partitions = defaultdict(dict)
            for key, raw in self.state.values.items():
                value = self.due_of(raw)
                owner = store.partition_of(key)
                if value is not None and owner is not None:
                    self.partitions[owner][key] = value
        return self.partitions[partition]

    def set(self, partition: int, key: bytes, value: V | None) -> None:
        if value is None:
            self.of(partition).pop(key, None)
        else:
            self.of(partition)[key] = value


class Batches:
    """Hands agents their records a batch at a time and measures what is left to process."""

    def __init__(self, app: faust.App, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.processed_offsets: dict[TP, int] = {}
        self.offsets = Offsets(app, settings)
        self.handover = Handover(app, max_records=settings.batch_size * 2)
        self.lag: list[metrics.LagReading] = []
        metrics.CONSUMER_LAG.readings = lambda: self.lag

    def attach(self) -> None:
        self.app.timer(LAG_INTERVAL_S, name="measure_consumer_lag")(self.measure_consumer_lag)
        self.offsets.attach()
        self.app.on_partitions_revoked.connect(self.on_partitions_revoked)
        cast(PacedTransport, self.app.transport).handover = self.handover
        self.handover.on_quiet = self.offsets.commit_soon

    def bind(self, topic: faust.TopicT, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        """`loop` reads `topic` through `fetched`. A Faust agent of that name subscribes the
        topic and has its partitions assigned; its own stream stays empty."""
        self.handover.serve(topic.get_topic_name())

        async def agent(_: StreamT[bytes]) -> None:
            await loop()

        self.app.agent(topic, name=name)(agent)

    async def fetched(self, topic: str) -> AsyncIterator[Batch]:
        """A bound topic's records as fetched: whatever has come, whenever asked for more."""
        while True:
            fetched = await self.handover.take(topic)
            try:
                admitted = await self.offsets.admit(fetched, record_offset)
                if admitted:
                    async with self._finishing(admitted):
                        yield admitted
            finally:
                self.handover.done()

    @contextlib.asynccontextmanager
    async def _finishing(self, batch: Batch) -> AsyncIterator[None]:
        """Around a batch's processing: what is finished is committed, what is abandoned
        is read again."""
        try:
            yield
        except BaseException:
            self.offsets.abandon(batch)
            raise
        for tp, records in batch.items():
            last = record_offset(records[-1])
            self.offsets.finished(tp, last)
            self.processed_offsets[tp] = last

    async def on_partitions_revoked(
        self, sender: Any, /, *args: Any, signal: Any, **kwargs: Any
    ) -> None:
        """The batches the stages are working on finished, then the revoked partitions'
        offsets committed."""
        await self.handover.on_revoked()
        await self.offsets.on_partitions_revoked(sender, *args, signal=signal, **kwargs)

    async def measure_consumer_lag(self) -> None:
        """Lag from what the agents finished, not what the consumer fetched ahead of them."""
        consumer = self.app.consumer
        readings = []
        try:
            for tp in sorted(consumer.assignment()):
                processed = self.processed_offsets.get(tp)
                position = processed + 1 if processed is not None else await consumer.position(tp)
                highwater = consumer.highwater(tp)
                if position is not None and highwater is not None:
                    readings.append((tp.topic, tp.partition, max(0, highwater - position)))
        except ConsumerNotStarted:
            return
        self.lag = readings
