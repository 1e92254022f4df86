"""Offsets in order: a record the consumer dropped is read again before any commit passes it."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace
from typing import Any, cast

import pytest
from faust.types import TP

from agents.commits import Offsets
from agents.outbox import Outbox, Undelivered
from streams.state.offset_ledger import Admission, Cursors
from tests.test_outbox import Producer

TAKE, SEEN, REWIND, STALE = Admission.TAKE, Admission.SEEN, Admission.REWIND, Admission.STALE


def admitted(cursors: Cursors[str], offsets: list[int]) -> list[Admission]:
    return [cursors.admit("p", offset) for offset in offsets]


def test_records_in_order_are_taken_and_committed_once_done() -> None:
    cursors: Cursors[str] = Cursors()
    cursors.start("p", 142)
    assert admitted(cursors, [142, 143, 144]) == [TAKE, TAKE, TAKE]
    assert cursors.due() == {}, "taken is not done"
    cursors.finished("p", 144)
    assert cursors.due() == {"p": 145}
    cursors.committed({"p": 145})
    assert cursors.due() == {}


def test_a_hole_left_by_the_consumer_is_read_again_before_anything_after_it() -> None:
    # As measured after a restart: 142..148 delivered, then 274 (149..273 fetched, dropped).
    cursors: Cursors[str] = Cursors()
    cursors.start("p", 142)
    assert admitted(cursors, [*range(142, 149), 274, 275]) == [TAKE] * 7 + [REWIND, STALE]
    cursors.finished("p", 148)
    assert cursors.due() == {"p": 149}, "never past the hole"
    # After the seek back to 149: the records fetched before it are still arriving, then 149 on.
    assert admitted(cursors, [276, 149, 150]) == [STALE, TAKE, TAKE]
    assert admitted(cursors, list(range(151, 276))) == [TAKE] * 125
    cursors.finished("p", 275)
    assert cursors.due() == {"p": 276}


def test_a_hole_that_is_the_logs_own_is_accepted_when_read_again() -> None:
    # Compaction or transaction markers: after the rewind the log gives 20 again, not 13.
    cursors: Cursors[str] = Cursors()
    cursors.start("p", 10)
    assert admitted(cursors, [10, 11, 12, 20, 21]) == [TAKE, TAKE, TAKE, REWIND, STALE]
    assert admitted(cursors, [22, 20, 21, 22]) == [STALE, TAKE, TAKE, TAKE]
    cursors.finished("p", 22)
    assert cursors.due() == {"p": 23}


def test_records_delivered_again_after_a_seek_are_dropped() -> None:
    cursors: Cursors[str] = Cursors()
    cursors.start("p", 0)
    assert admitted(cursors, [0, 1, 2, 0, 1, 2, 3]) == [TAKE, TAKE, TAKE, SEEN, SEEN, SEEN, TAKE]


def test_an_abandoned_batch_is_read_again_from_what_is_done() -> None:
    cursors: Cursors[str] = Cursors()
    cursors.start("p", 0)
    admitted(cursors, [0, 1])
    cursors.finished("p", 1)
    admitted(cursors, [2, 3, 4])
    assert cursors.abandon("p") == 2
    assert admitted(cursors, [2, 3]) == [TAKE, TAKE]
    assert cursors.due() == {"p": 2}


def test_revoked_partitions_are_forgotten_and_commits_never_go_back() -> None:
    cursors: Cursors[str] = Cursors()
    cursors.start("p", 5)
    cursors.start("q", 0)
    admitted(cursors, [5, 6])
    cursors.finished("p", 6)
    cursors.finished("p", 5)  # an older batch reported late does not move `done` back
    assert cursors.due() == {"p": 7}
    cursors.forget(["p"])
    assert cursors.unknown(["p", "q"]) == {"p"}
    assert cursors.due() == {}


def test_a_partition_read_past_its_next_record_with_nothing_delivered_is_read_again() -> None:
    cursors: Cursors[str] = Cursors()
    cursors.start("p", 10)
    cursors.start("busy", 0)
    assert cursors.undelivered({"p": 12, "busy": 500}) == {}, "one look shows no stall"
    admitted(cursors, [10])
    cursors.admit("busy", 0)
    # p took 10, then 11 never came although the consumer is past it; busy takes records.
    assert cursors.undelivered({"p": 12, "busy": 900}) == {}
    cursors.admit("busy", 1)
    assert cursors.undelivered({"p": 12, "busy": 900}) == {"p": 11}
    assert admitted(cursors, [11]) == [TAKE], "read again, 11 is taken in order"


def test_a_gap_at_the_end_that_reading_again_does_not_fill_is_the_logs_own() -> None:
    cursors: Cursors[str] = Cursors()
    cursors.start("p", 10)
    cursors.undelivered({"p": 13})
    # 10-12 are not in the log (compacted away, or a transaction's marker at 12).
    assert cursors.undelivered({"p": 13}) == {"p": 10}
    assert cursors.undelivered({"p": 13}) == {}, "read again, the same gap: the log's"
    assert cursors.due() == {"p": 13}, "done up to the end of the gap, and committed so"
    assert cursors.undelivered({"p": 13}) == {}


class FetchedPastConsumer:
    """A consumer whose position is past records that never reached an agent."""

    def __init__(self, position: int) -> None:
        self.at = position
        self.seeks: list[dict[TP, int]] = []

    async def position(self, tp: TP) -> int:
        return self.at

    async def seek_wait(self, partitions: dict[TP, int]) -> None:
        self.seeks.append(dict(partitions))


async def test_the_worker_reads_again_what_its_consumer_fetched_and_never_delivered() -> None:
    consumer = FetchedPastConsumer(position=7)
    app = SimpleNamespace(consumer=consumer, should_stop=False, rebalancing=False)
    offsets = Offsets(cast(Any, app), cast(Any, None))
    offsets.cursors.start(PARTITION, 5)
    await offsets.read_again_lost()
    assert consumer.seeks == []
    app.rebalancing = True
    await offsets.read_again_lost()
    assert consumer.seeks == [], "a rebalance seeks by itself"
    app.rebalancing = False
    await offsets.read_again_lost()
    assert consumer.seeks == [{PARTITION: 5}]


class ThreadedConsumer:
    """Faust's consumer for aiokafka: the fetcher and its positions live in a thread of their own.

    `seek` is Faust's `Consumer.seek`, which moves the position from the caller's thread at
    once; `seek_wait` runs the seek in the consumer's thread, as Faust's `seek_wait` does. A
    fetch hands its records out as aiokafka's `FetchResult.getall` does: position checked,
    records read, then the position moved past them (`consumed_to`).
    """

    def __init__(self, position: int) -> None:
        self.position = position
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.reading = threading.Event()
        self.read_on = threading.Event()

    def hand_out(self, fetched_from: int, fetched_to: int) -> None:
        async def getall() -> None:
            assert self.position == fetched_from
            self.reading.set()
            self.read_on.wait(5)  # the app's thread runs meanwhile: the GIL switches
            self.position = fetched_to

        asyncio.run_coroutine_threadsafe(getall(), self.loop)
        assert self.reading.wait(5)

    async def seek(self, tp: TP, offset: int) -> None:
        self.position = offset

    async def seek_wait(self, partitions: dict[TP, int]) -> None:
        async def seek() -> None:
            for offset in partitions.values():
                self.position = offset

        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(seek(), self.loop))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


PARTITION = TP("t", 0)


def at(tp: TP, offsets: list[int]) -> dict[TP, list[int]]:
    """A partition's batch, its records standing for their offsets."""
    return {tp: offsets}


