"""The public contract in docs/ held to the code: schemas, examples, AsyncAPI and decoders agree."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import orjson
import pytest
import yaml
from aiokafka.structs import ConsumerRecord
from hypothesis import HealthCheck, given, settings
from jsonschema import Draft202012Validator

from agents.stages.ingest import MAX_DEAD_LETTER_BYTES, MAX_ERROR_DETAIL, Ingest
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
    encode_alert,
    parse_timestamp_ms,
)
from models.records import (
    CHANNELS as CONTRACT_CHANNELS,
)
from models.records import (
    OTHER_CHANNEL,
    Alert,
    AlertKind,
    AlertStatus,
    Category,
    Direction,
    IdentityLink,
    Outcome,
    Severity,
    Stage,
    SurveyAnswer,
    SurveyMetric,
    TouchpointEvent,
)
from streams.catalog import Detector, ScoreMetric, parse_catalog
from streams.commands.simulate import SimulationConfig, generate
from streams.core.alerts import fingerprint
from streams.core.consistency import stage_rules
from streams.core.fatigue import Fatigue
from streams.core.gaps import GapState, RulesState
from streams.core.journeys import BreakState, BreakWindows
from streams.core.journeys import Outcome as Attempt
from streams.core.messaging import CustomerMessages, FrequencyPolicy, Message, message_digest
from streams.core.notify import NotifyLinks, describe, to_alertmanager
from streams.core.scores import Tally
from streams.core.timeliness import Timeliness
from streams.core.touchpoints import TouchpointState, TouchpointWindows
from streams.kafka.topics import COMPACTED, input_topics
from streams.settings import Settings, Topics
from tests.schema_instances import instances

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
CONTRACT = DOCS / "contract.md"
ASYNCAPI = DOCS / "asyncapi.yaml"
PARSER_DIR = REPO / "tests" / "asyncapi"
DIALECT = "https://json-schema.org/draft/2020-12/schema"
# How the schemas end a pattern: `$` would let Python's re accept a trailing newline.
END = "(?![\\s\\S])"

Decoder = Callable[[bytes], TouchpointEvent | SurveyAnswer | IdentityLink]
DECODERS: dict[str, Decoder] = {
    "touchpoint-event": decode_touchpoint_event,
    "survey-answer": decode_survey_answer,
    "identity-link": decode_identity_link,
}
RECORDS: dict[str, type] = {
    "touchpoint-event": TouchpointEvent,
    "survey-answer": SurveyAnswer,
    "identity-link": IdentityLink,
}
SCHEMAS = (*DECODERS, "alert")
# Each AsyncAPI channel and the setting that names its topic.
CHANNELS = {
    "touchpointEvents": "touchpoint_events",
    "surveyAnswers": "survey_answers",
    "identityLinks": "identity_links",
    "alerts": "alerts",
    "deadLetters": "dead_letters",
}
LINKS = NotifyLinks("https://runbooks.example/runbook.md", "http://grafana.example:3000")
NOW_MS = 1_795_400_000_000
T0 = 1_795_305_600_000  # 2026-11-22T00:00:00Z, 08:00 in Shanghai
MINUTE = 60_000
STEP = 5 * MINUTE
TOUCHPOINT = "checkout.payment"


@cache
def schema(name: str) -> dict[str, Any]:
    return cast(dict[str, Any], json.loads((DOCS / "schemas" / f"{name}.schema.json").read_text()))


@cache
def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(schema(name))


@cache
def strict_alert_validator() -> Draft202012Validator:
    """The alert schema that refuses any field it does not name: the figures the code emits
    must all be in the contract, though consumers are told to ignore unknown ones."""
    return Draft202012Validator({**schema("alert"), "unevaluatedProperties": False})


@cache
def asyncapi() -> dict[str, Any]:
    return cast(dict[str, Any], yaml.safe_load(ASYNCAPI.read_text()))


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_json(raw: bytes) -> Any:
    """The document as an RFC 8259 parser reads it: UTF-8 only, no NaN or Infinity."""
    return json.loads(raw.decode("utf-8"), parse_constant=_not_json)


def schema_accepts(name: str, raw: bytes) -> bool:
    """Bytes no JSON parser reads are refused before any schema is applied."""
    try:
        document = strict_json(raw)
    except ValueError:
        return False
    return validator(name).is_valid(document)


def refusal(name: str, raw: bytes) -> InvalidRecord:
    with pytest.raises(InvalidRecord) as caught:
        DECODERS[name](raw)
    return caught.value


def encode(document: object) -> bytes:
    # json, not orjson: it writes integers beyond 64 bits, as a producer in any language may.
    return json.dumps(document, ensure_ascii=False).encode()


def unanchored(pattern: str) -> str:
    assert pattern.startswith("^"), pattern
    assert pattern.endswith(END), pattern
    return pattern[1 : -len(END)]


# --- the schemas against the code's constants, enums and records ----------------------------


@pytest.mark.parametrize("name", SCHEMAS)
def test_each_schema_is_a_valid_2020_12_schema(name: str) -> None:
    assert schema(name)["$schema"] == DIALECT
    Draft202012Validator.check_schema(schema(name))


def test_input_schemas_share_one_set_of_definitions() -> None:
    # Each file stands alone for its readers; the copies must not drift apart.
    first, *others = (schema(name)["$defs"] for name in DECODERS)
    assert all(other == first for other in others)
    assert schema("alert")["$defs"]["touchpoint"] == first["touchpoint"]


def test_the_schemas_hold_the_decoders_limits() -> None:
    defs = schema("touchpoint-event")["$defs"]
    assert defs["identifier"]["maxLength"] == MAX_ID_LENGTH
    assert unanchored(defs["touchpoint"]["pattern"]) == TOUCHPOINT_PATTERN.pattern
    assert unanchored(defs["channel"]["pattern"]) == CHANNEL_PATTERN.pattern
    epoch = defs["timestamp"]["oneOf"][0]
    assert (epoch["type"], epoch["minimum"], epoch["maximum"]) == ("integer", 0, MAX_EPOCH_MS)
    duration = schema("touchpoint-event")["properties"]["duration_ms"]
    assert (duration["minimum"], duration["maximum"]) == (0, MAX_DURATION_MS)
    answer = schema("survey-answer")
    assert answer["properties"]["comment"]["maxLength"] == MAX_COMMENT_LENGTH
    ranges = {
        branch["properties"]["metric"]["const"]: (
            branch["properties"]["score"]["minimum"],
            branch["properties"]["score"]["maximum"],
        )
        for branch in answer["allOf"][1]["oneOf"]
    }
    assert ranges == {metric.value: bounds for metric, bounds in SCORE_RANGES.items()}


def test_identifiers_are_blank_exactly_where_python_says_white_space() -> None:
    # The decoder strips with str.isspace; JSON Schema's \s differs between regex dialects,
    # so the schema spells the characters out. Every code point, so a new Python's Unicode
    # data cannot change one side alone.
    every = "".join(map(chr, range(sys.maxunicode + 1)))
    pattern = schema("touchpoint-event")["$defs"]["identifier"]["pattern"]
    blank_to_the_schema = re.sub(pattern, "", every)
    assert blank_to_the_schema == "".join(c for c in every if c.isspace())


def values(kind: type[Any]) -> list[str]:
    return [member.value for member in kind]


def test_enums_are_the_codes_the_decoder_and_the_alerts_use() -> None:
    event = schema("touchpoint-event")["properties"]
    assert event["direction"]["enum"] == [*values(Direction), None]
    assert event["category"]["enum"] == [*values(Category), None]
    assert event["stage"]["enum"] == [*values(Stage), None]
    assert event["outcome"]["enum"] == [*values(Outcome), None]
    assert schema("survey-answer")["properties"]["metric"]["enum"] == values(SurveyMetric)
    alert = schema("alert")
    assert sorted(alert["properties"]["kind"]["enum"]) == sorted(values(AlertKind))
    assert alert["properties"]["status"]["enum"] == values(AlertStatus)
    assert alert["properties"]["severity"]["enum"] == values(Severity)
    kinds = [
        alert["$defs"][part["$ref"].rsplit("/", 1)[1]]["properties"]["kind"]["const"]
        for part in alert["allOf"][1]["oneOf"]
    ]
    assert sorted(kinds) == sorted(values(AlertKind)), "every kind has its figures"
    degraded = alert["$defs"]["key_moment_degraded"]["properties"]
    assert degraded["detector"]["enum"] == values(Detector)
    assert alert["$defs"]["metric"]["enum"] == values(ScoreMetric)
    assert degraded["stage"]["enum"] == [*values(Stage), None]
    categories = alert["$defs"]["over_messaged"]["properties"]["by_category"]
    assert categories["propertyNames"]["enum"] == values(Category)
    inconsistent = alert["$defs"]["channel_inconsistent"]["properties"]
    assert inconsistent["stage"]["enum"] == values(Stage)
    assert inconsistent["channel"]["enum"] == [*CONTRACT_CHANNELS, OTHER_CHANNEL]


def wire_name(field_name: str) -> str:
    """A record's field as it is written: `occurred_at_ms` travels as `occurred_at`."""
    return field_name.removesuffix("_ms") if field_name.endswith("_at_ms") else field_name


