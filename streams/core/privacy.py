"""Keyed pseudonyms: customer ids and contact values replaced before they are stored or sent."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import replace
from typing import TypeVar

from models.records import Contact, IdentityLink, SurveyAnswer, TouchpointEvent

Identified = TypeVar("Identified", TouchpointEvent, SurveyAnswer, IdentityLink)

# 128 bits: two of a hundred million customers sharing a table key is out of the question.
STATE_PSEUDONYM_HEX = 32


def pseudonym(value: str, key: bytes, length: int = 16) -> str:
    """A keyed hash: stable per value, so one customer's records meet, yet not the value."""
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:length]


def state_pseudonym(value: str, key: bytes) -> str:
    """What a customer id or contact value becomes in the monitor's state."""
    return pseudonym(value, key, STATE_PSEUDONYM_HEX)


def pseudonymised(record: Identified, key: bytes) -> Identified:
    """The record with its customer id and contact value replaced by their pseudonyms.

    Applied as a record is read, so no table key, changelog, internal topic, alert
    subject or log line of the monitor holds the real ones. The contact type stays: it
    names a channel, not a person.
    """
    contact = record.contact
    customer_id = record.customer_id
    return replace(
        record,
        customer_id=None if customer_id is None else state_pseudonym(customer_id, key),
        contact=None
        if contact is None
        else Contact(contact.type, state_pseudonym(contact.value, key)),
    )
