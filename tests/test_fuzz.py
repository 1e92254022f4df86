"""Bad input, property-based: each decoder returns a valid record or refuses with a reason that
names the field, and a live worker dead-letters every bad message and counts every good one."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from enum import StrEnum
from typing import Any, TypeVar

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from hypothesis import HealthCheck, Phase, event, example, given, seed, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from models.decode import (
    CHANNEL_PATTERN,
    MAX_COMMENT_LENGTH,
    MAX_DURATION_MS,
    MAX_EPOCH_MS,
    MAX_ID_LENGTH,
    SCORE_RANGES,
    TOUCHPOINT_PATTERN,
    InvalidRecord,
    Reason,
    decode_identity_link,
    decode_survey_answer,
    decode_touchpoint_event,
)
from models.records import (
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
from streams.commands.publish import Outgoing, send_all
from streams.settings import Settings
from tests.harness import Deployment, WorkerProcess
from tests.services import get_text, wait_for

T = TypeVar("T")
Record = TouchpointEvent | SurveyAnswer | IdentityLink
Decoder = Callable[[bytes], Record]
Doc = dict[str, Any]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# orjson refuses documents nested deeper than this; 10,000 levels must be refused, not crash.
JSON_DEPTH_LIMIT = 1024
ONE_MB = 1 << 20

# Strings a UTF-8 producer can send: no lone surrogates.
UTF8 = st.characters(codec="utf-8")
IDENTIFIERS = st.one_of(
    st.text(UTF8, min_size=1, max_size=24),
    st.text(UTF8, min_size=MAX_ID_LENGTH, max_size=MAX_ID_LENGTH),
).filter(str.strip)
TOUCHPOINTS = st.from_regex(TOUCHPOINT_PATTERN, fullmatch=True)
CHANNELS = st.from_regex(CHANNEL_PATTERN, fullmatch=True)
INSTANTS = st.integers(0, MAX_EPOCH_MS)
OFFSET_MINUTES = st.just(0) | st.integers(-(23 * 60 + 59), 23 * 60 + 59)
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(UTF8, max_size=20)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(UTF8, max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)
ATTRIBUTES = st.dictionaries(st.text(UTF8, max_size=8), JSON_VALUES, max_size=4)
# Values the JSON grammar has no place for, and numbers a double cannot hold.
INVALID_NUMBER_SPELLINGS = [
    "NaN",
    "-NaN",
    "nan",
    "Infinity",
    "-Infinity",
    "+Infinity",
    "inf",
    "1e309",
    "-1e400",
    "1E999999",
    "0x1F",
    "1_000",
    "+1",
    ".5",
    "1.",
    "01",
]
HUGE_NUMBERS: list[int | float] = [1e308, -1e308, 1.7976931348623157e308, 2**64, 2**80, -(2**80)]
INVALID_UTF8 = [
    b"\xff",
    b"\xc0\xaf",  # overlong "/"
    b"\xed\xa0\x80",  # an encoded surrogate
    b"\xf4\x90\x80\x80",  # beyond U+10FFFF
    b"\xe5\xa5",  # a truncated three-byte sequence
    b"\x80",  # a lone continuation byte
]
NEAR_MISS_TIMESTAMPS = [
    "2026-11-22T08:15:00",  # no offset
    "2026-11-22",
    "1969-12-31T23:59:59Z",
    "2200-01-01T00:00:00.001Z",
    "0001-01-01T00:00:00+01:00",
    "2026-02-30T00:00:00Z",
    "2026-11-22T24:00:00Z",
    "２０２６-11-22T00:00:00Z",  # full-width digits  # noqa: RUF001
    "yesterday",
    "",
]


def dump(doc: Any, *, ascii_only: bool = False) -> bytes:
    """JSON as a producer writes it; the standard library keeps integers beyond 64 bits."""
    return json.dumps(doc, ensure_ascii=ascii_only, allow_nan=False).encode()


def with_raw_value(doc: Doc, name: str, fragment: bytes) -> bytes:
    """The document with `name` set to a JSON text no Python value can be dumped as."""
    placeholder = "\x00raw\x00"
    return dump({**doc, name: placeholder}).replace(dump(placeholder), fragment)


def nested(depth: int) -> bytes:
    """A JSON value `depth` levels deep: objects outside, arrays inside, 1 at the bottom."""
    return (
        b'{"a":' * (depth // 2)
        + b"[" * (depth - depth // 2)
        + b"1"
        + b"]" * (depth - depth // 2)
        + b"}" * (depth // 2)
    )


# --- schema-respecting records ------------------------------------------------------------


@dataclass(frozen=True)
class Schema:
    """One input record type: its decoder and the fields of its contract."""

    name: str
    decode: Decoder
    record_type: type
    # name -> (kind, required); "identity" fields are required as a pair, one of the two.
    fields: dict[str, tuple[str, bool]]

    @property
    def field_names(self) -> set[str]:
        names = set(self.fields) | {"contact.type", "contact.value"}
        if "identity" in {kind for kind, _ in self.fields.values()}:
            names.add("customer_id or contact")
        return names


EVENTS = Schema(
    "touchpoint_events",
    decode_touchpoint_event,
    TouchpointEvent,
    {
        "event_id": ("id", True),
        "occurred_at": ("timestamp", True),
        "customer_id": ("identity", False),
        "contact": ("identity", False),
        "touchpoint": ("touchpoint", True),
        "channel": ("channel", True),
        "direction": ("enum", False),
        "category": ("enum", False),
        "stage": ("enum", False),
        "outcome": ("enum", False),
        "duration_ms": ("duration", False),
        "attributes": ("object", False),
    },
)
ANSWERS = Schema(
    "survey_answers",
    decode_survey_answer,
    SurveyAnswer,
    {
        "answer_id": ("id", True),
        "answered_at": ("timestamp", True),
        "customer_id": ("identity", False),
        "contact": ("identity", False),
        "touchpoint": ("touchpoint", True),
        "channel": ("channel", False),
        "metric": ("enum", True),
        "score": ("score", True),
        "comment": ("comment", False),
    },
)
LINKS = Schema(
    "identity_links",
    decode_identity_link,
    IdentityLink,
    {"contact": ("contact", True), "customer_id": ("id", True), "linked_at": ("timestamp", True)},
)
SCHEMAS = [EVENTS, ANSWERS, LINKS]


@dataclass(frozen=True)
class Valid:
    """A record of the contract, and one of the many documents that spell it."""

    schema: Schema
    record: Record
    doc: Doc


@st.composite
def timestamp_forms(draw: st.DrawFn, at_ms: int) -> object:
    """Epoch milliseconds, or RFC 3339 with any offset, `t`/`z` in either case, long fractions."""
    if draw(st.booleans()):
        return at_ms
    minutes = draw(OFFSET_MINUTES)
    moment = (EPOCH + timedelta(milliseconds=at_ms)).astimezone(
        timezone(timedelta(minutes=minutes))
    )
    millis = moment.microsecond // 1000
    fraction = ""
    if millis or draw(st.booleans()):
        fraction = f".{millis:03d}" + "0" * draw(st.integers(0, 6))
    if minutes == 0 and draw(st.booleans()):
        zone = draw(st.sampled_from("Zz"))
    else:
        hours, rest = divmod(abs(minutes), 60)
        zone = f"{'-' if minutes < 0 else '+'}{hours:02d}:{rest:02d}"
    separator = draw(st.sampled_from("Tt"))
    return f"{moment:%Y-%m-%d}{separator}{moment:%H:%M:%S}{fraction}{zone}"


@st.composite
def contacts(draw: st.DrawFn) -> Contact:
    return Contact(type=draw(CHANNELS), value=draw(IDENTIFIERS))


def contact_doc(contact: Contact) -> Doc:
    return {"type": contact.type, "value": contact.value}


@st.composite
def identities(draw: st.DrawFn) -> tuple[str | None, Contact | None]:
    which = draw(st.sampled_from(["customer", "contact", "both"]))
    customer_id = draw(IDENTIFIERS) if which != "contact" else None
    contact = draw(contacts()) if which != "customer" else None
    return customer_id, contact


def optional_fields(draw: st.DrawFn, fields: dict[str, object]) -> Doc:
    """Fields with a value are written; the others are left out or written as null."""
    doc: Doc = {}
    for name, value in fields.items():
        if value is not None:
            doc[name] = value
        elif draw(st.booleans()):
            doc[name] = None
    return doc


def unknown_fields(schema: Schema) -> st.SearchStrategy[Doc]:
    return st.dictionaries(
        st.text(UTF8, max_size=12).filter(lambda name: name not in schema.fields),
        JSON_VALUES | st.sampled_from(HUGE_NUMBERS),
        max_size=3,
    )


@st.composite
def valid_events(draw: st.DrawFn, instants: st.SearchStrategy[int] = INSTANTS) -> Valid:
    at_ms = draw(instants)
    customer_id, contact = draw(identities())
    direction = draw(st.none() | st.sampled_from(Direction))
    category = draw(st.none() | st.sampled_from(Category))
    stage = draw(st.none() | st.sampled_from(Stage))
    outcome = draw(st.none() | st.sampled_from(Outcome))
    duration = draw(
        st.none() | st.integers(0, int(MAX_DURATION_MS)) | st.floats(0, MAX_DURATION_MS)
    )
    attributes = draw(st.none() | ATTRIBUTES)
    record = TouchpointEvent(
        event_id=draw(IDENTIFIERS),
        occurred_at_ms=at_ms,
        touchpoint=draw(TOUCHPOINTS),
        channel=draw(CHANNELS),
        direction=direction or Direction.INBOUND,
        customer_id=customer_id,
        contact=contact,
        # The contract's default: an outbound message is marketing unless it says otherwise.
        category=category or (Category.MARKETING if direction is Direction.OUTBOUND else None),
        stage=stage,
        outcome=outcome,
        duration_ms=None if duration is None else float(duration),
        attributes=attributes or {},
    )
    doc: Doc = {
        "event_id": record.event_id,
        "occurred_at": draw(timestamp_forms(at_ms)),
        "touchpoint": record.touchpoint,
        "channel": record.channel,
    }
    doc |= optional_fields(
        draw,
        {
            "customer_id": customer_id,
            "contact": contact and contact_doc(contact),
            "direction": direction and direction.value,
            "category": category and category.value,
            "stage": stage and stage.value,
            "outcome": outcome and outcome.value,
            "duration_ms": duration,
            "attributes": attributes,
        },
    )
    return Valid(EVENTS, record, doc | draw(unknown_fields(EVENTS)))


@st.composite
def valid_answers(draw: st.DrawFn, instants: st.SearchStrategy[int] = INSTANTS) -> Valid:
    at_ms = draw(instants)
    customer_id, contact = draw(identities())
    metric = draw(st.sampled_from(SurveyMetric))
    low, high = SCORE_RANGES[metric]
    score = draw(st.integers(int(low), int(high)) | st.floats(low, high))
    channel = draw(st.none() | CHANNELS)
    comment = draw(
        st.none()
        | st.text(UTF8, max_size=40)
        # Exactly at the limit, in characters of any width.
        | st.text(UTF8, min_size=1, max_size=3).map(
            lambda unit: (unit * MAX_COMMENT_LENGTH)[:MAX_COMMENT_LENGTH]
        )
    )
    record = SurveyAnswer(
        answer_id=draw(IDENTIFIERS),
        answered_at_ms=at_ms,
        touchpoint=draw(TOUCHPOINTS),
        metric=metric,
        score=float(score),
        customer_id=customer_id,
        contact=contact,
        channel=channel,
        comment=comment or None,  # an empty comment says nothing
    )
    doc: Doc = {
        "answer_id": record.answer_id,
        "answered_at": draw(timestamp_forms(at_ms)),
        "touchpoint": record.touchpoint,
        "metric": metric.value,
        "score": score,
    }
    doc |= optional_fields(
        draw,
        {
            "customer_id": customer_id,
            "contact": contact and contact_doc(contact),
            "channel": channel,
            "comment": comment,
        },
    )
    return Valid(ANSWERS, record, doc | draw(unknown_fields(ANSWERS)))


@st.composite
def valid_links(draw: st.DrawFn, instants: st.SearchStrategy[int] = INSTANTS) -> Valid:
    at_ms = draw(instants)
    record = IdentityLink(
        contact=draw(contacts()), customer_id=draw(IDENTIFIERS), linked_at_ms=at_ms
    )
    doc: Doc = {
        "contact": contact_doc(record.contact),
        "customer_id": record.customer_id,
        "linked_at": draw(timestamp_forms(at_ms)),
    }
    return Valid(LINKS, record, doc | draw(unknown_fields(LINKS)))


VALID = {EVENTS.name: valid_events(), ANSWERS.name: valid_answers(), LINKS.name: valid_links()}
ANY_VALID = st.one_of(*VALID.values())


# --- one field broken, and what the decoder must say -------------------------------------


@dataclass(frozen=True)
class Broken:
    """A valid document with one field broken: the refusal it must get, or None if still valid."""

    schema: Schema
    raw: bytes
    what: str
    expected: tuple[Reason, str] | None


NOT_STRINGS = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(HUGE_NUMBERS),
    st.booleans(),
    st.lists(JSON_VALUES, max_size=2),
    st.dictionaries(st.text(UTF8, max_size=4), JSON_VALUES, max_size=2),
)
NOT_NUMBERS = st.one_of(
    st.text(UTF8, max_size=10),
    st.booleans(),
    st.lists(JSON_VALUES, max_size=2),
    st.dictionaries(st.text(UTF8, max_size=4), JSON_VALUES, max_size=2),
)
NOT_OBJECTS = st.one_of(
    st.text(UTF8, max_size=10),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.lists(JSON_VALUES, max_size=2),
)
NOT_TIMESTAMPS = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(HUGE_NUMBERS),
    st.booleans(),
    st.lists(JSON_VALUES, max_size=2),
    st.dictionaries(st.text(UTF8, max_size=4), JSON_VALUES, max_size=2),
    st.integers(max_value=-1),
    st.integers(min_value=MAX_EPOCH_MS + 1, max_value=2**64 - 1),
    st.sampled_from(NEAR_MISS_TIMESTAMPS),
    # Without digits: hypothesis also draws string constants of the loaded modules, some
    # of which are valid timestamps.
    st.text(UTF8, max_size=30).filter(lambda text: not any(c in "0123456789" for c in text)),
)
# Python's str.strip() takes all of these for space, the file separators \x1c-\x1f included.
BLANK = st.text(st.sampled_from(" \t\n\r\x0b\x0c\x1c\x1f\x85\xa0\u1680\u2028\u3000"), max_size=5)
TOO_LONG_IDS = st.integers(MAX_ID_LENGTH + 1, 4 * MAX_ID_LENGTH).map(lambda n: "é" * n)


ENUMS: dict[str, type[StrEnum]] = {
    "direction": Direction,
    "category": Category,
    "stage": Stage,
    "outcome": Outcome,
    "metric": SurveyMetric,
}


def bad_values(kind: str, name: str, doc: Doc) -> st.SearchStrategy[tuple[object, Reason]]:
    """Values of the right JSON type that break the contract, with the reason they get."""

    def tagged(values: st.SearchStrategy[Any], reason: Reason) -> st.SearchStrategy[Any]:
        return values.map(lambda value: (value, reason))

    pattern = {"touchpoint": TOUCHPOINT_PATTERN, "channel": CHANNEL_PATTERN}.get(kind)
    if kind in ("id", "identity") or pattern is not None:
        choices = [
            tagged(BLANK, Reason.INVALID_VALUE),
            tagged(TOO_LONG_IDS, Reason.OUT_OF_RANGE),
        ]
        if pattern is not None:
            choices.append(
                tagged(
                    st.text(UTF8, min_size=1, max_size=MAX_ID_LENGTH).filter(
                        lambda text: text.strip() and pattern.fullmatch(text) is None
                    ),
                    Reason.INVALID_VALUE,
                )
            )
        return st.one_of(choices)
    if kind == "enum":
        members = ENUMS[name]
        unknown = st.text(UTF8, max_size=12) | st.sampled_from([m.value.upper() for m in members])
        return tagged(unknown.filter(lambda text: text not in set(members)), Reason.INVALID_VALUE)
    if kind == "timestamp":
        return tagged(NOT_TIMESTAMPS, Reason.INVALID_TIMESTAMP)
    if kind == "duration":
        outside = st.floats(max_value=-1e-9, allow_infinity=False) | st.floats(
            min_value=MAX_DURATION_MS + 1, allow_infinity=False
        )
        return tagged(outside | st.sampled_from(HUGE_NUMBERS), Reason.OUT_OF_RANGE)
    if kind == "score":
        low, high = SCORE_RANGES[SurveyMetric(doc["metric"])]
        outside = st.floats(max_value=low - 1e-6, allow_infinity=False) | st.floats(
            min_value=high + 1e-6, allow_infinity=False
        )
        return tagged(outside | st.sampled_from(HUGE_NUMBERS), Reason.OUT_OF_RANGE)
    if kind == "comment":
        # Up to a megabyte, in characters of one to four UTF-8 bytes.
        return tagged(
            st.tuples(st.sampled_from("x好é😀"), st.integers(MAX_COMMENT_LENGTH + 1, ONE_MB)).map(
                lambda unit_count: unit_count[0] * unit_count[1]
            ),
            Reason.OUT_OF_RANGE,
        )
    raise AssertionError(f"no bad values of kind {kind}: objects are free or broken inside")


def wrong_types(kind: str) -> st.SearchStrategy[tuple[object, Reason]]:
    if kind == "timestamp":
        return NOT_TIMESTAMPS.map(lambda value: (value, Reason.INVALID_TIMESTAMP))
    values = {"duration": NOT_NUMBERS, "score": NOT_NUMBERS, "object": NOT_OBJECTS}.get(
        kind, NOT_STRINGS
    )
    return values.map(lambda value: (value, Reason.INVALID_TYPE))


@st.composite
def broken_contact(draw: st.DrawFn, doc: Doc) -> tuple[Reason, str]:
    """Breaks one field inside the contact (adding a contact if there was none)."""
    part = draw(st.sampled_from(["type", "value"]))
    contact = dict(doc.get("contact") or {"type": "email", "value": "a@example.com"})
    how = draw(st.sampled_from(["absent", "null", "wrong type", "bad value"]))
    reason = Reason.MISSING_FIELD
    if how == "absent":
        del contact[part]
    elif how == "null":
        contact[part] = None
    elif how == "wrong type":
        contact[part], reason = draw(wrong_types("id"))
    else:
        contact[part], reason = draw(bad_values("channel" if part == "type" else "id", part, doc))
    doc["contact"] = contact
    return reason, f"contact.{part}"


MUTATIONS = ["absent", "null", "wrong type", "bad value", "inner field"]


@st.composite
def broken_documents(draw: st.DrawFn, how: str | None = None) -> Broken:
    valid = draw(ANY_VALID)
    schema, doc = valid.schema, dict(valid.doc)
    how = how or draw(st.sampled_from(MUTATIONS))
    refusal: tuple[Reason, str] | None
    if how == "inner field":
        refusal = draw(broken_contact(doc))  # breaks doc in place
        return Broken(schema, dump(doc), f"{how} {refusal[1]}", refusal)
    names = sorted(schema.fields)
    if how == "bad value":  # objects have none: attributes are free, a contact's are inside
        names = [n for n in names if n != "contact" and schema.fields[n][0] != "object"]
    name = draw(st.sampled_from(names))
    kind, required = schema.fields[name]
    if how in ("absent", "null"):
        doc.pop(name, None)
        if how == "null":
            doc[name] = None
        if kind == "identity":
            other = "contact" if name == "customer_id" else "customer_id"
            kept = doc.get(other) is not None
            refusal = None if kept else (Reason.MISSING_FIELD, "customer_id or contact")
        else:
            refusal = (Reason.MISSING_FIELD, name) if required else None
    elif how == "wrong type":
        doc[name], reason = draw(wrong_types("object" if name == "contact" else kind))
        refusal = (reason, name)
    else:
        doc[name], reason = draw(bad_values(kind, name, doc))
        refusal = (reason, name)
    return Broken(schema, dump(doc), f"{how} {name}", refusal)


# --- bytes that are not a document at all -------------------------------------------------


@dataclass(frozen=True)
class Malformed:
    """Bytes every decoder must refuse with `reason`, whatever fields they seem to hold."""

    raw: bytes
    what: str
    reason: Reason


MALFORMATIONS = ["truncated", "invalid utf-8", "number spelling", "deep nesting", "not an object"]


@st.composite
def malformed(draw: st.DrawFn, how: str | None = None) -> Malformed:
    valid = draw(ANY_VALID)
    raw = dump(valid.doc, ascii_only=draw(st.booleans()))
    how = how or draw(st.sampled_from(MALFORMATIONS))
    if how == "truncated":
        cut = draw(st.integers(0, len(raw) - 1))
        return Malformed(raw[:cut], how, Reason.INVALID_JSON)
    if how == "invalid utf-8":
        at = draw(st.integers(0, len(raw)))
        return Malformed(
            raw[:at] + draw(st.sampled_from(INVALID_UTF8)) + raw[at:], how, Reason.INVALID_JSON
        )
    name = draw(st.sampled_from(sorted(valid.doc) or ["extra"]))
    if how == "number spelling":
        spelling = draw(st.sampled_from(INVALID_NUMBER_SPELLINGS))
        return Malformed(
            with_raw_value(valid.doc, name, spelling.encode()), how, Reason.INVALID_JSON
        )
    if how == "deep nesting":
        depth = draw(st.integers(JSON_DEPTH_LIMIT, 10_000))
        return Malformed(with_raw_value(valid.doc, name, nested(depth)), how, Reason.INVALID_JSON)
    value = draw(JSON_SCALARS | st.lists(JSON_VALUES, max_size=3))
    wrapped = draw(st.sampled_from([value, [valid.doc]]))
    return Malformed(dump(wrapped), how, Reason.NOT_AN_OBJECT)


@st.composite
def foreign_encodings(draw: st.DrawFn) -> bytes:
    """A valid document written by a producer that does not speak UTF-8."""
    text = dump(draw(ANY_VALID).doc).decode()
    codec = draw(st.sampled_from(["utf-16", "utf-32", "gbk", "latin-1", "cp1252", "utf-8-sig"]))
    return text.encode(codec, errors="replace")


ANY_BYTES = st.one_of(
    st.binary(max_size=512),
    foreign_encodings(),
    malformed().map(lambda m: m.raw),
    broken_documents().map(lambda b: b.raw),
    ANY_VALID.map(lambda v: dump(v.doc)),
)


# --- what a decoded record must be --------------------------------------------------------


def outcome(decode: Decoder, raw: bytes) -> Record | InvalidRecord:
    """The record, or the refusal; any other exception escapes and fails the test."""
    try:
        return decode(raw)
    except InvalidRecord as refusal:
        return refusal


def assert_identifier(value: str) -> None:
    assert value.strip()
    assert len(value) <= MAX_ID_LENGTH
    value.encode("utf-8")  # keys, headers and table keys are UTF-8 bytes


def assert_valid(record: Record) -> None:
    """The contract's rules, checked on the record itself: what every later stage relies on."""
    assert 0 <= record.at_ms <= MAX_EPOCH_MS
    assert isinstance(record.at_ms, int)
    if isinstance(record, IdentityLink):
        assert_identifier(record.customer_id)
        assert CHANNEL_PATTERN.fullmatch(record.contact.type)
        assert_identifier(record.contact.value)
        return
    if isinstance(record, TouchpointEvent):
        assert_identifier(record.event_id)
        assert CHANNEL_PATTERN.fullmatch(record.channel)
        assert isinstance(record.direction, Direction)
        assert record.direction is Direction.INBOUND or record.category is not None
        assert record.duration_ms is None or 0 <= record.duration_ms <= MAX_DURATION_MS
        assert isinstance(record.attributes, dict)
    else:
        assert_identifier(record.answer_id)
        low, high = SCORE_RANGES[record.metric]
        assert low <= record.score <= high
        assert record.channel is None or CHANNEL_PATTERN.fullmatch(record.channel)
        assert record.comment is None or 0 < len(record.comment) <= MAX_COMMENT_LENGTH
    assert TOUCHPOINT_PATTERN.fullmatch(record.touchpoint)
    assert record.customer_id is not None or record.contact is not None
    if record.customer_id is not None:
        assert_identifier(record.customer_id)
    if record.contact is not None:
        assert CHANNEL_PATTERN.fullmatch(record.contact.type)
        assert_identifier(record.contact.value)


