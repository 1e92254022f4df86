"""`cxmon backtest` on files: hand-computed alerts, the same bytes every run, refusals."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.protocol.metadata import MetadataResponse_v0

from models.decode import InvalidRecord, parse_json_object
from streams.catalog import parse_catalog
from streams.commands.backtest import ROLE_TOPICS, default_warmup_ms, span_text
from streams.commands.cli import build_parser, simulation_config
from streams.commands.progress_bar import ProgressBar
from streams.commands.publish import UnroutableLine, route
from streams.commands.simulate import generate
from streams.kafka.history import known_partitions
from streams.kafka.topics import ensure_topics, input_topics
from tests.harness import Deployment
from tests.test_cli import REPO, cxmon

T0 = 1_794_787_200_000  # 2026-11-16T00:00:00Z
MINUTE = 60_000
FROM = "2026-11-16T01:00:00Z"
TO = "2026-11-16T03:00:00+00:00"

# One key moment (failure rate over 10-minute windows stepping by 5) and a 1-hour policy
# of at most 2 marketing messages: the default warm-up is the longest of them, 1h.
CATALOG = """\
scores: {window: 10m, step: 5m, grace: 1m}
key_moments:
  - touchpoint: checkout.payment
    metric: failure_rate
    above: 0.5
    window: 10m
    step: 5m
    min_samples: 4
    severity: critical
messaging:
  window: 1h
  max_messages: 2
  max_per_channel: 5
  categories: [marketing]
"""


def event(number: int, minute: float, outcome: str = "success", **fields: Any) -> bytes:
    doc = {
        "event_id": f"e{number}",
        "occurred_at": T0 + round(minute * MINUTE),
        "customer_id": f"buyer-{number}",
        "touchpoint": "checkout.payment",
        "channel": "app",
        "outcome": outcome,
    } | fields
    return orjson.dumps({name: value for name, value in doc.items() if value is not None})


def message(number: int, minute: float, **fields: Any) -> bytes:
    return event(
        number,
        minute,
        touchpoint="marketing.sms",
        channel="sms",
        direction="outbound",
        category="marketing",
        **fields,
    )


def hand_computed_lines() -> list[bytes]:
    """Minutes after T0; the span judged is [60, 180), read from 0 (the 1h warm-up).

    * checkout.payment: 4 successes at 30-33 (warm-up, no verdict against them), 4 failures
      at 70-73, 4 successes at 80-83. The window [65, 75) fails 4 of 4 > 0.5: FIRING at 75;
      [70, 80) still 4 of 4; [75, 85) 0 of 4: RESOLVED at 85.
    * c-1 gets marketing SMS at 90, 100 and (to its phone, linked two days earlier) 110:
      3 > 2 in the hour, FIRING at 110; the one of 90 leaves the hour at 150: RESOLVED.
    * c-2 gets 3 at 0, 5 and 10 (warm-up): its incident runs [10, 60) and is not reported.
    * skipped: one event a minute before the warm-up, one at --to; counted as invalid:
      not JSON, not an object, no id, an NPS of 11; one duplicate of a failure.
    """
    link = {"contact": {"type": "phone", "value": "+8613800000001"}, "customer_id": "c-1"}
    phone_only = {"customer_id": None, "contact": link["contact"]}
    return [
        *(event(n, 30 + n) for n in range(4)),
        *(event(10 + n, 70 + n, "failure") for n in range(4)),
        event(10, 70, "failure"),  # a duplicate: counted once
        *(event(20 + n, 80 + n) for n in range(4)),
        message(30, 90, customer_id="c-1"),
        message(31, 100, customer_id="c-1"),
        message(32, 110, **phone_only),
        orjson.dumps(link | {"linked_at": "2026-11-14T00:00:00Z"}),
        *(message(40 + n, 5 * n, customer_id="c-2") for n in range(3)),
        event(50, -1, "failure"),
        event(51, 180, "failure"),
        b"",  # blank lines are not records
        b"not json",
        b"[1, 2]",
        b'{"hello": "world", "occurred_at": "2026-11-16T01:30:00Z"}',
        orjson.dumps(
            {
                "answer_id": "a1",
                "answered_at": T0 + 95 * MINUTE,
                "customer_id": "c-9",
                "touchpoint": "checkout.payment",
                "metric": "nps",
                "score": 11,
            }
        ),
    ]


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(CATALOG)
    records = tmp_path / "records.jsonl"
    records.write_bytes(b"\n".join(hand_computed_lines()) + b"\n")
    return catalog, records


def backtest(
    catalog: Path, records: Path, *extra: str, start: str = FROM
) -> subprocess.CompletedProcess[str]:
    args = ["--catalog", str(catalog), "--from", start, "--to", TO, "--input", str(records)]
    return cxmon("backtest", *args, *extra)


def written(tmp_path: Path, catalog_text: str, lines: list[bytes], *, to: str) -> list[str]:
    """The catalog and the records as files, and the backtest's arguments over [FROM, to)."""
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(catalog_text)
    records = tmp_path / "records.jsonl"
    records.write_bytes(b"\n".join(lines) + b"\n")
    return ["--catalog", str(catalog), "--from", FROM, "--to", to, "--input", str(records)]


