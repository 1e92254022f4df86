"""Messaging fatigue: heavily messaged customers' answers against the others', by hand."""

from __future__ import annotations

import pytest

from models.records import Severity
from streams.catalog import (
    CatalogError,
    MessagingFatigue,
    ScoreMetric,
    describe_catalog,
    parse_catalog,
)

MINUTE = 60_000
HOUR = 60 * MINUTE


def test_a_fatigue_rule_is_read_with_its_defaults() -> None:
    catalog = parse_catalog(
        "fatigue:\n"
        "  - metric: nps\n"
        "    messages: 4\n"
        "    max_gap: 15\n"
        "    window: 24h\n"
        "    step: 1h\n"
        "    confidence: 0.95\n"
        "    severity: critical\n"
        "  - {metric: ces, messages: 2, max_gap: 0.5, recover_at: 0.25}\n",
        "ops/catalog.yaml",
    )
    first, second = catalog.fatigue
    assert first == MessagingFatigue(
        metric=ScoreMetric.NPS,
        messages=4,
        max_gap=15,
        window_ms=24 * HOUR,
        step_ms=HOUR,
        min_samples=30,
        severity=Severity.CRITICAL,
        confidence=0.95,
    )
    assert (first.id, first.recover_gap, first.worse_when_higher) == ("nps", 15, False)
    # CES: a higher score is more effort, so worse.
    assert (second.window_ms, second.step_ms, second.recover_gap) == (HOUR, 5 * MINUTE, 0.25)
    assert second.worse_when_higher
    lines = describe_catalog(catalog, "ops/catalog.yaml")
    assert lines[0].endswith(", 2 fatigue rules")
    assert "messaging fatigue:" in lines
    assert (
        "  nps: fatigued when the nps of customers who had at least 4 counted messages in the "
        "24h before answering is worse than the others' by more than 15, with 0.95 confidence, "
        "24h windows every 1h, min 30 samples in each cohort; severity critical"
    ) in lines


@pytest.mark.parametrize(
    ("rules", "line", "words"),
    [
        ("fatigue:\n  - {metric: nps, max_gap: 5}\n", 2, ["needs 'messages'"]),
        ("fatigue:\n  - {metric: nps, messages: 3}\n", 2, ["needs 'max_gap'"]),
        (
            "fatigue:\n  - {metric: failure_rate, messages: 3, max_gap: 5}\n",
            2,
            ["survey answers", "nps, csat, ces, sentiment"],
        ),
        ("fatigue:\n  - {metric: nps, messages: 0, max_gap: 5}\n", 2, ["at least 1"]),
        ("fatigue:\n  - {metric: nps, messages: 3, max_gap: -2}\n", 2, ["not be negative"]),
        (
            "fatigue:\n  - {metric: nps, messages: 3, max_gap: 5, recover_at: 9}\n",
            2,
            ["recover_at must be between 0 and 5"],
        ),
        ("fatigue:\n  - {metric: nps, messages: 3, max_gap: 5, stage: purchase}\n", 2, ["'stage'"]),
        (
            "fatigue:\n  - {metric: nps, messages: 3, max_gap: 5}\n"
            "  - {metric: nps, messages: 6, max_gap: 9}\n",
            3,
            ["fatigue nps is declared twice"],
        ),
    ],
)
def test_bad_fatigue_rules_are_refused_on_their_line(
    rules: str, line: int, words: list[str]
) -> None:
    with pytest.raises(CatalogError) as info:
        parse_catalog(rules, "ops/catalog.yaml")
    assert info.value.line == line, info.value
    for word in words:
        assert word in info.value.reason, info.value.reason
