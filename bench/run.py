"""`make bench`: the real worker's throughput, alert latency, memory, state and restore time.

One run, one fresh local broker, one data set: simulated journeys of a large customer base
are pre-loaded; a raw aiokafka consumer that only decodes reads them; then the worker reads
them with every table and detector on, and its tables and alerts are compared with the
offline reference's for the same records. The worker then takes a live load at a fixed
rate, with probe customers whose over-messaging alert is timed from publish to
`cx.alerts`. Two workers read the same records from topics of their own; a worker whose
table holds a million keys is restarted and its restore timed. Figures go to a JSON file
and a short table."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from models.records import Category
from streams.catalog import Catalog, load_catalog
from streams.commands.publish import Outgoing, follow, send_all
from streams.commands.simulate import SimulatedRecord, SimulationConfig, generate
from streams.core.messaging import CustomerMessages, Message
from streams.kafka.broker import LocalBroker
from streams.kafka.topics import COMPACTED, TopicSpec, ensure_topics
from streams.replay import ReplayResult
from streams.settings import Settings
from tests.harness import (
    CATALOG,
    Deployment,
    Observed,
    WorkerProcess,
    break_differences,
    customer_differences,
    describe,
    differences,
    free_port,
    gap_differences,
    reference,
    shown,
    touchpoint_differences,
    transitions,
)
from tests.services import wait_for

HOUR_MS = 3_600_000
SAVING_SECONDS = 8.0
BACKLOG_START_MS = 1_795_305_600_000  # 2026-11-22T16:00Z: days before any live run
SAMPLE = re.compile(r"^(cxmon_\w+)(?:\{([^}]*)\})? ([0-9.e+-]+)$", re.M)
# Probe customers get six marketing messages at one instant: over the limit of five.
PROBE_CHANNELS = (
    ("sms", "marketing.sms"),
    ("email", "marketing.email"),
    ("app_push", "marketing.push"),
) * 2
STALL_S = 120.0
SETTLE_S = 30.0
# Faust's recovery of what the bulk read left (agents/tables.py): its log lines.
RESTORE_MARKS = ("Restoring state from changelog topics", "Done reading from changelog topics")
BULK_RESTORED = re.compile(r"restored (\d+) changelog records in ([\d.]+) s")
BULK_PROGRESS = re.compile(r"restored (\d+) of (\d+) changelog records")
TABLES = (
    "ingest-checkpoints",
    "seen-ids",
    "touchpoint-windows",
    "identities",
    "held-contact-messages",
    "customer-frequency",
    "firing-alerts",
)


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


@dataclass
class Data:
    """The pre-loaded records, as published."""

    records: list[SimulatedRecord]
    events: int  # touchpoint events and survey answers
    links: int
    active_customers: int


def backlog(events: int, customers: int, seed: int) -> Data:
    """`events` events and answers of simulated journeys, with the identity links they use."""
    config = SimulationConfig(
        start_ms=BACKLOG_START_MS,
        seed=seed,
        customers=customers,
        duration_ms=max(1, events // 200_000 + 2) * HOUR_MS,
        journeys_per_hour=200_000,
        degrade_touchpoint="checkout.payment",
        over_messaged_customers=20,
    )
    records: list[SimulatedRecord] = []
    counted = 0
    active: set[bytes] = set()
    for record in generate(config):
        records.append(record)
        if record.role != "identity_links":
            counted += 1
            if not record.key.count(b":"):  # contact keys are type:value
                active.add(record.key)
            if counted % 250_000 == 0:
                say(f"  generated {counted:,} events and answers")
            if counted >= events:
                break
    return Data(records, counted, len(records) - counted, len(active))


@dataclass
class Floor:
    """What a consumer that only decodes costs: the floor the worker is compared with."""

    records_per_s: float
    cpu_us_per_record: float

    def __str__(self) -> str:
        return f"{self.records_per_s:,.0f} records/s, {self.cpu_us_per_record:.1f} µs CPU a record"


async def raw_rate(settings: Settings, topics: list[str], total: int) -> Floor:
    """A consumer that only decodes each value: the floor of any Kafka client.

    CPU time beside wall time: on a shared machine the CPU a record costs is what is
    compared, the wall time depends on who else runs.
    """
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=settings.bootstrap_servers,
        group_id=f"bench-raw-{time.monotonic_ns()}",
        **settings.broker_security.client_options(),
        auto_offset_reset="earliest",
    )
    await consumer.start()
    seen, started, cpu = 0, time.perf_counter(), time.process_time()
    try:
        while seen < total:
            for records in (await consumer.getmany(timeout_ms=500, max_records=5000)).values():
                for record in records:
                    with contextlib.suppress(orjson.JSONDecodeError):
                        orjson.loads(record.value or b"")
                seen += len(records)
    finally:
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        await consumer.stop()
    return Floor(seen / elapsed, cpu / seen * 1e6)


def faust_rate(
    settings: Settings, topics: list[str], total: int, root: Path, framework: str
) -> Floor:
    """A bare Faust agent that only decodes (`bench/faust_floor.py`): the framework's floor."""
    out, log = root / f"faust-{framework}.json", root / f"faust-{framework}.log"
    with log.open("wb") as written:
        command = [
            sys.executable, "-m", "bench.faust_floor",
            "--broker", settings.broker_url,
            "--topics", ",".join(topics),
            "--records", str(total),
            "--data-dir", str(root / f"faust-{framework}"),
            "--out", str(out),
            "--framework", framework,
            "--fetch-interval-ms", str(settings.fetch_interval_ms),
        ]  # fmt: skip
        process = subprocess.Popen(
            command,
            stdout=written,
            stderr=subprocess.STDOUT,
        )
    try:
        # Stock Faust reads some thousands of records a second: a million take minutes.
        wait_for("the bare Faust agent to read every record", out.exists, STALL_S + total / 1000)
    except AssertionError as exc:
        raise RuntimeError(f"{exc}:\n{log.read_text(errors='replace')[-4000:]}") from None
    finally:
        process.terminate()
        process.wait(30)
    timed = orjson.loads(out.read_bytes())
    return Floor(timed["records"] / timed["seconds"], timed["cpu_seconds"] / timed["records"] * 1e6)


