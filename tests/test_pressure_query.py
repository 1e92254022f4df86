"""The pressure endpoint's query: what it understands, and a 400 naming what it does not."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import parse_qsl

import pytest

from models.records import CHANNELS, Category
from streams.core.pressure import PressureQuestion, QueryError, read_question

NOW_MS = 1_795_312_800_000  # 2026-11-22T10:00:00+08:00
README = Path(__file__).resolve().parent.parent / "README.md"


def ask(query: str) -> PressureQuestion:
    """The question as the worker reads it: a URL's query string, + decoded as a space."""
    return read_question(parse_qsl(query, keep_blank_values=True), NOW_MS)


def refusal(query: str) -> QueryError:
    with pytest.raises(QueryError) as info:
        ask(query)
    return info.value


def test_a_full_question_and_the_defaults() -> None:
    question = ask("channel=sms&category=marketing&at=2026-11-22T10:00:00%2B08:00")
    assert question == PressureQuestion("sms", Category.MARKETING, NOW_MS)
    assert ask("") == PressureQuestion(None, None, NOW_MS)


def test_at_in_epoch_milliseconds_as_the_contract_allows_everywhere() -> None:
    assert ask(f"at={NOW_MS}").at_ms == NOW_MS
    assert ask("at=2026-11-22T02:00:00Z").at_ms == NOW_MS


@pytest.mark.parametrize("channel", ["fax", "SMS", "", "sms "])
def test_a_channel_outside_the_contract_is_refused_with_the_allowed_ones(channel: str) -> None:
    refused = refusal(f"channel={channel}")
    assert refused.parameter == "channel"
    assert refused.allowed == list(CHANNELS)
    assert refused.as_json() == {
        "error": f"channel: {channel!r} is not one of {', '.join(CHANNELS)}",
        "parameter": "channel",
        "allowed": list(CHANNELS),
    }


@pytest.mark.parametrize("query", ["chanel=sms", "channel=sms&foo=1", "customer=c-1"])
def test_an_unknown_parameter_is_refused_by_name(query: str) -> None:
    refused = refusal(query)
    assert str(refused) == f"{refused.parameter}: unknown parameter"
    assert refused.parameter in query
    assert refused.allowed == ["channel", "category", "at"]


def test_a_parameter_given_twice_is_refused() -> None:
    assert str(refusal("channel=sms&channel=email")) == "channel: given twice"


def test_a_bad_category_names_the_categories() -> None:
    refused = refusal("category=spam")
    assert str(refused) == "category: 'spam' is not one of marketing, transactional, service"
    assert refused.allowed == ["marketing", "transactional", "service"]


def test_an_offset_whose_plus_was_not_encoded_is_refused_with_the_fix() -> None:
    refused = refusal("at=2026-11-22T10:00:00+08:00")
    assert refused.parameter == "at"
    assert "'2026-11-22T10:00:00 08:00' is not an RFC 3339 timestamp" in str(refused)
    assert str(refused).endswith("a + in a URL must be written %2B")


@pytest.mark.parametrize("at", ["yesterday", "2026-11-22T10:00:00", "99999999999999"])
def test_a_bad_time_is_refused_with_the_forms_it_may_take(at: str) -> None:
    refused = refusal(f"at={at}")
    assert refused.parameter == "at"
    assert "%2B" not in str(refused)
    assert any("epoch milliseconds" in form for form in refused.allowed)


def test_the_readme_example_asks_what_it_says() -> None:
    (example,) = re.findall(r"`/customers/[^/`]+/pressure\?([^`]+)`", README.read_text())
    at_ms = 1_795_354_200_000  # 2026-11-22T21:30:00+08:00
    assert ask(example) == PressureQuestion("sms", None, at_ms)
    assert f"`at={at_ms}`" in README.read_text()
