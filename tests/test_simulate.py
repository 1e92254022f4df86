"""Tests of the deterministic journey simulator (streams.commands.simulate)."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from streams.commands.simulate import _COMMENTS, SimulatedRecord, SimulationConfig, generate

SHANGHAI = timezone(timedelta(hours=8))
START = int(datetime(2026, 11, 22, 8, 0, tzinfo=SHANGHAI).timestamp() * 1000)
HOUR = 3_600_000
DAY = 24 * HOUR

# The brief's catalogue: touchpoint -> (allowed channels, stage, direction, category)
CATALOG: dict[str, tuple[frozenset[str], str, str, str | None]] = {
    "douyin.ad": (frozenset({"social"}), "awareness", "inbound", None),
    "xiaohongshu.note": (frozenset({"social"}), "awareness", "inbound", None),
    "web.product_page": (frozenset({"web"}), "interest", "inbound", None),
    "mini_program.product": (frozenset({"mini_program"}), "interest", "inbound", None),
    "app.login": (frozenset({"app"}), "intent", "inbound", None),
    "app.cart": (frozenset({"app"}), "intent", "inbound", None),
    "checkout.payment": (frozenset({"app", "mini_program"}), "purchase", "inbound", None),
    "store.visit": (frozenset({"store"}), "purchase", "inbound", None),
    "order.confirmation": (frozenset({"sms"}), "purchase", "outbound", "transactional"),
    "delivery.tracking": (frozenset({"app"}), "use", "inbound", None),
    "call_center.support": (frozenset({"call_center"}), "service", "inbound", None),
    "marketing.sms": (frozenset({"sms"}), "retention", "outbound", "marketing"),
    "marketing.email": (frozenset({"email"}), "retention", "outbound", "marketing"),
    "marketing.push": (frozenset({"app_push"}), "retention", "outbound", "marketing"),
    "wechat.official_account": (frozenset({"wechat"}), "retention", "outbound", "marketing"),
}
EVENT_FIELDS = {
    "event_id",
    "occurred_at",
    "customer_id",
    "contact",
    "touchpoint",
    "channel",
    "direction",
    "category",
    "stage",
    "outcome",
    "duration_ms",
    "attributes",
}
CONTACT_TYPES = {"phone", "email", "wechat_openid", "app_user"}
OUTCOMES = {"success", "failure", "abandoned"}
RANGES = {"nps": (0, 10), "csat": (1, 5), "ces": (1, 7)}
SURVEYED = {
    ("checkout.payment", "nps"),
    ("call_center.support", "csat"),
    ("call_center.support", "ces"),
    ("delivery.tracking", "csat"),
    ("app.login", "ces"),
}


class Invalid(Exception):
    """A record the contract sends to dead letters."""


def parse_time(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not isinstance(value, str):
        raise Invalid("timestamp type")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise Invalid("timestamp") from exc
    if parsed.tzinfo is None:
        raise Invalid("timestamp without offset")
    return round(parsed.timestamp() * 1000)


def who(value: dict[str, Any]) -> str:
    """The Kafka key the record should have: customer id, else contact `type:value`."""
    customer = value.get("customer_id")
    if isinstance(customer, str) and customer:
        return customer
    contact = value.get("contact")
    if not isinstance(contact, dict):
        raise Invalid("neither customer_id nor contact")
    if contact.get("type") not in CONTACT_TYPES or not isinstance(contact.get("value"), str):
        raise Invalid("contact")
    return f"{contact['type']}:{contact['value']}"


def check_event(value: dict[str, Any]) -> int:
    if not isinstance(value.get("event_id"), str) or not value["event_id"]:
        raise Invalid("event_id")
    at = parse_time(value.get("occurred_at"))
    who(value)
    spec = CATALOG.get(value.get("touchpoint", ""))
    if spec is None:
        raise Invalid("touchpoint")
    channels, stage, direction, category = spec
    if value.get("channel") not in channels:
        raise Invalid("channel")
    if value.get("direction", "inbound") != direction:
        raise Invalid("direction")
    default_category = "marketing" if direction == "outbound" else None
    if value.get("category", default_category) != category:
        raise Invalid("category")
    if value.get("stage", stage) != stage:
        raise Invalid("stage")
    if "outcome" in value and value["outcome"] not in OUTCOMES:
        raise Invalid("outcome")
    duration = value.get("duration_ms", 0)
    if not isinstance(duration, int | float) or duration < 0:
        raise Invalid("duration_ms")
    if not isinstance(value.get("attributes", {}), dict):
        raise Invalid("attributes")
    return at


def check_answer(value: dict[str, Any]) -> int:
    if not isinstance(value.get("answer_id"), str) or not value["answer_id"]:
        raise Invalid("answer_id")
    at = parse_time(value.get("answered_at"))
    who(value)
    metric = value.get("metric")
    if (value.get("touchpoint"), metric) not in SURVEYED:
        raise Invalid("touchpoint/metric")
    low, high = RANGES[str(metric)]
    score = value.get("score")
    if not isinstance(score, int) or isinstance(score, bool) or not low <= score <= high:
        raise Invalid("score")
    if "comment" in value and not isinstance(value["comment"], str):
        raise Invalid("comment")
    return at


def check_link(value: dict[str, Any]) -> int:
    if "customer_id" not in value or "contact" not in value:
        raise Invalid("link")
    return parse_time(value.get("linked_at"))


def decode(record: SimulatedRecord) -> dict[str, Any]:
    """The parsed value of a valid record; raises Invalid (with the reason) otherwise."""
    try:
        text = record.value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Invalid("utf-8") from exc
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise Invalid("json") from exc
    if not isinstance(value, dict):
        raise Invalid("not an object")
    if record.role == "touchpoint_events":
        check_event(value)
    elif record.role == "survey_answers":
        check_answer(value)
    else:
        check_link(value)
    return value


def record_id(value: dict[str, Any]) -> str:
    return str(value.get("event_id") or value.get("answer_id"))


def nps(scores: list[int]) -> float:
    promoters = sum(1 for s in scores if s >= 9)
    detractors = sum(1 for s in scores if s <= 6)
    return 100.0 * (promoters - detractors) / len(scores)


def run(**changes: Any) -> list[SimulatedRecord]:
    return list(generate(SimulationConfig(start_ms=START, **changes)))


@pytest.fixture(scope="module")
def plain() -> list[SimulatedRecord]:
    """Two hours of the default scale, with three over-messaged customers."""
    return run(over_messaged_customers=3)


@pytest.fixture(scope="module")
def long_span() -> list[SimulatedRecord]:
    """26 h (it covers 23:30 Shanghai and a whole day) of a small, busy customer base."""
    return run(
        seed=11,
        customers=200,
        journeys_per_hour=800,
        duration_ms=26 * HOUR,
        over_messaged_customers=4,
    )


def test_same_config_gives_the_same_bytes() -> None:
    config = SimulationConfig(
        start_ms=START,
        customers=300,
        journeys_per_hour=2_000,
        duration_ms=HOUR,
        over_messaged_customers=2,
        degrade_touchpoint="app.login",
        degrade_from_ms=START + HOUR // 2,
        break_from_ms=START + HOUR // 3,
        duplicate_ratio=0.05,
        invalid_ratio=0.05,
    )
    first = list(generate(config))
    assert len(first) > 1_000
    assert first == list(generate(config))
    other = list(generate(replace(config, seed=8)))
    assert [r.value for r in other] != [r.value for r in first]


def test_every_record_follows_the_contract(plain: list[SimulatedRecord]) -> None:
    roles = Counter(r.role for r in plain)
    assert roles["touchpoint_events"] > 10_000
    assert roles["survey_answers"] > 500
    assert roles["identity_links"] > 0
    ids: set[str] = set()
    for record in plain:
        value = decode(record)  # raises on anything invalid
        if record.role == "identity_links":
            contact = value["contact"]
            assert record.key == f"{contact['type']}:{contact['value']}".encode()
            assert parse_time(value["linked_at"]) == record.occurred_at_ms
            continue
        if record.role == "touchpoint_events":
            assert record.key == who(value).encode()
            assert parse_time(value["occurred_at"]) == record.occurred_at_ms
        else:
            assert record.key == value["customer_id"].encode()
            assert parse_time(value["answered_at"]) == record.occurred_at_ms
        assert record_id(value) not in ids  # no duplicates unless asked for
        ids.add(record_id(value))
        assert START <= record.occurred_at_ms < START + 2 * HOUR


def test_records_use_all_touchpoints_and_both_time_formats(plain: list[SimulatedRecord]) -> None:
    touchpoints: Counter[str] = Counter()
    formats: Counter[type] = Counter()
    contact_only = outbound = extra = 0
    for record in plain:
        if record.role != "touchpoint_events":
            continue
        value = decode(record)
        touchpoints[value["touchpoint"]] += 1
        formats[type(value["occurred_at"])] += 1
        if value.get("direction") == "outbound":
            outbound += 1
            contact_only += "customer_id" not in value
        extra += bool(set(value) - EVENT_FIELDS)
    # call_center.support and marketing follow purchases by hours; all the rest are frequent
    assert set(touchpoints) == set(CATALOG)
    assert formats[str] > 0.4 * sum(formats.values())
    assert formats[int] > 0.2 * sum(formats.values())
    assert 0.08 < contact_only / outbound < 0.25
    assert extra > 0


def test_operational_signals_are_realistic(plain: list[SimulatedRecord]) -> None:
    outcomes: dict[str, Counter[str]] = defaultdict(Counter)
    durations: dict[str, list[float]] = defaultdict(list)
    for record in plain:
        if record.role == "touchpoint_events":
            value = decode(record)
            outcomes[value["touchpoint"]][value.get("outcome", "")] += 1
            if "duration_ms" in value:
                durations[value["touchpoint"]].append(value["duration_ms"])
    payment = outcomes["checkout.payment"]
    assert 0.015 < payment["failure"] / payment.total() < 0.05
    assert 500 < statistics.median(durations["app.login"]) < 1_200
    slow = sum(1 for d in durations["web.product_page"] if d > 3_000)
    assert 0.01 < slow / len(durations["web.product_page"]) < 0.15


def test_records_are_in_event_time_order(plain: list[SimulatedRecord]) -> None:
    times = [r.occurred_at_ms for r in plain]
    assert times == sorted(times)


def test_identity_links_precede_contact_only_use(long_span: list[SimulatedRecord]) -> None:
    linked: dict[str, str] = {}
    contact_only = 0
    for record in long_span:
        value = decode(record)
        if record.role == "identity_links":
            linked[record.key.decode()] = value["customer_id"]
        elif "customer_id" not in value:
            contact_only += 1
            assert record.key.decode() in linked, record
    assert contact_only > 100


def test_survey_answers_are_realistic(plain: list[SimulatedRecord]) -> None:
    pools = {
        sentiment: {
            text
            for (_, tone), by_language in _COMMENTS.items()
            if tone == sentiment
            for texts in by_language.values()
            for text in texts
        }
        for sentiment in ("pos", "neg")
    }
    scores: dict[tuple[str, str], list[int]] = defaultdict(list)
    comments = 0
    locales: Counter[str] = Counter()
    answers = [decode(r) for r in plain if r.role == "survey_answers"]
    for answer in answers:
        scores[(answer["touchpoint"], answer["metric"])].append(answer["score"])
        if "comment" in answer:
            comments += 1
            locales[answer.get("locale", "")] += 1
            metric, score = answer["metric"], answer["score"]
            negative = (
                score <= 6 if metric == "nps" else score <= 2 if metric == "csat" else score >= 5
            )
            positive = (
                score >= 9 if metric == "nps" else score >= 4 if metric == "csat" else score <= 2
            )
            if negative:
                assert answer["comment"] in pools["neg"]
            if positive:
                assert answer["comment"] in pools["pos"]
    assert 30 <= nps(scores[("checkout.payment", "nps")]) <= 50
    assert len(scores[("checkout.payment", "nps")]) > 300
    assert 0.25 < comments / len(answers) < 0.35
    assert {"zh-CN", "zh-TW", "en"} <= set(locales)
    texts = "".join(a.get("comment", "") for a in answers)
    assert "付款很顺利" in texts or "登录很快" in texts  # simplified
    assert any(c in texts for c in "順麼後們遲點處問題")  # traditional


def test_degraded_touchpoint_is_unambiguous() -> None:
    degrade_from = START + HOUR
    records = run(degrade_touchpoint="checkout.payment", degrade_from_ms=degrade_from)
    before: list[int] = []
    after: list[int] = []
    failures: dict[bool, Counter[str]] = {False: Counter(), True: Counter()}
    durations: dict[bool, list[int]] = {False: [], True: []}
    for record in records:
        value = decode(record)
        if value.get("touchpoint") != "checkout.payment":
            continue
        late = record.occurred_at_ms >= degrade_from
        if record.role == "survey_answers":
            (after if late else before).append(value["score"])
        else:
            failures[late][value["outcome"]] += 1
            durations[late].append(value["duration_ms"])
    assert len(before) > 200
    assert len(after) > 200
    assert nps(before) > 20
    assert nps(after) < 0
    assert nps(after[-200:]) < -20  # any recent window of a few hundred answers is clear
    rate_after = failures[True]["failure"] / failures[True].total()
    assert 0.18 < rate_after < 0.32
    ratio = statistics.median(durations[True]) / statistics.median(durations[False])
    assert 2.4 < ratio < 3.6


def marketing_by_customer(
    records: list[SimulatedRecord],
) -> dict[str, list[tuple[int, str]]]:
    """Counted (marketing) outbound messages per resolved customer: (time, channel)."""
    linked: dict[str, str] = {}
    sent: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for record in records:
        value = decode(record)
        if record.role == "identity_links":
            linked[record.key.decode()] = value["customer_id"]
            continue
        if record.role != "touchpoint_events" or value.get("direction") != "outbound":
            continue
        if value.get("category", "marketing") != "marketing":
            continue
        customer = value.get("customer_id") or linked[who(value)]
        sent[customer].append((record.occurred_at_ms, value["channel"]))
    return sent


def most_in_a_day(times: list[int]) -> int:
    times = sorted(times)
    best = start = 0
    for end, t in enumerate(times):
        while t - times[start] >= DAY:
            start += 1
        best = max(best, end - start + 1)
    return best


def test_over_messaged_customers_break_the_policy(long_span: list[SimulatedRecord]) -> None:
    sent = marketing_by_customer(long_span)
    flooded = sorted(c for c in sent if c.startswith("c-flood-"))
    assert flooded == [f"c-flood-{k}" for k in range(1, 5)]
    for customer in flooded:
        messages = sent[customer]
        assert most_in_a_day([t for t, _ in messages]) > 5
        per_channel = Counter(channel for _, channel in messages)
        assert max(per_channel.values()) >= 4
        assert set(per_channel) == {"sms", "email", "app_push", "wechat"}
        burst = [t for t, _ in messages if START + 10 * 60_000 <= t < START + 70 * 60_000]
        assert len(burst) == 8
    late = [
        datetime.fromtimestamp(t / 1000, SHANGHAI).strftime("%H:%M") for t, _ in sent["c-flood-1"]
    ]
    assert "23:30" in late


def test_normal_traffic_keeps_the_messaging_policy(long_span: list[SimulatedRecord]) -> None:
    sent = marketing_by_customer(long_span)
    normal = {c: m for c, m in sent.items() if not c.startswith("c-flood-")}
    assert sum(len(m) for m in normal.values()) > 200  # the policy is tested under load
    for messages in normal.values():
        assert most_in_a_day([t for t, _ in messages]) <= 5
        for channel in {c for _, c in messages}:
            assert most_in_a_day([t for t, c in messages if c == channel]) <= 3
        for t, _ in messages:  # and nothing in quiet hours (22:00-08:00 Shanghai)
            assert 8 <= datetime.fromtimestamp(t / 1000, SHANGHAI).hour < 22


def test_duplicates_are_byte_identical_and_about_the_requested_share() -> None:
    records = run(customers=800, journeys_per_hour=3_000, duplicate_ratio=0.1)
    first_seen: dict[str, SimulatedRecord] = {}
    duplicates = 0
    for record in records:
        if record.role == "identity_links":
            continue
        value = decode(record)
        key = f"{record.role}:{record_id(value)}"
        if key in first_seen:
            original = first_seen[key]
            assert record.value == original.value
            assert record.key == original.key
            assert 0 <= record.occurred_at_ms - original.occurred_at_ms <= 30_000
            duplicates += 1
        else:
            first_seen[key] = record
    assert 0.085 < duplicates / len(first_seen) < 0.115


def test_invalid_records_are_about_the_requested_share_and_of_every_kind() -> None:
    records = run(customers=800, journeys_per_hour=3_000, invalid_ratio=0.05)
    reasons: Counter[str] = Counter()
    valid = 0
    for record in records:
        try:
            decode(record)
        except Invalid as exc:
            reasons[str(exc)] += 1
        else:
            valid += record.role != "identity_links"
    assert 0.04 < reasons.total() / valid < 0.06
    assert {"utf-8", "json", "not an object", "event_id", "score", "timestamp"} <= set(reasons)
    assert set(reasons) == {"utf-8", "json", "not an object", "event_id", "score", "timestamp"}


def test_bad_config_is_refused() -> None:
    with pytest.raises(ValueError, match="duplicate_ratio"):
        SimulationConfig(start_ms=START, duplicate_ratio=1.5)
    with pytest.raises(ValueError, match="unknown touchpoint"):
        SimulationConfig(start_ms=START, degrade_touchpoint="nowhere")


def test_degradation_that_ends_lets_the_touchpoint_recover() -> None:
    degrade_from, degrade_until = START + HOUR // 2, START + HOUR
    records = run(
        degrade_touchpoint="checkout.payment",
        degrade_from_ms=degrade_from,
        degrade_until_ms=degrade_until,
    )
    scores: dict[str, list[int]] = {"before": [], "during": [], "after": []}
    for record in records:
        value = decode(record)
        if record.role != "survey_answers" or value.get("touchpoint") != "checkout.payment":
            continue
        at = record.occurred_at_ms
        phase = "before" if at < degrade_from else "during" if at < degrade_until else "after"
        scores[phase].append(value["score"])
    assert nps(scores["during"]) < 0
    assert nps(scores["before"]) > 20
    assert nps(scores["after"]) > 20


def cart_to_checkout_share(records: list[SimulatedRecord], start_ms: int, end_ms: int) -> float:
    """Of the carts filled in [start, end), the share whose customer paid within 10 minutes."""
    visits: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        if record.role == "touchpoint_events":
            doc = orjson.loads(record.value)
            if "customer_id" in doc:
                visits[doc["customer_id"]][doc["touchpoint"]].append(record.occurred_at_ms)
    carts = paid = 0
    for customer in visits.values():
        for cart in customer["app.cart"]:
            if start_ms <= cart < end_ms:
                carts += 1
                paid += any(cart <= pay <= cart + 600_000 for pay in customer["checkout.payment"])
    return paid / carts


def test_a_broken_journey_loses_half_the_customers_between_cart_and_checkout() -> None:
    config = SimulationConfig(
        start_ms=START,
        duration_ms=3 * HOUR,
        break_from_ms=START + HOUR,
        break_until_ms=START + 2 * HOUR,
    )
    records = list(generate(config))
    assert records == list(generate(config)), "same seed, same break"
    before = cart_to_checkout_share(records, START, START + HOUR)
    during = cart_to_checkout_share(records, START + HOUR, START + 2 * HOUR - 600_000)
    after = cart_to_checkout_share(records, START + 2 * HOUR, START + 3 * HOUR - 600_000)
    # Normally about 60% of carts go on to pay (goes_on = 0.6); the break halves that.
    assert 0.55 < before < 0.7
    assert 0.25 < during < 0.4
    assert 0.55 < after < 0.7
