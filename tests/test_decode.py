"""Decoding inbound JSON against the public contract, and encoding alerts.

Expected instants are worked out by hand from the calendar, not from the code under test:
2026-11-22T00:00:00Z is 20,779 days after the epoch (56 years with 14 leap days to
2026-01-01, then 325 days to 22 November), so 1,795,305,600 s; 2026-11-22T08:15:00+08:00
is 00:15 UTC of that day, 900 s later.
"""

# Real Chinese comments are punctuated with full-width marks, so the samples keep them.
# ruff: noqa: RUF001

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.decode import (
    InvalidRecord,
    Reason,
    decode_identity_link,
    decode_survey_answer,
    decode_touchpoint_event,
    encode_alert,
    parse_timestamp_ms,
)
from models.records import (
    Alert,
    AlertKind,
    AlertStatus,
    Category,
    Contact,
    Direction,
    IdentityLink,
    Outcome,
    Severity,
    Stage,
    SurveyAnswer,
    SurveyMetric,
    TouchpointEvent,
)

DAY_START_MS = 1_795_305_600_000  # 2026-11-22T00:00:00Z
INSTANT_MS = 1_795_306_500_000  # 2026-11-22T08:15:00+08:00 == 2026-11-22T00:15:00Z
YEAR_2200_MS = 7_258_118_400_000  # 2200-01-01T00:00:00Z: 84,006 days after the epoch

MIN_EVENT: dict[str, Any] = {
    "event_id": "ev-1",
    "occurred_at": "2026-11-22T08:15:00+08:00",
    "customer_id": "c-1",
    "touchpoint": "checkout.payment",
    "channel": "app",
}
FULL_EVENT: dict[str, Any] = {
    **MIN_EVENT,
    "contact": {"type": "phone", "value": "+8613800138000"},
    "direction": "outbound",
    "category": "transactional",
    "stage": "purchase",
    "outcome": "failure",
    "duration_ms": 2500,
    "attributes": {"order_id": "o-9", "amount": 129.5, "items": [1, 2]},
}
MIN_ANSWER: dict[str, Any] = {
    "answer_id": "ans-1",
    "answered_at": "2026-11-22T08:15:00+08:00",
    "customer_id": "c-1",
    "touchpoint": "checkout.payment",
    "metric": "nps",
    "score": 9,
}
FULL_ANSWER: dict[str, Any] = {
    **MIN_ANSWER,
    "contact": {"type": "wechat_openid", "value": "oAbC123"},
    "channel": "mini_program",
    "comment": "付款很顺利，但是等待时间有点长",
}
LINK: dict[str, Any] = {
    "contact": {"type": "email", "value": "li.wei@example.com"},
    "customer_id": "c-1",
    "linked_at": "2026-11-22T08:15:00+08:00",
}


def encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode("utf-8")


def without(doc: dict[str, Any], *names: str) -> dict[str, Any]:
    return {key: value for key, value in doc.items() if key not in names}


def refusal(decoder: Callable[[bytes], object], raw: bytes) -> InvalidRecord:
    with pytest.raises(InvalidRecord) as info:
        decoder(raw)
    return info.value


# --- touchpoint events -------------------------------------------------------------------


def test_event_with_required_fields_only() -> None:
    event = decode_touchpoint_event(encode(MIN_EVENT))
    assert event == TouchpointEvent(
        event_id="ev-1",
        occurred_at_ms=INSTANT_MS,
        touchpoint="checkout.payment",
        channel="app",
        direction=Direction.INBOUND,
        customer_id="c-1",
        contact=None,
        category=None,
        stage=None,
        outcome=None,
        duration_ms=None,
        attributes={},
    )


def test_event_with_every_field() -> None:
    event = decode_touchpoint_event(encode(FULL_EVENT))
    assert event == TouchpointEvent(
        event_id="ev-1",
        occurred_at_ms=INSTANT_MS,
        touchpoint="checkout.payment",
        channel="app",
        direction=Direction.OUTBOUND,
        customer_id="c-1",
        contact=Contact(type="phone", value="+8613800138000"),
        category=Category.TRANSACTIONAL,
        stage=Stage.PURCHASE,
        outcome=Outcome.FAILURE,
        duration_ms=2500.0,
        attributes={"order_id": "o-9", "amount": 129.5, "items": [1, 2]},
    )


