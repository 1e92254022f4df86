"""Real processes for end-to-end tests: workers on the local broker, topic and group readers."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.client import AIOKafkaClient, CoordinationType
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Int16, Int32, Schema, String

from streams.catalog import load_catalog
from streams.publish import Outgoing, follow, send_all
from streams.replay import OfflineMonitor, ReplayResult
from streams.sentiment import build_scorer
from streams.settings import Settings, Topics
from streams.simulate import SimulatedRecord

REPO = Path(__file__).resolve().parent.parent
CATALOG = REPO / "deploy" / "catalog.example.yaml"

Received = tuple[bytes | None, bytes, list[tuple[str, bytes]]]

T = TypeVar("T")

# Helpers share the machine: a free port may be taken before the worker binds it.
WORKER_START_ATTEMPTS = 3

# Every call to the broker is bounded: a test must fail, not hang, when the broker is gone.
BROKER_CALL_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def reference(catalog: Path, records: Iterable[SimulatedRecord]) -> ReplayResult:
    """What the monitor must output: the same records through the pure core, no Kafka."""
    monitor = OfflineMonitor(load_catalog(catalog), build_scorer("auto"))
    for record in records:
        monitor.feed(record.role, record.value)
    return monitor.finish()


def transitions(alerts: Iterable[dict[str, Any]]) -> set[tuple[object, ...]]:
    """What identifies an alert transition; a re-sent duplicate adds nothing to the set."""
    return {
        (
            a["kind"],
            a["subject"],
            a["status"],
            a["fingerprint"],
            a["alert_id"],
            a["starts_at"],
            a["ends_at"],
        )
        for a in alerts
    }


@dataclass
class Deployment:
    """One isolated monitor on a shared broker: its own app id and topic names."""

    broker_url: str
    root: Path
    partitions: int = 4
    catalog: Path = CATALOG
    name: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:8]}")
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def topics(self) -> Topics:
        return Topics(
            touchpoint_events=f"{self.name}.touchpoint-events",
            survey_answers=f"{self.name}.survey-answers",
            identity_links=f"{self.name}.identity-links",
            alerts=f"{self.name}.alerts",
            dead_letters=f"{self.name}.dead-letters",
        )

    def env(self, instance: str, web_port: int) -> dict[str, str]:
        topics = self.topics
        return {
            **os.environ,
            "CXMON_BROKER_URL": self.broker_url,
            "CXMON_APP_ID": self.name,
            "CXMON_PARTITIONS": str(self.partitions),
            "CXMON_CATALOG": str(self.catalog),
            "CXMON_DATA_DIR": str(self.root / instance),
            "CXMON_WEB_PORT": str(web_port),
            "CXMON_INSTANCE_ID": self.instance_id(instance),
            "CXMON_TOPIC_TOUCHPOINT_EVENTS": topics.touchpoint_events,
            "CXMON_TOPIC_SURVEY_ANSWERS": topics.survey_answers,
            "CXMON_TOPIC_IDENTITY_LINKS": topics.identity_links,
            "CXMON_TOPIC_ALERTS": topics.alerts,
            "CXMON_TOPIC_DEAD_LETTERS": topics.dead_letters,
            **self.extra_env,
        }

    def instance_id(self, instance: str) -> str:
        """The worker's static group membership id: the same for every restart of `instance`."""
        return f"{self.name}-{instance}"

    def settings(self) -> Settings:
        return Settings.from_env(self.env("client", 0))

    def start_worker(self, instance: str = "w1", ready_timeout_s: float = 90.0) -> WorkerProcess:
        """A worker, ready; started again on another port if its free port was taken meanwhile."""
        for _ in range(WORKER_START_ATTEMPTS - 1):
            try:
                return self._start_worker(instance, ready_timeout_s)
            except RuntimeError as exc:
                if "address already in use" not in str(exc):
                    raise
        return self._start_worker(instance, ready_timeout_s)

    def _start_worker(self, instance: str, ready_timeout_s: float) -> WorkerProcess:
        port = free_port()
        (self.root / instance).mkdir(parents=True, exist_ok=True)
        log_path = self.root / f"{instance}.log"
        # A restarted instance appends to its log: only what this process wrote is its own.
        log_start = log_path.stat().st_size if log_path.exists() else 0
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "streams", "worker"],
                env=self.env(instance, port),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        worker = WorkerProcess(process, log_path, port, log_start)
        worker.wait_ready(ready_timeout_s)
        return worker

    def publish(self, records: Iterable[SimulatedRecord]) -> int:
        topics = self.topics
        names = {
            "touchpoint_events": topics.touchpoint_events,
            "survey_answers": topics.survey_answers,
            "identity_links": topics.identity_links,
        }
        outgoing = [Outgoing(names[r.role], r.key, r.value) for r in records]
        sent, _ = asyncio.run(send_all(self.settings(), outgoing, progress_every=0))
        return sent

    def read(
        self,
        topic: str,
        *,
        until: Callable[[list[Received]], bool],
        timeout_s: float,
        settle_s: float = 3.0,
    ) -> list[Received]:
        """Messages of `topic` from the start, once `until` holds and the topic has gone quiet."""

        async def collect() -> list[Received]:
            seen: list[Received] = []
            deadline = time.monotonic() + timeout_s

            async def drain() -> None:
                async for message in follow(
                    self.settings(), topic, from_beginning=True, idle_timeout_s=settle_s
                ):
                    seen.append(message)

            while time.monotonic() < deadline:
                seen.clear()
                await asyncio.wait_for(drain(), timeout=max(deadline - time.monotonic(), 1))
                if until(seen):
                    return seen
            return seen

        return asyncio.run(collect())

    def alerts_equal_to(
        self, expected: list[dict[str, Any]], timeout_s: float
    ) -> list[dict[str, Any]]:
        """The worker's alerts, once as many as `expected`: the same transitions, each once."""
        alerts = self.read(
            self.topics.alerts, until=lambda seen: len(seen) >= len(expected), timeout_s=timeout_s
        )
        received = [orjson.loads(value) for _, value, _ in alerts]
        assert transitions(received) == transitions(expected)
        assert len(received) == len(expected), "each transition is emitted once"
        return received

    def read_to_end(self, topic: str) -> list[Received]:
        """Every message `topic` holds now, partition by partition in offset order."""
        return asyncio.run(_bounded(_read_to_end(self.settings().bootstrap_servers, topic)))

    def table(self, name: str) -> dict[bytes, bytes]:
        """A worker table as its changelog leaves it: each key's last value, deletes applied."""
        rows: dict[bytes, bytes] = {}
        for key, value, _ in self.read_to_end(f"{self.name}-{name}-changelog"):
            assert key is not None, f"a changelog record of table {name} has no key"
            if value:
                rows[key] = value
            else:
                rows.pop(key, None)
        return rows

    def committed_offsets(self) -> Counter[str]:
        """What the worker's consumer group committed, summed per topic over its partitions."""
        totals: Counter[str] = Counter()
        for tp, offset in asyncio.run(_bounded(self._committed())).items():
            totals[tp.topic] += offset
        return totals

    def wait_drained(self, timeout_s: float, poll_s: float = 2.0) -> None:
        """Until the group has committed every record of every topic it reads, twice in a row.

        Two identical readings `poll_s` apart: nothing left to commit, nothing new arriving.
        """
        deadline = time.monotonic() + timeout_s
        previous: dict[TopicPartition, tuple[int, int]] | None = None
        while True:
            reading = asyncio.run(_bounded(self._positions()))
            behind = {
                f"{tp.topic}:{tp.partition}": end - committed
                for tp, (committed, end) in sorted(reading.items())
                if committed < end
            }
            if not behind and reading == previous:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"group {self.name} not drained in {timeout_s}s; records not committed: "
                    f"{behind or 'none, but the topics were still growing'}"
                )
            previous = None if behind else reading
            time.sleep(poll_s)

    def members(self) -> list[set[TopicPartition]]:
        """The input partitions of each member of the worker's consumer group."""
        return asyncio.run(_bounded(self._members()))

    def remove_member(self, instance: str) -> None:
        """Take a stopped static member out of the group, as Kafka's RemoveMembersFromGroup does.

        A static member does not leave the group when it stops (so a restart gets its
        partitions back at once); when a worker is gone for good, its partitions only
        move to the others once it is removed.
        """
        asyncio.run(_bounded(self._remove_member(self.instance_id(instance))))

    async def _committed(self) -> dict[TopicPartition, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.settings().bootstrap_servers)
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(self.name)
        finally:
            await admin.close()
        return {tp: max(meta.offset, 0) for tp, meta in offsets.items()}

    async def _positions(self) -> dict[TopicPartition, tuple[int, int]]:
        """(committed, end) of every partition the group reads: inputs and internal topics."""
        servers = self.settings().bootstrap_servers
        committed = await self._committed()
        admin = AIOKafkaAdminClient(bootstrap_servers=servers)
        await admin.start()
        try:
            names = await admin.list_topics()
        finally:
            await admin.close()
        outputs = {self.topics.alerts, self.topics.dead_letters}
        read = {tp.topic for tp in committed}
        consumed = [
            name
            for name in names
            if name.startswith(f"{self.name}.") and (name not in outputs or name in read)
        ]
        consumer = AIOKafkaConsumer(bootstrap_servers=servers, enable_auto_commit=False)
        await consumer.start()
        try:
            partitions = [
                TopicPartition(name, p)
                for name in consumed
                for p in sorted(consumer.partitions_for_topic(name) or ())
            ]
            ends = await consumer.end_offsets(partitions)
        finally:
            await consumer.stop()
        return {tp: (committed.get(tp, 0), ends[tp]) for tp in partitions}

    async def _members(self) -> list[set[TopicPartition]]:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.settings().bootstrap_servers)
        await admin.start()
        try:
            (response,) = await admin.describe_consumer_groups([self.name])
        finally:
            await admin.close()
        inputs = {self.topics.touchpoint_events, self.topics.survey_answers}
        members: list[set[TopicPartition]] = []
        for group in response.groups:
            for member in group[5]:
                # Empty while a rebalance is under way: the member has nothing yet.
                raw = member[4]
                owned = ConsumerProtocolMemberAssignment.decode(raw).partitions() if raw else []
                members.append({tp for tp in owned if tp.topic in inputs})
        return members

    async def _remove_member(self, instance_id: str) -> None:
        client = AIOKafkaClient(bootstrap_servers=self.settings().bootstrap_servers)
        await client.bootstrap()
        try:
            coordinator = await client.coordinator_lookup(CoordinationType.GROUP, self.name)
            response = await client.send(coordinator, RemoveStaticMembers(self.name, [instance_id]))
        finally:
            await client.close()
        errors = [response.error_code, *(member[2] for member in response.members)]
        if any(errors):
            raise RuntimeError(f"removing {instance_id} from {self.name} failed: {response}")