def backtest_json(args: list[str]) -> Any:
    done = cxmon("backtest", *args, "--json")
    assert done.returncode == 0, done.stderr
    return orjson.loads(done.stdout)


def at(minute: int) -> str:
    hours, minutes = divmod(minute, 60)
    return f"2026-11-16T{hours:02d}:{minutes:02d}:00.000+00:00"


def test_a_small_file_fires_and_resolves_exactly_the_hand_computed_alerts(
    files: tuple[Path, Path],
) -> None:
    done = backtest(*files, "--json")
    assert done.returncode == 0, done.stderr
    report = orjson.loads(done.stdout)
    assert report["from"] == at(60)
    assert report["to"] == at(180)
    assert report["warmup"] == "1h00m"
    got = [
        (a["kind"], a["status"], a["subject"], a["starts_at"], a["ends_at"], a["observed"])
        for a in report["alerts"]
    ]
    assert got == [
        ("key_moment_degraded", "firing", "checkout.payment", at(75), None, 1.0),
        ("key_moment_degraded", "resolved", "checkout.payment", at(75), at(85), 0.0),
        ("over_messaged", "firing", "c-1", at(110), None, 3.0),
        ("over_messaged", "resolved", "c-1", at(110), at(150), 2.0),
    ]
    degraded = report["alerts"][0]
    assert degraded["threshold"] == 0.5
    assert degraded["samples"] == 4
    assert degraded["window"] == "10m"
    # Wilson 95% interval of 4 failures in 4: (0.5101, 1).
    assert degraded["low"] == pytest.approx(0.510109, abs=1e-6)
    assert degraded["high"] == 1.0
    assert report["alerts"][2]["by_channel"] == {"sms": 3}

    assert report["records"] == {
        "read": 26,
        "in_range": 14,
        "warmup": 7,
        "outside": 2,
        "identity_links": 1,
        "duplicates": 1,
        "invalid": 4,
        "invalid_by_reason": {
            "invalid_json": 1,
            "missing_field": 1,
            "not_an_object": 1,
            "out_of_range": 1,
        },
    }
    (moment,) = report["summary"]["key_moments"]
    assert moment["key_moment"] == "checkout.payment/failure_rate"
    assert moment["degraded"] == {
        "incidents": 1,
        "subjects": 1,
        "open_at_end": 0,
        "open_ms": 10 * MINUTE,
        "open": "10m",
        "first_firing": at(75),
        "last_firing": at(75),
    }
    assert moment["worst_observed"] == 1.0
    assert moment["no_data"]["incidents"] == 0
    over = report["summary"]["over_messaged"]
    assert (over["subjects"], over["incidents"], over["open_ms"]) == (1, 1, 40 * MINUTE)
    assert over["breaches"] == {"max_messages": 1}
    assert report["summary"]["other_kinds"] == {}


BREAK_CATALOG = """\
scores: {window: 10m, step: 5m, grace: 1m}
breaks:
  - {from: app.cart, to: checkout.payment, within: 5m, max_rate: 0.5, window: 10m, step: 5m,
     min_samples: 2, severity: critical}
messaging: {window: 10m, max_messages: 5}
"""