def test_event_identified_by_contact_only() -> None:
    doc = {**without(MIN_EVENT, "customer_id"), "contact": {"type": "app_user", "value": "u-77"}}
    event = decode_touchpoint_event(encode(doc))
    assert event.customer_id is None
    assert event.contact == Contact(type="app_user", value="u-77")
    assert event.contact.key == "app_user:u-77"


def test_outbound_message_defaults_to_marketing() -> None:
    doc = {**MIN_EVENT, "direction": "outbound", "touchpoint": "marketing.sms", "channel": "sms"}
    event = decode_touchpoint_event(encode(doc))
    assert event.direction is Direction.OUTBOUND
    assert event.category is Category.MARKETING


def test_outbound_message_keeps_its_own_category() -> None:
    doc = {**MIN_EVENT, "direction": "outbound", "category": "service"}
    assert decode_touchpoint_event(encode(doc)).category is Category.SERVICE


def test_inbound_event_has_no_default_category() -> None:
    assert decode_touchpoint_event(encode(MIN_EVENT)).category is None
    explicit = decode_touchpoint_event(encode({**MIN_EVENT, "direction": "inbound"}))
    assert explicit.direction is Direction.INBOUND
    assert explicit.category is None
    with_category = decode_touchpoint_event(encode({**MIN_EVENT, "category": "service"}))
    assert with_category.category is Category.SERVICE


def test_event_ignores_unknown_fields() -> None:
    doc = {
        **MIN_EVENT,
        "schema_version": 3,
        "trace": {"span": "abc", "sampled": True},
        "tags": ["a", None, 1.5],
        "direction_hint": "sideways",
    }
    assert decode_touchpoint_event(encode(doc)) == decode_touchpoint_event(encode(MIN_EVENT))


def test_event_null_optional_fields_read_as_absent() -> None:
    doc = {
        **MIN_EVENT,
        "direction": None,
        "category": None,
        "stage": None,
        "duration_ms": None,
        "attributes": None,
    }
    assert decode_touchpoint_event(encode(doc)) == decode_touchpoint_event(encode(MIN_EVENT))


def test_event_duration_bounds() -> None:
    assert decode_touchpoint_event(encode({**MIN_EVENT, "duration_ms": 0})).duration_ms == 0.0
    one_day = decode_touchpoint_event(encode({**MIN_EVENT, "duration_ms": 86_400_000}))
    assert one_day.duration_ms == 86_400_000.0


def test_ids_up_to_256_characters_are_accepted() -> None:
    event = decode_touchpoint_event(encode({**MIN_EVENT, "event_id": "e" * 256}))
    assert event.event_id == "e" * 256


# --- survey answers ----------------------------------------------------------------------


def test_answer_with_required_fields_only() -> None:
    answer = decode_survey_answer(encode(MIN_ANSWER))
    assert answer == SurveyAnswer(
        answer_id="ans-1",
        answered_at_ms=INSTANT_MS,
        touchpoint="checkout.payment",
        metric=SurveyMetric.NPS,
        score=9.0,
        customer_id="c-1",
        contact=None,
        channel=None,
        comment=None,
    )


def test_answer_with_every_field() -> None:
    answer = decode_survey_answer(encode(FULL_ANSWER))
    assert answer == SurveyAnswer(
        answer_id="ans-1",
        answered_at_ms=INSTANT_MS,
        touchpoint="checkout.payment",
        metric=SurveyMetric.NPS,
        score=9.0,
        customer_id="c-1",
        contact=Contact(type="wechat_openid", value="oAbC123"),
        channel="mini_program",
        comment="付款很顺利，但是等待时间有点长",
    )


def test_answer_ignores_unknown_fields() -> None:
    doc = {**MIN_ANSWER, "survey_id": "s-4", "language": "zh-CN", "meta": {"a": [1]}}
    assert decode_survey_answer(encode(doc)) == decode_survey_answer(encode(MIN_ANSWER))


@pytest.mark.parametrize(
    ("metric", "score"),
    [
        ("nps", 0),
        ("nps", 10),
        ("csat", 1),
        ("csat", 5),
        ("ces", 1),
        ("ces", 7),
        ("ces", 4.5),
    ],
)
def test_scores_at_the_edges_of_each_range_are_accepted(metric: str, score: float) -> None:
    answer = decode_survey_answer(encode({**MIN_ANSWER, "metric": metric, "score": score}))
    assert answer.metric == SurveyMetric(metric)
    assert answer.score == score