def scrape(worker: WorkerProcess) -> list[tuple[str, str, float]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.web_port}/metrics") as page:
            text = page.read().decode()
    except OSError:
        return []
    return [(name, labels or "", float(value)) for name, labels, value in SAMPLE.findall(text)]


def events_read(worker: WorkerProcess, inputs: set[str]) -> float:
    return sum(
        value
        for name, labels, value in scrape(worker)
        if name == "cxmon_records_total" and labels.split('"')[1] in inputs
    )


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def broker_pid(broker: LocalBroker) -> int:
    assert broker.process is not None, "the bench starts its broker first"
    return broker.process.pid


def rss_bytes(worker: WorkerProcess) -> int:
    status = Path(f"/proc/{worker.process.pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    return int(match.group(1)) * 1024 if match else 0


async def broker_saving_rate(broker: LocalBroker, settings: Settings, seconds: float) -> float:
    """The broker's CPU a second when all it has to do is save what it holds.

    The local broker writes its whole state to one JSON file about once a second while
    anything changes; at the bench's sizes that, not the requests, is most of its CPU. A
    one-byte record every 50 ms keeps it saving; timed over whole saves, with the input
    held and before the worker writes anything. Times the backlog run's duration, it is what
    the broker would have spent saving then had it held no more than the input.
    """
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        **settings.broker_security.client_options(),
    )
    await producer.start()

    async def until_saved() -> None:
        before = broker.last_save()
        while broker.last_save() == before:
            await producer.send_and_wait("bench-saving-ticks", b"")
            await asyncio.sleep(0.05)

    try:
        await until_saved()
        cpu, started = cpu_seconds(broker_pid(broker)), time.perf_counter()
        while time.perf_counter() - started < seconds:
            await until_saved()
        return (cpu_seconds(broker_pid(broker)) - cpu) / (time.perf_counter() - started)
    finally:
        await producer.stop()


@dataclass
class Throughput:
    workers: int
    events_per_s: float
    seconds: float
    drained_seconds: float
    drained_events_per_s: float  # the headline: every stage through the backlog
    cpu_us_per_event: float
    broker_cpu_us_per_event: float  # the broker shares the machine's cores
    broker_seconds: float  # the wall time its CPU was measured over
    rss_bytes: list[int]
    events_by_worker: list[float]


