"""Stream alerts as Alertmanager sees them, the push that retries, and the webhook receiver."""

from __future__ import annotations

import io
import itertools
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from agents import metrics
from agents.notifier import Alertmanager
from models.decode import format_timestamp
from streams.commands.webhook import build_receiver, notification_line
from streams.core.notify import NotifyLinks, alertname, backoff_delays, to_alertmanager
from streams.core.privacy import pseudonym
from streams.settings import Settings, SettingsError

NOW_MS = 1_795_400_000_000
MINUTE_MS = 60_000
LINKS = NotifyLinks("https://runbooks.example/cx.md", "http://grafana.example:3000/")
KEY = b"k3y"


def key_moment_alert(status: str = "firing", **fields: Any) -> dict[str, Any]:
    return {
        "alert_id": f"fp1-{NOW_MS - 30 * MINUTE_MS}-{status}",
        "fingerprint": "fp1",
        "kind": "key_moment_degraded",
        "status": status,
        "subject": "checkout.payment",
        "severity": "critical",
        "starts_at": format_timestamp(NOW_MS - 30 * MINUTE_MS),
        "ends_at": format_timestamp(NOW_MS - 5 * MINUTE_MS) if status == "resolved" else None,
        "summary": "Key moment checkout.payment degraded: NPS 7.6 over the last 30m.",
        "observed": 7.6,
        "threshold": 10.0,
        "window": "30m",
        "metric": "nps",
        "samples": 222,
        "min_samples": 30,
        **fields,
    }


def over_messaged_alert() -> dict[str, Any]:
    return {
        "alert_id": "fp2-1-firing",
        "fingerprint": "fp2",
        "kind": "over_messaged",
        "status": "firing",
        "subject": "c-flood-2",
        "severity": "warning",
        "starts_at": format_timestamp(NOW_MS - MINUTE_MS),
        "ends_at": None,
        "summary": "Customer c-flood-2 got 6 messages across 3 channels in 24h, over a limit of 5.",
        "observed": 6.0,
        "threshold": 5.0,
        "window": "24h",
        "breaches": ["max_messages"],
        "by_channel": {"sms": 3, "email": 2, "app_push": 1},
    }


def convert(alert: dict[str, Any], now_ms: int = NOW_MS) -> dict[str, Any]:
    return to_alertmanager(
        alert, now_ms=now_ms, resend_ms=MINUTE_MS, links=LINKS, pseudonym_key=KEY
    )


def test_alert_names_follow_prometheus_practice() -> None:
    assert alertname("key_moment_degraded") == "KeyMomentDegraded"
    assert alertname("over_messaged") == "OverMessaged"
    assert alertname("no_data") == "NoData"
    assert alertname("journey_break") == "JourneyBreak"


def test_firing_key_moment_has_labels_links_and_ends_four_resends_ahead() -> None:
    posted = convert(key_moment_alert())
    assert posted["labels"] == {
        "alertname": "KeyMomentDegraded",
        "kind": "key_moment_degraded",
        "severity": "critical",
        "source": "stream",
        "touchpoint": "checkout.payment",
        "metric": "nps",
    }
    annotations = posted["annotations"]
    assert annotations["runbook_url"] == "https://runbooks.example/cx.md#keymomentdegraded"
    assert annotations["dashboard_url"] == (
        "http://grafana.example:3000/d/cxmon-touchpoint?var-touchpoint=checkout.payment"
    )
    assert annotations["summary"].startswith("Key moment checkout.payment degraded")
    assert (
        "observed 7.6; threshold 10; window 30m; samples 222; min_samples 30"
        in (annotations["description"])
    )
    assert annotations["fingerprint"] == "fp1"
    assert posted["startsAt"] == format_timestamp(NOW_MS - 30 * MINUTE_MS)
    assert posted["endsAt"] == format_timestamp(NOW_MS + 4 * MINUTE_MS)


def test_a_guarded_verdict_shows_its_interval_baseline_and_detector_reading() -> None:
    guarded = key_moment_alert(
        observed=-27.31,
        threshold=21.73,
        low=-37.49,
        high=-17.13,
        confidence=0.95,
        baseline=36.73,
        baseline_window="1h",
        baseline_samples=480,
        detector="cusum",
        statistic=8.24,
        limit=5.0,
    )
    description = convert(guarded)["annotations"]["description"]
    assert description.startswith(
        "observed -27.31; threshold 21.73; window 30m; samples 222; min_samples 30; "
        "low -37.49; high -17.13; confidence 0.95; baseline 36.73; baseline_window 1h; "
        "baseline_samples 480; detector cusum; statistic 8.24; limit 5.0; "
    )


