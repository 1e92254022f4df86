"""Tables restored in bulk from their changelogs, on the real broker: all of it, then the tail."""

from __future__ import annotations

from aiokafka import AIOKafkaProducer
from faust.types import TP

from agents.topology import Topology, build_app
from streams.kafka.topics import ensure_topics
from streams.settings import Settings
from tests.harness import Deployment, free_port


async def test_changelogs_are_read_in_bulk_once_then_only_their_tail(
    deployment: Deployment,
) -> None:
    settings = Settings.from_env(deployment.env("w1", free_port()))
    topology = Topology(build_app(settings), settings)
    await ensure_topics(settings, topology.specs())
    table = topology.customer_frequency
    store = table.store
    changelog = table.changelog_topic.get_topic_name()
    first, second = TP(changelog, 0), TP(changelog, 1)
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    await producer.start()

    async def write(partition: int, *records: tuple[bytes, bytes | None]) -> None:
        for key, value in records:
            await producer.send_and_wait(changelog, value, key=key, partition=partition)

    try:
        await write(0, (b"k1", b"a"), (b"k2", b"b"), (b"k1", b"c"), (b"k2", None))
        await write(1, (b"k3", b"d"))

        assert await topology.loader.load_partitions({first, second}) == 5
        assert store.data == {b"k1": b"c", b"k3": b"d"}, "last value wins; none deletes"
        assert (store.persisted_offset(first), store.persisted_offset(second)) == (3, 0)
        other = topology.journey_customers.store
        assert other.data == {}, "another table's changelogs are empty"
        assert other.held == {}

        await write(0, (b"k4", b"e"))
        assert await topology.loader.load_partitions({first, second}) == 1, "only the tail"
        assert store.data[b"k4"] == b"e"
        assert store.persisted_offset(first) == 4

        # Acknowledged writes of a partition this worker holds: it holds them too.
        store.set_persisted_offset(first, 9)
        assert store.persisted_offset(first) == 9

        # Partition 0 goes to another worker: nothing vouches for this copy of it any more,
        # not even a late acknowledgement, and when it comes back it is read from the start.
        assert await topology.loader.load_partitions({second}) == 0
        store.set_persisted_offset(first, 20)
        assert store.persisted_offset(first) is None
        assert await topology.loader.load_partitions({first, second}) == 5
        assert store.persisted_offset(first) == 4
    finally:
        await producer.stop()