def test_comment_of_exactly_10000_characters_is_accepted() -> None:
    # The limit counts characters, not UTF-8 bytes: 10,000 Chinese characters are 30,000 bytes.
    comment = "好" * 10_000
    answer = decode_survey_answer(encode({**MIN_ANSWER, "comment": comment}))
    assert answer.comment == comment


# --- identity links ----------------------------------------------------------------------


def test_identity_link() -> None:
    link = decode_identity_link(encode(LINK))
    assert link == IdentityLink(
        contact=Contact(type="email", value="li.wei@example.com"),
        customer_id="c-1",
        linked_at_ms=INSTANT_MS,
    )
    assert link.contact.key == "email:li.wei@example.com"


def test_identity_link_ignores_unknown_fields() -> None:
    doc = {**LINK, "source": "crm", "confidence": 0.93}
    assert decode_identity_link(encode(doc)) == decode_identity_link(encode(LINK))


# --- timestamps --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "2026-11-22T08:15:00+08:00",
        "2026-11-22T00:15:00Z",
        "2026-11-22T00:15:00+00:00",
        "2026-11-21T19:15:00-05:00",
        "2026-11-22T00:15:00.000Z",
        "2026-11-22t00:15:00z",  # RFC 3339 section 5.6 allows lower-case t and z
        1_795_306_500_000,
    ],
)
def test_timestamp_forms_name_the_same_instant(value: object) -> None:
    assert parse_timestamp_ms(value, "occurred_at") == INSTANT_MS


def test_timestamp_keeps_milliseconds() -> None:
    assert parse_timestamp_ms("2026-11-22T00:15:00.250Z", "t") == INSTANT_MS + 250
    assert parse_timestamp_ms("2026-11-22T08:15:00.007+08:00", "t") == INSTANT_MS + 7


def test_every_decoder_reads_every_timestamp_form_alike() -> None:
    forms: list[object] = ["2026-11-22T08:15:00+08:00", "2026-11-22T00:15:00Z", INSTANT_MS]
    for form in forms:
        assert decode_touchpoint_event(
            encode({**MIN_EVENT, "occurred_at": form})
        ).occurred_at_ms == (INSTANT_MS)
        answer = decode_survey_answer(encode({**MIN_ANSWER, "answered_at": form}))
        assert answer.answered_at_ms == INSTANT_MS
        assert decode_identity_link(encode({**LINK, "linked_at": form})).linked_at_ms == INSTANT_MS


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        ("1970-01-01T00:00:00Z", 0),
        ("1970-01-01T08:00:00+08:00", 0),
        (YEAR_2200_MS, YEAR_2200_MS),
        ("2200-01-01T00:00:00Z", YEAR_2200_MS),
        # Epoch seconds are not told apart from milliseconds: 1,795,306,500 ms is
        # 1970-01-21, inside 1970..2200, so it is a (strange but valid) instant.
        (1_795_306_500, 1_795_306_500),
    ],
)
def test_timestamps_inside_1970_to_2200_are_accepted(value: object, expected: int) -> None:
    assert parse_timestamp_ms(value, "occurred_at") == expected


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(-1, id="before-1970-ms"),
        pytest.param("1969-12-31T23:59:59Z", id="before-1970-string"),
        pytest.param(YEAR_2200_MS + 1, id="after-2200-ms"),
        pytest.param("2200-01-01T00:00:00.001Z", id="after-2200-string"),
        pytest.param(1_795_306_500_000_000, id="epoch-microseconds"),
        pytest.param("0001-01-01T00:00:00+01:00", id="year-1"),
        pytest.param("2026-11-22T08:15:00", id="no-offset"),
        pytest.param("2026-11-22", id="date-only"),
        pytest.param("yesterday", id="words"),
        pytest.param("", id="empty"),
        pytest.param("2026-13-01T00:00:00Z", id="month-13"),
        pytest.param(True, id="boolean"),
        pytest.param(1_795_306_500_000.0, id="float-ms"),
        pytest.param({"ms": INSTANT_MS}, id="object"),
        pytest.param(None, id="null"),
    ],
)
def test_bad_timestamps_are_refused(value: object) -> None:
    with pytest.raises(InvalidRecord) as info:
        parse_timestamp_ms(value, "occurred_at")
    assert info.value.reason is Reason.INVALID_TIMESTAMP
    assert "occurred_at" in info.value.detail


