"""The worker's place in its group: an instance id kept in its data dir, and a stall watch.

A worker that dies without leaving its group (kill -9, a crash, a lost host) leaves a
member behind that the broker only drops after the session timeout, and the local broker
never does: a worker that comes back as a new member then waits for it for good. Rejoining
as the same static member (KIP-345) takes the dead one's place at once, so each data dir
keeps the worker's instance id, as Kafka Streams keeps its process id in its state dir.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import faust
from mode import Service

from agents import metrics
from streams.kafka.group import GroupClient
from streams.kafka.stall import StallWatch, describe, diagnose
from streams.settings import Settings, SettingsError

log = logging.getLogger(__name__)

INSTANCE_FILE = "instance-id"
LOCK_FILE = "worker.lock"
WATCH_INTERVAL_S = 10.0
# While a stall lasts, its error is logged again this often, not at every look.
REPEAT_ERROR_S = 300.0


class DataDirInUse(SettingsError):
    """Another live worker holds the data dir: two workers would share one group member."""


@dataclass
class Claim:
    """The data dir, held for the process's life (the lock goes with the process)."""

    instance_id: str
    lock: IO[str]


def claim_data_dir(settings: Settings) -> Claim:
    """Locks the data dir and returns the worker's instance id: CXMON_INSTANCE_ID if set,
    else the one kept in the data dir, written there on the first start."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    lock = (settings.data_dir / LOCK_FILE).open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        lock.close()
        raise DataDirInUse(
            f"CXMON_DATA_DIR={str(settings.data_dir)!r} is in use by a running worker "
            f"({holder}): give each worker its own data dir"
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    lock.flush()
    return Claim(settings.instance_id or kept_instance_id(settings.data_dir, settings.app_id), lock)


def kept_instance_id(data_dir: Path, app_id: str) -> str:
    path = data_dir / INSTANCE_FILE
    try:
        kept = path.read_text().strip()
    except FileNotFoundError:
        kept = ""
    if kept:
        return kept
    made = f"{app_id}-{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    # Written whole or not at all: a crash mid-write must not leave half an id behind.
    partial = path.with_suffix(".partial")
    partial.write_text(made + "\n")
    partial.replace(path)
    log.info("this worker's instance id is %s, kept in %s", made, path)
    return made


class GroupWatch(Service):
    """Every few seconds, reads the group and logs, and exports, input partitions nobody reads.

    A service of the app's own, not a Faust timer: those start only once the tables are
    recovered, which a worker waiting for its first partitions never gets to.
    """

    def __init__(self, app: faust.App, settings: Settings, instance_id: str) -> None:
        super().__init__()
        self.app = app
        self.settings = settings
        self.instance_id = instance_id
        topics = settings.topics
        self.inputs = (topics.touchpoint_events, topics.survey_answers, topics.identity_links)
        self.watch = StallWatch()
        self.client: GroupClient | None = None
        self.logged_at: float | None = None
        self.introduced = False

    def attach(self) -> None:
        self.app.add_dependency(self)

    async def on_start(self) -> None:
        # /metrics too from the start: a stalled worker must still be scraped. Faust starts
        # its web server once the tables are recovered, and then finds it running.
        await self.app.on_started_init_web_server()

    @Service.timer(WATCH_INTERVAL_S)
    async def watch_group(self) -> None:
        await self.look()

    async def on_stop(self) -> None:
        await self.close_client()

    async def look(self) -> None:
        try:
            if self.client is None:
                self.client = await GroupClient(self.settings).__aenter__()
            group = await self.client.describe(self.inputs)
            positions = await self.client.positions(self.inputs)
        except Exception as exc:  # the broker may be away: the watch tries again later
            log.debug("reading group %s failed: %r", self.settings.app_id, exc)
            await self.close_client()
            return
        if not self.introduced:
            self.introduced = True
            log.info(
                "group %s: this worker is instance %s; members: %s",
                self.settings.app_id,
                self.instance_id,
                describe(group.members),
            )
        now = time.monotonic()
        stalls = self.watch.observe(now, positions)
        metrics.GROUP_MEMBERS.set(len(group.members))
        metrics.STALLED_INPUT_PARTITIONS.set(len(stalls))
        if not stalls:
            if self.logged_at is not None:
                log.warning("every input partition of group %s is read again", self.settings.app_id)
            self.logged_at = None
        elif self.logged_at is None or now - self.logged_at >= REPEAT_ERROR_S:
            self.logged_at = now
            group_id = self.settings.app_id
            log.error(
                "%s", diagnose(group_id, group.state, stalls, group.members, self.instance_id)
            )

    async def close_client(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            try:
                await client.__aexit__()
            except Exception as exc:  # closing what is already broken
                log.debug("closing the group client: %r", exc)