class Stalled(RuntimeError):
    """The workers read nothing for a while, with records still to read."""


def run_backlog(
    deployment: Deployment,
    workers: list[WorkerProcess],
    data: Data,
    broker_pid: int,
    *,
    profile: Path | None = None,
    publish: bool = False,
) -> Throughput:
    """Workers reading the backlog (published now if `publish`), timed from their first
    record to their last, then until every stage has drained."""
    topics = deployment.settings().topics
    inputs = {topics.touchpoint_events, topics.survey_answers}
    profilers = (
        []
        if profile is None
        else [
            subprocess.Popen(
                [
                    str(Path(sys.executable).with_name("py-spy")),
                    "record",
                    "--nonblocking",
                    "--gil",  # only while a thread holds the interpreter: shares of CPU
                    "--format",
                    "raw",
                    "--rate",
                    "50",
                    "--pid",
                    str(worker.process.pid),
                    "--output",
                    str(profile.with_suffix(f".w{n + 1}.txt")),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for n, worker in enumerate(workers)
        ]
    )
    publisher = threading.Thread(target=deployment.publish, args=(data.records,), daemon=True)
    if publish:
        publisher.start()
    say(f"  {len(workers)} worker(s) ready; reading {data.events:,} events and answers")
    # Timed from here: the first fetch is part of the work. (From the first record counted,
    # a worker that counts a batch at a time would have its first batch for free.)
    started = time.perf_counter()
    broker_cpu = cpu_seconds(broker_pid)
    cpu = sum(cpu_seconds(worker.process.pid) for worker in workers)
    last_report = time.monotonic()
    progress = (0.0, time.monotonic())
    while True:
        done = sum(events_read(worker, inputs) for worker in workers)
        now = time.perf_counter()
        if done >= data.events:
            break
        if done > progress[0]:
            progress = (done, time.monotonic())
        elif time.monotonic() - progress[1] > STALL_S:
            read = [events_read(worker, inputs) for worker in workers]
            raise Stalled(f"nothing read for {STALL_S:.0f} s; read by each worker: {read}")
        if time.monotonic() - last_report > 5:
            last_report = time.monotonic()
            say(f"  {done:,.0f} / {data.events:,} read ({done / (now - started):,.0f}/s)")
        for worker in workers:
            if worker.process.poll() is not None:
                raise RuntimeError(f"worker exited:\n{worker.log()[-4000:]}")
        time.sleep(0.5)
    elapsed = time.perf_counter() - started
    say(f"  read in {elapsed:.1f} s ({data.events / elapsed:,.0f}/s); waiting for every stage")
    try:
        deployment.wait_drained(poll_s=0.5)
        drained = time.perf_counter() - started - 0.5
    except TimeoutError as exc:
        say(f"  not drained: {str(exc)[:300]}")
        drained = float("nan")
    cpu = sum(cpu_seconds(worker.process.pid) for worker in workers) - cpu
    broker_cpu = cpu_seconds(broker_pid) - broker_cpu
    broker_seconds = time.perf_counter() - started
    for profiler in profilers:
        profiler.send_signal(signal.SIGINT)
        profiler.wait(30)
    if profile is not None:
        for n, worker in enumerate(workers):
            with urllib.request.urlopen(f"http://127.0.0.1:{worker.web_port}/metrics") as page:
                profile.with_name(f"metrics.w{n + 1}.txt").write_bytes(page.read())
    if publish:
        publisher.join()
    return Throughput(
        len(workers),
        data.events / elapsed,
        elapsed,
        drained,
        data.events / drained,
        cpu / data.events * 1e6,
        broker_cpu / data.events * 1e6,
        broker_seconds,
        [rss_bytes(worker) for worker in workers],
        [events_read(worker, inputs) for worker in workers],
    )


@dataclass
class Latency:
    offered_per_s: float
    achieved_per_s: float
    probes: int
    alerts: int
    p50_s: float | None
    p99_s: float | None
    max_s: float | None


def live_records(data: Data) -> Iterator[tuple[str, bytes, dict[str, Any]]]:
    """The backlog's events and answers again, with new ids, as records of now; no marketing.

    Marketing is left out because it is night somewhere: every live marketing message
    would be an over-messaging alert of its own, and only the probes' alerts are timed.
    """
    for lap in itertools.count():
        for record in data.records:
            if record.role == "identity_links":
                continue
            doc = orjson.loads(record.value)
            if doc.get("category") == "marketing":
                continue
            id_field = "event_id" if record.role == "touchpoint_events" else "answer_id"
            doc[id_field] = f"{doc[id_field]}-live{lap}"
            yield record.role, record.key, doc


async def offered_load(
    deployment: Deployment, data: Data, rate: float, seconds: float, sent_at: dict[str, float]
) -> float:
    """Publish at `rate` events/s for `seconds`, with a probe customer every half second."""
    settings = deployment.settings()
    topics = deployment.topics
    names = {"touchpoint_events": topics.touchpoint_events, "survey_answers": topics.survey_answers}
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers, linger_ms=5, acks="all"
    )
    await producer.start()
    source = live_records(data)
    sent, probes = 0, 0
    started = time.monotonic()
    try:
        while (elapsed := time.monotonic() - started) < seconds:
            now_ms = int(time.time() * 1000)
            due = int(rate * elapsed) - sent
            pending = []
            for role, key, doc in itertools.islice(source, max(due, 0)):
                doc["occurred_at" if role == "touchpoint_events" else "answered_at"] = now_ms
                pending.append(await producer.send(names[role], orjson.dumps(doc), key=key))
            sent += max(due, 0)
            if elapsed >= probes * 0.5:
                customer = f"bench-probe-{probes}"
                for n, (channel, touchpoint) in enumerate(PROBE_CHANNELS):
                    event = {
                        "event_id": f"{customer}-{n}",
                        "occurred_at": now_ms,
                        "customer_id": customer,
                        "touchpoint": touchpoint,
                        "channel": channel,
                        "direction": "outbound",
                        "category": "marketing",
                        "outcome": "success",
                    }
                    pending.append(
                        await producer.send(
                            topics.touchpoint_events, orjson.dumps(event), key=customer.encode()
                        )
                    )
                sent_at[customer] = time.time()
                probes += 1
            await asyncio.gather(*pending)
            await asyncio.sleep(0.01)
    finally:
        await producer.stop()
    return sent / (time.monotonic() - started)


def run_latency(deployment: Deployment, data: Data, rate: float, seconds: float) -> Latency:
    settings = deployment.settings()
    received: dict[str, float] = {}
    sent_at: dict[str, float] = {}
    stop = threading.Event()

    async def collect() -> None:
        # Paced as the worker is, so the follower adds no more than the worker to a latency.
        async for record in follow(
            settings,
            deployment.topics.alerts,
            from_beginning=False,
            stop=stop.is_set,
            fetch_interval_s=settings.fetch_interval_ms / 1000,
        ):
            alert = orjson.loads(record.value)
            subject = str(alert.get("subject", ""))
            if subject.startswith("bench-probe-") and alert.get("status") == "firing":
                received.setdefault(subject, time.time())

    follower = threading.Thread(target=lambda: asyncio.run(collect()), daemon=True)
    follower.start()
    time.sleep(2.0)  # the follower has sought to the end before the first probe
    say(f"  offering {rate:,.0f} events/s for {seconds:.0f} s, a probe customer every 0.5 s")
    achieved = asyncio.run(offered_load(deployment, data, rate, seconds, sent_at))
    deadline = time.monotonic() + 30
    while len(received) < len(sent_at) and time.monotonic() < deadline:
        time.sleep(0.2)
    stop.set()
    follower.join(5)
    latencies = sorted(received[c] - sent_at[c] for c in received if c in sent_at)

    def quantile(q: float) -> float | None:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else None

    return Latency(
        rate,
        achieved,
        len(sent_at),
        len(latencies),
        quantile(0.5),
        quantile(0.99),
        latencies[-1] if latencies else None,
    )


@dataclass
class State:
    keys: int
    bytes: int
    by_table: dict[str, dict[str, int]] = field(default_factory=dict)


def measure_state(deployment: Deployment) -> State:
    """Every table as its changelog leaves it: keys and bytes (key plus value)."""
    by_table: dict[str, dict[str, int]] = {}
    for name in TABLES:
        rows = deployment.table(name)
        by_table[name] = {
            "keys": len(rows),
            "bytes": sum(len(k) + len(v) for k, v in rows.items()),
        }
    return State(
        sum(t["keys"] for t in by_table.values()),
        sum(t["bytes"] for t in by_table.values()),
        by_table,
    )


def time_restore(deployment: Deployment, timeout_s: float) -> dict[str, float]:
    """A new worker process, timed until its in-memory tables are back from the changelogs.

    Given up after `timeout_s`: then how many changelog records were still to read.
    """
    started = time.perf_counter()
    try:
        worker = deployment.start_worker("w1", ready_timeout_s=timeout_s)
    except TimeoutError:
        log = (deployment.root / "w1.log").read_text(errors="replace")
        progress = BULK_PROGRESS.findall(log)
        left = re.findall(r"total remaining=(\d+)", log)
        if progress:
            read, total = progress[-1]
            return {"gave_up_after_s": timeout_s, "left": int(total) - int(read)}
        return {"gave_up_after_s": timeout_s, "left": int(left[-1]) if left else -1}
    ready = time.perf_counter() - started
    worker.stop()
    log = worker.log()
    bulk = BULK_RESTORED.search(log)
    bulk_s = float(bulk[2]) if bulk else 0.0
    # Faust logs its marks only when the bulk read left it something to read.
    tail_s = logged_at(log, RESTORE_MARKS[1]) - logged_at(log, RESTORE_MARKS[0])
    tail_s = 0.0 if math.isnan(tail_s) else tail_s
    return {
        "start_to_ready_s": ready,
        "bulk_records": int(bulk[1]) if bulk else 0,
        "bulk_read_s": bulk_s,
        "tail_read_s": tail_s,
        "changelog_read_s": bulk_s + tail_s,
    }


def logged_at(log: str, text: str) -> float:
    """When the worker logged `text` first, in seconds since the epoch; NaN if it did not."""
    stamp = re.search(rf"^\[(\S+ \S+),(\d+)\].*{text}", log, re.M)
    if stamp is None:
        return float("nan")
    return (
        time.mktime(time.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S")) + int(stamp.group(2)) / 1000
    )


def restore_keys(args: argparse.Namespace, broker: LocalBroker, root: Path) -> dict[str, float]:
    """A worker whose frequency table holds `args.restore_keys` customers, restarted.

    The table is written as the worker writes it (each customer's state, on the
    partition of its key) with one to three marketing messages a customer.
    """
    keys, partitions = args.restore_keys, args.partitions
    deployment = Deployment(
        broker.url, root / "bench-restore", partitions=partitions, name="bench-restore"
    )
    settings = deployment.settings()
    changelog = f"{deployment.name}-customer-frequency-changelog"
    asyncio.run(ensure_topics(settings, [TopicSpec(changelog, partitions, COMPACTED)]))

    def states() -> Iterator[Outgoing]:
        for n in range(keys):
            at = BACKLOG_START_MS + n * 61_000 % HOUR_MS
            messages = [
                Message(at + k, "sms", Category.MARKETING, n * 3 + k) for k in range(n % 3 + 1)
            ]
            state = CustomerMessages(messages, judged_to_ms=at + 3)
            yield Outgoing(changelog, f"c-{n:07d}".encode(), state.encode())

    say(f"  writing {keys:,} customers' states to {changelog}")
    asyncio.run(send_all(settings, states(), progress_every=250_000))
    restore = time_restore(deployment, args.restore_timeout)
    if "left" in restore:
        left = restore["left"]
        say(f"  gave up after {args.restore_timeout:.0f} s: {left:,} records still to read")
    return restore


@functools.cache
def catalog() -> Catalog:
    return load_catalog(CATALOG)


def apart(one: Observed, two: Observed) -> list[str]:
    """Two's tables and alert transitions against one's, one in the reference's place."""
    first, second = transitions(one.alerts), transitions(two.alerts)
    return [
        *shown(touchpoint_differences(one.touchpoints, two.touchpoints, catalog())),
        *shown(customer_differences(one.customers, two.customers, catalog())),
        *shown(break_differences(one.breaks, two.breaks)),
        *shown(gap_differences(one.stages, two.stages)),
        *shown(gap_differences({"fatigue": one.fatigue}, {"fatigue": two.fatigue})),
        *shown(
            [f"alert only one worker sent: {describe(t)}" for t in sorted(first - second, key=repr)]
        ),
        *shown(
            [
                f"alert only two workers sent: {describe(t)}"
                for t in sorted(second - first, key=repr)
            ]
        ),
    ]


def settled(deployment: Deployment, expected: ReplayResult) -> tuple[Observed, dict[str, Any]]:
    """The tables and alerts once they equal the reference's, or as they are after SETTLE_S.

    Drained is not yet settled: the last seconds of event time are judged once the idle
    inputs say again how far they got, up to 15 s after the last record (the worker's
    IDLE_REPORT_AT_LEAST_EVERY_S).
    """
    started = time.monotonic()
    while True:
        observed = Observed.of(deployment)
        found = differences(expected, observed, catalog())
        waited = time.monotonic() - started
        if not found or waited > SETTLE_S:
            return observed, {**verdict(found), "settled_after_s": waited}
        time.sleep(2)


def verdict(found: list[str]) -> dict[str, Any]:
    """A comparison as the results keep it: the differences (15 of a kind at most), the first
    five printed."""
    for line in found[:5]:
        say(f"    {line}")
    return {"same": not found, "differences": found}


def stop_workers_left() -> None:
    """Workers this run started and did not stop (a failure on the way): stopped by their id."""
    mine = str(os.getpid())
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError, IndexError):
            parent = (proc / "stat").read_text().rpartition(")")[2].split()[1]
            if parent == mine and b"streams\x00worker" in (proc / "cmdline").read_bytes():
                os.kill(int(proc.name), signal.SIGKILL)


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000, help="events and answers")
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument(
        "--rate", type=float, default=10_000, help="live load, events/s (at most 80%% sustained)"
    )
    parser.add_argument("--live-seconds", type=float, default=30.0)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument(
        "--restore-keys", type=int, default=1_000_000, help="customers in the restore test"
    )
    parser.add_argument(
        "--restore-timeout",
        type=float,
        default=90,
        help="seconds the restore test waits (its target is 30), then counts what is left",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--scale-out",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="two workers on the same backlog, their state compared",
    )
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the worker through the backlog"
    )
    parser.add_argument("--out", type=Path, default=Path(".cxmon/bench/results.json"))
    return parser.parse_args()


