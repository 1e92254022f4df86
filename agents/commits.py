"""The monitor commits its input offsets itself: what its agents finished, in offset order.

Faust drops every fetched record below the highest offset it has delivered of its partition.
After a seek (to committed offsets on a rebalance or a restart), records fetched before the
seek still arrive and raise that mark, and the records the seek asked for are then dropped:
a hole (its streams also skip, and ack, records of an older generation), which its
ack-driven commits either never pass or, taking it for a gap in the log, commit past unread.
So Faust's filter is switched off and it keeps no acked offsets (it commits nothing); these
cursors admit records in offset order, read a partition again from a hole, and commit what
the agents finished.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from typing import Any, TypeVar, cast

import faust
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from faust.types import TP

from agents.topology import App
from streams.settings import Settings
from streams.state.offset_ledger import Admission, Cursors

log = logging.getLogger(__name__)

T = TypeVar("T")

# Faust's own default commit interval.
COMMIT_INTERVAL_S = 2.8
# Once the stages have finished everything handed to them, what they finished is committed
# then rather than at the next tick, so the group's lag reads 0 once they are through; at
# most this often.
QUIET_COMMIT_INTERVAL_S = 0.5
# How often partitions read past records that never reached an agent are looked for.
LOOK_INTERVAL_S = 10.0


class Offsets:
    """Admits each batch in offset order and commits what the agents finished."""

    def __init__(self, app: faust.App, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.cursors: Cursors[TP] = Cursors()
        self.lookup = asyncio.Lock()
        self.commit_lock = asyncio.Lock()
        self.rewinds: set[asyncio.Future[None]] = set()
        self.quiet_commit: asyncio.Future[None] | None = None
        self.quiet_committed_at = 0.0

    def attach(self) -> None:
        # Before the fetcher starts, which reads the first. Acks still tell Faust when the
        # agents are done with what they were given (a rebalance waits for that), but the
        # offsets acked are kept nowhere, so Faust has nothing to commit.
        consumer = cast(Any, self.app.consumer)
        consumer._read_offset = Forgetful[int | None](lambda: None)
        consumer._acked = Forgetful[list[int]](list)
        consumer._acked_index = Forgetful[set[int]](set)
        self.app.timer(COMMIT_INTERVAL_S, name="commit_finished_offsets")(self.commit_all)
        self.app.timer(LOOK_INTERVAL_S, name="read_again_what_never_came")(self.read_again_lost)
        self.app.on_before_shutdown.connect(self.on_shutdown)

    async def admit(
        self, batch: Mapping[TP, list[T]], offset_of: Callable[[T], int]
    ) -> dict[TP, list[T]]:
        """Of each partition's records, the ones to process: its next in order, none skipped
        unseen."""
        await self.learn(set(batch))
        taken: dict[TP, list[T]] = {}
        for tp, records in batch.items():
            kept = []
            for record in records:
                admission = self.cursors.admit(tp, offset_of(record))
                if admission is Admission.TAKE:
                    kept.append(record)
                elif admission is Admission.REWIND:
                    # Read again from the hole: what follows comes again, in order.
                    offset = self.cursors.cursors[tp].next_offset
                    log.warning(
                        "%s:%d: records from offset %d were not delivered; reading again "
                        "from there",
                        tp.topic,
                        tp.partition,
                        offset,
                    )
                    await self._seek(tp, offset)
                    break
            if kept:
                taken[tp] = kept
        return taken

    def finished(self, tp: TP, last_offset: int) -> None:
        self.cursors.finished(tp, last_offset)

    def abandon(self, tps: Iterable[TP]) -> None:
        """A batch its agent did not finish: its partitions are read again from what is done."""
        for tp in tps:
            offset = self.cursors.abandon(tp)
            if offset is not None and not self.app.should_stop:
                rewind = asyncio.ensure_future(self._seek(tp, offset))
                self.rewinds.add(rewind)
                rewind.add_done_callback(self.rewinds.discard)

    async def _seek(self, tp: TP, offset: int) -> None:
        """Move the consumer's position in the consumer's own thread, between its fetches.

        Faust's `Consumer.seek` sets aiokafka's position from the calling (the app's) thread
        at once, while the consumer's thread may be handing out that partition's fetched
        records: aiokafka then moves the position past them (`consumed_to`) and the seek is
        lost. The records the seek was for never come again, and every later one waits for
        them: the partition is read to its end and nothing more of it is ever processed.
        `seek_wait` runs the seek in the consumer's thread.
        """
        await self.app.consumer.seek_wait({tp: offset})

    async def read_again_lost(self) -> None:
        """Read again what the consumer fetched and never delivered, at a partition's end.

        Faust skips records fetched in a generation that a rebalance has since ended (seen
        after a broker restart): taken out of the consumer, they never reach an agent, and
        with nothing after them no hole shows. Not during a rebalance, which seeks itself.
        """
        if self.app.rebalancing:
            return
        consumer = self.app.consumer
        positions: dict[TP, int] = {}
        for tp in list(self.cursors.cursors):
            try:
                # Bounded: a partition whose position is being reset has none to compare.
                position = await asyncio.wait_for(consumer.position(tp), LOOK_INTERVAL_S / 10)
            except (KafkaError, TimeoutError):
                continue  # revoked meanwhile, or no position yet: nothing to say of it
            if position is not None:
                positions[tp] = position
        if self.app.rebalancing:
            return
        for tp, offset in self.cursors.undelivered(positions).items():
            log.warning(
                "%s:%d: the consumer read past offset %d and nothing from there came; "
                "reading again from there",
                tp.topic,
                tp.partition,
                offset,
            )
            await self._seek(tp, offset)

    async def commit_all(self) -> None:
        await self.commit(None)

    def commit_soon(self) -> None:
        """The stages are through what they were given: commit it now, or as soon as
        `QUIET_COMMIT_INTERVAL_S` has passed since the last such commit."""
        if self.quiet_commit is not None and not self.quiet_commit.done():
            return
        wait_s = self.quiet_committed_at + QUIET_COMMIT_INTERVAL_S - time.monotonic()
        self.quiet_commit = self.app.add_future(self._commit_quiet(max(0.0, wait_s)))

    async def _commit_quiet(self, wait_s: float) -> None:
        await asyncio.sleep(wait_s)
        self.quiet_committed_at = time.monotonic()
        try:
            await self.commit(None)
        except Exception:
            # Not worth stopping the worker for: the next tick commits the same offsets.
            log.warning("a commit once the stages were through failed", exc_info=True)

    async def commit(self, tps: set[TP] | None) -> None:
        """Once the producer has every write of the finished batches, their offsets."""
        async with self.commit_lock:
            due = self.cursors.due(tps)
            if not due:
                return
            await cast(App, self.app).outbox.flush()
            # The consumer's own commit, not its ack-driven one: offsets as given.
            consumer = cast(Any, self.app.consumer)
            if await consumer._commit(due):
                self.cursors.committed(due)

    async def on_partitions_revoked(
        self, sender: Any, /, *args: Any, signal: Any, **_: Any
    ) -> None:
        """Sent once the agents finished their batches: commit them before the partitions go."""
        (revoked,) = cast(tuple[set[TP]], args)
        await self.commit(revoked)
        self.cursors.forget(revoked)

    async def on_shutdown(self, sender: Any, /, *args: Any, signal: Any, **_: Any) -> None:
        await self.commit(None)

    def finished_to(self, tp: TP) -> int | None:
        """Every offset of `tp` below this is processed; None while this worker knows nothing."""
        cursor = self.cursors.cursors.get(tp)
        return None if cursor is None else cursor.done

    async def learn(self, tps: set[TP]) -> None:
        """Where partitions not read yet start: the group's commit, else the log's start."""
        if not self.cursors.unknown(tps):
            return
        async with self.lookup:
            unknown = self.cursors.unknown(tps)
            if not unknown:
                return
            committed = await self._committed(unknown)
            missing = [tp for tp in unknown if tp not in committed]
            earliest = await self.app.consumer.earliest_offsets(*missing) if missing else {}
            for tp in unknown:
                self.cursors.start(tp, committed.get(tp, earliest.get(tp, 0)))

    async def _committed(self, tps: set[TP]) -> dict[TP, int]:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.settings.bootstrap_servers,
            **self.settings.broker_security.client_options(),
        )
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(self.app.conf.id)
        finally:
            await admin.close()
        wanted = {(tp.topic, tp.partition): tp for tp in tps}
        return {
            wanted[(tp.topic, tp.partition)]: meta.offset
            for tp, meta in offsets.items()
            if (tp.topic, tp.partition) in wanted and meta.offset >= 0
        }


class Forgetful(MutableMapping[TP, T]):
    """A per-partition map of Faust's consumer that keeps nothing: each read gets `empty()`."""

    def __init__(self, empty: Callable[[], T]) -> None:
        self.empty = empty

    def __getitem__(self, tp: TP) -> T:
        return self.empty()

    def __setitem__(self, tp: TP, value: T) -> None:
        pass

    def __delitem__(self, tp: TP) -> None:
        pass

    def __iter__(self) -> Iterator[TP]:
        return iter(())

    def __len__(self) -> int:
        return 0