async def _bounded(call: Coroutine[Any, Any, T]) -> T:
    return await asyncio.wait_for(call, BROKER_CALL_TIMEOUT_S)


async def _read_to_end(bootstrap_servers: str, topic: str) -> list[Received]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        # A fresh client's metadata may not list the topic yet: ask until it does.
        while not consumer.partitions_for_topic(topic):
            await consumer.topics()
            await asyncio.sleep(0.1)
        partitions = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))
        ]
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        await consumer.seek_to_beginning(*partitions)
        by_partition: dict[TopicPartition, list[Received]] = {tp: [] for tp in partitions}
        done = {tp for tp in partitions if await consumer.position(tp) >= ends[tp]}
        while len(done) < len(partitions):
            batches = await consumer.getmany(timeout_ms=500)
            for tp, records in batches.items():
                by_partition[tp] += [
                    (r.key, r.value or b"", list(r.headers or []))
                    for r in records
                    if r.offset < ends[tp]
                ]
            done = {tp for tp in partitions if await consumer.position(tp) >= ends[tp]}
        return [message for tp in partitions for message in by_partition[tp]]
    finally:
        await consumer.stop()


class LeaveGroupV3Response(Response):  # type: ignore[misc]
    API_KEY = 13
    API_VERSION = 3
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("error_code", Int16),
        (
            "members",
            Array(
                ("member_id", String("utf-8")),
                ("group_instance_id", String("utf-8")),
                ("error_code", Int16),
            ),
        ),
    )