def test_a_journey_break_fires_and_resolves_as_hand_computed_and_has_its_table(
    tmp_path: Path,
) -> None:
    """Minutes after T0; the span is [60, 120), its warm-up the break's window plus within.

    * b-1..b-4 put a cart at 61-64 and never pay: broken at 66-69.
    * b-5, b-6 cart at 61 and pay at 62: converted at 62.
    * b-7..b-10 cart at 71-74 and pay a minute later: converted at 72-75.
    Windows by their end: 65 [55, 65) 0 of 2 broken; 70 [60, 70) 4 of 6 = 0.667 > 0.5:
    FIRING at 70; 75 [65, 75) 4 of 7 = 0.571 still; 80 [70, 80) 0 of 4: RESOLVED at 80.
    An event at 100 moves event time past the last deadline.
    """

    lines = []
    for number in range(1, 11):
        cart = {1: 61, 2: 62, 3: 63, 4: 64, 5: 61, 6: 61}.get(number, 64 + number)
        lines.append(event(100 + number, cart, customer_id=f"b-{number}", touchpoint="app.cart"))
        if number >= 5:
            paid = 62 if number <= 6 else cart + 1
            lines.append(event(200 + number, paid, customer_id=f"b-{number}"))
    lines.append(event(300, 100, customer_id="b-0", touchpoint="web.product_page"))
    args = written(tmp_path, BREAK_CATALOG, lines, to=at(120))
    report = backtest_json(args)
    assert report["warmup"] == "15m"
    got = [
        (a["kind"], a["status"], a["subject"], a["starts_at"], a["ends_at"], a["samples"])
        for a in report["alerts"]
    ]
    subject = "app.cart -> checkout.payment"
    assert got == [
        ("journey_break", "firing", subject, at(70), None, 6),
        ("journey_break", "resolved", subject, at(70), at(80), 4),
    ]
    assert report["alerts"][0]["observed"] == pytest.approx(4 / 6)
    (journey,) = report["summary"]["journey_breaks"]
    assert journey["journey_break"] == subject
    assert journey["broken"]["incidents"] == 1
    assert journey["broken"]["open_ms"] == 10 * MINUTE
    assert journey["worst_rate"] == pytest.approx(4 / 6)
    assert report["summary"]["other_kinds"] == {}

    text = cxmon("backtest", *args).stdout
    assert "Journey breaks over 1h00m:" in text
    row = next(line for line in text.splitlines() if line.startswith(subject))
    assert row.split()[3:] == [
        "critical",
        "rate",
        "above",
        "0.5",
        "within",
        "5m",
        "1",
        "0",
        "10m",
        at(70),
        at(70),
        "0.666667",
    ]


CONSISTENCY_CATALOG = """\
scores: {window: 10m, step: 5m, grace: 1m}
touchpoints: {checkout.payment: {stage: purchase}}
consistency:
  - {stage: purchase, metric: csat, max_gap: 1, window: 10m, step: 5m, min_samples: 4}
"""


def test_an_inconsistent_channel_fires_and_resolves_as_hand_computed(tmp_path: Path) -> None:
    """Minutes after T0; the span is [60, 120).

    * [60, 65): four app answers at CSAT 2 and four web ones at 4. The window ending at 65
      ([55, 65)): the app 2 against 4, a gap of 2 > 1: FIRING at 65.
    * [65, 70): four app and four web answers, all at 4. The window ending at 70: the app 3
      over 8 answers against 4 over 8, a gap of exactly 1, at the line: RESOLVED at 70.
    * An event at 100 moves event time past the window's grace.
    """

    def answer(number: int, minute: int, channel: str, score: int) -> bytes:
        doc = {
            "answer_id": f"a{number}",
            "answered_at": T0 + minute * MINUTE,
            "customer_id": f"buyer-{number}",
            "touchpoint": "checkout.payment",
            "channel": channel,
            "metric": "csat",
            "score": score,
        }
        return orjson.dumps(doc)

    lines = [
        *(answer(n, 60 + n, "app", 2) for n in range(4)),
        *(answer(10 + n, 60 + n, "web", 4) for n in range(4)),
        *(answer(20 + n, 65 + n, channel, 4) for n in range(4) for channel in ("app", "web")),
        event(30, 100),
    ]
    args = written(tmp_path, CONSISTENCY_CATALOG, lines, to=at(120))
    report = backtest_json(args)
    assert report["warmup"] == "1d00h00m"  # the default messaging window's
    figures = ("kind", "status", "subject", "starts_at", "ends_at", "observed")
    got = [tuple(a[f] for f in figures) for a in report["alerts"]]
    subject = "purchase/csat/app"
    assert got == [
        ("channel_inconsistent", "firing", subject, at(65), None, 2),
        ("channel_inconsistent", "resolved", subject, at(65), at(70), 1),
    ]
    firing = report["alerts"][0]
    assert (firing["channel_value"], firing["rest_value"]) == (2, 4)
    assert (firing["channel_samples"], firing["rest_samples"]) == (4, 4)
    inconsistent = report["summary"]["other_kinds"]["channel_inconsistent"]
    assert (inconsistent["incidents"], inconsistent["open_ms"]) == (1, 5 * MINUTE)

    text = cxmon("backtest", *args).stdout
    assert f"{at(65)}  FIRING   warning  channel_inconsistent purchase/csat/app" in text
    assert "app 2 (n 4) vs the rest 4 (n 4); gap interval 2 to 2" in text


