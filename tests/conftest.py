"""Shared fixtures: one real local broker per test session, one isolated deployment per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.broker import LocalBroker
from tests.harness import READY, Deployment, WorkerProcess, free_port


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    root = tmp_path_factory.mktemp("broker")
    with LocalBroker(
        "127.0.0.1", free_port(), root / "data", log_path=root / "broker.log"
    ) as running:
        yield running


@pytest.fixture
def deployment(broker: LocalBroker, tmp_path: Path) -> Iterator[Deployment]:
    deployment = Deployment(broker.url, tmp_path)
    workers: list[WorkerProcess] = []
    original = deployment.start_worker

    def tracked(
        instance: str = "w1", ready_timeout_s: float = 90.0, until: str = READY
    ) -> WorkerProcess:
        worker = original(instance, ready_timeout_s, until)
        workers.append(worker)
        return worker

    deployment.start_worker = tracked  # type: ignore[method-assign]
    yield deployment
    for worker in workers:
        worker.stop()
