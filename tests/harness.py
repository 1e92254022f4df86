"""Real processes for end-to-end tests: workers on the local broker, topic and group readers,
and what their tables and outputs hold against the offline reference."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from agents.membership import INSTANCE_FILE
from models.decode import Reason, encode_alert, format_timestamp
from models.records import Alert
from streams.catalog import Catalog, load_catalog
from streams.commands.publish import Outgoing, follow, send_all
from streams.commands.simulate import SimulatedRecord
from streams.core.gaps import GapState, RulesState
from streams.core.ingest import FATIGUE_SUBJECT, is_gap_subject, subject_stage
from streams.core.journeys import BreakState
from streams.core.messaging import CustomerMessages, FrequencyPolicy, Message
from streams.core.scores import Tally
from streams.core.sentiment import build_scorer
from streams.core.touchpoints import TouchpointState, TouchpointWindows
from streams.kafka.group import GroupClient
from streams.replay import OfflineMonitor, ReplayResult
from streams.settings import Settings, Topics
from streams.state.delivery import unwrap

REPO = Path(__file__).resolve().parent.parent
CATALOG = REPO / "deploy" / "catalog.example.yaml"

Received = tuple[bytes | None, bytes, list[tuple[str, bytes]]]

T = TypeVar("T")

# Helpers share the machine: a free port may be taken before the worker binds it.
WORKER_START_ATTEMPTS = 3

# Every call to the broker is bounded: a test must fail, not hang, when the broker is gone.
BROKER_CALL_TIMEOUT_S = 30.0

# What a worker logs once it holds its partitions and its state is restored.
READY = "[^Worker]: Ready"
# A group whose commits and topics all stand still this long while records wait has
# stalled: the worker's own stall watch says so after 60 s too. Slow progress is waited for.
STALL_S = 60.0

SHOWN = 15  # differences listed in a failure, per kind


# Ports handed out below the kernel's ephemeral range (32768 and up on Linux), where no
# outgoing connection takes them; each test process of a pytest-xdist run has a range of
# its own and never hands a port out twice, so two processes never race for one port.
PORTS_FROM, PORTS_TO = 10_000, 32_000


def _port_candidates() -> Iterator[int]:
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    span = (PORTS_TO - PORTS_FROM) // workers
    first = PORTS_FROM + worker * span
    return iter(range(first, first + span))


_ports = _port_candidates()


def free_port() -> int:
    """A port free now that no other test process of this run will hand out."""
    for port in _ports:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:  # taken by something outside the tests
                continue
            return port
    raise RuntimeError(f"no free port left in this test process's range from {PORTS_FROM}")


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
    # Every worker process this deployment started, stopped or not: their logs explain a failure.
    started: list[WorkerProcess] = field(default_factory=list)

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
            "CXMON_DATA_DIR": str(self.data_dir(instance)),
            "CXMON_WEB_PORT": str(web_port),
            "CXMON_TOPIC_TOUCHPOINT_EVENTS": topics.touchpoint_events,
            "CXMON_TOPIC_SURVEY_ANSWERS": topics.survey_answers,
            "CXMON_TOPIC_IDENTITY_LINKS": topics.identity_links,
            "CXMON_TOPIC_ALERTS": topics.alerts,
            "CXMON_TOPIC_DEAD_LETTERS": topics.dead_letters,
            **self.extra_env,
        }

    def data_dir(self, instance: str) -> Path:
        return self.root / instance

    def instance_id(self, instance: str) -> str:
        """The static group membership id the worker made on its first start and keeps."""
        return (self.data_dir(instance) / INSTANCE_FILE).read_text().strip()

    def logged(self, text: str) -> list[str]:
        """Every line of its workers' logs that holds `text`."""
        return [line for w in self.started for line in w.log().splitlines() if text in line]

    def warnings(self, most: int = 25) -> list[str]:
        """The last distinct warnings and errors its workers logged, oldest first."""
        seen: dict[str, None] = {}
        for worker in self.started:
            for line in worker.log().splitlines():
                if "[WARNING]" in line or "[ERROR]" in line:
                    seen[line.split("] ", 3)[-1][:300]] = None
        return list(seen)[-most:]

    def settings(self) -> Settings:
        return Settings.from_env(self.env("client", 0))

    def start_worker(
        self, instance: str = "w1", ready_timeout_s: float = 90.0, until: str = READY
    ) -> WorkerProcess:
        """A worker, once its log says `until` (by default: ready); started again on another
        port if its free port was taken meanwhile."""
        for _ in range(WORKER_START_ATTEMPTS - 1):
            try:
                return self._start_worker(instance, ready_timeout_s, until)
            except RuntimeError as exc:
                if "address already in use" not in str(exc):
                    raise
        return self._start_worker(instance, ready_timeout_s, until)

    def _start_worker(self, instance: str, ready_timeout_s: float, until: str) -> WorkerProcess:
        port = free_port()
        self.data_dir(instance).mkdir(parents=True, exist_ok=True)
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
        self.started.append(worker)
        try:
            worker.wait_ready(ready_timeout_s, until)
        except TimeoutError:
            worker.stop()  # nobody else holds it: not left running
            raise
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
                    seen.append((message.key, message.value, message.headers))

            while time.monotonic() < deadline:
                seen.clear()
                await asyncio.wait_for(drain(), timeout=max(deadline - time.monotonic(), 1))
                if until(seen):
                    return seen
            return seen

        return asyncio.run(collect())

    def alerts_equal_to(
        self, expected: list[dict[str, Any]], timeout_s: float = 60.0
    ) -> list[dict[str, Any]]:
        """The worker's alerts, once as many as `expected`: the same transitions, each once.

        Read once the group has drained (however long that takes while it makes progress),
        then for at most `timeout_s`: the last windows close on idle reports after it.
        """
        self.wait_drained()
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

    def wait_drained(self, stall_s: float = STALL_S, poll_s: float = 2.0) -> None:
        """Until the group has committed every record of every topic it reads, twice in a row.

        Two identical readings `poll_s` apart: nothing left to commit, nothing new arriving.
        A slow machine only makes this wait longer: it fails when neither a commit nor the
        end of a topic the group reads has moved for `stall_s` while records wait. Commits
        alone can stand still that long while the worker works (each waits for Faust's
        producer buffer to drain), and what it writes moves the ends meanwhile.
        """
        previous: dict[TopicPartition, tuple[int, int]] | None = None
        last: dict[TopicPartition, tuple[int, int]] | None = None
        moved_at = time.monotonic()
        while True:
            reading = asyncio.run(_bounded(self._positions()))
            behind = {
                f"{tp.topic}:{tp.partition}": end - committed
                for tp, (committed, end) in sorted(reading.items())
                if committed < end
            }
            if not behind and reading == previous:
                return
            if reading != last:
                last, moved_at = reading, time.monotonic()
            elif time.monotonic() - moved_at > stall_s:
                raise TimeoutError(
                    f"group {self.name}: nothing moved for {stall_s:.0f} s; records not "
                    f"committed: {behind}"
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
        inputs = {self.topics.touchpoint_events, self.topics.survey_answers}
        async with GroupClient(self.settings()) as client:
            group = await client.describe(inputs)
        return [{TopicPartition(t, p) for t, p in m.partitions} for m in group.members]

    async def _remove_member(self, instance_id: str) -> None:
        async with GroupClient(self.settings()) as client:
            await client.remove([instance_id], ())


@dataclass
class Observed:
    """What a deployment ended with: its tables as their changelogs hold them, its outputs."""

    touchpoints: dict[str, TouchpointState]
    customers: dict[str, CustomerMessages]
    breaks: dict[str, BreakState]
    stages: dict[str, RulesState]
    fatigue: RulesState
    alerts: list[dict[str, Any]]
    dead_letters: list[Received]

    @classmethod
    def of(cls, deployment: Deployment) -> Observed:
        topics = deployment.topics
        windows = deployment.table("touchpoint-windows")
        return cls(
            touchpoints={
                key.decode(): TouchpointState.decode(unwrap(value)[1])
                for key, value in windows.items()
                if not is_gap_subject(key.decode())
            },
            stages={
                stage.value: RulesState.decode(unwrap(value)[1])
                for key, value in windows.items()
                if (stage := subject_stage(key.decode())) is not None
            },
            fatigue=RulesState.decode(unwrap(windows[FATIGUE_SUBJECT.encode()])[1])
            if FATIGUE_SUBJECT.encode() in windows
            else RulesState(),
            customers={
                key.decode(): CustomerMessages.decode(value)
                for key, value in deployment.table("customer-frequency").items()
            },
            breaks={
                key.decode(): BreakState.decode(value)
                for key, value in deployment.table("journey-breaks").items()
            },
            alerts=[orjson.loads(value) for _, value, _ in deployment.read_to_end(topics.alerts)],
            dead_letters=deployment.read_to_end(topics.dead_letters),
        )

    @property
    def resent_alerts(self) -> int:
        return len(self.alerts) - len(transitions(self.alerts))


def differences(expected: ReplayResult, observed: Observed, catalog: Catalog) -> list[str]:
    """Everything the worker holds or emitted that the offline reference does not, and back."""
    return [
        *shown(touchpoint_differences(expected.touchpoints, observed.touchpoints, catalog)),
        *shown(customer_differences(expected.customers, observed.customers, catalog)),
        *shown(break_differences(expected.breaks, observed.breaks)),
        *shown(gap_differences(expected.stages, observed.stages)),
        *shown(gap_differences({"fatigue": expected.fatigue}, {"fatigue": observed.fatigue})),
        *shown(alert_differences(expected.alerts, observed.alerts)),
        *shown(dead_letter_differences(expected, observed.dead_letters)),
    ]


def shown(found: list[str]) -> list[str]:
    return found if len(found) <= SHOWN else [*found[:SHOWN], f"... and {len(found) - SHOWN} more"]


def break_differences(
    expected: dict[str, BreakState], observed: dict[str, BreakState]
) -> list[str]:
    """Each journey break's decided attempts by bucket, and its open incident."""
    found: list[str] = []
    for name in sorted(expected.keys() | observed.keys()):
        want, got = expected.get(name, BreakState()), observed.get(name, BreakState())
        if got.incident_start_ms != want.incident_start_ms:
            found.append(
                f"break {name}: incident open since {at(got.incident_start_ms)}, "
                f"the reference's since {at(want.incident_start_ms)}"
            )
        for start in sorted(want.buckets.keys() | got.buckets.keys()):
            wanted, held = want.buckets.get(start, {}), got.buckets.get(start, {})
            if wanted != held:
                apart = sorted(
                    wanted.keys() ^ held.keys()
                    | {key for key in wanted.keys() & held.keys() if wanted[key] != held[key]}
                )
                sides = ", ".join(
                    f"{key}: {held.get(key, '-')} here, {wanted.get(key, '-')} there"
                    for key in apart[:6]
                )
                found.append(
                    f"break {name} bucket {at(start)}: {len(held)} attempts, the reference "
                    f"{len(wanted)}; {len(apart)} decided differently or only on one side "
                    f"(attempt: broken here, there: {sides})"
                )
    return found


def gap_differences(expected: dict[str, RulesState], observed: dict[str, RulesState]) -> list[str]:
    """Each gap rule's judged time, open incidents and tallies by step and group (a channel
    for consistency, a cohort for fatigue), by subject."""
    found: list[str] = []
    for subject in sorted(expected.keys() | observed.keys()):
        want, got = expected.get(subject, RulesState()), observed.get(subject, RulesState())
        for rule in sorted(want.rules.keys() | got.rules.keys()):
            mine = got.rules.get(rule, GapState())
            theirs = want.rules.get(rule, GapState())
            if (mine.evaluated_until_ms, mine.incidents) != (
                theirs.evaluated_until_ms,
                theirs.incidents,
            ):
                found.append(
                    f"gap rule {rule}: judged to {at(mine.evaluated_until_ms)} with incidents "
                    f"{mine.incidents}, the reference to {at(theirs.evaluated_until_ms)} with "
                    f"{theirs.incidents}"
                )
            for start in sorted(mine.buckets.keys() | theirs.buckets.keys()):
                ours, reference = mine.buckets.get(start, {}), theirs.buckets.get(start, {})
                for group in sorted(ours.keys() | reference.keys()):
                    apart = tally_differences(
                        reference.get(group, Tally()), ours.get(group, Tally())
                    )
                    if apart:
                        found.append(f"gap rule {rule} {at(start)} {group}: {apart}")
    return found


def touchpoint_differences(
    expected: dict[str, TouchpointState], observed: dict[str, TouchpointState], catalog: Catalog
) -> list[str]:
    found: list[str] = []
    for name in sorted(expected.keys() | observed.keys()):
        want, got = expected.get(name), observed.get(name)
        if want is None or got is None:
            found.append(f"touchpoint {name}: only the {'worker' if want is None else 'reference'}")
            continue
        windows = TouchpointWindows(catalog, name)
        if windows.moments and got.judged_to_ms != want.judged_to_ms:
            found.append(
                f"touchpoint {name}: judged to {at(got.judged_to_ms)}, "
                f"the reference to {at(want.judged_to_ms)}"
            )
        if got.watermark_ms != want.watermark_ms:
            found.append(
                f"touchpoint {name}: newest event {at(got.watermark_ms)}, "
                f"the reference's {at(want.watermark_ms)}"
            )
        # The worker moves a touchpoint without key moments on only when its own data
        # arrives: drop the buckets the reference's last watermark has already expired.
        windows.advance(got, want.judged_to_ms)
        for start in sorted(want.buckets.keys() | got.buckets.keys()):
            if start not in got.buckets or start not in want.buckets:
                holder = "reference" if start in want.buckets else "worker"
                found.append(f"touchpoint {name} bucket {at(start)}: only the {holder} holds it")
                continue
            fields_apart = tally_differences(want.buckets[start], got.buckets[start])
            if fields_apart:
                found.append(f"touchpoint {name} bucket {at(start)}: {fields_apart}")
        incidents = {m: s.incident_start_ms for m, s in got.moments.items()}
        expected_incidents = {m: s.incident_start_ms for m, s in want.moments.items()}
        if incidents != expected_incidents:
            found.append(
                f"touchpoint {name}: open incidents {incidents}, "
                f"the reference's {expected_incidents}"
            )
    return found


def tally_differences(want: Tally, got: Tally) -> str:
    """The fields that differ, as 'name worker (reference)'; sums may differ in the last bits."""
    apart = []
    for name in (f.name for f in fields(Tally)):
        mine, theirs = getattr(got, name), getattr(want, name)
        if isinstance(mine, float) or isinstance(theirs, float):
            same = math.isclose(mine, theirs, rel_tol=1e-9, abs_tol=1e-9)
        else:
            same = mine == theirs
        if not same:
            apart.append(f"{name} {mine} ({theirs})")
    return ", ".join(apart)


def customer_differences(
    expected: dict[str, CustomerMessages], observed: dict[str, CustomerMessages], catalog: Catalog
) -> list[str]:
    policy = FrequencyPolicy(catalog.messaging)
    # The reference judges every customer to the newest message time; the worker stops
    # revisiting a customer it has judged, so compare what each holds inside that window.
    ends = [c.judged_to_ms for c in expected.values() if c.judged_to_ms is not None]
    if not ends:
        return [
            f"customer {name}: not in the reference"
            for name in sorted(observed)
            if observed[name].messages
        ]
    now = max(ends)
    found: list[str] = []
    for name in sorted(expected.keys() | observed.keys()):
        want = expected.get(name, CustomerMessages())
        got = observed.get(name, CustomerMessages())
        mine, theirs = Counter(policy.inside(got, now)), Counter(policy.inside(want, now))
        if mine != theirs:
            found.append(
                f"customer {name}: {mine.total()} messages in the window, the reference "
                f"{theirs.total()}; missing {messages(theirs - mine)}; "
                f"extra {messages(mine - theirs)}"
            )
        if got.incident_start_ms != want.incident_start_ms:
            found.append(
                f"customer {name}: incident open since {at(got.incident_start_ms)}, "
                f"the reference's {at(want.incident_start_ms)}"
            )
    return found


def messages(counted: Counter[Message]) -> str:
    listed = sorted(counted.elements(), key=lambda m: (m.sent_at_ms, m.digest))
    return (
        "[" + ", ".join(f"{at(m.sent_at_ms)} {m.channel}/{m.category.value}" for m in listed) + "]"
    )


def alert_differences(expected: list[Alert], observed: list[dict[str, Any]]) -> list[str]:
    want = transitions(orjson.loads(encode_alert(a)) for a in expected)
    got = transitions(observed)
    return [
        *(f"alert missing: {describe(t)}" for t in sorted(want - got, key=repr)),
        *(f"alert not in the reference: {describe(t)}" for t in sorted(got - want, key=repr)),
    ]


def describe(transition: tuple[object, ...]) -> str:
    kind, subject, status, _, alert_id, starts_at, ends_at = transition
    return f"{kind} {status} {subject} from {starts_at} to {ends_at} (alert_id {alert_id})"


# Lateness depends on the order within an input partition, futurity on the clock: the
# reference has neither, so records refused for those are counted apart.
UNMODELLED = frozenset({Reason.LATE.value, Reason.FUTURE.value})


def refusals(dead_letters: list[Received]) -> Counter[str]:
    """Reasons of the records refused, each record once, known by where it was read."""
    by_position: dict[tuple[bytes, ...], str] = {}
    for _, _, headers in dead_letters:
        named = dict(headers)
        position = (named["cxmon-topic"], named["cxmon-partition"], named["cxmon-offset"])
        by_position[position] = named["cxmon-reason"].decode()
    return Counter(by_position.values())


def dead_letter_differences(expected: ReplayResult, dead_letters: list[Received]) -> list[str]:
    got = Counter({r: n for r, n in refusals(dead_letters).items() if r not in UNMODELLED})
    want = Counter(reason.value for reasons in expected.rejected.values() for reason in reasons)
    if got == want:
        return []
    return [f"dead letters by reason: {dict(got)}, the reference's {dict(want)}"]


def at(ms: int | None) -> str:
    return "never" if ms is None else format_timestamp(ms)


async def _bounded(call: Coroutine[Any, Any, T]) -> T:
    return await asyncio.wait_for(call, BROKER_CALL_TIMEOUT_S)


async def _read_to_end(bootstrap_servers: str, topic: str) -> list[Received]:
    # Earliest by default too: assign() starts a reset by the default policy, and when its
    # answer comes back after seek_to_beginning() it is applied all the same (aiokafka
    # 0.14): with "latest", now and then a read found nothing, every partition at its end.
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
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

    def wait_ready(self, timeout_s: float = 90.0, until: str = READY) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"worker exited with {self.process.returncode}:\n{self.log()[-4000:]}"
                )
            if until in self.log():
                return
            time.sleep(0.25)
        raise TimeoutError(f"worker log without {until!r} in {timeout_s}s:\n{self.log()[-4000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode
