"""Decoding and validation of inbound JSON against the contract; every refusal carries a reason."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

import orjson

from models.records import (
    Alert,
    Category,
    Contact,
    Direction,
    IdentityLink,
    Outcome,
    Stage,
    SurveyAnswer,
    SurveyMetric,
    TouchpointEvent,
)

MAX_ID_LENGTH = 256
MAX_COMMENT_LENGTH = 10_000
MAX_DURATION_MS = 86_400_000.0
# Epoch milliseconds outside 1970..2200 are a unit mistake (seconds, microseconds), not a time.
MAX_EPOCH_MS = 7_258_118_400_000
TOUCHPOINT_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}")
CHANNEL_PATTERN = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}")
SCORE_RANGES: dict[SurveyMetric, tuple[float, float]] = {
    SurveyMetric.NPS: (0.0, 10.0),
    SurveyMetric.CSAT: (1.0, 5.0),
    SurveyMetric.CES: (1.0, 7.0),
}


class Reason(StrEnum):
    """Why a message was refused: a bounded set, safe as a metric label."""

    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    INVALID_TYPE = "invalid_type"
    INVALID_VALUE = "invalid_value"
    OUT_OF_RANGE = "out_of_range"
    INVALID_TIMESTAMP = "invalid_timestamp"
    LATE = "late"
    FUTURE = "future"


class InvalidRecord(ValueError):
    """A message that breaks the contract; `reason` is the code, the message the detail."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