class LeaveGroupV3Request(RequestStruct):  # type: ignore[misc]
    """LeaveGroup v3 (KIP-345), which aiokafka lacks: members named by their instance id."""

    API_KEY = 13
    API_VERSION = 3
    RESPONSE_TYPE = LeaveGroupV3Response
    SCHEMA = Schema(
        ("group_id", String("utf-8")),
        ("members", Array(("member_id", String("utf-8")), ("group_instance_id", String("utf-8")))),
    )


class RemoveStaticMembers(Request[LeaveGroupV3Request]):  # type: ignore[misc]
    API_KEY = 13

    def __init__(self, group: str, instance_ids: list[str]) -> None:
        self.group = group
        self.instance_ids = instance_ids

    def build(self, request_struct_class: type[LeaveGroupV3Request]) -> LeaveGroupV3Request:
        # An empty member id: the broker finds each member by its instance id.
        return request_struct_class(self.group, [("", i) for i in self.instance_ids])


@dataclass
class WorkerProcess:
    process: subprocess.Popen[bytes]
    log_path: Path
    web_port: int
    log_start: int = 0

    def log(self) -> str:
        """What this process wrote to its instance's log."""
        with self.log_path.open("rb") as log:
            log.seek(self.log_start)
            return log.read().decode(errors="replace")

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"worker exited with {self.process.returncode}:\n{self.log()[-4000:]}"
                )
            if "[^Worker]: Ready" in self.log():
                return
            time.sleep(0.25)
        raise TimeoutError(f"worker not ready in {timeout_s}s:\n{self.log()[-4000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode
