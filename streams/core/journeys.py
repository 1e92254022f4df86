"""Journey breaks: customers who reach one touchpoint and do not reach the next in time.

For one customer and one break `A -> B` with `within` W, in event-time order:

* a visit of A at t opens an *attempt* when none is open; its deadline is t + W;
* the first visit of B in [t, t + W] (both ends included) converts it, at B's time;
* no such visit: the attempt is broken, at t + W;
* a visit of A while an attempt is open, or at the very instant it is decided, belongs to
  it: retrying a payment or reloading the cart neither opens a second attempt nor moves
  the deadline. The next visit of A after that opens the next attempt;
* a visit of B with no attempt open (B before A, or a second B) counts for nothing;
* two visits at the same instant: A before B, so A and B together are a conversion.

An attempt is decided once every visit up to its decision instant is final, that is once
`closed` (the watermark less the grace) is past it, so the outcome never depends on the
order in which visits arrived. Outcomes are counted at the instant they are decided: the
break rate of the window [end - window, end) is broken / (broken + converted) over the
attempts decided in it, judged once `closed` reaches `end`. With at least `min_samples`
attempts behind it, a rate above `max_rate` fires one `journey_break` incident, which
resolves at the first window whose rate is at or below `recover_at` (default `max_rate`),
again with `min_samples` behind it. A window without attempts, or with too few, decides
nothing: the incident stays as it is.

Every outcome carries an identity (the customer and the attempt's start), so an outcome
delivered twice counts once; its bucket is kept while any window still open needs it. The
customer stage applies each batch of visits once (agents/checkpointed.py), so an attempt is
never decided twice from different visits.
"""

from __future__ import annotations

import hashlib
from array import array
from bisect import bisect_left, insort
from dataclasses import dataclass, field
from typing import Any

import orjson

from models.decode import format_timestamp
from models.records import Alert, AlertKind, AlertStatus, TouchpointEvent
from streams.catalog import Catalog, JourneyBreak, format_duration
from streams.core.alerts import Incident, fingerprint
from streams.core.hopping import Hopping
from streams.core.messaging import message_digest

# One visit of a touchpoint by one customer: its event time and a digest of its event id.
Visit = tuple[int, int]


def outcome_id(customer: str, attempt_start_ms: int) -> int:
    """64 bits naming one attempt of one customer: a second delivery of it is recognised."""
    digest = hashlib.blake2b(f"{customer}\x1f{attempt_start_ms}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big")


@dataclass(frozen=True, slots=True)
class Outcome:
    """One decided attempt of one break: broken or converted, at the instant it was decided."""

    break_id: str
    decided_at_ms: int
    broken: bool
    ident: int

    def encode(self) -> bytes:
        return orjson.dumps([self.break_id, self.decided_at_ms, self.broken, self.ident])

    @classmethod
    def decode(cls, raw: bytes) -> Outcome:
        return cls(*orjson.loads(raw))


@dataclass(slots=True)
class CustomerVisits:
    """Visits of the watched touchpoints by one customer, as the first stage sends them on."""

    customer: str
    visits: dict[str, list[Visit]] = field(default_factory=dict)

    def encode(self) -> bytes:
        return orjson.dumps([self.customer, self.visits])

    @classmethod
    def decode(cls, raw: bytes) -> CustomerVisits:
        customer, visits = orjson.loads(raw)
        return cls(customer, {tp: [(at, digest) for at, digest in vs] for tp, vs in visits.items()})


