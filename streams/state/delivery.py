"""Exact state over at-least-once delivery: what each stage has done, sent and taken in."""

from __future__ import annotations

from base64 import b64decode, b64encode
from dataclasses import dataclass, field

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
        return orjson.dumps(
            [
                self.offset,
                self.watermark_ms,
                [
                    [
                        s.topic,
                        None if s.key is None else _text(s.key),
                        _text(s.value),
                        [[name, _text(value)] for name, value in s.headers],
                    ]
                    for s in self.unsent
                ],
            ]
        )

    @classmethod
    def decode(cls, raw: bytes) -> Checkpoint:
        offset, watermark, unsent = orjson.loads(raw)
        return cls(
            offset,
            watermark,
            [
                Send(
                    topic,
                    None if key is None else b64decode(key),
                    b64decode(value),
                    tuple((name, b64decode(header)) for name, header in headers),
                )
                for topic, key, value, headers in unsent
            ],
        )


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