@pytest.mark.parametrize("name", DECODERS)
def test_each_input_schema_names_exactly_the_records_fields(name: str) -> None:
    expected = {wire_name(f.name) for f in fields(RECORDS[name])}
    assert set(schema(name)["properties"]) == expected


def test_the_alert_schema_names_exactly_the_alerts_common_fields() -> None:
    expected = {wire_name(f.name) for f in fields(Alert)} - {"details"}
    assert set(schema("alert")["properties"]) == expected
    assert set(schema("alert")["required"]) == expected


# --- the examples of docs/contract.md and docs/asyncapi.yaml --------------------------------

EXAMPLE = re.compile(
    r"<!-- (?P<use>example|refused): (?P<schema>[a-z-]+)(?: (?P<reason>[a-z_]+))? -->\n"
    r"```json\n(?P<body>.*?)\n```",
    re.DOTALL,
)


def contract_examples(use: str) -> list[Any]:
    text = CONTRACT.read_text()
    return [
        pytest.param(m["schema"], m["reason"], m["body"], id=f"{m['schema']}-{number}")
        for number, m in enumerate(EXAMPLE.finditer(text))
        if m["use"] == use
    ]


def test_every_json_block_of_the_contract_is_a_checked_example() -> None:
    text = CONTRACT.read_text()
    assert text.count("```json") == len(list(EXAMPLE.finditer(text))), (
        "each ```json block needs an <!-- example: SCHEMA --> or "
        "<!-- refused: SCHEMA REASON --> line right above it"
    )
    named = {m["schema"] for m in EXAMPLE.finditer(text) if m["use"] == "example"}
    assert named == set(SCHEMAS), "one example at least per record"


