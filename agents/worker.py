"""Builds one worker from the settings: catalog and scorer first, topics next, then Faust."""

from __future__ import annotations

import asyncio
import gc
import logging
from dataclasses import replace
from typing import Any

import faust
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agents.membership import GroupWatch, claim_data_dir
from agents.metrics import REGISTRY
from agents.notifier import Notifier
from agents.pipeline import Pipeline
from agents.pressure import PressurePage
from agents.stages.wiring import Core
from agents.streaming import Batches
from agents.topology import Topology, build_app
from streams.catalog import load_catalog
from streams.core.sentiment import build_scorer
from streams.kafka.topics import ensure_topics
from streams.settings import Settings

log = logging.getLogger(__name__)

# Faust allocates several objects a record (events, futures, handles), and the default
# collects the youngest generation every 700: about 6 µs a record for a bare agent
# (bench/faust_floor.py, 2026-12-05). Rarer collections cost the same memory within a few
# megabytes, as most of those objects are gone before any collection.
GC_THRESHOLDS = (50_000, 20, 100)


def assemble(settings: Settings) -> tuple[faust.App, Topology, Pipeline]:
    """The app with its agents and web pages; refuses a bad catalog before anything starts."""
    catalog = load_catalog(settings.catalog)
    for warning in catalog.warnings:
        log.warning("%s", warning)
    core = Core(catalog=catalog, scorer=build_scorer(settings.sentiment))
    app = build_app(settings)
    topology = Topology(app, settings)
    batches = Batches(app, settings)
    batches.attach()
    pipeline = Pipeline(app, topology, settings, core, batches)
    pipeline.attach()
    Notifier(app, topology, settings, batches).attach()
    PressurePage(app, topology, settings, pipeline.frequency.policy).attach()
    GroupWatch(app, settings, settings.instance_id or "").attach()

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        # aiohttp refuses a charset inside content_type; the header carries it whole.
        return web.bytes(generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

    return app, topology, pipeline


def run(settings: Settings) -> int:
    claim = claim_data_dir(settings)
    settings = replace(settings, instance_id=claim.instance_id)
    gc.set_threshold(*GC_THRESHOLDS)
    app, topology, _ = assemble(settings)
    created = asyncio.run(ensure_topics(settings, topology.specs()))
    if created:
        log.info("created %d topics", len(created))
    worker = faust.Worker(app, loglevel=settings.log_level.upper(), redirect_stdouts=False)
    worker.execute_from_commandline()
    return 0