def test_journey_break_is_labelled_by_its_two_touchpoints() -> None:
    alert = key_moment_alert(
        kind="journey_break",
        subject="app.cart -> checkout.payment",
        summary="Journey app.cart -> checkout.payment broken: 3 of 4 customers (75%) ...",
        observed=0.75,
        threshold=0.5,
        metric=None,
        samples=520,
        min_samples=100,
        broken=312,
        converted=208,
        within="10m",
        **{"from": "app.cart", "to": "checkout.payment"},
    )
    posted = convert(alert)
    assert posted["labels"] == {
        "alertname": "JourneyBreak",
        "kind": "journey_break",
        "severity": "critical",
        "source": "stream",
        "from": "app.cart",
        "to": "checkout.payment",
    }
    annotations = posted["annotations"]
    assert annotations["runbook_url"] == "https://runbooks.example/cx.md#journeybreak"
    assert annotations["dashboard_url"] == (
        "http://grafana.example:3000/d/cxmon-touchpoint?var-touchpoint=app.cart"
    )
    assert annotations["description"].startswith(
        "observed 0.75; threshold 0.5; window 30m; samples 520; min_samples 100; broken 312; "
        "converted 208; within 10m"
    )


def test_an_inconsistent_channel_is_labelled_by_stage_metric_and_channel() -> None:
    alert = key_moment_alert(
        kind="channel_inconsistent",
        subject="purchase/nps/mini_program",
        summary="Channel mini_program inconsistent in purchase: NPS -40 on mini_program ...",
        observed=52.45,
        threshold=20,
        metric="nps",
        stage="purchase",
        channel="mini_program",
        channel_value=-40,
        channel_samples=120,
        rest_value=12.45,
        rest_samples=300,
    )
    posted = convert(alert)
    assert posted["labels"] == {
        "alertname": "ChannelInconsistent",
        "kind": "channel_inconsistent",
        "severity": "critical",
        "source": "stream",
        "stage": "purchase",
        "metric": "nps",
        "channel": "mini_program",
    }
    annotations = posted["annotations"]
    assert annotations["runbook_url"] == "https://runbooks.example/cx.md#channelinconsistent"
    assert annotations["dashboard_url"] == "http://grafana.example:3000/d/cxmon-overview"
    assert (
        "channel_value -40; channel_samples 120; rest_value 12.45; rest_samples 300"
        in (annotations["description"])
    )


def test_messaging_fatigue_is_labelled_by_its_metric_and_links_the_overview() -> None:
    alert = key_moment_alert(
        kind="messaging_fatigue",
        subject="nps",
        summary="Messaging fatigue in NPS: NPS -25 from customers with 4 or more messages ...",
        observed=50,
        threshold=10,
        metric="nps",
        messages=4,
        messaged_value=-25,
        messaged_samples=40,
        others_value=25,
        others_samples=40,
    )
    posted = convert(alert)
    assert posted["labels"] == {
        "alertname": "MessagingFatigue",
        "kind": "messaging_fatigue",
        "severity": "critical",
        "source": "stream",
        "metric": "nps",
    }
    annotations = posted["annotations"]
    assert annotations["runbook_url"] == "https://runbooks.example/cx.md#messagingfatigue"
    assert annotations["dashboard_url"] == "http://grafana.example:3000/d/cxmon-overview"
    assert (
        "messaged_value -25; messaged_samples 40; others_value 25; others_samples 40"
        in annotations["description"]
    )


def test_resolved_alert_ends_when_the_incident_ended() -> None:
    posted = convert(key_moment_alert("resolved"))
    assert posted["endsAt"] == format_timestamp(NOW_MS - 5 * MINUTE_MS)


def test_event_time_ahead_of_the_wall_clock_is_clamped_so_start_precedes_end() -> None:
    ahead = key_moment_alert(
        "resolved",
        starts_at=format_timestamp(NOW_MS + 10 * MINUTE_MS),
        ends_at=format_timestamp(NOW_MS + 20 * MINUTE_MS),
    )
    posted = convert(ahead)
    assert posted["startsAt"] == posted["endsAt"] == format_timestamp(NOW_MS)


def test_over_messaged_customer_is_a_pseudonym_everywhere() -> None:
    posted = convert(over_messaged_alert())
    customer = pseudonym("c-flood-2", KEY)
    assert posted["labels"]["customer"] == customer
    assert "touchpoint" not in posted["labels"]
    assert "c-flood-2" not in orjson.dumps(posted).decode()
    fingerprint = over_messaged_alert()["fingerprint"]
    assert posted["annotations"]["fingerprint"] == pseudonym(fingerprint, KEY), "keyed too"
    assert posted["annotations"]["summary"].startswith(f"Customer {customer} got 6 messages")
    assert "by_channel sms=3,email=2,app_push=1" in posted["annotations"]["description"]
    assert posted["annotations"]["dashboard_url"] == "http://grafana.example:3000/d/cxmon-overview"