@dataclass(slots=True)
class CustomerJourneys:
    """One customer's visits not decided yet and open attempts, and how far it is decided.

    `partition` is where the state lives, so a worker can walk the customers it owns.
    """

    partition: int
    visits: dict[str, list[Visit]] = field(default_factory=dict)
    open_since: dict[str, int] = field(default_factory=dict)  # break id -> attempt start
    decided_to_ms: int | None = None
    due_ms: int | None = None  # the first visit or deadline: nothing is decided before it

    @property
    def empty(self) -> bool:
        return not self.open_since and not any(self.visits.values())

    def encode(self) -> bytes:
        # A header line first: a worker finds the customers of a partition that are due
        # without decoding every customer it holds.
        header = b"%d %d\n" % (self.partition, -1 if self.due_ms is None else self.due_ms)
        return header + orjson.dumps([self.visits, self.open_since, self.decided_to_ms])

    @staticmethod
    def header(raw: bytes) -> tuple[int, int | None]:
        """The partition of an encoded customer, and when it is due, read without decoding."""
        owner, due = raw[: raw.index(b"\n")].split(b" ")
        return int(owner), None if int(due) < 0 else int(due)

    @classmethod
    def decode(cls, raw: bytes) -> CustomerJourneys:
        partition, due = cls.header(raw)
        visits, open_since, decided_to = orjson.loads(raw[raw.index(b"\n") + 1 :])
        return cls(
            partition,
            {tp: [(at, digest) for at, digest in vs] for tp, vs in visits.items()},
            open_since,
            decided_to,
            due,
        )


class JourneyTracker:
    """Decides the attempts of each customer on every break of a catalog; no I/O, event time."""

    def __init__(self, catalog: Catalog) -> None:
        self.breaks = catalog.breaks
        self.within = {journey.id: journey.within_ms for journey in catalog.breaks}
        self.touchpoints = frozenset(
            tp for journey in catalog.breaks for tp in (journey.source, journey.target)
        )

    def visit_of(self, event: TouchpointEvent) -> tuple[str, str, Visit] | None:
        """The customer, touchpoint and visit an event stands for, if any break watches it.

        Only events that name their customer count: a contact-only event (an outbound
        message) is not a step the customer took on a journey.
        """
        if event.customer_id is None or event.touchpoint not in self.touchpoints:
            return None
        visit = (event.occurred_at_ms, message_digest(event.event_id))
        return event.customer_id, event.touchpoint, visit

    def record(self, state: CustomerJourneys, touchpoint: str, visit: Visit) -> bool:
        """Keep a visit in order; False for one already held, or older than what is decided."""
        if state.decided_to_ms is not None and visit[0] < state.decided_to_ms:
            # Behind what is decided already: it can no longer change an attempt.
            return False
        visits = state.visits.setdefault(touchpoint, [])
        index = bisect_left(visits, visit)
        if index < len(visits) and visits[index] == visit:
            return False
        insort(visits, visit)
        if state.due_ms is None or visit[0] < state.due_ms:
            state.due_ms = visit[0]
        return True

    def advance(self, state: CustomerJourneys, customer: str, closed_ms: int) -> list[Outcome]:
        """Decide every attempt whose visits are all before `closed_ms`, then forget them."""
        if state.decided_to_ms is not None and closed_ms <= state.decided_to_ms:
            return []
        for gone in state.open_since.keys() - self.within.keys():
            del state.open_since[gone]  # a break the catalog no longer has
        outcomes: list[Outcome] = []
        for journey in self.breaks:
            outcomes += self._decide(journey, state, customer, closed_ms)
        for touchpoint, visits in list(state.visits.items()):
            keep = bisect_left(visits, (closed_ms, -1))
            if keep == len(visits):
                del state.visits[touchpoint]
            else:
                del visits[:keep]
        state.decided_to_ms = closed_ms
        instants = [visits[0][0] for visits in state.visits.values()]
        instants += [start + self.within[key] for key, start in state.open_since.items()]
        state.due_ms = min(instants, default=None)
        return outcomes

    def _decide(
        self, journey: JourneyBreak, state: CustomerJourneys, customer: str, closed_ms: int
    ) -> list[Outcome]:
        key, within = journey.id, journey.within_ms
        steps = sorted(
            [(at, 0) for at, _ in state.visits.get(journey.source, ()) if at < closed_ms]
            + [(at, 1) for at, _ in state.visits.get(journey.target, ()) if at < closed_ms]
        )  # at one instant, A (0) before B (1)
        outcomes: list[Outcome] = []
        start = state.open_since.get(key)

        def close(broken: bool, at_ms: int) -> None:
            nonlocal start
            assert start is not None
            outcomes.append(Outcome(key, at_ms, broken, outcome_id(customer, start)))
            start = None

        # A visit of A at the deadline, or at the converting B's instant (sorted before
        # it), finds its attempt still open and joins it.
        for at, is_target in steps:
            if start is not None and at > start + within:
                close(True, start + within)
            if not is_target:
                if start is None:
                    start = at
            elif start is not None:
                close(False, at)
        if start is not None and start + within < closed_ms:
            close(True, start + within)
        if start is None:
            state.open_since.pop(key, None)
        else:
            state.open_since[key] = start
        return outcomes


