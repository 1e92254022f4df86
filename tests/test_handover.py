"""The hand-over of fetched input records to their stage, around rebalances, without Kafka."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

import pytest
from aiokafka.structs import ConsumerRecord
from faust.types import TP
from mode.utils.queues import FlowControlEvent

from agents.handover import Handover, Record

EVENTS, ANSWERS = "events", "answers"


def records(topic: str, partition: int, offsets: range) -> list[Record]:
    return [
        ConsumerRecord(topic, partition, offset, 0, 0, b"k", b"v", None, 1, 1, [])
        for offset in offsets
    ]


def offsets(batch: dict[TP, list[Record]]) -> dict[TP, list[int]]:
    return {tp: [record.offset for record in fetched] for tp, fetched in batch.items()}


@pytest.fixture
def app() -> Any:
    return SimpleNamespace(
        consumer_generation_id=1, flow_control=FlowControlEvent(initially_suspended=False)
    )


def handover(app: Any, max_records: int = 100) -> Handover:
    hand = Handover(cast(Any, app), max_records)
    hand.serve(EVENTS)
    hand.serve(ANSWERS)
    return hand


async def test_a_stage_takes_its_topics_records_of_every_fetch_waiting_by_partition(
    app: Any,
) -> None:
    hand = handover(app)
    assert hand.takes(EVENTS)
    assert not hand.takes("cx-monitor-partials")
    await hand.put(1, {TP(EVENTS, 0): records(EVENTS, 0, range(0, 3))})
    await hand.put(
        1,
        {
            TP(EVENTS, 0): records(EVENTS, 0, range(3, 5)),
            TP(EVENTS, 1): records(EVENTS, 1, range(0, 2)),
            TP(ANSWERS, 0): records(ANSWERS, 0, range(0, 1)),
        },
    )
    assert offsets(await hand.take(EVENTS)) == {
        TP(EVENTS, 0): [0, 1, 2, 3, 4],
        TP(EVENTS, 1): [0, 1],
    }
    assert offsets(await hand.take(ANSWERS)) == {TP(ANSWERS, 0): [0]}
    assert hand.waiting_records == 0


async def test_a_stage_takes_at_most_max_records_of_a_partition_and_the_rest_in_order(
    app: Any,
) -> None:
    # As the local broker answers a worker far behind: a partition's whole backlog at once.
    hand = handover(app, max_records=4)
    first = {
        TP(EVENTS, 0): records(EVENTS, 0, range(0, 10)),
        TP(EVENTS, 1): records(EVENTS, 1, range(0, 2)),
    }
    second = {
        TP(EVENTS, 0): records(EVENTS, 0, range(10, 12)),
        TP(EVENTS, 1): records(EVENTS, 1, range(2, 4)),
    }
    await hand.put(1, first)
    putting = asyncio.ensure_future(hand.put(1, second))  # waits for room
    taken = []
    for _ in range(3):
        taken.append(offsets(await asyncio.wait_for(hand.take(EVENTS), 1)))
        hand.done()
        await asyncio.sleep(0.01)
    await asyncio.wait_for(putting, 1)
    assert taken == [
        {TP(EVENTS, 0): [0, 1, 2, 3], TP(EVENTS, 1): [0, 1]},
        {TP(EVENTS, 0): [4, 5, 6, 7]},
        {TP(EVENTS, 0): [8, 9, 10, 11], TP(EVENTS, 1): [2, 3]},
    ]
    assert hand.waiting_records == 0


async def test_records_fetched_before_a_rebalance_are_never_taken_after_it(app: Any) -> None:
    hand = handover(app)
    await hand.put(1, {TP(EVENTS, 0): records(EVENTS, 0, range(0, 3))})
    app.consumer_generation_id = 2
    await hand.put(2, {TP(EVENTS, 0): records(EVENTS, 0, range(0, 2))})
    assert offsets(await hand.take(EVENTS)) == {TP(EVENTS, 0): [0, 1]}


async def test_nothing_is_taken_while_partitions_are_revoked_and_assigned(app: Any) -> None:
    hand = handover(app)
    await hand.put(1, {TP(EVENTS, 0): records(EVENTS, 0, range(0, 3))})
    app.flow_control.suspend()
    taking = asyncio.ensure_future(hand.take(EVENTS))
    await asyncio.sleep(0.01)
    assert not taking.done()
    app.flow_control.resume()
    assert offsets(await asyncio.wait_for(taking, 1)) == {TP(EVENTS, 0): [0, 1, 2]}


async def test_the_consumer_waits_while_the_stages_are_behind_and_a_rebalance_frees_it(
    app: Any,
) -> None:
    hand = handover(app, max_records=3)
    await hand.put(1, {TP(EVENTS, 0): records(EVENTS, 0, range(0, 3))})
    putting = asyncio.ensure_future(hand.put(1, {TP(EVENTS, 0): records(EVENTS, 0, range(3, 6))}))
    await asyncio.sleep(0.01)
    assert not putting.done(), "the stage is max_records behind"
    assert offsets(await hand.take(EVENTS)) == {TP(EVENTS, 0): [0, 1, 2]}
    await asyncio.wait_for(putting, 1)
    hand.done()
    assert hand.waiting_records == 3

    putting = asyncio.ensure_future(hand.put(1, {TP(EVENTS, 1): records(EVENTS, 1, range(0, 2))}))
    await asyncio.sleep(0.01)
    assert not putting.done()
    app.flow_control.suspend()
    await hand.on_revoked()
    await asyncio.wait_for(putting, 1)
    assert hand.waiting_records == 0, "what waited, and what the consumer held, are dropped"


async def test_a_revoke_returns_once_the_batch_being_worked_on_is_done(app: Any) -> None:
    hand = handover(app)
    await hand.put(1, {TP(EVENTS, 0): records(EVENTS, 0, range(0, 3))})
    await hand.take(EVENTS)
    await hand.put(1, {TP(EVENTS, 0): records(EVENTS, 0, range(3, 6))})
    app.flow_control.suspend()
    revoking = asyncio.ensure_future(hand.on_revoked())
    await asyncio.sleep(0.01)
    assert not revoking.done(), "a batch is being worked on"
    assert hand.waiting_records == 0, "what waited is dropped at once"
    hand.done()
    await asyncio.wait_for(revoking, 1)


async def test_the_stages_through_everything_handed_over_is_said_once_the_last_is_done(
    app: Any,
) -> None:
    hand = handover(app)
    quiet: list[int] = []
    hand.on_quiet = lambda: quiet.append(hand.working)
    await hand.put(1, {TP(EVENTS, 0): records(EVENTS, 0, range(0, 3))})
    await hand.put(1, {TP(ANSWERS, 0): records(ANSWERS, 0, range(0, 3))})
    await hand.take(EVENTS)
    await hand.take(ANSWERS)
    await hand.put(1, {TP(EVENTS, 0): records(EVENTS, 0, range(3, 4))})
    hand.done()
    assert quiet == [], "a stage is still working"
    hand.done()
    assert quiet == [], "a record waits"
    await hand.take(EVENTS)
    hand.done()
    assert quiet == [0]
