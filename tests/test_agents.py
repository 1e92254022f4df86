"""The agents under Faust's test context: what each sends downstream for what it is given."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, TypeVar, cast

import orjson
import pytest
import yaml
from aiokafka.structs import ConsumerRecord, RecordMetadata, TopicPartition
from faust.types import TP

from agents.checkpointed import Change, chunked
from agents.commits import Offsets
from agents.metrics import REGISTRY, declare_catalog
from agents.pipeline import Pipeline
from agents.stages import ingest as ingest_stage
from agents.stages.ingest import MAX_DEAD_LETTER_BYTES
from agents.stages.wiring import ANSWER_RECORD, LINK_RECORD, partition_of
from agents.streaming import PartitionedState
from agents.topology import PRODUCER_MAX_REQUEST_BYTES, Topology
from agents.worker import assemble
from models.records import Category, Stage, SurveyAnswer, SurveyMetric
from streams.catalog import parse_catalog
from streams.core.ingest import (
    FATIGUE_SUBJECT,
    BucketTally,
    OutboundMessage,
    TouchpointPartial,
    stage_subject,
)
from streams.core.journeys import CustomerJourneys, CustomerVisits, Outcome
from streams.core.messaging import Answered, CustomerMessages, Message, message_digest
from streams.core.privacy import STATE_PSEUDONYM_HEX, pseudonym
from streams.core.scores import Tally
from streams.settings import Settings
from streams.state.dedup import OFFSET_BITS, SeenBatch, id_digest
from streams.state.delivery import Checkpoint, KeyedCheckpoint, Send
from streams.state.envelope import ENVELOPE_KEY, Record, pack, unpack
from streams.state.watermarks import (
    PROGRESS_KEY,
    SourceMark,
    decode_marks,
    encode_marks,
    source_name,
)

PARTITIONS = 2
DAY_MS = 86_400_000
START_MS = 1_795_305_600_000

T = TypeVar("T")


@dataclass
class Sent:
    topic: str
    key: bytes | None
    value: bytes | None
    partition: int | None
    headers: dict[str, bytes]


@dataclass
class Harness:
    app: Any
    topology: Topology
    pipeline: Pipeline
    sent: list[Sent] = field(default_factory=list)
    envelopes: list[tuple[str, int | None, int]] = field(default_factory=list)  # records in each
    changelog: list[tuple[str, int | None, bytes, bytes | None]] = field(default_factory=list)

    def to(self, topic: Any) -> list[Sent]:
        return [s for s in self.sent if s.topic == topic.get_topic_name()]

    def data(self, topic: Any) -> list[Sent]:
        return [s for s in self.to(topic) if s.key != PROGRESS_KEY]

    async def feed(
        self,
        agent_name: str,
        items: Sequence[tuple[bytes | None, bytes, int]],
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        agent = self.app.agents[agent_name]
        topic = agent.channel.get_topic_name()
        handover = self.pipeline.wiring.batches.handover
        async with agent.test_context():
            # Numbered from 0 across partitions for each call, as Faust's test context does.
            fetched: dict[TP, list[ConsumerRecord[bytes, bytes]]] = {}
            for offset, (key, value, partition) in enumerate(items):
                size = len(key or b""), len(value)
                record = ConsumerRecord(
                    topic, partition, offset, int(time.time() * 1000), 0, key, value, None,
                    *size, list(headers),
                )  # fmt: skip
                fetched.setdefault(TP(topic, partition), []).append(record)
            await handover.put(self.app.consumer_generation_id, fetched)
            while handover.waiting_records or handover.working:
                await asyncio.sleep(0.01)
        await self.app.outbox.handed()


@pytest.fixture
async def harness(tmp_path: Any) -> Harness:
    """The example catalog without its fatigue rule: answers then reach only the scoring
    stage, and the other stages wait for no progress from them (the fatigue test builds
    its own)."""
    catalog = yaml.safe_load(Settings().catalog.read_text(encoding="utf-8"))
    del catalog["fatigue"]
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(catalog), encoding="utf-8")
    return build_harness(tmp_path, CXMON_CATALOG=str(path))


def build_harness(tmp_path: Any, **env: str) -> Harness:
    settings = Settings.from_env(
        {
            "CXMON_BROKER_URL": "kafka://127.0.0.1:1",
            "CXMON_PARTITIONS": str(PARTITIONS),
            "CXMON_DATA_DIR": str(tmp_path),
            **env,
        }
    )
    app, topology, pipeline = assemble(settings)
    pipeline.wiring.batches.offsets = EveryRecord(app, settings)
    app.finalize()
    app.flow_control.resume()
    result = Harness(app, topology, pipeline)
    changelogs = {table.changelog_topic.get_topic_name(): table.name for table in topology.tables()}
    app.producer.send = capture(result, changelogs)  # type: ignore[method-assign]
    return result


class EveryRecord(Offsets):
    """Faust's test context numbers records across partitions, so there is no offset order
    to keep per partition, and no broker to commit to (tests/test_offsets.py covers both)."""

    async def admit(
        self, batch: Mapping[TP, list[T]], offset_of: Callable[[T], int]
    ) -> dict[TP, list[T]]:
        return dict(batch)


def delivered(topic: str, partition: int | None, offset: int) -> asyncio.Future[RecordMetadata]:
    """What a send returns once the broker has the record."""
    future = asyncio.get_running_loop().create_future()
    tp = TopicPartition(topic, partition or 0)
    future.set_result(RecordMetadata(topic, tp.partition, tp, offset, -1, 0, 0))
    return future


def capture(harness: Harness, tables: dict[str, str]) -> Callable[..., Any]:
    """The producer's send: what the stages send, and each table's writes by table name."""
    offsets = itertools.count()

    async def send(  # noqa: PLR0917 (the producer's own signature)
        topic: str, key: bytes | None, value: bytes | None, partition: int | None,
        timestamp: float | None, headers: list[tuple[str, bytes]] | None, **_: Any,
    ) -> asyncio.Future[RecordMetadata]:  # fmt: skip
        if topic in tables:
            harness.changelog.append((tables[topic], partition, key or b"", value))
        elif key == ENVELOPE_KEY:
            # What the next stage reads: the records, each as if sent alone.
            records = unpack(value or b"")
            harness.envelopes.append((topic, partition, len(records)))
            for record in records:
                harness.sent.append(
                    Sent(topic, record.key, record.value, partition, dict(record.headers))
                )
        else:
            harness.sent.append(Sent(topic, key, value, partition, dict(headers or [])))
        return delivered(topic, partition, next(offsets))

    return send


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def event(event_id: str, *, at_ms: int = START_MS, **fields: Any) -> bytes:
    doc = {
        "event_id": event_id,
        "occurred_at": at_ms,
        "customer_id": "c-1",
        "touchpoint": "marketing.sms",
        "channel": "sms",
        "direction": "outbound",
        **fields,
    }
    return orjson.dumps(doc)


def all_idle(topology: Topology, watermark_ms: int, *topics: Any) -> bytes:
    return encode_marks(
        SourceMark(source_name(t.get_topic_name(), p), watermark_ms, idle=True)
        for t in topics
        for p in range(PARTITIONS)
    )


async def test_ingest_dedups_dead_letters_and_routes(harness: Harness) -> None:
    topology = harness.topology
    await harness.feed(
        "ingest_touchpoint_events",
        [
            (b"c-1", event("e-1"), 1),
            (b"c-1", event("e-1"), 1),  # the same event again: counted once
            (b"c-1", b'{"event_id": "e-2"', 1),
            (
                b"c-1",
                event("e-3", outcome="failure", direction="inbound", touchpoint="app.login"),
                1,
            ),
        ],
    )
    dead = harness.to(topology.dead_letters)
    assert len(dead) == 1
    assert dead[0].value == b'{"event_id": "e-2"'
    assert dead[0].headers["cxmon-reason"] == b"invalid_json"
    assert dead[0].headers["cxmon-partition"] == b"1"

    messages = [
        OutboundMessage.decode(s.value or b"") for s in harness.data(topology.customer_messages)
    ]
    assert [(m.event_id, m.customer_id, m.message.category) for m in messages] == [
        ("e-1", "c-1", Category.MARKETING)
    ]
    partials = [
        TouchpointPartial.decode(s.value or b"") for s in harness.data(topology.touchpoint_partials)
    ]
    source = source_name(topology.touchpoint_events.get_topic_name(), 1)
    assert {(p.source, p.last_offset) for p in partials} == {(source, 3)}
    tallies = {p.touchpoint: p.buckets[0].tally for p in partials}
    assert tallies["marketing.sms"].events == 1
    assert (tallies["app.login"].outcomes, tallies["app.login"].failures) == (1, 1)

    # One write for the batch, holding the two ids counted, where they were read.
    (seen_write,) = [entry for entry in harness.changelog if entry[0] == "seen-ids"]
    assert seen_write[1] == 1
    stored = SeenBatch.decode(seen_write[3] or b"")
    events_topic = topology.touchpoint_events.get_topic_name()
    assert list(stored.places()) == [
        (id_digest(events_topic, "e-1"), 1 << OFFSET_BITS | 0),
        (id_digest(events_topic, "e-3"), 1 << OFFSET_BITS | 3),
    ]

    marks = [s for s in harness.to(topology.touchpoint_partials) if s.key == PROGRESS_KEY]
    assert sorted(s.partition or 0 for s in marks) == list(range(PARTITIONS))
    reported = decode_marks(marks[0].value or b"")
    assert [(m.source, m.watermark_ms) for m in reported] == [
        (source_name(topology.touchpoint_events.get_topic_name(), 1), START_MS)
    ]


async def test_a_batch_sends_one_envelope_a_partition_each_record_where_its_key_belongs(
    harness: Harness,
) -> None:
    topology = harness.topology
    customers = [f"c-{n}" for n in range(40)]
    await harness.feed(
        "ingest_touchpoint_events",
        [
            (c.encode(), event(f"e-{c}-{m}", at_ms=START_MS + m, customer_id=c), 0)
            for m in range(2)
            for c in customers
        ],
    )
    topic = topology.customer_messages.get_topic_name()
    envelopes = [(p, n) for name, p, n in harness.envelopes if name == topic]
    # One envelope a partition for each batch the feed fell into (its timing decides how
    # many batches: a loaded machine hands over smaller ones).
    assert {p for p, _ in envelopes} == set(range(PARTITIONS))
    assert len(envelopes) <= PARTITIONS * 4
    assert sum(n for _, n in envelopes) == 80
    sent = harness.data(topology.customer_messages)
    assert all(s.partition == partition_of(s.key or b"", PARTITIONS) for s in sent)
    # Each customer's messages in the order they were read.
    ids = [OutboundMessage.decode(s.value or b"").event_id for s in sent if s.key == b"c-7"]
    assert ids == ["e-c-7-0", "e-c-7-1"]


async def test_pseudonymised_ids_never_reach_a_table_a_topic_or_an_alert(tmp_path: Any) -> None:
    harness = build_harness(tmp_path, CXMON_PSEUDONYMISE_IDS="true", CXMON_PSEUDONYM_KEY="k3y")
    topology = harness.topology
    phone = {"type": "phone", "value": "+8613800000000"}
    await harness.feed(
        "ingest_touchpoint_events",
        [
            (b"c-secret", event(f"e-{n}", at_ms=START_MS + n, customer_id="c-secret"), 0)
            for n in range(3)
        ]
        + [(b"x", event("e-9", customer_id=None, contact=phone), 0)],
    )
    link = {"contact": phone, "customer_id": "c-secret", "linked_at": START_MS}
    await harness.feed("ingest_identity_links", [(b"x", orjson.dumps(link), 0)])
    customer = pseudonym("c-secret", b"k3y", STATE_PSEUDONYM_HEX)
    contact = "phone:" + pseudonym("+8613800000000", b"k3y", STATE_PSEUDONYM_HEX)
    assert {s.key for s in harness.data(topology.customer_messages)} == {customer.encode()}
    assert {s.key for s in harness.data(topology.contacts)} == {contact.encode()}
    written = b"".join(
        [key + (value or b"") for _, _, key, value in harness.changelog]
        + [(s.key or b"") + (s.value or b"") for s in harness.sent]
    )
    assert b"c-secret" not in written
    assert b"13800000000" not in written
    assert customer.encode() in written


async def test_late_and_future_records_are_dead_letters_with_their_reason(
    harness: Harness,
) -> None:
    topology = harness.topology
    now = int(time.time() * 1000)
    newest = now - 3_600_000
    late_before = sample("cxmon_late_records_total")

    def login(event_id: str, at_ms: int) -> tuple[bytes, bytes, int]:
        return (
            b"c-1",
            event(event_id, at_ms=at_ms, direction="inbound", touchpoint="app.login"),
            0,
        )

    await harness.feed(
        "ingest_touchpoint_events",
        [
            login("e-1", newest),
            login("e-2", newest - 60_000),  # out of order within the catalog's 1m grace
            login("e-3", newest - 60_001),  # beyond it
            login("e-4", now + 3_600_000),  # an hour ahead of the clock
        ],
    )
    dead = harness.to(topology.dead_letters)
    assert [(d.headers["cxmon-reason"], d.headers["cxmon-offset"]) for d in dead] == [
        (b"late", b"2"),
        (b"future", b"3"),
    ]
    assert b"occurred_at" in dead[0].headers["cxmon-error"]
    assert sample("cxmon_late_records_total") - late_before == 1
    (partial,) = [
        TouchpointPartial.decode(s.value or b"") for s in harness.data(topology.touchpoint_partials)
    ]
    assert sum(b.tally.records for b in partial.buckets) == 2


async def test_ingest_stores_each_batch_before_sending_and_resends_after_a_crash(
    harness: Harness,
) -> None:
    topology = harness.topology
    batch = [
        (b"c-1", event("e-1"), 1),
        (b"c-1", event("e-2", direction="inbound", touchpoint="app.login"), 1),
    ]
    await harness.feed("ingest_touchpoint_events", batch)
    checkpoints = [
        Checkpoint.decode(value or b"")
        for table, _, _, value in harness.changelog
        if table == "ingest-checkpoints"
    ]
    data = [s for s in harness.sent if s.key != PROGRESS_KEY]
    # Stored with all it sends (one message, two partials), then cleared once sent.
    assert [(c.offset, len(c.unsent)) for c in checkpoints] == [(1, 3), (1, 0)]
    assert {(s.topic, s.key, s.value) for s in checkpoints[0].unsent} == {
        (s.topic, s.key, s.value) for s in data
    }

    await harness.feed("ingest_touchpoint_events", batch)  # read again after a restart
    assert [s for s in harness.sent if s.key != PROGRESS_KEY] == data, "nothing done twice"

    # A worker died after storing a batch, before the broker had its sends.
    source = source_name(topology.touchpoint_events.get_topic_name(), 1)
    partials = topology.touchpoint_partials.get_topic_name()
    stored = Checkpoint(5, START_MS, [Send(partials, b"app.login", b"stored partial")])
    harness.pipeline.ingest.checkpoints.put(1, source.encode(), stored.encode())
    await harness.feed("ingest_touchpoint_events", [(b"c-1", event("e-3"), 1)])
    resent = [s for s in harness.sent if s.key != PROGRESS_KEY][len(data) :]
    assert [(s.topic, s.key, s.value) for s in resent] == [
        (partials, b"app.login", b"stored partial")
    ], "sent again; the batch's own records (offset 0 <= 5) are not folded a second time"


async def test_contact_only_messages_resolve_by_the_link_in_force_at_their_time(
    harness: Harness,
) -> None:
    topology = harness.topology
    phone = b"phone:+8613800000000"

    def contact_only(event_id: str, at_ms: int, contact: bytes = phone) -> tuple[bytes, bytes, int]:
        message = OutboundMessage(
            event_id,
            None,
            contact.decode(),
            Message(at_ms, "sms", Category.MARKETING, message_digest(event_id)),
        )
        return (contact, message.encode(), 0)

    # Messages first, the link after: the order the two paths happen to arrive in.
    await harness.feed(
        "resolve_contacts",
        [
            contact_only("e-6", START_MS - 1),  # before the link: the contact's own
            contact_only("e-7", START_MS),
            contact_only("e-8", START_MS, b"email:x@example.com"),  # never linked
        ],
    )
    assert harness.data(topology.customer_messages) == [], "held until the links catch up"

    link = orjson.dumps(
        {"contact": {"type": "phone", "value": "+8613800000000"}, "customer_id": "c-9",
         "linked_at": START_MS}
    )  # fmt: skip
    await harness.feed("ingest_identity_links", [(phone, link, 0)])
    (update,) = harness.data(topology.contacts)
    assert update.key == phone
    assert update.headers == dict([LINK_RECORD])
    await harness.feed(
        "resolve_contacts", [(phone, update.value or b"", 0)], [*update.headers.items()]
    )
    # Every source of partition 0 has passed the messages' time: they go out, resolved.
    marks = all_idle(topology, START_MS, topology.touchpoint_events, topology.identity_links)
    await harness.feed("resolve_contacts", [(PROGRESS_KEY, marks, 0)])
    resolved = [
        OutboundMessage.decode(s.value or b"") for s in harness.data(topology.customer_messages)
    ]
    assert sorted((m.event_id, m.customer_id) for m in resolved) == [
        ("e-6", "phone:+8613800000000"),
        ("e-7", "c-9"),
        ("e-8", "email:x@example.com"),
    ]
    forwarded = [s for s in harness.to(topology.customer_messages) if s.key == PROGRESS_KEY]
    assert sorted(s.partition or 0 for s in forwarded) == list(range(PARTITIONS))
    mark = SourceMark(source_name(topology.contacts.get_topic_name(), 0), START_MS, True)
    assert all(decode_marks(s.value or b"") == [mark] for s in forwarded)


async def test_key_moment_fires_once_when_the_low_watermark_closes_the_window(
    harness: Harness,
) -> None:
    topology = harness.topology
    detractors = Tally(detractors=40)
    window_start = START_MS  # checkout.payment/nps: window 30m, step 5m, min 30 samples, below 10
    partial = TouchpointPartial(
        "checkout.payment", "events:0", 7, [BucketTally(window_start, window_start, detractors)]
    )
    key = b"checkout.payment"
    partition = 0
    # The same batch twice, as after a crash: taken in once.
    items = [(key, partial.encode(), partition)] * 2
    sources = (topology.touchpoint_events, topology.survey_answers)
    moment = {"touchpoint": "checkout.payment", "metric": "nps"}
    degraded = "cxmon_key_moment_degraded"
    assert sample(degraded, **moment, severity="critical") == 0
    assert sample("cxmon_key_moment_threshold", **moment, breaks="below") == 10
    # Before every input has reported, nothing is judged; then all idle past the window end.
    await harness.feed("score_touchpoints", items)
    assert harness.to(topology.alerts) == []
    closed = START_MS + 35 * 60_000
    await harness.feed(
        "score_touchpoints", [(PROGRESS_KEY, all_idle(topology, closed, *sources), partition)]
    )
    alerts = [orjson.loads(s.value or b"") for s in harness.to(topology.alerts)]
    assert len(alerts) == 1
    assert (alerts[0]["kind"], alerts[0]["status"], alerts[0]["subject"]) == (
        "key_moment_degraded",
        "firing",
        "checkout.payment",
    )
    assert alerts[0]["observed"] == -100.0
    assert alerts[0]["samples"] == 40
    assert sample(degraded, **moment, severity="critical") == 1
    assert sample("cxmon_touchpoint_score", **moment) == -100.0
    assert sample("cxmon_touchpoint_samples", **moment) == 40
    assert sample("cxmon_touchpoint_info", touchpoint="checkout.payment", stage="purchase") == 1

    # A rebalance moves the touchpoint away: this worker stops exporting its last figures...
    owner = partition_of(key, PARTITIONS)
    revoked = {TP(topology.touchpoint_partials.get_topic_name(), owner)}
    harness.pipeline.scoring.forget_revoked_touchpoints(harness.app, revoked, signal=None)
    assert sample(degraded, **moment, severity="critical") == 0
    assert REGISTRY.get_sample_value("cxmon_touchpoint_score", moment) is None
    # ...and whoever owns it exports the incident restored with the table, not only on a
    # transition: here the table still holds it, and the next watermark re-exports it.
    later = START_MS + 40 * 60_000
    await harness.feed(
        "score_touchpoints", [(PROGRESS_KEY, all_idle(topology, later, *sources), owner)]
    )
    assert sample(degraded, **moment, severity="critical") == 1
    assert len(harness.to(topology.alerts)) == 1, "restoring the state is no new transition"


async def test_a_stage_exports_each_channel_against_the_rest_and_forgets_them_when_revoked(
    tmp_path: Any,
) -> None:
    """Five app answers at CSAT 2, five web ones at 4: the app 2 worse than the rest, past
    the rule's max gap of 1, the web 2 better."""
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(
        "scores: {window: 30m, step: 5m, grace: 1m}\n"
        "touchpoints: {checkout.payment: {stage: purchase}}\n"
        "consistency:\n  - {stage: purchase, metric: csat, max_gap: 1, window: 10m, step: 5m,"
        " min_samples: 5, severity: critical}\n"
    )
    harness = build_harness(tmp_path, CXMON_CATALOG=str(catalog))
    topology = harness.topology
    minute = 60_000

    def csat(score: int) -> Tally:
        tally = Tally()
        for n in range(5):
            answer = SurveyAnswer(f"a-{n}", START_MS, "checkout.payment", SurveyMetric.CSAT, score)
            tally.add_answer(answer, sentiment=None)
        return tally

    key = stage_subject(Stage.PURCHASE).encode()
    owner = partition_of(key, PARTITIONS)
    buckets = [BucketTally(START_MS, START_MS, csat(s), c) for c, s in (("app", 2), ("web", 4))]
    partial = TouchpointPartial(key.decode(), "events:0", 3, buckets)
    sources = (topology.touchpoint_events, topology.survey_answers)
    judged = all_idle(topology, START_MS + 6 * minute, *sources)
    await harness.feed("score_touchpoints", [(key, partial.encode(), owner)])
    await harness.feed("score_touchpoints", [(PROGRESS_KEY, judged, owner)])

    alerts = [orjson.loads(s.value or b"") for s in harness.to(topology.alerts)]
    assert [(a["kind"], a["status"], a["subject"]) for a in alerts] == [
        ("channel_inconsistent", "firing", "purchase/csat/app")
    ]
    app = {"stage": "purchase", "metric": "csat", "channel": "app"}
    web = {**app, "channel": "web"}
    assert sample("cxmon_channel_inconsistent", **app, severity="critical") == 1
    web_incident = {**web, "severity": "critical"}
    assert REGISTRY.get_sample_value("cxmon_channel_inconsistent", web_incident) == 0, "a series"
    assert (sample("cxmon_channel_score", **app), sample("cxmon_channel_score", **web)) == (2, 4)
    assert (sample("cxmon_channel_gap", **app), sample("cxmon_channel_gap", **web)) == (2, -2)
    assert sample("cxmon_channel_samples", **app) == 5

    revoked = {TP(topology.touchpoint_partials.get_topic_name(), owner)}
    harness.pipeline.scoring.forget_revoked_touchpoints(harness.app, revoked, signal=None)
    for name in ("cxmon_channel_score", "cxmon_channel_gap", "cxmon_channel_samples"):
        assert REGISTRY.get_sample_value(name, app) is None
    assert (
        REGISTRY.get_sample_value("cxmon_channel_inconsistent", {**app, "severity": "critical"})
        is None
    )

    # Whoever judges the stage next shows the incident its table restored as soon as event
    # time moves, before the next window closes; the figures come with that window.
    sooner = all_idle(topology, START_MS + 7 * minute, *sources)
    await harness.feed("score_touchpoints", [(PROGRESS_KEY, sooner, owner)])
    assert sample("cxmon_channel_inconsistent", **app, severity="critical") == 1
    assert REGISTRY.get_sample_value("cxmon_channel_score", app) is None
    later = all_idle(topology, START_MS + 11 * minute, *sources)
    await harness.feed("score_touchpoints", [(PROGRESS_KEY, later, owner)])
    assert sample("cxmon_channel_score", **app) == 2
    assert len(harness.to(topology.alerts)) == 1, "restoring the state is no new transition"


