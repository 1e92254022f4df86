"""The Faust app, and every topic and table of the monitor, declared once."""

from __future__ import annotations

from collections.abc import Iterable
from functools import cached_property
from typing import Any

import faust
from faust.sensors import Sensor
from mode import ServiceT

from agents.outbox import Outbox
from agents.tables import BulkRestoredTable, ChangelogLoader
from agents.transport import use_paced_fetches
from streams.kafka.topics import COMPACTED, TopicSpec, input_topics
from streams.settings import Settings

RAW: dict[str, Any] = {
    "key_type": bytes,
    "value_type": bytes,
    "key_serializer": "raw",
    "value_serializer": "raw",
}


# Kafka's default record batch limit (message.max.bytes is 1,048,588): every record read
# from an input topic can be written again, as a dead letter, under it.
PRODUCER_MAX_REQUEST_BYTES = 1_048_576


class App(faust.App):
    """Faust's app without its Monitor sensor, whose statistics nobody reads here, and
    with the outbox every record of the worker leaves by (agents/outbox.py).

    The worker's own metrics are in `agents/metrics.py`. The Monitor is told of every
    record read, every event a stream takes and every message sent: about 11 µs a record
    for a bare agent (bench/faust_floor.py, 2026-12-05). Faust's own code still finds it
    as `app.monitor`, it is only no longer called for each of those.
    """

    @cached_property
    def outbox(self) -> Outbox:
        return Outbox(self.producer)

    def on_init_dependencies(self) -> Iterable[ServiceT]:
        dependencies = super().on_init_dependencies()
        self.sensors.remove(self.monitor)
        # Faust's base sensor does nothing; with no sensor at all, every rebalance would
        # log two warnings that it found no sensor state.
        self.sensors.add(Sensor())
        return dependencies


def build_app(settings: Settings) -> faust.App:
    # Faust hands its credentials to aiokafka: built from the same options as our own
    # clients, so the worker's producer and consumers connect exactly as `publish` does.
    security = settings.broker_security.client_options()
    credentials: faust.SASLCredentials | faust.SSLCredentials | None = None
    if "sasl_mechanism" in security:
        credentials = faust.SASLCredentials(
            username=security["sasl_plain_username"],
            password=security["sasl_plain_password"],
            mechanism=security["sasl_mechanism"],
            ssl_context=security["ssl_context"],
        )
    elif security["ssl_context"] is not None:
        credentials = faust.SSLCredentials(security["ssl_context"])
    app = App(
        settings.app_id,
        broker=settings.broker_url,
        broker_credentials=credentials,
        store="memory://",
        datadir=str(settings.data_dir / "worker"),
        autodiscover=False,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication,
        processing_guarantee="at_least_once",
        # A standby copy costs each worker the other workers' changelogs all the time; a
        # worker taking a partition over reads its changelog in bulk instead (agents/tables).
        table_standby_replicas=settings.standby_replicas,
        consumer_group_instance_id=settings.instance_id,
        broker_session_timeout=30.0,
        broker_heartbeat_interval=3.0,
        # No linger: the outbox hands each burst of a stage's records over at once, and a
        # stage waiting for its checkpoint should not also wait out a linger, hop after hop.
        producer_linger_ms=0,
        producer_max_request_size=PRODUCER_MAX_REQUEST_BYTES,
        web_enabled=True,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_in_thread=False,
    )
    use_paced_fetches(app, settings.fetch_interval_ms / 1000)
    return app


