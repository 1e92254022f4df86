"""Topic creation with the right partitions, before any producer or consumer touches a topic."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from streams.settings import Settings

log = logging.getLogger(__name__)

# Tables of current state and identity links need only the latest value per key.
COMPACTED = {"cleanup.policy": "compact"}
# What aiokafka logs for every failed attempt to reach a bootstrap server, at ERROR: twice
# a second while a broker is awaited, 121 lines before the one that says what is wrong.
CONNECT_FAILURES = ('Unable connect to "', 'Unable to request metadata from "')


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


class TopologyError(RuntimeError):
    """The broker holds a topic the monitor cannot use as it is, or no broker answers."""


def input_topics(settings: Settings) -> list[TopicSpec]:
    """The topics other services publish to: auto-created, they would get 1 partition."""
    names = settings.topics
    return [
        TopicSpec(names.touchpoint_events, settings.partitions),
        TopicSpec(names.survey_answers, settings.partitions),
        TopicSpec(names.identity_links, settings.partitions, COMPACTED),
    ]


async def ensure_topics(
    settings: Settings, specs: list[TopicSpec], timeout_s: float = 60.0
) -> list[str]:
    """Create the missing topics, refuse one whose partition count differs; return the new."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers,
        request_timeout_ms=15_000,
        **settings.broker_security.client_options(),
    )
    deadline = asyncio.get_running_loop().time() + timeout_s
    with quiet_connect_failures() as failures:
        waiting = False
        while True:
            try:
                await admin.start()
                break
            except KafkaError as exc:
                if asyncio.get_running_loop().time() > deadline:
                    raise failures.no_broker(settings.bootstrap_servers, exc) from exc
                if not waiting:
                    waiting = True
                    print(
                        f"cxmon: no broker answers at {settings.bootstrap_servers} yet; "
                        f"trying again for up to {timeout_s:g} s",
                        file=sys.stderr,
                        flush=True,
                    )
            await asyncio.sleep(0.5)
    try:
        existing = await _partition_counts(admin)
        for spec in specs:
            count = existing.get(spec.name)
            if count is not None and count != spec.partitions:
                raise TopologyError(
                    f"topic {spec.name} has {count} partitions but the monitor is set up for "
                    f"{spec.partitions}: set CXMON_PARTITIONS={count}, or recreate the topic"
                )
        missing = [spec for spec in specs if spec.name not in existing]
        if missing:
            try:
                await admin.create_topics(
                    [
                        NewTopic(
                            spec.name,
                            spec.partitions,
                            settings.replication,
                            topic_configs=spec.config,
                        )
                        for spec in missing
                    ]
                )
            except TopicAlreadyExistsError:
                log.info("another process created the topics first")
            await _wait_visible(admin, {spec.name for spec in missing}, deadline)
        return [spec.name for spec in missing]
    finally:
        await admin.close()


class ConnectFailures(logging.Filter):
    """Drops aiokafka's line per failed connection attempt, keeping the last one's words:
    the reason (a certificate not trusted, a password refused) belongs in the refusal."""

    def __init__(self) -> None:
        super().__init__()
        self.last = ""

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith(CONNECT_FAILURES):
            self.last = record.getMessage()
            return False
        return True

    def no_broker(self, servers: str, error: BaseException) -> TopologyError:
        """The refusal: the error, and what the last attempt was refused with if anything."""
        said = f"{error}; the last attempt: {self.last}" if self.last else str(error)
        return TopologyError(f"no broker answers at {servers}: {said}")


@contextlib.contextmanager
def quiet_connect_failures() -> Iterator[ConnectFailures]:
    """Drop aiokafka's line per failed connection attempt while a broker is awaited.

    Only while awaited: a worker that loses its broker later still logs each failure.
    """
    logger = logging.getLogger("aiokafka")  # aiokafka/client.py logs under this name
    quiet = ConnectFailures()
    logger.addFilter(quiet)
    try:
        yield quiet
    finally:
        logger.removeFilter(quiet)


async def _partition_counts(admin: AIOKafkaAdminClient) -> dict[str, int]:
    names = await admin.list_topics()
    if not names:
        return {}
    described = await admin.describe_topics(list(names))
    return {
        topic["topic"]: len(topic["partitions"])
        for topic in described
        if topic.get("error_code", 0) == 0
    }


async def _wait_visible(admin: AIOKafkaAdminClient, names: set[str], deadline: float) -> None:
    while True:
        counts = await _partition_counts(admin)
        if names <= counts.keys():
            return
        if asyncio.get_running_loop().time() > deadline:
            missing = sorted(names - counts.keys())
            raise TopologyError(f"topics not visible after creation: {missing}")
        await asyncio.sleep(0.2)
