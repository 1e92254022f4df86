"""The whole ops path with the real parts: worker, Prometheus, Alertmanager, a webhook, dashboards.

One scenario, in two halves: checkout answers after paying in the mini program turn bad,
which degrades checkout's NPS and makes the mini program inconsistent with the stage's
other channels, then recover; three customers are flooded.
The first half is published while Alertmanager is still down, so the notifier must retry.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.commands.simulate import SimulatedRecord, SimulationConfig, generate
from streams.core.privacy import pseudonym
from streams.kafka.broker import LocalBroker
from tests.dashboards import DASHBOARDS, instantiate, panel_queries
from tests.harness import Deployment, WorkerProcess, free_port
from tests.prometheus import query, query_range, start_prometheus
from tests.services import (
    Service,
    alertmanager,
    alertmanager_config,
    get_json,
    get_text,
    notifications,
    prometheus_config,
    wait_for,
    webhook_receiver,
)

pytestmark = pytest.mark.broker

START_MS = 1_795_305_600_000
HOUR_MS = 3_600_000
DEGRADED = (START_MS + HOUR_MS, START_MS + 2 * HOUR_MS)
PSEUDONYM_KEY = "test-pseudonym-key"


# The Prometheus fallbacks the scenario's open incidents fire, each inhibited by the
# stream's own alert, and the labels that tell their subject.
FALLBACKS = {
    "CxMonitorKeyMomentDegraded": "touchpoint",
    "CxMonitorChannelInconsistent": "channel",
    "CxMonitorMessagingFatigue": "metric",
}
# Gauges of the open incidents on the worker: name -> labels.
OPEN_GAUGES = {
    "cxmon_channel_inconsistent": {"stage": "purchase", "metric": "nps",
                                   "channel": "mini_program", "severity": "warning"},
    "cxmon_channel_gap": {"stage": "purchase", "metric": "nps", "channel": "mini_program"},
    "cxmon_messaging_fatigue": {"metric": "nps", "severity": "warning"},
    "cxmon_fatigue_gap": {"metric": "nps"},
}  # fmt: skip


@dataclass(frozen=True)
class FirstHalf:
    """What the first half shows while its incidents are open."""

    inhibited: dict[str, set[str]]  # fallback alertname -> subjects Alertmanager holds back
    gauges: dict[str, float]  # OPEN_GAUGES on the worker


@dataclass
class Stack:
    deployment: Deployment
    worker: WorkerProcess
    prometheus_url: str
    alertmanager: Service
    webhook_out: Path
    later: list[SimulatedRecord]
    recovered: bool = False
    first_half: FirstHalf | None = None
    started_at: float = field(default_factory=time.time)

    def recover(self) -> None:
        """Publishes the second half, where checkout is healthy again, once: only after the
        first half has been read, whichever test (in whichever process) gets here first."""
        self.before_recovery()
        if not self.recovered:
            self.deployment.publish(self.later)
            self.recovered = True

    def before_recovery(self) -> FirstHalf:
        """The open incidents' fallbacks held back and their gauges, read once before the
        second half, with Prometheus having scraped the gap gauges (the dashboards show them)."""
        if self.first_half is None:
            assert not self.recovered
            inhibited = {
                name: {a["labels"][subject] for a in self.inhibited(name)}
                for name, subject in FALLBACKS.items()
            }
            scraped = "cxmon_channel_gap and on() cxmon_fatigue_gap"
            wait_for("the gap gauges scraped", lambda: self.query(scraped), timeout_s=60)
            gauges = {name: self.metric(name, **labels) for name, labels in OPEN_GAUGES.items()}
            self.first_half = FirstHalf(inhibited, gauges)
        return self.first_half

    def metric(self, name: str, **labels: str) -> float:
        """A sample from the worker's own /metrics page, 0 when absent."""
        text = get_text(f"http://127.0.0.1:{self.worker.web_port}/metrics")
        wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        pattern = rf"^{re.escape(name)}(?:\{{{re.escape(wanted)}\}})? (\S+)$"
        match = re.search(pattern, text, re.MULTILINE)
        return float(match.group(1)) if match else 0.0

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = query(self.prometheus_url, expr)
        assert answer["status"] == "success", (expr, answer)
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def inhibited(self, alertname: str) -> list[dict[str, Any]]:
        """Waits for Alertmanager to hold alerts of `alertname` back, and returns them."""
        result: list[dict[str, Any]] = wait_for(
            f"{alertname} inhibited in Alertmanager",
            lambda: [
                a
                for a in get_json(f"{self.alertmanager.url}/api/v2/alerts")
                if a["labels"]["alertname"] == alertname and a["status"]["inhibitedBy"]
            ],
            timeout_s=60,
        )
        return result

    def notified(self, path: str, alertname: str, status: str) -> list[dict[str, Any]]:
        return [
            n
            for n in notifications(self.webhook_out)
            if n["path"] == path
            and any(
                a["labels"]["alertname"] == alertname and a["status"] == status for a in n["alerts"]
            )
        ]


