"""The contact-pressure endpoint on real workers: answers from the table, routed to its owner."""

from __future__ import annotations

import re
import statistics
import time
import urllib.error
from collections.abc import Iterator

import orjson
import pytest

from models.decode import format_timestamp
from streams.commands.simulate import SimulatedRecord
from tests.harness import Deployment, WorkerProcess
from tests.services import get_json, get_text, wait_for

pytestmark = pytest.mark.broker

TEN_AM_SHANGHAI = 1_795_312_800_000  # 2026-11-22T10:00:00+08:00
MINUTE = 60_000
CUSTOMERS = [f"c-p{n}" for n in range(8)]


def outbound(customer: str, n: int, channel: str, category: str) -> SimulatedRecord:
    at = TEN_AM_SHANGHAI + n * MINUTE
    value = {
        "event_id": f"{customer}-m{n}",
        "occurred_at": at,
        "customer_id": customer,
        "touchpoint": f"marketing.{channel}",
        "channel": channel,
        "direction": "outbound",
        "category": category,
    }
    return SimulatedRecord("touchpoint_events", customer.encode(), orjson.dumps(value), at)


def messages() -> Iterator[SimulatedRecord]:
    """Customer c-pN gets N+1 marketing messages (three on sms at most) and one receipt."""
    for index, customer in enumerate(CUSTOMERS):
        for n in range(index + 1):
            yield outbound(customer, n, "sms" if n < 3 else "email", "marketing")
        yield outbound(customer, 30, "sms", "transactional")


def partitions_of(worker: WorkerProcess, topic: str) -> set[str]:
    """The partitions of `topic` the worker consumes, from its consumer-lag series."""
    metrics = get_text(f"http://127.0.0.1:{worker.web_port}/metrics")
    pattern = rf'cxmon_consumer_lag_records{{partition="(\d+)",topic="{re.escape(topic)}"}}'
    return set(re.findall(pattern, metrics))


def pressure(worker: WorkerProcess, customer: str, query: str) -> dict[str, object]:
    url = f"http://127.0.0.1:{worker.web_port}/customers/{customer}/pressure?{query}"
    answer: dict[str, object] = get_json(url)
    return answer


def test_pressure_is_answered_by_any_worker_from_the_owner_table(deployment: Deployment) -> None:
    first = deployment.start_worker("w1")
    # In event-time order, as producers publish: one more than a minute (the grace) behind
    # the newest record of its partition would be refused as late.
    records = sorted(messages(), key=lambda record: record.occurred_at_ms)
    deployment.publish(records)
    second = deployment.start_worker("w2")
    at = format_timestamp(TEN_AM_SHANGHAI + 60 * MINUTE).replace("+", "%2B")
    query = f"at={at}&channel=sms"

    def settled() -> bool:
        answers = [pressure(w, "c-p7", query) for w in (first, second)]
        return all(a["messages"] == 9 for a in answers)

    wait_for("both workers to answer with c-p7's nine messages", settled, timeout_s=90)
    # Each worker owns some of the customers' partitions: the rest it must ask the other for.
    topic = f"{deployment.name}.customer-messages"

    def split() -> list[set[str]] | None:
        owned = [partitions_of(w, topic) for w in (first, second)]
        return owned if all(owned) else None

    owned = wait_for("both workers to own customer partitions", split, timeout_s=60)
    assert not owned[0] & owned[1]
    for index, customer in enumerate(CUSTOMERS):
        answers = [pressure(w, customer, query) for w in (first, second)]
        assert answers[0] == answers[1], f"{customer}: the two workers disagree"
        counted = index + 1
        sms = min(counted, 3)
        expected_break = (["max_messages"] if counted >= 5 else []) + (
            ["max_per_channel"] if sms >= 3 else []
        )
        assert answers[0] == {
            "customer": customer,
            "at": "2026-11-22T03:00:00.000+00:00",
            "window": "24h",
            "messages": counted + 1,
            "counted": counted,
            "by_channel": {"sms": sms + 1, **({"email": counted - 3} if counted > 3 else {})},
            "by_category": {"marketing": counted, "transactional": 1},
            "limits": {"max_messages": 5, "max_per_channel": 3},
            "remaining": max(0, 5 - counted),
            "remaining_by_channel": {
                "sms": 3 - sms,
                **({"email": max(0, 3 - (counted - 3))} if counted > 3 else {}),
            },
            "quiet_hours_now": False,
            "would_break": expected_break,
            "allowed": not expected_break,
        }

    unknown = pressure(second, "c-never-messaged", query)
    assert (unknown["counted"], unknown["allowed"]) == (0, True)
    with pytest.raises(urllib.error.HTTPError) as refused:
        pressure(first, "c-p1", "category=spam")
    assert refused.value.code == 400
    assert b"category: 'spam' is not one of" in refused.value.read()

    # Measured, not asserted: how long a sending service waits, per worker asked.
    for worker in (first, second):
        took = []
        for customer in CUSTOMERS * 5:
            started = time.perf_counter()
            pressure(worker, customer, query)
            took.append((time.perf_counter() - started) * 1000)
        print(
            f"pressure via {worker.log_path.stem}: median {statistics.median(took):.1f} ms, "
            f"max {max(took):.1f} ms over {len(took)} requests"
        )
