"""Ids already counted: one stored value per input batch, one index in memory."""

from __future__ import annotations

import struct
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from hashlib import blake2b

# A stored batch: its partition and newest event time, then (digest, offset) pairs.
HEADER = struct.Struct("<qq")
OFFSET_BITS = 44  # an offset below 2**44 and a partition number share one int


def id_digest(topic: str, record_id: str) -> int:
    """64 bits of hash: a false duplicate among a million ids is a 1 in 37 million chance."""
    digest = blake2b(f"{topic}\x1f{record_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def batch_prefix(source: str) -> bytes:
    """What the keys of every batch stored for one input partition start with."""
    return f"{source}\x1f".encode()


def batch_key(source: str, first_offset: int) -> bytes:
    """Where the ids first counted in a batch are stored: its source and first offset."""
    return batch_prefix(source) + str(first_offset).encode()


@dataclass(slots=True)
class SeenBatch:
    """The ids first counted in one batch of one input partition, with where they were read."""

    partition: int
    newest_ms: int = -1
    pairs: array[int] = field(default_factory=lambda: array("q"))

    def add(self, digest: int, offset: int, occurred_at_ms: int) -> None:
        self.pairs.append(digest)
        self.pairs.append(offset)
        self.newest_ms = max(self.newest_ms, occurred_at_ms)

    def encode(self) -> bytes:
        return HEADER.pack(self.partition, self.newest_ms) + self.pairs.tobytes()

    @classmethod
    def decode(cls, raw: bytes) -> SeenBatch:
        partition, newest_ms = HEADER.unpack_from(raw)
        pairs = array("q")
        pairs.frombytes(raw[HEADER.size :])
        return cls(partition, newest_ms, pairs)

    def places(self) -> Iterable[tuple[int, int]]:
        """Each id's digest and the place it was read at (partition and offset in one int)."""
        pairs, base = self.pairs, self.partition << OFFSET_BITS
        return ((pairs[i], base | pairs[i + 1]) for i in range(0, len(pairs), 2))


def newest_ms(raw: bytes) -> int:
    """The newest event time of a stored batch, without decoding its ids."""
    return int(HEADER.unpack_from(raw)[1])


class SeenIds:
    """Where each counted id was first read: an id read at another place is a duplicate.

    The same record read again after a crash (same partition and offset) is no duplicate.
    """

    def __init__(self) -> None:
        self.places: dict[int, int] = {}

    def first_time(self, digest: int, partition: int, offset: int) -> bool:
        here = partition << OFFSET_BITS | offset
        seen = self.places.setdefault(digest, here)
        return seen == here

    def load(self, batch: SeenBatch) -> None:
        for digest, place in batch.places():
            self.places.setdefault(digest, place)

    def forget(self, batch: SeenBatch) -> None:
        """A batch expired or moved to another worker: its ids are no longer known here."""
        for digest, place in batch.places():
            if self.places.get(digest) == place:
                del self.places[digest]
