"""The local broker's saves of what it holds, which the bench measures its CPU against."""

from __future__ import annotations

import contextlib
from pathlib import Path

from aiokafka import AIOKafkaProducer

from streams.kafka.broker import LocalBroker
from tests.harness import free_port
from tests.services import wait_for


async def send(broker: LocalBroker, topic: str, value: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value)
    finally:
        await producer.stop()


def saved(broker: LocalBroker, topic: str) -> bool:
    with contextlib.suppress(FileNotFoundError):
        return f'"{topic}"'.encode() in broker.saved_state.read_bytes()
    return False


async def test_the_local_broker_saves_what_it_holds_anew_after_each_write(
    tmp_path: Path,
) -> None:
    with LocalBroker("127.0.0.1", free_port(), tmp_path / "data") as broker:
        await send(broker, "first-topic", b"held")
        wait_for("the first topic in the saved state", lambda: saved(broker, "first-topic"), 10)
        first = broker.last_save()
        await send(broker, "second-topic", b"held")
        wait_for("a new save", lambda: broker.last_save() != first, 10, every_s=0.05)
        wait_for("the second topic saved", lambda: saved(broker, "second-topic"), 10)
