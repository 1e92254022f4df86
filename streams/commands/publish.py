"""Publishing JSON lines and simulated journeys to the input topics, and following the alerts."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any, NamedTuple

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from models.decode import InvalidRecord, parse_json_object
from streams.kafka.pacing import pace_fetches
from streams.kafka.topics import TopicSpec, ensure_topics, input_topics
from streams.settings import Settings, Topics

# A follower shows alerts to a person or a test: a tenth of a second later is no loss,
# and ten fetches a second of nothing cost next to no CPU.
FOLLOW_FETCH_INTERVAL_S = 0.1


class UnroutableLine(ValueError):
    """A line that names no input topic by its fields."""


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: str
    key: bytes | None
    value: bytes


def keys_of(doc: dict[str, Any]) -> tuple[bytes | None, bytes | None]:
    """A record's customer key and contact key (`type:value`), either possibly absent."""
    contact = doc.get("contact")
    contact_key = (
        f"{contact.get('type')}:{contact.get('value')}".encode()
        if isinstance(contact, dict)
        else None
    )
    customer = doc.get("customer_id")
    customer_key = str(customer).encode() if customer is not None else None
    return customer_key, contact_key


def route(doc: dict[str, Any], topics: Topics) -> tuple[str, bytes | None]:
    """The topic a record belongs to by its fields, and its key: the customer, else the contact."""
    customer_key, contact_key = keys_of(doc)
    if "answer_id" in doc:
        return topics.survey_answers, customer_key or contact_key
    if "event_id" in doc:
        return topics.touchpoint_events, customer_key or contact_key
    if "linked_at" in doc and contact_key is not None:
        return topics.identity_links, contact_key
    raise UnroutableLine("has none of event_id, answer_id, or contact with linked_at")


def as_is(number: int, line: bytes, topic: str, topics: Topics) -> Outgoing | str:
    """A line sent unchanged to `topic`, keyed as routing would key it when it can be read.

    Identity links are keyed by contact: their topic is compacted, and the broker refuses
    a record without a key there, so such a line is refused here, by its number.
    """
    try:
        customer_key, contact_key = keys_of(parse_json_object(line))
    except InvalidRecord:
        customer_key, contact_key = None, None
    if topic != topics.identity_links:
        return Outgoing(topic, customer_key or contact_key, line)
    if contact_key is None:
        return (
            f"line {number}: the identity links topic is compacted and keyed by contact; "
            "this line has no contact with a type and a value"
        )
    return Outgoing(topic, contact_key, line)


def numbered_lines(stream: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """Each non-blank line without its line ending, with its number in the file."""
    for number, raw in enumerate(stream, start=1):
        line = raw.rstrip(b"\r\n")
        if line.strip():
            yield number, line


def read_lines(stream: IO[bytes], topics: Topics, topic: str | None) -> Iterator[Outgoing | str]:
    """Each line as a message, or as an error text naming the line; blank lines are skipped."""
    for number, line in numbered_lines(stream):
        if topic is not None:
            yield as_is(number, line, topic, topics)
            continue
        try:
            name, key = route(parse_json_object(line), topics)
        except (InvalidRecord, UnroutableLine) as exc:
            yield f"line {number}: {exc}"
            continue
        yield Outgoing(name, key, line)


def producer(settings: Settings) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        linger_ms=5,
        max_batch_size=256 * 1024,
        acks="all",
        enable_idempotence=True,
        **settings.broker_security.client_options(),
    )


async def send_all(
    settings: Settings,
    messages: Iterable[Outgoing | str] | AsyncIterator[Outgoing | str],
    *,
    progress_every: int = 50_000,
) -> tuple[int, list[str]]:
    """Send every message, waiting for the broker's acks; returns the count and the errors."""
    errors: list[str] = []
    sent = 0
    pending: list[asyncio.Future[Any]] = []
    started = time.monotonic()
    await ensure_topics(settings, input_topics(settings))
    client = producer(settings)
    await client.start()
    try:
        async for item in _aiter(messages):
            if isinstance(item, str):
                errors.append(item)
                print(item, file=sys.stderr)
                continue
            pending.append(await client.send(item.topic, item.value, key=item.key))
            sent += 1
            if len(pending) >= 10_000:
                await asyncio.gather(*pending)
                pending.clear()
            if progress_every and sent % progress_every == 0:
                rate = sent / max(time.monotonic() - started, 1e-9)
                print(f"published {sent:,} messages ({rate:,.0f}/s)", file=sys.stderr)
        await asyncio.gather(*pending)
    finally:
        await client.stop()
    return sent, errors


async def _aiter(
    items: Iterable[Outgoing | str] | AsyncIterator[Outgoing | str],
) -> AsyncIterator[Outgoing | str]:
    if isinstance(items, AsyncIterator):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


class Followed(NamedTuple):
    """One record of a followed topic."""

    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    timestamp_ms: int


async def follow(
    settings: Settings,
    topic: str,
    *,
    from_beginning: bool,
    idle_timeout_s: float | None = None,
    stop: Callable[[], bool] | None = None,
    fetch_interval_s: float = FOLLOW_FETCH_INTERVAL_S,
) -> AsyncIterator[Followed]:
    """Every message of a topic, without joining a group; ends when idle too long or `stop()`.

    At most one fetch every `fetch_interval_s`: with nothing to read, it waits rather than
    asks the broker again and again.
    """
    # Created here if the worker has not yet: waiting on metadata for a topic that does
    # not exist never ends, and a broker that auto-creates would give it one partition.
    await ensure_topics(settings, [TopicSpec(topic, settings.partitions)])
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        enable_auto_commit=False,
        **settings.broker_security.client_options(),
    )
    await consumer.start()
    pace_fetches(consumer, fetch_interval_s)
    try:
        partitions: set[int] | None = None
        while not partitions:
            await consumer.topics()  # refreshes the metadata: the topic may be seconds old
            partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                await asyncio.sleep(0.2)
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        if from_beginning:
            await consumer.seek_to_beginning(*assigned)
        else:
            await consumer.seek_to_end(*assigned)
        idle_since = time.monotonic()
        while True:
            batches = await consumer.getmany(timeout_ms=200)
            if not batches:
                if idle_timeout_s is not None and time.monotonic() - idle_since > idle_timeout_s:
                    return
                if stop is not None and stop():
                    return
                continue
            idle_since = time.monotonic()
            for records in batches.values():
                for record in records:
                    yield Followed(
                        record.key,
                        record.value or b"",
                        list(record.headers or []),
                        record.timestamp,
                    )
    finally:
        await consumer.stop()


def alert_line(raw: bytes) -> str:
    """One readable line per alert transition."""
    try:
        alert = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return f"(unreadable alert: {raw[:80]!r})"
    status = str(alert.get("status", "?")).upper()
    at = alert.get("ends_at") if status == "RESOLVED" else alert.get("starts_at")
    return (
        f"{at}  {status:<8} {alert.get('severity', '?'):<8} {alert.get('kind', '?'):<20} "
        f"{alert.get('subject', '?')}  {alert.get('summary', '')}"
    )
