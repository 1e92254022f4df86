"""Dead letters as people read them: where each came from, why it was refused, its bytes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from models.decode import format_timestamp

# Enough of a record to recognise it on a terminal line; --json carries all of it.
SHOWN_BYTES = 160


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One record of the dead-letter topic, its headers read."""

    refused_at_ms: int
    topic: str
    partition: int | None
    offset: int | None
    reason: str
    error: str
    key: bytes | None
    value: bytes
    original_size: int | None

    @classmethod
    def of(
        cls,
        timestamp_ms: int,
        key: bytes | None,
        value: bytes,
        headers: Sequence[tuple[str, bytes]],
    ) -> DeadLetter:
        """Read from the record; a header the worker did not write reads as unknown."""
        named = {name: raw.decode("utf-8", "replace") for name, raw in headers}
        return cls(
            refused_at_ms=timestamp_ms,
            topic=named.get("cxmon-topic", "?"),
            partition=_number(named.get("cxmon-partition")),
            offset=_number(named.get("cxmon-offset")),
            reason=named.get("cxmon-reason", "?"),
            error=named.get("cxmon-error", ""),
            key=key,
            value=value,
            original_size=_number(named.get("cxmon-original-size")),
        )

    @property
    def size(self) -> int:
        """The size the producer sent: a record cut to fit the dead-letter topic says so."""
        return self.original_size if self.original_size is not None else len(self.value)

    def line(self) -> str:
        place = f"{self.topic}:{_or_unknown(self.partition)}@{_or_unknown(self.offset)}"
        shown = escaped(self.value[:SHOWN_BYTES])
        more = f" … ({self.size:,} bytes)" if self.size > SHOWN_BYTES else ""
        return (
            f"{format_timestamp(self.refused_at_ms)}  {place}  {self.reason}  {self.error}\n"
            f"    {shown}{more}"
        )

    def json(self) -> bytes:
        return orjson.dumps(
            {
                "refused_at": format_timestamp(self.refused_at_ms),
                "topic": self.topic,
                "partition": self.partition,
                "offset": self.offset,
                "reason": self.reason,
                "error": self.error,
                "key": None if self.key is None else escaped(self.key),
                "value": escaped(self.value),
                "size": self.size,
                "cut": self.original_size is not None,
            }
        )


def escaped(raw: bytes) -> str:
    """UTF-8 text as it is; any other byte, and control characters, as escapes."""
    text = raw.decode("utf-8", "backslashreplace")
    return "".join(
        ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape").decode() for ch in text
    )


def _number(text: str | None) -> int | None:
    return int(text) if text is not None and text.isdigit() else None


def _or_unknown(number: int | None) -> str:
    return "?" if number is None else str(number)
