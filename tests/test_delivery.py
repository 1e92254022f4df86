"""Checkpoints, applied offsets and contact links: the pieces that make redelivery harmless."""

from __future__ import annotations

import orjson

from models.records import Category, Contact, IdentityLink
from streams.core.identity import HeldMessages, add_link, customer_at, encode_link
from streams.core.ingest import OutboundMessage
from streams.core.messaging import Message, message_digest
from streams.state.delivery import Applied, Checkpoint, KeyedCheckpoint, Send, unwrap, wrap

T0 = 1_795_305_600_000
PHONE = Contact("phone", "+8613800000000")


def test_checkpoint_keeps_any_bytes_it_must_send_again() -> None:
    unsent = [
        Send("cx.dead-letters", None, b"\xff\xfe not utf-8 \x00", (("cxmon-reason", b"x"),)),
        Send("app.touchpoint-partials", b"checkout.payment", b'["partial"]'),
    ]
    checkpoint = Checkpoint(41, T0, unsent)
    assert Checkpoint.decode(checkpoint.encode()) == checkpoint
    assert Checkpoint.decode(Checkpoint().encode()) == Checkpoint(-1, None, [])


def test_a_keyed_checkpoint_split_in_parts_joins_back_whole_and_in_order() -> None:
    states: dict[str, bytes | None] = {f"c-{n}": b"x" * 300 for n in range(100)}
    states["c-gone"] = None
    sends = [Send("outcomes", b"k", bytes([n]) * 200, (("h", b"\xff"),)) for n in range(50)]
    whole = KeyedCheckpoint(41, 7, states, sends)
    parts = whole.split(4_000)
    assert len(parts) > 5
    assert all((p.offset, p.sequence, p.parts) == (41, 7, 0) for p in parts)
    assert all(len(p.encode()) <= 4_000 + 500 for p in parts), "about the size asked for"
    head = KeyedCheckpoint.decode(KeyedCheckpoint(41, 7, parts=len(parts)).encode())
    assert head.parts == len(parts)
    assert not head.applied, "a head names what is yet to be applied"
    stored = [KeyedCheckpoint.decode(p.encode()) for p in parts]
    joined = head.joined(stored)
    assert joined == whole
    assert list(joined.states) == list(states), "in order"
    assert KeyedCheckpoint.decode(whole.encode()).parts == 0


def test_applied_takes_each_batch_of_a_source_once() -> None:
    applied = Applied()
    assert applied.take("events:0", 10)
    assert not applied.take("events:0", 10), "the same batch again"
    assert not applied.take("events:0", 3), "an older batch, delivered late"
    assert applied.take("events:1", 3), "another partition counts on its own"
    assert applied.take("events:0", 11)
    restored, body = unwrap(wrap(applied, b'{"state":"\\n"}'))
    assert restored == applied
    assert body == b'{"state":"\\n"}'


def link(customer: str, at_ms: int) -> bytes:
    return encode_link(IdentityLink(PHONE, customer, at_ms))


def test_a_message_resolves_to_the_link_in_force_at_its_time() -> None:
    history = add_link(None, link("c-2", T0 + 100))
    history = add_link(history, link("c-1", T0))  # arrives later, is older
    assert history is not None
    assert add_link(history, link("c-1", T0)) is None, "a link delivered again changes nothing"
    assert customer_at(history, T0 - 1) is None
    assert customer_at(history, T0) == "c-1"
    assert customer_at(history, T0 + 99) == "c-1"
    assert customer_at(history, T0 + 100) == "c-2"
    # Two links at one instant: the same winner in every order of arrival.
    tie_one = add_link(add_link(None, link("c-a", T0)), link("c-b", T0))
    tie_two = add_link(add_link(None, link("c-b", T0)), link("c-a", T0))
    assert tie_one == tie_two
    assert customer_at(tie_one, T0) == "c-b"
    assert orjson.loads(history) == [[T0, "c-1"], [T0 + 100, "c-2"]]


def test_held_messages_go_out_once_the_watermark_passes_them() -> None:
    def contact_only(event_id: str, at_ms: int) -> OutboundMessage:
        sms = Message(at_ms, "sms", Category.MARKETING, message_digest(event_id))
        return OutboundMessage(event_id, None, PHONE.key, sms)

    held = HeldMessages(3)
    early, late = contact_only("e-1", T0), contact_only("e-2", T0 + 60_000)
    for message in (late, early, early):  # a redelivery is held once
        held.hold(message)
    assert HeldMessages.decode(held.encode()) == held
    assert held.release(T0 - 1) == []
    assert held.release(T0) == [early]
    assert held.release(T0 + 60_000) == [late]
    assert held.messages == []