_OFFSETS = st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)


@given(
    moment=st.datetimes(
        min_value=datetime(1971, 1, 1),
        max_value=datetime(2199, 1, 1),
        timezones=_OFFSETS,
    ),
    millis=st.integers(min_value=0, max_value=999),
)
def test_rfc3339_strings_round_to_the_exact_millisecond(moment: datetime, millis: int) -> None:
    moment = moment.replace(microsecond=millis * 1000)
    # Integer arithmetic on timedeltas: no float rounding can hide in the expectation.
    expected = (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    assert parse_timestamp_ms(moment.isoformat(), "t") == expected


# --- refusals ----------------------------------------------------------------------------

EVENT_REFUSALS = [
    pytest.param(b'{"event_id": "ev-1", ', Reason.INVALID_JSON, None, id="truncated-json"),
    pytest.param(b"", Reason.INVALID_JSON, None, id="empty-bytes"),
    pytest.param(b"{'event_id': 'ev-1'}", Reason.INVALID_JSON, None, id="single-quotes"),
    pytest.param(
        encode(MIN_EVENT).replace(b'"ev-1"', b'"ev-\xff\xfe"'),
        Reason.INVALID_JSON,
        None,
        id="invalid-utf8",
    ),
    pytest.param(
        encode({**MIN_EVENT, "duration_ms": 1}).replace(b": 1}", b": 1e400}"),
        Reason.INVALID_JSON,  # orjson refuses a number that overflows a double
        None,
        id="duration-1e400",
    ),
    pytest.param(encode(MIN_EVENT)[:-1] + b', "x": NaN}', Reason.INVALID_JSON, None, id="nan"),
    pytest.param(b"[" + encode(MIN_EVENT) + b"]", Reason.NOT_AN_OBJECT, None, id="array"),
    pytest.param(b'"ev-1"', Reason.NOT_AN_OBJECT, None, id="string"),
    pytest.param(b"null", Reason.NOT_AN_OBJECT, None, id="null"),
    pytest.param(b"42", Reason.NOT_AN_OBJECT, None, id="number"),
    pytest.param(
        encode(without(MIN_EVENT, "event_id")), Reason.MISSING_FIELD, "event_id", id="no-event_id"
    ),
    pytest.param(
        encode({**MIN_EVENT, "event_id": None}),
        Reason.MISSING_FIELD,
        "event_id",
        id="null-event_id",
    ),
    pytest.param(
        encode(without(MIN_EVENT, "occurred_at")),
        Reason.MISSING_FIELD,
        "occurred_at",
        id="no-occurred_at",
    ),
    pytest.param(
        encode(without(MIN_EVENT, "touchpoint")),
        Reason.MISSING_FIELD,
        "touchpoint",
        id="no-touchpoint",
    ),
    pytest.param(
        encode(without(MIN_EVENT, "channel")), Reason.MISSING_FIELD, "channel", id="no-channel"
    ),
    pytest.param(
        encode(without(MIN_EVENT, "customer_id")),
        Reason.MISSING_FIELD,
        "customer_id",
        id="no-identity",
    ),
    pytest.param(
        encode({**MIN_EVENT, "event_id": 5}), Reason.INVALID_TYPE, "event_id", id="numeric-id"
    ),
    pytest.param(
        encode({**MIN_EVENT, "customer_id": 42}),
        Reason.INVALID_TYPE,
        "customer_id",
        id="numeric-customer",
    ),
    pytest.param(
        encode({**MIN_EVENT, "event_id": ""}), Reason.INVALID_VALUE, "event_id", id="empty-id"
    ),
    pytest.param(
        encode({**MIN_EVENT, "event_id": "   "}),
        Reason.INVALID_VALUE,
        "event_id",
        id="blank-id",
    ),
    pytest.param(
        encode({**MIN_EVENT, "event_id": "e" * 257}),
        Reason.OUT_OF_RANGE,
        "event_id",
        id="id-257-chars",
    ),
    pytest.param(
        encode({**MIN_EVENT, "customer_id": "c" * 257}),
        Reason.OUT_OF_RANGE,
        "customer_id",
        id="customer-257-chars",
    ),
    pytest.param(
        encode({**MIN_EVENT, "touchpoint": "checkout payment"}),
        Reason.INVALID_VALUE,
        "touchpoint",
        id="touchpoint-with-space",
    ),
    pytest.param(
        encode({**MIN_EVENT, "channel": "app push"}),
        Reason.INVALID_VALUE,
        "channel",
        id="channel-with-space",
    ),
    pytest.param(
        encode({**MIN_EVENT, "occurred_at": "2026-11-22T08:15:00"}),
        Reason.INVALID_TIMESTAMP,
        "occurred_at",
        id="timestamp-without-offset",
    ),
    pytest.param(
        encode({**MIN_EVENT, "occurred_at": "yesterday"}),
        Reason.INVALID_TIMESTAMP,
        "occurred_at",
        id="timestamp-yesterday",
    ),
    pytest.param(
        encode({**MIN_EVENT, "occurred_at": -5}),
        Reason.INVALID_TIMESTAMP,
        "occurred_at",
        id="timestamp-before-1970",
    ),
    pytest.param(
        encode({**MIN_EVENT, "direction": "sideways"}),
        Reason.INVALID_VALUE,
        "direction",
        id="unknown-direction",
    ),
    pytest.param(
        encode({**MIN_EVENT, "direction": 1}),
        Reason.INVALID_TYPE,
        "direction",
        id="numeric-direction",
    ),
    pytest.param(
        encode({**MIN_EVENT, "category": "promotion"}),
        Reason.INVALID_VALUE,
        "category",
        id="unknown-category",
    ),
    pytest.param(
        encode({**MIN_EVENT, "outcome": "timeout"}),
        Reason.INVALID_VALUE,
        "outcome",
        id="unknown-outcome",
    ),
    pytest.param(
        encode({**MIN_EVENT, "stage": "checkout"}),
        Reason.INVALID_VALUE,
        "stage",
        id="unknown-stage",
    ),
    pytest.param(
        encode({**MIN_EVENT, "duration_ms": -1}),
        Reason.OUT_OF_RANGE,
        "duration_ms",
        id="negative-duration",
    ),
    pytest.param(
        encode({**MIN_EVENT, "duration_ms": "250"}),
        Reason.INVALID_TYPE,
        "duration_ms",
        id="string-duration",
    ),
    pytest.param(
        encode({**MIN_EVENT, "duration_ms": True}),
        Reason.INVALID_TYPE,
        "duration_ms",
        id="bool-duration",
    ),
    pytest.param(
        encode({**MIN_EVENT, "attributes": ["a"]}),
        Reason.INVALID_TYPE,
        "attributes",
        id="array-attributes",
    ),
    pytest.param(
        encode({**without(MIN_EVENT, "customer_id"), "contact": "+8613800138000"}),
        Reason.INVALID_TYPE,
        "contact",
        id="contact-not-object",
    ),
    pytest.param(
        encode({**without(MIN_EVENT, "customer_id"), "contact": {"type": "phone"}}),
        Reason.MISSING_FIELD,
        "contact.value",
        id="contact-without-value",
    ),
    pytest.param(
        encode(
            {**without(MIN_EVENT, "customer_id"), "contact": {"type": "my phone", "value": "1"}}
        ),
        Reason.INVALID_VALUE,
        "contact.type",
        id="contact-type-with-space",
    ),
]


@pytest.mark.parametrize(("raw", "reason", "field"), EVENT_REFUSALS)
def test_event_refusals(raw: bytes, reason: Reason, field: str | None) -> None:
    error = refusal(decode_touchpoint_event, raw)
    assert error.reason is reason
    assert str(error) == error.detail
    if field is not None:
        assert field in error.detail


def test_missing_identity_names_both_fields() -> None:
    error = refusal(decode_touchpoint_event, encode(without(MIN_EVENT, "customer_id")))
    assert "customer_id" in error.detail
    assert "contact" in error.detail


ANSWER_REFUSALS = [
    pytest.param(b"not json", Reason.INVALID_JSON, None, id="not-json"),
    pytest.param(b"\xff\xfe{}", Reason.INVALID_JSON, None, id="invalid-utf8"),
    pytest.param(b"[]", Reason.NOT_AN_OBJECT, None, id="array"),
    pytest.param(
        encode(without(MIN_ANSWER, "answer_id")),
        Reason.MISSING_FIELD,
        "answer_id",
        id="no-answer_id",
    ),
    pytest.param(
        encode(without(MIN_ANSWER, "answered_at")),
        Reason.MISSING_FIELD,
        "answered_at",
        id="no-answered_at",
    ),
    pytest.param(
        encode(without(MIN_ANSWER, "touchpoint")),
        Reason.MISSING_FIELD,
        "touchpoint",
        id="no-touchpoint",
    ),
    pytest.param(
        encode(without(MIN_ANSWER, "metric")), Reason.MISSING_FIELD, "metric", id="no-metric"
    ),
    pytest.param(
        encode(without(MIN_ANSWER, "score")), Reason.MISSING_FIELD, "score", id="no-score"
    ),
    pytest.param(
        encode(without(MIN_ANSWER, "customer_id")),
        Reason.MISSING_FIELD,
        "customer_id",
        id="no-identity",
    ),
    pytest.param(
        encode({**MIN_ANSWER, "score": "9"}), Reason.INVALID_TYPE, "score", id="string-score"
    ),
    pytest.param(
        encode({**MIN_ANSWER, "score": True}), Reason.INVALID_TYPE, "score", id="bool-score"
    ),
    pytest.param(
        encode({**MIN_ANSWER, "score": [9]}), Reason.INVALID_TYPE, "score", id="array-score"
    ),
    pytest.param(
        encode({**MIN_ANSWER, "answer_id": 5}),
        Reason.INVALID_TYPE,
        "answer_id",
        id="numeric-answer_id",
    ),
    pytest.param(encode({**MIN_ANSWER, "score": 11}), Reason.OUT_OF_RANGE, "score", id="nps-11"),
    pytest.param(
        encode({**MIN_ANSWER, "score": -1}), Reason.OUT_OF_RANGE, "score", id="nps-minus-1"
    ),
    pytest.param(
        encode({**MIN_ANSWER, "score": 10.5}), Reason.OUT_OF_RANGE, "score", id="nps-10.5"
    ),
    pytest.param(
        encode({**MIN_ANSWER, "metric": "csat", "score": 0}),
        Reason.OUT_OF_RANGE,
        "score",
        id="csat-0",
    ),
    pytest.param(
        encode({**MIN_ANSWER, "metric": "csat", "score": 6}),
        Reason.OUT_OF_RANGE,
        "score",
        id="csat-6",
    ),
    pytest.param(
        encode({**MIN_ANSWER, "metric": "ces", "score": 8}),
        Reason.OUT_OF_RANGE,
        "score",
        id="ces-8",
    ),
    pytest.param(
        encode({**MIN_ANSWER, "metric": "ces", "score": 0}),
        Reason.OUT_OF_RANGE,
        "score",
        id="ces-0",
    ),
    pytest.param(
        encode({**MIN_ANSWER, "score": 1}).replace(b'"score": 1', b'"score": 1e400'),
        Reason.INVALID_JSON,  # orjson refuses a number that overflows a double
        None,
        id="score-1e400",
    ),
    pytest.param(
        encode({**MIN_ANSWER, "metric": "rating"}),
        Reason.INVALID_VALUE,
        "metric",
        id="unknown-metric",
    ),
    pytest.param(
        encode({**MIN_ANSWER, "metric": 1}), Reason.INVALID_TYPE, "metric", id="numeric-metric"
    ),
    pytest.param(
        encode({**MIN_ANSWER, "comment": "x" * 10_001}),
        Reason.OUT_OF_RANGE,
        "comment",
        id="comment-10001-chars",
    ),
    pytest.param(
        encode({**MIN_ANSWER, "comment": 5}), Reason.INVALID_TYPE, "comment", id="numeric-comment"
    ),
    pytest.param(
        encode({**MIN_ANSWER, "answered_at": "2026-11-22 08:15"}),
        Reason.INVALID_TIMESTAMP,
        "answered_at",
        id="timestamp-without-offset",
    ),
    pytest.param(
        encode({**MIN_ANSWER, "touchpoint": "check out"}),
        Reason.INVALID_VALUE,
        "touchpoint",
        id="touchpoint-with-space",
    ),
    pytest.param(
        encode({**MIN_ANSWER, "channel": "mini program"}),
        Reason.INVALID_VALUE,
        "channel",
        id="channel-with-space",
    ),
    pytest.param(
        encode({**MIN_ANSWER, "answer_id": "a" * 257}),
        Reason.OUT_OF_RANGE,
        "answer_id",
        id="answer_id-257-chars",
    ),
]


@pytest.mark.parametrize(("raw", "reason", "field"), ANSWER_REFUSALS)
def test_answer_refusals(raw: bytes, reason: Reason, field: str | None) -> None:
    error = refusal(decode_survey_answer, raw)
    assert error.reason is reason
    if field is not None:
        assert field in error.detail


LINK_REFUSALS = [
    pytest.param(b"{", Reason.INVALID_JSON, None, id="not-json"),
    pytest.param(b'[{"contact": {}}]', Reason.NOT_AN_OBJECT, None, id="array"),
    pytest.param(
        encode(without(LINK, "contact")), Reason.MISSING_FIELD, "contact", id="no-contact"
    ),
    pytest.param(
        encode(without(LINK, "customer_id")),
        Reason.MISSING_FIELD,
        "customer_id",
        id="no-customer_id",
    ),
    pytest.param(
        encode(without(LINK, "linked_at")), Reason.MISSING_FIELD, "linked_at", id="no-linked_at"
    ),
    pytest.param(
        encode({**LINK, "contact": ["email", "x@example.com"]}),
        Reason.INVALID_TYPE,
        "contact",
        id="contact-array",
    ),
    pytest.param(
        encode({**LINK, "contact": {"type": "email", "value": ""}}),
        Reason.INVALID_VALUE,
        "contact.value",
        id="empty-contact-value",
    ),
    pytest.param(
        encode({**LINK, "linked_at": "last week"}),
        Reason.INVALID_TIMESTAMP,
        "linked_at",
        id="bad-linked_at",
    ),
    pytest.param(
        encode({**LINK, "customer_id": 7}), Reason.INVALID_TYPE, "customer_id", id="numeric-id"
    ),
]


@pytest.mark.parametrize(("raw", "reason", "field"), LINK_REFUSALS)
def test_identity_link_refusals(raw: bytes, reason: Reason, field: str | None) -> None:
    error = refusal(decode_identity_link, raw)
    assert error.reason is reason
    if field is not None:
        assert field in error.detail


def test_invalid_record_is_a_value_error_with_reason_and_detail() -> None:
    error = refusal(decode_survey_answer, encode({**MIN_ANSWER, "score": 11}))
    assert isinstance(error, ValueError)
    assert error.reason == "out_of_range"  # the reason code is a stable metric label
    assert "11" in error.detail


# --- property: nothing but a record or InvalidRecord -------------------------------------

_FIELD_NAMES = sorted(
    {*FULL_EVENT, *FULL_ANSWER, *LINK, "occurred_at", "answered_at", "linked_at", "extra"}
)
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()  # beyond 64 bits too: json.dumps writes them, orjson reads them as floats
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)  # may hold lone surrogates: json.dumps escapes them
)
_JSON_VALUES = st.recursive(
    _SCALARS,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(["type", "value", "x"]) | st.text(max_size=4), children)
    ),
    max_leaves=8,
)
_PLAUSIBLE = st.sampled_from(
    [
        "2026-11-22T08:15:00+08:00",
        "2026-11-22T08:15:00",
        "0001-01-01T00:00:00+23:59",
        "9999-12-31T23:59:59.999999-23:59",
        INSTANT_MS,
        2**64 - 1,
        -(2**63),
        10**400,
        "nps",
        "csat",
        "ces",
        "outbound",
        "marketing",
        "checkout.payment",
        "",
        " ",
        "x" * 300,
        {"type": "phone", "value": "1"},
        {"type": 1, "value": None},
    ]
)
_OVERRIDES = st.dictionaries(st.sampled_from(_FIELD_NAMES), _JSON_VALUES | _PLAUSIBLE, max_size=4)
_DOCUMENTS = st.builds(
    lambda base, overrides, dropped: without({**base, **overrides}, *dropped),
    st.sampled_from([MIN_EVENT, FULL_EVENT, MIN_ANSWER, FULL_ANSWER, LINK]),
    _OVERRIDES,
    st.sets(st.sampled_from(_FIELD_NAMES), max_size=2),
)
_PAYLOADS = (
    st.binary(max_size=300)
    | _JSON_VALUES.map(lambda value: json.dumps(value).encode())
    | _DOCUMENTS.map(lambda doc: json.dumps(doc).encode())
)
_DECODERS: list[tuple[Callable[[bytes], object], type]] = [
    (decode_touchpoint_event, TouchpointEvent),
    (decode_survey_answer, SurveyAnswer),
    (decode_identity_link, IdentityLink),
]


