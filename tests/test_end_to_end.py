"""The monitor end to end on the real local broker: a replay of hours of journeys, in seconds."""

from __future__ import annotations

from collections import Counter

import orjson
import pytest

from models.decode import encode_alert, parse_timestamp_ms
from streams.commands.simulate import SimulationConfig, generate
from streams.replay import ReplayResult
from tests.harness import Deployment, Observed, gap_differences, reference

pytestmark = pytest.mark.broker

START_MS = 1_795_305_600_000  # 2026-11-22T00:00:00+08:00... a fixed past day, so runs agree
HOUR_MS = 3_600_000
# A third of the simulator's default: every verdict below still rests on enough samples,
# and a test waits on behaviour, not on how fast a worker drains (that is the bench's).
JOURNEYS_PER_HOUR = 2_000


def test_replay_of_three_hours_matches_the_offline_reference(deployment: Deployment) -> None:
    config = SimulationConfig(
        start_ms=START_MS,
        journeys_per_hour=JOURNEYS_PER_HOUR,
        duration_ms=3 * HOUR_MS,
        degrade_touchpoint="checkout.payment",
        degrade_from_ms=START_MS + 3 * HOUR_MS // 2,
        over_messaged_customers=3,
        duplicate_ratio=0.02,
        invalid_ratio=0.005,
    )
    records = list(generate(config))
    expected = reference(deployment.catalog, records)
    expected_alerts = [orjson.loads(encode_alert(a)) for a in expected.alerts]
    invalid = sum(len(reasons) for reasons in expected.rejected.values())
    kinds = {a["kind"] for a in expected_alerts}
    assert kinds == {"key_moment_degraded", "over_messaged"}, "the scenario must produce both kinds"
    assert invalid > 0
    assert expected.duplicates > 0

    deployment.start_worker()
    assert deployment.publish(records) == len(records)
    received = deployment.alerts_equal_to(expected_alerts)
    for alert in received:
        parse_timestamp_ms(alert["starts_at"], "starts_at")
        assert alert["summary"]

    dead = deployment.read(
        deployment.topics.dead_letters, until=lambda seen: len(seen) >= invalid, timeout_s=60
    )
    assert len(dead) == invalid
    reasons = sorted(dict(headers)["cxmon-reason"].decode() for _, _, headers in dead)
    assert reasons == sorted(r.value for rs in expected.rejected.values() for r in rs)


def test_restart_recovers_tables_and_still_matches_the_reference(deployment: Deployment) -> None:
    """Half the journeys, a clean stop, a new worker, the other half: as if never stopped."""
    config = SimulationConfig(
        start_ms=START_MS,
        journeys_per_hour=JOURNEYS_PER_HOUR,
        duration_ms=2 * HOUR_MS,
        degrade_touchpoint="checkout.payment",
        degrade_from_ms=START_MS + HOUR_MS,
        over_messaged_customers=2,
        duplicate_ratio=0.02,
    )
    records = list(generate(config))
    expected = [
        orjson.loads(encode_alert(a)) for a in reference(deployment.catalog, records).alerts
    ]
    half = len(records) // 2
    # The cut falls inside the degraded hour's first window, so state must carry over.
    assert records[half].occurred_at_ms > START_MS + HOUR_MS - 10 * 60_000

    first = deployment.start_worker()
    deployment.publish(records[:half])
    topics = deployment.topics
    deployment.wait_drained()
    deployment.read(topics.alerts, until=lambda seen: len(seen) >= 1, timeout_s=60)
    assert first.stop() == 0, first.log()[-3000:]
    committed = deployment.committed_offsets()
    published = Counter(record.role for record in records[:half])
    assert committed[topics.touchpoint_events] == published["touchpoint_events"]
    assert committed[topics.survey_answers] == published["survey_answers"]

    second = deployment.start_worker()
    assert "Restore complete" in second.log()
    deployment.publish(records[half:])
    deployment.alerts_equal_to(expected)


