"""Alert transitions: stable fingerprints, ids unique per transition, summaries a person reads."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

from models.records import Alert, AlertKind, AlertStatus, Severity


def fingerprint(kind: AlertKind, subject: str, *qualifiers: str) -> str:
    """Same kind and subject, same fingerprint: every transition of one incident shares it."""
    text = "\x1f".join([kind.value, subject, *qualifiers])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Incident:
    """What stays the same across the firing and resolving of one incident."""

    kind: AlertKind
    subject: str
    fingerprint: str
    severity: Severity
    starts_at_ms: int

    def transition(
        self,
        status: AlertStatus,
        *,
        at_ms: int,
        summary: str,
        observed: float,
        threshold: float,
        window: str,
        details: dict[str, Any],
    ) -> Alert:
        # Derived, not random: a replay of the same events yields the same alert ids.
        alert_id = f"{self.fingerprint}-{self.starts_at_ms}-{status.value}"
        return Alert(
            alert_id=alert_id,
            fingerprint=self.fingerprint,
            kind=self.kind,
            status=status,
            subject=self.subject,
            severity=self.severity,
            starts_at_ms=self.starts_at_ms,
            ends_at_ms=at_ms if status is AlertStatus.RESOLVED else None,
            summary=summary,
            observed=observed,
            threshold=threshold,
            window=window,
            details=details,
        )


def figure(value: float | None) -> float | None:
    """A figure for an alert: six decimals; None where the data set no bound."""
    return None if value is None or not math.isfinite(value) else round(value, 6)