class VisitBatch:
    """The visits one batch of events adds, one record per customer: few sends per batch."""

    def __init__(self, tracker: JourneyTracker) -> None:
        self.tracker = tracker
        self.pending: dict[str, CustomerVisits] = {}

    def add(self, event: TouchpointEvent) -> None:
        found = self.tracker.visit_of(event)
        if found is None:
            return
        customer, touchpoint, visit = found
        entry = self.pending.setdefault(customer, CustomerVisits(customer))
        entry.visits.setdefault(touchpoint, []).append(visit)

    def drain(self) -> list[CustomerVisits]:
        drained = list(self.pending.values())
        self.pending.clear()
        return drained


@dataclass(slots=True)
class BreakState:
    """Decided attempts of one break by bucket (identity -> broken), and its incident.

    Stored as a JSON line (each bucket's start and counts, then the incident) followed by
    every identity as 8 bytes, each bucket's broken attempts first: a busy break holds tens
    of thousands of attempts, and as JSON pairs each took 28 bytes, not 8.
    """

    buckets: dict[int, dict[int, bool]] = field(default_factory=dict)
    evaluated_until_ms: int | None = None
    incident_start_ms: int | None = None
    last_rate: float | None = None
    last_samples: int = 0

    def encode(self) -> bytes:
        counts, idents = [], array("Q")
        for start, ids in self.buckets.items():
            broken = [ident for ident, was_broken in ids.items() if was_broken]
            idents.extend(broken)
            idents.extend(ident for ident, was_broken in ids.items() if not was_broken)
            counts.append([start, len(broken), len(ids) - len(broken)])
        incident = [self.evaluated_until_ms, self.incident_start_ms, self.last_rate]
        return orjson.dumps([counts, *incident, self.last_samples]) + b"\n" + idents.tobytes()

    @classmethod
    def decode(cls, raw: bytes) -> BreakState:
        head, newline, packed = raw.partition(b"\n")
        if not newline:
            return cls._decode_json(raw)
        counts, evaluated, incident, rate, samples = orjson.loads(head)
        idents = array("Q")
        idents.frombytes(packed)
        buckets, at = {}, 0
        for start, broken, converted in counts:
            ids = dict.fromkeys(idents[at : at + broken], True)
            ids.update(dict.fromkeys(idents[at + broken : at + broken + converted], False))
            buckets[start] = ids
            at += broken + converted
        return cls(buckets, evaluated, incident, rate, samples)

    @classmethod
    def _decode_json(cls, raw: bytes) -> BreakState:
        """As stored before 2026-12-05: each attempt a JSON pair."""
        buckets, evaluated, incident, rate, samples = orjson.loads(raw)
        return cls(
            {start: {ident: broken for ident, broken in ids} for start, ids in buckets},
            evaluated,
            incident,
            rate,
            samples,
        )


@dataclass(frozen=True, slots=True)
class BreakReading:
    """One window of one break: how many attempts were decided in it, and how many broke."""

    window_end_ms: int
    broken: int
    converted: int

    @property
    def samples(self) -> int:
        return self.broken + self.converted

    @property
    def rate(self) -> float:
        return self.broken / self.samples


