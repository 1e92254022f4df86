"""Shared fixtures: one real local broker per test session, one isolated deployment per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.kafka.broker import LocalBroker
from tests.harness import Deployment, free_port


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
    yield deployment
    for worker in deployment.started:
        worker.stop()