def assert_refusal_is_explained(schema: Schema, refusal: InvalidRecord) -> None:
    assert isinstance(refusal.reason, Reason)
    assert refusal.detail
    assert str(refusal) == refusal.detail
    refusal.detail.encode("utf-8")  # it travels as the cxmon-error header
    if refusal.reason not in (Reason.INVALID_JSON, Reason.NOT_AN_OBJECT):
        named, colon, _ = refusal.detail.partition(":")
        assert colon
        assert named in schema.field_names, refusal.detail


def is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


PURE = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@settings(PURE, max_examples=200)
@given(valid=ANY_VALID, ascii_only=st.booleans())
def test_schema_respecting_records_decode_and_round_trip(valid: Valid, ascii_only: bool) -> None:
    decoded = valid.schema.decode(dump(valid.doc, ascii_only=ascii_only))
    assert decoded == valid.record
    assert_valid(decoded)


@pytest.mark.parametrize("how", MUTATIONS)
@settings(PURE, max_examples=60)
@given(data=st.data())
def test_a_broken_field_is_refused_with_its_reason_and_name(how: str, data: st.DataObject) -> None:
    broken = data.draw(broken_documents(how))
    event(broken.what)  # --hypothesis-show-statistics lists what was broken, and how often
    result = outcome(broken.schema.decode, broken.raw)
    if broken.expected is None:
        assert isinstance(result, broken.schema.record_type), (broken.what, result)
        return
    reason, name = broken.expected
    assert isinstance(result, InvalidRecord), (broken.what, result)
    assert (result.reason, result.detail.partition(":")[0]) == (reason, name), (
        broken.what,
        result.detail[:200],
    )
    assert_refusal_is_explained(broken.schema, result)


