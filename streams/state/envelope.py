"""Many records of one internal topic partition carried in one message, and taken apart again.

A stage that sends a record a key pays the framework's cost a record twice: to produce it
and, downstream, to consume it. Records bound for the same partition of an internal topic
travel together instead, in the order they were sent, so that cost is paid once a batch.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

# The key of an envelope; no record key of ours begins with this byte.
ENVELOPE_KEY = b"\x00envelope"

_LENGTH = struct.Struct(">I")
_HEADERS = struct.Struct(">H")


class MalformedEnvelope(ValueError):
    """An envelope cut short or padded: written by something else, or damaged on the way."""


@dataclass(frozen=True, slots=True)
class Record:
    """One record inside an envelope, as its sender would have sent it alone."""

    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


def _framed(record: Record) -> bytes:
    parts = [_LENGTH.pack(len(record.key)), record.key, _LENGTH.pack(len(record.value))]
    parts += [record.value, _HEADERS.pack(len(record.headers))]
    for name, value in record.headers:
        encoded = name.encode()
        parts += [_LENGTH.pack(len(encoded)), encoded, _LENGTH.pack(len(value)), value]
    return b"".join(parts)


def pack(records: Iterable[Record], max_bytes: int) -> Iterator[bytes]:
    """The records in order, in as few envelopes as keep each within `max_bytes`.

    A record larger than `max_bytes` on its own still gets an envelope of its own: the
    producer, not this function, is the judge of what a request may carry.
    """
    frames: list[bytes] = []
    size = 0
    for record in records:
        frame = _framed(record)
        if frames and size + len(frame) > max_bytes:
            yield b"".join(frames)
            frames, size = [], 0
        frames.append(frame)
        size += len(frame)
    if frames:
        yield b"".join(frames)


def unpack(raw: bytes) -> list[Record]:
    """The records of an envelope, in the order they were packed."""
    records = []
    view = memoryview(raw)
    at = 0

    def take(length: int) -> bytes:
        nonlocal at
        if at + length > len(view):
            raise MalformedEnvelope(f"envelope of {len(raw)} bytes ends inside a record at {at}")
        chunk = view[at : at + length].tobytes()
        at += length
        return chunk

    def length(fmt: struct.Struct) -> int:
        (value,) = fmt.unpack(take(fmt.size))
        return int(value)

    while at < len(view):
        key = take(length(_LENGTH))
        value = take(length(_LENGTH))
        headers = tuple(
            (take(length(_LENGTH)).decode(), take(length(_LENGTH))) for _ in range(length(_HEADERS))
        )
        records.append(Record(key, value, headers))
    return records