def fires_and_resolves_live(
    deployment: Deployment,
    config: SimulationConfig,
    kind: str,
    subject: str,
    *,
    max_gap: float,
    recover_at: float,
    samples: tuple[str, str],
) -> tuple[ReplayResult, Observed]:
    """A gap rule on a live worker: the reference fires one incident with its whole interval
    past `max_gap` and resolves it at or under `recover_at`; the worker sends every alert
    the reference does, this incident's with the same figures, and settles."""
    records = list(generate(config))
    result = reference(deployment.catalog, records)
    expected = [orjson.loads(encode_alert(a)) for a in result.alerts]
    incident = [a for a in expected if a["kind"] == kind]
    assert [(a["subject"], a["status"]) for a in incident] == [
        (subject, "firing"),
        (subject, "resolved"),
    ]
    assert incident[0]["gap_low"] > max_gap
    assert incident[1]["observed"] <= recover_at

    deployment.start_worker()
    assert deployment.publish(records) == len(records)
    received = deployment.alerts_equal_to(expected)
    figures = ("observed", "gap_low", "gap_high", *samples)
    got = [[a[f] for f in figures] for a in received if a["kind"] == kind]
    assert got == [[a[f] for f in figures] for a in incident]
    deployment.wait_drained()
    return result, Observed.of(deployment)


def test_an_inconsistent_channel_fires_and_resolves_as_the_offline_reference_says(
    deployment: Deployment,
) -> None:
    """An hour in which checkout answers after paying in the mini program are bad, the app's
    not: the example catalog's purchase/nps consistency rule (max_gap 20 with 95%
    confidence, recover_at 15) fires once for mini_program and resolves once."""
    config = SimulationConfig(
        start_ms=START_MS,
        journeys_per_hour=3_000,
        duration_ms=3 * HOUR_MS,
        inconsistent_channel=("purchase", "mini_program"),
        degrade_from_ms=START_MS + HOUR_MS,
        degrade_until_ms=START_MS + 2 * HOUR_MS,
        duplicate_ratio=0.02,
    )
    result, observed = fires_and_resolves_live(
        deployment,
        config,
        "channel_inconsistent",
        "purchase/nps/mini_program",
        max_gap=20,
        recover_at=15,
        samples=("channel_samples", "rest_samples"),
    )
    assert gap_differences(result.stages, observed.stages) == []


def test_messaging_fatigue_fires_and_resolves_as_the_offline_reference_says(
    deployment: Deployment,
) -> None:
    """An hour in which a campaign messages half the customers 4 times and those answer a
    notch worse: the example catalog's NPS fatigue rule (max_gap 15 with 95% confidence,
    recover_at 10) fires once and resolves once, with the reference's figures, and every
    answer lands in the cohort the reference puts it in."""
    config = SimulationConfig(
        start_ms=START_MS,
        journeys_per_hour=3_000,
        duration_ms=4 * HOUR_MS,
        fatigue=True,
        degrade_from_ms=START_MS + HOUR_MS,
        degrade_until_ms=START_MS + 2 * HOUR_MS,
        duplicate_ratio=0.02,
    )
    result, observed = fires_and_resolves_live(
        deployment,
        config,
        "messaging_fatigue",
        "nps",
        max_gap=15,
        recover_at=10,
        samples=("messaged_samples", "others_samples"),
    )
    over_messaged = [a for a in result.alerts if a.kind.value == "over_messaged"]
    assert not over_messaged, "the campaign alone breaks no messaging policy"
    assert gap_differences({"fatigue": result.fatigue}, {"fatigue": observed.fatigue}) == []


def test_a_broken_journey_raises_the_alerts_of_the_offline_reference(
    deployment: Deployment,
) -> None:
    """An hour in which half the customers who fill the cart do not go on to pay."""
    config = SimulationConfig(
        start_ms=START_MS,
        journeys_per_hour=JOURNEYS_PER_HOUR,
        duration_ms=3 * HOUR_MS,
        break_from_ms=START_MS + HOUR_MS,
        break_until_ms=START_MS + 2 * HOUR_MS,
        duplicate_ratio=0.02,
    )
    records = list(generate(config))
    expected = [
        orjson.loads(encode_alert(a)) for a in reference(deployment.catalog, records).alerts
    ]
    # The example catalog's break app.cart -> checkout.payment (max_rate 0.5, recover_at
    # 0.45): normally about 35% of carts go unpaid; the break takes it past 50%.
    assert [(a["kind"], a["status"]) for a in expected] == [
        ("journey_break", "firing"),
        ("journey_break", "resolved"),
    ]
    assert expected[0]["observed"] > 0.5
    assert expected[1]["observed"] <= 0.45

    deployment.start_worker()
    assert deployment.publish(records) == len(records)
    received = deployment.alerts_equal_to(expected)
    figures = ("observed", "samples", "broken", "converted", "window_end")
    assert [[a[f] for f in figures] for a in received] == [
        [a[f] for f in figures] for a in expected
    ]