class BreakWindows:
    """The rolling break rate of one break and its incidents; state lives in BreakState."""

    def __init__(self, journey: JourneyBreak) -> None:
        self.journey = journey
        self.window = format_duration(journey.window_ms)
        self.hopping = Hopping(journey.window_ms, journey.step_ms)

    def horizon(self, state: BreakState) -> int | None:
        """Buckets before this start feed no window still to be judged."""
        return self.hopping.horizon(state.evaluated_until_ms)

    def add(self, state: BreakState, outcome: Outcome) -> bool:
        """Count a decided attempt once; False when every window it falls in is judged."""
        start = self.hopping.bucket_of(outcome.decided_at_ms)
        horizon = self.horizon(state)
        if horizon is not None and start < horizon:
            return False
        state.buckets.setdefault(start, {})[outcome.ident] = outcome.broken
        return True

    def advance(self, state: BreakState, closed_ms: int) -> list[Alert]:
        """Judge, in order, every window that ends by `closed_ms`; drop buckets no longer needed."""
        alerts: list[Alert] = []
        for end, starts in self.hopping.closing(state.buckets, state.evaluated_until_ms, closed_ms):
            broken = sum(b for s in starts for b in state.buckets[s].values())
            total = sum(len(state.buckets[s]) for s in starts)
            reading = BreakReading(end, broken, total - broken)
            state.last_rate, state.last_samples = reading.rate, reading.samples
            alert = self._verdict(state, reading)
            if alert is not None:
                alerts.append(alert)
        state.evaluated_until_ms = self.hopping.close(
            state.buckets, state.evaluated_until_ms, closed_ms
        )
        return alerts

    def _verdict(self, state: BreakState, reading: BreakReading) -> Alert | None:
        journey = self.journey
        if reading.samples < journey.min_samples:
            return None
        if state.incident_start_ms is None:
            if reading.rate <= journey.max_rate:
                return None
            state.incident_start_ms = reading.window_end_ms
            return self._alert(reading, AlertStatus.FIRING, state.incident_start_ms)
        if reading.rate > journey.recover_rate:
            return None
        alert = self._alert(reading, AlertStatus.RESOLVED, state.incident_start_ms)
        state.incident_start_ms = None
        return alert

    def _alert(self, reading: BreakReading, status: AlertStatus, starts_at_ms: int) -> Alert:
        journey = self.journey
        within = format_duration(journey.within_ms)
        share = (
            f"{reading.broken} of {reading.samples} customers ({reading.rate:.0%}) who reached "
            f"{journey.source} did not reach {journey.target} within {within}"
        )
        if status is AlertStatus.FIRING:
            summary = (
                f"Journey {journey.id} broken: {share} over the last {self.window}, "
                f"above the limit of {journey.max_rate:.0%}."
            )
        else:
            summary = (
                f"Journey {journey.id} recovered: {share} over the last {self.window}, "
                f"at or below {journey.recover_rate:.0%}."
            )
        incident = Incident(
            kind=AlertKind.JOURNEY_BREAK,
            subject=journey.id,
            fingerprint=fingerprint(AlertKind.JOURNEY_BREAK, journey.id),
            severity=journey.severity,
            starts_at_ms=starts_at_ms,
        )
        details: dict[str, Any] = {
            "break": journey.id,
            "from": journey.source,
            "to": journey.target,
            "within": within,
            "samples": reading.samples,
            "broken": reading.broken,
            "converted": reading.converted,
            "min_samples": journey.min_samples,
            "recover_at": journey.recover_rate,
            "window_end": format_timestamp(reading.window_end_ms),
        }
        return incident.transition(
            status,
            at_ms=reading.window_end_ms,
            summary=summary,
            observed=round(reading.rate, 6),
            threshold=journey.max_rate,
            window=self.window,
            details=details,
        )
