"""Contact resolution in event time: a message counts for whom its contact was linked to then."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from models.records import IdentityLink
from streams.core.ingest import CustomerAnswer, OutboundMessage


def encode_link(link: IdentityLink) -> bytes:
    return orjson.dumps([link.customer_id, link.linked_at_ms])


def add_link(history: bytes | None, encoded_link: bytes) -> bytes | None:
    """The contact's links with this one added, oldest first; None if it was already there.

    Links are kept, not replaced, so a message is resolved by its own time whatever order
    links and messages arrive in. Two links at the same instant: the greater customer id
    wins, for the same reason.
    """
    links: list[list[object]] = [] if history is None else orjson.loads(history)
    customer_id, linked_at_ms = orjson.loads(encoded_link)
    entry: list[object] = [linked_at_ms, customer_id]
    if entry in links:
        return None
    links.append(entry)
    links.sort()
    return orjson.dumps(links)


def customer_at(history: bytes | None, at_ms: int) -> str | None:
    """The customer the contact was linked to at `at_ms`: the latest link not after it."""
    customer: str | None = None
    for linked_at_ms, linked_customer in [] if history is None else orjson.loads(history):
        if linked_at_ms > at_ms:
            break
        customer = linked_customer
    return customer


@dataclass(slots=True)
class HeldMessages:
    """Contact-only messages (and survey answers, for messaging fatigue) waiting for the
    identity links of their time to arrive."""

    partition: int
    messages: list[OutboundMessage] = field(default_factory=list)
    answers: list[CustomerAnswer] = field(default_factory=list)

    def hold(self, record: OutboundMessage | CustomerAnswer) -> None:
        held: list[Any] = self.answers if isinstance(record, CustomerAnswer) else self.messages
        if record not in held:
            held.append(record)

    def release(self, watermark_ms: int) -> list[OutboundMessage | CustomerAnswer]:
        """The records every link up to `watermark_ms` has been applied for."""
        due: list[OutboundMessage | CustomerAnswer] = [
            m for m in self.messages if m.message.sent_at_ms <= watermark_ms
        ]
        due += [a for a in self.answers if a.answered_at_ms <= watermark_ms]
        self.messages = [m for m in self.messages if m.message.sent_at_ms > watermark_ms]
        self.answers = [a for a in self.answers if a.answered_at_ms > watermark_ms]
        return due

    @property
    def empty(self) -> bool:
        return not (self.messages or self.answers)

    def encode(self) -> bytes:
        wire: list[Any] = [self.partition, [m.to_wire() for m in self.messages]]
        if self.answers:
            wire.append([a.to_wire() for a in self.answers])
        return orjson.dumps(wire)

    @classmethod
    def decode(cls, raw: bytes) -> HeldMessages:
        partition, messages, *answers = orjson.loads(raw)
        return cls(
            partition,
            [OutboundMessage.from_wire(wire) for wire in messages],
            [CustomerAnswer.from_wire(wire) for held in answers for wire in held],
        )