def assert_refused_by_every_decoder(bad: Malformed) -> None:
    for schema in SCHEMAS:
        result = outcome(schema.decode, bad.raw)
        assert isinstance(result, InvalidRecord), (bad.what, result)
        assert result.reason is bad.reason, (bad.what, result.detail[:200])
        assert_refusal_is_explained(schema, result)


@pytest.mark.parametrize("how", MALFORMATIONS)
@settings(PURE, max_examples=40)
@given(data=st.data())
def test_malformed_bytes_are_refused_by_every_decoder(how: str, data: st.DataObject) -> None:
    assert_refused_by_every_decoder(data.draw(malformed(how)))


@pytest.mark.parametrize(
    "bad",
    [
        Malformed(b'{"event_id": ' + nested(10_000) + b"}", "10k levels", Reason.INVALID_JSON),
        Malformed(b"[" * 10_000, "10k unclosed", Reason.INVALID_JSON),
        Malformed(b'{"score": NaN}', "NaN", Reason.INVALID_JSON),
        Malformed(b'{"answered_at": Infinity}', "Infinity", Reason.INVALID_JSON),
        Malformed(b'{"x": "\\ud800"}', "escaped lone surrogate", Reason.INVALID_JSON),
        Malformed(b"\xef\xbb\xbf{}", "byte order mark", Reason.INVALID_JSON),
        Malformed(b"", "empty", Reason.INVALID_JSON),
        Malformed(b"null", "null", Reason.NOT_AN_OBJECT),
    ],
    ids=lambda bad: bad.what,
)
def test_pinned_malformed_bytes_are_refused_by_every_decoder(bad: Malformed) -> None:
    assert_refused_by_every_decoder(bad)