async def test_marks_read_again_after_a_rebalance_vouch_only_for_what_they_said(
    harness: Harness,
) -> None:
    """Every input at 10 minutes; events:0 says it is idle; the others reach 40 minutes: the
    watermark stays at 10, events:0 vouching for no more than the others had reached when
    it spoke. The partition is revoked and given back, and read again from the group's
    commit, before the idle mark: read again, that mark must not vouch for 40 minutes."""
    topology = harness.topology
    minute = 60_000
    inputs = [
        source_name(topic.get_topic_name(), p)
        for topic in (topology.touchpoint_events, topology.survey_answers)
        for p in range(PARTITIONS)
    ]
    idle_one, others = inputs[0], inputs[1:]
    progress = [
        encode_marks(SourceMark(s, START_MS + 10 * minute, idle=False) for s in inputs),
        encode_marks([SourceMark(idle_one, START_MS + 10 * minute, idle=True)]),
        encode_marks(SourceMark(s, START_MS + 40 * minute, idle=False) for s in others),
    ]
    partition = 0
    records = [(PROGRESS_KEY, marks, partition) for marks in progress]
    await harness.feed("score_touchpoints", records)
    progress_of = harness.pipeline.scoring.progress
    assert progress_of[partition].watermark() == START_MS + 10 * minute

    revoked = {TP(topology.touchpoint_partials.get_topic_name(), partition)}
    harness.pipeline.forget_revoked_progress(harness.app, revoked, signal=None)
    await harness.feed("score_touchpoints", records[1:])
    assert progress_of[partition].watermark() == START_MS + 10 * minute


async def test_over_messaged_customer_fires_once_behind_the_watermark(harness: Harness) -> None:
    topology = harness.topology
    channels = ["sms", "email", "app_push", "wechat", "sms", "email"]
    items = [
        (
            b"c-1",
            OutboundMessage(
                f"e-{n}",
                "c-1",
                None,
                Message(
                    START_MS + n * 60_000, channel, Category.MARKETING, message_digest(f"e-{n}")
                ),
            ).encode(),
            0,
        )
        for n, channel in enumerate(channels)
    ]
    sms_before = sample("cxmon_outbound_messages_total", channel="sms", category="marketing")
    six_or_fewer = sample("cxmon_customer_window_messages_bucket", le="6.0")
    five_or_fewer = sample("cxmon_customer_window_messages_bucket", le="5.0")
    batches_before = sample("cxmon_batch_processing_seconds_count", stage="frequency")
    # Delivered twice, as after a crash of the stage before: counted once.
    await harness.feed("count_customer_messages", items + items)
    assert harness.to(topology.alerts) == [], "no verdict before the watermark passes"
    sms = sample("cxmon_outbound_messages_total", channel="sms", category="marketing")
    assert sms - sms_before == 2
    # One observation a batch, however many messages it brought the customer; how the
    # twelve records fall into batches depends on timing (a batch closes after 10 ms).
    batches = sample("cxmon_batch_processing_seconds_count", stage="frequency") - batches_before
    observed = sample("cxmon_customer_window_messages_bucket", le="6.0") - six_or_fewer
    assert observed == batches >= 1
    if batches == 1:
        assert sample("cxmon_customer_window_messages_bucket", le="5.0") - five_or_fewer == 0
    marks = all_idle(topology, START_MS + 3_600_000, topology.touchpoint_events, topology.contacts)
    await harness.feed("count_customer_messages", [(PROGRESS_KEY, marks, 0)])
    alerts = [orjson.loads(s.value or b"") for s in harness.to(topology.alerts)]
    assert [(a["kind"], a["status"], a["subject"], a["observed"]) for a in alerts] == [
        ("over_messaged", "firing", "c-1", 6.0)
    ]
    later = all_idle(
        topology,
        START_MS + DAY_MS + 3_600_000,
        topology.touchpoint_events,
        topology.contacts,
    )
    await harness.feed("count_customer_messages", [(PROGRESS_KEY, later, 0)])
    statuses = [orjson.loads(s.value or b"")["status"] for s in harness.to(topology.alerts)]
    assert statuses == ["firing", "resolved"]


