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


# Metadata refreshes asked for before giving up on a topic the broker says exists.
METADATA_ATTEMPTS = 10


async def known_partitions(consumer: AIOKafkaConsumer, topics: list[str]) -> list[TopicPartition]:
    """Every partition of `topics`, once the consumer's metadata names them all.

    aiokafka's bootstrap asks the broker for the metadata of no topic (an empty list means
    none since Metadata v1), and its cache is filled by a refresh that runs beside the
    caller: read at once, an existing topic may have no partitions yet, and its history
    would read as empty (seen once in a test run).
    """
    for _ in range(METADATA_ATTEMPTS):
        known = {topic: consumer.partitions_for_topic(topic) for topic in topics}
        if all(known.values()):
            return [
                TopicPartition(topic, partition)
                for topic in topics
                for partition in sorted(known[topic] or ())
            ]
        await consumer._client.force_metadata_update()
    missing = sorted(topic for topic in topics if not consumer.partitions_for_topic(topic))
    raise TopologyError(f"the broker names no partitions of {', '.join(missing)}")


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
        partitions = await known_partitions(consumer, list(roles))
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
