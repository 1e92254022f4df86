"""The input topics' history: every record they hold, from the beginning to their end at start."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from streams.kafka.topics import TopologyError, quiet_connect_failures
from streams.replay import Role
from streams.settings import Settings


def input_roles(settings: Settings) -> dict[str, Role]:
    topics = settings.topics
    return {
        topics.touchpoint_events: "touchpoint_events",
        topics.survey_answers: "survey_answers",
        topics.identity_links: "identity_links",
    }


async def read_history(
    settings: Settings, on_total: Callable[[int], None]
) -> AsyncIterator[tuple[Role, bytes]]:
    """Each record of the three input topics with its role, one partition after another.

    The end is each partition's end when reading starts: records published meanwhile are
    left for the next run, so a backtest ends. `on_total` learns how many there are first.
    No group is joined and nothing is committed: the worker's offsets are not touched.
    One partition at a time, because the local broker ignores fetch size limits and sends
    all a partition holds in one response: reading all at once held 2.2 GB for a week.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        enable_auto_commit=False,
        **settings.broker_security.client_options(),
    )
    with quiet_connect_failures() as failures:
        try:
            await consumer.start()
        except KafkaError as exc:
            await consumer.stop()
            raise failures.no_broker(settings.bootstrap_servers, exc) from exc
    try:
        roles = input_roles(settings)
        existing = await consumer.topics()
        missing = sorted(set(roles) - existing)
        if missing:
            raise TopologyError(
                f"no topic {', '.join(missing)} at {settings.bootstrap_servers}: "
                "check CXMON_BROKER_URL and CXMON_TOPIC_*, or backtest a file with --input"
            )
        partitions = [
            TopicPartition(topic, partition)
            for topic in roles
            for partition in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        consumer.assign(partitions)
        starts = await consumer.beginning_offsets(partitions)
        ends = await consumer.end_offsets(partitions)
        on_total(sum(ends[tp] - starts[tp] for tp in partitions))
        await consumer.seek_to_beginning(*partitions)
        consumer.pause(*partitions)
        for tp in partitions:
            role, end = roles[tp.topic], ends[tp]
            consumer.resume(tp)
            while await consumer.position(tp) < end:
                for record in (await consumer.getmany(tp, timeout_ms=500)).get(tp, []):
                    if record.offset < end:
                        yield role, record.value or b""
            consumer.pause(tp)
    finally:
        await consumer.stop()
