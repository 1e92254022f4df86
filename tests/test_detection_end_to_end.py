"""Guarded key moments and silent touchpoints, live on the real local broker."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from models.decode import encode_alert
from streams.commands.simulate import SimulatedRecord, SimulationConfig, generate
from tests.harness import Deployment, reference

pytestmark = pytest.mark.broker

START_MS = 1_795_305_600_000
HOUR_MS = 3_600_000
SILENT = "delivery.tracking"

# Every guard of issue 4 on one worker: a relative standard against a baseline window with
# a confidence interval, hysteresis and both holds; a CUSUM for slow drifts; and a
# touchpoint that goes quiet.
GUARDED_CATALOG = """\
scores: {window: 1h, step: 5m, grace: 1m}
touchpoints:
  checkout.payment: {stage: purchase}
  delivery.tracking: {stage: use}
key_moments:
  - touchpoint: checkout.payment
    metric: nps
    drop: 15
    baseline: 1h
    recover_at: 5
    confidence: 0.95
    for: 10m
    keep_firing_for: 10m
    window: 30m
    step: 5m
    min_samples: 30
    severity: critical
  - touchpoint: checkout.payment
    metric: failure_rate
    above: 0.12
    detector: cusum
    window: 30m
    step: 5m
    min_samples: 50
  - touchpoint: delivery.tracking
    metric: csat
    below: 2
    window: 30m
    step: 5m
    min_samples: 5
    no_data_after: 30m
messaging: {window: 24h, max_messages: 5, max_per_channel: 3, categories: [marketing]}
"""


def journeys_with_a_quiet_hour() -> list[SimulatedRecord]:
    """Four hours; checkout breaks in the third and recovers; delivery is silent in the second."""
    config = SimulationConfig(
        start_ms=START_MS,
        duration_ms=4 * HOUR_MS,
        # A third of the default: the thinnest verdict (NPS) still has 71 answers behind it.
        journeys_per_hour=2_000,
        degrade_touchpoint="checkout.payment",
        degrade_from_ms=START_MS + 2 * HOUR_MS,
        degrade_until_ms=START_MS + 3 * HOUR_MS,
    )
    quiet = range(START_MS + HOUR_MS, START_MS + 2 * HOUR_MS)
    return [
        record
        for record in generate(config)
        if not (
            record.occurred_at_ms in quiet
            and orjson.loads(record.value).get("touchpoint") == SILENT
        )
    ]


def test_guarded_and_silent_key_moments_match_the_reference(
    deployment: Deployment, tmp_path: Path
) -> None:
    catalog = tmp_path / "guarded.yaml"
    catalog.write_text(GUARDED_CATALOG)
    deployment.catalog = catalog
    records = journeys_with_a_quiet_hour()
    expected = [orjson.loads(encode_alert(a)) for a in reference(catalog, records).alerts]
    # The scenario must exercise each guard once: fire and resolve, nothing more.
    seen = sorted((a["kind"], a.get("metric"), a["status"]) for a in expected)
    assert seen == [
        ("key_moment_degraded", "failure_rate", "firing"),
        ("key_moment_degraded", "failure_rate", "resolved"),
        ("key_moment_degraded", "nps", "firing"),
        ("key_moment_degraded", "nps", "resolved"),
        ("no_data", "csat", "firing"),
        ("no_data", "csat", "resolved"),
    ]

    deployment.start_worker()
    assert deployment.publish(records) == len(records)
    received = deployment.alerts_equal_to(expected)

    by_key = {(a["kind"], a.get("metric"), a["status"]): a for a in received}
    nps = by_key[("key_moment_degraded", "nps", "firing")]
    # The figures behind a guarded verdict: the whole interval below the line under the baseline.
    assert nps["high"] < nps["threshold"] < nps["baseline"]
    assert nps["low"] <= nps["observed"] <= nps["high"]
    assert nps["baseline"] - nps["threshold"] == pytest.approx(15)
    assert nps["samples"] >= 30
    assert nps["window"] == "30m"
    assert nps["baseline_window"] == "1h"
    drift = by_key[("key_moment_degraded", "failure_rate", "firing")]
    assert drift["detector"] == "cusum"
    assert drift["statistic"] >= drift["limit"]
    silent = by_key[("no_data", "csat", "firing")]
    assert silent["subject"] == SILENT
    assert silent["observed"] >= silent["threshold"] == 30 * 60_000