async def test_restored_customers_still_waiting_are_judged_when_event_time_moves(
    harness: Harness,
) -> None:
    topology = harness.topology
    channels = ["sms", "email", "app_push", "wechat", "sms", "email"]
    messages = [
        Message(START_MS + n * 60_000, c, Category.MARKETING, message_digest(f"e-{n}"))
        for n, c in enumerate(channels)
    ]
    # As a restart finds them in the changelog: one customer never judged, one judged
    # past all its messages (its verdict was sent before the restart).
    restored = topology.customer_frequency.store
    restored.put(0, b"c-waits", CustomerMessages(list(messages)).encode())
    judged = CustomerMessages(list(messages), judged_to_ms=START_MS + 3_600_000)
    restored.put(0, b"c-judged", judged.encode())
    due = harness.pipeline.frequency._due
    assert due(restored.data[b"c-waits"]) == START_MS, "due at its first message"
    assert due(restored.data[b"c-judged"]) is None
    marks = all_idle(topology, START_MS + 3_600_000, topology.touchpoint_events, topology.contacts)
    await harness.feed("count_customer_messages", [(PROGRESS_KEY, marks, 0)])
    alerts = [orjson.loads(s.value or b"") for s in harness.to(topology.alerts)]
    assert [(a["status"], a["subject"]) for a in alerts] == [("firing", "c-waits")]


