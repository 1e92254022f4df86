"""Typed records of the public contract: what other services publish and what the monitor emits."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

# The channels the contract names, in its order. Events may carry "another short id" too,
# but metric labels keep to these (bounded series), and so does the pressure endpoint: a
# misspelt channel there would be answered "allowed" about a channel nobody sends on.
CHANNELS = (
    "sms", "email", "wechat", "app_push", "in_app", "web", "app", "mini_program", "store",
    "call_center", "social",
)  # fmt: skip
# What a channel outside that list is counted as where the set must stay bounded.
OTHER_CHANNEL = "other"


def known_channel(channel: str) -> str:
    """A channel the contract names, else `other`: metric labels and state stay bounded."""
    return channel if channel in CHANNELS else OTHER_CHANNEL


class Direction(StrEnum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


class Category(StrEnum):
    MARKETING = "marketing"
    TRANSACTIONAL = "transactional"
    SERVICE = "service"


class Outcome(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    ABANDONED = "abandoned"


class SurveyMetric(StrEnum):
    NPS = "nps"
    CSAT = "csat"
    CES = "ces"


class Stage(StrEnum):
    AWARENESS = "awareness"
    INTEREST = "interest"
    INTENT = "intent"
    PURCHASE = "purchase"
    USE = "use"
    SERVICE = "service"
    RETENTION = "retention"


class AlertKind(StrEnum):
    KEY_MOMENT_DEGRADED = "key_moment_degraded"
    OVER_MESSAGED = "over_messaged"
    NO_DATA = "no_data"
    JOURNEY_BREAK = "journey_break"
    CHANNEL_INCONSISTENT = "channel_inconsistent"
    MESSAGING_FATIGUE = "messaging_fatigue"


class AlertStatus(StrEnum):
    FIRING = "firing"
    RESOLVED = "resolved"


class Severity(StrEnum):
    WARNING = "warning"
    CRITICAL = "critical"


@dataclass(frozen=True, slots=True)
class Contact:
    type: str
    value: str

    @property
    def key(self) -> str:
        """The `type:value` form used as the identity-links key."""
        return f"{self.type}:{self.value}"


@dataclass(frozen=True, slots=True)
class TouchpointEvent:
    event_id: str
    occurred_at_ms: int
    touchpoint: str
    channel: str
    direction: Direction
    customer_id: str | None = None
    contact: Contact | None = None
    category: Category | None = None
    stage: Stage | None = None
    outcome: Outcome | None = None
    duration_ms: float | None = None
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def at_ms(self) -> int:
        return self.occurred_at_ms


@dataclass(frozen=True, slots=True)
class SurveyAnswer:
    answer_id: str
    answered_at_ms: int
    touchpoint: str
    metric: SurveyMetric
    score: float
    customer_id: str | None = None
    contact: Contact | None = None
    channel: str | None = None
    comment: str | None = None

    @property
    def at_ms(self) -> int:
        return self.answered_at_ms


@dataclass(frozen=True, slots=True)
class IdentityLink:
    contact: Contact
    customer_id: str
    linked_at_ms: int

    @property
    def at_ms(self) -> int:
        return self.linked_at_ms


@dataclass(frozen=True, slots=True)
class Alert:
    alert_id: str
    fingerprint: str
    kind: AlertKind
    status: AlertStatus
    subject: str
    severity: Severity
    starts_at_ms: int
    ends_at_ms: int | None
    summary: str
    observed: float
    threshold: float
    window: str
    details: dict[str, Any] = field(default_factory=dict)