@settings(PURE, max_examples=200)
@given(raw=ANY_BYTES)
@example(raw=dump({"comment": "好" * ONE_MB, "metric": "nps", "score": 5}))
@example(raw=dump({"occurred_at": 2**80, "linked_at": 1e308, "score": -(2**80)}))
def test_any_bytes_decode_to_a_valid_record_or_an_explained_refusal(raw: bytes) -> None:
    for schema in SCHEMAS:
        result = outcome(schema.decode, raw)
        if isinstance(result, InvalidRecord):
            assert_refusal_is_explained(schema, result)
            if not is_utf8(raw):
                assert result.reason is Reason.INVALID_JSON
        else:
            assert isinstance(result, schema.record_type)
            assert_valid(result)


@settings(PURE, max_examples=60)
@given(valid=ANY_VALID, depth=st.integers(1, JSON_DEPTH_LIMIT - 24), data=st.data())
def test_deep_but_legal_nesting_in_free_fields_is_kept_or_ignored(
    valid: Valid, depth: int, data: st.DataObject
) -> None:
    unknown = data.draw(st.text(UTF8, max_size=8).filter(lambda n: n not in valid.schema.fields))
    assert valid.schema.decode(with_raw_value(valid.doc, unknown, nested(depth))) == valid.record
    if valid.schema is EVENTS:
        # Kept whole in the free object; compared by shape, as == would recurse as deep.
        event = valid.schema.decode(
            with_raw_value(valid.doc, "attributes", b'{"n": ' + nested(depth) + b"}")
        )
        assert isinstance(event, TouchpointEvent)
        level: Any = event.attributes["n"]
        for _ in range(depth):
            level = level["a"] if isinstance(level, dict) else level[0]
        assert level == 1