FATIGUE_CATALOG = """
scores: {window: 10m, step: 10m, grace: 1m}
messaging: {window: 1h, max_messages: 9, max_per_channel: 9, categories: [marketing]}
fatigue:
  - {metric: csat, messages: 2, max_gap: 1, window: 10m, step: 10m, min_samples: 1}
"""


def csat_answer(answer_id: str, minute: int, score: int, **who: Any) -> bytes:
    at_ms = START_MS + minute * 60_000
    doc = {"answer_id": answer_id, "answered_at": at_ms, "touchpoint": "call_center.support",
           "metric": "csat", "score": score, **who}  # fmt: skip
    return orjson.dumps(doc)


async def test_answers_reach_their_customer_and_go_in_cohorts_once_behind_the_grace(
    tmp_path: Any,
) -> None:
    """c-1 gets marketing messages at 0 and 1 minute and answers CSAT 1 at 2 minutes (two
    messages: messaged); c-2, never messaged, answers 5 at 3 minutes (others). The
    customer stage puts each answer in its cohort only once the watermark less the grace
    (1 minute) is past it, sends the cohort tallies to scoring once, named by its
    checkpoint, and the scoring stage fires on a gap of 4 and counts a tally sent again once.
    """
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(FATIGUE_CATALOG)
    harness = build_harness(tmp_path, CXMON_CATALOG=str(catalog))
    topology = harness.topology
    phone = {"type": "phone", "value": "+8613800000000"}
    answers = [
        (b"c-1", csat_answer("a-1", 2, 1, customer_id="c-1"), 0),
        (b"c-2", csat_answer("a-2", 3, 5, customer_id="c-2"), 0),
        (b"phone", csat_answer("a-3", 3, 4, contact=phone), 0),
    ]
    await harness.feed("ingest_survey_answers", answers)
    routed = harness.data(topology.customer_messages)
    assert [(s.key, s.headers) for s in routed] == [
        (b"c-1", dict([ANSWER_RECORD])),
        (b"c-2", dict([ANSWER_RECORD])),
    ]
    (held,) = harness.data(topology.contacts)
    assert (held.key, held.headers) == (b"phone:+8613800000000", dict([ANSWER_RECORD]))

    def message(n: int) -> Record:
        sent = Message(START_MS + n * 60_000, "sms", Category.MARKETING, message_digest(f"e-{n}"))
        return Record(b"c-1", OutboundMessage(f"e-{n}", "c-1", None, sent).encode())

    # As the first stage sends them: messages and answers in one envelope.
    records = [message(0), message(1)]
    records += [Record(s.key or b"", s.value or b"", (ANSWER_RECORD,)) for s in routed]
    (envelope,) = pack(records, 1_000_000)
    await harness.feed("count_customer_messages", [(ENVELOPE_KEY, envelope, 0)])
    inputs = (topology.touchpoint_events, topology.contacts, topology.survey_answers)

    def cohort_tallies() -> list[Sent]:
        return [
            s for s in harness.data(topology.touchpoint_partials) if s.key != b"call_center.support"
        ]

    marks = all_idle(topology, START_MS + 3 * 60_000, *inputs)
    await harness.feed("count_customer_messages", [(PROGRESS_KEY, marks, 0)])
    assert cohort_tallies() == [], "a message at 2 minutes may still come for a-1"
    for _ in range(2):  # the same watermark again changes nothing
        marks = all_idle(topology, START_MS + 5 * 60_000, *inputs)
        await harness.feed("count_customer_messages", [(PROGRESS_KEY, marks, 0)])
    (sent,) = cohort_tallies()
    partial = TouchpointPartial.decode(sent.value or b"")
    assert (sent.key, partial.touchpoint) == (FATIGUE_SUBJECT.encode(), FATIGUE_SUBJECT)
    assert partial.source == source_name(topology.customer_messages.get_topic_name(), 0)
    cohorts = {
        b.channel: (b.start_ms, b.tally.csat_count, b.tally.csat_sum) for b in partial.buckets
    }
    # By count of messages (capped at the highest line), so one tally serves every rule.
    assert cohorts == {"2": (START_MS, 1, 1.0), "0": (START_MS, 1, 5.0)}
    stored = CustomerMessages.decode(harness.pipeline.frequency.customers.states.get(b"c-1") or b"")
    assert [(a.at_ms, a.tally) for a in stored.answers] == [(START_MS + 2 * 60_000, None)]
    # The frequency stage's own progress follows its tallies to the scoring stage.
    assert harness.to(topology.touchpoint_partials)[-1].key == PROGRESS_KEY

    scored = [(sent.key, sent.value or b"", 0)] * 2  # delivered twice: counted once
    await harness.feed("score_touchpoints", scored)
    judged = all_idle(
        topology,
        START_MS + 12 * 60_000,
        topology.touchpoint_events,
        topology.survey_answers,
        topology.customer_messages,
    )
    await harness.feed("score_touchpoints", [(PROGRESS_KEY, judged, 0)])
    alerts = [orjson.loads(s.value or b"") for s in harness.to(topology.alerts)]
    assert [(a["kind"], a["status"], a["subject"], a["observed"]) for a in alerts] == [
        ("messaging_fatigue", "firing", "csat", 4.0)
    ]
    assert (alerts[0]["messaged_samples"], alerts[0]["others_samples"]) == (1, 1)
    assert sample("cxmon_messaging_fatigue", metric="csat", severity="warning") == 1
    assert sample("cxmon_fatigue_cohort_score", metric="csat", cohort="messaged") == 1
    assert sample("cxmon_fatigue_cohort_score", metric="csat", cohort="others") == 5
    assert sample("cxmon_fatigue_gap", metric="csat") == 4


async def test_what_fatigue_left_behind_is_dropped_by_a_catalog_without_it(
    harness: Harness,
) -> None:
    """A worker restarted without the fatigue rule finds an answer waiting in a customer's
    state and a cohort tally on its way to scoring: the answer is dropped (its customer no
    longer waits, nor keeps its messages for it) and the tally is not taken for a touchpoint.
    """
    topology = harness.topology
    waiting = CustomerMessages(answers=[Answered(START_MS, 7, Tally(csat_count=1, csat_sum=2))])
    topology.customer_frequency.store.put(0, b"c-1", waiting.encode())
    marks = all_idle(topology, START_MS + 3_600_000, topology.touchpoint_events, topology.contacts)
    await harness.feed("count_customer_messages", [(PROGRESS_KEY, marks, 0)])
    stored = harness.pipeline.frequency.customers.states.get(b"c-1") or b""
    assert CustomerMessages.decode(stored).answers == []
    assert harness.pipeline.frequency._due(stored) is None

    bucket = BucketTally(START_MS, START_MS, Tally(csat_count=1, csat_sum=2), "4")
    tally = TouchpointPartial(FATIGUE_SUBJECT, "cx-monitor.customer-messages-0", 1, [bucket])
    await harness.feed("score_touchpoints", [(FATIGUE_SUBJECT.encode(), tally.encode(), 0)])
    assert harness.pipeline.scoring.windows.get(FATIGUE_SUBJECT.encode()) is None