def test_a_subject_pseudonymised_at_ingest_is_not_hashed_again() -> None:
    alert = over_messaged_alert()
    already = pseudonym("c-flood-2", KEY, 32)
    alert["subject"] = already
    alert["summary"] = str(alert["summary"]).replace("c-flood-2", already)
    posted = to_alertmanager(
        alert, now_ms=NOW_MS, resend_ms=MINUTE_MS, links=LINKS, pseudonym_key=None
    )
    assert posted["labels"]["customer"] == already
    assert posted["annotations"]["summary"].startswith(f"Customer {already} got 6 messages")


def test_pseudonyms_are_stable_per_key_and_differ_across_keys() -> None:
    assert pseudonym("c-1", KEY) == pseudonym("c-1", KEY)
    assert pseudonym("c-1", KEY) != pseudonym("c-2", KEY)
    assert pseudonym("c-1", KEY) != pseudonym("c-1", b"other")
    assert len(pseudonym("c-1", KEY)) == 16


def test_backoff_doubles_up_to_its_cap() -> None:
    assert list(itertools.islice(backoff_delays(0.5, 4.0), 6)) == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_alertmanager_settings_come_from_the_environment(tmp_path: Any) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("s3cret\n")
    settings = Settings.from_env(
        {
            "CXMON_ALERTMANAGER_URL": "http://am-1:9093/, http://am-2:9093",
            "CXMON_ALERTMANAGER_RESEND": "30s",
            "CXMON_PSEUDONYM_KEY_FILE": str(key_file),
        }
    )
    assert settings.alertmanager_urls == ("http://am-1:9093", "http://am-2:9093")
    assert settings.alertmanager_resend_ms == 30_000
    assert settings.pseudonym_key == b"s3cret"
    assert "s3cret" not in repr(settings)
    assert Settings.from_env({}).alertmanager_urls == ()
    with pytest.raises(SettingsError, match="not both"):
        Settings.from_env({"CXMON_PSEUDONYM_KEY": "a", "CXMON_PSEUDONYM_KEY_FILE": "b"})
    with pytest.raises(SettingsError, match="CXMON_PSEUDONYM_KEY_FILE"):
        Settings.from_env({"CXMON_PSEUDONYM_KEY_FILE": str(tmp_path / "missing")})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def serving(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def flaky_alertmanager() -> AsyncIterator[tuple[str, list[Any]]]:
    """Refuses the first two pushes, as an Alertmanager that is still starting would."""
    received: list[Any] = []
    calls = itertools.count()

    async def alerts(request: web.Request) -> web.Response:
        if next(calls) < 2:
            return web.Response(status=503, text="starting")
        received.append(orjson.loads(await request.read()))
        return web.Response(text="")

    app = web.Application()
    app.router.add_post("/api/v2/alerts", alerts)
    async for url in serving(app):
        yield url, received


def counter(outcome: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "cxmon_alertmanager_pushes_total", {"outcome": outcome}
    )
    return value or 0.0


async def test_push_retries_until_alertmanager_takes_it(
    flaky_alertmanager: tuple[str, list[Any]],
) -> None:
    url, received = flaky_alertmanager
    failed, sent = counter("failed"), counter("sent")
    alert = convert(key_moment_alert())
    await Alertmanager((url,), delays=lambda: itertools.repeat(0.01)).push([alert])
    assert received == [[alert]]
    assert (counter("failed") - failed, counter("sent") - sent) == (2, 1)


async def test_push_to_a_cluster_lands_when_one_instance_takes_it(
    flaky_alertmanager: tuple[str, list[Any]],
) -> None:
    url, received = flaky_alertmanager
    nobody = f"http://127.0.0.1:{free_port()}"
    alert = convert(over_messaged_alert())
    await Alertmanager((nobody, url), delays=lambda: itertools.repeat(0.01)).push([alert])
    assert received == [[alert]]


async def test_webhook_receiver_prints_each_notification_as_a_json_line() -> None:
    out = io.StringIO()
    lines: list[str] = []
    notification = {
        "status": "firing",
        "groupLabels": {"alertname": "OverMessaged"},
        "alerts": [{"labels": {"alertname": "OverMessaged"}}] * 3,
    }
    async for url in serving(build_receiver(out, lines.append)):
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{url}/on-call", data=orjson.dumps(notification)) as ok:
                assert ok.status == 200
            async with session.post(f"{url}/on-call", data=b"{") as bad:
                assert bad.status == 400
    assert [orjson.loads(line) for line in out.getvalue().splitlines()] == [
        {"path": "/on-call", **notification}
    ]
    assert lines == [notification_line("/on-call", notification)]
    assert lines[0] == '/on-call FIRING 3 alert(s) OverMessaged group={"alertname":"OverMessaged"}'
