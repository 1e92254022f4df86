"""Fetch pacing: a fetch that comes back early waits out the interval; a slow one does not."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from agents.topology import build_app
from agents.transport import PacedTransport
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