@pytest.fixture(scope="module")
def scenario() -> list[SimulatedRecord]:
    return list(
        generate(
            SimulationConfig(
                start_ms=START_MS,
                duration_ms=3 * HOUR_MS,
                customers=800,
                journeys_per_hour=1_500,
                inconsistent_channel=("purchase", "mini_program"),
                fatigue=True,
                degrade_from_ms=DEGRADED[0],
                degrade_until_ms=DEGRADED[1],
                over_messaged_customers=3,
                duplicate_ratio=0.02,
                invalid_ratio=0.005,
            )
        )
    )


@pytest.fixture(scope="module")
def stack(
    broker: LocalBroker, tmp_path_factory: pytest.TempPathFactory, scenario: list[SimulatedRecord]
) -> Iterator[Stack]:
    tmp_path = tmp_path_factory.mktemp("stack")
    deployment = Deployment(broker.url, tmp_path)
    alertmanager_port = free_port()
    deployment.extra_env |= {
        "CXMON_ALERTMANAGER_URL": f"http://127.0.0.1:{alertmanager_port}",
        "CXMON_ALERTMANAGER_RESEND": "5s",
        "CXMON_PSEUDONYM_KEY": PSEUDONYM_KEY,
        "CXMON_GRAFANA_URL": "http://grafana.test:3000",
    }
    worker = deployment.start_worker()
    try:
        yield from _around(deployment, worker, tmp_path, alertmanager_port, scenario)
    finally:
        worker.stop()


def _around(
    deployment: Deployment,
    worker: WorkerProcess,
    tmp_path: Path,
    alertmanager_port: int,
    scenario: list[SimulatedRecord],
) -> Iterator[Stack]:
    earlier = [r for r in scenario if r.occurred_at_ms < DEGRADED[1]]
    later = [r for r in scenario if r.occurred_at_ms >= DEGRADED[1]]
    with webhook_receiver(tmp_path / "webhook") as (webhook, out):
        config = prometheus_config(
            [f"127.0.0.1:{worker.web_port}"], [f"127.0.0.1:{alertmanager_port}"]
        )
        with start_prometheus(tmp_path, yaml.safe_dump(config)) as prometheus_url:
            deployment.publish(earlier)
            partial = Stack(deployment, worker, prometheus_url, webhook, out, later)
            # Alertmanager is not up yet: the notifier must fail, back off and keep the alerts.
            wait_for(
                "a failed push to the absent Alertmanager",
                lambda: partial.metric("cxmon_alertmanager_pushes_total", outcome="failed") > 0,
                timeout_s=120,
            )
            am_config = alertmanager_config(webhook.url)
            with alertmanager(
                tmp_path / "alertmanager", am_config, port=alertmanager_port
            ) as running_alertmanager:
                partial.alertmanager = running_alertmanager
                yield partial