E = TypeVar("E", bound=StrEnum)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRecord(Reason.INVALID_JSON, f"not valid UTF-8 JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidRecord(Reason.NOT_AN_OBJECT, f"expected a JSON object, got {_kind(value)}")
    return value


def parse_timestamp_ms(value: object, name: str) -> int:
    """RFC 3339 with an explicit offset, or integer epoch milliseconds."""
    if isinstance(value, bool):
        raise InvalidRecord(Reason.INVALID_TIMESTAMP, f"{name}: a boolean is not a timestamp")
    if isinstance(value, int):
        millis = value
    elif isinstance(value, str):
        try:
            # RFC 3339 allows a lower-case "t" and "z"; fromisoformat takes only upper case.
            moment = datetime.fromisoformat(value.upper())
        except ValueError:
            raise InvalidRecord(
                Reason.INVALID_TIMESTAMP, f"{name}: {value[:40]!r} is not an RFC 3339 timestamp"
            ) from None
        if moment.tzinfo is None:
            raise InvalidRecord(
                Reason.INVALID_TIMESTAMP, f"{name}: {value[:40]!r} has no UTC offset"
            )
        millis = round(moment.timestamp() * 1000)
    else:
        raise InvalidRecord(
            Reason.INVALID_TIMESTAMP,
            f"{name}: expected an RFC 3339 string or epoch milliseconds, got {_kind(value)}",
        )
    if not 0 <= millis <= MAX_EPOCH_MS:
        raise InvalidRecord(Reason.INVALID_TIMESTAMP, f"{name}: {millis} ms is outside 1970..2200")
    return millis


def parse_timestamp_text(text: str, name: str) -> int:
    """A time written as text, on a command line or in a URL: RFC 3339 with an offset, or
    epoch milliseconds, as the contract writes times."""
    return parse_timestamp_ms(int(text) if text.isascii() and text.isdigit() else text, name)


def format_timestamp(millis: int) -> str:
    return datetime.fromtimestamp(millis / 1000, tz=UTC).isoformat(timespec="milliseconds")


def decode_touchpoint_event(raw: bytes) -> TouchpointEvent:
    doc = parse_json_object(raw)
    direction = _enum(doc, "direction", Direction) or Direction.INBOUND
    category = _enum(doc, "category", Category)
    if category is None and direction is Direction.OUTBOUND:
        category = Category.MARKETING
    customer_id, contact = _identity(doc)
    duration = _number(doc, "duration_ms", required=False)
    if duration is not None and not 0 <= duration <= MAX_DURATION_MS:
        raise InvalidRecord(
            Reason.OUT_OF_RANGE, f"duration_ms: {duration} is outside 0..{MAX_DURATION_MS:.0f}"
        )
    attributes = doc.get("attributes")
    if attributes is None:
        attributes = {}  # null reads as absent, as for every optional field
    elif not isinstance(attributes, dict):
        raise InvalidRecord(
            Reason.INVALID_TYPE, f"attributes: expected an object, got {_kind(attributes)}"
        )
    return TouchpointEvent(
        event_id=_identifier(doc, "event_id"),
        occurred_at_ms=parse_timestamp_ms(_required(doc, "occurred_at"), "occurred_at"),
        touchpoint=_patterned(doc, "touchpoint", TOUCHPOINT_PATTERN),
        channel=_patterned(doc, "channel", CHANNEL_PATTERN),
        direction=direction,
        customer_id=customer_id,
        contact=contact,
        category=category,
        stage=_enum(doc, "stage", Stage),
        outcome=_enum(doc, "outcome", Outcome),
        duration_ms=duration,
        attributes=attributes,
    )


def decode_survey_answer(raw: bytes) -> SurveyAnswer:
    doc = parse_json_object(raw)
    metric = _enum(doc, "metric", SurveyMetric)
    if metric is None:
        raise InvalidRecord(Reason.MISSING_FIELD, "metric: required")
    score = _number(doc, "score", required=True)
    assert score is not None
    low, high = SCORE_RANGES[metric]
    if not low <= score <= high:
        raise InvalidRecord(
            Reason.OUT_OF_RANGE,
            f"score: {score} is outside {metric.value}'s range {low:g}..{high:g}",
        )
    comment = doc.get("comment")
    if comment is not None:
        if not isinstance(comment, str):
            raise InvalidRecord(
                Reason.INVALID_TYPE, f"comment: expected a string, got {_kind(comment)}"
            )
        if len(comment) > MAX_COMMENT_LENGTH:
            raise InvalidRecord(
                Reason.OUT_OF_RANGE,
                f"comment: {len(comment)} characters is over the limit of {MAX_COMMENT_LENGTH}",
            )
    customer_id, contact = _identity(doc)
    channel = None
    if doc.get("channel") is not None:
        channel = _patterned(doc, "channel", CHANNEL_PATTERN)
    return SurveyAnswer(
        answer_id=_identifier(doc, "answer_id"),
        answered_at_ms=parse_timestamp_ms(_required(doc, "answered_at"), "answered_at"),
        touchpoint=_patterned(doc, "touchpoint", TOUCHPOINT_PATTERN),
        metric=metric,
        score=score,
        customer_id=customer_id,
        contact=contact,
        channel=channel,
        comment=comment or None,
    )


def decode_identity_link(raw: bytes) -> IdentityLink:
    doc = parse_json_object(raw)
    contact = _contact(_required(doc, "contact"))
    return IdentityLink(
        contact=contact,
        customer_id=_identifier(doc, "customer_id"),
        linked_at_ms=parse_timestamp_ms(_required(doc, "linked_at"), "linked_at"),
    )


def encode_alert(alert: Alert) -> bytes:
    # Details first: a detail can never overwrite a field of the contract.
    doc: dict[str, Any] = dict(alert.details)
    doc |= {
        "alert_id": alert.alert_id,
        "fingerprint": alert.fingerprint,
        "kind": alert.kind.value,
        "status": alert.status.value,
        "subject": alert.subject,
        "severity": alert.severity.value,
        "starts_at": format_timestamp(alert.starts_at_ms),
        "ends_at": None if alert.ends_at_ms is None else format_timestamp(alert.ends_at_ms),
        "summary": alert.summary,
        "observed": alert.observed,
        "threshold": alert.threshold,
        "window": alert.window,
    }
    return orjson.dumps(doc)


def _required(doc: Mapping[str, Any], name: str) -> Any:
    value = doc.get(name)
    if value is None:
        raise InvalidRecord(Reason.MISSING_FIELD, f"{name}: required")
    return value


def _identifier(doc: Mapping[str, Any], name: str) -> str:
    value = _required(doc, name)
    if not isinstance(value, str):
        raise InvalidRecord(Reason.INVALID_TYPE, f"{name}: expected a string, got {_kind(value)}")
    if not value.strip():
        raise InvalidRecord(Reason.INVALID_VALUE, f"{name}: must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidRecord(
            Reason.OUT_OF_RANGE,
            f"{name}: {len(value)} characters is over the limit of {MAX_ID_LENGTH}",
        )
    return value


def _patterned(doc: Mapping[str, Any], name: str, pattern: re.Pattern[str]) -> str:
    value = _identifier(doc, name)
    if pattern.fullmatch(value) is None:
        raise InvalidRecord(
            Reason.INVALID_VALUE, f"{name}: {value[:40]!r} does not match {pattern.pattern}"
        )
    return value


def _number(doc: Mapping[str, Any], name: str, *, required: bool) -> float | None:
    value = doc.get(name)
    if value is None:
        if required:
            raise InvalidRecord(Reason.MISSING_FIELD, f"{name}: required")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRecord(Reason.INVALID_TYPE, f"{name}: expected a number, got {_kind(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise InvalidRecord(Reason.OUT_OF_RANGE, f"{name}: {value} is not finite")
    return number


def _enum(doc: Mapping[str, Any], name: str, kind: type[E]) -> E | None:
    value = doc.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRecord(Reason.INVALID_TYPE, f"{name}: expected a string, got {_kind(value)}")
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(member.value for member in kind)
        raise InvalidRecord(
            Reason.INVALID_VALUE, f"{name}: {value[:40]!r} is not one of {allowed}"
        ) from None


def _contact(value: object) -> Contact:
    if not isinstance(value, dict):
        raise InvalidRecord(Reason.INVALID_TYPE, f"contact: expected an object, got {_kind(value)}")
    try:
        return Contact(
            type=_patterned(value, "type", CHANNEL_PATTERN),
            value=_identifier(value, "value"),
        )
    except InvalidRecord as error:
        # "type: required" alone would send the reader to look for a top-level field.
        raise InvalidRecord(error.reason, f"contact.{error.detail}") from None


def _identity(doc: Mapping[str, Any]) -> tuple[str | None, Contact | None]:
    raw_customer = doc.get("customer_id")
    raw_contact = doc.get("contact")
    if raw_customer is None and raw_contact is None:
        raise InvalidRecord(Reason.MISSING_FIELD, "customer_id or contact: one is required")
    customer_id = None if raw_customer is None else _identifier(doc, "customer_id")
    contact = None if raw_contact is None else _contact(raw_contact)
    return customer_id, contact


_KIND_NAMES: dict[type, str] = {
    dict: "an object",
    list: "an array",
    str: "a string",
    bool: "a boolean",
    int: "a number",
    float: "a number",
}


def _kind(value: object) -> str:
    return _KIND_NAMES.get(type(value), "null" if value is None else type(value).__name__)