FATIGUE_CATALOG = """\
scores: {window: 10m, step: 5m, grace: 1m}
messaging: {window: 1h, max_messages: 9, max_per_channel: 9, categories: [marketing]}
fatigue:
  - {metric: csat, messages: 2, max_gap: 1, window: 10m, step: 5m, min_samples: 4}
"""


def test_messaging_fatigue_fires_and_resolves_as_hand_computed(tmp_path: Path) -> None:
    """Minutes after T0; the span is [60, 120). Customers m-0 to m-3 get two marketing
    messages each at 55 and 56; o-0 to o-3 get none.

    * [60, 65): each m answers CSAT 2 (two messages in the hour before: messaged), each o
      answers 4 (others). The window ending at 65 ([55, 65)): 2 against 4, a gap of 2 > 1:
      FIRING at 65.
    * [65, 70): everyone answers 4. The window ending at 70: the messaged 3 over 8 answers
      against 4 over 8, a gap of exactly 1, at the line: RESOLVED at 70.
    * An event at 100 moves event time past the windows' grace.
    """

    def answer(customer: str, number: int, minute: int, score: int) -> bytes:
        doc = {"answer_id": f"{customer}-a{number}", "answered_at": T0 + minute * MINUTE,
               "customer_id": customer, "touchpoint": "call_center.support", "metric": "csat",
               "score": score}  # fmt: skip
        return orjson.dumps(doc)

    lines = [
        *(message(10 * n + k, 55 + k, customer_id=f"m-{n}") for n in range(4) for k in (0, 1)),
        *(answer(f"m-{n}", 0, 60 + n, 2) for n in range(4)),
        *(answer(f"o-{n}", 0, 60 + n, 4) for n in range(4)),
        *(answer(who, 1, 65 + n, 4) for n in range(4) for who in (f"m-{n}", f"o-{n}")),
        event(99, 100),
    ]
    args = written(tmp_path, FATIGUE_CATALOG, lines, to=at(120))
    report = backtest_json(args)
    figures = ("kind", "status", "subject", "starts_at", "ends_at", "observed")
    got = [tuple(a[f] for f in figures) for a in report["alerts"]]
    assert got == [
        ("messaging_fatigue", "firing", "csat", at(65), None, 2),
        ("messaging_fatigue", "resolved", "csat", at(65), at(70), 1),
    ]
    firing = report["alerts"][0]
    assert (firing["messaged_value"], firing["others_value"]) == (2, 4)
    assert (firing["messaged_samples"], firing["others_samples"]) == (4, 4)
    fatigue = report["summary"]["other_kinds"]["messaging_fatigue"]
    assert (fatigue["incidents"], fatigue["open_ms"]) == (1, 5 * MINUTE)

    text = cxmon("backtest", *args).stdout
    assert f"{at(65)}  FIRING   warning  messaging_fatigue    csat" in text
    assert "messaged 2 (n 4) vs the others 4 (n 4); gap interval 2 to 2" in text


