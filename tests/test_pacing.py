"""The worker's transport: a fetch that comes back early waits out the interval, a slow one
does not; and Faust's partition health check looks only at what the transport still does."""

from __future__ import annotations

import asyncio
import logging
import time
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from agents.topology import build_app
from agents.transport import PacedConsumer, PacedTransport
from streams.kafka.pacing import pace_fetches
from streams.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.mark.parametrize(
    ("fetch_takes_s", "waits"),
    [(0.002, [pytest.approx(0.008)]), (0.010, []), (0.5, [])],
)
async def test_a_fetch_waits_out_the_rest_of_the_interval(
    monkeypatch: pytest.MonkeyPatch, fetch_takes_s: float, waits: list[float]
) -> None:
    clock = Clock()
    # The module's own clock and sleep only: the event loop keeps the real ones.
    monkeypatch.setattr("streams.kafka.pacing.time", SimpleNamespace(monotonic=clock.monotonic))
    fake_asyncio = SimpleNamespace(sleep=clock.sleep, CancelledError=asyncio.CancelledError)
    monkeypatch.setattr("streams.kafka.pacing.asyncio", fake_asyncio)
    calls: list[tuple[Any, ...]] = []

    async def fetch(assignment: Any, node_id: int, request: Any) -> bool:
        calls.append((assignment, node_id, request))
        clock.now += fetch_takes_s
        return True

    consumer = SimpleNamespace(_fetcher=SimpleNamespace(_proc_fetch_request=fetch))
    pace_fetches(consumer, 0.010)
    assert await consumer._fetcher._proc_fetch_request("a", 1, "r") is True
    assert calls == [("a", 1, "r")], "the fetch itself is unchanged"
    assert clock.slept == waits


def test_the_worker_paces_as_configured_and_zero_turns_it_off(tmp_path: Any) -> None:
    env = {"CXMON_DATA_DIR": str(tmp_path)}
    paced = build_app(Settings.from_env(env)).transport
    assert isinstance(paced, PacedTransport)
    assert paced.fetch_interval_s == pytest.approx(0.010)
    off = build_app(Settings.from_env({**env, "CXMON_FETCH_INTERVAL_MS": "0"})).transport
    assert isinstance(off, PacedTransport)
    assert off.fetch_interval_s == 0


def test_standby_copies_are_off_unless_asked_for(tmp_path: Any) -> None:
    env = {"CXMON_DATA_DIR": str(tmp_path)}
    assert build_app(Settings.from_env(env)).conf.table_standby_replicas == 0
    asked = build_app(Settings.from_env({**env, "CXMON_STANDBY_REPLICAS": "1"}))
    assert asked.conf.table_standby_replicas == 1


async def test_a_wait_cancelled_when_the_consumer_closes_ends_quietly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def fetch(assignment: Any, node_id: int, request: Any) -> bool:
        return True

    consumer = SimpleNamespace(_fetcher=SimpleNamespace(_proc_fetch_request=fetch))
    pace_fetches(consumer, 60.0)
    waiting = asyncio.ensure_future(consumer._fetcher._proc_fetch_request("a", 1, "r"))
    await asyncio.sleep(0.01)
    waiting.cancel()
    # aiokafka's fetcher cancels its fetches on close and awaits them: no error may surface.
    assert await waiting is True


class ChangelogAfterRecovery:
    """aiokafka's view of a changelog partition once recovered: written to, read no further."""

    active = True

    def __init__(self) -> None:
        self.value = SimpleNamespace(timestamp=time.time() * 1000, highwater=5_000, position=1_200)

    def state_value(self, tp: Any) -> Any:
        return self.value


async def test_a_changelog_no_stream_reads_after_recovery_is_no_error(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    app = build_app(Settings.from_env({"CXMON_DATA_DIR": str(tmp_path)}))
    consumer = app.consumer
    assert isinstance(consumer, PacedConsumer)
    changelog = TP("cx-monitor-tallies-changelog", 3)
    assignment = ChangelogAfterRecovery()
    consumer._thread._consumer = SimpleNamespace(
        assignment=lambda: {changelog},
        _fetcher=SimpleNamespace(
            _subscriptions=SimpleNamespace(subscription=SimpleNamespace(assignment=assignment))
        ),
    )
    # Faust acks a table's changelog, the case its stream check looks at.
    monkeypatch.setattr(app.topics, "acks_enabled_for", lambda topic: True)
    # Long past Faust's five minutes, as in a worker that has run for an hour.
    consumer._thread.time_started = time.monotonic() - 3_600
    with caplog.at_level(logging.WARNING):
        await consumer.verify_all_partitions_active()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
