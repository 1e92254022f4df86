"""Pseudonyms: what replaces customer ids and contact values, and when the worker refuses to."""

from __future__ import annotations

import pytest

from models.records import Contact, Direction, IdentityLink, TouchpointEvent
from streams.core.privacy import STATE_PSEUDONYM_HEX, pseudonym, pseudonymised
from streams.settings import Settings, SettingsError

KEY = b"k3y"


def test_ids_and_contact_values_are_replaced_and_the_rest_kept() -> None:
    event = TouchpointEvent(
        event_id="e-1",
        occurred_at_ms=0,
        touchpoint="marketing.sms",
        channel="sms",
        direction=Direction.OUTBOUND,
        contact=Contact("phone", "+8613800000000"),
    )
    hidden = pseudonymised(event, KEY)
    assert hidden.customer_id is None
    assert hidden.contact == Contact("phone", pseudonym("+8613800000000", KEY, 32))
    assert (hidden.event_id, hidden.touchpoint, hidden.channel) == ("e-1", "marketing.sms", "sms")

    link = pseudonymised(IdentityLink(Contact("phone", "+8613800000000"), "c-1", 5), KEY)
    assert link.contact == hidden.contact, "a message and its link still meet"
    assert link.customer_id == pseudonym("c-1", KEY, STATE_PSEUDONYM_HEX)
    assert link.customer_id != pseudonym("c-1", b"another key", STATE_PSEUDONYM_HEX)
    assert len(link.customer_id) == 32


def test_pseudonymising_ids_needs_a_key() -> None:
    with pytest.raises(SettingsError, match="CXMON_PSEUDONYMISE_IDS needs CXMON_PSEUDONYM_KEY"):
        Settings.from_env({"CXMON_PSEUDONYMISE_IDS": "true"})
    with pytest.raises(SettingsError, match="is not true or false"):
        Settings.from_env({"CXMON_PSEUDONYMISE_IDS": "sometimes", "CXMON_PSEUDONYM_KEY": "k"})
    settings = Settings.from_env({"CXMON_PSEUDONYMISE_IDS": "yes", "CXMON_PSEUDONYM_KEY": "k"})
    assert settings.pseudonymise_ids
    assert "k'" not in repr(settings)