def check_alert(document: dict[str, Any]) -> None:
    """What a consumer of cx.alerts relies on, beyond the schema."""
    errors = [e.message for e in strict_alert_validator().iter_errors(document)]
    assert errors == []
    kind = AlertKind(document["kind"])
    per_metric = (AlertKind.KEY_MOMENT_DEGRADED, AlertKind.NO_DATA)
    qualifiers = ["metric"] if kind in per_metric else []
    expected = fingerprint(kind, document["subject"], *(document[q] for q in qualifiers))
    assert document["fingerprint"] == expected
    starts_at_ms = parse_timestamp_ms(document["starts_at"], "starts_at")
    assert document["alert_id"] == f"{expected}-{starts_at_ms}-{document['status']}"
    notification = to_alertmanager(
        document, now_ms=NOW_MS, resend_ms=60_000, links=LINKS, pseudonym_key=b"k"
    )
    assert notification["labels"]["kind"] == document["kind"]


@pytest.mark.parametrize(("name", "reason", "body"), contract_examples("example"))
def test_contract_example_passes_its_schema_and_the_decoder(
    name: str, reason: str | None, body: str
) -> None:
    raw = body.encode()
    errors = [e.message for e in validator(name).iter_errors(strict_json(raw))]
    assert errors == []
    if name == "alert":
        check_alert(strict_json(raw))
    else:
        DECODERS[name](raw)


@pytest.mark.parametrize(("name", "reason", "body"), contract_examples("refused"))
def test_contract_refused_example_is_refused_by_both(name: str, reason: str, body: str) -> None:
    assert refusal(name, body.encode()).reason == Reason(reason)
    assert not schema_accepts(name, body.encode())


def asyncapi_examples() -> list[Any]:
    found = []
    for message_id, message in asyncapi()["components"]["messages"].items():
        for example in message.get("examples", []):
            found.append(pytest.param(message_id, example, id=f"{message_id}-{example['name']}"))
    return found


@pytest.mark.parametrize(("message_id", "example"), asyncapi_examples())
def test_asyncapi_example_passes_its_schema_and_the_decoder(
    message_id: str, example: dict[str, Any]
) -> None:
    # The AsyncAPI parser checks the document, not the examples of an AsyncAPI 3 message.
    message = asyncapi()["components"]["messages"][message_id]
    if message_id == "deadLetter":
        headers = example["headers"]
        header_schema = asyncapi()["components"]["schemas"]["deadLetterHeaders"]
        assert [e.message for e in Draft202012Validator(header_schema).iter_errors(headers)] == []
        topic = headers["cxmon-topic"]
        name = next(n for n in DECODERS if CHANNEL_OF_SCHEMA[n] == topic)
        error = refusal(name, example["payload"].encode())
        assert (error.reason.value, error.detail) == (
            headers["cxmon-reason"],
            headers["cxmon-error"],
        )
        assert not schema_accepts(name, example["payload"].encode())
        return
    name = Path(message["payload"]["$ref"]).name.removesuffix(".schema.json")
    payload = example["payload"]
    assert [e.message for e in validator(name).iter_errors(payload)] == []
    if name == "alert":
        check_alert(payload)
    else:
        DECODERS[name](encode(payload))


CHANNEL_OF_SCHEMA = {
    "touchpoint-event": Topics().touchpoint_events,
    "survey-answer": Topics().survey_answers,
    "identity-link": Topics().identity_links,
}


# --- the AsyncAPI document against the code, and the AsyncAPI project's parser ---------------