def test_a_relative_standard_exports_its_state_but_no_fixed_line() -> None:
    catalog = parse_catalog(
        """
key_moments:
  - touchpoint: order.review
    metric: nps
    drop: 15
    baseline: 2h
    window: 30m
    step: 5m
    severity: warning
"""
    )
    declare_catalog(catalog)
    moment = {"touchpoint": "order.review", "metric": "nps"}
    assert (
        REGISTRY.get_sample_value("cxmon_key_moment_degraded", {**moment, "severity": "warning"})
        == 0
    )
    for breaks in ("below", "above"):
        assert (
            REGISTRY.get_sample_value("cxmon_key_moment_threshold", {**moment, "breaks": breaks})
            is None
        )


async def test_a_dead_letter_too_big_to_write_keeps_what_fits_and_its_size(
    harness: Harness,
) -> None:
    huge = b"{" + b"x" * (MAX_DEAD_LETTER_BYTES + 10_000)
    await harness.feed("ingest_touchpoint_events", [(b"c-1", huge, 0)])
    (dead,) = harness.to(harness.topology.dead_letters)
    assert dead.value == huge[:MAX_DEAD_LETTER_BYTES]
    assert dead.headers["cxmon-original-size"] == str(len(huge)).encode()
    assert dead.headers["cxmon-reason"] == b"invalid_json"


async def test_journey_break_decided_per_customer_then_judged_per_break(tmp_path: Any) -> None:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(
        "scores: {window: 30m, step: 5m, grace: 1m}\n"
        "breaks:\n"
        "  - {from: app.cart, to: checkout.payment, within: 10m, max_rate: 0.4,"
        " min_samples: 4, severity: critical}\n"
    )
    harness = build_harness(tmp_path, CXMON_CATALOG=str(catalog))
    topology = harness.topology
    minute = 60_000

    def step(event_id: str, customer: str, touchpoint: str, at_min: int) -> bytes:
        return event(
            event_id,
            at_ms=START_MS + at_min * minute,
            customer_id=customer,
            touchpoint=touchpoint,
            channel="app",
            direction="inbound",
        )

    # Four customers fill the cart at 0m; only c-4 pays, at 2m. A login is no visit.
    records = [step(f"e{n}", f"c-{n}", "app.cart", 0) for n in range(1, 5)]
    records += [step("e5", "c-4", "checkout.payment", 2), step("e6", "c-9", "app.login", 3)]
    await harness.feed("ingest_touchpoint_events", [(b"c", raw, 0) for raw in records])
    visits = harness.data(topology.journey_visits)
    assert sorted(s.key or b"" for s in visits) == [b"c-1", b"c-2", b"c-3", b"c-4"]
    assert {s.partition for s in harness.to(topology.journey_visits) if s.key == PROGRESS_KEY} == {
        0,
        1,
    }, "every partition of the visits topic learns how far the events have got"

    # The customer stage: visits delivered twice (a crash before it), decided once closed
    # (16m less the 1m grace) is past every deadline (10m).
    items = [(s.key, s.value or b"", partition_of(s.key or b"", PARTITIONS)) for s in visits]
    await harness.feed("follow_journeys", items + items)
    assert harness.data(topology.journey_outcomes) == [], "nothing before the watermark"
    marks = all_idle(topology, START_MS + 16 * minute, topology.touchpoint_events)
    await harness.feed("follow_journeys", [(PROGRESS_KEY, marks, p) for p in range(PARTITIONS)])
    outcomes = [orjson.loads(s.value or b"") for s in harness.data(topology.journey_outcomes)]
    ten, two = START_MS + 10 * minute, START_MS + 2 * minute
    assert sorted((at, broken) for _, at, broken, _ in outcomes) == [
        (two, False),
        (ten, True),
        (ten, True),
        (ten, True),
    ]
    forwarded = [s for s in harness.to(topology.journey_outcomes) if s.key == PROGRESS_KEY]
    assert {s.partition for s in forwarded} == {0, 1}
    customers = [c for c in harness.changelog if c[0] == topology.journey_customers.name]
    assert customers[-1][3] is None, "a customer with everything decided leaves the table"

    # The break stage: the attempts delivered twice, the customer stage's marks, one alert.
    key = b"app.cart -> checkout.payment"
    owner = partition_of(key, PARTITIONS)
    sent = [(key, s.value or b"", owner) for s in harness.data(topology.journey_outcomes)]
    await harness.feed("judge_breaks", sent + sent)
    assert harness.to(topology.alerts) == []
    done = all_idle(topology, START_MS + 16 * minute, topology.journey_visits)
    await harness.feed("judge_breaks", [(PROGRESS_KEY, done, owner)])
    alerts = [orjson.loads(s.value or b"") for s in harness.to(topology.alerts)]
    assert [
        (a["kind"], a["status"], a["subject"], a["observed"], a["samples"]) for a in alerts
    ] == [("journey_break", "firing", "app.cart -> checkout.payment", 0.75, 4)]
    labels = {"from": "app.cart", "to": "checkout.payment"}
    assert sample("cxmon_journey_broken", **labels, severity="critical") == 1
    assert sample("cxmon_journey_break_rate", **labels) == 0.75
    assert sample("cxmon_journey_break_samples", **labels) == 4
    later = all_idle(topology, START_MS + 30 * minute, topology.journey_visits)
    await harness.feed("judge_breaks", [(PROGRESS_KEY, later, owner)])
    assert len(harness.to(topology.alerts)) == 1, "an incident fires once"

    revoked = {TP(topology.journey_outcomes.get_topic_name(), owner)}
    harness.pipeline.breaks.forget_revoked_breaks(harness.app, revoked, signal=None)
    assert sample("cxmon_journey_broken", **labels, severity="critical") == 0
    assert REGISTRY.get_sample_value("cxmon_journey_break_rate", labels) is None


async def test_journey_stage_writes_a_stored_batch_again_and_never_reapplies_its_visits(
    tmp_path: Any,
) -> None:
    """A crash after the customer stage stored a batch: its writes and attempts go out on
    the next batch, and visits the checkpoint covers are skipped, even for a customer that
    has left the table (applied to an empty state, they would open a second attempt)."""
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(
        "breaks:\n  - {from: app.cart, to: checkout.payment, within: 10m, max_rate: 0.4}\n"
    )
    harness = build_harness(tmp_path, CXMON_CATALOG=str(catalog))
    topology, pipeline = harness.topology, harness.pipeline
    customer = b"c-1"
    partition = partition_of(customer, PARTITIONS)
    states = pipeline.journeys.customers
    states.states.put(partition, customer, CustomerJourneys(partition).encode())
    attempt = Outcome("app.cart -> checkout.payment", START_MS + 600_000, True, 42)
    outcomes = topology.journey_outcomes.get_topic_name()
    sent_again = Send(outcomes, attempt.break_id.encode(), attempt.encode())
    stored = KeyedCheckpoint(offset=5, sequence=3, states={"c-1": None}, sends=[sent_again])
    key = source_name(topology.journey_visits.get_topic_name(), partition).encode()
    states.checkpoints.put(partition, key, stored.encode())

    # Redelivered from before the crash (offsets 0 and 1, both covered by offset 5).
    visits = CustomerVisits("c-1", {"app.cart": [(START_MS, 7)]}).encode()
    await harness.feed("follow_journeys", [(customer, visits, partition)] * 2)
    sent = [Outcome.decode(s.value or b"") for s in harness.data(topology.journey_outcomes)]
    assert sent == [attempt], "the stored attempt is sent again"
    assert states.states.get(customer) is None, "and its customer deleted"
    assert (topology.journey_customers.name, partition, customer, None) in harness.changelog
    cleared = KeyedCheckpoint.decode(states.checkpoints.get(key) or b"")
    assert cleared == KeyedCheckpoint(offset=5, sequence=3)