def measure(args: argparse.Namespace, broker: LocalBroker, root: Path) -> dict[str, Any]:
    one = Deployment(broker.url, root / "bench1", partitions=args.partitions, name="bench1")
    say(f"generating {args.events:,} events and answers of {args.customers:,} customers")
    data = backlog(args.events, args.customers, args.seed)
    say(f"publishing {len(data.records):,} records ({data.links:,} identity links)")
    topics = one.topics
    names = {
        "touchpoint_events": topics.touchpoint_events,
        "survey_answers": topics.survey_answers,
        "identity_links": topics.identity_links,
    }
    outgoing = [Outgoing(names[r.role], r.key, r.value) for r in data.records]
    asyncio.run(send_all(one.settings(), outgoing, progress_every=250_000))

    say("raw aiokafka consumer, decode only")
    raw = asyncio.run(raw_rate(one.settings(), list(names.values()), len(outgoing)))
    say(f"  {raw}")
    floors = {}
    for framework in ("stock", "worker"):
        say(f"bare Faust agent, decode only: {framework} Faust")
        floor = faust_rate(one.settings(), list(names.values()), len(outgoing), root, framework)
        say(f"  {floor}")
        floors[framework] = floor
    say("the broker alone, saving what it holds")
    saving = asyncio.run(broker_saving_rate(broker, one.settings(), SAVING_SECONDS))
    say(f"  {saving:.3f} s CPU a second")
    say("offline reference: the same records through the pure core, no Kafka")
    expected = reference(CATALOG, data.records)

    say("worker: the backlog")
    profile = args.out.with_name("profile") if args.profile else None
    workers = [one.start_worker()]
    throughput = run_backlog(one, workers, data, broker_pid(broker), profile=profile)
    say("tables after the backlog, from their changelogs")
    state = measure_state(one)
    say(f"  {state.keys:,} keys, {state.bytes:,} bytes; against the offline reference")
    after_one, same_as_reference = settled(one, expected)
    say("worker: live load and alert latency")
    # A load the worker cannot sustain times its queue, not its latency: offered at most
    # 80% of what it drained the backlog at, every stage included.
    sustained = data.events / throughput.drained_seconds
    latency = run_latency(one, data, min(args.rate, 0.8 * sustained), args.live_seconds)
    for worker in workers:
        worker.stop()
    results: dict[str, Any] = {
        "data": {
            "events": data.events,
            "identity_links": data.links,
            "active_customers": data.active_customers,
        },
        "raw": vars(raw),
        "faust_floor": {framework: vars(floor) for framework, floor in floors.items()},
        "worker": vars(throughput),
        "broker_saving": {
            "cpu_s_per_s": saving,
            "us_per_event": saving * throughput.broker_seconds / data.events * 1e6,
        },
        "project_over_raw": throughput.drained_events_per_s / raw.records_per_s,
        "project_over_raw_by_cpu": raw.cpu_us_per_record / throughput.cpu_us_per_event,
        "project_over_faust_by_cpu": (
            floors["stock"].cpu_us_per_record / throughput.cpu_us_per_event
        ),
        "same_as_reference": same_as_reference,
        "latency": vars(latency),
        "state": vars(state),
        "state_bytes_per_active_customer": state.bytes / data.active_customers,
    }
    if args.scale_out:
        results["two_workers"] = scale_out(
            args, broker, root, data, expected=expected, after_one=after_one
        )
        if "events_per_s" in results["two_workers"]:
            two = results["two_workers"]
            two["speed_up"] = two["events_per_s"] / throughput.events_per_s
            two["speed_up_drained"] = throughput.drained_seconds / two["drained_seconds"]
    if args.restore_keys:
        say(f"restore: a worker with {args.restore_keys:,} customers in its frequency table")
        results["restore"] = {
            **restore_keys(args, broker, root),
            "keys": args.restore_keys,
        }
    return results