def test_asyncapi_channels_are_the_default_topics_and_their_records() -> None:
    document, defaults, settings_ = asyncapi(), Topics(), Settings()
    assert set(document["channels"]) == set(CHANNELS)
    assert set(CHANNELS.values()) == {f.name for f in fields(Topics)}
    compacted = {spec.name for spec in input_topics(settings_) if spec.config == COMPACTED}
    for channel_id, setting in CHANNELS.items():
        channel = document["channels"][channel_id]
        address = getattr(defaults, setting)
        assert channel["address"] == address
        kafka = channel["bindings"]["kafka"]
        assert kafka["partitions"] == settings_.partitions
        policy = ["compact"] if address in compacted else ["delete"]
        assert kafka["topicConfiguration"]["cleanup.policy"] == policy
        assert f"CXMON_TOPIC_{setting.upper()}" in document["info"]["description"]
        assert f"`{address}` | `CXMON_TOPIC_{setting.upper()}`" in CONTRACT.read_text()
    for name, topic in CHANNEL_OF_SCHEMA.items():
        channel_id = next(c for c, s in CHANNELS.items() if getattr(defaults, s) == topic)
        (message,) = document["channels"][channel_id]["messages"].values()
        ref = document["components"]["messages"][message["$ref"].rsplit("/", 1)[1]]
        assert ref["payload"]["$ref"] == f"./schemas/{name}.schema.json"


def dead_letter_headers(raw: bytes, error: InvalidRecord) -> dict[str, str]:
    """The headers the worker itself puts on a dead letter, from its own code."""
    record = ConsumerRecord(
        Topics().survey_answers, 3, 48213, 0, 0, b"c-20417", raw, None, 7, len(raw), []
    )
    worker = SimpleNamespace(
        sources=SimpleNamespace(saw=lambda *args: None),
        topology=SimpleNamespace(
            dead_letters=SimpleNamespace(get_topic_name=lambda: Topics().dead_letters)
        ),
    )
    send = Ingest._dead_letter(cast(Ingest, worker), record, error)
    assert send.topic == Topics().dead_letters
    assert send.key == b"c-20417", "the key as received"
    return {name: value.decode() for name, value in send.headers}


def test_dead_letter_headers_are_the_ones_the_worker_writes() -> None:
    declared = asyncapi()["components"]["schemas"]["deadLetterHeaders"]
    check = Draft202012Validator(declared)
    raw = b'{"answer_id": "ans-9d02", "metric": "nps", "score": 11}'
    small = dead_letter_headers(raw, InvalidRecord(Reason.OUT_OF_RANGE, "x" * 5_000))
    big = dead_letter_headers(
        b" " * (MAX_DEAD_LETTER_BYTES + 1), InvalidRecord(Reason.INVALID_JSON, "not JSON")
    )
    assert set(declared["required"]) == set(small)
    assert set(declared["properties"]) == set(small) | set(big)
    for headers in (small, big):
        assert [e.message for e in check.iter_errors(headers)] == []
    assert big["cxmon-original-size"] == str(MAX_DEAD_LETTER_BYTES + 1)
    assert declared["properties"]["cxmon-reason"]["enum"] == values(Reason)
    assert declared["properties"]["cxmon-error"]["maxLength"] == MAX_ERROR_DETAIL
    assert f"{MAX_DEAD_LETTER_BYTES:,}" in CONTRACT.read_text()
    assert f"{MAX_DEAD_LETTER_BYTES:,}" in ASYNCAPI.read_text()
    assert f"at most {MAX_ERROR_DETAIL:,} characters" in CONTRACT.read_text()