# --- live: a worker fed a hypothesis-generated mix on every input topic --------------------

# Large enough for comments past the limit and 10,000-level nesting, small enough that
# every message (and its dead letter, with headers) stays far below Kafka's 1 MB default.
LIVE_MAX_BYTES = 64 * 1024
LIVE_SEED = 20261122
LIVE_START_MS = 1_795_305_600_000  # 2026-11-22T00:00:00Z, a fixed day in the past


@dataclass(frozen=True)
class Probe:
    """One message for a live worker: where it goes, what it exercises, and if it is good."""

    schema: Schema
    what: str
    key: bytes | None
    value: bytes
    good: bool
    record_id: str | None = None


def contract_key(record: Record) -> bytes:
    """The customer, else the contact, as the contract asks producers to key records."""
    if isinstance(record, IdentityLink):
        return record.contact.key.encode()
    return (record.customer_id or (record.contact and record.contact.key) or "").encode()


def record_id(record: Record) -> str | None:
    """The id duplicates are recognised by; links have none."""
    if isinstance(record, TouchpointEvent):
        return record.event_id
    if isinstance(record, SurveyAnswer):
        return record.answer_id
    return None


def keys(schema: Schema) -> st.SearchStrategy[bytes | None]:
    """Any bytes, or none; a compacted topic (the identity links) refuses records without one."""
    return st.binary(max_size=24) | (st.nothing() if schema is LINKS else st.none())