@settings(max_examples=400, deadline=None)
@given(raw=_PAYLOADS)
def test_decoders_return_a_record_or_raise_invalid_record(raw: bytes) -> None:
    for decoder, record_type in _DECODERS:
        outcome: object
        try:
            outcome = decoder(raw)
        except InvalidRecord as error:
            outcome = error
        if isinstance(outcome, InvalidRecord):
            assert isinstance(outcome.reason, Reason)
            assert outcome.detail
        else:
            assert isinstance(outcome, record_type)


# --- alerts ------------------------------------------------------------------------------

CONTRACT_ALERT_FIELDS = {
    "alert_id",
    "fingerprint",
    "kind",
    "status",
    "subject",
    "severity",
    "starts_at",
    "ends_at",
    "summary",
    "observed",
    "threshold",
    "window",
}
RFC3339_WITH_OFFSET = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")


def make_alert(**changes: Any) -> Alert:
    fields: dict[str, Any] = {
        "alert_id": "a-1",
        "fingerprint": "fp-checkout",
        "kind": AlertKind.KEY_MOMENT_DEGRADED,
        "status": AlertStatus.FIRING,
        "subject": "checkout.payment",
        "severity": Severity.CRITICAL,
        "starts_at_ms": INSTANT_MS + 123,
        "ends_at_ms": None,
        "summary": "结账支付 NPS 跌破标准: 6.2 < 10",
        "observed": 6.2,
        "threshold": 10.0,
        "window": "30m",
        "details": {"key_moment": "checkout.payment/nps", "samples": 42, "stage": None},
    }
    fields.update(changes)
    return Alert(**fields)