def test_the_text_report_shows_each_transition_with_its_figures_and_the_tables(
    files: tuple[Path, Path],
) -> None:
    done = backtest(*files)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    firing = lines.index(f"{at(75)}  FIRING   critical key_moment_degraded  checkout.payment")
    assert lines[firing + 1] == (
        "    observed 1 vs threshold 0.5; window 10m; interval 0.510109 to 1; baseline -; n 4"
    )
    assert lines[firing + 2].startswith("    Key moment checkout.payment degraded: failure rate 1")
    assert f"{at(150)}  RESOLVED warning  over_messaged        c-1  (since {at(110)}, 40m)" in lines
    assert "Alerts: 4 transitions" in lines
    row = next(line for line in lines if line.startswith("checkout.payment/failure_rate"))
    assert row.split() == [
        "checkout.payment/failure_rate", "critical", "above", "0.5", "1", "0", "10m",
        at(75), at(75), "1", "0",
    ]  # fmt: skip
    assert (
        "Messaging policy: 1 customers over-messaged, 1 incidents (0 open at the end), 40m over "
        f"the policy in all; first firing {at(110)}, last {at(110)}; breaches: max_messages 1"
    ) in lines


def test_epoch_milliseconds_name_the_same_instants_as_rfc_3339(files: tuple[Path, Path]) -> None:
    rfc = backtest(*files, "--json")
    epoch = backtest(*files, "--json", start=str(T0 + 60 * MINUTE))
    assert epoch.returncode == 0, epoch.stderr
    assert epoch.stdout == rfc.stdout


def test_an_incident_open_at_from_is_shown_from_its_firing_in_the_warm_up(
    files: tuple[Path, Path],
) -> None:
    """From 01:20 the failure incident (firing at 01:15, in the warm-up) is still open."""
    catalog, records = files
    done = backtest(catalog, records, "--warmup", "80m", "--json", start="2026-11-16T01:20:00Z")
    alerts = orjson.loads(done.stdout)["alerts"]
    assert [(a["subject"], a["status"]) for a in alerts] == [
        ("checkout.payment", "firing"),
        ("checkout.payment", "resolved"),
        ("c-1", "firing"),
        ("c-1", "resolved"),
    ]
    summary = orjson.loads(done.stdout)["summary"]["key_moments"][0]["degraded"]
    assert summary["open_ms"] == 5 * MINUTE, "only the part within the span counts"
    text = backtest(catalog, records, "--warmup", "80m", start="2026-11-16T01:20:00Z").stdout
    assert (
        f"{at(75)}  FIRING   critical key_moment_degraded  checkout.payment"
        "  (in the warm-up, still open at --from)"
    ) in text.splitlines()


def test_without_warm_up_the_first_windows_lack_their_history(files: tuple[Path, Path]) -> None:
    """With --warmup 0, c-2's messages at 0-10 are outside, and from 00:05 c-2 still fires."""
    catalog, records = files
    done = backtest(catalog, records, "--warmup", "0", "--json", start="2026-11-16T00:05:00Z")
    report = orjson.loads(done.stdout)
    assert report["records"]["warmup"] == 0
    assert report["records"]["outside"] == 3  # the one before T0, the one at --to, and c-2's first
    fired = {(a["subject"], a["status"]) for a in report["alerts"]}
    assert ("c-2", "firing") not in fired, "two of c-2's messages in the span are within the policy"


# Three hours, checkout degrading half-way, two flooded customers, duplicates and bad input.
SMALL_SIMULATION = (
    *("--seed", "3", "--span", "3h", "--start", "2026-11-16T00:00:00Z"),
    *("--customers", "300", "--journeys-per-hour", "1500", "--degrade", "checkout.payment"),
    *("--over-messaged", "2", "--duplicates", "0.02", "--invalid", "0.01"),
)


def test_same_input_gives_the_same_bytes_every_run(tmp_path: Path) -> None:
    records = tmp_path / "three-hours.jsonl"
    simulate = cxmon("simulate", *SMALL_SIMULATION, "--output", str(records))
    assert simulate.returncode == 0, simulate.stderr
    catalog = REPO / "deploy" / "catalog.example.yaml"
    runs = [backtest(catalog, records, *extra).stdout for extra in ([], [], ["--json"], ["--json"])]
    assert runs[0] == runs[1]
    assert runs[2] == runs[3]
    report = orjson.loads(runs[2])
    kinds = {a["kind"] for a in report["alerts"]}
    assert kinds == {"key_moment_degraded", "over_messaged"}, "the scenario must fire both kinds"
    assert report["records"]["duplicates"] > 0
    assert report["records"]["invalid"] > 0


