"""First throughput probe: events/s through one worker, beside a raw consumer on the same data."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer

from streams.broker import LocalBroker
from streams.publish import Outgoing, send_all
from streams.settings import Settings
from streams.simulate import SimulationConfig, generate

HOUR_MS = 3_600_000
RECORDS = re.compile(r'^cxmon_records_total\{topic="([^"]+)"\} ([0-9.e+]+)$', re.M)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def raw_rate(settings: Settings, topics: list[str], total: int) -> float:
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=settings.bootstrap_servers,
        group_id="bench-raw",
        **settings.broker_security.client_options(),
        auto_offset_reset="earliest",
    )
    await consumer.start()
    seen, started = 0, time.perf_counter()
    try:
        while seen < total:
            for records in (await consumer.getmany(timeout_ms=500, max_records=5000)).values():
                for record in records:
                    with contextlib.suppress(orjson.JSONDecodeError):
                        orjson.loads(record.value or b"")
                seen += len(records)
    finally:
        await consumer.stop()
    return seen / (time.perf_counter() - started)


def main() -> None:
    hours = int(sys.argv[1]) if len(sys.argv) > 1 else 12
    root = Path(tempfile.mkdtemp(prefix="cxmon-bench-"))
    port, web = free_port(), free_port()
    env = {**os.environ, "CXMON_BROKER_URL": f"kafka://127.0.0.1:{port}",
           "CXMON_DATA_DIR": str(root / "worker"), "CXMON_WEB_PORT": str(web)}  # fmt: skip
    settings = Settings.from_env(env)
    config = SimulationConfig(
        start_ms=1_795_305_600_000,
        duration_ms=hours * HOUR_MS,
        degrade_touchpoint="checkout.payment",
        over_messaged_customers=5,
    )
    topics = {"touchpoint_events": settings.topics.touchpoint_events,
              "survey_answers": settings.topics.survey_answers,
              "identity_links": settings.topics.identity_links}  # fmt: skip
    with LocalBroker("127.0.0.1", port, root / "broker").start():
        outgoing = [Outgoing(topics[r.role], r.key, r.value) for r in generate(config)]
        total = sum(1 for o in outgoing if o.topic != settings.topics.identity_links)
        asyncio.run(send_all(settings, outgoing, progress_every=0))
        print(f"pre-loaded {len(outgoing):,} records ({total:,} events and answers)")
        raw = asyncio.run(raw_rate(settings, list(topics.values()), len(outgoing)))
        log = (root / "worker.log").open("wb")
        worker = subprocess.Popen([sys.executable, "-m", "streams", "worker"], env=env,
                                  stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        try:
            started = None
            while True:
                time.sleep(0.2)
                try:
                    text = urllib.request.urlopen(f"http://127.0.0.1:{web}/metrics").read().decode()
                except OSError:
                    continue
                done = sum(
                    float(v) for t, v in RECORDS.findall(text) if t != topics["identity_links"]
                )
                if done and started is None:
                    started = time.perf_counter()
                if started is not None and done >= total:
                    break
            elapsed = time.perf_counter() - started
        finally:
            worker.terminate()
            worker.wait(30)
    rate = total / elapsed
    print(f"worker: {total:,} in {elapsed:.1f} s = {rate:,.0f} events/s per worker")
    print(
        f"raw aiokafka consumer, decode only: {raw:,.0f} records/s; project/raw = {rate / raw:.3f}"
    )


if __name__ == "__main__":
    main()
