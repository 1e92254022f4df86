"""The contact stage: identity links, and the messages and answers that name only a contact.

Links and contact-only records share one stream per contact partition, in order. A record
is held until every link up to its time is in (the watermark has passed it), then resolved
to the customer the links say and sent on to the frequency stage.
"""

from __future__ import annotations

from agents import metrics
from agents.stages.wiring import ANSWER_RECORD, LINK_RECORD, Wiring
from agents.streaming import PartitionedState, every_record, opened
from streams.core.identity import HeldMessages, add_link, customer_at
from streams.core.ingest import CustomerAnswer, OutboundMessage
from streams.state.delivery import Send
from streams.state.watermarks import PROGRESS_KEY


class Contacts:
    """Identity links by contact, and the contact-only records held until they resolve."""

    def __init__(self, wiring: Wiring) -> None:
        self.wiring = wiring
        topology = self.topology = wiring.topology
        self.identities = PartitionedState(topology.identities)
        self.held = PartitionedState(topology.held_messages)
        answered = [topology.survey_answers] if wiring.fatigue else []
        self.progress = wiring.progress(
            topology.touchpoint_events, topology.identity_links, *answered
        )

    async def resolve_contacts(self) -> None:
        async for batch in self.wiring.batches.fetched(self.topology.contacts.get_topic_name()):
            progressed: set[int] = set()
            for record in opened(every_record(batch)):
                partition, key = record.partition, record.key
                if key == PROGRESS_KEY:
                    self.wiring.take_marks(self.progress[partition], record.value)
                    progressed.add(partition)
                elif LINK_RECORD in record.headers:
                    links = add_link(self.identities.get(key), record.value)
                    if links is not None:
                        self.identities.put(partition, key, links)
                elif ANSWER_RECORD in record.headers:
                    self._hold(partition, key, CustomerAnswer.decode(record.value))
                else:
                    self._hold(partition, key, OutboundMessage.decode(record.value))
            marks = {p: self.progress[p] for p in sorted(progressed)}
            await self._release(
                {p: w for p, progress in marks.items() if (w := progress.watermark()) is not None}
            )
            await self.wiring.pass_marks_on(self.topology.contacts, self.progress, progressed)

    def _hold(self, partition: int, key: bytes, record: OutboundMessage | CustomerAnswer) -> None:
        """Until every link up to its time is in, a contact-only record cannot be resolved."""
        raw = self.held.get(key)
        held = HeldMessages(partition) if raw is None else HeldMessages.decode(raw)
        held.hold(record)
        self.held.put(partition, key, held.encode())

    async def _release(self, watermarks: dict[int, int]) -> None:
        """Held messages the watermark of their partition has passed, resolved and sent."""
        if not watermarks:
            return
        topic = self.topology.customer_messages.get_topic_name()
        sends: list[Send] = []
        left: list[tuple[bytes, HeldMessages]] = []
        for key, raw in self.held.items():
            held = HeldMessages.decode(raw)
            watermark = watermarks.get(held.partition)
            due = [] if watermark is None else held.release(watermark)
            if not due:
                continue
            links = self.identities.get(key)
            for record in due:
                headers: tuple[tuple[str, bytes], ...] = ()
                if isinstance(record, CustomerAnswer):
                    at_ms, headers = record.answered_at_ms, (ANSWER_RECORD,)
                else:
                    at_ms = record.message.sent_at_ms
                customer = customer_at(links, at_ms)
                if customer is None:
                    # Unlinked contacts are customers of their own until a link arrives.
                    if not headers:
                        metrics.UNRESOLVED_CONTACTS.inc()
                    customer = key.decode()
                value = record.resolved_to(customer).encode()
                sends.append(Send(topic, customer.encode(), value, headers))
            left.append((key, held))
        # Sent before they leave the table: a crash in between sends them again, and
        # the frequency stage knows a message or an answer it already has.
        await self.wiring.deliver(sends)
        for key, held in left:
            if not held.empty:
                self.held.put(held.partition, key, held.encode())
            else:
                self.held.delete(held.partition, key)