def scale_out(
    args: argparse.Namespace,
    broker: LocalBroker,
    root: Path,
    data: Data,
    *,
    expected: ReplayResult,
    after_one: Observed,
) -> dict[str, Any]:
    """Two workers on topics of their own: they share the partitions, then the same backlog
    is published; their tables are compared with the reference's and with one worker's.

    Published once both read, so the figure is of two workers, not of a rebalance.
    """
    two = Deployment(broker.url, root / "bench2", partitions=args.partitions, name="bench2")
    say("two workers: the same backlog, published once they share the partitions")
    with ThreadPoolExecutor(2) as starting:
        workers = list(starting.map(two.start_worker, ("w1", "w2")))
    try:
        wait_for("two workers sharing the input partitions", lambda: sharing(two), 90)
        pair = run_backlog(two, workers, data, broker_pid(broker), publish=True)
        read = ", ".join(f"{n:,.0f}" for n in pair.events_by_worker)
        say(f"  events read by each worker: {read}; tables against the reference, then one's")
        after_two, same_as_reference = settled(two, expected)
    except Stalled as exc:
        say(f"  stalled: {exc}")
        return {"stalled": str(exc)}
    finally:
        for worker in workers:
            worker.stop()
    return {
        **vars(pair),
        "same_as_reference": same_as_reference,
        "same_as_one": verdict(apart(after_one, after_two)),
    }