def test_encoded_firing_alert_carries_every_contract_field() -> None:
    raw = encode_alert(make_alert())
    doc = json.loads(raw.decode("utf-8"))
    assert isinstance(doc, dict)
    assert set(doc) >= CONTRACT_ALERT_FIELDS
    assert doc["alert_id"] == "a-1"
    assert doc["fingerprint"] == "fp-checkout"
    assert doc["kind"] == "key_moment_degraded"
    assert doc["status"] == "firing"
    assert doc["subject"] == "checkout.payment"
    assert doc["severity"] == "critical"
    assert doc["ends_at"] is None
    assert doc["summary"] == "结账支付 NPS 跌破标准: 6.2 < 10"
    assert doc["observed"] == 6.2
    assert doc["threshold"] == 10.0
    assert doc["window"] == "30m"


def test_encoded_alert_timestamps_are_rfc3339_with_offset() -> None:
    alert = make_alert(
        kind=AlertKind.OVER_MESSAGED,
        status=AlertStatus.RESOLVED,
        subject="c-1",
        severity=Severity.WARNING,
        ends_at_ms=DAY_START_MS + 86_400_000 - 1,  # 2026-11-22T23:59:59.999Z
    )
    doc = orjson.loads(encode_alert(alert))
    assert doc["kind"] == "over_messaged"
    assert doc["status"] == "resolved"
    assert doc["severity"] == "warning"
    for name, expected_ms in (
        ("starts_at", INSTANT_MS + 123),
        ("ends_at", DAY_START_MS + 86_399_999),
    ):
        text = doc[name]
        assert RFC3339_WITH_OFFSET.fullmatch(text), text
        # Read back through the inbound parser: the same instant, to the millisecond.
        assert parse_timestamp_ms(text, name) == expected_ms
    assert datetime.fromisoformat(doc["starts_at"]) == datetime(
        2026, 11, 22, 0, 15, 0, 123_000, tzinfo=UTC
    )


def test_encoded_alert_merges_details() -> None:
    doc = orjson.loads(encode_alert(make_alert()))
    assert doc["key_moment"] == "checkout.payment/nps"
    assert doc["samples"] == 42
    assert "stage" in doc
    assert doc["stage"] is None
    assert "details" not in doc


def test_encoded_alert_without_details_has_only_contract_fields() -> None:
    doc = orjson.loads(encode_alert(make_alert(details={})))
    assert set(doc) == CONTRACT_ALERT_FIELDS
