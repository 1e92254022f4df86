"""Records handed from the consumer to their stage a fetch at a time, past Faust's streams.

Faust turns every fetched record into a message, an event on each of its channels, a queue
put and get, a stream step and an ack: about 50 µs a record for an agent that only decodes
(bench/faust_floor.py), more than the first stage's own work; and its batches
(`take_events`) wait for a timer. The stages' records skip all of it: the consumer's drain
loop hands each fetch's records of their topics, as aiokafka read them, to the stage that
reads them, which takes whatever has come whenever it is ready for more. Faust still
subscribes the topics, assigns their partitions, and owns the group, the rebalances and the
tables (their changelogs go through Faust's recovery as before); the monitor's own ledger
(agents/commits.py) admits the records in offset order and commits what a stage finished.

A rebalance drops what waits here, as Faust drops what waits in its streams' buffers: the
ledger reads a partition again from what was finished. The batch a stage is working on when
partitions are revoked is finished before their offsets are committed and they go.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeAlias

import faust
from aiokafka.structs import ConsumerRecord
from faust.types import TP

Record: TypeAlias = ConsumerRecord[bytes, bytes]


@dataclass(frozen=True, slots=True)
class Fetch:
    """Records of one topic from one fetch, by partition, and the generation that read them."""

    generation: int
    partitions: Mapping[TP, list[Record]]

    @property
    def size(self) -> int:
        return sum(len(records) for records in self.partitions.values())


class Handover:
    """Per input topic, the fetches waiting for its stage, at most about `max_records`;
    a stage takes at most `max_records` of each partition at a time.

    What a batch of a partition writes in one record (its input checkpoint, its ids) grows
    with the batch, and must fit one produce request. The local broker answers a fetch
    with everything up to the end of the partition, whatever the fetch size asked for, so
    a worker far behind would otherwise take a whole partition at once.
    """

    def __init__(self, app: faust.App, max_records: int) -> None:
        self.app = app
        self.topics: set[str] = set()
        self.max_records = max_records
        self.waiting: defaultdict[str, deque[Fetch]] = defaultdict(deque)
        self.waiting_records = 0
        self.arrived: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.room = asyncio.Event()
        self.room.set()
        # Stages working on a batch, and set whenever none is.
        self.working = 0
        self.idle = asyncio.Event()
        self.idle.set()
        # Called whenever the stages have finished all that was handed over.
        self.on_quiet: Callable[[], None] = lambda: None

    def serve(self, topic: str) -> None:
        """Records of `topic` come here from now on; before the consumer reads any."""
        self.topics.add(topic)

    def takes(self, topic: str) -> bool:
        return topic in self.topics

    async def put(self, generation: int, records: Mapping[TP, list[Record]]) -> None:
        """From the consumer's drain loop: waits while the stages are `max_records` behind,
        as Faust's waits on a full stream buffer, unless a rebalance drops the records."""
        flow = self.app.flow_control
        while self.waiting_records >= self.max_records and flow.is_active():
            self.room.clear()
            await self.room.wait()
        if not flow.is_active() or generation != self.app.consumer_generation_id:
            return
        by_topic: defaultdict[str, dict[TP, list[Record]]] = defaultdict(dict)
        for tp, fetched in records.items():
            if fetched:
                by_topic[tp.topic][TP(tp.topic, tp.partition)] = fetched
        for topic, partitions in by_topic.items():
            fetch = Fetch(generation, partitions)
            self.waiting[topic].append(fetch)
            self.waiting_records += fetch.size
            self.arrived[topic].set()

    async def take(self, topic: str) -> dict[TP, list[Record]]:
        """A stage's next batch, everything waiting for it of the current generation;
        `done` must follow, once the batch is finished or given up."""
        waiting, arrived = self.waiting[topic], self.arrived[topic]
        while True:
            while not waiting:
                arrived.clear()
                await arrived.wait()
            # Not while partitions are being revoked and assigned: what waits may be theirs.
            await self.app.flow_control.acquire()
            batch: dict[TP, list[Record]] = {}
            while waiting:
                fetch = waiting.popleft()
                self.waiting_records -= fetch.size
                if fetch.generation != self.app.consumer_generation_id:
                    continue  # read before a rebalance: read again after it, where it left off
                rest = self._fill(batch, fetch)
                if rest is not None:
                    # First in line, so each partition's records still come in order.
                    waiting.appendleft(rest)
                    self.waiting_records += rest.size
                    break
            self.room.set()
            if batch:
                self.working += 1
                self.idle.clear()
                return batch

    def _fill(self, batch: dict[TP, list[Record]], fetch: Fetch) -> Fetch | None:
        """`fetch`'s records added to `batch` up to `max_records` a partition; what is left."""
        rest: dict[TP, list[Record]] = {}
        for tp, records in fetch.partitions.items():
            taken = batch.setdefault(tp, [])
            room = self.max_records - len(taken)
            taken += records[:room]
            if len(records) > room:
                rest[tp] = records[room:]
        return Fetch(fetch.generation, rest) if rest else None

    def done(self) -> None:
        self.working -= 1
        if not self.working:
            self.idle.set()
            if not self.waiting_records:
                self.on_quiet()

    async def on_revoked(self) -> None:
        """Drops what waits, and returns once the batches being worked on are finished."""
        for waiting in self.waiting.values():
            waiting.clear()
        self.waiting_records = 0
        self.room.set()
        await self.idle.wait()
