"""The worker's consumer fetches at a steady pace, not as fast as the broker answers.

A worker reads every partition of eight topics or so. Each fetch request names them all
and each response is parsed partition by partition in Python, so a fetch costs the same
whether it brings one record or thousands. The worker's own internal topics trickle all
the time, and a broker that answers at once (the local broker ignores `fetch.min.bytes`,
measured) then has the consumer fetch thousands of times a second, a record or two each:
a third of the worker's CPU in one profile. At most one fetch a broker every
`CXMON_FETCH_INTERVAL_MS` bounds that cost; it adds at most that much to a record's wait.
"""

from __future__ import annotations

from typing import cast

import faust
from faust.transport.drivers import aiokafka as kafka_driver

from streams.kafka.pacing import pace_fetches


class PacedConsumerThread(kafka_driver.AIOKafkaConsumerThread):
    async def on_start(self) -> None:
        await super().on_start()
        interval_s = cast(PacedTransport, self.transport).fetch_interval_s
        if interval_s > 0:
            pace_fetches(self._consumer, interval_s)


class PacedConsumer(kafka_driver.Consumer):
    def _new_consumer_thread(self) -> kafka_driver.AIOKafkaConsumerThread:
        return PacedConsumerThread(self, loop=self.loop, beacon=self.beacon)


class PacedTransport(kafka_driver.Transport):
    Consumer = PacedConsumer
    fetch_interval_s = 0.0


def use_paced_fetches(app: faust.App, interval_s: float) -> None:
    transport = PacedTransport(app.conf.broker_consumer, app)
    transport.fetch_interval_s = interval_s
    app.transport = transport
