"""Faust's consumer, handing each fetched batch to the streams in one task, not four a record."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import faust
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as kafka_driver
from faust.types import TP
from mode import ServiceT

# Other tasks get the loop at least this often while a batch is handed over.
YIELD_EVERY = 100


class BatchConsumer(kafka_driver.Consumer):
    """Races each fetched batch, not each record, against a rebalance.

    Faust (0.15.3) waits for every record with `wait_first(callback, suspend_flow)`,
    which starts four tasks a record: most of the time a worker spends per record.
    Here the whole batch is one such race. A rebalance that suspends the flow mid-batch
    cancels the rest of the batch, as it cancels the record in flight in Faust; the
    records not handed over are read again from the committed offsets, as there.
    """

    async def _drain_messages(self, fetcher: ServiceT) -> None:  # pragma: no cover
        should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set  # type: ignore[attr-defined]
        try:
            while not (should_stop() or fetcher_should_stop()):
                self.diag.set_flag(CONSUMER_FETCHING)
                fetched = self.getmany(timeout=1.0)
                await self.sleep(0)
                if not self.should_stop:
                    await self.wait_first(self._hand_over(fetched), self.suspend_flow.wait())
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)

    async def _hand_over(self, fetched: AsyncIterator[tuple[TP, Any]]) -> None:
        """What Faust does for each record, without a task of its own."""
        callback = self.callback
        read_offsets = self._read_offset
        acks_enabled_for = self.app.topics.acks_enabled_for
        since_yield = 0
        async for tp, message in fetched:
            since_yield += 1
            if since_yield > YIELD_EVERY:
                await asyncio.sleep(0)
                since_yield = 0
            offset = message.offset
            read_offset = read_offsets[tp]
            if read_offset is not None and offset < read_offset:
                continue  # read before: Faust drops it too
            gap = offset - (read_offset or 0)
            if gap > 1 and read_offset and acks_enabled_for(message.topic):
                await self._add_gap(tp, read_offset + 1, offset)
            if self._commit_every is not None and self._n_acked >= self._commit_every:
                self._n_acked = 0
                await self.commit()
            await callback(message)
            read_offsets[tp] = offset


class Transport(kafka_driver.Transport):
    Consumer = BatchConsumer


def use_batch_consumer(app: faust.App) -> None:
    app.transport = Transport(app.conf.broker_consumer, app)