class Topology:
    """Topics in, topics out, internal repartition topics and state tables, for one app."""

    def __init__(self, app: faust.App, settings: Settings) -> None:
        names = settings.topics
        internal = settings.internal_prefix
        self.partitions = settings.partitions

        def topic(name: str, **config: str) -> faust.TopicT:
            return app.topic(name, partitions=settings.partitions, config=config or None, **RAW)

        self.loader = ChangelogLoader(settings)

        def table(name: str, help_text: str) -> BulkRestoredTable:
            created = BulkRestoredTable(
                app,
                self.loader,
                name=name,
                beacon=app.tables.beacon,
                partitions=settings.partitions,
                changelog_topic=topic(f"{settings.app_id}-{name}-changelog", **COMPACTED),
                help=help_text,
                key_type=bytes,  # bytes keys and values make Faust use the raw codec
                value_type=bytes,
            )
            app.tables.add(created)
            return created

        events, answers, links = (
            topic(spec.name, **spec.config) for spec in input_topics(settings)
        )
        self.touchpoint_events, self.survey_answers, self.identity_links = events, answers, links
        self.alerts = topic(names.alerts)
        self.dead_letters = topic(names.dead_letters)

        # Repartitioned by what the next stage keys its state on, with our own partitioner.
        self.touchpoint_partials = topic(f"{internal}touchpoint-partials")
        # Identity links and contact-only messages, keyed by contact, in one ordered stream.
        self.contacts = topic(f"{internal}contacts")
        self.customer_messages = topic(f"{internal}customer-messages")
        # Visits of the touchpoints journey breaks watch, keyed by customer; the attempts
        # they decide, keyed by break.
        self.journey_visits = topic(f"{internal}journey-visits")
        self.journey_outcomes = topic(f"{internal}journey-outcomes")

        self.seen_ids = table("seen-ids", "Event and answer ids already counted, with their time.")
        self.touchpoint_windows = table("touchpoint-windows", "Rolling tallies per touchpoint.")
        self.ingest_checkpoints = table(
            "ingest-checkpoints",
            "Per input partition: offset done, records not yet confirmed sent.",
        )
        self.identities = table("identities", "Identity links of each contact key, oldest first.")
        self.held_messages = table(
            "held-contact-messages", "Contact-only messages waiting for the links of their time."
        )
        self.customer_frequency = table(
            "customer-frequency",
            "Per customer: messages in window, its incident, answers for messaging fatigue.",
        )
        self.customer_checkpoints = table(
            "customer-checkpoints",
            "Per customer-messages partition: offset done, customers and sends not yet written.",
        )
        self.firing_alerts = table("firing-alerts", "Alerts firing, re-sent to Alertmanager.")
        self.journey_customers = table(
            "journey-customers", "Per customer: visits not decided yet and open attempts."
        )
        self.journey_checkpoints = table(
            "journey-checkpoints",
            "Per journey-visits partition: offset done, customers and attempts not yet written.",
        )
        self.journey_breaks = table(
            "journey-breaks", "Per journey break: decided attempts by bucket, and its incident."
        )

    def topics(self) -> list[faust.TopicT]:
        return [
            self.touchpoint_events, self.survey_answers, self.identity_links,
            self.alerts, self.dead_letters, self.touchpoint_partials,
            self.contacts, self.customer_messages, self.journey_visits, self.journey_outcomes,
        ]  # fmt: skip

    def internal(self) -> list[faust.TopicT]:
        """The topics only our stages read: they carry records in envelopes (streams/envelope)."""
        return [
            self.touchpoint_partials, self.contacts, self.customer_messages,
            self.journey_visits, self.journey_outcomes,
        ]  # fmt: skip

    def tables(self) -> list[BulkRestoredTable]:
        return [
            self.ingest_checkpoints, self.seen_ids, self.touchpoint_windows, self.identities,
            self.held_messages, self.customer_frequency, self.customer_checkpoints,
            self.firing_alerts,
            self.journey_customers, self.journey_checkpoints, self.journey_breaks,
        ]  # fmt: skip

    def specs(self) -> list[TopicSpec]:
        """Every topic the worker needs, changelogs included, to create before it starts."""
        topics = [*self.topics(), *(table.changelog_topic for table in self.tables())]
        return [
            TopicSpec(topic.get_topic_name(), self.partitions, dict(topic.config or {}))
            for topic in topics
        ]