def good_probes(schema: Schema) -> st.SearchStrategy[Probe]:
    # Good records of the last half minute: a worker refuses records from the future and
    # records later than the catalog's grace (a minute) behind their partition.
    recent = st.integers(LIVE_START_MS, LIVE_START_MS + 30_000)
    valid = {EVENTS.name: valid_events, ANSWERS.name: valid_answers, LINKS.name: valid_links}
    return valid[schema.name](recent).map(
        lambda v: Probe(
            v.schema, "valid", contract_key(v.record), dump(v.doc), True, record_id(v.record)
        )
    )


@st.composite
def broken_probes(draw: st.DrawFn) -> Probe:
    broken = draw(broken_documents().filter(lambda broken: broken.expected is not None))
    key = draw(st.just(b"c-1") | keys(broken.schema))
    return Probe(broken.schema, "broken field", key, broken.raw, False)


@st.composite
def malformed_probes(draw: st.DrawFn, how: str) -> Probe:
    schema = draw(st.sampled_from(SCHEMAS))
    return Probe(schema, how, draw(keys(schema)), draw(malformed(how)).raw, False)


@st.composite
def junk_probes(draw: st.DrawFn) -> Probe:
    schema = draw(st.sampled_from(SCHEMAS))
    raw = draw(st.binary(max_size=256).filter(lambda raw: not is_utf8(raw)))
    return Probe(schema, "junk bytes", draw(keys(schema)), raw, False)