def anchor(heading: str) -> str:
    """The anchor a Markdown renderer gives a heading, as GitHub makes it."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_docs_link_to_files_of_the_repo_and_to_sections_of_the_contract() -> None:
    # A clone must stand alone: no link may leave the repository (../shared was one).
    sections = {anchor(h) for h in re.findall(r"^#+ (.+)$", CONTRACT.read_text(), re.M)}
    for page in (REPO / "README.md", *DOCS.glob("*.md")):
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            path, _, section = target.partition("#")
            if "://" in path or not (path or section):
                continue
            resolved = (page.parent / path).resolve() if path else page
            assert resolved.is_relative_to(REPO), f"{page.name} links out of the repo: {target}"
            assert resolved.exists(), f"{page.name}: {target} does not exist"
            if section and resolved == CONTRACT:
                assert section in sections, f"{page.name}: no section #{section} in the contract"


def test_the_contract_describes_every_field_and_figure() -> None:
    text = CONTRACT.read_text()
    names = {name for record in SCHEMAS for name in schema(record)["properties"]}
    alert_defs = schema("alert")["$defs"]
    names |= {name for kind in AlertKind for name in alert_defs[kind.value]["properties"]}
    assert sorted(name for name in names if f"`{name}`" not in text) == []


def test_the_contract_explains_every_refusal_reason() -> None:
    text = CONTRACT.read_text()
    for reason in Reason:
        assert f"| `{reason.value}` |" in text, reason


def parser_installed() -> bool:
    """The parser the lock file pins is in node_modules (none, or another: install)."""
    wanted = json.loads((PARSER_DIR / "package.json").read_text())["dependencies"]
    installed = PARSER_DIR / "node_modules" / "@asyncapi" / "parser" / "package.json"
    if not installed.exists():
        return False
    return bool(json.loads(installed.read_text())["version"] == wanted["@asyncapi/parser"])


@pytest.fixture(scope="module")
def node() -> str:
    """Node with the AsyncAPI parser of tests/asyncapi/package-lock.json, installed once."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("node (20 or newer) and npm are needed to run the AsyncAPI parser")
    if not parser_installed():
        # Exactly the locked versions; no install scripts: the parser needs none.
        subprocess.run(
            [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=PARSER_DIR,
            check=True,
            timeout=280,
        )
        assert parser_installed()
    return node


def test_asyncapi_document_passes_the_asyncapi_parser(node: str, tmp_path: Path) -> None:
    # A copy with one schema broken must fail: the parser really reads the referenced files.
    broken = tmp_path / "docs"
    shutil.copytree(DOCS, broken)
    answer = broken / "schemas" / "survey-answer.schema.json"
    answer.write_text(answer.read_text().replace('"type": "number"', '"type": "numeric"', 1))
    result = subprocess.run(
        [node, str(PARSER_DIR / "check.mjs"), str(ASYNCAPI), str(broken / "asyncapi.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report, failed = json.loads(result.stdout)
    # Information and hints (such as "3.1.0 is out") are fine; errors and warnings are not.
    problems = [d for d in report["diagnostics"] if d["severity"] <= 1]
    assert problems == []
    assert report["parsed"]
    assert report["version"] == "3.0.0"
    defaults = Topics()
    assert {c["id"]: c["address"] for c in report["channels"]} == {
        channel: getattr(defaults, setting) for channel, setting in CHANNELS.items()
    }
    actions = {o["id"]: (o["action"], o["channels"]) for o in report["operations"]}
    assert sorted(actions.values()) == sorted(
        ("send" if channel in ("alerts", "deadLetters") else "receive", [channel])
        for channel in CHANNELS
    )
    assert not failed["parsed"]
    assert any("properties.score.type" in d["path"] for d in failed["diagnostics"])


# --- generated records, realistic records, refusals -----------------------------------------

GENERATED = settings(
    max_examples=40,
    deadline=None,
    # The schemas' patterns are long; generating from them is slow on a busy machine.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@pytest.mark.parametrize("name", DECODERS)
def test_every_record_a_schema_accepts_the_decoder_accepts(name: str) -> None:
    @GENERATED
    @given(instances(schema(name)))
    def check(document: dict[str, Any]) -> None:
        raw = encode(document)
        try:
            DECODERS[name](raw)
        except InvalidRecord as exc:
            pytest.fail(f"the schema accepts, the decoder refuses ({exc.reason}): {exc.detail}")

    check()


# Alerts are bigger and slower to generate (four date-time patterns each): fewer of them.
@settings(GENERATED, max_examples=25)
@given(instances(schema("alert")))
def test_every_alert_the_schema_accepts_a_consumer_can_read(document: dict[str, Any]) -> None:
    # What the notifier does with each record of cx.alerts.
    notification = to_alertmanager(
        document, now_ms=NOW_MS, resend_ms=60_000, links=LINKS, pseudonym_key=b"k"
    )
    assert notification["startsAt"] <= notification["endsAt"]
    assert describe(document)


ROLES = {
    "touchpoint_events": "touchpoint-event",
    "survey_answers": "survey-answer",
    "identity_links": "identity-link",
}


def test_simulated_records_are_judged_alike_by_schema_and_decoder() -> None:
    """The simulator's valid records and its broken ones (the kinds it breaks them in)."""
    config = SimulationConfig(
        start_ms=T0,
        journeys_per_hour=600,
        duration_ms=40 * MINUTE,
        over_messaged_customers=1,
        invalid_ratio=0.05,
    )
    verdicts: dict[tuple[str, bool], int] = {}
    for record in generate(config):
        name = ROLES[record.role]
        try:
            DECODERS[name](record.value)
            decoded = True
        except InvalidRecord:
            decoded = False
        assert schema_accepts(name, record.value) == decoded, record.value[:300]
        verdicts[name, decoded] = verdicts.get((name, decoded), 0) + 1
    assert all(verdicts.get((name, True), 0) > 0 for name in DECODERS)
    assert verdicts.get(("touchpoint-event", False), 0) > 0


EVENT = {
    "event_id": "evt-1",
    "occurred_at": "2026-11-22T20:15:03+08:00",
    "customer_id": "c-1",
    "touchpoint": "checkout.payment",
    "channel": "app",
}
ANSWER = {
    "answer_id": "ans-1",
    "answered_at": 1_795_306_500_000,
    "customer_id": "c-1",
    "touchpoint": "checkout.payment",
    "metric": "nps",
    "score": 9,
}
LINK = {
    "contact": {"type": "phone", "value": "+8613800138000"},
    "customer_id": "c-1",
    "linked_at": "2026-11-22T09:00:00Z",
}
BASES: dict[str, dict[str, Any]] = {
    "touchpoint-event": EVENT,
    "survey-answer": ANSWER,
    "identity-link": LINK,
}
ABSENT = object()


def changed(name: str, **changes: object) -> bytes:
    """The base record of `name` with fields changed, or removed where given ABSENT."""
    document = {**BASES[name], **changes}
    return encode({k: v for k, v in document.items() if v is not ABSENT})


def with_tail(name: str, tail: bytes) -> bytes:
    """The base record with raw JSON text added before its closing brace."""
    return encode(BASES[name])[:-1] + b", " + tail + b"}"


E, A, L = "touchpoint-event", "survey-answer", "identity-link"

# For every reason the decoder refuses a record for, records the schema refuses too. A
# reason missing here and from OUTSIDE_THE_SCHEMA fails the test below.
REFUSALS: dict[Reason, list[tuple[str, bytes]]] = {
    Reason.INVALID_JSON: [
        (E, b'{"event_id": "evt-1", '),
        (A, b"{'answer_id': 'ans-1'}"),
        (L, encode(LINK).replace(b"+8613800138000", b"\xff\xfe")),
        (A, encode(ANSWER).replace(b'"score": 9', b'"score": NaN')),
        (E, b""),
    ],
    Reason.NOT_AN_OBJECT: [(E, encode([EVENT])), (A, b'"ans-1"'), (L, b"null"), (E, b"42")],
    Reason.MISSING_FIELD: [
        (E, changed(E, event_id=ABSENT)),
        (E, changed(E, occurred_at=None)),
        (E, changed(E, customer_id=ABSENT)),
        (A, changed(A, metric=ABSENT)),
        (A, changed(A, score=None)),
        (L, changed(L, contact=ABSENT)),
        (L, changed(L, contact={"type": "phone"})),
    ],
    Reason.INVALID_TYPE: [
        (E, changed(E, event_id=42)),
        (E, changed(E, attributes=["a"])),
        (E, changed(E, customer_id=ABSENT, contact="phone:+8613800138000")),
        (E, changed(E, direction=1)),
        (A, changed(A, score="9")),
        (A, changed(A, comment=5)),
        (L, changed(L, customer_id=["c-1"])),
    ],
    Reason.INVALID_VALUE: [
        (E, changed(E, event_id="   ")),
        (E, changed(E, event_id="\u3000\u2003")),
        (E, changed(E, touchpoint="checkout payment")),
        (E, changed(E, touchpoint="checkout.payment\n")),
        (E, changed(E, channel="SMS")),
        (E, changed(E, direction="sideways")),
        (E, changed(E, category="promo")),
        (E, changed(E, stage="checkout")),
        (E, changed(E, outcome="ok")),
        (A, changed(A, metric="stars")),
        (L, changed(L, contact={"type": "Phone", "value": "+8613800138000"})),
    ],
    Reason.OUT_OF_RANGE: [
        (A, changed(A, score=11)),
        (A, changed(A, metric="csat", score=0)),
        (A, changed(A, metric="ces", score=7.5)),
        (A, changed(A, comment="好" * (MAX_COMMENT_LENGTH + 1))),
        (E, changed(E, duration_ms=-1)),
        (E, changed(E, duration_ms=MAX_DURATION_MS + 1)),
        (E, changed(E, event_id="x" * (MAX_ID_LENGTH + 1))),
    ],
    Reason.INVALID_TIMESTAMP: [
        (E, changed(E, occurred_at="yesterday")),
        (E, changed(E, occurred_at="2026-11-22T08:15:00")),
        (E, changed(E, occurred_at="2026-02-30T08:15:00Z")),
        (E, changed(E, occurred_at=True)),
        (A, changed(A, answered_at=1_795_306_500_000_000)),
        (A, changed(A, answered_at=-1)),
        (A, changed(A, answered_at=1_795_306_500_000.5)),
        (L, changed(L, linked_at="1969-12-31T23:59:59Z")),
        (L, changed(L, linked_at={"ms": 1_795_306_500_000})),
    ],
}

# Reasons about when a record arrives, not what it holds: no schema of a record sees them.
OUTSIDE_THE_SCHEMA = {
    Reason.LATE: "older than the newest record before it on its partition, by more than grace",
    Reason.FUTURE: "ahead of the worker's clock by more than CXMON_MAX_FUTURE",
}


def test_every_refusal_reason_has_records_the_schema_refuses_or_is_outside_it() -> None:
    assert not set(REFUSALS) & set(OUTSIDE_THE_SCHEMA)
    missing = set(Reason) - set(REFUSALS) - set(OUTSIDE_THE_SCHEMA)
    assert not missing, f"a new reason needs refused records in REFUSALS: {sorted(missing)}"
    assert all(REFUSALS.values())


@pytest.mark.parametrize(
    ("reason", "name", "raw"),
    [
        pytest.param(reason, name, raw, id=f"{reason.value}-{number}")
        for reason, cases in REFUSALS.items()
        for number, (name, raw) in enumerate(cases)
    ],
)
def test_a_refused_record_is_refused_by_its_schema_too(
    reason: Reason, name: str, raw: bytes
) -> None:
    assert refusal(name, raw).reason is reason
    assert not schema_accepts(name, raw)


def test_late_and_future_refuse_records_the_schema_accepts() -> None:
    answer = decode_survey_answer(changed(A))
    assert schema_accepts(A, changed(A))
    timeliness = Timeliness(grace_ms=60_000, max_future_ms=300_000)
    with pytest.raises(InvalidRecord) as late:
        timeliness.check(answer, answer.answered_at_ms + 60_001, NOW_MS)
    with pytest.raises(InvalidRecord) as future:
        timeliness.check(answer, None, answer.answered_at_ms - 300_001)
    assert (late.value.reason, future.value.reason) == (Reason.LATE, Reason.FUTURE)


# Where schema and decoder cannot agree, each case pinned, as docs/contract.md lists them.
# Should the decoder change so a case agrees, drop it here and from the contract.
SCHEMA_ONLY = [
    # JSON Schema's integer accepts 1.0; the decoder wants an integer literal.
    pytest.param(A, changed(A, answered_at=1_795_306_500_000.0), Reason.INVALID_TIMESTAMP),
    # Free fields are not looked into by the schema; orjson refuses the whole record.
    pytest.param(E, with_tail(E, b'"attributes": {"big": 1e400}'), Reason.INVALID_JSON),
    pytest.param(L, with_tail(L, b'"note": "\\ud800"'), Reason.INVALID_JSON),
]
DECODER_ONLY = [
    pytest.param(L, changed(L, linked_at="1970-01-01T00:00:00.001Z"), id="year-1970"),
    pytest.param(L, changed(L, linked_at="2199-06-01T00:00:00Z"), id="year-2199"),
    pytest.param(E, changed(E, occurred_at="2026-11-22T08:15+08:00"), id="no-seconds"),
    pytest.param(E, changed(E, occurred_at="2026-11-22 08:15:00+08:00"), id="space"),
    pytest.param(E, changed(E, occurred_at="2026-11-22T08:15:00,5+08:00"), id="comma"),
]


@pytest.mark.parametrize(("name", "raw", "reason"), SCHEMA_ONLY)
def test_what_only_the_decoder_refuses(name: str, raw: bytes, reason: Reason) -> None:
    assert schema_accepts(name, raw)
    assert refusal(name, raw).reason is reason


@pytest.mark.parametrize(("name", "raw"), DECODER_ONLY)
def test_what_only_the_schema_refuses(name: str, raw: bytes) -> None:
    DECODERS[name](raw)
    assert not schema_accepts(name, raw)


# --- the alerts the monitor makes -------------------------------------------------------------


def nps(promoters: int, detractors: int) -> Tally:
    return Tally(promoters=promoters, detractors=detractors)


def csat(*scores: float) -> Tally:
    count, total = len(scores), sum(scores)
    return Tally(csat_count=count, csat_sum=total, csat_squares=sum(x * x for x in scores))


def failures(failed: int, outcomes: int) -> Tally:
    return Tally(events=outcomes, outcomes=outcomes, failures=failed)


def key_moment_alerts(moment: str, pattern: Sequence[Tally | None]) -> list[Alert]:
    """One key moment fed a tally per 5m step, judged after each, as a worker does."""
    catalog = parse_catalog(
        "scores: {window: 10m, step: 5m, grace: 1m}\n"
        f"touchpoints:\n  {TOUCHPOINT}: {{stage: purchase}}\n"
        f"key_moments:\n  - {{touchpoint: {TOUCHPOINT}, {moment}}}\n"
    )
    windows, state = TouchpointWindows(catalog, TOUCHPOINT), TouchpointState()
    alerts: list[Alert] = []
    for step, tally in enumerate(pattern):
        newest = T0 + step * STEP + 4 * MINUTE
        if tally is not None:
            assert windows.add(state, T0 + step * STEP, tally, newest)
        alerts += windows.advance(state, newest)
    return alerts


def messaging_alerts() -> list[Alert]:
    policy = FrequencyPolicy(
        parse_catalog(
            "messaging: {window: 24h, max_messages: 5, max_per_channel: 3,"
            " categories: [marketing],"
            ' quiet_hours: {start: "22:00", end: "08:00", timezone: "Asia/Shanghai"}}'
        ).messaging
    )
    alerts: list[Alert] = []
    sends = {
        "c-per-channel": [(T0 + 60 * MINUTE + n * MINUTE, "sms") for n in range(4)],
        "c-quiet": [(T0 + 15 * 60 * MINUTE, "email")],  # 23:00 in Shanghai
        "c-many": [
            (T0 + 60 * MINUTE + n * MINUTE, channel)
            for n, channel in enumerate(["sms", "email", "wechat", "app_push", "sms", "email"])
        ],
    }
    for customer, messages in sends.items():
        state = CustomerMessages()
        for number, (at, channel) in enumerate(messages):
            message = Message(
                at, channel, Category.MARKETING, message_digest(f"{customer}{number}")
            )
            policy.record(state, message)
            alert = policy.judge(state, customer, at)
            alerts += [] if alert is None else [alert]
        alerts += policy.advance(state, customer, messages[-1][0] + 25 * 60 * MINUTE)
    return alerts


def journey_alerts() -> list[Alert]:
    catalog = parse_catalog(
        "breaks:\n  - {from: app.cart, to: checkout.payment, within: 10m, max_rate: 0.4,"
        " recover_at: 0.3, window: 30m, step: 5m, min_samples: 4, severity: critical}\n"
    )
    windows, state = BreakWindows(catalog.breaks[0]), BreakState()
    journey = catalog.breaks[0].id

    def decided(minute: int, broken: int, converted: int, first: int) -> None:
        for number in range(broken + converted):
            attempt = Attempt(journey, T0 + minute * MINUTE, number < broken, first + number)
            assert windows.add(state, attempt)

    decided(1, broken=3, converted=1, first=0)
    alerts = windows.advance(state, T0 + 5 * MINUTE)
    decided(31, broken=0, converted=8, first=10)
    return alerts + windows.advance(state, T0 + 40 * MINUTE)


def consistency_alerts() -> list[Alert]:
    """The app's CSAT at 2 against the web's 4 for an hour, then at 4 too: fired, resolved."""
    catalog = parse_catalog(
        "touchpoints: {checkout.payment: {stage: purchase}}\n"
        "consistency:\n  - {stage: purchase, metric: csat, max_gap: 1, confidence: 0.95,"
        " window: 10m, step: 5m, min_samples: 4, severity: critical}\n"
    )
    (rules,) = stage_rules(catalog).values()
    state, alerts = RulesState(), []
    for step in range(6):
        at = T0 + step * 5 * MINUTE
        app_score = 2 if step < 3 else 4
        rules.add(state, at, "app", csat(app_score, app_score + 1, app_score, app_score + 1))
        rules.add(state, at, "web", csat(4, 5, 4, 5))
        alerts += [a for _, judged in rules.advance(state, at + 5 * MINUTE) for a in judged.alerts]
    return alerts


def fatigue_alerts() -> list[Alert]:
    """Messaged customers' CSAT at 2 against the others' 4, then at 4 too: fired, resolved."""
    (rule,) = parse_catalog(
        "fatigue:\n  - {metric: csat, messages: 3, max_gap: 1, window: 5m, step: 5m,"
        " min_samples: 4}\n"
    ).fatigue
    fatigue, state, alerts = Fatigue(rule), GapState(), []
    for step, score in enumerate((2, 4)):
        at = T0 + step * 5 * MINUTE
        fatigue.add(state, at, str(rule.messages), csat(score, score + 1, score, score + 1))
        fatigue.add(state, at, "0", csat(4, 5, 4, 5))
        alerts += fatigue.advance(state, at + 5 * MINUTE).alerts
    return alerts


def monitor_alerts() -> list[Alert]:
    """Alerts of every kind and every figure set, from the monitor's own pure core."""
    bad, good = nps(0, 4), nps(4, 0)
    short, on_line = nps(50, 50), nps(55, 45)
    return [
        # Fixed line, then silence: degraded and no_data, each firing and resolved.
        *key_moment_alerts(
            "metric: nps, below: 0, window: 10m, step: 5m, min_samples: 4,"
            " no_data_after: 30m, severity: critical",
            [bad, bad, *[None] * 10, good, None],
        ),
        # A drop from a baseline window.
        *key_moment_alerts(
            "metric: nps, drop: 30, baseline: 30m, recover_at: 10, window: 10m, step: 5m,"
            " min_samples: 4",
            [nps(3, 1)] * 8 + [nps(2, 2)] * 4 + [nps(3, 1)] * 3,
        ),
        # A rise over an EWMA baseline, with a confidence interval.
        *key_moment_alerts(
            "metric: failure_rate, rise_pct: 50, baseline: ewma, alpha: 0.5, window: 5m,"
            " step: 5m, min_samples: 10",
            [failures(n, 10) for n in (1, 2, 2, 3, 2, 2, 2)],
        ),
        # The two drift detectors.
        *key_moment_alerts(
            "metric: nps, below: 10, window: 5m, step: 5m, min_samples: 100,"
            " detector: cusum, slack: 0.5, limit: 1.75",
            [short, short, on_line, short, short, short, nps(80, 20), None],
        ),
        *key_moment_alerts(
            "metric: nps, below: 20, window: 5m, step: 5m, min_samples: 100,"
            " detector: ewma_chart, smoothing: 0.5, limit: 3",
            [short, short, nps(60, 40), short, short, short, nps(80, 20), None],
        ),
        *messaging_alerts(),
        *journey_alerts(),
        *consistency_alerts(),
        *fatigue_alerts(),
    ]


def test_every_alert_the_monitor_makes_passes_the_alert_schema() -> None:
    alerts = monitor_alerts()
    seen = {(alert.kind, alert.status) for alert in alerts}
    assert seen == {(kind, status) for kind in AlertKind for status in AlertStatus}, (
        "a new kind of alert needs a case here, and its figures in docs/schemas/alert"
    )
    figures = {name for alert in alerts for name in alert.details}
    for name in ("baseline_window", "baseline_windows", "baseline_samples", "statistic"):
        assert name in figures, f"no alert above shows {name}"
    breaches = {b for alert in alerts for b in alert.details.get("breaches", [])}
    assert breaches == {"max_messages", "max_per_channel", "quiet_hours"}
    for alert in alerts:
        check_alert(orjson.loads(encode_alert(alert)))
