"""Real processes for end-to-end tests: workers on the local broker, topic readers."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from streams.publish import Outgoing, follow, send_all
from streams.settings import Settings, Topics
from streams.simulate import SimulatedRecord

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Deployment:
    """One isolated monitor on a shared broker: its own app id and topic names."""

    broker_url: str
    root: Path
    partitions: int = 4
    catalog: Path = REPO / "deploy" / "catalog.example.yaml"
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
            "CXMON_INSTANCE_ID": f"{self.name}-{instance}",
            "CXMON_TOPIC_TOUCHPOINT_EVENTS": topics.touchpoint_events,
            "CXMON_TOPIC_SURVEY_ANSWERS": topics.survey_answers,
            "CXMON_TOPIC_IDENTITY_LINKS": topics.identity_links,
            "CXMON_TOPIC_ALERTS": topics.alerts,
            "CXMON_TOPIC_DEAD_LETTERS": topics.dead_letters,
            **self.extra_env,
        }

    def settings(self) -> Settings:
        return Settings.from_env(self.env("client", 0))

    def start_worker(self, instance: str = "w1") -> WorkerProcess:
        port = free_port()
        (self.root / instance).mkdir(parents=True, exist_ok=True)
        log_path = self.root / f"{instance}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "streams", "worker"],
                env=self.env(instance, port),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        worker = WorkerProcess(process, log_path, port)
        worker.wait_ready()
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
        until: Callable[[list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]], bool],
        timeout_s: float,
        settle_s: float = 3.0,
    ) -> list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]:
        """Messages of `topic` from the start, once `until` holds and the topic has gone quiet."""

        async def collect() -> list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]:
            seen: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]] = []
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


@dataclass
class WorkerProcess:
    process: subprocess.Popen[bytes]
    log_path: Path
    web_port: int

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

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