def test_checkpoints_keep_fed_customers_first_and_each_within_the_limit() -> None:
    def customer(visits: int) -> bytes:
        state = CustomerJourneys(0)
        state.visits["app.cart"] = [(START_MS + n, n) for n in range(visits)]
        return state.encode()

    fed = [Change(f"f{n}".encode(), customer(2)) for n in range(3)]
    # Each decided customer holds about 40 KB of visits: a few fill one checkpoint.
    decided = [Change(f"d{n}".encode(), customer(2_000)) for n in range(30)]
    attempt = Send("outcomes", b"a -> b", b"broken")
    decided[0].sends.append(attempt)
    chunks = list(chunked(9, 3, fed, decided))
    assert len(chunks) > 1
    assert all(c.offset == 9 for c in chunks)
    assert [c.sequence for c in chunks] == list(range(4, 4 + len(chunks))), "each its own"
    assert list(chunks[0].states)[:3] == ["f0", "f1", "f2"], "fed customers ride the first"
    assert [k for c in chunks for k in c.states] == ["f0", "f1", "f2"] + [
        f"d{n}" for n in range(30)
    ]
    assert chunks[0].sends == [attempt], "a customer's sends ride with its state"
    for chunk in chunks:
        assert len(chunk.encode()) < PRODUCER_MAX_REQUEST_BYTES // 2
        assert KeyedCheckpoint.decode(chunk.encode()) == chunk
    assert list(chunked(9, 3, [], [])) == [], "nothing changed: nothing to store"