# How many of each kind; every kind is its own run, so none can go missing from the mix.
LIVE_KINDS: list[tuple[st.SearchStrategy[Probe], int]] = [
    *((good_probes(schema), 50) for schema in SCHEMAS),
    (broken_probes(), 60),
    *((malformed_probes(how), 12) for how in MALFORMATIONS),
    (junk_probes(), 20),
]


def collect(strategy: st.SearchStrategy[T], count: int) -> list[T]:
    """Up to `count` examples of one seeded hypothesis run, without shrinking or a database.

    A live worker cannot be restarted for every example, so the examples are gathered
    first and published together. The fixed seed gives CI the same messages run after
    run (hypothesis also mixes in string constants of the modules loaded, so a different
    test selection may vary a few strings; a failure names the messages it is about).
    """
    drawn: list[T] = []

    @seed(LIVE_SEED)
    @settings(
        max_examples=count,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def gather(example: T) -> None:
        drawn.append(example)

    gather()
    return drawn


def live_mix() -> list[Probe]:
    """Every kind, interleaved; a good id seen before is left out, so that the worker's
    duplicate counter stays at zero and every good record counts once."""
    probes = [
        probe
        for strategy, count in LIVE_KINDS
        for probe in collect(strategy, count)
        if len(probe.value) <= LIVE_MAX_BYTES
    ]
    random.Random(LIVE_SEED).shuffle(probes)
    seen: set[tuple[str, str]] = set()
    mix = []
    for probe in probes:
        if probe.record_id is not None:
            if (probe.schema.name, probe.record_id) in seen:
                continue
            seen.add((probe.schema.name, probe.record_id))
        mix.append(probe)
    return mix


Metrics = dict[tuple[str, frozenset[tuple[str, str]]], float]


def read_metrics(port: int) -> Metrics:
    text = get_text(f"http://127.0.0.1:{port}/metrics")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric(values: Metrics, name: str, **labels: str) -> float:
    """The sum over every series of `name` that carries `labels`."""
    wanted = set(labels.items())
    return sum(value for (n, have), value in values.items() if n == name and wanted <= have)


async def records_by_position(
    settings: Settings, topics: Iterable[str]
) -> dict[tuple[str, int, int], tuple[bytes | None, bytes]]:
    """Every record of `topics` by (topic, partition, offset): what a dead letter points at."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False
    )
    await consumer.start()
    try:
        assigned = [TopicPartition(t, p) for t in topics for p in range(settings.partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        ends = await consumer.end_offsets(assigned)
        found: dict[tuple[str, int, int], tuple[bytes | None, bytes]] = {}
        while [tp for tp in assigned if await consumer.position(tp) < ends[tp]]:
            for tp, batch in (await consumer.getmany(timeout_ms=500)).items():
                for record in batch:
                    found[(tp.topic, tp.partition, record.offset)] = (
                        record.key,
                        record.value or b"",
                    )
        return found
    finally:
        await consumer.stop()


async def records_in(settings: Settings, topic: str) -> int:
    """How many records `topic` holds: the sum of its partitions' end offsets."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(
            [TopicPartition(topic, p) for p in range(settings.partitions)]
        )
        return sum(ends.values())
    finally:
        await consumer.stop()


def topic_of(deployment: Deployment, schema: Schema) -> str:
    topic: str = getattr(deployment.topics, schema.name)
    return topic


def first_error(worker: WorkerProcess) -> str:
    """The worker's log from its first error on: the cause, not the shutdown that followed."""
    log = worker.log()
    start = log.find("[ERROR]")
    return log[start : start + 3000] if start >= 0 else log[-3000:]


def assert_running(worker: WorkerProcess) -> None:
    """Fails once the worker exits or starts to stop; a crashed worker was seen to hang in
    its shutdown (flushing a record it cannot send), so it is killed rather than awaited."""
    if worker.process.poll() is None and "[^Worker]: Stopping" not in worker.log():
        return
    cause = first_error(worker)
    worker.stop(timeout_s=5)
    raise AssertionError(f"the worker stopped:\n{cause}")