def test_simulate_writes_its_records_as_json_lines_each_routed_back_to_its_topic(
    tmp_path: Path,
) -> None:
    outputs = [tmp_path / "first.jsonl", tmp_path / "second.jsonl"]
    for output in outputs:
        done = cxmon("simulate", *SMALL_SIMULATION, "--output", str(output))
        assert done.returncode == 0, done.stderr
    assert outputs[0].read_bytes() == outputs[1].read_bytes()
    args = build_parser().parse_args(["simulate", *SMALL_SIMULATION])
    records = list(generate(simulation_config(args)))
    lines = outputs[0].read_bytes().splitlines()
    assert lines == [record.value for record in records]
    unroutable = 0
    for record, line in zip(records, lines, strict=True):
        try:
            topic, _ = route(parse_json_object(line), ROLE_TOPICS)
        except (InvalidRecord, UnroutableLine):
            unroutable += 1
            continue
        assert topic == record.role
    assert 0 < unroutable < len(lines) // 50, "only the malformed records lack a route"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "2026-11-16T03:00:00Z", "--to", FROM], "--from must be before --to"),
        (["--from", "yesterday", "--to", TO], "argument --from: 'yesterday' is not an RFC 3339"),
        (
            ["--from", "2026-11-16T01:00:00", "--to", TO],
            "argument --from: '2026-11-16T01:00:00' has no UTC offset",
        ),
        (
            ["--from", FROM, "--to", "99999999999999999"],
            "argument --to: 99999999999999999 ms is outside 1970..2200",
        ),
        (
            ["--from", FROM, "--to", TO, "--warmup", "a week"],
            "argument --warmup: 'a week' is not a duration",
        ),
        (["--from", FROM], "the following arguments are required: --to"),
        (
            ["--from", FROM, "--to", TO, "--input", "/nonexistent.jsonl"],
            "/nonexistent.jsonl: No such file or directory",
        ),
    ],
)
def test_bad_arguments_are_refused_with_a_clear_message_and_exit_2(
    files: tuple[Path, Path], args: list[str], message: str
) -> None:
    catalog, records = files
    extra = [] if "--input" in args else ["--input", str(records)]
    done = cxmon("backtest", "--catalog", str(catalog), *args, *extra)
    assert done.returncode == 2
    assert message in done.stderr
    assert done.stdout == ""


def test_a_bad_catalog_is_refused_with_its_line_and_exit_2(
    files: tuple[Path, Path], tmp_path: Path
) -> None:
    _, records = files
    bad = tmp_path / "bad.yaml"
    bad.write_text(CATALOG.replace("failure_rate", "failure_rat"))
    done = backtest(bad, records)
    assert done.returncode == 2
    assert (
        f"{bad}:4: key moment checkout.payment: metric: 'failure_rat' is not one of" in done.stderr
    )
    assert done.stdout == ""


def test_default_warm_up_is_the_longest_look_back_of_the_catalog() -> None:
    base = "messaging: {window: 2h}\nkey_moments:\n  - {touchpoint: a, metric: nps, "
    assert default_warmup_ms(parse_catalog(base + "below: 0, window: 1h}\n")) == 2 * 60 * MINUTE
    # a 30m window judged against the 7 days before it
    relative = "drop: 10, baseline: 7d, window: 30m, step: 5m}\n"
    assert default_warmup_ms(parse_catalog(base + relative)) == (7 * 24 * 60 + 30) * MINUTE
    # an EWMA of 1/0.25 = 4 windows of 30m stepping by 10m: 30m + 4 x 10m
    ewma = "drop: 10, baseline: ewma, alpha: 0.25, window: 30m, step: 10m}\n"
    assert default_warmup_ms(parse_catalog(base.replace("2h", "1h") + ewma)) == 70 * MINUTE
    # silence is seen a step after no_data_after
    silent = "below: 0, window: 1h, step: 10m, no_data_after: 3h}\n"
    assert default_warmup_ms(parse_catalog(base + silent)) == 190 * MINUTE


