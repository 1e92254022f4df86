"""The worker's stages bound to Faust: each stage's loop an agent of its topic."""

from __future__ import annotations

from typing import Any, cast

import faust
from faust.types import TP

from agents import metrics
from agents.stages.breaks import Breaks
from agents.stages.contacts import Contacts
from agents.stages.frequency import Frequency
from agents.stages.ingest import Ingest
from agents.stages.journeys import Journeys
from agents.stages.scoring import Scoring
from agents.stages.wiring import Core, Wiring
from agents.streaming import Batches
from agents.topology import Topology
from streams.settings import Settings


class Pipeline:
    """One worker's stages, in the order records flow through them."""

    def __init__(
        self, app: faust.App, topology: Topology, settings: Settings, core: Core, batches: Batches
    ) -> None:
        self.app = app
        self.topology = topology
        self.wiring = wiring = Wiring(app, topology, settings, core, batches)
        self.scoring = Scoring(wiring)
        self.ingest = Ingest(wiring, self.scoring.judged_to_everywhere)
        self.contacts = Contacts(wiring)
        self.frequency = Frequency(wiring)
        self.journeys = Journeys(wiring)
        self.breaks = Breaks(wiring)
        metrics.declare_catalog(core.catalog)

    def attach(self) -> None:
        topology, app = self.topology, self.app
        for topic, agent in (
            (topology.touchpoint_events, self.ingest.ingest_touchpoint_events),
            (topology.survey_answers, self.ingest.ingest_survey_answers),
            (topology.identity_links, self.ingest.ingest_identity_links),
            (topology.touchpoint_partials, self.scoring.score_touchpoints),
            (topology.contacts, self.contacts.resolve_contacts),
            (topology.customer_messages, self.frequency.count_customer_messages),
            (topology.journey_visits, self.journeys.follow_journeys),
            (topology.journey_outcomes, self.breaks.judge_breaks),
        ):
            self.wiring.batches.bind(topic, agent.__name__, agent)
        app.task(self.ingest.keep_reporting_idle_inputs)
        app.on_partitions_revoked.connect(self.forget_revoked_progress)
        app.on_partitions_revoked.connect(self.scoring.forget_revoked_touchpoints)
        app.on_partitions_revoked.connect(self.breaks.forget_revoked_breaks)
        app.on_partitions_revoked.connect(self.ingest.forget_revoked_ids)
        app.on_partitions_revoked.connect(self.ingest.say_idle_again)

    def forget_revoked_progress(self, sender: Any, /, *args: Any, signal: Any, **_: Any) -> None:
        """A stage's partition, given back, is read again from the group's commit, its
        progress marks with it. Kept from before, an idle mark read again would vouch for
        the times the others have reached since, and windows would close on records still
        to come; rebuilt from the marks as they are read again, it says what they said."""
        (revoked,) = cast(tuple[set[TP]], args)
        topology = self.topology
        for topic, progress in (
            (topology.touchpoint_partials, self.scoring.progress),
            (topology.contacts, self.contacts.progress),
            (topology.customer_messages, self.frequency.progress),
            (topology.journey_visits, self.journeys.progress),
            (topology.journey_outcomes, self.breaks.progress),
        ):
            name = topic.get_topic_name()
            for tp in revoked:
                if tp.topic == name:
                    progress.pop(tp.partition, None)