def feed_a_worker(deployment: Deployment, probes: list[Probe]) -> tuple[WorkerProcess, Metrics]:
    """Publishes the probes, starts a worker, and waits until it has read every one and
    dead-lettered every bad one; fails as soon as the worker stops. Published first, so
    that the worker takes them in batches as large as it takes."""
    outgoing = [Outgoing(topic_of(deployment, p.schema), p.key, p.value) for p in probes]
    sent, errors = asyncio.run(send_all(deployment.settings(), outgoing, progress_every=0))
    assert (sent, errors) == (len(probes), [])
    worker = deployment.start_worker()

    published = Counter(topic_of(deployment, p.schema) for p in probes)
    refused = Counter(topic_of(deployment, p.schema) for p in probes if not p.good)
    last_seen: list[dict[str, float]] = []

    def counted() -> Metrics | None:
        assert_running(worker)
        try:
            values = read_metrics(worker.web_port)
        except OSError:
            return None  # not up yet, or on its way down: the next look tells
        read = {t: metric(values, "cxmon_records_total", topic=t) for t in published}
        dead = {t: metric(values, "cxmon_dead_letters_total", topic=t) for t in published}
        last_seen[:] = [read, dead]
        return values if read == published and dead == refused else None

    try:
        values: Metrics = wait_for("every message counted", counted, timeout_s=90)
    except AssertionError as timeout:
        raise AssertionError(
            f"{timeout}: read, dead-lettered {last_seen}; published {published}, bad {refused}"
        ) from None

    # Counted when queued: the dead letters must also reach the broker, the worker alive.
    settings, bad = deployment.settings(), sum(refused.values())

    def delivered() -> bool:
        assert_running(worker)
        return asyncio.run(records_in(settings, deployment.topics.dead_letters)) >= bad

    wait_for("the dead letters on their topic", delivered, timeout_s=60)
    return worker, values


@pytest.mark.broker
def test_a_live_worker_dead_letters_every_bad_message_and_counts_every_good_one(
    deployment: Deployment,
) -> None:
    probes = live_mix()
    # The mix must keep exercising every kind of input, whatever the strategies become.
    assert {(p.schema.name, p.good) for p in probes} == {
        (s.name, good) for s in SCHEMAS for good in (True, False)
    }
    assert {p.what for p in probes} == {"valid", "broken field", "junk bytes", *MALFORMATIONS}
    for probe in probes:  # the mix is what it claims to be, by the pure decoders
        assert isinstance(outcome(probe.schema.decode, probe.value), InvalidRecord) != probe.good

    worker, values = feed_a_worker(deployment, probes)

    bad = [p for p in probes if not p.good]
    dead_letters = deployment.read(
        deployment.topics.dead_letters, until=lambda seen: len(seen) >= len(bad), timeout_s=60
    )
    schemas = {topic_of(deployment, s): s for s in SCHEMAS}
    inputs = asyncio.run(records_by_position(deployment.settings(), schemas))
    letters: Counter[tuple[str, bytes | None, bytes]] = Counter()
    positions = set()
    reasons: Counter[tuple[str, str]] = Counter()
    for key, value, header_list in dead_letters:
        headers = dict(header_list)
        topic = headers["cxmon-topic"].decode()
        position = (topic, int(headers["cxmon-partition"]), int(headers["cxmon-offset"]))
        # The headers point at the message as it was published: same key, same bytes.
        assert inputs[position] == (key, value)
        positions.add(position)
        letters[(topic, key, value)] += 1
        reason = Reason(headers["cxmon-reason"].decode())
        refusal = outcome(schemas[topic].decode, value)
        assert isinstance(refusal, InvalidRecord)
        assert reason is refusal.reason
        assert_refusal_is_explained(
            schemas[topic], InvalidRecord(reason, headers["cxmon-error"].decode())
        )
        reasons[(topic, reason.value)] += 1
    assert len(positions) == len(dead_letters), "each bad message is dead-lettered once"
    assert letters == Counter((topic_of(deployment, p.schema), p.key, p.value) for p in bad)
    for (topic, code), count in reasons.items():
        assert metric(values, "cxmon_dead_letters_total", topic=topic, reason=code) == count
    assert metric(values, "cxmon_duplicates_total") == 0

    assert worker.process.poll() is None
    assert metric(read_metrics(worker.web_port), "cxmon_records_total") == len(probes)


def answer_probe(index: int, comment: str) -> Probe:
    """A survey answer of the recent past, good unless its comment is over the limit."""
    answer_id = f"size-{index}"
    doc = {
        "answer_id": answer_id,
        "answered_at": LIVE_START_MS + index,
        "customer_id": "c-1",
        "touchpoint": "checkout.payment",
        "metric": "nps",
        "score": 9,
        "comment": comment,
    }
    good = len(comment) <= MAX_COMMENT_LENGTH
    return Probe(ANSWERS, "size", b"c-1", dump(doc), good, answer_id)


@pytest.mark.broker
@pytest.mark.parametrize(
    "bad",
    [
        # Once crashed the worker: its bytes went into the batch checkpoint, in base64.
        pytest.param([answer_probe(0, "x" * 800_000)], id="800kB"),
        # Once over Faust's default request limit (1,000,000 bytes) even as a dead letter.
        pytest.param([answer_probe(0, "x" * 1_040_000)], id="1MB"),
    ],
)
def test_bad_messages_up_to_the_size_limit_do_not_stop_the_worker(
    deployment: Deployment, bad: list[Probe]
) -> None:
    """Each message fits the producer's 1 MB request limit, as published; the worker must
    survive its dead letters (a fix may shorten them, so their bytes are not compared)."""
    good = answer_probe(len(bad), "behind the big ones")
    worker, _ = feed_a_worker(deployment, [*bad, good])
    assert worker.process.poll() is None
