"""Exact state over at-least-once delivery: what each stage has done, sent and taken in."""

from __future__ import annotations

from base64 import b64decode, b64encode
from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class Send:
    """One record a stage sends on: kept until the broker has it, sent again after a crash."""

    topic: str
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


def _text(raw: bytes) -> str:
    return b64encode(raw).decode()


def _sends_to_wire(sends: list[Send]) -> list[Any]:
    return [
        [
            s.topic,
            None if s.key is None else _text(s.key),
            _text(s.value),
            [[name, _text(value)] for name, value in s.headers],
        ]
        for s in sends
    ]


def _sends_from_wire(wire: list[Any]) -> list[Send]:
    return [
        Send(
            topic,
            None if key is None else b64decode(key),
            b64decode(value),
            tuple((name, b64decode(header)) for name, header in headers),
        )
        for topic, key, value, headers in wire
    ]


@dataclass(slots=True)
class Checkpoint:
    """How far the first stage has got in one input partition, and what it has yet to send.

    The checkpoint of a batch is stored, with everything the batch sends, before any of
    it is sent; once the broker has taken the sends, they are cleared. A worker that
    dies in between restores the checkpoint and sends them again, and the batch is not
    folded a second time with different boundaries: the next stage can then recognise a
    batch it has already taken in by its source and last offset alone.
    """

    offset: int = -1
    watermark_ms: int | None = None
    unsent: list[Send] = field(default_factory=list)

    def encode(self) -> bytes:
        return orjson.dumps([self.offset, self.watermark_ms, _sends_to_wire(self.unsent)])

    @classmethod
    def decode(cls, raw: bytes) -> Checkpoint:
        offset, watermark, unsent = orjson.loads(raw)
        return cls(offset, watermark, _sends_from_wire(unsent))


def state_size(key: str | bytes, raw: bytes | None) -> int:
    """About what one key's state takes in a stored checkpoint."""
    return len(key) + len(raw or b"") + 8


def send_size(send: Send) -> int:
    """About what one send takes in a stored checkpoint: key, value and headers go as
    base64, a third larger."""
    payload = len(send.key or b"") + len(send.value)
    payload += sum(len(value) for _, value in send.headers)
    return len(send.topic) + payload * 4 // 3 + 32


@dataclass(slots=True)
class KeyedCheckpoint:
    """How far a stage keyed by customer has got in one partition, and what it has yet to
    write and send.

    Each batch's changed states (None: the key leaves the table) and what it sends are
    stored here, in one table value, before any of them is written or sent. A worker that
    dies in between writes and sends them again and skips the records up to `offset`: no
    record is applied twice, not even to a key that has left the table since, and what is
    sent on is sent again as it was (the next stage knows it by its source and offset).
    """

    offset: int = -1
    # Counts the partition's checkpoints: what a stage sends on names its batch by it.
    sequence: int = 0
    states: dict[str, bytes | None] = field(default_factory=dict)
    sends: list[Send] = field(default_factory=list)
    # More than none: the states and sends are stored apart, in this many values.
    parts: int = 0

    @property
    def applied(self) -> bool:
        return not (self.states or self.sends or self.parts)

    def encode(self) -> bytes:
        stored = [
            self.offset,
            self.sequence,
            {key: None if raw is None else raw.decode() for key, raw in self.states.items()},
            _sends_to_wire(self.sends),
        ]
        return orjson.dumps([*stored, self.parts] if self.parts else stored)

    @classmethod
    def decode(cls, raw: bytes) -> KeyedCheckpoint:
        offset, sequence, states, sends, *parts = orjson.loads(raw)
        return cls(
            offset,
            sequence,
            {key: None if text is None else text.encode() for key, text in states.items()},
            _sends_from_wire(sends),
            parts[0] if parts else 0,
        )

    def split(self, max_bytes: int) -> list[KeyedCheckpoint]:
        """Its states, then its sends, in order, in parts of about `max_bytes` encoded."""
        parts, size = [KeyedCheckpoint(self.offset, self.sequence)], 0

        def room(needed: int) -> KeyedCheckpoint:
            nonlocal size
            if size + needed > max_bytes and not parts[-1].applied:
                parts.append(KeyedCheckpoint(self.offset, self.sequence))
                size = 0
            size += needed
            return parts[-1]

        for key, raw in self.states.items():
            room(state_size(key, raw)).states[key] = raw
        for send in self.sends:
            room(send_size(send)).sends.append(send)
        return parts

    def joined(self, parts: list[KeyedCheckpoint]) -> KeyedCheckpoint:
        """This head with the states and sends of its parts, as it was before `split`."""
        whole = KeyedCheckpoint(self.offset, self.sequence)
        for part in parts:
            whole.states.update(part.states)
            whole.sends += part.sends
        return whole


@dataclass(slots=True)
class Applied:
    """The last batch of each input partition a piece of state has taken in."""

    offsets: dict[str, int] = field(default_factory=dict)

    def take(self, source: str, last_offset: int) -> bool:
        """True the first time a batch arrives; False when it is delivered again."""
        if last_offset <= self.offsets.get(source, -1):
            return False
        self.offsets[source] = last_offset
        return True


def wrap(applied: Applied, body: bytes) -> bytes:
    """One table value holding state and what it has taken in, so both change at once."""
    # JSON never holds a raw newline: the first one separates the two documents.
    return orjson.dumps(applied.offsets) + b"\n" + body


def unwrap(raw: bytes) -> tuple[Applied, bytes]:
    head, _, body = raw.partition(b"\n")
    return Applied(orjson.loads(head)), body