def test_over_messaged_customers_arrive_grouped_not_one_notification_each(stack: Stack) -> None:
    def over_messaged(messages: list[tuple[bytes | None, bytes, Any]]) -> set[str]:
        alerts = [json.loads(value) for _, value, _ in messages]
        return {a["subject"] for a in alerts if a["kind"] == "over_messaged"}

    emitted = over_messaged(
        stack.deployment.read(
            stack.deployment.topics.alerts,
            until=lambda messages: len(over_messaged(messages)) >= 2,
            timeout_s=60,
        )
    )
    assert len(emitted) >= 2, "the scenario must flood several customers in its first half"
    customers = {pseudonym(c, PSEUDONYM_KEY.encode()) for c in emitted}

    def all_arrived() -> list[dict[str, Any]]:
        sent = stack.notified("/cx-ops", "OverMessaged", "firing")
        latest = {a["labels"]["customer"] for a in sent[-1]["alerts"]} if sent else set()
        return sent if latest >= customers else []

    grouped = wait_for("every over-messaged customer at cx-ops", all_arrived, timeout_s=60)
    # Members that come in after group_wait join the same group's next notification.
    assert all(n["groupLabels"] == {"alertname": "OverMessaged"} for n in grouped)
    assert max(len(n["alerts"]) for n in grouped) > 1, "one notification per customer"
    everything = stack.webhook_out.read_text()
    assert "c-flood" not in everything, "a customer id left the company in a notification"


def test_degraded_key_moment_reaches_the_webhook_through_alertmanager_and_resolves(
    stack: Stack,
) -> None:
    firing = wait_for(
        "KeyMomentDegraded firing at the on-call receiver",
        lambda: stack.notified("/on-call", "KeyMomentDegraded", "firing"),
        timeout_s=60,
    )
    alert = next(
        a
        for n in firing
        for a in n["alerts"]
        if a["labels"]["alertname"] == "KeyMomentDegraded" and a["labels"]["metric"] == "nps"
    )
    assert alert["labels"] == {
        "alertname": "KeyMomentDegraded",
        "kind": "key_moment_degraded",
        "severity": "critical",
        "source": "stream",
        "touchpoint": "checkout.payment",
        "metric": "nps",
    }
    assert alert["annotations"]["summary"].startswith("Key moment checkout.payment degraded: NPS")
    assert alert["annotations"]["runbook_url"].endswith("docs/runbook.md#keymomentdegraded")
    assert alert["annotations"]["dashboard_url"] == (
        "http://grafana.test:3000/d/cxmon-touchpoint?var-touchpoint=checkout.payment"
    )

    # Prometheus sees the same key moment on the worker's gauge; Alertmanager holds its
    # fallback alert back, because the stream alert with the richer figures inhibits it.
    first_half = stack.before_recovery()
    assert first_half.inhibited["CxMonitorKeyMomentDegraded"] == {"checkout.payment"}
    assert not stack.notified("/on-call", "CxMonitorKeyMomentDegraded", "firing")

    stack.recover()

    def resolved_metrics() -> set[str]:
        # Each (touchpoint, metric) is its own Alertmanager group: resolves come one by one.
        return {
            a["labels"]["metric"]
            for n in stack.notified("/on-call", "KeyMomentDegraded", "resolved")
            for a in n["alerts"]
            if a["labels"]["alertname"] == "KeyMomentDegraded" and a["status"] == "resolved"
        }

    wait_for(
        "the NPS key moment resolved at the on-call receiver",
        lambda: "nps" in resolved_metrics(),
        timeout_s=90,
    )
    wait_for(
        "the key moment gauge back at 0 in Prometheus",
        lambda: [
            series
            for series in stack.query(
                'cxmon_key_moment_degraded{touchpoint="checkout.payment",metric="nps"}'
            )
            if series["value"][1] == "0"
        ],
        timeout_s=30,
    )


def test_an_inconsistent_channel_reaches_cx_ops_through_alertmanager(stack: Stack) -> None:
    firing = wait_for(
        "ChannelInconsistent firing at the cx-ops receiver",
        lambda: stack.notified("/cx-ops", "ChannelInconsistent", "firing"),
        timeout_s=60,
    )
    (alert,) = [a for n in firing for a in n["alerts"] if a["status"] == "firing"][:1]
    assert alert["labels"] == {
        "alertname": "ChannelInconsistent",
        "kind": "channel_inconsistent",
        "severity": "warning",
        "source": "stream",
        "stage": "purchase",
        "metric": "nps",
        "channel": "mini_program",
    }
    annotations = alert["annotations"]
    assert annotations["summary"].startswith("Channel mini_program inconsistent in purchase: NPS")
    assert annotations["runbook_url"].endswith("docs/runbook.md#channelinconsistent")
    assert annotations["dashboard_url"] == "http://grafana.test:3000/d/cxmon-overview"
    assert "rest_samples" in annotations["description"]

    # The fallback rule on the worker's gauge fires in Prometheus and is held back. The
    # incident is open, so every window judged since it fired was past recover_at (15).
    first_half = stack.before_recovery()
    assert first_half.gauges["cxmon_channel_inconsistent"] == 1
    assert first_half.gauges["cxmon_channel_gap"] > 15
    assert first_half.inhibited["CxMonitorChannelInconsistent"] == {"mini_program"}
    assert not stack.notified("/cx-ops", "CxMonitorChannelInconsistent", "firing")


