"""The worker's Kafka transport: fetches at a steady pace, records handed to the stages whole.

A worker reads every partition of eight topics or so. Each fetch request names them all
and each response is parsed partition by partition in Python, so a fetch costs the same
whether it brings one record or thousands. The worker's own internal topics trickle all
the time, and a broker that answers at once (the local broker ignores `fetch.min.bytes`,
measured) then has the consumer fetch thousands of times a second, a record or two each:
a third of the worker's CPU in one profile. At most one fetch a broker every
`CXMON_FETCH_INTERVAL_MS` bounds that cost; it adds at most that much to a record's wait.

The stages' records skip Faust's streams: each fetch's records of their topics are handed
to them whole (agents/handover.py). What Faust still reads itself (a table's changelog
while it recovers) it hands to its streams through `wait_first(deliver(record),
suspend_flow.wait())`: four tasks, an `asyncio.wait` and three cancellations a record, so
that a delivery blocked on a full stream buffer gives way when a rebalance suspends the
flow. A delivery that cannot block needs none of that, and is awaited directly.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator, Mapping
from typing import Any, cast

import faust
from faust.transport.drivers import aiokafka as kafka_driver
from faust.types import TP, Message
from mode.services import WaitArgT, WaitResults

from agents.handover import Handover
from streams.kafka.pacing import pace_fetches


class PacedConsumerThread(kafka_driver.AIOKafkaConsumerThread):
    async def on_start(self) -> None:
        await super().on_start()
        interval_s = cast(PacedTransport, self.transport).fetch_interval_s
        if interval_s > 0:
            pace_fetches(self._consumer, interval_s)


class Delivery:
    """One fetched record on its way to the streams, awaitable as the callback it wraps."""

    __slots__ = ("deliver", "message")

    def __init__(self, deliver: Callable[[Message], Awaitable[None]], message: Message) -> None:
        self.deliver = deliver
        self.message = message

    def __await__(self) -> Generator[Any, None, None]:
        return self.deliver(self.message).__await__()


class PacedConsumer(kafka_driver.Consumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        deliver = self.callback
        # Faust's fetch loop calls this for every record and waits on what it returns.
        self.callback = lambda message: Delivery(deliver, message)

    async def _wait_next_records(
        self, timeout: float
    ) -> tuple[Mapping[TP, list[Any]] | None, set[TP] | None]:
        """A fetch's records of the handed-over topics go to the hand-over; Faust gets the
        rest. Like Faust, only those of active partitions, and none while the flow stops."""
        records, active = await super()._wait_next_records(timeout)
        handover = cast(PacedTransport, self.transport).handover
        if not records or handover is None:
            return records, active
        taken = {tp: fetched for tp, fetched in records.items() if handover.takes(tp.topic)}
        if not taken:
            return records, active
        if self.flow_active and not self.should_stop:
            buffered = self._buffered_partitions
            await handover.put(
                self.app.consumer_generation_id,
                {
                    tp: fetched
                    for tp, fetched in taken.items()
                    if active is None or tp in active or tp in buffered
                },
            )
        return {tp: fetched for tp, fetched in records.items() if tp not in taken}, active

    async def verify_all_partitions_active(self) -> None:
        """Faust's partition health check, off: the worker's stall watch does its work.

        Faust checks every few seconds that each partition fetched ahead of its streams had a
        record taken by one within five minutes. No stream sees the stages' records, and a
        table's changelog is read only while it recovers, so it would log an error for every
        changelog partition from the fifth minute on. Its other check, that fetches are still
        sent, compares aiokafka's wall-clock time with the monotonic clock and never fires.
        The stall watch (agents/membership.py) looks at what matters instead: every input
        partition's committed offset against the records waiting in it.
        """

    def _new_consumer_thread(self) -> kafka_driver.AIOKafkaConsumerThread:
        return PacedConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def wait_first(self, *coros: WaitArgT, **options: Any) -> WaitResults:
        delivery = coros[0] if coros else None
        if isinstance(delivery, Delivery) and self._delivers_at_once(delivery.message):
            for other in coros[1:]:
                cast(Any, other).close()  # the suspend_flow wait, never started
            await delivery
            return WaitResults([delivery], [None], False)
        return await super().wait_first(*coros, **options)

    def _delivers_at_once(self, message: Message) -> bool:
        """Whether handing the record over cannot block, on any of the conductor's waits."""
        app = self.app
        conductor = cast(Any, app.topics)
        # `.get`: the index is a defaultdict, and a lookup must not add to it.
        channels = conductor._tp_index.get(message.tp, ())
        buffer = app.producer.buffer
        return (
            not self.suspend_flow.is_set()
            and not self.should_stop
            and not self._crashed.is_set()
            and app.flow_control.is_active()
            and buffer.size <= buffer.max_messages
            and not conductor._tp_to_callback_lock.locked()
            and not any(channel.queue.full() for channel in channels)
        )


class PacedTransport(kafka_driver.Transport):
    Consumer = PacedConsumer
    fetch_interval_s = 0.0
    handover: Handover | None = None


def use_paced_fetches(app: faust.App, interval_s: float) -> None:
    transport = PacedTransport(app.conf.broker_consumer, app)
    transport.fetch_interval_s = interval_s
    app.transport = transport