def offset_of(offset: int) -> int:
    return offset


async def test_a_rewind_is_not_lost_to_records_the_consumer_thread_is_handing_out() -> None:
    # 149..273 were dropped before the agent saw them, 274 arrives: read again from 149.
    # Meanwhile the consumer's thread hands out 274..299 from a fetch; were the seek done
    # from this thread, that fetch would move the position on to 300 after it, 149..273
    # would never come again and every later record would wait for them: the partition stuck.
    consumer = ThreadedConsumer(position=274)
    app = SimpleNamespace(consumer=consumer, should_stop=False)
    offsets = Offsets(cast(Any, app), cast(Any, None))
    offsets.cursors.start(PARTITION, 142)
    assert await offsets.admit(at(PARTITION, [*range(142, 149)]), offset_of)
    try:
        consumer.hand_out(274, 300)
        admitting = asyncio.ensure_future(offsets.admit(at(PARTITION, [274, 275]), offset_of))
        await asyncio.sleep(0.05)
        consumer.read_on.set()
        assert await asyncio.wait_for(admitting, 5) == {}
        await asyncio.sleep(0.05)
        assert consumer.position == 149, "the partition is read again from the hole"
    finally:
        consumer.read_on.set()
        consumer.close()


async def test_an_abandoned_batch_is_read_again_even_while_the_consumer_thread_hands_out() -> None:
    consumer = ThreadedConsumer(position=12)
    app = SimpleNamespace(consumer=consumer, should_stop=False)
    offsets = Offsets(cast(Any, app), cast(Any, None))
    offsets.cursors.start(PARTITION, 10)
    batch = await offsets.admit(at(PARTITION, [10, 11]), offset_of)
    try:
        consumer.hand_out(12, 20)
        offsets.abandon(batch)
        await asyncio.sleep(0.05)
        consumer.read_on.set()
        await asyncio.wait_for(asyncio.gather(*offsets.rewinds), 5)
        await asyncio.sleep(0.05)
        assert consumer.position == 10, "the abandoned records are read again"
    finally:
        consumer.read_on.set()
        consumer.close()


class CommittingConsumer:
    def __init__(self) -> None:
        self.commits: list[dict[TP, int]] = []

    async def _commit(self, offsets: dict[TP, int]) -> bool:
        self.commits.append(dict(offsets))
        return True


async def test_no_offset_is_committed_once_a_write_was_lost() -> None:
    tp = TP("cx.touchpoint-events", 0)
    producer, consumer = Producer(refuse="lost-changelog"), CommittingConsumer()
    app = SimpleNamespace(outbox=Outbox(producer), consumer=consumer)  # type: ignore[arg-type]
    offsets = Offsets(cast(Any, app), cast(Any, None))
    offsets.cursors.start(tp, 0)
    offsets.cursors.admit(tp, 0)
    offsets.cursors.finished(tp, 0)
    await offsets.commit(None)
    assert consumer.commits == [{tp: 1}]
    app.outbox.send("lost-changelog", b"k", b"v")  # a table write of the next batch
    offsets.cursors.admit(tp, 1)
    offsets.cursors.finished(tp, 1)
    with pytest.raises(Undelivered):
        await offsets.commit(None)
    assert consumer.commits == [{tp: 1}], "nothing committed past the lost write"
    assert offsets.cursors.due() == {tp: 2}