def test_span_text_reads_at_a_glance() -> None:
    assert [span_text(ms) for ms in (0, 42_500, 10 * MINUTE, 630_000, 80 * MINUTE)] == [
        "0s",
        "42s",
        "10m",
        "10m30s",
        "1h20m",
    ]
    assert span_text(3 * 86_400_000 + 4 * 3_600_000 + 5 * MINUTE) == "3d04h05m"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_progress_bar_redraws_in_place_with_rate_and_eta() -> None:
    clock, out = FakeClock(), io.StringIO()
    bar = ProgressBar(10_000, out, interactive=True, clock=clock)
    clock.now += 2.0
    bar.advance(2_000)  # 1,000 records/s: 8,000 left take 8 s
    assert out.getvalue() == (
        "\r[######........................] 2,000/10,000 records  20%, 1,000/s, ETA 0:08\x1b[K"
    )
    clock.now += 0.1
    bar.advance(1_000)
    assert out.getvalue().count("\r") == 1, "no redraw within 0.2 s"
    clock.now += 5.9
    bar.advance(7_000)
    bar.close()
    assert out.getvalue().endswith(
        "\r[##############################] 10,000/10,000 records 100%, 1,250/s, ETA 0:00\x1b[K\n"
    )


def test_without_a_terminal_progress_is_a_plain_line_every_30_seconds() -> None:
    clock, out = FakeClock(), io.StringIO()
    bar = ProgressBar(None, out, interactive=False, clock=clock)
    for _ in range(10):
        clock.now += 5.0
        bar.advance(1_000)
    bar.close()
    assert out.getvalue() == "6,000 records read, 200/s, 0:30 elapsed\n"


@pytest.mark.broker
def test_the_topics_history_gives_the_same_report_as_the_file(
    deployment: Deployment, tmp_path: Path
) -> None:
    """The simulated records on the local broker's topics, and in a file: the same bytes out."""
    records_file = tmp_path / "three-hours.jsonl"
    done = cxmon("simulate", *SMALL_SIMULATION, "--output", str(records_file))
    assert done.returncode == 0, done.stderr
    args = build_parser().parse_args(["simulate", *SMALL_SIMULATION])
    records = list(generate(simulation_config(args)))
    assert deployment.publish(records) == len(records)
    catalog = REPO / "deploy" / "catalog.example.yaml"
    span = ["--catalog", str(catalog), "--from", FROM, "--to", TO]
    env = deployment.env("client", 0)
    for extra in ([], ["--json"]):
        from_topics = cxmon("backtest", *span, *extra, **env)
        assert from_topics.returncode == 0, from_topics.stderr
        from_file = cxmon("backtest", *span, "--input", str(records_file), *extra)
        assert from_topics.stdout == from_file.stdout
    report = orjson.loads(from_topics.stdout)
    assert report["records"]["read"] == len(records)
    assert {a["kind"] for a in report["alerts"]} == {"key_moment_degraded", "over_messaged"}

    missing = cxmon("backtest", *span, **(env | {"CXMON_TOPIC_SURVEY_ANSWERS": "no.such-topic"}))
    assert missing.returncode == 2
    assert "no topic no.such-topic at 127.0.0.1:" in missing.stderr


@pytest.mark.broker
async def test_partitions_are_read_from_the_broker_when_the_metadata_cache_has_none_yet(
    deployment: Deployment,
) -> None:
    """As right after aiokafka's bootstrap, which asks for no topic's metadata: the
    topics' partitions are asked for, not taken as none (a history read as empty)."""
    topics = deployment.topics
    settings = deployment.settings()
    await ensure_topics(settings, input_topics(settings))
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers)
    await consumer.start()
    try:
        cluster = consumer._client.cluster
        brokers = [(b.nodeId, b.host, b.port) for b in cluster.brokers()]
        cluster.update_metadata(MetadataResponse_v0(brokers, []))
        names = [topics.touchpoint_events, topics.survey_answers]
        assert consumer.partitions_for_topic(topics.touchpoint_events) is None
        partitions = await known_partitions(consumer, names)
    finally:
        await consumer.stop()
    assert partitions == [TopicPartition(name, p) for name in names for p in range(4)]
