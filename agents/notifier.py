"""Pushes `cx.alerts` to Alertmanager's v2 API and re-sends firing alerts until they resolve."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import faust
import orjson

from agents import metrics
from agents.streaming import Batches, PartitionedState, every_record
from agents.topology import Topology
from models.decode import InvalidRecord, parse_json_object
from models.records import AlertStatus
from streams.core.notify import NotifyLinks, backoff_delays, to_alertmanager
from streams.settings import Settings

log = logging.getLogger(__name__)

PUSH_TIMEOUT_S = 10.0


class Alertmanager:
    """The Alertmanager instances of one cluster; a push lands once any of them takes it."""

    def __init__(
        self, urls: tuple[str, ...], delays: Callable[[], Iterator[float]] = backoff_delays
    ) -> None:
        self.urls = urls
        self.delays = delays

    async def push(self, alerts: list[dict[str, Any]]) -> None:
        """Retries with backoff until one instance accepts: an alert is never dropped."""
        body = orjson.dumps(alerts)
        for attempt, delay in enumerate(self.delays(), start=1):
            errors = await self._post_to_all(body)
            if len(errors) < len(self.urls):
                metrics.ALERTMANAGER_PUSHES.labels("sent").inc()
                # Peers share notification state, not alerts: a lagging peer still deserves
                # the push, but must not hold the others back.
                for error in errors:
                    log.warning("alertmanager push partly failed: %s", error)
                return
            metrics.ALERTMANAGER_PUSHES.labels("failed").inc()
            log.warning(
                "alertmanager push of %d alerts failed (attempt %d, retry in %.1fs): %s",
                len(alerts), attempt, delay, "; ".join(errors),
            )  # fmt: skip
            await asyncio.sleep(delay)

    async def _post_to_all(self, body: bytes) -> list[str]:
        # A session per push: pushes are rare (a batch of transitions, a resend a minute),
        # and nothing outlives the agent to be closed when the worker stops.
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=PUSH_TIMEOUT_S),
            headers={"Content-Type": "application/json"},
        ) as session:
            results = await asyncio.gather(*(self._post(session, url, body) for url in self.urls))
        return [error for error in results if error is not None]

    async def _post(self, session: aiohttp.ClientSession, url: str, body: bytes) -> str | None:
        try:
            async with session.post(f"{url}/api/v2/alerts", data=body) as response:
                if response.status == 200:
                    return None
                text = await response.text()
                return f"{url}: HTTP {response.status} {text[:200]}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"{url}: {exc.__class__.__name__} {exc}"


class Notifier:
    """The agent that turns `cx.alerts` into notifications, and the table of alerts firing."""

    def __init__(
        self, app: faust.App, topology: Topology, settings: Settings, batches: Batches
    ) -> None:
        self.app = app
        self.topology = topology
        self.settings = settings
        self.batches = batches
        self.firing = PartitionedState(topology.firing_alerts)
        self.alertmanager = Alertmanager(settings.alertmanager_urls)
        self.links = NotifyLinks(settings.runbook_url, settings.grafana_url)

    def attach(self) -> None:
        if not self.settings.alertmanager_urls:
            return
        if not self.settings.pseudonym_key and not self.settings.pseudonymise_ids:
            log.warning(
                "CXMON_PSEUDONYM_KEY is not set: customer pseudonyms in notifications are "
                "unkeyed hashes, which anyone can match against guessed customer ids"
            )
        self.batches.bind(self.topology.alerts, "notify_alertmanager", self.notify_alertmanager)
        resend_s = self.settings.alertmanager_resend_ms / 1000
        self.app.timer(resend_s, name="resend_firing_alerts")(self.resend_firing_alerts)

    async def notify_alertmanager(self) -> None:
        async for batch in self.batches.fetched(self.topology.alerts.get_topic_name()):
            alerts = []
            for record in every_record(batch):
                value = record.value or b""
                try:
                    alert = parse_json_object(value)
                except InvalidRecord as exc:
                    log.error("skipping an alert that is not JSON: %s", exc.detail)
                    continue
                key, partition = str(alert["fingerprint"]).encode(), record.partition
                if alert["status"] == AlertStatus.FIRING.value:
                    self.firing.put(partition, key, value)
                else:
                    self.firing.delete(partition, key)
                alerts.append(alert)
            if alerts:
                await self._push(alerts)

    async def resend_firing_alerts(self) -> None:
        """Alertmanager forgets an alert that is not re-sent: tell it again while it fires."""
        alerts = [orjson.loads(raw) for _, raw in self.firing.items()]
        if alerts:
            await self._push(alerts)

    async def _push(self, alerts: list[dict[str, Any]]) -> None:
        now_ms = int(time.time() * 1000)
        postable = [
            to_alertmanager(
                alert,
                now_ms=now_ms,
                resend_ms=self.settings.alertmanager_resend_ms,
                links=self.links,
                pseudonym_key=None
                if self.settings.pseudonymise_ids
                else self.settings.pseudonym_key,
            )
            for alert in alerts
        ]
        await self.alertmanager.push(postable)
        metrics.ALERTMANAGER_ACTIVE.set(len(self.firing.store))