def test_messaging_fatigue_reaches_cx_ops_through_alertmanager(stack: Stack) -> None:
    firing = wait_for(
        "MessagingFatigue firing at the cx-ops receiver",
        lambda: stack.notified("/cx-ops", "MessagingFatigue", "firing"),
        timeout_s=60,
    )
    (alert,) = [a for n in firing for a in n["alerts"] if a["status"] == "firing"][:1]
    assert alert["labels"] == {
        "alertname": "MessagingFatigue",
        "kind": "messaging_fatigue",
        "severity": "warning",
        "source": "stream",
        "metric": "nps",
    }
    annotations = alert["annotations"]
    assert annotations["summary"].startswith("Messaging fatigue in NPS: NPS ")
    assert "from customers with 4 or more messages against" in annotations["summary"]
    assert annotations["runbook_url"].endswith("docs/runbook.md#messagingfatigue")
    assert annotations["dashboard_url"] == "http://grafana.test:3000/d/cxmon-overview"
    assert "others_samples" in annotations["description"]

    # The fallback rule on the worker's gauge fires in Prometheus and is held back. The
    # incident is open, so every window judged since it fired was past recover_at (10).
    first_half = stack.before_recovery()
    assert first_half.gauges["cxmon_messaging_fatigue"] == 1
    assert first_half.gauges["cxmon_fatigue_gap"] > 10
    assert first_half.inhibited["CxMonitorMessagingFatigue"] == {"nps"}
    assert not stack.notified("/cx-ops", "CxMonitorMessagingFatigue", "firing")


def test_every_dashboard_query_returns_data_from_the_scraped_worker(stack: Stack) -> None:
    stack.recover()
    # What the panels show at the end is what the worker holds once it has read everything:
    # scraped twice (1 s apart) after that.
    stack.deployment.wait_drained()
    drained_at = time.time()
    wait_for(
        "two scrapes of the drained worker",
        lambda: stack.query(f'timestamp(up{{job="cx-monitor"}}) > {drained_at + 1.5}'),
        timeout_s=30,
    )
    wait_for(
        "a resolved alert counted by Prometheus",
        lambda: stack.query('cxmon_alerts_total{status="resolved"}'),
        timeout_s=90,
    )
    wait_for(
        "a successful push counted by Prometheus",
        lambda: stack.query('cxmon_alertmanager_pushes_total{outcome="sent"}'),
        timeout_s=60,
    )
    # rate() wants two scrapes inside its window after the last change: wait for them.
    wait_for(
        "two scrapes of the settled worker",
        lambda: stack.query("rate(cxmon_records_total[1m])"),
        timeout_s=30,
    )
    variables = {
        "touchpoint": "checkout.payment",
        "__rate_interval": "1m",
        "__interval": "15s",
        "__range": "15m",
    }
    queries = [q for path in sorted(DASHBOARDS.glob("*.json")) for q in panel_queries(path)]
    assert len(queries) >= 15
    # As a panel shows them: over the run, the first half's open incidents included.
    start, end = stack.started_at, time.time()

    def has_data(expr: str) -> bool:
        answer = query_range(stack.prometheus_url, expr, start, end, 1)
        assert answer["status"] == "success", (expr, answer)
        return bool(answer["data"]["result"])

    empty = [
        f"{q.dashboard} / {q.panel} / {q.ref_id}: {q.expr}"
        for q in queries
        if not has_data(instantiate(q.expr, variables))
    ]
    assert not empty, "panels with no data:\n" + "\n".join(empty)
