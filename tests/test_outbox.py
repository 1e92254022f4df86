"""The outbox: records reach the producer in the order they were made, each future done on
delivery; a record the producer refuses fails alone, is logged, and stops every flush."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError
from aiokafka.structs import RecordMetadata, TopicPartition

from agents.outbox import Outbox, Undelivered


class Producer:
    """The producer's send and flush: each send's delivery is settled by the test."""

    def __init__(self, refuse: str | None = None) -> None:
        self.sent: list[tuple[str, bytes | None, int | None]] = []
        self.deliveries: list[asyncio.Future[RecordMetadata]] = []
        self.refuse = refuse
        self.flushed = 0

    async def send(  # noqa: PLR0917 (the producer's own signature)
        self, topic: str, key: bytes | None, value: bytes | None, partition: int | None,
        timestamp: float | None, headers: Any,
    ) -> asyncio.Future[RecordMetadata]:  # fmt: skip
        if topic == self.refuse:
            raise KafkaTimeoutError()
        await asyncio.sleep(0)  # the producer may wait for room in its batch
        self.sent.append((topic, key, partition))
        delivery: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        self.deliveries.append(delivery)
        return delivery

    def deliver_all(self) -> None:
        for offset, delivery in enumerate(self.deliveries):
            if not delivery.done():
                topic, _, partition = self.sent[offset]
                tp = TopicPartition(topic, partition or 0)
                delivery.set_result(RecordMetadata(topic, tp.partition, tp, offset, -1, 0, 0))

    async def flush(self) -> None:
        self.flushed += 1


async def test_records_reach_the_producer_in_the_order_they_were_made() -> None:
    producer = Producer()
    outbox = Outbox(producer)  # type: ignore[arg-type]
    made = [(f"topic-{n % 3}", f"key-{n}".encode(), n % 2) for n in range(50)]
    futures = [outbox.send(topic, key, b"v", partition) for topic, key, partition in made]
    # Made while the first are on their way: queued behind them.
    futures.append(outbox.send("topic-0", b"late", b"v", 1))
    await outbox.handed()
    assert producer.sent == [*made, ("topic-0", b"late", 1)]
    assert not any(future.done() for future in futures), "not delivered yet"
    producer.deliver_all()
    await asyncio.sleep(0)
    assert [future.result().offset for future in futures] == list(range(51))


async def test_flush_waits_for_every_queued_record_then_the_producer() -> None:
    producer = Producer()
    outbox = Outbox(producer)  # type: ignore[arg-type]
    for n in range(10):
        outbox.send("t", str(n).encode(), b"v")
    await outbox.flush()
    assert len(producer.sent) == 10
    assert producer.flushed == 1


async def test_a_refused_record_fails_alone_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    producer = Producer(refuse="full")
    outbox = Outbox(producer)  # type: ignore[arg-type]
    before = outbox.send("t", b"before", b"v")
    refused = outbox.send("full", b"refused", b"v")
    after = outbox.send("t", b"after", b"v")
    with caplog.at_level(logging.ERROR):
        await outbox.handed()
    assert [key for _, key, _ in producer.sent] == [b"before", b"after"]
    with pytest.raises(KafkaTimeoutError):
        await refused
    producer.deliver_all()
    assert (await before).offset == 0
    assert (await after).offset == 1
    assert "a record to full was not delivered" in caplog.text


async def test_a_delivery_that_fails_fails_its_future() -> None:
    producer = Producer()
    outbox = Outbox(producer)  # type: ignore[arg-type]
    written = outbox.send("t", b"k", b"v")
    await outbox.handed()
    producer.deliveries[0].set_exception(KafkaTimeoutError())
    with pytest.raises(KafkaTimeoutError):
        await written


async def test_once_a_record_is_lost_every_flush_refuses() -> None:
    producer = Producer(refuse="full")
    outbox = Outbox(producer)  # type: ignore[arg-type]
    outbox.send("t", b"before", b"v")
    await outbox.flush()
    outbox.send("full", b"refused", b"v")
    with pytest.raises(Undelivered, match="a record to full was not delivered"):
        await outbox.flush()
    # Delivered later, the rest does not make up for it: the refused state is in memory only.
    outbox.send("t", b"after", b"v")
    producer.deliver_all()
    with pytest.raises(Undelivered):
        await outbox.flush()
    assert [key for _, key, _ in producer.sent] == [b"before", b"after"]


async def test_a_delivery_that_fails_stops_every_flush() -> None:
    producer = Producer()
    outbox = Outbox(producer)  # type: ignore[arg-type]
    outbox.send("t", b"k", b"v")
    await outbox.handed()
    producer.deliveries[0].set_exception(KafkaTimeoutError())
    await asyncio.sleep(0)
    with pytest.raises(Undelivered, match="a record to t was not delivered"):
        await outbox.flush()
