"""Stages keyed by customer: each batch's changed states and sends stored whole, then applied."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import faust

from agents.streaming import DueIndex, PartitionedState
from agents.tables import BulkRestoredTable
from agents.topology import PRODUCER_MAX_REQUEST_BYTES
from streams.state.delivery import KeyedCheckpoint, Send, send_size, state_size
from streams.state.watermarks import source_name

log = logging.getLogger(__name__)

# A checkpoint is one table value: well within one produce request.
MAX_CHECKPOINT_BYTES = PRODUCER_MAX_REQUEST_BYTES // 4
# Larger than this (every key fed records rides one checkpoint, whatever their number), it
# is stored in parts of MAX_CHECKPOINT_BYTES, then a head that names them.
MAX_WHOLE_CHECKPOINT_BYTES = PRODUCER_MAX_REQUEST_BYTES * 3 // 4


@dataclass(slots=True)
class Change:
    """One key's new state (None: it leaves the table) and what its change sends on."""

    key: bytes
    raw: bytes | None
    sends: list[Send] = field(default_factory=list)


def chunked(
    offset: int, sequence: int, fed: list[Change], rest: list[Change]
) -> Iterator[KeyedCheckpoint]:
    """One partition's changes as checkpoints of about MAX_CHECKPOINT_BYTES each.

    Every key fed records rides the first, with the offset that covers the records, however
    large that makes it (`CheckpointedTable.store` then stores it in parts); keys only
    judged follow in as many as they need, each with the next sequence number. Nothing
    changed: nothing to store.
    """
    checkpoint, size = KeyedCheckpoint(offset, sequence + 1), 0
    for first, changes in ((True, fed), (False, rest)):
        for change in changes:
            if not first and size > MAX_CHECKPOINT_BYTES:
                yield checkpoint
                checkpoint, size = KeyedCheckpoint(offset, checkpoint.sequence + 1), 0
            checkpoint.states[change.key.decode()] = change.raw
            checkpoint.sends += change.sends
            size += state_size(change.key, change.raw)
            size += sum(send_size(send) for send in change.sends)
    if checkpoint.states:
        yield checkpoint


class CheckpointedTable:
    """A table keyed by customer, written only through checkpoints stored first.

    A batch's changes are stored, with the input offset they cover, in one value of the
    checkpoint table before any of them is written or sent; a worker that dies in between
    writes and sends them again when it resumes the partition, and skips the records up to
    the offset, so no record is applied twice, nor anything decided twice from other records.
    """

    def __init__(
        self,
        states: BulkRestoredTable,
        due_of: Callable[[bytes], Any],
        checkpoints: BulkRestoredTable,
        topic: faust.TopicT,
        deliver: Callable[[list[Send]], Awaitable[None]],
    ) -> None:
        self.states = PartitionedState(states)
        # Per partition, the keys waiting for event time, with `due_of` their stored value.
        self.due = DueIndex(self.states, due_of)
        self.checkpoints = PartitionedState(checkpoints)
        self.topic = topic.get_topic_name()
        self.deliver = deliver

    def _key(self, partition: int) -> bytes:
        return source_name(self.topic, partition).encode()

    def _part_key(self, partition: int, sequence: int, part: int) -> bytes:
        # Two sets of keys, by the sequence's parity: the parts of the next checkpoint never
        # overwrite those of the last one stored, which a restart may still need.
        return f"{source_name(self.topic, partition)}/part/{sequence % 2}/{part}".encode()

    async def resume(self, partition: int) -> KeyedCheckpoint:
        """The partition's last checkpoint, applied now if a stop came before it was."""
        raw = self.checkpoints.get(self._key(partition))
        if raw is None:
            return KeyedCheckpoint()
        checkpoint = KeyedCheckpoint.decode(raw)
        if checkpoint.applied:
            return checkpoint
        parts = checkpoint.parts
        if parts:
            checkpoint = checkpoint.joined(
                [self._part(partition, checkpoint, n) for n in range(parts)]
            )
        log.info(
            "writing again %d states and sending again %d records of %s",
            len(checkpoint.states),
            len(checkpoint.sends),
            self._key(partition).decode(),
        )
        await self._apply(partition, checkpoint, parts)
        return KeyedCheckpoint(checkpoint.offset, checkpoint.sequence)

    def _part(self, partition: int, head: KeyedCheckpoint, part: int) -> KeyedCheckpoint:
        raw = self.checkpoints.get(self._part_key(partition, head.sequence, part))
        if raw is None:
            raise RuntimeError(
                f"part {part} of {head.parts} of checkpoint {head.sequence} of "
                f"{self._key(partition).decode()} is missing from its table"
            )
        return KeyedCheckpoint.decode(raw)

    async def store_each(self, chains: Mapping[int, list[KeyedCheckpoint]]) -> None:
        """Each partition's checkpoints stored in order, the partitions side by side: a
        batch over eight partitions waits for the broker three times, not twenty-four."""

        async def store_all(partition: int, checkpoints: list[KeyedCheckpoint]) -> None:
            for checkpoint in checkpoints:
                await self.store(partition, checkpoint)

        await asyncio.gather(*(store_all(p, chain) for p, chain in chains.items()))

    async def store(self, partition: int, checkpoint: KeyedCheckpoint) -> None:
        """Stored with its offset before anything is written or sent, then applied; too
        large for one value, its parts first, then the head that names them."""
        raw, parts = checkpoint.encode(), 0
        if len(raw) > MAX_WHOLE_CHECKPOINT_BYTES:
            parts = await self._store_parts(partition, checkpoint)
            raw = KeyedCheckpoint(checkpoint.offset, checkpoint.sequence, parts=parts).encode()
        await self.checkpoints.put(partition, self._key(partition), raw)
        await self._apply(partition, checkpoint, parts)

    async def _store_parts(self, partition: int, checkpoint: KeyedCheckpoint) -> int:
        """Its states and sends stored in parts, side by side; how many."""
        split = checkpoint.split(MAX_CHECKPOINT_BYTES)
        await asyncio.gather(
            *(
                self.checkpoints.put(
                    partition, self._part_key(partition, checkpoint.sequence, n), part.encode()
                )
                for n, part in enumerate(split)
            )
        )
        return len(split)

    async def _apply(self, partition: int, checkpoint: KeyedCheckpoint, parts: int = 0) -> None:
        await self.deliver(checkpoint.sends)
        writes: list[Awaitable[object]] = []
        for customer, raw in checkpoint.states.items():
            key = customer.encode()
            if raw is None:
                self.due.set(partition, key, None)
                deleted = self.states.delete(partition, key)
                if deleted is not None:
                    writes.append(deleted)
                continue
            writes.append(self.states.put(partition, key, raw))
            self.due.set(partition, key, self.due.due_of(raw))
        # On the broker before the checkpoint forgets them: changelogs are separate topics.
        await asyncio.gather(*writes)
        done = KeyedCheckpoint(checkpoint.offset, checkpoint.sequence).encode()
        self.checkpoints.put(partition, self._key(partition), done)
        # After the head that no longer needs them, on the same changelog partition.
        for part in range(parts):
            self.checkpoints.delete(partition, self._part_key(partition, checkpoint.sequence, part))
