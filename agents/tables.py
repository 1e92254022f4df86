"""Tables restored at a raw consumer's speed: changelogs read in bulk before Faust's recovery.

Faust (0.15.3) restores an in-memory table one changelog record at a time through its
stream machinery, some thousands of records a second, and asks its store where to begin:
an in-memory store always answers "from the start". Here, when a rebalance hands this
worker changelog partitions, one plain consumer reads them all from where this worker's
copy ends, and the store then answers with the last offset it holds, so Faust's own
recovery reads only what was written meanwhile. A partition this worker keeps across a
rebalance is not read again: the store knows every offset of its own acknowledged writes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Set
from typing import Any, cast

import faust
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from faust.stores.memory import Store
from faust.types import TP, AppT

from streams.settings import Settings

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 5.0


class BulkRestoredStore(Store[bytes, bytes]):
    """An in-memory table store that knows up to which changelog offset it holds each partition."""

    table: BulkRestoredTable

    def __post_init__(self) -> None:
        super().__post_init__()
        self.active: set[int] = set()  # the partitions this worker was given
        self.held: dict[int, int] = {}  # partition -> last changelog offset it holds
        self.recoveries = 0  # rebalances recovered from: what was derived from the data is stale

    def put(self, partition: int, key: bytes, value: bytes) -> None:
        self.data[key] = value
        self._key_partition[key] = partition

    def partition_of(self, key: bytes) -> int | None:
        """The changelog partition `key` was last written to or restored from."""
        partition: int | None = self._key_partition.get(key)
        return partition

    def delete(self, key: bytes) -> None:
        self.data.pop(key, None)
        self._key_partition.pop(key, None)

    def apply(self, partition: int, records: Iterable[ConsumerRecord[bytes, bytes]]) -> None:
        """Changelog records, oldest first: the last value of each key wins, none deletes it."""
        last = None
        for record in records:
            key = record.key or b""
            if record.value is None:
                self.delete(key)
            else:
                self.put(partition, key, record.value)
            last = record.offset
        if last is not None:
            self.held[partition] = last

    def keep(self, partitions: Set[int]) -> None:
        """Partitions not given again are another worker's: their offsets no longer hold."""
        self.active = set(partitions)
        for partition in set(self.held) - self.active:
            del self.held[partition]

    def persisted_offset(self, tp: TP) -> int | None:
        return self.held.get(tp.partition)

    def set_persisted_offset(self, tp: TP, offset: int) -> None:
        # Faust calls this for each acknowledged write. Only a partition this worker holds
        # moves on: a late acknowledgement after a revoke must not vouch for a copy it lost.
        if tp.partition in self.active and offset > self.held.get(tp.partition, -1):
            self.held[tp.partition] = offset

    async def on_recovery_completed(self, active_tps: set[TP], standby_tps: set[TP]) -> None:
        await super().on_recovery_completed(active_tps, standby_tps)
        self.recoveries += 1

    async def on_rebalance(
        self, assigned: Set[TP], revoked: Set[TP], newly_assigned: Set[TP], generation_id: int = 0
    ) -> None:
        await self.table.loader.load(self.app, generation_id)


class BulkRestoredTable(faust.Table[bytes, bytes]):
    """A table with a `BulkRestoredStore`, loaded by one loader shared by every table."""

    def __init__(self, app: faust.App, loader: ChangelogLoader, **kwargs: Any) -> None:
        self.loader = loader
        super().__init__(app, **kwargs)
        loader.register(self)

    @property
    def store(self) -> BulkRestoredStore:
        return cast(BulkRestoredStore, self.data)

    def _new_store(self) -> BulkRestoredStore:
        return BulkRestoredStore(
            "memory://",
            self.app,
            self,
            table_name=self.name,
            key_type=self.key_type,
            key_serializer=self.key_serializer,
            value_serializer=self.value_serializer,
            value_type=self.value_type,
            loop=self.loop,
            options=self.options,
        )


class ChangelogLoader:
    """Reads the changelog partitions a rebalance gives this worker, for every table at once."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.tables: dict[str, BulkRestoredTable] = {}  # by changelog topic
        self.loaded_generation: int | None = None

    def register(self, table: BulkRestoredTable) -> None:
        self.tables[table.changelog_topic.get_topic_name()] = table

    async def load(self, app: AppT, generation_id: int) -> None:
        """Once a rebalance: each table asks, the first one's call reads for all of them."""
        if self.loaded_generation == generation_id:
            return
        self.loaded_generation = generation_id
        actives = {tp for tp in app.assignor.assigned_actives() if tp.topic in self.tables}
        try:
            await self.load_partitions(actives)
        except Exception:
            # What was read is held with its offsets; Faust's recovery reads the rest.
            log.exception("bulk restore of the changelogs failed; Faust's recovery goes on")

    async def load_partitions(self, actives: Set[TP]) -> int:
        """Each active changelog partition read from where this worker's copy ends to its end."""
        for topic, table in self.tables.items():
            table.store.keep({tp.partition for tp in actives if tp.topic == topic})
        if not actives:
            return 0
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap_servers,
            enable_auto_commit=False,
            **self.settings.broker_security.client_options(),
        )
        await consumer.start()
        try:
            return await self._read(consumer, actives)
        finally:
            await consumer.stop()

    async def _read(self, consumer: AIOKafkaConsumer, actives: Set[TP]) -> int:
        stores = {topic: table.store for topic, table in self.tables.items()}
        partitions = [TopicPartition(tp.topic, tp.partition) for tp in sorted(actives)]
        consumer.assign(partitions)
        ends: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
        starts = {tp: stores[tp.topic].held.get(tp.partition, -1) + 1 for tp in partitions}
        todo = {tp for tp in partitions if starts[tp] < ends[tp]}
        for tp in todo:
            consumer.seek(tp, starts[tp])
        consumer.pause(*(set(partitions) - todo))
        total = sum(ends[tp] - starts[tp] for tp in todo)
        read, started = 0, time.monotonic()
        reported = started
        log.info("restoring %d changelog records of %d partitions in bulk", total, len(todo))
        while todo:
            fetched = await consumer.getmany(*todo, timeout_ms=1_000)
            for tp, records in fetched.items():
                stores[tp.topic].apply(tp.partition, records)
                read += len(records)
            for tp in list(todo):
                if await consumer.position(tp) >= ends[tp]:
                    todo.discard(tp)
                    consumer.pause(tp)
            if time.monotonic() - reported >= PROGRESS_EVERY_S:
                reported = time.monotonic()
                log.info("restored %d of %d changelog records", read, total)
        log.info("restored %d changelog records in %.1f s", read, time.monotonic() - started)
        return read