def sharing(deployment: Deployment) -> bool:
    """Every input partition held, by two workers that each hold some."""
    members = deployment.members()
    every = 2 * deployment.partitions  # touchpoint events and survey answers
    return len(members) == 2 and all(members) and sum(map(len, members)) == every


def main() -> None:
    args = arguments()
    begun = time.perf_counter()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="cxmon-bench-"))
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "load_before": os.getloadavg(),
        },
        "parameters": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    try:
        with LocalBroker("127.0.0.1", free_port(), root / "broker").start() as broker:
            results.update(measure(args, broker, root))
    finally:
        stop_workers_left()
        shutil.rmtree(root, ignore_errors=True)  # the broker's data: a gigabyte at full size
    results["bench_seconds"] = time.perf_counter() - begun
    args.out.write_text(json.dumps(results, indent=2))
    print(table(results))
    say(f"results: {args.out} ({results['bench_seconds']:.0f} s)")


def agreed(comparison: dict[str, Any]) -> str:
    listed = comparison["differences"]
    verdict = "yes" if comparison["same"] else f"no ({len(listed)} differences listed)"
    if "settled_after_s" in comparison:
        verdict += f", read {comparison['settled_after_s']:.1f} s after drained"
    return verdict


def table(results: dict[str, Any]) -> str:
    worker, latency, saving = results["worker"], results["latency"], results["broker_saving"]
    floor, floor_here = results["faust_floor"]["stock"], results["faust_floor"]["worker"]

    def seconds(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f} s"

    rows = [
        ("events/s, one worker, every stage drained", f"{worker['drained_events_per_s']:,.0f}"),
        ("  drained after", f"{worker['drained_seconds']:.1f} s"),
        ("  read to the last record", f"{worker['events_per_s']:,.0f}/s"),
        ("  CPU a record, worker (all stages)", f"{worker['cpu_us_per_event']:.0f} µs"),
        ("  CPU a record, broker", f"{worker['broker_cpu_us_per_event']:.0f} µs"),
        (
            "    of it, saving what it holds (measured apart)",
            f"{saving['us_per_event']:.0f} µs ({saving['cpu_s_per_s']:.2f} s CPU a second)",
        ),
        ("raw aiokafka consumer, decode only", f"{results['raw']['records_per_s']:,.0f}/s"),
        ("  CPU a record, raw", f"{results['raw']['cpu_us_per_record']:.1f} µs"),
        ("bare Faust agent, decode only", f"{floor['records_per_s']:,.0f}/s"),
        ("  CPU a record, bare Faust", f"{floor['cpu_us_per_record']:.1f} µs"),
        ("  the same, Faust as the worker runs it", f"{floor_here['cpu_us_per_record']:.1f} µs"),
        ("project / raw, by drained rate", f"{results['project_over_raw']:.3f}"),
        ("project / raw, by CPU a record", f"{results['project_over_raw_by_cpu']:.3f}"),
        ("project / bare Faust, by CPU a record", f"{results['project_over_faust_by_cpu']:.3f}"),
        ("  tables and alerts as the offline reference", agreed(results["same_as_reference"])),
        (
            f"alert latency p50 at {latency['achieved_per_s']:,.0f}/s offered",
            seconds(latency["p50_s"]),
        ),
        ("alert latency p99", seconds(latency["p99_s"])),
        ("  probes alerted", f"{latency['alerts']} / {latency['probes']}"),
        ("worker RSS", f"{worker['rss_bytes'][0] / 2**20:,.0f} MiB"),
        (
            "state bytes per active customer",
            f"{results['state_bytes_per_active_customer']:,.0f} B "
            f"({results['data']['active_customers']:,} customers)",
        ),
    ]
    if "restore" in results:
        restore = results["restore"]
        title = f"restore of {restore['keys']:,} keys: changelogs read in"
        if "gave_up_after_s" in restore:
            left = f"> {restore['gave_up_after_s']:.0f} s ({restore['left']:,} records left)"
            rows.append((title, left))
        else:
            rows.append((title, seconds(restore["changelog_read_s"])))
            rows.append(("  new process start to ready", seconds(restore["start_to_ready_s"])))
    pair = results.get("two_workers", {})
    if "stalled" in pair:
        rows.append(("events/s, two workers together", f"stalled: {pair['stalled']}"))
    elif pair:
        split = " + ".join(f"{n:,.0f}" for n in pair["events_by_worker"])
        rows += [
            ("events/s, two workers together", f"{pair['events_per_s']:,.0f}"),
            (
                "  over one worker, read / drained",
                f"{pair['speed_up']:.2f}x / {pair['speed_up_drained']:.2f}x",
            ),
            ("  events read by each", split),
            (
                "  CPU a record, workers / broker",
                f"{pair['cpu_us_per_event']:.0f} / {pair['broker_cpu_us_per_event']:.0f} µs",
            ),
            ("  tables and alerts as the offline reference", agreed(pair["same_as_reference"])),
            ("  tables and alerts as one worker's", agreed(pair["same_as_one"])),
        ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


if __name__ == "__main__":
    main()