async def test_a_checkpoint_too_large_for_a_request_is_stored_in_parts_then_applied(
    tmp_path: Any,
) -> None:
    """Every customer fed records rides one checkpoint, however many (a worker catching up
    on a long backlog feeds thousands a partition): more than a produce request takes, its
    parts are stored first, then a head that names them. A worker that stopped with the
    head stored, before any of it was applied, writes and sends all of it again."""
    first = build_harness(tmp_path / "first")
    topology, customers = first.topology, first.pipeline.journeys.customers
    partition = 3
    visits = CustomerJourneys(partition)
    visits.visits["app.cart"] = [(START_MS + n, n) for n in range(20)]
    states: dict[str, bytes | None] = {f"c-{n}": visits.encode() for n in range(3_000)}
    attempt = Send(topology.journey_outcomes.get_topic_name(), b"a -> b", b"broken")
    checkpoint = KeyedCheckpoint(9, 4, dict(states), [attempt])
    assert len(checkpoint.encode()) > PRODUCER_MAX_REQUEST_BYTES

    await customers.store(partition, checkpoint)
    await first.app.outbox.handed()
    head_key = source_name(topology.journey_visits.get_topic_name(), partition).encode()
    written = [
        (key, value)
        for table, _, key, value in first.changelog
        if table == topology.journey_checkpoints.name
    ]
    parts = [key for key, value in written if key != head_key and value is not None]
    heads = [KeyedCheckpoint.decode(value or b"") for key, value in written if key == head_key]
    assert heads == [KeyedCheckpoint(9, 4, parts=len(parts)), KeyedCheckpoint(9, 4)]
    assert len(parts) > 1
    assert all(len(value or b"") < PRODUCER_MAX_REQUEST_BYTES // 2 for _, value in written)
    assert [key for key, value in written if value is None] == parts, "gone once applied"
    assert {key: customers.states.get(key.encode()) for key in states} == states
    assert [s.value for s in first.data(topology.journey_outcomes)] == [b"broken"]

    # The changelog as a worker left it that stopped right after storing the head.
    second = build_harness(tmp_path / "second")
    again = second.pipeline.journeys.customers
    upto_head = written[: len(parts) + 1]
    for key, value in upto_head:
        again.checkpoints.put(partition, key, value or b"")
    assert await again.resume(partition) == KeyedCheckpoint(9, 4)
    await second.app.outbox.handed()
    assert {key: again.states.get(key.encode()) for key in states} == states
    assert [s.value for s in second.data(topology.journey_outcomes)] == [b"broken"]
    assert KeyedCheckpoint.decode(again.checkpoints.get(head_key) or b"") == KeyedCheckpoint(9, 4)
    assert not [key for key, _ in again.checkpoints.items() if key != head_key]


async def test_an_input_committed_to_its_end_before_a_restart_is_reported_idle(
    harness: Harness,
) -> None:
    """A worker (re)started after the group committed an input to its end reads none of it,
    yet must say it is idle, or every stage it feeds waits for it for good; an input read
    only partly by what was committed, or handed to an agent but not finished, is not."""
    topology, offsets = harness.topology, harness.pipeline.wiring.batches.offsets
    events, answers = (
        topology.touchpoint_events.get_topic_name(),
        topology.survey_answers.get_topic_name(),
    )
    done, behind = TP(events, 0), TP(answers, 1)
    consumer: Any = harness.app.consumer
    consumer.assignment = lambda: {done, behind}
    consumer.highwater = lambda tp: 40

    async def highwaters(*tps: TP) -> dict[TP, int]:
        return dict.fromkeys(tps, 40)

    consumer.highwaters = highwaters

    async def committed(tps: set[TP]) -> dict[TP, int]:
        return {tp: offset for tp, offset in {done: 40, behind: 25}.items() if tp in tps}

    offsets._committed = committed  # type: ignore[method-assign]
    await harness.pipeline.ingest.report_idle_inputs()
    await harness.app.outbox.handed()
    marks = [
        m for s in harness.to(topology.touchpoint_partials) for m in decode_marks(s.value or b"")
    ]
    assert marks == [SourceMark(source_name(events, 0), None, True)] * PARTITIONS
    assert offsets.finished_to(behind) == 25

    # Taken up to the end but not finished (its sends may not be out): not idle yet.
    assert offsets.cursors.admit(behind, 25) is not None
    offsets.cursors.cursors[behind].next_offset = 40
    harness.sent.clear()
    harness.pipeline.wiring.sources.idle_reported_at = 0.0
    await harness.pipeline.ingest.report_idle_inputs()
    await harness.app.outbox.handed()
    marks = [
        m for s in harness.to(topology.touchpoint_partials) for m in decode_marks(s.value or b"")
    ]
    assert source_name(answers, 1) not in {m.source for m in marks}
    offsets.cursors.finished(behind, 39)
    # Read up to 00:01 and 00:02 here, and told by a mark that another worker's input
    # reached 00:05, when it asks for the ends: the idle marks vouch for no later time
    # (the marks of what is read after the question may reach a stage before them).
    sources = harness.pipeline.wiring.sources
    sources.saw(events, 0, 39, START_MS + 60_000)
    sources.saw(answers, 1, 38, START_MS + 120_000)
    harness.pipeline.wiring.take_marks(
        harness.pipeline.scoring.progress[0],
        encode_marks([SourceMark(source_name(events, 1), START_MS + 300_000, False)]),
    )
    harness.sent.clear()
    sources.idle_reported_at = 0.0
    await harness.pipeline.ingest.report_idle_inputs()
    await harness.app.outbox.handed()
    marks = [
        m for s in harness.to(topology.touchpoint_partials) for m in decode_marks(s.value or b"")
    ]
    vouches = START_MS + 300_000
    assert SourceMark(source_name(answers, 1), START_MS + 120_000, True, vouches) in marks
    assert SourceMark(source_name(events, 0), START_MS + 60_000, True, vouches) in marks


async def test_an_idle_mark_is_said_again_only_once_it_changes_or_after_a_rebalance(
    harness: Harness,
) -> None:
    """Said again unchanged while no other mark changes, an idle mark tells no stage
    anything: after a backlog, the stages read and committed such marks every tick for
    seconds before they could drain."""
    topology, ingest = harness.topology, harness.pipeline.ingest
    sources, events = harness.pipeline.wiring.sources, topology.touchpoint_events.get_topic_name()
    idle = TP(events, 0)
    consumer: Any = harness.app.consumer
    consumer.assignment = lambda: {idle}
    consumer.highwater = lambda tp: 40

    async def highwaters(*tps: TP) -> dict[TP, int]:
        return dict.fromkeys(tps, 40)

    async def committed(tps: set[TP]) -> dict[TP, int]:
        return dict.fromkeys(tps, 40)

    consumer.highwaters = highwaters
    harness.pipeline.wiring.batches.offsets._committed = committed  # type: ignore[method-assign]

    async def said() -> list[SourceMark]:
        harness.sent.clear()
        sources.read_at = time.monotonic()  # the group read lately: a report every tick
        await ingest.report_idle_inputs()
        await harness.app.outbox.handed()
        return [
            m
            for s in harness.to(topology.touchpoint_partials)
            for m in decode_marks(s.value or b"")
        ]

    source = source_name(events, 0)
    assert await said() == [SourceMark(source, None, True)] * PARTITIONS
    assert await said() == [], "unchanged"
    sources.hear([SourceMark(source_name(events, 1), START_MS, False)])
    assert await said() == [SourceMark(source, None, True, START_MS)] * PARTITIONS, "vouches more"
    assert await said() == []
    sources.hear([SourceMark(source_name(events, 1), START_MS, False)])
    assert await said() == [], "heard again, unchanged"
    sources.hear([SourceMark(source_name(events, 1), START_MS, True)])
    assert await said() == [SourceMark(source, None, True, START_MS)] * PARTITIONS, (
        "the others moved on downstream: it vouches for as far as they have got now"
    )
    assert await said() == []
    ingest.say_idle_again(None, {TP(events, 1)}, signal=None)
    assert await said() == [SourceMark(source, None, True, START_MS)] * PARTITIONS, "rebalanced"
    await ingest._report_progress({idle: []})
    await harness.app.outbox.handed()
    assert await said() == [SourceMark(source, None, True, START_MS)] * PARTITIONS, (
        "read since: downstream it was not idle"
    )
    harness.sent.clear()
    sources.read_at = sources.idle_reported_at = 0.0
    await ingest.report_idle_inputs()
    await harness.app.outbox.handed()
    assert [
        m for s in harness.to(topology.touchpoint_partials) for m in decode_marks(s.value or b"")
    ] == [SourceMark(source, None, True, START_MS)] * PARTITIONS, "the report at least every 15 s"


async def test_a_batch_of_input_done_has_the_idle_inputs_looked_at_without_waiting_a_tick(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Downstream, an idle input holds the watermark back until it vouches for the time of
    what was just read: it is looked at once a batch is done, not at the next tick."""
    monkeypatch.setattr(ingest_stage, "IDLE_REPORT_INTERVAL_S", 60.0)
    ingest = harness.pipeline.ingest
    reported = asyncio.Event()

    async def report_idle_inputs() -> None:
        reported.set()

    monkeypatch.setattr(ingest, "report_idle_inputs", report_idle_inputs)
    looking = asyncio.ensure_future(ingest.keep_reporting_idle_inputs())
    try:
        await asyncio.sleep(0.1)
        assert not reported.is_set(), "no input done, and the tick is a minute away"
        await ingest._report_progress(
            {TP(harness.topology.touchpoint_events.get_topic_name(), 0): []}
        )
        await asyncio.wait_for(reported.wait(), 5)
    finally:
        looking.cancel()


async def test_a_partition_whose_last_fetch_is_stale_is_not_reported_idle(
    harness: Harness,
) -> None:
    """The consumer's highwater is what the last fetch said: a partition whose next fetch
    is slow (a 10 MB record) looks caught up while records wait behind it. Said idle every
    tick, it vouched for the others' newer times, and its own records came in late (the
    10 MB fault test, 1 of 20 runs with two test processes). The broker is asked."""
    topology, offsets = harness.topology, harness.pipeline.wiring.batches.offsets
    events = topology.touchpoint_events.get_topic_name()
    stale, caught_up = TP(events, 0), TP(events, 1)
    consumer: Any = harness.app.consumer
    consumer.assignment = lambda: {stale, caught_up}
    consumer.highwater = lambda tp: 40

    async def highwaters(*tps: TP) -> dict[TP, int]:
        return {tp: {stale: 47, caught_up: 40}[tp] for tp in tps}

    async def committed(tps: set[TP]) -> dict[TP, int]:
        return dict.fromkeys(tps, 40)

    consumer.highwaters = highwaters
    offsets._committed = committed  # type: ignore[method-assign]
    await harness.pipeline.ingest.report_idle_inputs()
    await harness.app.outbox.handed()
    marks = {
        m.source
        for s in harness.to(topology.touchpoint_partials)
        for m in decode_marks(s.value or b"")
        if m.idle
    }
    assert marks == {source_name(events, 1)}


def test_a_batch_reports_its_partitions_as_still_read(harness: Harness) -> None:
    """A batch's own marks never say idle: the end its fetch saw may be old by now."""
    sources = harness.pipeline.wiring.sources
    events = harness.topology.touchpoint_events.get_topic_name()
    sources.saw(events, 0, 9, START_MS)
    assert sources.reading(events, 0) == SourceMark(source_name(events, 0), START_MS, False)


def test_a_partition_revoked_meanwhile_is_reported_not_idle_instead_of_crashing(
    harness: Harness,
) -> None:
    def revoked(tp: TP) -> int:
        raise AssertionError("Partition is not assigned")  # aiokafka's words

    app = SimpleNamespace(consumer=SimpleNamespace(highwater=revoked))
    events = harness.topology.touchpoint_events.get_topic_name()
    mark = harness.pipeline.wiring.sources.mark(cast(Any, app), events, 0, 10)
    assert mark.idle is False


async def test_a_table_write_once_delivered_is_held_by_the_store(harness: Harness) -> None:
    """The store knows how far its own acknowledged writes go: a worker keeping the partition
    across a rebalance reads none of it again (agents/tables.py)."""
    table = harness.topology.seen_ids
    state = PartitionedState(table)
    changelog = TP(table.changelog_topic.get_topic_name(), 1)
    table.store.keep({1})
    before = table.store.persisted_offset(changelog)
    written = await state.put(1, b"key", b"value")
    assert table.store.persisted_offset(changelog) == written.offset
    assert written.offset != before
    assert harness.changelog[-1] == (table.name, 1, b"key", b"value")
